"""A real Milvus standalone server (the PyPI package `milvus`, v2.3.5) for tests and
benchmarks: the "external store" a KnowledgeBase reaches by URI.

Facts that shape this helper (measured on these machines):
- its embedded etcd always listens on 127.0.0.1:2379/2380, so one instance per machine;
- SIGTERM leaves it running for minutes: it is stopped by SIGKILL to its process group
  (its data survives that, as after a crash);
- it listens on every interface, while the package picks ports by binding 127.0.0.1 only: a
  port the local node runtime holds on a Service address (a KnowledgeBase store's 19530)
  looks free to it, and Milvus's proxy then silently fails to listen; this helper picks its
  gRPC and health ports by binding every interface, and checks the gRPC port answers;
- it writes `/run/milvus/standalone.pid` and `/tmp/milvus/server_id_<pid>` outside its data
  directory, which stop() removes.
Development tooling only: in a cluster Milvus runs from its own chart or operator.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

ETCD_PORTS = (2379, 2380)
START_TIMEOUT_SECONDS = 120.0
LOG_TAIL_BYTES = 3000


class MilvusServerError(RuntimeError):
    """The server could not be started; the message says why."""


def wait_indexed(
    client: Any, collection: str, rows: int, field: str = "vector", timeout: float = 900
) -> None:
    """Until a Milvus server has built the vector index over `rows` rows of `collection`.
    Right after a flush it searches rows not yet indexed another way (measured at 25k rows:
    recall@10 0.944 whatever `ef`, against 0.948-0.951 by default and 1.000 at ef 256 once
    built), so the collection is then loaded again by the caller. milvus-lite reports no
    index progress (it builds on load): it returns at once. Raises TimeoutError."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        info = client.describe_index(collection, field)
        if "indexed_rows" not in info or info["indexed_rows"] >= rows:
            return
        time.sleep(0.5)
    raise TimeoutError(f"{collection}: the index was not built in {timeout:.0f} s")


def _free_port_everywhere() -> int:
    """A port free on every interface (no SO_REUSEADDR: a listener on any address fails it)."""
    with socket.socket() as s:
        s.bind(("0.0.0.0", 0))
        return int(s.getsockname()[1])


def _answers(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(2)
        return s.connect_ex(("127.0.0.1", port)) == 0


def _port_taken(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return True
    return False


class MilvusServer:
    """One Milvus standalone process with its data, config and logs under `data_dir`."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir.resolve()
        self.proc: subprocess.Popen[bytes] | None = None
        self.port = 0
        self.health_port = 0

    @property
    def uri(self) -> str:
        """Its gRPC address on loopback; it listens on every interface at this port."""
        return f"http://127.0.0.1:{self.port}"

    def uri_at(self, host: str) -> str:
        """Its address as seen from elsewhere, e.g. pods reaching the host at a gateway."""
        return f"http://{host}:{self.port}"

    def start(self, timeout: float = START_TIMEOUT_SECONDS) -> MilvusServer:
        taken = [p for p in ETCD_PORTS if _port_taken(p)]
        if taken:
            raise MilvusServerError(
                f"127.0.0.1:{taken[0]} is in use: Milvus's embedded etcd needs ports "
                f"{ETCD_PORTS}, so only one such server can run on a machine (is another "
                "one running?)"
            )
        from milvus import MilvusServerConfig, _initialize_data_files

        self.port, self.health_port = _free_port_everywhere(), _free_port_everywhere()
        config = MilvusServerConfig(data_dir=str(self.data_dir), proxy_port=self.port)
        config.resolve()  # the other ports from Milvus's defaults on, milvus.yaml written
        _initialize_data_files(str(self.data_dir))  # unpacks the binaries (6 s, 246 MB)
        bin_dir = self.data_dir / "bin"
        env = {
            **os.environ,
            "DEPLOY_MODE": "STANDALONE",
            "METRICS_PORT": str(self.health_port),
            "MILVUS_RUN_DIR": str(self.data_dir / "run"),
            "LD_LIBRARY_PATH": ":".join([str(bin_dir), os.environ.get("LD_LIBRARY_PATH", "")]),
        }
        log = (self.data_dir / "logs" / "milvus.log").open("ab")
        with log:
            self.proc = subprocess.Popen(
                [str(bin_dir / "milvus"), "run", "standalone"],
                cwd=self.data_dir,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,  # its own group: stop() kills all of it
            )
        try:
            self._wait_healthy(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_healthy(self, timeout: float) -> None:
        assert self.proc is not None
        url = f"http://127.0.0.1:{self.health_port}/healthz"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise MilvusServerError(
                    f"Milvus exited with code {self.proc.returncode} while starting; its log "
                    f"ends with:\n{self.log_tail()}"
                )
            with (
                contextlib.suppress(OSError, urllib.error.URLError),
                urllib.request.urlopen(url, timeout=2) as resp,
            ):
                if b"OK" in resp.read() and _answers(self.port):
                    return
            time.sleep(0.25)
        raise MilvusServerError(
            f"Milvus did not answer {url} and gRPC on port {self.port} within {timeout:.0f} s;"
            f" its log ends with:\n"
            f"{self.log_tail()}"
        )

    def log_tail(self) -> str:
        path = self.data_dir / "logs" / "milvus.log"
        try:
            with path.open("rb") as f:
                f.seek(max(0, path.stat().st_size - LOG_TAIL_BYTES))
                return f.read().decode(errors="replace")
        except OSError as err:
            return f"(no log: {err})"

    def memory_mb(self) -> float:
        """Resident memory of the server process (for the benchmark's record)."""
        if self.proc is None:
            return 0.0
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return 0.0

    def stop(self) -> None:
        """SIGKILL the server's process group (SIGTERM does not stop it), then remove the
        files it left outside its data directory."""
        if self.proc is None:
            return
        pid = self.proc.pid
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)
        self.proc.wait(timeout=30)
        self.proc = None
        with contextlib.suppress(OSError):
            pid_file = Path("/run/milvus/standalone.pid")
            if pid_file.read_text().strip() == str(pid):
                pid_file.unlink()
        Path(f"/tmp/milvus/server_id_{pid}").unlink(missing_ok=True)

    def __enter__(self) -> MilvusServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
