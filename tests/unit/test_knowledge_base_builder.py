"""The KnowledgeBase's children, rendered purely from the spec."""

from typing import Any

from phiops_operator.builders import knowledge_base as kb
from phiops_operator.config import OperatorConfig
from phiops_operator.models.knowledge_base import KnowledgeBaseSpec
from phiops_workload.knowledge import EmbedJobConfig

PARENT: dict[str, Any] = {
    "apiVersion": "phiops.dev/v1alpha1",
    "kind": "KnowledgeBase",
    "metadata": {
        "name": "handbook",
        "namespace": "team-a",
        "uid": "u-1",
        "generation": 3,
        "labels": {"argocd.argoproj.io/instance": "kb-app"},
    },
}
SOURCES = [
    {"name": "policies", "configMap": {"name": "policy-docs", "keys": ["returns.md"]}},
    {"name": "manuals", "persistentVolumeClaim": {"claimName": "manuals", "path": "pdf"}},
    {"name": "site", "http": {"urls": ["https://example.com/faq.html"]}},
]


def spec(**extra: Any) -> KnowledgeBaseSpec:
    return KnowledgeBaseSpec.model_validate({"sources": SOURCES, **extra})


def by_kind(children: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {c["kind"]: c for c in children}


def test_embedded_store_is_one_recreated_pod_with_its_claim_and_service() -> None:
    children = by_kind(kb.store_children(PARENT, spec(), OperatorConfig()))
    assert set(children) == {"PersistentVolumeClaim", "Deployment", "Service"}
    deployment = children["Deployment"]
    assert deployment["metadata"]["name"] == "handbook-store"
    assert deployment["spec"]["replicas"] == 1
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert container["args"][0] == "serve-store"
    assert container["image"] == OperatorConfig().images.embed
    # The operator's version labels the Deployment, never its pods: an upgrade would roll them.
    assert "app.kubernetes.io/version" in deployment["metadata"]["labels"]
    assert "app.kubernetes.io/version" not in deployment["spec"]["template"]["metadata"]["labels"]
    assert children["Service"]["spec"]["ports"][0]["port"] == kb.STORE_PORT
    assert kb.store_uri(PARENT, spec()) == "http://handbook-store.team-a.svc:19530"


def test_store_claim_is_owned_only_when_it_should_be_deleted() -> None:
    retained = by_kind(kb.store_children(PARENT, spec(), OperatorConfig()))
    assert "ownerReferences" not in retained["PersistentVolumeClaim"]["metadata"]
    deleted = by_kind(kb.store_children(PARENT, spec(reclaimPolicy="Delete"), OperatorConfig()))
    owners = deleted["PersistentVolumeClaim"]["metadata"]["ownerReferences"]
    assert owners[0]["uid"] == "u-1"


def test_external_milvus_needs_no_store() -> None:
    external = spec(vectorStore={"milvus": {"uri": "http://milvus.db:19530"}})
    assert kb.store_children(PARENT, external, OperatorConfig()) == []
    assert kb.store_uri(PARENT, external) == "http://milvus.db:19530"


def test_autoindex_is_an_exact_scan_on_the_embedded_store_only() -> None:
    def index_of(the_spec: KnowledgeBaseSpec) -> str:
        plan = kb.plan_sync(PARENT, the_spec, {"generation": 3})
        config_map, _ = kb.sync_children(PARENT, the_spec, plan, OperatorConfig())
        config = EmbedJobConfig.model_validate_json(config_map["data"]["shard-0.json"])
        return config.store.index_type

    server = {"uri": "http://milvus.db:19530"}
    assert index_of(spec()) == "FLAT"
    assert index_of(spec(vectorStore={"milvus": {"index": {"type": "HNSW"}}})) == "HNSW"
    assert index_of(spec(vectorStore={"milvus": server})) == "AUTOINDEX"
    chosen = {**server, "index": {"type": "IVF_FLAT"}}
    assert index_of(spec(vectorStore={"milvus": chosen})) == "IVF_FLAT"


def test_sync_jobs_mount_sources_and_parse_as_the_embed_contract() -> None:
    the_spec = spec()
    plan = kb.plan_sync(PARENT, the_spec, {"generation": 3})
    config_map, job = kb.sync_children(PARENT, the_spec, plan, OperatorConfig())
    assert job["metadata"]["name"] == f"handbook-sync-{plan.sync_id}-0"
    pod = job["spec"]["template"]["spec"]
    assert pod["restartPolicy"] == "Never"
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["src-policies"]["configMap"] == {
        "name": "policy-docs",
        "items": [{"key": "returns.md", "path": "returns.md"}],
    }
    assert volumes["src-manuals"]["persistentVolumeClaim"] == {
        "claimName": "manuals",
        "readOnly": True,
    }
    assert "src-site" not in volumes  # http sources are fetched by the embedder
    config = EmbedJobConfig.model_validate_json(config_map["data"]["shard-0.json"])
    paths = {s.name: s.local_path for s in config.sources}
    assert paths == {
        "policies": "/phiops/sources/policies",
        "manuals": "/phiops/sources/manuals/pdf",
        "site": None,
    }
    assert config.store.alias == "kb_team_a_handbook"
    assert config.store.collection.startswith("kb_team_a_handbook__")
    assert config.resource.uid == "u-1"
    for child in (config_map, job):
        assert "argocd.argoproj.io/instance" not in child["metadata"]["labels"]


def test_same_trigger_same_sync_and_model_change_means_new_collection() -> None:
    first = kb.plan_sync(PARENT, spec(), {"generation": 3, "request": ""})
    again = kb.plan_sync(PARENT, spec(), {"generation": 3, "request": ""})
    assert first == again
    requested = kb.plan_sync(PARENT, spec(), {"generation": 3, "request": "now"})
    assert requested.sync_id != first.sync_id
    assert requested.collection == first.collection  # same settings: same collection
    rechunked = kb.plan_sync(PARENT, spec(chunking={"size": 128, "overlap": 16}), {"generation": 4})
    assert rechunked.alias == first.alias
    assert rechunked.collection != first.collection


def test_secrets_reach_the_embedder_as_files() -> None:
    the_spec = spec(
        embedding={
            "provider": "openai",
            "openai": {
                "baseURL": "https://api.example.com/v1",
                "apiKeySecretRef": {"name": "openai", "key": "token"},
            },
        },
        vectorStore={
            "milvus": {"uri": "http://m:19530", "tokenSecretRef": {"name": "milvus", "key": "t"}}
        },
    )
    plan = kb.plan_sync(PARENT, the_spec, {})
    config_map, job = kb.sync_children(PARENT, the_spec, plan, OperatorConfig())
    container = job["spec"]["template"]["spec"]["containers"][0]
    assert all("secret" not in str(e).lower() for e in container.get("env", []))
    config = EmbedJobConfig.model_validate_json(config_map["data"]["shard-0.json"])
    assert config.embedding.api_key_file == "/phiops/secrets/openai/api-key"
    assert config.store.token_file == "/phiops/secrets/milvus/token"
    mounts = {m["mountPath"] for m in container["volumeMounts"]}
    assert {"/phiops/secrets/openai", "/phiops/secrets/milvus"} <= mounts


def test_parallel_syncs_shard_the_corpus() -> None:
    the_spec = spec(vectorStore={"milvus": {"uri": "http://m:19530"}}, sync={"parallelism": 3})
    plan = kb.plan_sync(PARENT, the_spec, {})
    children = kb.sync_children(PARENT, the_spec, plan, OperatorConfig())
    jobs = [c for c in children if c["kind"] == "Job"]
    assert [j["metadata"]["name"][-2:] for j in jobs] == ["-0", "-1", "-2"]
    assert [c.shard.index for c in plan.configs] == [0, 1, 2]
    assert {c.shard.count for c in plan.configs} == {3}


def test_promote_job_runs_after_the_shards_with_the_same_config() -> None:
    the_spec = spec(vectorStore={"milvus": {"uri": "http://m:19530"}}, sync={"parallelism": 2})
    plan = kb.plan_sync(PARENT, the_spec, {})
    job = kb.promote_job(PARENT, the_spec, plan, OperatorConfig())
    assert job["metadata"]["name"] == f"handbook-sync-{plan.sync_id}-promote"
    container = job["spec"]["template"]["spec"]["containers"][0]
    assert container["args"] == ["promote", "--config", "/etc/phiops/shard-0.json"]
    assert job["metadata"]["labels"][kb.SHARD_LABEL] == kb.PROMOTE_STEP
