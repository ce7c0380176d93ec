"""A resource's NetworkPolicies, applied like its other children; or, when the operator's
settings turn them off, removed once (per resource and operator run) where an earlier run
made them."""

from __future__ import annotations

from typing import Any

from phiops_operator.reconcile import Context

REMOVED_MEMO = "network_policies_removed"


async def sync(context: Context, policies: list[dict[str, Any]]) -> None:
    if context.config.network_policies.enabled:
        await context.kube.apply_all(policies)
        return
    if context.memo.get(REMOVED_MEMO):
        return
    for policy in policies:
        name = policy["metadata"]["name"]
        await context.kube.delete("networking.k8s.io/v1", "NetworkPolicy", context.namespace, name)
    context.memo[REMOVED_MEMO] = True
