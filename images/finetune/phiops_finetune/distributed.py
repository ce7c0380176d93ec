"""More than one training process in one pod: `processes: N` (one per GPU) runs the trainer
under torchrun, data-parallel (DDP: each rank holds the whole model and its own adapter copy,
gradients are averaged every step; QLoRA too, each rank with its own 4-bit base, as peft
documents for DDP).

The pod's process is the launcher: it starts `torch.distributed.run --standalone` with N
workers, passes SIGTERM on (torchrun signals the workers, which checkpoint and stop together),
collects each rank's result from a folder, and writes the one the operator should see to the
termination log with its exit code: a real failure of any rank before rank 0's interruption,
rank 0's result when all went well. Rank 0 alone publishes progress and writes the adapter and
provenance; every rank resumes from the same checkpoint.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

from phiops_workload.contracts import WorkloadResult
from phiops_workload.finetune import REASON_TRAINING_FAILED
from phiops_workload.runtime import EXIT_FAILED, write_result

log = logging.getLogger("phiops_finetune.distributed")

RESULTS_ENV = "PHIOPS_RANK_RESULTS"
REASON_INTERRUPTED = "Interrupted"


@dataclass(frozen=True)
class Ranks:
    rank: int = 0
    local_rank: int = 0
    world: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0


def ranks() -> Ranks:
    """This process's place in a torchrun launch (rank 0 of 1 outside one)."""
    env = os.environ
    return Ranks(
        rank=int(env.get("RANK", "0")),
        local_rank=int(env.get("LOCAL_RANK", "0")),
        world=int(env.get("WORLD_SIZE", "1")),
    )


def in_worker() -> bool:
    return "TORCHELASTIC_RUN_ID" in os.environ or "LOCAL_RANK" in os.environ


def processes_of(config_path: str) -> int:
    """`processes` from the config file; 1 when it cannot be read (the run then reports the
    config error itself)."""
    try:
        value = json.loads(Path(config_path).read_text()).get("processes", 1)
        return max(int(value), 1)
    except (OSError, ValueError, TypeError, AttributeError):
        return 1


def torchrun_command(config_path: str, processes: int) -> list[str]:
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",  # one pod: a local rendezvous on a free port
        f"--nproc-per-node={processes}",
        "--max-restarts=0",  # retries are the operator's (it tells an OOM from an eviction)
        "-m",
        "phiops_finetune",
        "train",
        "--config",
        config_path,
    ]


@dataclass(frozen=True)
class RankOutcome:
    rank: int
    result: WorkloadResult | None
    exit_code: int | None


def pick(outcomes: list[RankOutcome], launcher_code: int) -> tuple[WorkloadResult, int]:
    """The result the pod reports. A failure other than an interruption wins (torchrun stops
    the other ranks when one fails, and they report Interrupted), the lowest rank first; then
    any failure; then rank 0's success."""
    failed = [o for o in outcomes if o.result is not None and o.result.outcome != "Succeeded"]
    real = [o for o in failed if o.result is not None and o.result.reason != REASON_INTERRUPTED]
    for group in (real, failed):
        if group:
            first = min(group, key=lambda o: o.rank)
            assert first.result is not None
            return first.result, first.exit_code if first.exit_code else EXIT_FAILED
    main = next((o for o in outcomes if o.rank == 0 and o.result is not None), None)
    if main is not None and main.result is not None and launcher_code == 0:
        return main.result, main.exit_code or 0
    message = (
        f"torchrun exited with {launcher_code} and no rank reported a failure "
        f"(ranks that reported: {sorted(o.rank for o in outcomes if o.result)})"
    )
    return WorkloadResult(outcome="Failed", reason=REASON_TRAINING_FAILED, message=message), (
        launcher_code or EXIT_FAILED
    )


def read_outcomes(folder: Path, processes: int) -> list[RankOutcome]:
    outcomes = []
    for rank in range(processes):
        result: WorkloadResult | None = None
        code: int | None = None
        try:
            result = WorkloadResult.model_validate_json((folder / f"rank-{rank}.json").read_text())
            code = int((folder / f"rank-{rank}.exit").read_text())
        except (OSError, ValueError):
            pass
        outcomes.append(RankOutcome(rank, result, code))
    return outcomes


def launch(config_path: str, processes: int) -> int:
    """Run N workers under torchrun and report their result (the pod's main process)."""
    with tempfile.TemporaryDirectory(prefix="phiops-ranks-") as folder:
        command = torchrun_command(config_path, processes)
        log.info("starting %d training processes: %s", processes, " ".join(command[1:]))
        proc = subprocess.Popen(command, env={**os.environ, RESULTS_ENV: folder})

        def forward(signum: int, frame: FrameType | None) -> None:
            log.warning("signal %d: passed on to the training processes", signum)
            proc.send_signal(signum)

        previous = signal.signal(signal.SIGTERM, forward)
        try:
            code = proc.wait()
        finally:
            signal.signal(signal.SIGTERM, previous)
        result, exit_code = pick(read_outcomes(Path(folder), processes), code)
    write_result(result)
    return exit_code


def as_worker(run: Callable[[], int]) -> int:
    """One rank: its result goes to the launcher's folder instead of the termination log."""
    folder = os.environ.get(RESULTS_ENV)
    rank = ranks().rank
    if folder:
        os.environ["PHIOPS_TERMINATION_LOG"] = str(Path(folder) / f"rank-{rank}.json")
    code = run()
    if folder:
        (Path(folder) / f"rank-{rank}.exit").write_text(str(code))
    return code


def stop_together(received: bool, world: int) -> bool:
    """Whether any rank was signalled (every rank calls this at the same step end, so that all
    stop after the same step and save one checkpoint together)."""
    if world <= 1:
        return received
    import torch
    import torch.distributed as dist

    on = "cuda" if dist.get_backend() == "nccl" else "cpu"
    flag = torch.tensor([1 if received else 0], device=on)
    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    return bool(flag.item())


def barrier(world: int) -> None:
    if world > 1:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.barrier()
