"""Event-driven reconciles: watch events in, one work queue, reconciles out.

What the operator keeps in memory: the latest body of every phiops resource (from its watch;
packed, as the object store keeps its objects: about 2.5 KB each instead of 10 KB as dicts),
which inputs each one references, and a queue of resources to reconcile. A resource is
reconciled when
- its spec, labels or annotations change (not when only its status does: that is us);
- one of its children changes (any object carrying our managed-by label and its name);
- an input it references changes: a ConfigMap or claim, or a FineTuneJob or KnowledgeBase a
  PhiDeployment uses (their status included);
- a deadline its last reconcile asked for passes (a sync interval, a pod being polled), or
  the back-off after a failure ends, or the API server is heard from again after one;
- and, as a safety net against an event lost on the way, `resync_seconds` (10 minutes)
  after its last reconcile, like controller-runtime's sync period.
Nothing else runs periodically, so idle resources cost the API server next to nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
from collections.abc import Hashable, Mapping
from dataclasses import dataclass
from typing import Any, cast

import aiohttp
import kopf
from kubernetes_asyncio.client.exceptions import ApiException

from phiops_operator import allocator, metrics
from phiops_operator.builders.common import MANAGED_BY
from phiops_operator.child_cache import resource_version
from phiops_operator.config import OperatorConfig
from phiops_operator.k8s import Kube, KubeError
from phiops_operator.object_store import (
    DROPPED_ANNOTATIONS,
    MANAGED_BY_LABEL,
    SELECTORS,
    ObjectStore,
    pack,
    plain,
    unpack,
)
from phiops_operator.reconcile import REGISTRY, InputRef, Registration, reconcile
from phiops_operator.workqueue import WorkQueue

log = logging.getLogger(__name__)

Key = tuple[str, str, str]  # plural, namespace, name
PROBE_SECONDS = 1.0
# After reconciles, once the queue is quiet, the heap's free pages go back to the system:
# a burst of a thousand resources leaves ~15 MB of them that glibc would otherwise keep.
TRIM_SECONDS = 30.0
# Children change in flurries (a Job, its pod, their statuses): one reconcile for a flurry.
CHILD_DEBOUNCE_SECONDS = 0.5
# A listing this long after start-up is a watch that had to list again: its gaps are mended
# (`ObjectStore.refresh`) after a short wait that gathers the whole listing.
RELIST_AFTER_SECONDS = 30.0
REFRESH_DELAY_SECONDS = 2.0
# API trouble a later retry may fix (the API server away, overloaded, or a conflict).
TRANSIENT = (KubeError, ApiException, aiohttp.ClientError, TimeoutError, OSError)
NAME_LABEL = "app.kubernetes.io/name"
INSTANCE_LABEL = "app.kubernetes.io/instance"


def _desired(body: Mapping[str, Any]) -> bytes:
    """A digest of what a user changes (a change of anything else, such as status, is not a
    reason to reconcile the resource itself)."""
    meta = body["metadata"]
    desired = (
        body.get("spec"),
        meta.get("generation"),
        meta.get("labels"),
        meta.get("annotations"),
        meta.get("deletionTimestamp"),
    )
    return hashlib.blake2b(pack(plain(desired)), digest_size=16).digest()


@dataclass(frozen=True, slots=True)
class _Resource:
    """A resource as the controller keeps it: what events are compared on, and the body."""

    version: int
    desired: bytes
    blob: bytes

    @classmethod
    def of(cls, kept: dict[str, Any]) -> _Resource:
        return cls(resource_version(kept), _desired(kept), pack(kept))


def _kept(body: Mapping[str, Any]) -> dict[str, Any]:
    """What the controller keeps of a resource: all of it but the bookkeeping nobody here
    reads (managed fields, kubectl's copy of the last applied spec), which is half its size."""
    kept: dict[str, Any] = plain(body)
    meta = kept["metadata"]
    meta.pop("managedFields", None)
    annotations = meta.get("annotations")
    if annotations:
        for name in DROPPED_ANNOTATIONS:
            annotations.pop(name, None)
    return kept


class Controller:
    def __init__(self, kube: Kube, config: OperatorConfig, memo: Any, settings: Any = None) -> None:
        self.kube, self.config, self.memo, self.settings = kube, config, memo, settings
        self.queue = WorkQueue(self._handle, config.worker_limit, transient=TRANSIENT)
        self.bodies: dict[Key, _Resource] = {}
        self.memos: dict[Key, dict[str, Any]] = {}
        self.loggers: dict[Key, Any] = {}
        self._inputs: dict[Key, set[tuple[str, str, str]]] = {}
        self._users: dict[tuple[str, str, str], set[Key]] = {}
        self._plurals = {reg.kind.kind.lower(): plural for plural, reg in REGISTRY.items()}
        self._refreshes: dict[tuple[str, str, str], asyncio.Task[None]] = {}
        self._started = 0.0

    @property
    def objects(self) -> ObjectStore | None:
        return self.kube.objects

    def start(self) -> None:
        self._started = asyncio.get_running_loop().time()
        self.queue.start()
        self._prober = asyncio.create_task(self._probe_while_failing())
        self._trimmer = asyncio.create_task(self._trim_when_quiet())

    async def stop(self) -> None:
        tasks = [self._prober, self._trimmer, *self._refreshes.values()]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self.queue.stop()

    async def _probe_while_failing(self) -> None:
        """While reconciles fail, ask the API server every second whether it is back, and
        retry them all as soon as it is (their back-off may be a minute by then; a watch
        that resumes brings no event when nothing changed)."""
        while True:
            await asyncio.sleep(PROBE_SECONDS)
            if self.queue.failing and await self.kube.reachable():
                self.queue.retry_failed_now()

    async def _trim_when_quiet(self) -> None:
        trimmed_at = self.queue.runs
        while True:
            await asyncio.sleep(TRIM_SECONDS)
            if self.queue.runs != trimmed_at and self.queue.idle:
                trimmed_at = self.queue.runs
                before = allocator.rss_mb()
                allocator.trim()
                log.debug("heap trimmed: RSS %.1f -> %.1f MB", before, allocator.rss_mb())

    # -- events in ---------------------------------------------------------------------------

    def resource_event(self, plural: str, body: Mapping[str, Any], kind: str | None) -> None:
        """A phiops resource was listed, added, modified or deleted."""
        self.queue.retry_failed_now()
        meta = body["metadata"]
        key: Key = (plural, meta["namespace"], meta["name"])
        # Whoever uses this resource (a PhiDeployment, its FineTuneJob) reads its status.
        self._touch(REGISTRY[plural].kind.kind, meta["namespace"], meta["name"])
        if kind == "DELETED":
            self._drop(key)
            return
        previous = self.bodies.get(key)
        if previous is not None and resource_version(body) < previous.version:
            return  # older than what our own status write already told us
        current = _kept(body)
        self.bodies[key] = packed = _Resource.of(current)
        if key not in self.loggers and self.settings is not None:
            # Names the resource in what its reconciles log (Kopf's log-to-Event posting is
            # off; the Events are events.py's, one per Ready transition).
            self.loggers[key] = kopf.ObjectLogger(
                body=kopf.Body(cast(Any, current)), settings=self.settings
            )
        self._index(key, current)
        if previous is None or previous.desired != packed.desired:
            self.queue.add(key)

    def child_event(self, body: Mapping[str, Any], kind: str | None) -> None:
        """An object we made (it carries our managed-by label) changed."""
        self.queue.retry_failed_now()
        self._stored(body, kind)
        meta = body["metadata"]
        identity = {
            "apiVersion": body["apiVersion"],
            "kind": body["kind"],
            "metadata": {
                field: meta.get(field)
                for field in ("namespace", "name", "resourceVersion", "generation")
            },
        }
        if not self.kube.children.observed(identity, deleted=kind == "DELETED"):
            return  # the echo of our own apply
        labels = meta.get("labels") or {}
        plural = self._plurals.get(labels.get(NAME_LABEL, ""))
        if plural is not None and labels.get(INSTANCE_LABEL):
            key = (plural, meta["namespace"], labels[INSTANCE_LABEL])
            if key in self.bodies:
                self.queue.add(key, CHILD_DEBOUNCE_SECONDS)

    def input_event(self, kind: str, body: Mapping[str, Any], event: str | None) -> None:
        """A ConfigMap or claim changed: reconcile whoever references it."""
        self.queue.retry_failed_now()
        self._stored(body, event)
        meta = body["metadata"]
        self._touch(kind, meta["namespace"], meta["name"])

    # -- the read cache ----------------------------------------------------------------------

    def _stored(self, body: Mapping[str, Any], event: str | None) -> None:
        """Keep the object store whole: Kopf's indexes bring every version but deletions;
        a listing long after start-up is a watch that listed again, with deletions missed."""
        store = self.objects
        if store is None or not store.holds(body["apiVersion"], body["kind"]):
            return
        if event == "DELETED":
            store.deleted(body)
        elif event is None:
            now = asyncio.get_running_loop().time()
            if now - self._started >= RELIST_AFTER_SECONDS:
                self._refresh_soon(body["apiVersion"], body["kind"], body["metadata"]["namespace"])

    def _refresh_soon(self, api_version: str, kind: str, namespace: str) -> None:
        key = (api_version, kind, namespace)
        if key not in self._refreshes:
            self._refreshes[key] = asyncio.create_task(self._refresh(key))

    async def _refresh(self, key: tuple[str, str, str]) -> None:
        api_version, kind, namespace = key
        try:
            await asyncio.sleep(REFRESH_DELAY_SECONDS)
            items, listed_at = await self.kube.listing(
                api_version, kind, namespace, SELECTORS[(api_version, kind)]
            )
            store = self.objects
            assert store is not None
            for gone in store.refresh(api_version, kind, namespace, items, listed_at):
                name = gone["metadata"]["name"]
                log.info("%s %s/%s went while its watch was away", kind, namespace, name)
                labels = gone["metadata"].get("labels") or {}
                if labels.get(MANAGED_BY_LABEL) == MANAGED_BY:
                    self.child_event(gone, "DELETED")
                self.input_event(kind, gone, "DELETED")
        except TRANSIENT as err:
            log.warning("could not list %s in %s to mend the cache: %s", kind, namespace, err)
        finally:
            self._refreshes.pop(key, None)

    # -- bookkeeping -------------------------------------------------------------------------

    def _touch(self, kind: str, namespace: str, name: str) -> None:
        for user in self._users.get((kind, namespace, name), ()):
            self.queue.add(user, CHILD_DEBOUNCE_SECONDS)

    def _index(self, key: Key, body: dict[str, Any]) -> None:
        registration = REGISTRY[key[0]]
        try:
            spec = registration.kind.spec.model_validate(body.get("spec") or {})
            refs: set[InputRef] = registration.inputs(spec)
        except Exception:  # an invalid spec references nothing the operator will read
            refs = set()
        wanted = {(kind, key[1], name) for kind, name in refs}
        for gone in self._inputs.get(key, set()) - wanted:
            self._users.get(gone, set()).discard(key)
        for ref in wanted:
            self._users.setdefault(ref, set()).add(key)
        self._inputs[key] = wanted

    def _drop(self, key: Key) -> None:
        self.queue.forget(key)
        self.bodies.pop(key, None)
        self.memos.pop(key, None)
        self.loggers.pop(key, None)
        for ref in self._inputs.pop(key, set()):
            users = self._users.get(ref)
            if users is not None:
                users.discard(key)
                if not users:
                    del self._users[ref]

    # -- reconciles out ----------------------------------------------------------------------

    async def _handle(self, key: Hashable) -> float | None:
        assert isinstance(key, tuple)
        stored = self.bodies.get(key)
        if stored is None:
            return None
        body: dict[str, Any] = unpack(stored.blob)
        memo = self.memos.setdefault(key, {})
        for shared in ("kube", "config"):
            memo.setdefault(shared, self.memo[shared])
        logger = self.loggers.get(key) or log
        registration: Registration = REGISTRY[key[0]]
        written, after = await reconcile(registration, body, self.kube, self.config, memo, logger)
        # Our write is the newest we know of the resource (its own event comes later).
        known = self.bodies.get(key)
        if written is not None and known is not None and resource_version(written) >= known.version:
            self.bodies[key] = _Resource.of(_kept(written))
        metrics.QUEUE_DEPTH.set(self.queue.depth)
        resync = self.config.resync_seconds or None
        if after is None or (resync is not None and resync < after):
            return resync
        return after
