"""The PhiDeployment reconcile step against an in-memory API and a fake inference server on
localhost: a FineTuneJob's output claim is mounted before the job succeeds, its adapter is
then loaded into the running pod without a roll, an adapter dropped from the spec is
unloaded, and a server's refusal ends up on that adapter."""

from __future__ import annotations

import copy
import json
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import kopf
import pytest
from aiohttp import web
from phiops_operator.builders import phi_deployment as builder
from phiops_operator.config import OperatorConfig
from phiops_operator.handlers import phi_deployment as handler
from phiops_operator.models.phi_deployment import PhiDeploymentSpec
from phiops_operator.reconcile import Context

NS = "team-a"
SHA = "5" * 64
Obj = dict[str, Any]


class FakeKube:
    """Objects by (kind, name); apply replaces the object (keeping its status)."""

    def __init__(self, *objects: Obj) -> None:
        self.objects: dict[tuple[str, str], Obj] = {}
        for obj in objects:
            self.put(obj)

    def put(self, obj: Obj) -> None:
        self.objects[(obj["kind"], obj["metadata"]["name"])] = copy.deepcopy(obj)

    async def get(self, api_version: str, kind: str, namespace: str, name: str) -> Obj | None:
        found = self.objects.get((kind, name))
        return copy.deepcopy(found) if found is not None else None

    async def list(self, api_version: str, kind: str, namespace: str, selector: str) -> list[Obj]:
        return [copy.deepcopy(o) for (k, _), o in self.objects.items() if k == kind]

    async def apply_all(self, manifests: list[Obj]) -> list[Obj]:
        return [await self.apply(m) for m in manifests]

    async def apply(self, manifest: Obj) -> Obj:
        before = self.objects.get((manifest["kind"], manifest["metadata"]["name"]))
        applied = copy.deepcopy(manifest)
        if before is not None and "status" in before:
            applied["status"] = before["status"]
        self.put(applied)
        return copy.deepcopy(applied)


def claim(name: str) -> Obj:
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {"name": name, "namespace": NS},
        "spec": {"accessModes": ["ReadWriteOnce"]},
        "status": {"phase": "Bound"},
    }


def fine_tune_job(phase: str) -> Obj:
    status: Obj = {"phase": phase}
    if phase == "Succeeded":
        status["adapter"] = {"claimName": "tone-output", "path": ".", "sha256": SHA}
    return {
        "apiVersion": "phiops.dev/v1alpha1",
        "kind": "FineTuneJob",
        "metadata": {"name": "tone", "namespace": NS},
        "spec": {"dataset": {"configMap": {"name": "data", "key": "train.jsonl"}}},
        "status": status,
    }


