import pytest
from phiops_operator.units import parse_duration, parse_quantity, parse_time


def test_durations() -> None:
    assert parse_duration("90s") == 90
    assert parse_duration("1h30m") == 5400
    assert parse_duration("0.5h") == 1800
    for bad in ("", "10", "1d", "h1", "1h 30m"):
        with pytest.raises(ValueError, match="not a duration"):
            parse_duration(bad)


def test_quantities() -> None:
    assert parse_quantity("24Gi") == 24 * 2**30
    assert parse_quantity("80G") == 80 * 10**9
    assert parse_quantity("500m") == 0.5
    assert parse_quantity("3") == 3
    with pytest.raises(ValueError, match="not a quantity"):
        parse_quantity("lots")


def test_api_timestamps() -> None:
    assert parse_time("1970-01-01T00:01:00Z") == 60
