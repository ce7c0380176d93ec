"""Publishing training progress into one ConfigMap, with the standard library only.

The trainer's ServiceAccount may patch just that ConfigMap (least privilege: no access to the
FineTuneJob itself); the operator copies `data["progress.json"]` into the job's status. A
merge PATCH to `/api/v1/namespaces/NS/configmaps/NAME` with the pod's token, from a background
thread: at most one request every `interval` seconds, the latest progress wins, training never
waits for the API server, and failures are logged, never raised.

Outside a pod (tests, a developer's machine) `PHIOPS_KUBE_API_URL` points it at another server
and `PHIOPS_SERVICEACCOUNT_DIR` at another token/ca.crt folder.
"""

from __future__ import annotations

import json
import logging
import os
import ssl
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import TracebackType

from phiops_workload.finetune import PROGRESS_KEY, Progress, ProgressTarget

log = logging.getLogger("phiops_finetune.progress")

SERVICEACCOUNT_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"
DEFAULT_INTERVAL_S = 5.0
REQUEST_TIMEOUT_S = 10.0


def api_url() -> str | None:
    """The API server's base URL: `PHIOPS_KUBE_API_URL`, else the in-cluster service."""
    override = os.environ.get("PHIOPS_KUBE_API_URL")
    if override:
        return override.rstrip("/")
    host = os.environ.get("KUBERNETES_SERVICE_HOST")
    port = os.environ.get("KUBERNETES_SERVICE_PORT", "443")
    if not host:
        return None
    if ":" in host and not host.startswith("["):  # an IPv6 address
        host = f"[{host}]"
    return f"https://{host}:{port}"


class ProgressPublisher:
    """`submit(progress)` from the training loop; `close()` publishes the last one and stops."""

    def __init__(
        self,
        target: ProgressTarget,
        base_url: str | None = None,
        serviceaccount_dir: str | None = None,
        interval: float = DEFAULT_INTERVAL_S,
    ) -> None:
        self.target = target
        self.base_url = base_url or api_url()
        folder = Path(
            serviceaccount_dir or os.environ.get("PHIOPS_SERVICEACCOUNT_DIR", SERVICEACCOUNT_DIR)
        )
        self.token_path = folder / "token"
        self.ca_path = folder / "ca.crt"
        self.interval = interval
        self.published = 0
        self.failures = 0
        self._latest: Progress | None = None
        self._sent: Progress | None = None
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._last_attempt = 0.0
        self._thread = threading.Thread(target=self._run, name="progress-publisher", daemon=True)
        if self.base_url is None:
            log.warning("progress: no API server address (not in a pod?): not publishing")

    @property
    def url(self) -> str:
        t = self.target
        return f"{self.base_url}/api/v1/namespaces/{t.namespace}/configmaps/{t.config_map}"

    def __enter__(self) -> ProgressPublisher:
        if self.base_url is not None:
            self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def submit(self, progress: Progress) -> None:
        with self._lock:
            self._latest = progress
        self._wake.set()

    def close(self, timeout: float = REQUEST_TIMEOUT_S) -> None:
        """Stop the thread and publish the latest progress if it was not sent yet."""
        if self._stop.is_set():
            return
        self._stop.set()
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(timeout=timeout + 1)
        self._flush()

    # -- internals ----------------------------------------------------------------------------

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait()
            self._wake.clear()
            if self._stop.is_set():
                break
            wait = self._last_attempt + self.interval - time.monotonic()
            if wait > 0 and self._stop.wait(wait):
                break
            self._flush()

    def _flush(self) -> None:
        with self._lock:
            progress = self._latest
        if progress is None or progress is self._sent or self.base_url is None:
            return
        self._last_attempt = time.monotonic()
        if self.publish(progress):
            self._sent = progress

    def publish(self, progress: Progress) -> bool:
        """One merge PATCH; True when the API server took it."""
        body = json.dumps({"data": {PROGRESS_KEY: progress.model_dump_json()}}).encode()
        request = urllib.request.Request(self.url, data=body, method="PATCH")
        request.add_header("Content-Type", "application/merge-patch+json")
        request.add_header("Accept", "application/json")
        context: ssl.SSLContext | None = None
        try:
            if self.token_path.exists():
                request.add_header("Authorization", f"Bearer {self.token_path.read_text().strip()}")
            if self.url.startswith("https://"):
                cafile = str(self.ca_path) if self.ca_path.exists() else None
                context = ssl.create_default_context(cafile=cafile)
            with urllib.request.urlopen(request, timeout=REQUEST_TIMEOUT_S, context=context):
                pass
        except urllib.error.HTTPError as err:
            self._failed(f"HTTP {err.code} {err.reason}")
            return False
        except (urllib.error.URLError, OSError, ssl.SSLError) as err:
            self._failed(str(getattr(err, "reason", err)))
            return False
        self.published += 1
        return True

    def _failed(self, why: str) -> None:
        self.failures += 1
        # Log the first failures and then every tenth: a missing Role should not flood the log.
        if self.failures <= 3 or self.failures % 10 == 0:
            log.warning(
                "progress: could not update ConfigMap %s/%s (%s; failure %d)",
                self.target.namespace,
                self.target.config_map,
                why,
                self.failures,
            )