@dataclass
class FakeServer:
    """The inference server's /readyz and adapter admin API, as the operator sees them."""

    models: dict[str, Obj] = field(default_factory=dict)
    calls: list[tuple[str, str]] = field(default_factory=list)
    refuse: str | None = None

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/readyz", self.readyz)
        app.router.add_put("/v1/adapters/{name}", self.put)
        app.router.add_delete("/v1/adapters/{name}", self.delete)
        return app

    async def readyz(self, request: web.Request) -> web.Response:
        body = {"ready": True, "models": list(self.models.values()), "loaded": list(self.models)}
        return web.json_response(body)

    async def put(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        self.calls.append(("PUT", name))
        payload = await request.json()
        if self.refuse:
            error = {"error": {"message": self.refuse, "type": "invalid_request_error"}}
            return web.json_response(error, status=422)
        model = {"name": name, "loaded": True, "error": None, **payload}
        model.pop("source", None)
        self.models[name] = model
        return web.json_response(model)

    async def delete(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        self.calls.append(("DELETE", name))
        if self.models.pop(name, None) is None:
            return web.json_response({"error": {"message": "unknown"}}, status=404)
        return web.json_response({"deleted": name})


@pytest.fixture
async def server(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[FakeServer]:
    fake = FakeServer()
    fake.models["tiny-phi3"] = {"name": "tiny-phi3", "loaded": True, "path": "/m"}
    runner = web.AppRunner(fake.app())
    await runner.setup()
    ports = []
    for _ in ("api", "admin"):
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        ports.append(site._server.sockets[0].getsockname()[1])  # type: ignore[union-attr]
    monkeypatch.setattr(builder, "HTTP_PORT", ports[0])
    monkeypatch.setattr(builder, "ADMIN_PORT", ports[1])
    yield fake
    await runner.cleanup()


def parent(spec: Obj) -> Obj:
    return {
        "apiVersion": "phiops.dev/v1alpha1",
        "kind": "PhiDeployment",
        "metadata": {"name": "assistant", "namespace": NS, "uid": "u1", "generation": 1},
        "spec": spec,
    }


SPEC: Obj = {
    "model": {"name": "tiny-phi3", "pvc": {"claimName": "models", "path": "tiny"}},
    "adapters": [{"name": "tone", "fineTuneJobRef": {"name": "tone"}}],
}


async def reconcile(kube: FakeKube, spec: Obj, memo: kopf.Memo) -> tuple[dict[str, Any], Obj]:
    context = Context(
        kube=kube,  # type: ignore[arg-type]
        config=OperatorConfig(),
        parent=parent(spec),
        memo=memo,
        logger=logging.getLogger("test"),
    )
    observed, fields = await handler.step(context, PhiDeploymentSpec.model_validate(spec))
    return {o.type: (o.status, o.reason) for o in observed}, fields


def start_pod(kube: FakeKube) -> None:
    """What the Deployment controller and the kubelet would do: a running, ready pod of the
    current template."""
    template = kube.objects[("Deployment", "assistant-server")]["spec"]["template"]
    kube.put(
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "assistant-server-x1", "namespace": NS, **template["metadata"]},
            "spec": copy.deepcopy(template["spec"]),
            "status": {
                "phase": "Running",
                "podIP": "127.0.0.1",
                "conditions": [{"type": "Ready", "status": "True"}],
            },
        }
    )
    deployment = kube.objects[("Deployment", "assistant-server")]
    deployment["status"] = {"replicas": 1, "readyReplicas": 1}


def template(kube: FakeKube) -> Obj:
    return copy.deepcopy(kube.objects[("Deployment", "assistant-server")]["spec"]["template"])


def config_adapters(kube: FakeKube) -> list[str]:
    data = kube.objects[("ConfigMap", "assistant-server-config")]["data"]["serve.json"]
    return [a["name"] for a in json.loads(data)["adapters"]]


async def test_a_fine_tune_job_finishing_later_is_loaded_hot_without_a_roll(
    server: FakeServer,
) -> None:
    kube = FakeKube(claim("models"), claim("tone-output"), fine_tune_job("Running"))
    memo = kopf.Memo()
    conditions, fields = await reconcile(kube, SPEC, memo)
    # The base is deployed at once, with the job's output claim mounted already.
    assert conditions["Ready"] == ("False", "AdapterNotReady")
    assert "FineTuneJob tone is Running" in fields["adapters"][0]["message"]
    volumes = template(kube)["spec"]["volumes"]
    assert [
        v["persistentVolumeClaim"]["claimName"] for v in volumes if "persistentVolumeClaim" in v
    ] == [
        "models",
        "tone-output",
    ]
    assert config_adapters(kube) == []
    start_pod(kube)
    before = template(kube)

    conditions, _ = await reconcile(kube, SPEC, memo)
    assert conditions["Ready"] == ("False", "AdapterNotReady")
    assert server.calls == []

    kube.put(fine_tune_job("Succeeded"))
    conditions, fields = await reconcile(kube, SPEC, memo)
    assert template(kube) == before  # no roll
    assert config_adapters(kube) == ["tone"]  # new pods start with it
    assert server.calls == [("PUT", "tone")]
    assert server.models["tone"]["path"] == "/phiops/volumes/tone-output"
    assert server.models["tone"]["sha256"] == SHA
    assert conditions["Ready"] == ("True", "Serving")
    (tone,) = fields["adapters"]
    assert (tone["loaded"], tone["loadedReplicas"], tone["sha256"]) == (True, 1, SHA)
    assert fields["adaptersReady"] == "1/1"

    await reconcile(kube, SPEC, memo)
    assert server.calls == [("PUT", "tone")]  # loaded: nothing more to do

    # Dropped from the spec: unloaded; its claim stays mounted, so the pods do not roll.
    conditions, fields = await reconcile(kube, {**SPEC, "adapters": []}, memo)
    assert server.calls[-1] == ("DELETE", "tone")
    assert "tone" not in server.models
    assert template(kube) == before
    assert conditions["Ready"] == ("True", "Serving") and fields["adapters"] == []


async def test_an_adapter_the_server_refuses_is_reported_on_it_and_not_hammered(
    server: FakeServer,
) -> None:
    kube = FakeKube(claim("models"), claim("tone-output"), fine_tune_job("Succeeded"))
    memo = kopf.Memo()
    await reconcile(kube, SPEC, memo)
    start_pod(kube)
    server.refuse = "adapter_config.json: not a LoRA adapter"
    conditions, fields = await reconcile(kube, SPEC, memo)
    assert server.calls == [("PUT", "tone")]
    (tone,) = fields["adapters"]
    assert tone["loaded"] is False
    assert tone["message"] == "assistant-server-x1: adapter_config.json: not a LoRA adapter"
    assert conditions["Ready"] == ("False", "AdapterLoadFailed")
    assert conditions["Degraded"][0] == "True"
    # The server does not list a refused adapter: the operator waits before asking again.
    await reconcile(kube, SPEC, memo)
    assert server.calls == [("PUT", "tone")]


async def test_pods_of_another_engine_configuration_are_not_touched(server: FakeServer) -> None:
    kube = FakeKube(claim("models"), claim("tone-output"), fine_tune_job("Succeeded"))
    memo = kopf.Memo()
    await reconcile(kube, SPEC, memo)
    start_pod(kube)
    changed = {**SPEC, "engine": {"maxModelLen": 1024}}
    conditions, fields = await reconcile(kube, changed, memo)
    assert server.calls == []  # the old pod is being replaced
    assert conditions["Ready"] == ("False", "RollingOut")
    assert fields["adapters"][0]["loaded"] is False
