"""The control plane's process handles: pause and resume hold one process back (as a slow or
partitioned one), and a paused process still stops."""

from __future__ import annotations

import sys
import time
from pathlib import Path

from phiops_devcluster.processes import ManagedProcess


def _state(pid: int) -> str:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]


def _reaches(pid: int, states: str) -> bool:
    """Signals are delivered asynchronously: wait a little for the state to show it."""
    deadline = time.monotonic() + 5
    while _state(pid) not in states and time.monotonic() < deadline:
        time.sleep(0.02)
    return _state(pid) in states


def test_a_paused_process_resumes_and_a_paused_one_still_stops(tmp_path: Path) -> None:
    # A SIGTERM handler, as the node runtime has: it runs only once the process is resumed.
    script = "import signal, sys, time; signal.signal(15, lambda *_: sys.exit(0)); time.sleep(37)"
    proc = ManagedProcess("sleeper", tmp_path, marker="time.sleep(37)")
    pid = proc.start([sys.executable, "-c", script])
    try:
        proc.pause()
        assert _reaches(pid, "T")
        proc.resume()
        assert _reaches(pid, "RS")
        proc.pause()
        assert _reaches(pid, "T")
        started = time.monotonic()
        assert proc.stop(timeout=3)
        assert time.monotonic() - started < 2.5  # SIGTERM handled, not the SIGKILL fallback
        assert not proc.running()
    finally:
        proc.stop(timeout=1)
