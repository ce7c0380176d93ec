"""The shape every reconcile shares: parse -> (build, apply, observe) -> status.

Handlers stay thin glue: what differs per kind is one `Step`: given the parsed spec it applies
children, observes them and returns conditions and status fields (through the pure functions
in `builders.<kind>` and `status.<kind>`). A reconcile runs when something it depends on
changed (see `controller`), never on a fixed period; one that finds nothing changed writes
nothing.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from phiops_operator import GROUP, VERSION, conditions, events, metrics
from phiops_operator.config import OperatorConfig
from phiops_operator.k8s import Kube, Rejected
from phiops_operator.metrics import observe_reconcile
from phiops_operator.models.kinds import Kind
from phiops_operator.status.common import ACCEPTED, invalid_spec
from phiops_operator.validation import InvalidSpec, validate

log = logging.getLogger(__name__)
# A child the API server refuses as invalid is tried again this late (a change of the
# resource tries at once).
REJECTED_RETRY_SECONDS = 300
StatusUpdate = tuple[Sequence[conditions.Observation], dict[str, Any]]
InputRef = tuple[str, str]  # (kind, name) in the resource's namespace


@dataclass
class Hints:
    """What a step tells the loop besides status: when it wants to run again although
    nothing it watches may change (an interval, a server that is polled)."""

    after: float | None = None

    def again_in(self, seconds: float) -> None:
        self.after = seconds if self.after is None else min(self.after, seconds)


@dataclass(frozen=True)
class Context:
    """What a step may use: the API, the operator's config, and the parent as a plain dict."""

    kube: Kube
    config: OperatorConfig
    parent: dict[str, Any]
    memo: Any
    logger: Any
    hints: Hints = field(default_factory=Hints)

    @property
    def namespace(self) -> str:
        return str(self.parent["metadata"]["namespace"])

    @property
    def name(self) -> str:
        return str(self.parent["metadata"]["name"])


Step = Callable[[Context, Any], Awaitable[StatusUpdate]]
Inputs = Callable[[Any], set[InputRef]]


@dataclass(frozen=True)
class Registration:
    kind: Kind
    step: Step
    inputs: Inputs


REGISTRY: dict[str, Registration] = {}


def register(kind: Kind, step: Step, inputs: Inputs = lambda spec: set()) -> None:
    """`step` reconciles `kind`; `inputs(spec)` names the objects (ConfigMaps, claims, other
    phiops resources) whose changes it must see."""
    REGISTRY[kind.plural] = Registration(kind, step, inputs)


def plain_parent(body: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": body["apiVersion"],
        "kind": body["kind"],
        "metadata": dict(body["metadata"]),
        "spec": dict(body.get("spec") or {}),
    }


def known_invalid(body: Mapping[str, Any]) -> bool:
    """This generation was already found invalid: nothing to do until the spec changes."""
    status = body.get("status") or {}
    accepted = conditions.find(status.get("conditions"), ACCEPTED)
    return bool(
        accepted
        and accepted.get("status") == "False"
        and accepted.get("observedGeneration") == body["metadata"].get("generation")
    )


def merged(status: Mapping[str, Any], patch: Mapping[str, Any]) -> dict[str, Any]:
    """`status` after a JSON merge patch (RFC 7386) of `patch`."""
    result = dict(status)
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        elif isinstance(value, Mapping) and isinstance(result.get(key), Mapping):
            result[key] = merged(result[key], value)
        else:
            result[key] = value
    return result


def status_patch(
    body: Mapping[str, Any],
    observed: Sequence[conditions.Observation],
    fields: Mapping[str, Any],
) -> dict[str, Any] | None:
    """The merge patch that brings `body`'s status to what was observed; None when it
    already says exactly that (then nothing is written)."""
    generation = int(body["metadata"].get("generation") or 0)
    previous = dict(body.get("status") or {})
    patch = {
        **fields,
        "conditions": conditions.merge(previous.get("conditions"), observed, generation),
        "observedGeneration": generation,
    }
    return None if merged(previous, patch) == previous else patch


async def reconcile(
    registration: Registration,
    body: Mapping[str, Any],
    kube: Kube,
    config: OperatorConfig,
    memo: Any,
    logger: Any,
) -> tuple[dict[str, Any] | None, float | None]:
    """One reconcile of `body`: (the object after our status write, or None if nothing was
    written; seconds until it wants to run again, or None). API trouble raises, and the
    caller retries with back-off."""
    kind = registration.kind
    meta = body["metadata"]
    if meta.get("deletionTimestamp") or known_invalid(body):
        return None, None
    with observe_reconcile(kind.kind) as outcome:
        try:
            spec = validate(kind, meta["name"], body.get("spec") or {})
        except InvalidSpec as err:
            message = str(err)
            logger.error(f"InvalidSpec: {message}")
            outcome.result = "invalid"
            return await _write(kube, kind, body, invalid_spec(message), {}), None
        context = Context(kube, config, plain_parent(body), memo, logger)
        outcome.result = "retry"  # until the step and the write are through
        try:
            observed, fields = await registration.step(context, spec)
        except Rejected as err:
            # A child validation did not foresee: on the resource, not only in the log.
            logger.error(f"ChildRejected: {err}")
            observed, fields = conditions.stalled("ChildRejected", str(err)), {}
            context.hints.again_in(REJECTED_RETRY_SECONDS)
        written = await _write(kube, kind, body, observed, fields)
        outcome.result = "success"
    ready = next((o for o in observed if o.type == conditions.READY), None)
    if ready is not None:
        metrics.RESOURCE_READY.labels(kind.kind, meta["namespace"], meta["name"]).set(
            1 if ready.status == "True" else 0
        )
    return written, context.hints.after


async def _write(
    kube: Kube,
    kind: Kind,
    body: Mapping[str, Any],
    observed: Sequence[conditions.Observation],
    fields: Mapping[str, Any],
) -> dict[str, Any] | None:
    patch = status_patch(body, observed, fields)
    if patch is None:
        return None
    meta = body["metadata"]
    written = await kube.patch_status(
        f"{GROUP}/{VERSION}", kind.kind, meta["namespace"], meta["name"], patch
    )
    previous = (body.get("status") or {}).get("conditions")
    event = events.transition(previous, observed)
    if event is not None:
        version = ((written or {}).get("metadata") or {}).get("resourceVersion")
        await _post(kube, events.manifest(body, event, conditions.now_rfc3339(), version))
    return written


async def _post(kube: Kube, event: dict[str, Any]) -> None:
    try:
        await kube.post_event(event)
    except Exception as err:  # an Event is advice: losing one must not fail the reconcile
        log.warning("could not post the Event %s: %s", event["reason"], err)
