"""GitOps readiness: the Argo CD health checks (Lua, run by a real Lua interpreter) and
kstatus' rules (as Flux applies them) read phiops's status the same way, on fixture objects
whose conditions the operator's own helpers made (tests/chart/fixtures, from
`python -m tests.chart.sync`)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest

from tests.chart import kstatus, sync
from tests.chart.tools import CHART, INSTALL_HINT, lua_path, run

HEALTH_DIR = CHART / "files" / "argocd-health"

# fixture -> (Argo CD health, kstatus status); None: not judged (see the comment)
EXPECTED: dict[str, tuple[str, str | None]] = {
    "knowledgebase-ready": ("Healthy", "Current"),
    "knowledgebase-syncing": ("Progressing", "InProgress"),
    "knowledgebase-sync-failed": ("Degraded", "Failed"),
    "knowledgebase-store-down": ("Degraded", "Failed"),
    "knowledgebase-invalid": ("Degraded", "Failed"),
    "knowledgebase-generation-unobserved": ("Progressing", "InProgress"),
    # No status yet: kstatus' fallback says Current (its rule 6); Argo CD waits.
    "knowledgebase-new": ("Progressing", "Current"),
    "finetunejob-validating": ("Progressing", "InProgress"),
    "finetunejob-running": ("Progressing", "InProgress"),
    "finetunejob-succeeded": ("Healthy", "Current"),
    "finetunejob-invalid-dataset": ("Degraded", "Failed"),
    # Waiting for an input that may be applied a moment later: in progress, not failed.
    "finetunejob-input-missing": ("Progressing", "InProgress"),
    # Not a shape this operator writes (it always writes conditions): for Argo CD the phase
    # alone decides; kstatus has nothing to go by.
    "finetunejob-failed-phase-only": ("Degraded", None),
    "finetunejob-new": ("Progressing", "Current"),
    "phideployment-serving": ("Healthy", "Current"),
    "phideployment-rolling-out": ("Progressing", "InProgress"),
    # Ready (the previous configuration serves) but Reconciling (new inputs pending).
    "phideployment-serving-previous": ("Progressing", "InProgress"),
    "phideployment-adapter-failed": ("Degraded", "Failed"),
    # The base serves; a declared adapter's job still trains: not Ready, Reconciling.
    "phideployment-adapter-training": ("Progressing", "InProgress"),
    # The base serves; no pod can load a declared adapter: Stalled.
    "phideployment-adapter-load-failed": ("Degraded", "Failed"),
    # Serving, but the rollout of new pods is stuck (Degraded=True): Argo CD shows it, as it
    # does for a Deployment past its progress deadline; kstatus reads only Ready here.
    "phideployment-rollout-stuck": ("Degraded", "Current"),
    "phideployment-invalid": ("Degraded", "Failed"),
    "phideployment-generation-unobserved": ("Progressing", "InProgress"),
}
# Where Argo CD and kstatus read the same object differently, on purpose (see above).
DIFFER = {"knowledgebase-new", "finetunejob-new", "phideployment-rollout-stuck"}


def _fixture(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((sync.FIXTURES / f"{name}.json").read_text())
    return data


def to_lua(value: Any) -> str:
    """A Python value (from JSON) as a Lua expression."""
    if value is None:
        return "nil"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        assert math.isfinite(value)
        return repr(value)
    if isinstance(value, str):
        escaped = value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
        return f'"{escaped}"'
    if isinstance(value, list):
        return "{" + ", ".join(to_lua(v) for v in value) + "}"
    if isinstance(value, dict):
        items = (f"[{to_lua(str(k))}] = {to_lua(v)}" for k, v in value.items() if v is not None)
        return "{" + ", ".join(items) + "}"
    raise TypeError(f"cannot express {type(value).__name__} in Lua")


def argocd_health(obj: dict[str, Any], tmp_path: Path) -> tuple[str, str]:
    """Run the kind's health script as Argo CD does: `obj` global, the script returns hs."""
    lua = lua_path()
    if lua is None:
        pytest.skip(f"no Lua interpreter: {INSTALL_HINT}")
    script = HEALTH_DIR / f"{obj['kind']}.lua"
    runner = tmp_path / "run.lua"
    runner.write_text(
        f"obj = {to_lua(obj)}\n"
        f"local hs = dofile({to_lua(str(script))})\n"
        'io.write(hs.status, "\\n", hs.message or "", "\\n")\n'
    )
    out = run([lua, str(runner)]).stdout.split("\n")
    return out[0], out[1]


def test_there_is_a_health_check_for_each_kind() -> None:
    assert sorted(p.stem for p in HEALTH_DIR.glob("*.lua")) == sorted(sync.KIND_PLURALS)


