"""KnowledgeBase end to end: the operator in-process, the embedded store and the embedding
Jobs running for real through the node runtime, real milvus-lite and the real MiniLM model."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest

from tests import helpers
from tests.conftest import Cluster
from tests.pod_security import violations
from tests.unit.embed.pdfgen import make_pdf

pytestmark = pytest.mark.cluster
NS = "kb-tests"
SYNC_TIMEOUT = 240

DOCS = {
    "returns.md": (
        "# Returns policy\n\nCustomers may return unused products within 30 days of delivery "
        "for a full refund. Refunds reach the original payment method within 5 business days.\n"
    ),
    "warranty.md": (
        "# Warranty\n\nEvery device carries a two-year warranty covering manufacturing defects. "
        "Water damage and cracked screens are not covered.\n"
    ),
    "shipping.html": (
        "<html><body><h1>Shipping</h1><p>Orders ship from our Rotterdam warehouse. Express "
        "delivery to Amsterdam arrives the next morning.</p></body></html>"
    ),
}
PDF_TEXT = "Battery care. Charge the scooter battery to 80 percent before winter storage."


def eventually(check: Callable[[], Any], timeout: float = SYNC_TIMEOUT, what: str = "") -> Any:
    return helpers.eventually(check, timeout, what)


def apply(cluster: Cluster, manifest: dict[str, Any]) -> None:
    cluster.apply(manifest, NS)


def get(cluster: Cluster, kind: str, name: str) -> dict[str, Any] | None:
    return cluster.get(NS, kind, name)


def ready(obj: dict[str, Any] | None) -> dict[str, Any] | None:
    for c in (obj or {}).get("status", {}).get("conditions", []):
        if c["type"] == "Ready":
            return c  # type: ignore[no-any-return]
    return None


def wait_synced(cluster: Cluster, name: str, after: str | None = None) -> dict[str, Any]:
    """Wait for Ready=True from a sync other than `after`."""

    def synced() -> dict[str, Any] | None:
        kb = get(cluster, "kb", name)
        cond = ready(kb)
        if kb and cond and cond["status"] == "True" and kb["status"].get("syncId") != after:
            return kb
        return None

    return eventually(synced, what=f"KnowledgeBase {name} to sync (after {after})")  # type: ignore[no-any-return]


def knowledge_base(name: str, sources: list[dict[str, Any]], **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "phiops.dev/v1alpha1",
        "kind": "KnowledgeBase",
        "metadata": {"name": name, "namespace": NS},
        "spec": {"sources": sources, "chunking": {"size": 64, "overlap": 8}, **spec},
    }


def store_address(cluster: Cluster, kb: str) -> str:
    service = get(cluster, "service", f"{kb}-store")
    assert service is not None
    return f"http://{service['spec']['clusterIP']}:19530"


def query(cluster: Cluster, kb: str, question: str, top_k: int = 3) -> list[dict[str, Any]]:
    """What retrieval returns, through the embedding image's own `query` subcommand."""
    obj = get(cluster, "kb", kb)
    assert obj is not None
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "phiops_embed",
            "query",
            "--uri",
            store_address(cluster, kb),
            "--collection",
            obj["status"]["collection"],
            "--top-k",
            str(top_k),
            question,
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def docs(operator: int, crds: Cluster) -> Cluster:
    """A namespace with Markdown/HTML documents in a ConfigMap and a PDF on a PVC."""
    crds.create_namespace(NS)
    apply(
        crds, {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "docs"}, "data": DOCS}
    )
    pdf = base64.b64encode(make_pdf([[PDF_TEXT]])).decode()
    apply(
        crds,
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": "pdf-upload"},
            "binaryData": {"battery.pdf": pdf},
        },
    )
    apply(
        crds,
        {
            "apiVersion": "v1",
            "kind": "PersistentVolumeClaim",
            "metadata": {"name": "manuals"},
            "spec": {
                "accessModes": ["ReadWriteOnce"],
                "resources": {"requests": {"storage": "10Mi"}},
            },
        },
    )
    # Put the PDF on the claim the way a user would: a pod copies it there.
    apply(
        crds,
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "upload-manuals"},
            "spec": {
                "restartPolicy": "Never",
                "automountServiceAccountToken": False,
                "securityContext": helpers.RESTRICTED_POD,
                "containers": [
                    {
                        "name": "copy",
                        "image": "phiops-embed:test",
                        "securityContext": helpers.RESTRICTED_CONTAINER,
                        "command": [
                            "python",
                            "-c",
                            "import shutil; shutil.copy('/in/battery.pdf', '/out/')",
                        ],
                        "volumeMounts": [
                            {"name": "in", "mountPath": "/in"},
                            {"name": "out", "mountPath": "/out"},
                        ],
                    }
                ],
                "volumes": [
                    {"name": "in", "configMap": {"name": "pdf-upload"}},
                    {"name": "out", "persistentVolumeClaim": {"claimName": "manuals"}},
                ],
            },
        },
    )
    eventually(
        lambda: (
            (get(crds, "pod", "upload-manuals") or {}).get("status", {}).get("phase") == "Succeeded"
        ),
        timeout=60,
        what="the PDF upload pod",
    )
    return crds


