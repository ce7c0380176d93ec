"""Volumes: the `phiops-local` provisioner (hostPath PVs) and a pod's volumes on the host."""

from __future__ import annotations

import base64
import logging
import shutil
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from phiops_devcluster.node_runtime import PROVISIONER, STORAGE_CLASS, volume_dir
from phiops_devcluster.node_runtime.kube import Kube, Obj, list_and_watch, q

log = logging.getLogger("node-runtime.volumes")

PROVISIONED_BY = "pv.kubernetes.io/provisioned-by"


class VolumeNotReady(Exception):
    """A volume's source (ConfigMap, Secret, bound claim) is not there yet; retry later."""


# -- provisioner ------------------------------------------------------------------------------


class LocalProvisioner:
    """Creates a pre-bound hostPath PV for each pending `phiops-local` claim; deletes released
    ones (and their data)."""

    def __init__(self, kube: Kube, state_dir: Path, stop: threading.Event) -> None:
        self._kube = kube
        self._state_dir = state_dir
        self._stop = stop

    def threads(self) -> list[threading.Thread]:
        claims = threading.Thread(
            name="watch-pvcs",
            daemon=True,
            target=list_and_watch,
            args=(self._kube, "/api/v1/persistentvolumeclaims"),
            kwargs={"on_event": self.on_claim, "stop": self._stop, "name": "pvc watch"},
        )
        volumes = threading.Thread(
            name="watch-pvs",
            daemon=True,
            target=list_and_watch,
            args=(self._kube, "/api/v1/persistentvolumes"),
            kwargs={"on_event": self.on_volume, "stop": self._stop, "name": "pv watch"},
        )
        return [claims, volumes]

    def on_claim(self, event: str, claim: Obj) -> None:
        spec, meta = claim.get("spec", {}), claim["metadata"]
        if (
            event == "DELETED"
            or spec.get("storageClassName") != STORAGE_CLASS
            or spec.get("volumeName")
            or claim.get("status", {}).get("phase", "Pending") != "Pending"
            or meta.get("deletionTimestamp")
        ):
            return
        pv_name = f"pvc-{meta['uid']}"
        path = volume_dir(self._state_dir, pv_name)
        path.mkdir(parents=True, exist_ok=True)
        path.chmod(0o777)
        storage = spec.get("resources", {}).get("requests", {}).get("storage", "1Gi")
        created = self._kube.create(
            "/api/v1/persistentvolumes",
            {
                "apiVersion": "v1",
                "kind": "PersistentVolume",
                "metadata": {"name": pv_name, "annotations": {PROVISIONED_BY: PROVISIONER}},
                "spec": {
                    "capacity": {"storage": storage},
                    "accessModes": spec.get("accessModes") or ["ReadWriteOnce"],
                    "persistentVolumeReclaimPolicy": "Delete",
                    "storageClassName": STORAGE_CLASS,
                    "volumeMode": spec.get("volumeMode", "Filesystem"),
                    "hostPath": {"path": str(path), "type": "DirectoryOrCreate"},
                    "claimRef": {
                        "apiVersion": "v1",
                        "kind": "PersistentVolumeClaim",
                        "namespace": meta["namespace"],
                        "name": meta["name"],
                        "uid": meta["uid"],
                    },
                },
            },
        )
        if created is not None:
            log.info(
                "provisioned %s for claim %s/%s (%s)",
                pv_name,
                meta["namespace"],
                meta["name"],
                storage,
            )

    def on_volume(self, event: str, pv: Obj) -> None:
        meta, spec = pv["metadata"], pv.get("spec", {})
        if (meta.get("annotations") or {}).get(PROVISIONED_BY) != PROVISIONER:
            return
        released = pv.get("status", {}).get("phase") in ("Released", "Failed")
        if event == "DELETED" or (
            released and spec.get("persistentVolumeReclaimPolicy") == "Delete"
        ):
            path = spec.get("hostPath", {}).get("path")
            if path and Path(path).is_relative_to(self._state_dir / "volumes"):
                shutil.rmtree(path, ignore_errors=True)
            if event != "DELETED" and self._kube.delete(
                f"/api/v1/persistentvolumes/{q(meta['name'])}"
            ):
                log.info("deleted released volume %s and its data", meta["name"])


