"""docs/operations: the values reference lists every value with its default, the GitOps page
carries the shipped Argo CD health checks verbatim, and relative links resolve."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

import pytest
import yaml

from tests.chart.tools import CHART, REPO

DOCS = REPO / "docs" / "operations"
PAGES = (
    "install.md",
    "upgrade-uninstall.md",
    "gitops.md",
    "alerts.md",
    "values.md",
    "security.md",
)


def value_paths() -> Iterator[tuple[str, Any]]:
    """(dotted path, default) of every value, descending into objects the schema defines."""
    schema = json.loads((CHART / "values.schema.json").read_text())
    values = yaml.safe_load((CHART / "values.yaml").read_text())

    def walk(value: Any, sub: dict[str, Any], path: str) -> Iterator[tuple[str, Any]]:
        if isinstance(value, dict) and value and "properties" in sub:
            for key, item in value.items():
                yield from walk(item, sub["properties"][key], f"{path}.{key}" if path else key)
        else:
            yield path, value

    yield from walk(values, schema, "")


def documented() -> dict[str, str]:
    rows = {}
    for line in (DOCS / "values.md").read_text().splitlines():
        match = re.match(r"\| `([^`]+)` \| `(.*?)` \|", line)
        if match:
            rows[match.group(1)] = match.group(2)
    return rows


def test_pages_exist() -> None:
    for page in PAGES:
        assert (DOCS / page).read_text().startswith("# ")


def test_values_reference_lists_every_value_with_its_default() -> None:
    rows = documented()
    paths = dict(value_paths())
    assert len(paths) > 50
    missing = sorted(set(paths) - set(rows))
    assert not missing, f"not in docs/operations/values.md: {missing}"
    unknown = sorted(set(rows) - set(paths))
    assert not unknown, f"documented but not in values.yaml: {unknown}"
    for path, default in paths.items():
        assert rows[path] == json.dumps(default), f"{path}: values.md says {rows[path]}"


def test_gitops_page_carries_the_shipped_health_checks() -> None:
    page = (DOCS / "gitops.md").read_text()
    for path in sorted((CHART / "files" / "argocd-health").glob("*.lua")):
        key = f"  resource.customizations.health.phiops.dev_{path.stem}: |\n"
        block = "".join(f"    {line}\n" if line else "\n" for line in path.read_text().splitlines())
        assert key + block in page, f"docs/operations/gitops.md has an old {path.name}"


@pytest.mark.parametrize("page", PAGES)
def test_relative_links_resolve(page: str) -> None:
    text = (DOCS / page).read_text()
    for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text):
        if "://" in target:
            continue
        assert (DOCS / target).resolve().exists(), f"{page}: broken link {target}"


def test_alert_anchor_links_resolve() -> None:
    from tests.chart.test_alerts import _doc_anchors

    anchors = _doc_anchors()
    for page in PAGES:
        text = (DOCS / page).read_text()
        for anchor in re.findall(r"\]\(alerts\.md#([^)]+)\)", text):
            assert anchor in anchors, f"{page}: no section #{anchor} in alerts.md"
        if page == "alerts.md":
            for anchor in re.findall(r"\]\(#([^)]+)\)", text):
                assert anchor in anchors, f"alerts.md: no section #{anchor}"