SOURCES = [
    {"name": "handbook", "configMap": {"name": "docs"}},
    {"name": "manuals", "persistentVolumeClaim": {"claimName": "manuals"}},
]


def test_builds_from_configmap_and_pvc_and_retrieves_the_right_document(docs: Cluster) -> None:
    apply(docs, knowledge_base("handbook", SOURCES))
    kb = wait_synced(docs, "handbook")
    status = kb["status"]
    assert status["documents"]["total"] == 4
    assert status["documents"]["added"] == 4
    assert status["documents"]["failed"] == 0
    assert status["chunks"] >= 4
    assert status["dimension"] == 384
    assert status["collection"] == "kb_kb_tests_handbook"
    assert status["physicalCollection"].startswith("kb_kb_tests_handbook__")
    assert status["observedGeneration"] == kb["metadata"]["generation"]

    hits = query(docs, "handbook", "How many days do I have to return a product for a refund?")
    assert hits[0]["doc_id"] == "handbook/returns.md"
    assert (
        query(docs, "handbook", "Where do orders ship from?")[0]["doc_id"]
        == "handbook/shipping.html"
    )
    battery = query(docs, "handbook", "How should I store the scooter battery in winter?")
    assert battery[0]["doc_id"] == "manuals/battery.pdf"
    printed = docs.kubectl("get", "-n", NS, "kb", "handbook")
    assert "True" in printed and " 4 " in printed  # Ready and documents in the printer columns


def test_store_and_sync_pods_ran_restricted_without_tokens_behind_a_policy(docs: Cluster) -> None:
    """The pods the API server admitted (and the node runtime ran: the sync above succeeded)
    carry the restricted settings and no ServiceAccount token; the store has its policy."""
    wait_synced(docs, "handbook")
    out = docs.kubectl(
        "get", "-n", NS, "pods", "-l", "app.kubernetes.io/instance=handbook", "-o", "json"
    )
    pods = json.loads(out)["items"]
    components = {p["metadata"]["labels"]["app.kubernetes.io/component"] for p in pods}
    assert {"store", "sync"} <= components
    for pod in pods:
        assert violations(pod["spec"]) == [], pod["metadata"]["name"]
        mounts = [m["mountPath"] for c in pod["spec"]["containers"] for m in c["volumeMounts"]]
        assert not any("serviceaccount" in m for m in mounts), pod["metadata"]["name"]
    policy = get(docs, "networkpolicy", "handbook-store")
    assert policy is not None and policy["spec"]["policyTypes"] == ["Ingress"]
    assert policy["metadata"]["ownerReferences"][0]["name"] == "handbook"


def test_edits_and_deletions_propagate(docs: Cluster) -> None:
    before = wait_synced(docs, "handbook")
    changed = dict(DOCS)
    changed["warranty.md"] = "# Warranty\n\nEvery device now carries a three-year warranty.\n"
    del changed["shipping.html"]
    apply(
        docs,
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "docs"}, "data": changed},
    )
    # An edited source ConfigMap is a new sync by itself.
    after = wait_synced(docs, "handbook", after=before["status"]["syncId"])
    counts = after["status"]["documents"]
    assert (counts["total"], counts["updated"], counts["deleted"], counts["unchanged"]) == (
        3,
        1,
        1,
        2,
    )
    for hit in query(docs, "handbook", "Where do orders ship from? Rotterdam warehouse", top_k=10):
        assert hit["doc_id"] != "handbook/shipping.html"
    assert "three-year" in query(docs, "handbook", "How long is the warranty?")[0]["text"]


