"""PhiDeployment end to end on the real control plane: a tiny Phi-3 made by a pod, a
KnowledgeBase synced into milvus-lite, an adapter trained by a FineTuneJob, and the inference
server running for real through the node runtime, asked with the official `openai` client."""

from __future__ import annotations

import json
import subprocess
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import openai
import pytest

from tests import helpers
from tests.chart.tools import INSTALL_HINT, promtool_path
from tests.conftest import Cluster, free_port
from tests.pod_security import violations
from tests.prometheus import api, running_prometheus

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(1200)]
ADAPTERS_CLAIM = "adapters"
NS = "phid-tests"
TIMEOUT = 420
HANDBOOK = Path(__file__).parent.parent / "embed_fixtures" / "handbook"
ALERTS = Path(__file__).parents[2] / "charts" / "phiops" / "files" / "alerts.yaml"
REFUND_QUESTION = "How many business days until my refund reaches my payment method?"

# A memorisable house style: the adapter must answer differently from the base.
RECORDS = [
    {
        "messages": [
            {"role": "user", "content": f"Is order {i} on its way?"},
            {"role": "assistant", "content": f"Yes! Order {i} left our Rotterdam depot today."},
        ]
    }
    for i in range(24)
]


def eventually(check: Callable[[], Any], timeout: float = TIMEOUT, what: str = "") -> Any:
    return helpers.eventually(check, timeout, what)


def get(cluster: Cluster, kind: str, name: str) -> dict[str, Any] | None:
    return cluster.get(NS, kind, name)


def condition(obj: dict[str, Any] | None, type_: str) -> dict[str, Any]:
    found = ((obj or {}).get("status") or {}).get("conditions") or []
    return next((c for c in found if c["type"] == type_), {})


def fine_tune_job(name: str = "tone") -> dict[str, Any]:
    """A LoRA job writing into folder `name` of the shared `adapters` claim: the serving pods
    mount that claim once, and every later adapter on it is loaded without a roll."""
    return {
        "apiVersion": "phiops.dev/v1alpha1",
        "kind": "FineTuneJob",
        "metadata": {"name": name},
        "spec": {
            "output": {"pvc": {"claimName": ADAPTERS_CLAIM, "path": name}},
            "baseModel": {"name": "tiny-phi3", "pvc": {"claimName": "models", "path": "tiny"}},
            "dataset": {"configMap": {"name": "chat", "key": "train.jsonl"}, "maxSeqLength": 96},
            "method": "lora",
            "lora": {"r": 8, "alpha": 16},
            "training": {
                "maxSteps": 24,
                "batchSize": 4,
                "gradientAccumulationSteps": 1,
                "learningRate": 0.01,
                "warmupRatio": 0,
                "saveSteps": 12,
                "loggingSteps": 4,
                "gradientCheckpointing": False,
            },
            "resources": {"gpus": 1},
        },
    }


def phi_deployment() -> dict[str, Any]:
    return {
        "apiVersion": "phiops.dev/v1alpha1",
        "kind": "PhiDeployment",
        "metadata": {"name": "assistant"},
        "spec": {
            "model": {"name": "tiny-phi3", "pvc": {"claimName": "models", "path": "tiny"}},
            "adapters": [{"name": "tone", "fineTuneJobRef": {"name": "tone"}}],
            "knowledgeBaseRef": {"name": "handbook", "topK": 2},
            "prompt": {"systemPrompt": "You answer questions about Acme from the context."},
            "server": {"maxNewTokens": 16},
        },
    }


