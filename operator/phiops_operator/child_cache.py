"""What the operator last applied to each child, kept current by the watch on its children.

A reconcile that would apply a child exactly as it applied it last time, to a child that still
exists unchanged in spec, sends nothing (`Kube.apply` asks here first). A child deleted, or
edited by someone else (its `metadata.generation` moved away from what our apply produced),
is applied again on the next reconcile. Only hashes and versions are kept, never objects:
a thousand resources' children cost about a megabyte.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

ChildKey = tuple[str, str, str, str]  # apiVersion, kind, namespace, name


def child_key(obj: dict[str, Any]) -> ChildKey:
    meta = obj["metadata"]
    return (obj["apiVersion"], obj["kind"], meta.get("namespace", ""), meta["name"])


def manifest_hash(manifest: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(manifest, sort_keys=True).encode()).hexdigest()


def resource_version(obj: Mapping[str, Any]) -> int:
    text = str(obj["metadata"].get("resourceVersion") or "0")
    return int(text) if text.isdigit() else 0


@dataclass
class _Entry:
    applied_hash: str | None
    generation: int | None  # what our apply left; another value means someone else edited
    version: int  # the newest resourceVersion seen


class ChildCache:
    def __init__(self) -> None:
        self._entries: dict[ChildKey, _Entry] = {}

    def unchanged(self, manifest: dict[str, Any]) -> bool:
        """Applying `manifest` again would change nothing."""
        entry = self._entries.get(child_key(manifest))
        return entry is not None and entry.applied_hash == manifest_hash(manifest)

    def applied(self, manifest: dict[str, Any], result: dict[str, Any]) -> None:
        """`manifest` was applied and the API server answered `result`."""
        meta = result["metadata"]
        self._entries[child_key(manifest)] = _Entry(
            manifest_hash(manifest), meta.get("generation"), resource_version(result)
        )

    def observed(self, obj: dict[str, Any], deleted: bool = False) -> bool:
        """A watch event for a child; False when it only echoes our own latest apply (or is
        older than it): its parent learns nothing from it."""
        key = child_key(obj)
        if deleted:
            self._entries.pop(key, None)
            return True
        entry = self._entries.get(key)
        if entry is None:
            return True  # not applied by this process (a pod, a Job's status, a restart)
        if resource_version(obj) <= entry.version:
            return False
        newer, entry.version = True, resource_version(obj)
        generation = obj["metadata"].get("generation")
        # Edited by someone else: apply again next time. Kinds without a generation
        # (ConfigMaps, Services, claims) count any newer version as an edit.
        if generation != entry.generation or (generation is None and newer):
            entry.applied_hash = None
        return True

    def __len__(self) -> int:
        return len(self._entries)