def test_missing_source_reports_source_not_found_then_recovers(docs: Cluster) -> None:
    apply(docs, knowledge_base("late", [{"name": "later", "configMap": {"name": "not-yet"}}]))
    cond = eventually(
        lambda: (c := ready(get(docs, "kb", "late"))) and c["reason"] == "SourceNotFound" and c,
        timeout=60,
        what="SourceNotFound",
    )
    assert "ConfigMap not-yet" in cond["message"]
    apply(
        docs,
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": "not-yet"},
            "data": {"a.md": "# Late\n\nThis document arrived late."},
        },
    )
    assert wait_synced(docs, "late")["status"]["documents"]["total"] == 1


def test_settings_change_switches_collections_without_a_failed_query(docs: Cluster) -> None:
    before = wait_synced(docs, "handbook")
    failures: list[str] = []
    answered = 0
    stop = threading.Event()

    def keep_querying() -> None:
        nonlocal answered
        from pymilvus import MilvusClient

        client = MilvusClient(uri=store_address(docs, "handbook"))
        while not stop.is_set():
            try:
                client.query(before["status"]["collection"], filter="chunk_index >= 0", limit=1)
                answered += 1
            except Exception as err:  # every failure is a finding
                failures.append(repr(err))
            time.sleep(0.2)

    reader = threading.Thread(target=keep_querying)
    reader.start()
    try:
        docs.kubectl(
            "patch",
            "-n",
            NS,
            "kb",
            "handbook",
            "--type=merge",
            "-p",
            '{"spec": {"chunking": {"size": 48, "overlap": 4}}}',
        )
        after = wait_synced(docs, "handbook", after=before["status"]["syncId"])
    finally:
        stop.set()
        reader.join()
    assert failures == []
    assert answered > 5
    assert after["status"]["collection"] == before["status"]["collection"]
    assert after["status"]["physicalCollection"] != before["status"]["physicalCollection"]
    assert after["status"]["documents"]["added"] == after["status"]["documents"]["total"]


def test_killed_embedding_pod_rerun_leaves_the_same_rows(docs: Cluster) -> None:
    corpus = {
        f"note-{i:03}.md": f"# Note {i}\n\n" + f"Fact number {i} about widgets. " * 30
        for i in range(40)
    }
    apply(
        docs,
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "corpus"}, "data": corpus},
    )
    apply(docs, knowledge_base("clean", [{"name": "c", "configMap": {"name": "corpus"}}]))
    apply(docs, knowledge_base("killed", [{"name": "c", "configMap": {"name": "corpus"}}]))

    # Kill the first embedding pod of "killed" once it has started writing.
    def running_pod() -> str | None:
        out = docs.kubectl(
            "get",
            "pods",
            "-n",
            NS,
            "-l",
            "app.kubernetes.io/instance=killed,app.kubernetes.io/component=sync",
            "-o",
            "json",
        )
        for pod in json.loads(out)["items"]:
            if pod["status"].get("phase") == "Running":
                return str(pod["metadata"]["name"])
        return None

    victim = eventually(running_pod, what="the embedding pod to run")
    time.sleep(8)  # model loaded and some batches written
    docs.kubectl("delete", "pod", "-n", NS, victim, "--grace-period=0", "--force")
    clean = wait_synced(docs, "clean")
    killed = wait_synced(docs, "killed")
    assert killed["status"]["documents"]["total"] == clean["status"]["documents"]["total"] == 40
    assert killed["status"]["chunks"] == clean["status"]["chunks"]


def physical_collection(client: Any, kb: str) -> str | None:
    """The collection a sync of `kb` writes into (before its alias points there)."""
    prefix = f"kb_{NS.replace('-', '_')}_{kb.replace('-', '_')}__"
    found = [c for c in client.list_collections() if c.startswith(prefix)]
    return found[0] if len(found) == 1 else None


def count_rows(client: Any, collection: str) -> int:
    """The store's own row count; a collection milvus-lite restarted with comes back
    released, and is loaded first (as the product's readers do)."""
    from phiops_embed.store import load_collection

    load_collection(client, collection)
    (row,) = client.query(collection, filter="", output_fields=["count(*)"])
    return int(row["count(*)"])


