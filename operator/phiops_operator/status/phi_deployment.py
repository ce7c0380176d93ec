"""A PhiDeployment's conditions and status fields, from what the handler observed."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from phiops_operator import conditions
from phiops_operator.adapter_sync import AdapterState
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
    """Wanted in the running pods (in the config they start with, loaded into running ones)."""
    waiting: Dependency | None = None
    state: AdapterState = field(default_factory=AdapterState)
    """What the pods' /readyz say about it."""


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
    """Inputs with no earlier version to fall back on: not Ready until they are there. An
    adapter only stays out of the pods meanwhile; without the model claim or the knowledge
    base nothing is deployed."""
    waiting: tuple[Dependency, ...]
    """Inputs not ready whose earlier version keeps serving meanwhile."""
    rollout: Rollout | None


def _adapter_status(view: AdapterView, rollout: Rollout | None) -> dict[str, Any]:
    deployed = view.served and rollout is not None
    state = view.state if deployed else AdapterState()
    loaded = state.loaded
    out: dict[str, Any] = {
        "name": view.name,
        "source": view.source,
        "loaded": loaded,
        "loadedReplicas": state.loaded_replicas,
    }
    if view.sha256:
        out["sha256"] = view.sha256
    notes = []
    if view.waiting is not None:
        notes.append(view.waiting.message)
    if state.error:
        notes.append(state.error)
    if not notes and not loaded:
        if not deployed:
            notes.append("not deployed yet")
        elif state.ready_replicas == 0:
            notes.append("no replica is ready yet")
        else:
            note = f"loaded on {state.loaded_replicas}/{state.ready_replicas} ready replicas"
            if state.silent_replicas:
                note += f" ({state.silent_replicas} did not answer /readyz)"
            notes.append(note)
    if notes:
        out["message"] = "; ".join(notes)
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

    assert rollout is not None  # nothing blocked, or a Deployment exists: it was applied
    serving = rollout.ready > 0
    if rollout.stuck:
        stuck = rollout.stuck
        if serving:
            return out(conditions.ready("Serving", f"serving; {stuck}"), None, stuck)
        return out(conditions.stalled("RolloutStuck", stuck), None, stuck)
    if rollout.desired == 0:
        return out(conditions.ready("ScaledToZero", "scaled to 0 replicas"), None, None)
    if obs.blocked:
        # The base model and the adapters that are there are deployed; a declared input
        # with nothing to serve in its place is missing: not Ready.
        served = sum(a.served for a in obs.adapters)
        message = (
            f"deployed: the base model and {served}/{len(obs.adapters)} adapters; "
            f"waiting: {_summary((*obs.blocked, *obs.waiting))}"
        )
        if failed:
            return out(conditions.stalled(reason, message), None, _summary(tuple(failed)))
        return out(conditions.reconciling(reason, message), (reason, message), None)
    if obs.waiting:
        # The earlier version keeps serving while the new inputs are not ready.
        message = f"serving the previous configuration; waiting: {_summary(obs.waiting)}"
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
            f"{rollout.ready} ready (a pod is ready once the base model is loaded, the "
            "adapters of its config tried and the knowledge base reached)"
        )
        return out(conditions.reconciling("RollingOut", message), ("RollingOut", message), None)
    unloaded = [a for a in obs.adapters if a.served and not a.state.loaded]
    broken = [a for a in unloaded if a.state.error]
    if broken:
        message = "; ".join(f"adapter {a.name}: {a.state.error}" for a in broken)
        if not serving:
            return out(conditions.reconciling("Loading", message), ("Loading", message), message)
        if all(a.state.answering_replicas for a in broken):
            # Another version of each still answers somewhere.
            return out(conditions.ready("Serving", message), None, message)
        return out(conditions.stalled("AdapterLoadFailed", message), None, message)
    if unloaded and serving:
        message = "loading adapters: " + ", ".join(
            f"{a.name} ({_adapter_status(a, rollout)['message']})" for a in unloaded
        )
        progressing = ("LoadingAdapters", message)
        if all(a.state.answering_replicas for a in unloaded):
            return out(conditions.ready("Serving", message), progressing, None)
        return out(conditions.reconciling("LoadingAdapters", message), progressing, None)
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
