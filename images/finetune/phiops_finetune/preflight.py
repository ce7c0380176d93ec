"""The pre-flight: everything that can be checked before a GPU is spent.

`plan` is shared with the trainer: the same tokenizer, chat template, split and packing, so
the pre-flight's `total_steps` is the number of steps the training will run.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from phiops_workload.contracts import TERMINATION_MESSAGE_LIMIT, WorkloadResult
from phiops_workload.finetune import (
    EXIT_INPUT_NOT_READY,
    REASON_MODEL_UNAVAILABLE,
    REASON_PREFLIGHT_PASSED,
    REASON_WAITING_FOR_INPUTS,
    PreflightFigures,
    TrainJobConfig,
)
from phiops_workload.runtime import WorkloadError

from phiops_finetune import batching, dataset
from phiops_finetune.batching import Row
from phiops_finetune.dataset import PreparedDataset

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

log = logging.getLogger("phiops_finetune.preflight")
# What a model folder holds once copied whole (the pre-flight needs the tokenizer only).
MODEL_FOLDER_FILES = ("config.json", "tokenizer_config.json")


@dataclass
class Plan:
    prepared: PreparedDataset
    train_rows: list[Row]
    validation_rows: list[Row]
    train_examples: int
    validation_examples: int
    total_steps: int


def tokenizer_for(config: TrainJobConfig) -> PreTrainedTokenizerBase:
    from phiops_finetune.modeling import load_tokenizer, source

    try:
        return load_tokenizer(config.base_model)
    except (OSError, ValueError) as err:
        raise WorkloadError(
            REASON_MODEL_UNAVAILABLE,
            f"the tokenizer of base model {source(config.base_model)} could not be loaded: {err}",
        ) from err


def plan(config: TrainJobConfig, tokenizer: PreTrainedTokenizerBase, data: bytes) -> Plan:
    """Validate and encode the dataset, split it, pack it, count the steps; raises
    `WorkloadError(InvalidDataset)` when the dataset is unusable."""
    prepared = dataset.prepare(data, config.dataset, tokenizer)
    if not prepared.usable:
        raise dataset.unusable_error(prepared.report)
    training = config.training
    examples = [encoded for _, encoded in prepared.examples]
    train, validation = batching.split(examples, config.dataset.validation_split, training.seed)
    max_len = config.dataset.max_seq_length
    train_rows = batching.rows(train, training.packing, max_len)
    validation_rows = batching.rows(validation, training.packing, max_len)
    return Plan(
        prepared=prepared,
        train_rows=train_rows,
        validation_rows=validation_rows,
        train_examples=len(train),
        validation_examples=len(validation),
        total_steps=batching.total_steps(len(train_rows), training, config.processes),
    )


def describe(p: Plan, config: TrainJobConfig) -> str:
    t = config.training
    packed = f", packed into {len(p.train_rows)} rows" if t.packing else ""
    return (
        f"{dataset.summary(p.prepared.report, p.prepared.examples)}; "
        f"train {p.train_examples}{packed}, validation {p.validation_examples}; "
        f"{p.total_steps} steps (batch {t.batch_size} x accumulation "
        f"{t.gradient_accumulation_steps}"
        + (f" x {config.processes} processes, " if config.processes > 1 else ", ")
        + (f"max_steps {t.max_steps})" if t.max_steps else f"{t.epochs:g} epochs)")
    )


def missing_inputs(config: TrainJobConfig) -> list[str]:
    """Inputs on mounted volumes that are not there (yet). A local model folder that does not
    exist must not reach transformers, which would take its path for a hub repo id."""
    missing = []
    model = config.base_model.path
    if model is not None:
        # Both written last by save_pretrained of the model and of its tokenizer: a folder
        # still being copied waits rather than fails.
        absent = [f for f in MODEL_FOLDER_FILES if not (Path(model) / f).is_file()]
        if absent:
            missing.append(
                f"the base model folder {model} (spec.baseModel.pvc) is missing or incomplete "
                f"(no {', '.join(absent)})"
            )
    data = config.dataset.path
    if not data.startswith(("http://", "https://")) and not Path(data).is_file():
        missing.append(f"the dataset file {data} (spec.dataset) is missing")
    return missing


def run(config: TrainJobConfig) -> WorkloadResult:
    missing = missing_inputs(config)
    if missing:
        raise WorkloadError(REASON_WAITING_FOR_INPUTS, "; ".join(missing), EXIT_INPUT_NOT_READY)
    data = dataset.read_bytes(config.dataset.path)
    p = plan(config, tokenizer_for(config), data)
    message = describe(p, config)
    log.info("preflight passed: %s", message)
    for problem in p.prepared.report.problems:
        log.warning("skipped %s", problem)
    report = p.prepared.report
    while True:
        figures = PreflightFigures(dataset=report, total_steps=p.total_steps)
        result = WorkloadResult(
            outcome="Succeeded",
            reason=REASON_PREFLIGHT_PASSED,
            message=message,
            figures=figures.model_dump(),
        )
        # The figures must fit the termination message whole (only `message` is shortened).
        if (
            len(result.model_dump_json().encode()) <= TERMINATION_MESSAGE_LIMIT
            or not report.problems
        ):
            return result
        report = report.model_copy(update={"problems": report.problems[:-1]})