def stored_rows(cluster: Cluster, kb: str) -> list[tuple[str, int, str]]:
    """(doc_id, chunk_index, doc_hash) of every row in the KnowledgeBase's collection, asked
    of its store; and the store's own row count must agree."""
    from pymilvus import MilvusClient

    collection = (get(cluster, "kb", kb) or {})["status"]["collection"]
    client = MilvusClient(uri=store_address(cluster, kb), timeout=30)
    try:
        counted = count_rows(client, collection)
        rows = client.query(
            collection,
            filter="chunk_index >= 0",
            output_fields=["doc_id", "chunk_index", "doc_hash"],
            limit=16384,
        )
    finally:
        client.close()
    found = [(r["doc_id"], int(r["chunk_index"]), r["doc_hash"]) for r in rows]
    assert counted == len(found), (kb, counted, len(found))
    return found


@pytest.mark.chaos
def test_killed_store_pod_mid_sync_loses_and_duplicates_no_row(docs: Cluster) -> None:
    """The embedded store's pod force-deleted (SIGKILL, no drain) once a sync has written its
    first batch: the sync still completes, the store holds exactly the rows of an unkilled
    twin, and a client opened before the kill answers again once the new pod is up."""
    from phiops_embed.store import StoreUnavailable
    from pymilvus import MilvusClient
    from pymilvus.exceptions import MilvusException

    # Over 1,000 chunks (the sync's write batch), so rows are written while more are embedded.
    corpus = {
        f"part-{i:03}.md": f"# Part {i}\n\n" + f"Part {i} fits gearbox model {i * 7}. " * 50
        for i in range(150)
    }
    corpus["returns.md"] = DOCS["returns.md"]
    apply(
        docs,
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "parts"}, "data": corpus},
    )
    sources = [{"name": "p", "configMap": {"name": "parts"}}]
    apply(docs, knowledge_base("store-twin", sources))
    apply(docs, knowledge_base("store-killed", sources))

    store = "app.kubernetes.io/instance=store-killed,app.kubernetes.io/component=store"

    def store_pod() -> dict[str, Any] | None:
        out = docs.kubectl("get", "pods", "-n", NS, "-l", store, "-o", "json")
        for pod in json.loads(out)["items"]:
            conditions = pod["status"].get("conditions") or []
            is_ready = any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)
            if is_ready and not pod["metadata"].get("deletionTimestamp"):
                return pod  # type: ignore[no-any-return]
        return None

    victim = eventually(store_pod, what="the store pod to be ready")
    reader = MilvusClient(uri=store_address(docs, "store-killed"), timeout=10)

    def written() -> int | None:
        assert (ready(get(docs, "kb", "store-killed")) or {}).get("status") != "True", (
            "the sync finished before the test saw rows written: a bigger corpus is needed"
        )
        try:
            collection = physical_collection(reader, "store-killed")
            if collection is None:
                return None
            return count_rows(reader, collection) or None
        except (MilvusException, StoreUnavailable):  # created a moment ago
            return None

    rows_at_kill = helpers.eventually(written, SYNC_TIMEOUT, "first rows written", interval=0.3)
    docs.kubectl(
        "delete", "pod", "-n", NS, victim["metadata"]["name"], "--grace-period=0", "--force"
    )
    killed_at = time.monotonic()
    answers: list[float] = []  # when the client opened before the kill answered since

    def answered_again() -> bool:
        try:
            name = physical_collection(reader, "store-killed")
            if name is not None:
                count_rows(reader, name)
                answers.append(time.monotonic())
        except Exception:  # the store is being replaced: failures are expected meanwhile
            return False
        return bool(answers)

    replacement = eventually(store_pod, 120, "a new store pod to be ready")
    assert replacement["metadata"]["uid"] != victim["metadata"]["uid"]
    helpers.eventually(answered_again, 60, "the old client to answer again", interval=0.5)
    assert answers[0] > killed_at
    reader.close()

    twin, killed = wait_synced(docs, "store-twin"), wait_synced(docs, "store-killed")
    for kb in (twin, killed):
        assert kb["status"]["documents"]["total"] == len(corpus)
        assert kb["status"]["documents"]["failed"] == 0
    rows = {kb: stored_rows(docs, kb) for kb in ("store-twin", "store-killed")}
    print(f"store killed at {rows_at_kill} of {len(rows['store-killed'])} rows")
    assert rows_at_kill < len(rows["store-killed"])  # killed mid-sync, not after it
    for kb, found in rows.items():
        keys = Counter((doc_id, index) for doc_id, index, _ in found)
        assert [k for k, n in keys.items() if n > 1] == [], f"{kb}: duplicated rows"
    assert sorted(rows["store-killed"]) == sorted(rows["store-twin"])  # none lost or extra
    assert killed["status"]["chunks"] == twin["status"]["chunks"] == len(rows["store-twin"])
    hits = query(docs, "store-killed", "How many days do I have to return a product?")
    assert hits and hits[0]["doc_id"] == "p/returns.md"


