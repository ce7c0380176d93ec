"""What an operator upgrade would change in running workloads, rendered from the samples.

For every phiops resource in `crds/samples/` and `examples/`, with the images pinned (so that
only the operator's rendering counts, not the release's image tags):
- the pod template of each Deployment (the KnowledgeBase's store, the PhiDeployment's server):
  any change rolls those pods once the new operator applies it;
- the PhiDeployment's config hash (in that template): the engine restarts when it changes;
- the KnowledgeBase's sync id for a fixed trigger and its collection name: a new id starts a
  sync at once, a new collection re-embeds everything (and rolls the servers that read it);
- the FineTuneJob's spec hash: a finished job whose hash changes reports SpecChangedAfterStart.

Recorded in `golden/pod_templates.json`; `tests/unit/test_golden_templates.py` compares.
Regenerate ONLY when the change is meant to restart workloads, and say so in the release notes
(docs/operations/upgrade-uninstall.md):

    python -m tests.unit.golden_templates --write
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import yaml
from phiops_operator.builders import fine_tune_job, knowledge_base, phi_deployment
from phiops_operator.config import Images, OperatorConfig
from phiops_operator.models.fine_tune_job import FineTuneJobSpec
from phiops_operator.models.knowledge_base import KnowledgeBaseSpec
from phiops_operator.models.phi_deployment import PhiDeploymentSpec

from tests.helpers import REPO

GOLDEN = Path(__file__).parent / "golden" / "pod_templates.json"
SAMPLE_GLOBS = ("crds/samples/*.yaml", "examples/**/*.yaml")
CONFIG = OperatorConfig(
    images=Images(
        embed="phiops-embed:pinned", finetune="phiops-finetune:pinned", serve="phiops-serve:pinned"
    )
)
# The KnowledgeBase handler's trigger of a first sync: generation 1, no request, first interval.
TRIGGER = {"generation": 1, "request": "", "sources": [], "tick": 0}

Resource = dict[str, Any]


def sample_resources() -> list[tuple[str, Resource]]:
    """(file relative to the repository, resource) for every phiops resource in the samples."""
    found = []
    for pattern in SAMPLE_GLOBS:
        for path in sorted(REPO.glob(pattern)):
            for doc in yaml.safe_load_all(path.read_text()):
                if doc and str(doc.get("apiVersion", "")).startswith("phiops.dev/"):
                    found.append((str(path.relative_to(REPO)), _as_applied(doc)))
    return found


def _as_applied(doc: Resource) -> Resource:
    """The resource as the API server hands it to the operator (fixed identity)."""
    meta = {"namespace": "default", "uid": "00000000-0000-4000-8000-000000000000"}
    return {**doc, "metadata": {**meta, "generation": 1, **doc["metadata"]}}


def _templates(children: list[Resource]) -> dict[str, Any]:
    return {
        f"Deployment/{c['metadata']['name']}": c["spec"]["template"]
        for c in children
        if c["kind"] == "Deployment"
    }


def _knowledge_base(parent: Resource) -> dict[str, Any]:
    spec = KnowledgeBaseSpec.model_validate(parent["spec"])
    plan = knowledge_base.plan_sync(parent, spec, TRIGGER)
    return {
        "syncId": plan.sync_id,
        "collection": plan.collection,
        **_templates(knowledge_base.store_children(parent, spec, CONFIG)),
    }


def _fine_tune_job(parent: Resource) -> dict[str, Any]:
    return {"specHash": fine_tune_job.spec_hash(FineTuneJobSpec.model_validate(parent["spec"]))}


def _phi_deployment(parent: Resource, samples: list[Resource]) -> dict[str, Any]:
    """Rendered as once its adapters' FineTuneJobs succeeded and its knowledge base synced."""
    spec = PhiDeploymentSpec.model_validate(parent["spec"])
    by_name = {(s["kind"], s["metadata"]["name"]): s for s in samples}
    adapters = []
    for adapter in spec.adapters:
        source = phi_deployment.adapter_source(adapter)
        if adapter.fine_tune_job_ref is not None:
            ref = adapter.fine_tune_job_ref.name
            ftj = by_name.get(("FineTuneJob", ref))
            claim, path = (
                fine_tune_job.output_location(ref, FineTuneJobSpec.model_validate(ftj["spec"]))
                if ftj
                else (f"{ref}-output", ".")
            )
            adapters.append(phi_deployment.ResolvedAdapter(adapter.name, claim, path, source))
        else:
            assert adapter.pvc is not None
            pvc = adapter.pvc
            adapters.append(
                phi_deployment.ResolvedAdapter(adapter.name, pvc.claim_name, pvc.path, source)
            )
    kb = None
    if spec.knowledge_base_ref is not None:
        kb = _resolved_knowledge_base(spec.knowledge_base_ref.name, by_name)
    inputs = phi_deployment.Inputs(adapters=tuple(adapters), knowledge_base=kb)
    return {
        "configHash": phi_deployment.config_hash(phi_deployment.serve_config(spec, inputs)),
        **_templates(phi_deployment.build(parent, spec, CONFIG, inputs)),
    }


def _resolved_knowledge_base(
    name: str, by_name: dict[tuple[str, str], Resource]
) -> phi_deployment.ResolvedKnowledgeBase:
    kb = by_name.get(("KnowledgeBase", name))
    if kb is None:  # another file's: a stand-in with the same shape
        return phi_deployment.ResolvedKnowledgeBase(
            name, f"http://{name}-store.default.svc:19530", f"kb_{name}", "default", "m", "cpu"
        )
    spec = KnowledgeBaseSpec.model_validate(kb["spec"])
    milvus = spec.vector_store.milvus
    return phi_deployment.ResolvedKnowledgeBase(
        name=name,
        uri=knowledge_base.store_uri(kb, spec),
        collection=knowledge_base.plan_sync(kb, spec, TRIGGER).collection,
        database=milvus.database,
        model=spec.embedding.sentence_transformers.model,
        device="cpu",
        token=milvus.token_secret_ref,
    )


def render() -> dict[str, dict[str, Any]]:
    """`{"<Kind>/<name> (<file>)": {what restarts workloads when it changes}}`."""
    found = sample_resources()
    samples = [resource for _, resource in found]
    rendered: dict[str, dict[str, Any]] = {}
    for path, resource in found:
        kind = resource["kind"]
        if kind == "KnowledgeBase":
            entry = _knowledge_base(resource)
        elif kind == "FineTuneJob":
            entry = _fine_tune_job(resource)
        elif kind == "PhiDeployment":
            entry = _phi_deployment(resource, samples)
        else:
            raise ValueError(f"{path}: no golden rendering for kind {kind}")
        rendered[f"{kind}/{resource['metadata']['name']} ({path})"] = entry
    return rendered


def dump(rendered: dict[str, Any]) -> str:
    return json.dumps(rendered, indent=2, sort_keys=True) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.unit.golden_templates")
    parser.add_argument("--write", action="store_true", help=f"rewrite {GOLDEN.name}")
    args = parser.parse_args(argv)
    text = dump(render())
    if args.write:
        GOLDEN.parent.mkdir(exist_ok=True)
        GOLDEN.write_text(text)
        print(f"wrote {GOLDEN.relative_to(REPO)}")
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
