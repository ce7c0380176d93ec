"""`python -m phiops_finetune <subcommand>`: the entrypoint of the phiops-finetune image.

- `preflight --config FILE`: validate the dataset and count the steps, without a GPU;
  exit 0 (`PreflightPassed`), 4 (`InvalidDataset`), 2 (bad config), 1 (other failure);
- `train --config FILE` (the default when no subcommand is given): train the adapter (with
  `processes` > 1 in the config: under torchrun, see `distributed`); exit 0 (`Trained`),
  3 (`GPUOutOfMemory`), 4 (`InvalidDataset`), 2 (`InvalidConfig`), 1 (`TrainingFailed`),
  143 (`Interrupted`: SIGTERM, checkpointed; a new pod resumes);
- `make-tiny-model --out DIR`: write a tiny random-weight Phi-3 and its tokenizer.

`preflight` and `train` write a `WorkloadResult` to the termination log (and stdout).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import warnings
from collections.abc import Callable

from phiops_workload.contracts import WorkloadResult
from phiops_workload.finetune import TrainJobConfig
from phiops_workload.runtime import (
    DEFAULT_CONFIG,
    EXIT_OK,
    run_job,
)

SUBCOMMANDS = ("preflight", "train", "make-tiny-model")
RESOURCE_KIND = "FineTuneJob"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="phiops_finetune", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    config_default = os.environ.get("PHIOPS_CONFIG", DEFAULT_CONFIG)

    preflight = sub.add_parser("preflight", help="validate the dataset, count the steps")
    preflight.add_argument("--config", default=config_default)

    train = sub.add_parser("train", help="train the LoRA/QLoRA adapter")
    train.add_argument("--config", default=config_default)

    tiny = sub.add_parser("make-tiny-model", help="write a tiny random-weight Phi-3")
    tiny.add_argument("--out", required=True)
    tiny.add_argument("--layers", type=int, default=2)
    tiny.add_argument("--hidden", type=int, default=64)
    tiny.add_argument("--vocab", type=int, default=1024)
    tiny.add_argument("--seed", type=int, default=1234)
    return parser


def main(argv: list[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    if not args_list or args_list[0] not in (*SUBCOMMANDS, "-h", "--help"):
        args_list.insert(0, "train")
    args = build_parser().parse_args(args_list)
    # Under torchrun each line says which rank wrote it.
    rank = f" rank {os.environ['RANK']}" if "RANK" in os.environ else ""
    logging.basicConfig(level=logging.INFO, format=f"%(asctime)s{rank} %(levelname)s %(message)s")
    _quiet_libraries()
    command: str = args.command
    if command == "make-tiny-model":
        from phiops_finetune.tiny_model import make_tiny_model

        out = make_tiny_model(args.out, args.layers, args.hidden, args.vocab, seed=args.seed)
        print(out, flush=True)
        return EXIT_OK
    if command == "preflight":
        from phiops_finetune import preflight

        return _job(args.config, preflight.run)
    from phiops_finetune import distributed, training

    processes = distributed.processes_of(args.config)
    if processes > 1 and not distributed.in_worker():
        return distributed.launch(args.config, processes)
    if distributed.in_worker():
        return distributed.as_worker(lambda: _job(args.config, training.run))
    return _job(args.config, training.run)


def _quiet_libraries() -> None:
    """No progress bars in pod logs (the trainer logs its own progress lines), and none of the
    renaming notices transformers 5 and peft print about each other's calls."""
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    warnings.filterwarnings("ignore", message=".*deprecated and will be removed in v6")


def _job(config_path: str, run: Callable[[TrainJobConfig], WorkloadResult]) -> int:
    return run_job("phiops_finetune", config_path, TrainJobConfig, RESOURCE_KIND, run)