def test_reclaim_policy_decides_what_deleting_keeps(docs: Cluster) -> None:
    apply(docs, knowledge_base("keep", [{"name": "h", "configMap": {"name": "docs"}}]))
    apply(
        docs,
        knowledge_base(
            "drop", [{"name": "h", "configMap": {"name": "docs"}}], reclaimPolicy="Delete"
        ),
    )
    wait_synced(docs, "keep")
    wait_synced(docs, "drop")
    docs.kubectl("delete", "kb", "-n", NS, "keep", "drop", "--wait=true", "--timeout=60s")
    eventually(
        lambda: get(docs, "pvc", "drop-store") is None,
        timeout=90,
        what="the Delete store volume to go",
    )
    assert get(docs, "pvc", "keep-store") is not None
    eventually(
        lambda: get(docs, "deployment", "keep-store") is None,
        timeout=60,
        what="the store Deployment to be collected",
    )


@pytest.fixture(scope="module", params=["milvus-lite", "milvus-server"])
def external_milvus(request: pytest.FixtureRequest, docs: Cluster) -> Any:
    """A Milvus the operator did not create, reachable from pods and from the operator alike
    on the pods' gateway address (10.244.0.1): a milvus-lite server, and a real Milvus
    standalone server (2.3.5, which listens on every interface)."""
    from tests.conftest import free_port

    if request.param == "milvus-server":
        yield request.getfixturevalue("milvus_server").uri_at(GATEWAY)
        return

    port = free_port()
    data = docs.state_dir.parent / "external-milvus"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "phiops_embed",
            "serve-store",
            "--data-dir",
            str(data),
            "--host",
            GATEWAY,
            "--port",
            str(port),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    uri = f"http://{GATEWAY}:{port}"

    def answers() -> bool:
        from pymilvus import MilvusClient

        try:
            MilvusClient(uri=uri, timeout=2).list_collections()
        except Exception:
            return False
        return True

    eventually(answers, timeout=60, what="the external milvus-lite server")
    yield uri
    proc.terminate()
    proc.wait(timeout=30)


GATEWAY = "10.244.0.1"


def test_unreachable_milvus_is_a_condition_not_a_crash(docs: Cluster) -> None:
    from tests.conftest import free_port

    uri = f"http://{GATEWAY}:{free_port()}"  # nothing listens there
    apply(
        docs,
        knowledge_base(
            "nowhere",
            [{"name": "h", "configMap": {"name": "docs"}}],
            vectorStore={"milvus": {"uri": uri}},
        ),
    )
    cond = eventually(
        lambda: (
            (c := ready(get(docs, "kb", "nowhere")))
            and c["reason"] == "VectorStoreUnavailable"
            and c
        ),
        timeout=60,
        what="VectorStoreUnavailable",
    )
    assert uri in cond["message"]
    jobs = docs.kubectl(
        "get", "jobs", "-n", NS, "-l", "app.kubernetes.io/instance=nowhere", "-o", "name"
    )
    assert jobs.strip() == ""  # no Job is spent on a store that cannot be reached
    docs.kubectl("delete", "kb", "-n", NS, "nowhere", "--wait=true", "--timeout=60s")


def condition(obj: dict[str, Any] | None, type_: str) -> dict[str, Any]:
    found = [c for c in (obj or {}).get("status", {}).get("conditions", []) if c["type"] == type_]
    assert found, f"no {type_} condition"
    return found[0]  # type: ignore[no-any-return]


def strong_count(client: Any, collection: str) -> int:
    """Rows as of now (Strong: Milvus's default, Bounded, may miss a write just made)."""
    (row,) = client.query(
        collection, filter="", output_fields=["count(*)"], consistency_level="Strong"
    )
    return int(row["count(*)"])


