"""An operator upgrade restarts nothing whose spec did not change.

The new operator re-applies every child; a Deployment whose pod template differs by a byte
rolls its pods. So the templates (and the hashes that decide engine restarts, re-syncs and
re-training) rendered from the samples are pinned in a golden file, and must not depend on the
operator's version. See `tests/unit/golden_templates.py`.
"""

from __future__ import annotations

import difflib
import json
from typing import Any

import pytest
from phiops_operator.builders import common

from tests.unit import golden_templates

REGENERATE = (
    "After an operator upgrade this restarts the workloads of every resource like it (pods "
    "roll, a sync or the engine restarts). If that is intended, regenerate with "
    "`python -m tests.unit.golden_templates --write` and say what rolls in the release notes "
    "(docs/operations/upgrade-uninstall.md); otherwise keep the rendering as it was."
)


def _diff(want: Any, got: Any) -> str:
    lines = difflib.unified_diff(
        golden_templates.dump(want).splitlines(),
        golden_templates.dump(got).splitlines(),
        "golden",
        "rendered",
        lineterm="",
    )
    return "\n".join(list(lines)[:60])


def test_the_samples_render_the_golden_pod_templates_and_hashes() -> None:
    golden = json.loads(golden_templates.GOLDEN.read_text())
    rendered = golden_templates.render()
    assert rendered.keys() == golden.keys(), (
        f"the samples changed: {sorted(rendered.keys() ^ golden.keys())}; regenerate with "
        "`python -m tests.unit.golden_templates --write`"
    )
    changed = [key for key in golden if rendered[key] != golden[key]]
    assert not changed, "\n\n".join(
        [
            f"Rendered differently from {golden_templates.GOLDEN.name}: {', '.join(changed)}.",
            REGENERATE,
            *(_diff(golden[key], rendered[key]) for key in changed),
        ]
    )


def test_the_operator_version_changes_no_pod_template(monkeypatch: pytest.MonkeyPatch) -> None:
    # Only what runs may change the pods: with the images pinned, a new release of the
    # operator renders the same templates (its version stays on the children's metadata).
    before = golden_templates.render()
    monkeypatch.setattr(common, "__version__", "99.0.0-next")
    after = golden_templates.render()
    assert after == before, _diff(before, after)


def test_every_kind_and_both_sample_folders_are_covered() -> None:
    keys = list(golden_templates.render())
    for kind in ("KnowledgeBase", "FineTuneJob", "PhiDeployment"):
        assert any(key.startswith(f"{kind}/") for key in keys), kind
    assert any("(crds/samples/" in key for key in keys)
    assert any("(examples/" in key for key in keys)
