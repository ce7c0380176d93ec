"""The shape every reconcile shares: parse -> build -> apply -> status.

Handlers stay thin glue around this; the kind-specific parts are pure functions
(`builders.<kind>.build`, `status.<kind>`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import kopf
from pydantic import BaseModel, ValidationError

from phiops_operator import conditions
from phiops_operator.config import OperatorConfig
from phiops_operator.errors import describe
from phiops_operator.k8s import Kube, KubeError
from phiops_operator.metrics import observe_reconcile
from phiops_operator.models.kinds import Kind

Builder = Callable[[Mapping[str, Any], Any, OperatorConfig], list[dict[str, Any]]]
StatusFn = Callable[[Any, list[dict[str, Any]]], Sequence[conditions.Observation]]
InvalidFn = Callable[[str], Sequence[conditions.Observation]]

RETRY_DELAY_SECONDS = 15


def parse_spec(kind: Kind, spec: Mapping[str, Any]) -> BaseModel:
    return kind.spec.model_validate(dict(spec))


async def reconcile(
    kind: Kind,
    body: kopf.Body,
    patch: kopf.Patch,
    memo: kopf.Memo,
    build: Builder,
    status_of: StatusFn,
    invalid: InvalidFn,
) -> None:
    generation = int(body.meta.get("generation") or 0)
    previous = body.status.get("conditions")
    config: OperatorConfig = memo["config"]
    kube: Kube = memo["kube"]

    def write(observed: Sequence[conditions.Observation]) -> None:
        patch.status["conditions"] = conditions.merge(previous, observed, generation)
        patch.status["observedGeneration"] = generation

    with observe_reconcile(kind.kind) as outcome:
        try:
            spec = parse_spec(kind, body.spec)
        except ValidationError as err:
            message = describe(err)
            write(invalid(message))
            outcome.result = "invalid"
            raise kopf.PermanentError(f"InvalidSpec: {message}") from None

        parent = {
            "apiVersion": body["apiVersion"],
            "kind": body["kind"],
            "metadata": dict(body.metadata),
        }
        children = build(parent, spec, config)
        try:
            applied = [await kube.apply(child) for child in children]
        except KubeError as err:
            outcome.result = "retry"
            raise kopf.TemporaryError(str(err), delay=RETRY_DELAY_SECONDS) from err
        write(status_of(spec, applied))
        outcome.result = "success"