def test_fixtures_cover_healthy_progressing_and_degraded_for_each_kind() -> None:
    assert set(EXPECTED) == {p.stem for p in sync.FIXTURES.glob("*.json")}
    for kind in sync.KIND_PLURALS:
        seen = {health for name, (health, _) in EXPECTED.items() if _fixture(name)["kind"] == kind}
        assert seen == {"Healthy", "Progressing", "Degraded"}, kind


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_argocd_health(name: str, tmp_path: Path) -> None:
    obj = _fixture(name)
    health, message = argocd_health(obj, tmp_path)
    assert health == EXPECTED[name][0], message
    assert message, "a health message for the Argo CD UI"
    if health == "Degraded" and (obj.get("status") or {}).get("conditions"):
        why = [
            c["reason"]
            for c in obj["status"]["conditions"]
            if c["type"] in ("Stalled", "Degraded") and c["status"] == "True"
        ]
        assert any(message.startswith(r) for r in why), "the reason leads the message"


@pytest.mark.parametrize("name", sorted(n for n, (_, k) in EXPECTED.items() if k is not None))
def test_kstatus_reads_the_operator_conditions(name: str) -> None:
    status, _ = kstatus.compute(_fixture(name))
    assert status == EXPECTED[name][1]


def test_argocd_and_kstatus_agree_except_where_documented() -> None:
    mapping = {"Healthy": "Current", "Progressing": "InProgress", "Degraded": "Failed"}
    for name, (health, expected_kstatus) in EXPECTED.items():
        if expected_kstatus is not None and name not in DIFFER:
            assert mapping[health] == expected_kstatus, name
    assert all(mapping[EXPECTED[n][0]] != EXPECTED[n][1] for n in DIFFER)


def test_the_three_health_checks_share_one_body() -> None:
    """Only the kind's name (in comments) and the FineTuneJob's phase rule differ."""
    bodies = {
        p.stem: "\n".join(line for line in p.read_text().splitlines() if not line.startswith("--"))
        for p in HEALTH_DIR.glob("*.lua")
    }
    assert bodies["KnowledgeBase"] == bodies["PhiDeployment"]
    phase_rule = (
        'if status.phase == "Failed" then\n'
        '  hs.status = "Degraded"\n'
        '  hs.message = describe(ready, "Fine-tune job failed")\n'
        "  return hs\n"
        "end\n"
        'if status.phase == "Succeeded" then\n'
        '  hs.status = "Healthy"\n'
        '  hs.message = describe(ready, "Fine-tune job succeeded")\n'
        "  return hs\n"
        "end\n"
    )
    assert phase_rule in bodies["FineTuneJob"]
    assert bodies["FineTuneJob"].replace(phase_rule, "") == bodies["KnowledgeBase"]


def test_ready_condition_is_what_kubectl_wait_reads() -> None:
    """`kubectl wait --for=condition=Ready` waits for a condition of type Ready, status True."""
    for name, (health, _) in EXPECTED.items():
        conditions = (_fixture(name).get("status") or {}).get("conditions") or []
        ready = [c for c in conditions if c["type"] == "Ready"]
        if health == "Healthy" and conditions:
            assert ready and ready[0]["status"] == "True", name
        if health == "Degraded" and conditions and name != "phideployment-rollout-stuck":
            assert ready and ready[0]["status"] == "False", name


def test_kstatus_rules_order() -> None:
    base = _fixture("knowledgebase-ready")
    deleting = json.loads(json.dumps(base))
    deleting["metadata"]["deletionTimestamp"] = sync.NOW
    assert kstatus.compute(deleting)[0] == "Terminating"
    both = json.loads(json.dumps(_fixture("knowledgebase-invalid")))
    for condition in both["status"]["conditions"]:
        if condition["type"] == "Reconciling":
            condition["status"] = "True"
    assert kstatus.compute(both)[0] == "InProgress", "Reconciling is read before Stalled"
    no_conditions = {"kind": "KnowledgeBase", "metadata": {"generation": 1}, "status": {}}
    assert kstatus.compute(no_conditions)[0] == "Current"


def test_lua_is_argo_cd_compatible() -> None:
    """Argo CD runs Lua 5.1 (gopher-lua): nothing newer, no os/io access."""
    for path in HEALTH_DIR.glob("*.lua"):
        text = path.read_text()
        for forbidden in ("goto ", "//", "os.", "io.", "require", "<const>", "<close>"):
            code = "\n".join(line.split("--")[0] for line in text.splitlines())
            assert forbidden not in code, f"{path.name} uses {forbidden!r}"
        assert text.rstrip().endswith("return hs")


def _floats(value: Any) -> Any:
    if isinstance(value, bool):
        return value
    if isinstance(value, int):
        return float(value)
    if isinstance(value, list):
        return [_floats(v) for v in value]
    if isinstance(value, dict):
        return {k: _floats(v) for k, v in value.items()}
    return value


@pytest.mark.parametrize(
    "name",
    ["knowledgebase-generation-unobserved", "phideployment-serving", "finetunejob-invalid-dataset"],
)
def test_argocd_health_with_numbers_as_floats(name: str, tmp_path: Path) -> None:
    """Argo CD's Lua (gopher-lua) has only float numbers: generations arrive as 2.0."""
    health, message = argocd_health(_floats(_fixture(name)), tmp_path)
    assert health == EXPECTED[name][0], message
    assert ".0" not in message