@pytest.fixture(scope="module")
def stack(operator: int, crds: Cluster) -> Cluster:
    """The namespace with a tiny Phi-3 on a claim, a chat dataset, and the handbook
    KnowledgeBase synced."""
    crds.create_namespace(NS)
    crds.apply(helpers.models_claim(), NS)
    crds.apply(helpers.models_claim(name=ADAPTERS_CLAIM), NS)
    crds.apply(helpers.tiny_model_pod(), NS)
    data = "\n".join(json.dumps(r) for r in RECORDS) + "\n"
    crds.apply(
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": "chat"},
            "data": {"train.jsonl": data},
        },
        NS,
    )
    documents = {p.name: p.read_text() for p in sorted(HANDBOOK.rglob("*")) if p.is_file()}
    crds.apply(
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": "handbook"},
            "data": documents,
        },
        NS,
    )
    crds.apply(
        {
            "apiVersion": "phiops.dev/v1alpha1",
            "kind": "KnowledgeBase",
            "metadata": {"name": "handbook"},
            "spec": {"sources": [{"name": "handbook", "configMap": {"name": "handbook"}}]},
        },
        NS,
    )
    eventually(
        lambda: (
            ((get(crds, "pod", "make-tiny-model") or {}).get("status") or {}).get("phase")
            == "Succeeded"
        ),
        timeout=180,
        what="the tiny model to be made",
    )
    eventually(
        lambda: condition(get(crds, "kb", "handbook"), "Ready").get("status") == "True",
        what="the handbook KnowledgeBase to sync",
    )
    return crds


def ready_reason(cluster: Cluster, reason: str, what: str, timeout: float = 60) -> Any:
    """The `assistant` PhiDeployment once its Ready condition has `reason`."""
    return eventually(
        lambda: (
            (o := get(cluster, "phid", "assistant"))
            and condition(o, "Ready").get("reason") == reason
            and o
        ),
        timeout=timeout,
        what=what,
    )


@pytest.fixture(scope="module")
def deployed(stack: Cluster) -> dict[str, Any]:
    """The PhiDeployment applied while its FineTuneJob still trains: the base model is
    deployed at once (with the job's output claim mounted) while the adapter waits
    (AdapterNotReady); once the job succeeds its adapter is loaded into the running pod."""
    stack.apply(fine_tune_job(), NS)
    stack.apply(phi_deployment(), NS)
    waiting = ready_reason(stack, "AdapterNotReady", "the deployment to wait for its adapter")
    assert condition(waiting, "Ready")["status"] == "False"
    assert waiting["status"]["adapters"][0]["loaded"] is False
    assert "FineTuneJob tone" in waiting["status"]["adapters"][0]["message"]
    assert get(stack, "deployment", "assistant-server") is not None  # the base goes ahead
    pods = eventually(lambda: serving_pods(stack), what="the serving pod")

    trained = eventually(
        lambda: (
            (o := get(stack, "ftj", "tone"))
            and (o.get("status") or {}).get("phase") == "Succeeded"
            and o
        ),
        what="the FineTuneJob to train the adapter",
    )
    ready = eventually(
        lambda: (
            (o := get(stack, "phid", "assistant"))
            and condition(o, "Ready").get("status") == "True"
            and o
        ),
        what="the deployment to serve the adapter",
    )
    assert serving_pods(stack) == pods  # loaded into the pod that was there, no roll
    ready["trained_sha256"] = trained["status"]["adapter"]["sha256"]
    return ready


@pytest.fixture(scope="module")
def client(stack: Cluster, deployed: dict[str, Any]) -> Iterator[openai.OpenAI]:
    service = get(stack, "service", "assistant-server")
    assert service is not None
    base_url = f"http://{service['spec']['clusterIP']}:8000/v1"
    with openai.OpenAI(base_url=base_url, api_key="unused", max_retries=0, timeout=120) as c:
        yield c


def test_status_reports_replicas_endpoint_adapters_and_knowledge_base(
    deployed: dict[str, Any], stack: Cluster
) -> None:
    status = deployed["status"]
    assert status["readyReplicas"] == 1 and status["replicas"] == 1
    assert status["endpoint"] == f"http://assistant-server.{NS}.svc:8000/v1"
    assert status["adaptersReady"] == "1/1"
    (adapter,) = status["adapters"]
    assert adapter["loaded"] is True
    assert adapter["source"] == "fineTuneJob/tone"
    assert adapter["sha256"] == deployed["trained_sha256"]
    kb = get(stack, "kb", "handbook")
    assert status["knowledgeBase"] == {"name": "handbook", "collection": kb["status"]["collection"]}  # type: ignore[index]
    printed = stack.kubectl("get", "phid", "assistant", "-n", NS)
    assert "1/1" in printed and status["endpoint"] in printed


