"""Progress in the logs while a sync runs: a background thread reports the counters."""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from types import TracebackType

log = logging.getLogger("phiops_embed.progress")


@dataclass
class Counters:
    documents_read: int = 0
    documents_unchanged: int = 0
    documents_failed: int = 0
    chunks_embedded: int = 0
    started: float = field(default_factory=time.monotonic)

    def line(self) -> str:
        elapsed = max(time.monotonic() - self.started, 1e-9)
        return (
            f"documents read {self.documents_read} (unchanged {self.documents_unchanged}, "
            f"failed {self.documents_failed}), chunks embedded {self.chunks_embedded} "
            f"({self.chunks_embedded / elapsed:.1f} chunks/s)"
        )


class ProgressLogger:
    """Logs `counters.line()` every `interval` seconds until closed (a pod's logs show life
    even while one long document is being read or one large batch embedded)."""

    def __init__(self, counters: Counters, interval: float = 10.0) -> None:
        self.counters = counters
        self.interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="progress", daemon=True)

    def __enter__(self) -> ProgressLogger:
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            log.info("progress: %s", self.counters.line())
