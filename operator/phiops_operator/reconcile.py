"""The shape every reconcile shares: parse -> (build, apply, observe) -> status.

Handlers stay thin glue around `reconcile`; what differs per kind is one `Step`: given the
parsed spec it applies children, observes them and returns conditions and status fields
(through the pure functions in `builders.<kind>` and `status.<kind>`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import kopf
from pydantic import BaseModel

from phiops_operator import GROUP, VERSION, conditions, metrics
from phiops_operator.config import OperatorConfig
from phiops_operator.k8s import Kube, KubeError, Rejected
from phiops_operator.metrics import observe_reconcile
from phiops_operator.models.kinds import Kind
from phiops_operator.status.common import ACCEPTED, invalid_spec
from phiops_operator.validation import InvalidSpec, validate

RETRY_DELAY_SECONDS = 15
REJECTED_RETRY_SECONDS = 300
StatusUpdate = tuple[Sequence[conditions.Observation], dict[str, Any]]


@dataclass(frozen=True)
class Context:
    """What a step may use: the API, the operator's config, and the parent as a plain dict."""

    kube: Kube
    config: OperatorConfig
    parent: dict[str, Any]
    memo: kopf.Memo
    logger: Any

    @property
    def namespace(self) -> str:
        return str(self.parent["metadata"]["namespace"])

    @property
    def name(self) -> str:
        return str(self.parent["metadata"]["name"])


Step = Callable[[Context, Any], Awaitable[StatusUpdate]]


def parse_spec(kind: Kind, spec: Mapping[str, Any]) -> BaseModel:
    return kind.spec.model_validate(dict(spec))


def plain_parent(body: kopf.Body) -> dict[str, Any]:
    return {
        "apiVersion": body["apiVersion"],
        "kind": body["kind"],
        "metadata": dict(body.metadata),
        "spec": dict(body.spec),
    }


def known_invalid(body: kopf.Body) -> bool:
    """This generation was already found invalid: periodic work has nothing to do."""
    accepted = conditions.find(body.status.get("conditions"), ACCEPTED)
    return bool(
        accepted
        and accepted.get("status") == "False"
        and accepted.get("observedGeneration") == body.meta.get("generation")
    )


async def reconcile(
    kind: Kind,
    body: kopf.Body,
    patch: kopf.Patch,
    memo: kopf.Memo,
    logger: Any,
    step: Step,
) -> None:
    generation = int(body.meta.get("generation") or 0)
    previous = body.status.get("conditions")

    def write(observed: Sequence[conditions.Observation], fields: Mapping[str, Any]) -> None:
        for key, value in fields.items():
            patch.status[key] = value
        patch.status["conditions"] = conditions.merge(previous, observed, generation)
        patch.status["observedGeneration"] = generation
        ready = next((o for o in observed if o.type == conditions.READY), None)
        if ready is not None:
            metrics.RESOURCE_READY.labels(kind.kind, body.meta["namespace"], body.meta["name"]).set(
                1 if ready.status == "True" else 0
            )

    # A timer and a change handler may fire together for one object; run one at a time.
    lock: asyncio.Lock = memo.setdefault("reconcile_lock", asyncio.Lock())
    async with lock:
        with observe_reconcile(kind.kind) as outcome:
            try:
                spec = validate(kind, body.meta["name"], body.spec)
            except InvalidSpec as err:
                message = str(err)
                write(invalid_spec(message), {})
                outcome.result = "invalid"
                raise kopf.PermanentError(f"InvalidSpec: {message}") from None
            context = Context(
                kube=memo["kube"],
                config=memo["config"],
                parent=plain_parent(body),
                memo=memo,
                logger=logger,
            )
            try:
                observed, fields = await step(context, spec)
            except KubeError as err:
                outcome.result = "retry"
                raise kopf.TemporaryError(str(err), delay=RETRY_DELAY_SECONDS) from err
            except Rejected as err:
                # A child validation did not foresee: on the resource, not only in the log.
                write(conditions.stalled("ChildRejected", str(err)), {})
                outcome.result = "retry"
                raise kopf.TemporaryError(str(err), delay=REJECTED_RETRY_SECONDS) from err
            write(observed, fields)
            outcome.result = "success"


def register(
    kind: Kind,
    step: Step,
    timer_seconds: float | None = None,
    settled: Callable[[kopf.Body], bool] = lambda body: False,
) -> None:
    """Run `step` for `kind` on create, update and resume, and, with `timer_seconds`, on a
    timer too (children finish, intervals pass) unless the spec is known invalid or the
    resource has `settled` (nothing left to watch until its spec changes)."""
    plural = kind.plural

    async def on_change(
        body: kopf.Body, patch: kopf.Patch, memo: kopf.Memo, logger: Any, **_: Any
    ) -> None:
        await reconcile(kind, body, patch, memo, logger, step)

    for decorate in (kopf.on.resume, kopf.on.create, kopf.on.update):
        decorate(GROUP, VERSION, plural, id=f"reconcile_{kind.module}")(on_change)
    if timer_seconds is None:
        return

    async def on_timer(
        body: kopf.Body, patch: kopf.Patch, memo: kopf.Memo, logger: Any, **_: Any
    ) -> None:
        if not known_invalid(body) and not settled(body):
            await reconcile(kind, body, patch, memo, logger, step)

    kopf.timer(
        GROUP,
        VERSION,
        plural,
        id=f"watch_{kind.module}",
        interval=timer_seconds,
        initial_delay=timer_seconds,
    )(on_timer)
