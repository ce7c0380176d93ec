"""Rendered manifests for the chart tests: one `helm template` per values file, cached."""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Any

import yaml

from tests.chart.tools import HERE, template

VALUES_DIR = HERE / "values"
VALUES_FILES = sorted(VALUES_DIR.glob("*.yaml"))
VALUES_NAMES = [p.stem for p in VALUES_FILES]


@cache
def rendered(values_name: str) -> tuple[dict[str, Any], ...]:
    """The manifests the chart renders with tests/chart/values/<values_name>.yaml."""
    path: Path = VALUES_DIR / f"{values_name}.yaml"
    return tuple(d for d in yaml.safe_load_all(template(path)) if d)


def by_kind(docs: tuple[dict[str, Any], ...], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind]


def one(docs: tuple[dict[str, Any], ...], kind: str) -> dict[str, Any]:
    (found,) = by_kind(docs, kind)
    return found
