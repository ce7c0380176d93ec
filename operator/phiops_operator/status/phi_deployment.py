"""A PhiDeployment's conditions and status fields, from what the handler observed."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from phiops_operator import conditions
from phiops_operator.conditions import Observation
from phiops_operator.status.common import ACCEPTED

PROGRESSING = "Progressing"
DEGRADED = "Degraded"


@dataclass(frozen=True)
class Dependency:
    """One input the deployment waits on (an adapter's FineTuneJob or claim, the knowledge
    base, the model claim): why it is not usable, and whether that is final."""

    what: str
    message: str
    failed: bool = False


@dataclass(frozen=True)
class AdapterView:
    name: str
    source: str
    sha256: str | None
    served: bool
    """In the configuration the Deployment runs now."""
    waiting: Dependency | None = None
    load_error: str | None = None
    """What a not-ready server pod says about this adapter (from its /readyz)."""


@dataclass(frozen=True)
class Rollout:
    """The Deployment as observed."""

    desired: int
    replicas: int
    ready: int
    updated: int
    current: bool
    """The controller has seen the current template and every pod runs it."""
    stuck: str | None = None
    """Why the rollout cannot finish (deadline exceeded, pods crashing), if it cannot."""


@dataclass(frozen=True)
class DeploymentObservation:
    selector: str
    endpoint: str
    adapters: tuple[AdapterView, ...]
    knowledge_base: str | None
    collection: str | None
    blocked: tuple[Dependency, ...]
    """Inputs with no earlier version to fall back on: nothing is deployed until they are."""
    waiting: tuple[Dependency, ...]
    """Inputs not ready whose earlier version keeps serving meanwhile."""
    rollout: Rollout | None


def _adapter_status(view: AdapterView, rollout: Rollout | None) -> dict[str, Any]:
    loaded = bool(view.served and rollout and rollout.current and rollout.ready > 0)
    out: dict[str, Any] = {"name": view.name, "source": view.source, "loaded": loaded}
    if view.sha256:
        out["sha256"] = view.sha256
    if view.waiting is not None:
        out["message"] = view.waiting.message
    elif view.load_error:
        out["message"] = view.load_error
    elif not loaded:
        out["message"] = "rolling out" if view.served else "not deployed yet"
    return out


def _summary(deps: tuple[Dependency, ...]) -> str:
    return "; ".join(d.message for d in deps)


def compute(obs: DeploymentObservation) -> tuple[list[Observation], dict[str, Any]]:
    rollout = obs.rollout
    adapters = [_adapter_status(a, rollout) for a in obs.adapters]
    fields: dict[str, Any] = {
        "selector": obs.selector,
        "endpoint": obs.endpoint,
        "replicas": rollout.replicas if rollout else 0,
        "readyReplicas": rollout.ready if rollout else 0,
        "adapters": adapters,
        "adaptersReady": f"{sum(a['loaded'] for a in adapters)}/{len(adapters)}",
    }
    if obs.knowledge_base is not None:
        fields["knowledgeBase"] = {"name": obs.knowledge_base}
        if obs.collection:
            fields["knowledgeBase"]["collection"] = obs.collection
    accepted = Observation(ACCEPTED, "True", "SpecValid", "spec is valid")

    def out(
        observed: list[Observation], progressing: tuple[str, str] | None, degraded: str | None
    ) -> tuple[list[Observation], dict[str, Any]]:
        reason = progressing[0] if progressing else "RolledOut"
        extra = [
            Observation(
                PROGRESSING,
                "True" if progressing else "False",
                reason,
                progressing[1] if progressing else "the current configuration is rolled out",
            ),
            Observation(
                DEGRADED,
                "True" if degraded else "False",
                "Degraded" if degraded else "AsExpected",
                degraded or "no problem observed",
            ),
        ]
        return [*observed, *extra, accepted], fields

    failed = [d for d in (*obs.blocked, *obs.waiting) if d.failed]
    reason = _wait_reason(obs.blocked or obs.waiting)
    if obs.blocked and rollout is None:
        message = f"waiting: {_summary(obs.blocked)}"
        if failed:
            return out(conditions.stalled(reason, message), None, _summary(tuple(failed)))
        return out(conditions.reconciling(reason, message), (reason, message), None)

    assert rollout is not None  # nothing blocked, so the Deployment was applied
    serving = rollout.ready > 0
    if rollout.stuck:
        stuck = rollout.stuck
        if serving:
            return out(conditions.ready("Serving", f"serving; {stuck}"), None, stuck)
        return out(conditions.stalled("RolloutStuck", stuck), None, stuck)
    if rollout.desired == 0:
        return out(conditions.ready("ScaledToZero", "scaled to 0 replicas"), None, None)
    pending = obs.blocked or obs.waiting
    if pending:
        # The earlier version keeps serving while the new inputs are not ready.
        message = f"serving the previous configuration; waiting: {_summary(pending)}"
        degraded = _summary(tuple(failed)) if failed else None
        if serving:
            observed = [
                Observation(conditions.READY, "True", "ServingPrevious", message),
                Observation(conditions.RECONCILING, "True", reason, message),
                Observation(conditions.STALLED, "False", reason, message),
            ]
            return out(observed, (reason, message), degraded)
        return out(conditions.reconciling(reason, message), (reason, message), degraded)
    if not rollout.current:
        message = (
            f"rolling out: {rollout.updated}/{rollout.desired} pods updated, "
            f"{rollout.ready} ready (a pod is ready once the base model and every adapter "
            "are loaded)"
        )
        return out(conditions.reconciling("RollingOut", message), ("RollingOut", message), None)
    unloaded = [a for a in obs.adapters if a.load_error]
    if rollout.ready < rollout.desired and unloaded:
        message = f"{rollout.ready}/{rollout.desired} replicas ready; " + "; ".join(
            f"{a.name}: {a.load_error}" for a in unloaded
        )
        if serving:
            return out(conditions.ready("Serving", message), ("Loading", message), message)
        return out(conditions.reconciling("Loading", message), ("Loading", message), message)
    if rollout.replicas != rollout.desired or rollout.ready < rollout.desired:
        message = (
            f"scaling to {rollout.desired} replicas: {rollout.replicas} running, "
            f"{rollout.ready} ready"
        )
        if serving:
            return out(conditions.ready("Serving", message), ("Scaling", message), None)
        return out(conditions.reconciling("Loading", message), ("Loading", message), None)
    message = f"{rollout.ready}/{rollout.desired} replicas ready at {obs.endpoint}"
    return out(conditions.ready("Serving", message), None, None)


def _wait_reason(deps: tuple[Dependency, ...]) -> str:
    kinds = {d.what for d in deps}
    if "adapter" in kinds:
        return "AdapterNotReady"
    if "knowledgeBase" in kinds:
        return "KnowledgeBaseNotReady"
    return "InputNotFound"
