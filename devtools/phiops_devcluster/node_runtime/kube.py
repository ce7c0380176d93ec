"""A small JSON client for the apiserver: plain dicts in and out, thread-safe, plus list+watch.

The kubeconfig is read by the `kubernetes` package (any auth it supports); requests go through
one urllib3 pool shared by all threads.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

import urllib3

Obj = dict[str, Any]
log = logging.getLogger("node-runtime.kube")

MERGE_PATCH = "application/merge-patch+json"
# Short: the apiserver is on loopback, and after an outage pods must catch up within seconds.
MAX_RETRY_SECONDS = 4.0


class ApiError(Exception):
    def __init__(self, status: int, method: str, path: str, body: str) -> None:
        super().__init__(f"{method} {path}: HTTP {status}: {body[:500]}")
        self.status = status


class Kube:
    def __init__(self, kubeconfig: Path) -> None:
        from kubernetes import client, config

        conf = client.Configuration()
        config.load_kube_config(config_file=str(kubeconfig), client_configuration=conf)
        self.server: str = conf.host.rstrip("/")
        self._headers: dict[str, str] = {"Accept": "application/json"}
        token = conf.api_key.get("authorization") or conf.api_key.get("BearerToken")
        if token:
            self._headers["Authorization"] = token
        self._pool = urllib3.PoolManager(
            maxsize=32,
            cert_reqs="CERT_REQUIRED" if conf.verify_ssl else "CERT_NONE",
            ca_certs=conf.ssl_ca_cert,
            cert_file=conf.cert_file,
            key_file=conf.key_file,
        )

    def _url(self, path: str, query: dict[str, Any] | None) -> str:
        url = self.server + path
        if query:
            url += "?" + urlencode({k: v for k, v in query.items() if v is not None})
        return url

    def request(
        self,
        method: str,
        path: str,
        body: Obj | None = None,
        *,
        query: dict[str, Any] | None = None,
        content_type: str = "application/json",
        timeout: float = 30,
    ) -> Obj:
        headers = dict(self._headers)
        data = None
        if body is not None:
            headers["Content-Type"] = content_type
            data = json.dumps(body).encode()
        resp = self._pool.request(
            method,
            self._url(path, query),
            body=data,
            headers=headers,
            timeout=timeout,
            retries=False,
        )
        text = resp.data.decode(errors="replace")
        if resp.status >= 300:
            raise ApiError(resp.status, method, path, text)
        result: Obj = json.loads(text) if text else {}
        return result

    def get(self, path: str, **query: Any) -> Obj:
        return self.request("GET", path, query=query)

    def get_or_none(self, path: str) -> Obj | None:
        try:
            return self.get(path)
        except ApiError as err:
            if err.status == 404:
                return None
            raise

    def create(self, path: str, body: Obj) -> Obj | None:
        """POST; None when it already exists."""
        try:
            return self.request("POST", path, body)
        except ApiError as err:
            if err.status == 409:
                return None
            raise

    def patch(self, path: str, body: Obj, content_type: str = MERGE_PATCH) -> Obj:
        return self.request("PATCH", path, body, content_type=content_type)

    def delete(self, path: str, body: Obj | None = None) -> bool:
        """DELETE; False when it was already gone."""
        try:
            self.request("DELETE", path, body)
        except ApiError as err:
            if err.status in (404, 409):  # 409: a precondition (uid) no longer holds
                return False
            raise
        return True

    def watch(self, path: str, query: dict[str, Any], timeout_seconds: int) -> Iterator[Obj]:
        """The events of one watch request, until the server ends it."""
        query = {
            **query,
            "watch": "true",
            "timeoutSeconds": timeout_seconds,
            "allowWatchBookmarks": "true",
        }
        resp = self._pool.request(
            "GET",
            self._url(path, query),
            headers=self._headers,
            preload_content=False,
            timeout=urllib3.Timeout(connect=10, read=timeout_seconds + 30),
            retries=False,
        )
        try:
            if resp.status >= 300:
                raise ApiError(resp.status, "WATCH", path, resp.read().decode(errors="replace"))
            buffer = b""
            for chunk in resp.stream(65536):
                buffer += chunk
                while b"\n" in buffer:
                    line, buffer = buffer.split(b"\n", 1)
                    if line.strip():
                        yield json.loads(line)
        finally:
            resp.release_conn()


def list_and_watch(
    kube: Kube,
    path: str,
    *,
    on_event: Callable[[str, Obj], None],
    on_list: Callable[[list[Obj]], None] | None = None,
    query: dict[str, Any] | None = None,
    stop: threading.Event,
    name: str,
) -> None:
    """Informer loop: list, then watch from that resourceVersion; relist after errors and 410.

    `on_list` gets every full listing (after the first and every relist), `on_event` each
    ADDED/MODIFIED/DELETED event (also for the items of a listing, as ADDED, when no `on_list`
    is given). Exceptions from the callbacks are logged and never end the loop.
    """
    query = dict(query or {})
    failures = 0
    while not stop.is_set():
        try:
            listing = kube.get(path, **query)
            failures = 0
            items: list[Obj] = listing.get("items") or []
            if on_list is not None:
                _safely(name, on_list, items)
            else:
                for item in items:
                    _safely(name, on_event, "ADDED", item)
            version = listing["metadata"]["resourceVersion"]
            while not stop.is_set():
                for event in kube.watch(path, {**query, "resourceVersion": version}, 240):
                    kind, obj = event["type"], event["object"]
                    if kind == "ERROR":
                        raise ApiError(obj.get("code", 500), "WATCH", path, obj.get("message", ""))
                    version = obj["metadata"]["resourceVersion"]
                    if kind != "BOOKMARK":
                        _safely(name, on_event, kind, obj)
                    if stop.is_set():
                        return
        except Exception as err:
            if stop.is_set() or (isinstance(err, ApiError) and err.status == 410):
                continue  # 410 Gone: our resourceVersion is too old; relist at once
            failures += 1
            delay = min(MAX_RETRY_SECONDS, 0.5 * 2**failures)
            log.warning("%s: %s: %s; relisting in %.0fs", name, type(err).__name__, err, delay)
            stop.wait(delay)


def _safely(name: str, func: Callable[..., None], *args: Any) -> None:
    try:
        func(*args)
    except Exception:
        log.exception("%s: handler failed", name)


def now_rfc3339() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def now_micro() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def q(segment: str) -> str:
    """Quote one path segment."""
    return quote(segment, safe="")