def test_external_milvus_sync_resync_switch_search_and_delete_drops_only_ours(
    docs: Cluster, external_milvus: str
) -> None:
    from phiops_embed.retrieval import Retriever
    from pymilvus import MilvusClient

    client = MilvusClient(uri=external_milvus)
    if "not_ours" not in client.list_collections():
        client.create_collection("not_ours", dimension=4)  # must survive the clean-up
    apply(
        docs,
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "ext-docs"}, "data": DOCS},
    )
    apply(
        docs,
        knowledge_base(
            "ext",
            [{"name": "h", "configMap": {"name": "ext-docs"}}],
            vectorStore={
                "milvus": {"uri": external_milvus, "collection": "ext_kb", "hybrid": True}
            },
            reclaimPolicy="Delete",
        ),
    )
    first = wait_synced(docs, "ext")
    assert first["status"]["storeUri"] == external_milvus
    assert get(docs, "deployment", "ext-store") is None  # no embedded store for an external one
    physical = first["status"]["physicalCollection"]
    assert client.describe_alias("ext_kb")["collection_name"] == physical
    assert strong_count(client, physical) == first["status"]["chunks"]
    # Hybrid asked for: a server without BM25 says so and serves dense search; no warning of
    # size for an external store.
    features = condition(first, "StoreFeaturesMissing")
    fields = [f["name"] for f in client.describe_collection(physical)["fields"]]
    if not client.get_server_version().startswith("milvus_lite"):
        assert (features["status"], features["reason"]) == ("True", "ServerLacksFeatures")
        assert "v2.3.5" in features["message"] and "BM25 full-text search" in features["message"]
        assert "sparse" not in fields
    else:
        assert features["status"] == "False" and "sparse" in fields
    assert condition(first, "StoreSizeWarning")["status"] == "False"
    assert ready(first)["status"] == "True"  # type: ignore[index]

    docs.kubectl("annotate", "kb", "-n", NS, "ext", "phiops.dev/sync-requested=1", "--overwrite")
    again = wait_synced(docs, "ext", after=first["status"]["syncId"])
    documents = again["status"]["documents"]
    assert documents["unchanged"] == documents["total"] == first["status"]["documents"]["total"]

    # Re-sync with a deletion: the document's rows leave the server's collection.
    fewer = {k: v for k, v in DOCS.items() if k != "shipping.html"}
    apply(
        docs,
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "ext-docs"}, "data": fewer},
    )
    pruned = wait_synced(docs, "ext", after=again["status"]["syncId"])
    assert pruned["status"]["documents"]["deleted"] == 1
    assert strong_count(client, physical) == pruned["status"]["chunks"]
    # The inference server's retriever (hybrid asked, as a PhiDeployment may) finds the rest.
    retriever = Retriever(external_milvus, "ext_kb")
    hits = retriever.search("Where do orders ship from? Rotterdam warehouse", top_k=10, hybrid=True)
    assert hits and all(h.doc_id != "h/shipping.html" for h in hits)
    refund = retriever.search("How many days do I have to return a product?", hybrid=True)
    assert refund[0].doc_id == "h/returns.md"

    # A settings change: a new collection, the alias switched, the old one dropped.
    docs.kubectl(
        "patch", "-n", NS, "kb", "ext", "--type=merge",
        "-p", '{"spec": {"chunking": {"size": 48, "overlap": 4}}}',
    )  # fmt: skip
    switched = wait_synced(docs, "ext", after=pruned["status"]["syncId"])
    assert switched["status"]["physicalCollection"] != physical
    assert (
        client.describe_alias("ext_kb")["collection_name"]
        == (switched["status"]["physicalCollection"])
    )
    assert physical not in client.list_collections()
    assert retriever.search("How long is the warranty?")[0].doc_id == "h/warranty.md"
    retriever.close()

    docs.kubectl("delete", "kb", "-n", NS, "ext", "--wait=true", "--timeout=120s")
    remaining = set(client.list_collections())
    assert "not_ours" in remaining
    assert not any(name.startswith("ext_kb") for name in remaining)
    # The drop Job (owned by nobody once its KnowledgeBase went) is not left behind.
    eventually(lambda: get(docs, "job", "ext-drop") is None, 30, "the drop Job deleted")
    client.drop_collection("not_ours")


def test_knowledge_base_metrics(docs: Cluster, operator: int) -> None:
    import urllib.request

    total = wait_synced(docs, "handbook")["status"]["documents"]["total"]
    with urllib.request.urlopen(f"http://127.0.0.1:{operator}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    ours = [line for line in text.splitlines() if line.startswith("phiops_knowledge_base")]
    assert f'phiops_knowledge_base_documents{{name="handbook",namespace="{NS}"}} {total}.0' in ours
    assert "phiops_knowledge_base_last_successful_sync_timestamp_seconds{" in text