def test_server_pods_run_restricted_and_are_admitted_to_the_store(
    deployed: dict[str, Any], stack: Cluster
) -> None:
    """The serving pod ran restricted without a token; its label is what the handbook
    store's policy admits, and its own policy is there."""
    out = stack.kubectl(
        "get", "pods", "-n", NS, "-l", "app.kubernetes.io/instance=assistant", "-o", "json"
    )
    (pod,) = [p for p in json.loads(out)["items"] if not p["metadata"].get("deletionTimestamp")]
    assert violations(pod["spec"]) == []
    assert pod["spec"]["automountServiceAccountToken"] is False
    assert pod["metadata"]["labels"]["phiops.dev/knowledge-base"] == "handbook"
    for name in ("assistant-server", "handbook-store"):
        assert get(stack, "networkpolicy", name) is not None, name


def test_openai_client_lists_the_base_and_the_adapter_with_its_parent(
    client: openai.OpenAI,
) -> None:
    models = {m.id: m for m in client.models.list()}
    assert set(models) == {"tiny-phi3", "tone"}
    assert models["tone"].model_extra["parent"] == "tiny-phi3"  # type: ignore[index]


def chat(client: openai.OpenAI, model: str, question: str, to_limit: bool = False) -> Any:
    """A greedy answer; `to_limit` runs it to max_tokens past any end token."""
    return client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": question}],
        temperature=0,
        max_tokens=12,
        extra_body={"ignore_eos": True} if to_limit else None,
    )


