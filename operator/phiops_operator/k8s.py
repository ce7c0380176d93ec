"""The one place that talks to the Kubernetes API for children: server-side apply and reads.

Kopf handles the custom resources themselves (watching, status patches); everything the
operator creates goes through `Kube.apply`, with the fixed field manager `phiops-operator`,
so re-running a handler after a crash converges instead of duplicating.

Reads of the kinds the operator watches (Jobs, Pods, Deployments, ConfigMaps, claims) come
from its `ObjectStore` once the watches fill it: trimmed copies (`object_store.project` says
what is kept; a user's ConfigMap comes with its keys only), current as of the last event.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from typing import Any

from kubernetes_asyncio import client, config
from kubernetes_asyncio.client.exceptions import ApiException

from phiops_operator import metrics
from phiops_operator.child_cache import ChildCache
from phiops_operator.object_store import ObjectStore
from phiops_operator.rate_limit import TokenBucket

FIELD_MANAGER = "phiops-operator"
Listing = list[dict[str, Any]]

# (apiVersion, kind) -> plural, for every kind the operator creates or reads.
PLURALS: dict[tuple[str, str], str] = {
    ("v1", "ConfigMap"): "configmaps",
    ("v1", "Secret"): "secrets",
    ("v1", "Service"): "services",
    ("v1", "PersistentVolumeClaim"): "persistentvolumeclaims",
    ("v1", "Pod"): "pods",
    ("v1", "ServiceAccount"): "serviceaccounts",
    ("apps/v1", "Deployment"): "deployments",
    ("batch/v1", "Job"): "jobs",
    ("networking.k8s.io/v1", "NetworkPolicy"): "networkpolicies",
    ("rbac.authorization.k8s.io/v1", "Role"): "roles",
    ("rbac.authorization.k8s.io/v1", "RoleBinding"): "rolebindings",
    ("phiops.dev/v1alpha1", "KnowledgeBase"): "knowledgebases",
    ("phiops.dev/v1alpha1", "FineTuneJob"): "finetunejobs",
    ("phiops.dev/v1alpha1", "PhiDeployment"): "phideployments",
}

# `apply_all` applies everything else first, then these kinds, wave by wave: a RoleBinding
# after its Role (without the `bind` verb the API server checks the Role's rules against ours
# and refuses a binding to a Role not there yet), workloads after what their pods use.
LATER_WAVES: tuple[frozenset[str], ...] = (
    frozenset({"RoleBinding"}),
    frozenset({"Deployment", "Job"}),
)


def _wave(kind: str) -> int:
    return next((i for i, kinds in enumerate(LATER_WAVES, 1) if kind in kinds), 0)


RETRYABLE = {409, 429, 500, 502, 503, 504}
log = logging.getLogger(__name__)


class KubeError(Exception):
    """An API call failed in a way a retry later may fix (the handler turns it into a
    kopf.TemporaryError)."""


class Rejected(Exception):
    """The API server refused a child as invalid (422): retrying the same manifest cannot
    help until the resource changes; the message says which child and why."""


def _refusal(err: ApiException) -> str:
    try:
        text = str(json.loads(err.body or "{}").get("message") or err.reason)
    except ValueError:
        text = str(err.reason)
    return text[:1000]


def _terminating(answer: Any, kind: str) -> bool:
    """A DELETE answered with the object itself, marked for deletion: it lingers."""
    return (
        isinstance(answer, dict)
        and answer.get("kind") == kind
        and bool((answer.get("metadata") or {}).get("deletionTimestamp"))
    )


def object_path(api_version: str, kind: str, namespace: str, name: str | None = None) -> str:
    try:
        plural = PLURALS[(api_version, kind)]
    except KeyError:
        raise ValueError(f"unknown kind {api_version}/{kind}: add it to PLURALS") from None
    base = "/api/v1" if api_version == "v1" else f"/apis/{api_version}"
    path = f"{base}/namespaces/{namespace}/{plural}"
    return f"{path}/{name}" if name else path


class Kube:
    """An async API client created once at start-up and shared by all handlers; at most
    `qps` requests a second (bursts of `burst`), like client-go's client-side limiter."""

    def __init__(self, api: client.ApiClient, qps: float = 0, burst: int = 1) -> None:
        self.api = api
        self.children = ChildCache()
        # Set at start-up, where Kopf indexes feed it (see handlers/watch.py); None: every
        # read goes to the API server (tests and tools that run handlers without Kopf).
        self.objects: ObjectStore | None = None
        self.limiter = TokenBucket(qps, burst) if qps > 0 else None

    @classmethod
    async def connect(cls, qps: float = 0, burst: int = 1) -> Kube:
        try:
            config.load_incluster_config()
        except config.ConfigException:
            # Read KUBECONFIG now: the library captures it once, at import time.
            path = os.environ.get("KUBECONFIG", "").split(os.pathsep)[0] or None
            await config.load_kube_config(config_file=path)
        return cls(client.ApiClient(), qps, burst)

    async def close(self) -> None:
        await self.api.close()

    async def _call(
        self,
        method: str,
        path: str,
        body: Any = None,
        query: list[tuple[str, str]] | None = None,
        content_type: str = "application/json",
        attempts: int = 4,
    ) -> Any:
        delay = 0.5
        for attempt in range(1, attempts + 1):
            if self.limiter is not None:
                waited = await self.limiter.take()
                metrics.API_THROTTLED.inc(waited)
            metrics.API_REQUESTS.labels(method).inc()
            try:
                return await self.api.call_api(
                    path,
                    method,
                    query_params=query or [],
                    header_params={"Content-Type": content_type, "Accept": "application/json"},
                    body=body,
                    response_types_map={200: "object", 201: "object", 202: "object"},
                    auth_settings=["BearerToken"],
                    _return_http_data_only=True,
                )
            except ApiException as err:
                if err.status not in RETRYABLE or attempt == attempts:
                    raise
                log.info("%s %s: HTTP %s, retrying in %.1fs", method, path, err.status, delay)
                await asyncio.sleep(delay)
                delay *= 2
        raise AssertionError("unreachable")

    async def apply(self, manifest: dict[str, Any]) -> dict[str, Any] | None:
        """Server-side apply `manifest` as `phiops-operator`, taking ownership of its fields;
        the object the API server answers, or None when nothing was sent because the child
        stands exactly as this manifest was last applied (see `child_cache`)."""
        if self.children.unchanged(manifest):
            return None
        meta = manifest["metadata"]
        path = object_path(
            manifest["apiVersion"], manifest["kind"], meta["namespace"], meta["name"]
        )
        try:
            result: dict[str, Any] = await self._call(
                "PATCH",
                path,
                body=manifest,
                query=[("fieldManager", FIELD_MANAGER), ("force", "true")],
                content_type="application/apply-patch+yaml",
            )
        except ApiException as err:
            if err.status in RETRYABLE:
                raise KubeError(
                    f"applying {manifest['kind']} {meta['name']}: {err.reason}"
                ) from err
            if err.status == 422:
                raise Rejected(
                    f"the API server refused {manifest['kind']} {meta['name']}: {_refusal(err)}"
                ) from err
            raise
        self.children.applied(manifest, result)
        if self.objects is not None and self.objects.holds(result["apiVersion"], result["kind"]):
            self.objects.observe(result)
        return result

    async def apply_all(self, manifests: list[dict[str, Any]]) -> list[dict[str, Any] | None]:
        """Apply several children at once, wave by wave (`LATER_WAVES`); the results in the
        order of `manifests`."""
        results: dict[int, dict[str, Any] | None] = {}
        for wave in range(len(LATER_WAVES) + 1):
            batch = [(i, m) for i, m in enumerate(manifests) if _wave(m["kind"]) == wave]
            answers = await asyncio.gather(*(self.apply(m) for _, m in batch))
            results.update(zip((i for i, _ in batch), answers, strict=True))
        return [results[i] for i in range(len(manifests))]

    async def post_event(self, event: dict[str, Any]) -> None:
        """Create a core/v1 Event; tried once: an Event is advice, never worth a reconcile's
        retry or back-off."""
        namespace = event["metadata"]["namespace"]
        await self._call("POST", f"/api/v1/namespaces/{namespace}/events", body=event, attempts=1)

    async def patch_status(
        self, api_version: str, kind: str, namespace: str, name: str, status: dict[str, Any]
    ) -> dict[str, Any]:
        """JSON merge patch of the status subresource (None values remove fields)."""
        path = object_path(api_version, kind, namespace, name) + "/status"
        try:
            result: dict[str, Any] = await self._call(
                "PATCH", path, body={"status": status}, content_type="application/merge-patch+json"
            )
        except ApiException as err:
            if err.status in RETRYABLE:
                raise KubeError(f"writing the status of {kind} {name}: {err.reason}") from err
            raise
        return result

    async def reachable(self) -> bool:
        """The API server answers (its version endpoint; no retries, no rate limit)."""
        try:
            await self.api.call_api(
                "/version",
                "GET",
                header_params={"Accept": "application/json"},
                response_types_map={200: "object"},
                auth_settings=["BearerToken"],
                _return_http_data_only=True,
                _request_timeout=2,
            )
        except Exception:
            return False
        return True

    async def get(
        self, api_version: str, kind: str, namespace: str, name: str
    ) -> dict[str, Any] | None:
        if self.objects is not None and self.objects.holds(api_version, kind):
            return self.objects.get(api_version, kind, namespace, name)
        try:
            result: dict[str, Any] = await self._call(
                "GET", object_path(api_version, kind, namespace, name)
            )
        except ApiException as err:
            if err.status == 404:
                return None
            raise
        return result

    async def list(
        self, api_version: str, kind: str, namespace: str, label_selector: str
    ) -> list[dict[str, Any]]:
        if self.objects is not None and self.objects.holds(api_version, kind):
            found = self.objects.list(api_version, kind, namespace, label_selector)
            if found is not None:
                return found
        result = await self._call(
            "GET",
            object_path(api_version, kind, namespace),
            query=[("labelSelector", label_selector)],
        )
        items: list[dict[str, Any]] = result.get("items", [])
        return items

    async def delete(
        self,
        api_version: str,
        kind: str,
        namespace: str,
        name: str,
        propagation: str = "Background",
    ) -> bool:
        """Delete (dependents collected in the background); False when it was already gone."""
        answer: Any = None
        try:
            answer = await self._call(
                "DELETE",
                object_path(api_version, kind, namespace, name),
                body={"propagationPolicy": propagation},
            )
        except ApiException as err:
            if err.status != 404:
                raise
        if self.objects is not None and self.objects.holds(api_version, kind):
            if _terminating(answer, kind):
                self.objects.observe(answer)  # still there until its dependents go (Foreground)
            else:
                self.objects.forget(api_version, kind, namespace, name)
        return answer is not None

    async def listing(
        self, api_version: str, kind: str, namespace: str, label_selector: str = ""
    ) -> tuple[Listing, int]:
        """A fresh listing from the API server (never the store) and its resourceVersion."""
        query = [("labelSelector", label_selector)] if label_selector else []
        result = await self._call("GET", object_path(api_version, kind, namespace), query=query)
        version = str((result.get("metadata") or {}).get("resourceVersion") or "0")
        items: Listing = result.get("items", [])
        return items, int(version) if version.isdigit() else 0
