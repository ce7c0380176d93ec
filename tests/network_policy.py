"""A small evaluator of ingress NetworkPolicies (networking.k8s.io/v1), for policies rendered
offline: which pod may open a connection to which pod on which port. No fixtures here.

Kubernetes' semantics, ingress only: a pod no policy selects admits everything; a pod some
policy (with Ingress in its policyTypes) selects admits what at least one rule of one of those
policies admits. A rule admits a source when one of its `from` peers matches (no `from`: any
source) on one of its ports (no `ports`: any port). A peer with only a podSelector means pods
of the policy's namespace; with a namespaceSelector, pods of the namespaces it matches.
ipBlock peers match no pod here (pods are not addressed by IP in these checks).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Pod:
    namespace: str
    labels: Mapping[str, str]
    namespace_labels: Mapping[str, str] = field(default_factory=dict)
    ports: Mapping[str, int] = field(default_factory=dict)
    """Named container ports, for policies that name them."""


def selects(selector: Mapping[str, Any] | None, labels: Mapping[str, str]) -> bool:
    """A label selector (matchLabels and matchExpressions); an empty one selects all."""
    selector = selector or {}
    for key, value in (selector.get("matchLabels") or {}).items():
        if labels.get(key) != value:
            return False
    for expression in selector.get("matchExpressions") or []:
        key, operator = expression["key"], expression["operator"]
        values = set(expression.get("values") or [])
        if operator == "In" and labels.get(key) not in values:
            return False
        if operator == "NotIn" and key in labels and labels[key] in values:
            return False
        if operator == "Exists" and key not in labels:
            return False
        if operator == "DoesNotExist" and key in labels:
            return False
        if operator not in ("In", "NotIn", "Exists", "DoesNotExist"):
            raise ValueError(f"unknown operator {operator}")
    return True


def _peer_matches(peer: Mapping[str, Any], policy_namespace: str, source: Pod) -> bool:
    if "ipBlock" in peer:
        return False
    if "namespaceSelector" in peer:
        if not selects(peer["namespaceSelector"], source.namespace_labels):
            return False
    elif source.namespace != policy_namespace:
        return False
    return selects(peer.get("podSelector"), source.labels)


def _port_matches(rule_port: Mapping[str, Any], target: Pod, port: int, protocol: str) -> bool:
    if rule_port.get("protocol", "TCP") != protocol:
        return False
    wanted = rule_port.get("port")
    if wanted is None:
        return True
    if isinstance(wanted, str):
        wanted = target.ports.get(wanted)
    end = rule_port.get("endPort", wanted)
    return wanted is not None and wanted <= port <= end


def _isolating(policies: Iterable[Mapping[str, Any]], target: Pod) -> list[Mapping[str, Any]]:
    return [
        p
        for p in policies
        if p["metadata"]["namespace"] == target.namespace
        and "Ingress" in (p["spec"].get("policyTypes") or ["Ingress"])
        and selects(p["spec"].get("podSelector"), target.labels)
    ]


def admits(
    policies: Iterable[Mapping[str, Any]],
    source: Pod,
    target: Pod,
    port: int,
    protocol: str = "TCP",
) -> bool:
    """Whether `source` may connect to `target` on `port` under `policies`."""
    selecting = _isolating(policies, target)
    if not selecting:
        return True
    for policy in selecting:
        namespace = policy["metadata"]["namespace"]
        for rule in policy["spec"].get("ingress") or []:
            peers = rule.get("from")
            if peers and not any(_peer_matches(p, namespace, source) for p in peers):
                continue
            ports = rule.get("ports")
            if ports and not any(_port_matches(p, target, port, protocol) for p in ports):
                continue
            return True
    return False


def pod_of(manifest: Mapping[str, Any], namespace_labels: Mapping[str, str] | None = None) -> Pod:
    """The pod a Deployment or Job makes, as the evaluator sees it."""
    template = manifest["spec"]["template"]
    namespace = manifest["metadata"]["namespace"]
    ports = {
        p["name"]: p["containerPort"]
        for c in template["spec"]["containers"]
        for p in c.get("ports", [])
        if "name" in p
    }
    labels = {"kubernetes.io/metadata.name": namespace, **(namespace_labels or {})}
    return Pod(namespace, dict(template["metadata"]["labels"]), labels, ports)
