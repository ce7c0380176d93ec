"""Durations (`90s`, `30m`, `1h30m`) and quantities (`24Gi`) as the CRDs accept them."""

from __future__ import annotations

import re
from datetime import datetime

_PART = re.compile(r"([0-9]+(?:\.[0-9]+)?)(s|m|h)")
_SECONDS = {"s": 1, "m": 60, "h": 3600}


def parse_duration(text: str) -> float:
    parts = _PART.findall(text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise ValueError(f"not a duration: {text!r} (use e.g. 90s, 30m, 1h30m)")
    return sum(float(number) * _SECONDS[unit] for number, unit in parts)


_SUFFIXES = {
    "": 1,
    "k": 10**3,
    "M": 10**6,
    "G": 10**9,
    "T": 10**12,
    "P": 10**15,
    "E": 10**18,
    "Ki": 2**10,
    "Mi": 2**20,
    "Gi": 2**30,
    "Ti": 2**40,
    "Pi": 2**50,
    "Ei": 2**60,
    "m": 0.001,
}
_QUANTITY = re.compile(r"^([0-9]+(?:\.[0-9]+)?)(|m|k|M|G|T|P|E|Ki|Mi|Gi|Ti|Pi|Ei)$")


def parse_quantity(text: str) -> float:
    """A Kubernetes quantity (`24Gi`, `500m`, `80G`) as a number."""
    match = _QUANTITY.match(text)
    if match is None:
        raise ValueError(f"not a quantity: {text!r} (use e.g. 24Gi or 80G)")
    return float(match.group(1)) * _SUFFIXES[match.group(2)]


def parse_time(stamp: str) -> float:
    """An RFC 3339 timestamp from the API (`2026-01-01T00:00:00Z`) as Unix time."""
    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()