# -- a pod's volumes --------------------------------------------------------------------------


@dataclass(frozen=True)
class HostVolume:
    path: Path
    read_only: bool  # configMap/secret/downwardAPI volumes are always mounted read-only


def materialise_volumes(kube: Kube, pod: Obj, volumes_dir: Path) -> dict[str, HostVolume]:
    """Prepare every volume of the pod on the host; raises VolumeNotReady to be retried."""
    namespace = pod["metadata"]["namespace"]
    result: dict[str, HostVolume] = {}
    for volume in pod.get("spec", {}).get("volumes") or []:
        name = volume["name"]
        target = volumes_dir / name
        if "persistentVolumeClaim" in volume:
            source = volume["persistentVolumeClaim"]
            result[name] = HostVolume(
                _claim_path(kube, namespace, source["claimName"]), bool(source.get("readOnly"))
            )
            continue
        if "hostPath" in volume:
            path = Path(volume["hostPath"]["path"])
            if volume["hostPath"].get("type") == "DirectoryOrCreate":
                path.mkdir(parents=True, exist_ok=True)
            result[name] = HostVolume(path, False)
            continue
        read_only = True
        files: dict[str, tuple[bytes, int]] | None
        if "configMap" in volume:
            files = _object_files(kube, namespace, "configmaps", volume["configMap"])
        elif "secret" in volume:
            source = {**volume["secret"], "name": volume["secret"].get("secretName")}
            files = _object_files(kube, namespace, "secrets", source)
        elif "downwardAPI" in volume:
            files = _downward_files(pod, volume["downwardAPI"])
        elif "projected" in volume:
            files = _projected_files(kube, pod, volume["projected"])
        else:
            if "emptyDir" not in volume:
                log.warning(
                    "pod %s/%s: volume %s has an unsupported type; using an empty dir",
                    namespace,
                    pod["metadata"]["name"],
                    name,
                )
            files, read_only = {}, False
        _write_files(target, files)
        result[name] = HostVolume(target, read_only)
    return result


def _claim_path(kube: Kube, namespace: str, claim_name: str) -> Path:
    claim = kube.get_or_none(
        f"/api/v1/namespaces/{q(namespace)}/persistentvolumeclaims/{q(claim_name)}"
    )
    if claim is None:
        raise VolumeNotReady(f'persistentvolumeclaim "{claim_name}" not found')
    pv_name = claim.get("spec", {}).get("volumeName")
    if claim.get("status", {}).get("phase") != "Bound" or not pv_name:
        raise VolumeNotReady(f'persistentvolumeclaim "{claim_name}" is not bound yet')
    pv = kube.get(f"/api/v1/persistentvolumes/{q(pv_name)}")
    spec = pv.get("spec", {})
    path = (spec.get("hostPath") or spec.get("local") or {}).get("path")
    if not path:
        raise VolumeNotReady(f"volume {pv_name} is neither hostPath nor local")
    Path(path).mkdir(parents=True, exist_ok=True)
    return Path(path)


def _write_files(target: Path, files: dict[str, tuple[bytes, int]]) -> None:
    if target.exists():
        shutil.rmtree(target)
    target.mkdir(parents=True)
    target.chmod(0o777)
    for relative, (content, mode) in files.items():
        path = target / relative
        if not path.resolve().is_relative_to(target.resolve()):
            raise ValueError(f"volume item path {relative!r} escapes the volume")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
        path.chmod(mode)


