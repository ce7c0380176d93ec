"""Adapters in running servers: what to load and unload in one pod, and what the pods say
about each adapter. Pure functions of the desired adapters (`ServeConfig.adapters`) and the
pods' `/readyz` reports; the HTTP calls are in `phiops_operator.serving_client`.

A server reports every model it knows in `/readyz`: `{"models": [{"name", "loaded", "sha256",
"path", "error"}, ...]}`, the base model among them. An adapter that is being loaded is there
with `loaded: false` and no error; one that failed with its error. For one not loaded, `path`
and `sha256` are those it was asked for.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from phiops_workload.serving import AdapterConfig


@dataclass(frozen=True)
class ModelReport:
    """One model as a server reports it."""

    name: str
    loaded: bool = False
    sha256: str | None = None
    path: str | None = None
    error: str | None = None


@dataclass(frozen=True)
class PodReport:
    """One serving pod as observed in this reconcile."""

    pod: str
    ready: bool
    """Its Ready condition: it takes traffic from the Service."""
    current: bool = True
    """It runs the current engine configuration (older pods are on their way out)."""
    models: Mapping[str, ModelReport] | None = None
    """By name, from its /readyz (and this reconcile's loads); None: it did not answer."""


@dataclass(frozen=True)
class Plan:
    """What one pod must be told."""

    load: tuple[AdapterConfig, ...] = ()
    """PUT /v1/adapters/{name}: missing, at another version, or failed."""
    unload: tuple[str, ...] = ()
    """DELETE /v1/adapters/{name}: no longer wanted."""


Request = tuple[str, str | None, str | None]
"""(name, path, sha256) of a load, (name, None, None) of an unload: to space repeats."""


def load_request(adapter: AdapterConfig) -> Request:
    return adapter.name, adapter.path, adapter.sha256


def unload_request(name: str) -> Request:
    return name, None, None


def _text(value: Any) -> str | None:
    return str(value) if isinstance(value, str) and value else None


def parse_model(item: Any) -> ModelReport | None:
    """One entry of /readyz `models` (or the body of a successful PUT); None if malformed."""
    if not isinstance(item, dict) or not _text(item.get("name")):
        return None
    return ModelReport(
        name=str(item["name"]),
        loaded=item.get("loaded") is True,
        sha256=_text(item.get("sha256")),
        path=_text(item.get("path")),
        error=_text(item.get("error")),
    )


def parse_models(body: Any) -> dict[str, ModelReport] | None:
    """The models of a /readyz body by name; None when it is not a /readyz report."""
    if not isinstance(body, dict) or not isinstance(body.get("models"), list):
        return None
    models = (parse_model(item) for item in body["models"])
    return {m.name: m for m in models if m is not None}


def is_loaded(want: AdapterConfig, model: ModelReport | None) -> bool:
    """Loaded from the wanted folder, at the wanted digest when the operator knows it (a
    FineTuneJob's adapter; an adapter folder on a claim has none to compare)."""
    if model is None or not model.loaded or model.path != want.path:
        return False
    return want.sha256 is None or model.sha256 == want.sha256


def _loading(want: AdapterConfig, model: ModelReport) -> bool:
    """The server is loading the wanted version now."""
    if model.loaded or model.error or model.path != want.path:
        return False
    return want.sha256 is None or model.sha256 in (None, want.sha256)


def plan(
    desired: Sequence[AdapterConfig],
    models: Mapping[str, ModelReport],
    base_model: str,
    recent: Collection[Request] = (),
) -> Plan:
    """Loads and unloads that bring one server to `desired`. Nothing while its engine is not
    up (the base not loaded): it starts with the adapters of its config anyway. An adapter
    the server is loading is left alone, and so is a request made to this pod `recent`ly
    (whatever came of it: a failed load is retried when it is no longer recent)."""
    base = models.get(base_model)
    if base is None or not base.loaded:
        return Plan()
    load = tuple(
        want
        for want in desired
        if not is_loaded(want, model := models.get(want.name))
        and not (model is not None and _loading(want, model))
        and load_request(want) not in recent
    )
    wanted = {a.name for a in desired} | {base_model}
    unload = tuple(sorted(n for n in models if n not in wanted and unload_request(n) not in recent))
    return Plan(load=load, unload=unload)


@dataclass(frozen=True)
class AdapterState:
    """One adapter across the serving pods."""

    ready_replicas: int = 0
    """Ready pods (those the Service sends requests to)."""
    loaded_replicas: int = 0
    """Ready pods that have it loaded at the wanted version."""
    answering_replicas: int = 0
    """Ready pods that answer its model id, at any version."""
    silent_replicas: int = 0
    """Ready pods whose /readyz did not answer: nothing is known of them."""
    error: str | None = None
    """What a pod of the current configuration says is wrong with it (`<pod>: <error>`),
    ready or not."""

    @property
    def loaded(self) -> bool:
        """Every ready pod has it at the wanted version."""
        return self.ready_replicas > 0 and self.loaded_replicas == self.ready_replicas


def observe(want: AdapterConfig, reports: Iterable[PodReport]) -> AdapterState:
    ready = loaded = answering = silent = 0
    error = None
    for report in reports:
        model = (report.models or {}).get(want.name)
        if report.ready:
            ready += 1
            silent += report.models is None
            loaded += is_loaded(want, model)
            answering += bool(model and model.loaded)
        stale = not report.current  # on its way out: not asked to load anything
        if error is None and model and model.error and not stale and not is_loaded(want, model):
            error = f"{report.pod}: {model.error}"
    return AdapterState(ready, loaded, answering, silent, error)
