"""The YAML in the user docs (docs/*.md) is what the API server and the operator accept: every
phiops object against its CRD in crds/ and the operator's model (as the samples are), every
Kubernetes object against the Kubernetes schemas; the decision guide's resources refer only
to each other, so each case can be applied as written."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml
from phiops_operator.crdgen import crd_path
from phiops_operator.models.kinds import ALL_KINDS

from tests.helpers import CRD_DIR, REPO, load_all

DOCS = REPO / "docs"
GUIDE = DOCS / "choosing.md"
KINDS = {kind.kind: kind for kind in ALL_KINDS}
KUBERNETES_VERSION = "1.28.0"  # the oldest the chart supports (as test_children_schemas)
BLOCK = re.compile(r"^```ya?ml\n(.*?)^```", re.MULTILINE | re.DOTALL)
FENCED = re.compile(r"^```.*?^```", re.MULTILINE | re.DOTALL)


def yaml_blocks(page: Path) -> list[tuple[int, str]]:
    """(line number, text) of every fenced YAML block of a page."""
    text = page.read_text()
    return [(text.count("\n", 0, m.start()) + 2, m.group(1)) for m in BLOCK.finditer(text)]


def objects(page: Path) -> list[tuple[str, dict[str, Any]]]:
    """(where, object) of every Kubernetes object in the page's YAML blocks."""
    found = []
    for line, block in yaml_blocks(page):
        for doc in yaml.safe_load_all(block):
            if isinstance(doc, dict) and "apiVersion" in doc and "kind" in doc:
                found.append((f"{page.name}:{line} {doc['kind']}/{doc['metadata']['name']}", doc))
    return found


DOC_OBJECTS = [found for page in sorted(DOCS.glob("*.md")) for found in objects(page)]


def crd_schema(kind: str) -> dict[str, Any]:
    (crd,) = load_all(crd_path(CRD_DIR, KINDS[kind]))
    schema: dict[str, Any] = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    return schema


def test_the_guide_declares_every_kind_in_each_case() -> None:
    blocks = yaml_blocks(GUIDE)
    assert len(blocks) == 3, "one block per case: retrieval, fine-tuning, both"
    kinds = [sorted(doc["kind"] for doc in yaml.safe_load_all(block) if doc) for _, block in blocks]
    assert kinds == [
        ["KnowledgeBase", "PhiDeployment"],
        ["FineTuneJob", "PhiDeployment"],
        ["FineTuneJob", "PhiDeployment"],
    ]


@pytest.mark.parametrize(("where", "doc"), DOC_OBJECTS, ids=[w for w, _ in DOC_OBJECTS])
def test_docs_yaml_is_accepted(where: str, doc: dict[str, Any]) -> None:
    if doc["apiVersion"].startswith("phiops.dev/"):
        assert doc["apiVersion"] == "phiops.dev/v1alpha1", where
        jsonschema.Draft4Validator(crd_schema(doc["kind"])).validate(doc)
        KINDS[doc["kind"]].spec.model_validate(doc["spec"])  # extra fields are errors here
        return
    try:
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
    except kubernetes_validate.ValidationError as err:
        pytest.fail(f"{where} at {'.'.join(map(str, err.path))}: {err.message}")


def test_the_guide_refers_only_to_what_it_declares() -> None:
    declared = {(doc["kind"], doc["metadata"]["name"]) for _, doc in objects(GUIDE)}
    for where, doc in objects(GUIDE):
        spec = doc["spec"]
        wanted = [("FineTuneJob", a["fineTuneJobRef"]["name"]) for a in spec.get("adapters", [])]
        if "knowledgeBaseRef" in spec:
            wanted.append(("KnowledgeBase", spec["knowledgeBaseRef"]["name"]))
        for ref in wanted:
            assert ref in declared, f"{where} refers to {ref}, which the page does not declare"


def test_the_guide_and_its_links() -> None:
    """Linked from the README and both resource pages; its own relative links resolve."""
    for page, link in (
        (REPO / "README.md", "](docs/choosing.md)"),
        (DOCS / "knowledge-bases.md", "](choosing.md)"),
        (DOCS / "fine-tuning.md", "](choosing.md)"),
    ):
        assert link in page.read_text(), f"{page.name} does not link the guide"
    for target, anchor in re.findall(r"\]\(([^)#\s]+)(?:#([^)]*))?\)", GUIDE.read_text()):
        if "://" in target:
            continue
        path = (DOCS / target).resolve()
        assert path.exists(), f"choosing.md: broken link {target}"
        if anchor:
            assert anchor in anchors(path), f"choosing.md: no section #{anchor} in {target}"


def anchors(page: Path) -> set[str]:
    """GitHub's anchors of a page's headings: lower case, punctuation dropped, spaces to -."""
    headings = re.findall(r"^#+ (.+)$", FENCED.sub("", page.read_text()), re.MULTILINE)
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in headings}
