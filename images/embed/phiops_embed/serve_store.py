"""The embedded store pod: milvus-lite's gRPC server over one data directory.

milvus-lite lets one process open a data directory; serving it over gRPC lets the embedding
Jobs and the inference pods share it by URI, exactly as they would an external Milvus.
"""

from __future__ import annotations

import logging
import signal
import threading
from concurrent import futures
from types import FrameType
from typing import Any

log = logging.getLogger(__name__)

SHUTDOWN_GRACE_SECONDS = 5.0
_MAX_MESSAGE_BYTES = 256 * 1024 * 1024  # as Milvus standalone (and milvus-lite's own CLI)
# pymilvus pings every 10 s, also on idle connections; gRPC's default server policy calls
# that abuse and answers GOAWAY "too_many_pings", dropping long-lived readers' channels.
_SERVER_OPTIONS = [
    ("grpc.max_receive_message_length", _MAX_MESSAGE_BYTES),
    ("grpc.max_send_message_length", _MAX_MESSAGE_BYTES),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.min_recv_ping_interval_without_data_ms", 5000),
    ("grpc.http2.max_ping_strikes", 0),
]


def start(data_dir: str, host: str, port: int, max_workers: int) -> tuple[Any, Any, int]:
    """(grpc server, MilvusLite, bound port), started. Raises RuntimeError when it cannot
    bind. Built like milvus-lite's `start_server_in_thread`, plus keepalive options."""
    import grpc
    from milvus_lite.adapter.grpc.servicer import MilvusServicer
    from milvus_lite.db import MilvusLite
    from pymilvus.grpc_gen import milvus_pb2_grpc

    db = MilvusLite(data_dir)
    try:
        pool = futures.ThreadPoolExecutor(max_workers=max_workers)
        server = grpc.server(pool, options=_SERVER_OPTIONS)
        milvus_pb2_grpc.add_MilvusServiceServicer_to_server(MilvusServicer(db), server)
        bound = server.add_insecure_port(f"{host}:{port}")
        if not bound:
            raise RuntimeError(f"cannot bind {host}:{port}")
        server.start()
    except BaseException:
        db.close()
        raise
    return server, db, int(bound)


def serve(data_dir: str, host: str = "0.0.0.0", port: int = 19530, max_workers: int = 10) -> int:
    """Serve until SIGTERM/SIGINT, then drain requests and close the data directory cleanly
    (milvus-lite's own CLI only stops on Ctrl-C; a pod is stopped with SIGTERM)."""
    stop = threading.Event()

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        log.info("received %s: shutting down", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        server, db, bound = start(data_dir, host, port, max_workers)
    except RuntimeError as err:  # grpc cannot bind (port in use, bad host)
        log.error("cannot listen on %s:%d: %s", host, port, err)
        return 1
    log.info("milvus-lite serving %s on %s:%d", data_dir, host, bound)
    try:
        while not stop.wait(1.0):
            pass
    finally:
        server.stop(grace=SHUTDOWN_GRACE_SECONDS).wait()
        db.close()
        log.info("milvus-lite stopped")
    return 0