def _object_data(
    kube: Kube, namespace: str, kind: str, name: str, optional: bool
) -> dict[str, bytes] | None:
    """The decoded data of a ConfigMap or Secret; None when it is absent and optional."""
    obj = kube.get_or_none(f"/api/v1/namespaces/{q(namespace)}/{kind}/{q(name)}")
    if obj is None:
        if optional:
            return None
        raise VolumeNotReady(f'{kind[:-1]} "{name}" not found')
    data: dict[str, bytes] = {}
    for key, value in (obj.get("binaryData") or {}).items():
        data[key] = base64.b64decode(value)
    for key, value in (obj.get("data") or {}).items():
        data[key] = base64.b64decode(value) if kind == "secrets" else value.encode()
    return data


def _object_files(
    kube: Kube, namespace: str, kind: str, source: dict[str, Any]
) -> dict[str, tuple[bytes, int]]:
    default_mode = int(source.get("defaultMode", 0o644))
    data = _object_data(kube, namespace, kind, source["name"], bool(source.get("optional")))
    if data is None:
        return {}
    items = source.get("items")
    if not items:
        return {key: (value, default_mode) for key, value in data.items()}
    files: dict[str, tuple[bytes, int]] = {}
    for item in items:
        if item["key"] not in data:
            if source.get("optional"):
                continue
            raise VolumeNotReady(f'{kind[:-1]} "{source["name"]}" has no key "{item["key"]}"')
        files[item["path"]] = (data[item["key"]], int(item.get("mode", default_mode)))
    return files


def _downward_files(pod: Obj, source: dict[str, Any]) -> dict[str, tuple[bytes, int]]:
    default_mode = int(source.get("defaultMode", 0o644))
    files: dict[str, tuple[bytes, int]] = {}
    for item in source.get("items") or []:
        if "fieldRef" in item:
            value = field_value(pod, item["fieldRef"]["fieldPath"], as_file=True)
            files[item["path"]] = (value.encode(), int(item.get("mode", default_mode)))
    return files


def _projected_files(kube: Kube, pod: Obj, source: dict[str, Any]) -> dict[str, tuple[bytes, int]]:
    namespace = pod["metadata"]["namespace"]
    default_mode = int(source.get("defaultMode", 0o644))
    files: dict[str, tuple[bytes, int]] = {}
    for entry in source.get("sources") or []:
        if "configMap" in entry:
            files.update(
                _object_files(
                    kube,
                    namespace,
                    "configmaps",
                    {"defaultMode": default_mode, **entry["configMap"]},
                )
            )
        elif "secret" in entry:
            files.update(
                _object_files(
                    kube, namespace, "secrets", {"defaultMode": default_mode, **entry["secret"]}
                )
            )
        elif "downwardAPI" in entry:
            files.update(
                _downward_files(pod, {"defaultMode": default_mode, **entry["downwardAPI"]})
            )
        else:
            log.warning("projected volume source %s is not supported; skipped", sorted(entry))
    return files


def field_value(pod: Obj, field_path: str, *, as_file: bool = False) -> str:
    """The value of a downward-API fieldRef (env vars and downwardAPI volume files)."""
    meta, spec, status = pod["metadata"], pod.get("spec", {}), pod.get("status", {})
    for prefix, source in (
        ("metadata.labels", meta.get("labels")),
        ("metadata.annotations", meta.get("annotations")),
    ):
        if field_path == prefix and as_file:
            return "\n".join(f'{k}="{v}"' for k, v in sorted((source or {}).items()))
        if field_path.startswith(prefix + "["):
            key = field_path[len(prefix) + 1 : -1].strip("'\"")
            return str((source or {}).get(key, ""))
    simple = {
        "metadata.name": meta.get("name"),
        "metadata.namespace": meta.get("namespace"),
        "metadata.uid": meta.get("uid"),
        "spec.nodeName": spec.get("nodeName"),
        "spec.serviceAccountName": spec.get("serviceAccountName"),
        "status.podIP": status.get("podIP"),
        "status.hostIP": status.get("hostIP"),
        "status.podIPs": ",".join(p["ip"] for p in status.get("podIPs") or []),
    }
    if field_path not in simple:
        raise ValueError(f"unsupported fieldPath {field_path!r}")
    return str(simple[field_path] or "")