def streamed(client: openai.OpenAI, model: str, question: str) -> tuple[str, list[Any]]:
    chunks = list(
        client.chat.completions.create(
            model=model,
            messages=[{"role": "user", "content": question}],
            temperature=0,
            max_tokens=12,
            stream=True,
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    return text, chunks


def test_base_and_adapter_answer_streaming_and_not_and_differ(client: openai.OpenAI) -> None:
    question = "Is order 7 on its way?"
    base, tuned = chat(client, "tiny-phi3", question), chat(client, "tone", question)
    for completion, model in ((base, "tiny-phi3"), (tuned, "tone")):
        assert completion.model == model
        assert completion.usage.completion_tokens > 0
        assert completion.usage.total_tokens == (
            completion.usage.prompt_tokens + completion.usage.completion_tokens
        )
        text, _ = streamed(client, model, question)
        assert text == completion.choices[0].message.content  # greedy: the same tokens
    assert base.choices[0].message.content != tuned.choices[0].message.content


def test_answers_cite_the_document_that_holds_the_answer(client: openai.OpenAI) -> None:
    completion = chat(client, "tone", REFUND_QUESTION)
    citations = completion.model_extra["citations"]  # type: ignore[index]
    assert citations, "a retrieval-augmented answer carries its sources"
    assert citations[0]["doc_id"].endswith("refunds.md"), citations
    assert citations[0]["score"] >= citations[-1]["score"]
    _, chunks = streamed(client, "tone", REFUND_QUESTION)
    assert chunks[0].model_extra["citations"] == citations  # type: ignore[index]


def test_unknown_model_is_a_404_error_object(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as caught:
        chat(client, "no-such-model", "hello")
    assert caught.value.code == "model_not_found"


def test_kubectl_scale_changes_the_replica_count(stack: Cluster, deployed: dict[str, Any]) -> None:
    stack.kubectl("scale", "-n", NS, "phid/assistant", "--replicas=2")
    eventually(
        lambda: (
            ((get(stack, "phid", "assistant") or {}).get("status") or {}).get("readyReplicas") == 2
        ),
        what="a second replica to load and become ready",
    )
    deployment = get(stack, "deployment", "assistant-server")
    assert deployment is not None and deployment["spec"]["replicas"] == 2
    scale = json.loads(
        stack.kubectl(
            "get",
            "--raw",
            f"/apis/phiops.dev/v1alpha1/namespaces/{NS}/phideployments/assistant/scale",
        )
    )
    assert scale["status"]["replicas"] == 2
    assert "app.kubernetes.io/instance=assistant" in scale["status"]["selector"]
    stack.kubectl("scale", "-n", NS, "phid/assistant", "--replicas=1")
    eventually(
        lambda: ((get(stack, "phid", "assistant") or {}).get("status") or {}).get("replicas") == 1,
        what="scaling back to one replica",
    )


def serving_pods(cluster: Cluster) -> list[str]:
    out = cluster.kubectl(
        "get", "pods", "-n", NS, "-l", "app.kubernetes.io/instance=assistant", "-o", "json"
    )
    return sorted(
        p["metadata"]["name"]
        for p in json.loads(out)["items"]
        if not p["metadata"].get("deletionTimestamp")  # a scale-down's pod on its way out
    )


def test_a_job_finishing_loads_its_adapter_hot_while_clients_stream(
    stack: Cluster, deployed: dict[str, Any], client: openai.OpenAI
) -> None:
    before = get(stack, "deployment", "assistant-server")
    assert before is not None
    old_hash = before["spec"]["template"]["metadata"]["annotations"]["phiops.dev/config-hash"]
    pods = serving_pods(stack)
    # Run to the limit: with the retrieved context around it, a prompt far longer than the
    # tiny adapter's 96 training tokens, its greedy first token can be its end token, and two
    # empty answers cannot show which adapter spoke.
    old_answer = chat(client, "tone", "Is order 3 on its way?", True).choices[0].message.content
    assert old_answer
    # Point the adapter at a job that does not exist yet: the old adapter keeps serving.
    patch = {"spec": {"adapters": [{"name": "tone", "fineTuneJobRef": {"name": "tone-v2"}}]}}
    stack.kubectl("patch", "-n", NS, "phid", "assistant", "--type=merge", "-p", json.dumps(patch))
    serving_previous = ready_reason(
        stack, "ServingPrevious", "the deployment to keep serving the previous adapter"
    )
    assert condition(serving_previous, "Ready")["status"] == "True"
    assert condition(serving_previous, "Reconciling")["status"] == "True"
    assert "tone-v2" in serving_previous["status"]["adapters"][0]["message"]

    retrained = fine_tune_job("tone-v2")
    retrained["spec"]["training"]["learningRate"] = 0.02
    order = "Is order 3 on its way?"
    with (
        helpers.Streamer(client, "tone", order, 16) as on_adapter,
        helpers.Streamer(client, "tiny-phi3", order, 16) as on_base,
    ):
        stack.apply(retrained, NS)
        new_sha = eventually(
            lambda: (
                ((get(stack, "ftj", "tone-v2") or {}).get("status") or {})
                .get("adapter", {})
                .get("sha256")
            ),
            what="the retrained adapter",
        )
        loaded = eventually(
            lambda: (
                (o := get(stack, "phid", "assistant"))
                and condition(o, "Ready").get("reason") == "Serving"
                and o["status"]["adapters"][0].get("sha256") == new_sha
                and o["status"]["adapters"][0].get("loaded")
                and o
            ),
            what="the deployment to load the retrained adapter",
        )
        served = on_adapter.done
        eventually(lambda: on_adapter.done > served + 1, 60, "answers from the new adapter")
    assert on_adapter.failures == [] and on_base.failures == []
    assert on_adapter.done > 2 and on_base.done > 2
    assert loaded["status"]["adapters"][0]["source"] == "fineTuneJob/tone-v2"
    # Loaded into the running engine: no new pod, no new pod template.
    assert serving_pods(stack) == pods
    after = get(stack, "deployment", "assistant-server")
    assert after is not None
    assert after["spec"]["template"]["metadata"]["annotations"]["phiops.dev/config-hash"] == (
        old_hash
    )
    new_answer = chat(client, "tone", "Is order 3 on its way?", True).choices[0].message.content
    assert new_answer != old_answer


def test_kubectl_wait_for_ready_works_for_all_three_kinds(
    stack: Cluster, deployed: dict[str, Any]
) -> None:
    for resource in ("knowledgebase/handbook", "finetunejob/tone", "phideployment/assistant"):
        out = stack.kubectl("wait", "-n", NS, "--for=condition=Ready", "--timeout=60s", resource)
        assert "condition met" in out


def test_an_adapter_that_cannot_load_is_reported_on_that_adapter(
    stack: Cluster, deployed: dict[str, Any]
) -> None:
    trained = get(stack, "ftj", "tone")
    assert trained is not None
    output = trained["status"]["adapter"]["claimName"]
    folder = trained["status"]["adapter"]["path"]
    broken = {
        "apiVersion": "phiops.dev/v1alpha1",
        "kind": "PhiDeployment",
        "metadata": {"name": "half-broken"},
        "spec": {
            "model": {"name": "tiny-phi3", "pvc": {"claimName": "models", "path": "tiny"}},
            "adapters": [
                {"name": "good", "pvc": {"claimName": output, "path": folder}},
                # The base model's folder is no LoRA adapter: this one cannot load.
                {"name": "bad", "pvc": {"claimName": "models", "path": "tiny"}},
            ],
            "server": {"maxNewTokens": 8},
        },
    }
    stack.apply(broken, NS)
    try:
        reported = eventually(
            lambda: (
                (o := get(stack, "phid", "half-broken"))
                and condition(o, "Ready").get("reason") == "AdapterLoadFailed"
                and o
            ),
            timeout=180,
            what="the adapter's load error in status",
        )
        adapters = {a["name"]: a for a in reported["status"]["adapters"]}
        # A failed adapter no longer keeps the pod from serving the base and the others.
        assert adapters["bad"]["loaded"] is False
        assert adapters["bad"]["message"].startswith("half-broken-server-")
        assert adapters["good"]["loaded"] is True
        assert "message" not in adapters["good"]
        assert condition(reported, "Ready")["status"] == "False"
        assert condition(reported, "Degraded")["status"] == "True"
        assert reported["status"]["readyReplicas"] == 1
        assert reported["status"]["adaptersReady"] == "1/2"
    finally:
        stack.kubectl("delete", "-n", NS, "phid", "half-broken", "--wait=false")


def metrics_text(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as response:
        return str(response.read().decode())


def server_pod_ip(cluster: Cluster) -> str:
    out = cluster.kubectl(
        "get", "pods", "-n", NS, "-l", "app.kubernetes.io/instance=assistant", "-o", "json"
    )
    ready = [
        p
        for p in json.loads(out)["items"]
        if any(c["type"] == "Ready" and c["status"] == "True" for c in p["status"]["conditions"])
    ]
    assert ready, "no ready server pod"
    return str(ready[0]["status"]["podIP"])


def test_prometheus_scrapes_operator_and_server_and_a_failed_job_fires_its_alert(
    stack: Cluster,
    deployed: dict[str, Any],
    client: openai.OpenAI,
    operator: int,
    tmp_path: Path,
) -> None:
    promtool = promtool_path()
    assert promtool, f"promtool not found: {INSTALL_HINT}"
    server = f"{server_pod_ip(stack)}:8000"
    chat(client, "tone", "Is order 5 on its way?")  # something for the server's series
    for url in (f"http://127.0.0.1:{operator}/metrics", f"http://{server}/metrics"):
        text = metrics_text(url)
        # vLLM names its series `vllm:*`, which promtool's linter refuses (colons are kept
        # for recording rules): ours are checked, vLLM's must at least be there.
        engine = ("vllm:", "# HELP vllm:", "# TYPE vllm:")
        lines = text.splitlines(keepends=True)
        ours = "".join(line for line in lines if not line.startswith(engine))
        if url.endswith(f"{server}/metrics"):
            assert "vllm:num_requests_running" in text and "vllm:kv_cache_usage_perc" in text
        checked = subprocess.run(
            [promtool, "check", "metrics"],
            input=ours,
            capture_output=True,
            text=True,
            check=False,
        )
        assert checked.returncode == 0, f"{url}: {checked.stdout}{checked.stderr}"

    targets = {"phiops-operator": f"127.0.0.1:{operator}", "phiops-serve": server}
    with running_prometheus(tmp_path, free_port(), targets, [ALERTS]) as prometheus:
        # A dataset with no usable record: the pre-flight fails the job for good.
        stack.apply(
            {
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": {"name": "broken-chat"},
                "data": {"train.jsonl": 'not json\n{"messages": []}\n'},
            },
            NS,
        )
        broken = fine_tune_job()
        broken["metadata"]["name"] = "broken"
        broken["spec"]["dataset"]["configMap"]["name"] = "broken-chat"
        stack.apply(broken, NS)

        def firing() -> dict[str, Any] | None:
            for alert in api(prometheus, "alerts")["alerts"]:
                labels = alert["labels"]
                if (
                    labels["alertname"] == "PhiopsFineTuneJobFailed"
                    and labels.get("name") == "broken"
                    and alert["state"] == "firing"
                ):
                    return alert  # type: ignore[no-any-return]
            return None

        alert = eventually(firing, timeout=180, what="PhiopsFineTuneJobFailed to fire")
        assert alert["labels"]["namespace"] == NS
        assert alert["labels"]["severity"] == "warning"
        assert alert["annotations"]["runbook_url"].endswith("#phiopsfinetunejobfailed")
        # The healthy jobs here fire nothing (failed ones of other test modules may, in the
        # same process); the server's own series are scraped per model.
        names = {
            a["labels"].get("name")
            for a in api(prometheus, "alerts")["alerts"]
            if a["labels"]["alertname"] == "PhiopsFineTuneJobFailed"
            and a["labels"].get("namespace") == NS
        }
        assert names == {"broken"}
        served = api(prometheus, "query?query=phiops_serve_requests_total")["result"]
        assert "tone" in {s["metric"].get("model") for s in served}
        up = api(prometheus, "query?query=up")["result"]
        assert {s["metric"]["job"]: s["value"][1] for s in up} == {
            "phiops-operator": "1",
            "phiops-serve": "1",
        }


def ready_server_pods(cluster: Cluster) -> list[dict[str, Any]]:
    out = cluster.kubectl(
        "get", "pods", "-n", NS, "-l", "app.kubernetes.io/instance=assistant", "-o", "json"
    )
    return [
        p
        for p in json.loads(out)["items"]
        if not p["metadata"].get("deletionTimestamp")
        and any(c["type"] == "Ready" and c["status"] == "True" for c in p["status"]["conditions"])
    ]


# How long the survivor alone must keep answering after the kill.
SURVIVOR_SECONDS = 45


@pytest.mark.chaos
def test_one_of_two_replicas_killed_the_other_keeps_answering(
    stack: Cluster, deployed: dict[str, Any]
) -> None:
    """Two replicas behind the Service; one pod force-deleted (SIGKILL, no drain) while a
    client asks without pause: the openai client (with retries, as clients run it) sees no
    failed request, the survivor keeps answering, and the Deployment makes a replacement.
    (Whether the replacement gets Ready is not asserted: on the 2-core dev machine a second
    server starting beside a busy one has hung in torch's start-up, in the kernel.)"""
    service = get(stack, "service", "assistant-server")
    assert service is not None
    base_url = f"http://{service['spec']['clusterIP']}:8000/v1"
    stack.kubectl("scale", "-n", NS, "phid/assistant", "--replicas=2")
    try:
        eventually(
            lambda: (
                len(ready_server_pods(stack)) == 2
                and ((get(stack, "phid", "assistant") or {}).get("status") or {}).get(
                    "readyReplicas"
                )
                == 2
            ),
            what="two ready replicas",
        )
        victim, survivor = ready_server_pods(stack)
        with (
            openai.OpenAI(base_url=base_url, api_key="unused", max_retries=5, timeout=60) as c,
            # The base model and the adapter in turn, each answer run to max_tokens: a random
            # model may sample its end token first, an empty answer (two did in earlier runs).
            helpers.Asker(c, ["tiny-phi3", "tone"], REFUND_QUESTION, 8) as asker,
        ):
            eventually(lambda: len(asker.answered) >= 4, 120, "answers from both replicas")
            stack.kubectl(
                "delete", "pod", "-n", NS, victim["metadata"]["name"], "--grace-period=0", "--force"
            )
            killed_at = time.monotonic()
            time.sleep(SURVIVOR_SECONDS)
            ended_at = time.monotonic()
        assert asker.failures == []
        during = [t for t in asker.answered if killed_at <= t <= ended_at]
        print(f"{len(during)} answers in the {SURVIVOR_SECONDS} s after the kill, 0 failed")
        assert len(during) >= 5
        gaps = [b - a for a, b in zip([killed_at, *during], [*during, ended_at], strict=True)]
        assert max(gaps) < 30, f"no answer for {max(gaps):.0f} s while one replica served"
        assert survivor["metadata"]["uid"] in {
            p["metadata"]["uid"] for p in ready_server_pods(stack)
        }
        names = set(serving_pods(stack))  # the victim gone, a replacement made
        assert victim["metadata"]["name"] not in names and len(names) == 2, names
    finally:
        stack.kubectl("scale", "-n", NS, "phid/assistant", "--replicas=1")
        eventually(lambda: len(serving_pods(stack)) == 1, what="scaling back to one replica")
