"""The operator's read cache: the latest version of each object a reconcile reads, kept by the
watches the operator runs anyway (like client-go's informer caches).

Reconciles read Jobs, Pods, Deployments, ConfigMaps and claims from here instead of asking the
API server, whose LISTs over a namespace of a thousand Jobs cost it half a second each. Three
rules keep the reads honest:
- **Complete before used.** Kopf indexes feed the store, and Kopf starts no handler before
  every index has seen its kind's initial listing, so no reconcile runs on a half-filled store.
- **Our writes at once.** What `Kube.apply` answers and what `Kube.delete` removes update the
  store immediately, so a reconcile never misses a child the previous one made.
- **Listings mend gaps.** A watch that had to list its kind again (after a long outage) sends
  no deletion for what went meanwhile; `refresh` replaces a namespace's objects of a kind with
  a fresh listing, keeping any newer version the watch already brought.

Only what reconciles read is kept (`project`), and kept packed (`Packed`: compact JSON bytes
beside the version and labels that lookups need): a thousand resources' few thousand objects
cost about 4 MB instead of 13.5 MB as nested dicts, and a read decodes a fresh copy, which is
cheaper than the deep copy it replaces.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from phiops_operator.builders.common import MANAGED_BY
from phiops_operator.child_cache import resource_version

KindKey = tuple[str, str]  # apiVersion, kind
MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"
# kubectl's copy of the whole object (a user's documents, twice): nobody here reads it.
DROPPED_ANNOTATIONS = ("kubectl.kubernetes.io/last-applied-configuration",)
META_FIELDS = (
    "name",
    "namespace",
    "uid",
    "resourceVersion",
    "generation",
    "creationTimestamp",
    "deletionTimestamp",
    "labels",
    "ownerReferences",
)


def _meta(obj: Mapping[str, Any]) -> dict[str, Any]:
    meta = obj.get("metadata") or {}
    kept = {field: meta[field] for field in META_FIELDS if field in meta}
    annotations = {
        k: v for k, v in (meta.get("annotations") or {}).items() if k not in DROPPED_ANNOTATIONS
    }
    if annotations:
        kept["annotations"] = annotations
    return kept


def _base(obj: Mapping[str, Any]) -> dict[str, Any]:
    return {"apiVersion": obj["apiVersion"], "kind": obj["kind"], "metadata": _meta(obj)}


def _claim_volumes(pod_spec: Mapping[str, Any] | None) -> list[dict[str, Any]]:
    volumes = (pod_spec or {}).get("volumes") or []
    return [v for v in volumes if "persistentVolumeClaim" in v]


def _config_map(obj: Mapping[str, Any]) -> dict[str, Any]:
    """Our own ConfigMaps whole (progress, plans: small); a user's with its keys only (a
    reconcile asks whether a key exists; the documents themselves are read by the Jobs)."""
    kept = _base(obj)
    ours = (kept["metadata"].get("labels") or {}).get(MANAGED_BY_LABEL) == MANAGED_BY
    for field in ("data", "binaryData"):
        if field in obj:
            kept[field] = dict(obj[field]) if ours else dict.fromkeys(obj[field] or {}, "")
    return kept


def _claim(obj: Mapping[str, Any]) -> dict[str, Any]:
    return {**_base(obj), "spec": obj.get("spec") or {}, "status": obj.get("status") or {}}


def _job(obj: Mapping[str, Any]) -> dict[str, Any]:
    spec = obj.get("spec") or {}
    kept_spec = {k: spec[k] for k in ("parallelism", "completions", "backoffLimit") if k in spec}
    return {**_base(obj), "spec": kept_spec, "status": obj.get("status") or {}}


def _pod(obj: Mapping[str, Any]) -> dict[str, Any]:
    spec = obj.get("spec") or {}
    kept_spec: dict[str, Any] = {"volumes": _claim_volumes(spec)}
    if "nodeName" in spec:
        kept_spec["nodeName"] = spec["nodeName"]
    return {**_base(obj), "spec": kept_spec, "status": obj.get("status") or {}}


def _deployment(obj: Mapping[str, Any]) -> dict[str, Any]:
    spec = obj.get("spec") or {}
    template = spec.get("template") or {}
    kept_spec: dict[str, Any] = {
        "template": {
            "metadata": template.get("metadata") or {},
            "spec": {"volumes": _claim_volumes(template.get("spec"))},
        }
    }
    for field in ("replicas", "selector"):
        if field in spec:
            kept_spec[field] = spec[field]
    return {**_base(obj), "spec": kept_spec, "status": obj.get("status") or {}}


# What is kept of each kind the store holds; other kinds are always read from the API.
# A kind's watch (and a listing that mends it) covers what its selector selects.
OURS = f"{MANAGED_BY_LABEL}={MANAGED_BY}"
SELECTORS: dict[KindKey, str] = {
    ("v1", "ConfigMap"): "",
    ("v1", "PersistentVolumeClaim"): "",
    ("v1", "Pod"): OURS,
    ("batch/v1", "Job"): OURS,
    ("apps/v1", "Deployment"): OURS,
}
PROJECTIONS: dict[KindKey, Callable[[Mapping[str, Any]], dict[str, Any]]] = {
    ("v1", "ConfigMap"): _config_map,
    ("v1", "PersistentVolumeClaim"): _claim,
    ("v1", "Pod"): _pod,
    ("batch/v1", "Job"): _job,
    ("apps/v1", "Deployment"): _deployment,
}


def plain(value: Any) -> Any:
    """A plain, detached copy of an object (Kopf hands out read-only views)."""
    if isinstance(value, Mapping):
        return {key: plain(item) for key, item in value.items()}
    if isinstance(value, list):
        return [plain(item) for item in value]
    return value


def pack(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()


def unpack(blob: bytes) -> Any:
    return json.loads(blob)


@dataclass(frozen=True, slots=True)
class Packed:
    """One stored object: what lookups test, and the rest as bytes (decoded on reads)."""

    version: int
    labels: dict[str, str]
    blob: bytes

    @classmethod
    def of(cls, obj: Mapping[str, Any]) -> Packed:
        labels = obj["metadata"].get("labels") or {}
        # Label keys and values repeat across thousands of objects: one copy of each.
        shared = {sys.intern(str(k)): sys.intern(str(v)) for k, v in labels.items()}
        return cls(resource_version(obj), shared, pack(obj))

    def unpacked(self) -> dict[str, Any]:
        found: dict[str, Any] = unpack(self.blob)
        return found


def project(obj: Mapping[str, Any]) -> dict[str, Any]:
    """The part of `obj` the store keeps (a detached copy)."""
    kept: dict[str, Any] = plain(PROJECTIONS[(obj["apiVersion"], obj["kind"])](obj))
    return kept


@dataclass(frozen=True)
class Requirement:
    key: str
    op: str  # "=", "!=", "exists", "!exists"
    value: str = ""

    def matches(self, labels: Mapping[str, str]) -> bool:
        if self.op == "exists":
            return self.key in labels
        if self.op == "!exists":
            return self.key not in labels
        if self.op == "=":
            return labels.get(self.key) == self.value
        return labels.get(self.key) != self.value


def parse_selector(text: str) -> list[Requirement] | None:
    """Equality-based label selectors (`a=b,c!=d,e,!f`); None for set-based ones (`in`,
    `notin`), which the caller then sends to the API server."""
    found: list[Requirement] = []
    for term in (t.strip() for t in text.split(",")):
        if not term:
            continue
        if "(" in term or " " in term:
            return None
        if "!=" in term:
            key, value = term.split("!=", 1)
            found.append(Requirement(key, "!=", value))
        elif "=" in term:
            key, value = term.split("==", 1) if "==" in term else term.split("=", 1)
            found.append(Requirement(key, "=", value))
        elif term.startswith("!"):
            found.append(Requirement(term[1:], "!exists"))
        else:
            found.append(Requirement(term, "exists"))
    return found


class ObjectStore:
    """Objects by kind, namespace and name; reads hand out copies (callers may edit them)."""

    def __init__(self) -> None:
        self._objects: dict[KindKey, dict[str, dict[str, Packed]]] = {}
        # Deleted by us at this version: an older event still on its way must not revive it.
        self._deleted: dict[tuple[str, str, str, str], int] = {}

    @staticmethod
    def holds(api_version: str, kind: str) -> bool:
        return (api_version, kind) in PROJECTIONS

    def observe(self, obj: Mapping[str, Any]) -> None:
        """A version of an object: from a watch, a listing or our own write. Older than what
        the store has (or than our deletion of it) changes nothing."""
        kind_key = (obj["apiVersion"], obj["kind"])
        meta = obj["metadata"]
        namespace, name = meta.get("namespace", ""), meta["name"]
        version = resource_version(obj)
        tomb = self._deleted.get((*kind_key, namespace, name))
        if tomb is not None:
            if version <= tomb:
                return
            del self._deleted[(*kind_key, namespace, name)]
        objects = self._objects.setdefault(kind_key, {}).setdefault(namespace, {})
        known = objects.get(name)
        if known is not None and version < known.version:
            return
        objects[name] = Packed.of(project(obj))

    def forget(self, api_version: str, kind: str, namespace: str, name: str) -> None:
        """We deleted it (or found it gone)."""
        gone = self._objects.get((api_version, kind), {}).get(namespace, {}).pop(name, None)
        version = gone.version if gone is not None else 0
        key = (api_version, kind, namespace, name)
        self._deleted[key] = max(version, self._deleted.get(key, 0))

    def deleted(self, obj: Mapping[str, Any]) -> None:
        """The watch saw it deleted: gone for good, and any tombstone with it."""
        meta = obj["metadata"]
        namespace, name = meta.get("namespace", ""), meta["name"]
        kind_key = (obj["apiVersion"], obj["kind"])
        objects = self._objects.get(kind_key, {}).get(namespace, {})
        known = objects.get(name)
        if known is None or known.version <= resource_version(obj):
            objects.pop(name, None)
        self._deleted.pop((*kind_key, namespace, name), None)

    def refresh(
        self,
        api_version: str,
        kind: str,
        namespace: str,
        items: Iterable[Mapping[str, Any]],
        listed_at: int,
    ) -> list[dict[str, Any]]:
        """Make a namespace's objects of a kind what a listing at version `listed_at` shows,
        except what the watch brought newer than it. Returns the objects dropped."""
        listed = {item["metadata"]["name"]: item for item in items}
        objects = self._objects.setdefault((api_version, kind), {}).setdefault(namespace, {})
        ghosts = [
            name
            for name, known in objects.items()
            if name not in listed and known.version <= listed_at
        ]
        dropped = [objects.pop(name).unpacked() for name in ghosts]
        for item in listed.values():
            self.observe({"apiVersion": api_version, "kind": kind, **item})
        return dropped

    def get(self, api_version: str, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        found = self._objects.get((api_version, kind), {}).get(namespace, {}).get(name)
        return found.unpacked() if found is not None else None

    def list(
        self, api_version: str, kind: str, namespace: str, label_selector: str
    ) -> list[dict[str, Any]] | None:
        """Objects matching the selector; None when it is not one the store can evaluate."""
        requirements = parse_selector(label_selector)
        if requirements is None:
            return None
        objects = self._objects.get((api_version, kind), {}).get(namespace, {})
        return [
            packed.unpacked()
            for packed in objects.values()
            if all(r.matches(packed.labels) for r in requirements)
        ]

    def __len__(self) -> int:
        return sum(len(names) for kinds in self._objects.values() for names in kinds.values())
