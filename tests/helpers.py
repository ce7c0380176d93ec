"""Shared test helpers (no fixtures here)."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
CRD_DIR = REPO / "crds"
SAMPLES_DIR = CRD_DIR / "samples"


def load_all(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def samples() -> list[dict[str, Any]]:
    """Every phiops custom object in crds/samples/."""
    return [
        doc
        for path in sorted(SAMPLES_DIR.glob("*.yaml"))
        for doc in load_all(path)
        if doc["apiVersion"].startswith("phiops.dev/")
    ]


def eventually(
    check: Callable[[], Any], timeout: float = 30, what: str = "", interval: float = 1
) -> Any:
    """Poll `check` every `interval` seconds until it returns something truthy; return that."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out waiting for {what or check}: last={last!r}")
