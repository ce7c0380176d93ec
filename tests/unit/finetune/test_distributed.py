"""Two training processes under real torchrun on CPU (gloo), as `processes: 2` runs them.

- 2 ranks x batch 2 follow the loss curve of 1 rank x batch 4 (the same examples per step);
- rank 0 alone writes the adapter and provenance and logs progress;
- SIGTERM stops both ranks after the same step with one checkpoint (exit 143, Interrupted),
  a killed run (SIGKILL of the whole pod's processes) resumes on both ranks at the last
  complete checkpoint and finishes;
- which rank's result the pod reports (pure logic).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from phiops_finetune import batching, distributed, training
from phiops_workload.contracts import WorkloadResult
from phiops_workload.finetune import TrainingSpec

from tests.unit.finetune.conftest import chat_records, make_config, write_config, write_jsonl

RECORDS = 24  # divisible by 4: every step sees the same 4 examples in both layouts


def launch(config_path: str, log: Path, termination: Path) -> subprocess.Popen[bytes]:
    """`python -m phiops_finetune train` as the pod runs it."""
    env = {**os.environ, "PHIOPS_TERMINATION_LOG": str(termination), "HF_HUB_OFFLINE": "1"}
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "phiops_finetune", "train", "--config", config_path],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
        )


def finish(proc: subprocess.Popen[bytes], log: Path, timeout: float = 240) -> int:
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        kill_pod(proc)
        pytest.fail(f"training did not finish in {timeout} s:\n{log.read_text()[-3000:]}")


def descendants(pid: int) -> list[int]:
    """Every process below `pid` (torchrun starts its workers in sessions of their own, so a
    process group does not reach them; in a pod, the container's end does)."""
    parents: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents[int(stat.parent.name)] = int(fields[1])
    found, frontier = [], [pid]
    while frontier:
        children = [c for c, p in parents.items() if p in frontier]
        found += children
        frontier = children
    return found


def kill_pod(proc: subprocess.Popen[bytes]) -> None:
    """SIGKILL the launcher, torchrun and the workers at once, as a lost node does."""
    for pid in [proc.pid, *descendants(proc.pid)]:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    proc.wait()


def history(output: Path) -> list[dict[str, Any]]:
    found = training.latest_checkpoint(output / "checkpoints")
    assert found is not None
    state = json.loads((found[0] / training.TRAINER_STATE).read_text())
    entries: list[dict[str, Any]] = state["log_history"]
    return entries


def losses(output: Path) -> dict[int, float]:
    return {e["step"]: e["loss"] for e in history(output) if "loss" in e}


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_jsonl(tmp_path_factory.mktemp("data") / "data.jsonl", chat_records(RECORDS))


def run_to_end(tmp: Path, config: Any, name: str) -> tuple[int, dict[str, Any], str]:
    log, termination = tmp / f"{name}.log", tmp / f"{name}.termination"
    code = finish(launch(write_config(tmp, config, f"{name}.json"), log, termination), log)
    return code, json.loads(termination.read_text()), log.read_text()


def test_two_ranks_follow_the_loss_curve_of_one_with_the_whole_batch(
    tiny_model: Path, data: Path, tmp_path: Path
) -> None:
    common = {"epochs": 2, "max_steps": None, "save_steps": 6, "logging_steps": 1}
    one = make_config(tiny_model, data, tmp_path / "one", training={**common, "batch_size": 4})
    two = make_config(
        tiny_model, data, tmp_path / "two", training={**common, "batch_size": 2}, processes=2
    )
    planned = batching.total_steps(RECORDS, two.training, processes=2)
    assert planned == batching.total_steps(RECORDS, one.training) == 12

    started = time.monotonic()
    code, result, log = run_to_end(tmp_path, two, "two")
    seconds = time.monotonic() - started
    assert code == 0, log[-3000:]
    assert (result["outcome"], result["reason"]) == ("Succeeded", "Trained"), result
    assert result["figures"]["steps"] == planned  # the pre-flight's count holds for 2 ranks
    assert "rank 0" in log and "rank 1" in log
    progress_lines = [line for line in log.splitlines() if "progress: step" in line]
    assert progress_lines and all(" rank 0 " in line for line in progress_lines)
    prov = json.loads((tmp_path / "two" / "provenance.json").read_text())
    assert prov["metrics"]["processes"] == 2 and prov["device"] == "cpu x 2"
    assert (tmp_path / "two" / "adapter_model.safetensors").is_file()

    code, result, log = run_to_end(tmp_path, one, "one")
    assert code == 0, log[-3000:]
    curve_one, curve_two = losses(tmp_path / "one"), losses(tmp_path / "two")
    assert sorted(curve_one) == sorted(curve_two) == list(range(1, 13))
    for step, loss in curve_one.items():
        assert curve_two[step] == pytest.approx(loss, rel=2e-3, abs=2e-3), (
            step,
            curve_one,
            curve_two,
        )
    worst = max(abs(curve_two[s] - curve_one[s]) / curve_one[s] for s in curve_one)
    print(f"2 ranks: {seconds:.1f} s for 12 steps (start-up included); curves within {worst:.1e}")


def wait_for_checkpoint(output: Path, proc: subprocess.Popen[bytes], log: Path) -> int:
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        found = training.latest_checkpoint(output / "checkpoints")
        if found is not None:
            return found[1]
        if proc.poll() is not None:
            pytest.fail(f"training ended before a checkpoint:\n{log.read_text()[-3000:]}")
        time.sleep(0.05)
    pytest.fail("no checkpoint within 180 s")


def test_sigterm_stops_both_ranks_together_and_a_killed_run_resumes_on_both(
    tiny_model: Path, data: Path, tmp_path: Path
) -> None:
    output = tmp_path / "out"
    config = make_config(
        tiny_model,
        data,
        output,
        training={"max_steps": 80, "save_steps": 4, "batch_size": 2, "logging_steps": 1},
        processes=2,
    )
    path = write_config(tmp_path, config)

    # 1. Eviction: SIGTERM to the pod's main process; both ranks stop after one step.
    log, termination = tmp_path / "attempt-1.log", tmp_path / "attempt-1.termination"
    proc = launch(path, log, termination)
    wait_for_checkpoint(output, proc, log)
    proc.send_signal(signal.SIGTERM)
    assert finish(proc, log) == training.EXIT_INTERRUPTED, log.read_text()[-3000:]
    result = WorkloadResult.model_validate_json(termination.read_text())
    assert result.reason == training.REASON_INTERRUPTED, result
    stopped = training.latest_checkpoint(output / "checkpoints")
    assert stopped is not None and stopped[1] < 80
    checkpoint = stopped[0]
    # Both ranks' RNG states are in the one checkpoint they wrote together.
    assert {p.name for p in checkpoint.glob("rng_state_*.pth")} == {
        "rng_state_0.pth",
        "rng_state_1.pth",
    }

    # 2. Node loss: SIGKILL of every process of the pod after a later checkpoint.
    log2 = tmp_path / "attempt-2.log"
    proc = launch(path, log2, tmp_path / "attempt-2.termination")
    deadline = time.monotonic() + 180
    while (found := training.latest_checkpoint(output / "checkpoints")) and found[1] <= stopped[1]:
        assert proc.poll() is None and time.monotonic() < deadline, log2.read_text()[-3000:]
        time.sleep(0.05)
    workers = descendants(proc.pid)
    kill_pod(proc)
    assert len(workers) >= 3  # torchrun and its two workers were there, and are gone
    time.sleep(1)
    assert not [
        p
        for p in workers
        if Path(f"/proc/{p}/cmdline").exists() and Path(f"/proc/{p}/cmdline").read_bytes()
    ], "a worker survived the kill"
    text = log2.read_text()
    for rank in (0, 1):
        assert f"rank {rank} INFO resuming from step {stopped[1]} " in text, text[-3000:]
    killed_at = training.latest_checkpoint(output / "checkpoints")
    assert killed_at is not None and stopped[1] < killed_at[1] < 80

    # 3. The next attempt resumes on both ranks at the last complete checkpoint and finishes.
    code, result_3, text = run_to_end(tmp_path, config, "attempt-3")
    assert code == 0, text[-3000:]
    for rank in (0, 1):
        assert f"rank {rank} INFO resuming from step {killed_at[1]} " in text, text[-3000:]
    assert result_3["figures"]["steps"] == 80
    assert result_3["figures"]["resumed_from_step"] == killed_at[1]
    steps = [e["step"] for e in history(output) if "loss" in e]
    assert steps == list(range(1, 81))  # each step logged once across the three attempts


def outcome(rank: int, reason: str | None, code: int = 0) -> distributed.RankOutcome:
    if reason is None:
        return distributed.RankOutcome(rank, None, None)
    ok = reason == "Trained"
    result = WorkloadResult(outcome="Succeeded" if ok else "Failed", reason=reason)
    return distributed.RankOutcome(rank, result, code)


@pytest.mark.parametrize(
    ("outcomes", "launcher", "reason", "code"),
    [
        ([outcome(0, "Trained"), outcome(1, "Trained")], 0, "Trained", 0),
        # rank 1 ran out of memory; torchrun then stopped rank 0, which checkpointed
        ([outcome(0, "Interrupted", 143), outcome(1, "GPUOutOfMemory", 3)], 1, "GPUOutOfMemory", 3),
        ([outcome(0, "Interrupted", 143), outcome(1, "Interrupted", 143)], 1, "Interrupted", 143),
        ([outcome(0, None), outcome(1, "TrainingFailed", 1)], 1, "TrainingFailed", 1),
        # no rank wrote anything (torchrun itself failed): never a success
        ([outcome(0, None), outcome(1, None)], 1, "TrainingFailed", 1),
        ([outcome(0, "Trained"), outcome(1, None)], -9, "TrainingFailed", -9),
    ],
)
def test_the_pod_reports_the_telling_rank(
    outcomes: list[distributed.RankOutcome], launcher: int, reason: str, code: int
) -> None:
    result, exit_code = distributed.pick(outcomes, launcher)
    assert (result.reason, exit_code) == (reason, code)


def test_processes_come_from_the_config_file(tmp_path: Path) -> None:
    (tmp_path / "c.json").write_text(json.dumps({"processes": 4}))
    (tmp_path / "bad.json").write_text("{")
    assert distributed.processes_of(str(tmp_path / "c.json")) == 4
    assert distributed.processes_of(str(tmp_path / "bad.json")) == 1
    assert distributed.processes_of(str(tmp_path / "missing.json")) == 1
    command = distributed.torchrun_command("/etc/phiops/config.json", 4)
    assert command[1:6] == [
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node=4",
        "--max-restarts=0",
    ]


@pytest.mark.parametrize(
    ("rows", "batch", "processes", "steps"),
    [(24, 2, 2, 6), (22, 2, 2, 6), (25, 4, 3, 3), (5, 4, 8, 1)],
)
def test_steps_with_several_processes(rows: int, batch: int, processes: int, steps: int) -> None:
    training_spec = TrainingSpec(batch_size=batch, gradient_accumulation_steps=1, epochs=1)
    assert batching.total_steps(rows, training_spec, processes) == steps
