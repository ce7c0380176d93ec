"""The training run: plan the data, load and wrap the model, train with the HF Trainer
(checkpoints, resume, progress), save the adapter and its provenance.

Why the plain Trainer rather than TRL's SFTTrainer: the pre-flight must tokenize exactly as the
training does (its over-long count and `total_steps` are promises), and loss masking must cover
every assistant turn with Phi-3's own template (TRL's assistant-only loss needs `{% generation %}`
markers that Phi-3's template lacks). `chat.encode_conversation` does both in one place, so
the trainer gets ready token ids and labels.
"""

from __future__ import annotations

import datetime
import json
import logging
import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from types import FrameType
from typing import Any

import torch
from phiops_workload.contracts import WorkloadResult
from phiops_workload.finetune import (
    REASON_GPU_OOM,
    REASON_TRAINED,
    REASON_TRAINING_FAILED,
    TrainFigures,
    TrainJobConfig,
)
from phiops_workload.runtime import EXIT_BAD_CONFIG, EXIT_OUT_OF_MEMORY, WorkloadError
from transformers import (
    PrinterCallback,
    Trainer,
    TrainerCallback,
    TrainerControl,
    TrainerState,
    TrainingArguments,
)

from phiops_finetune import (
    attention,
    batching,
    dataset,
    distributed,
    kernels,
    modeling,
    provenance,
)
from phiops_finetune.callbacks import Meter, ProgressReporter
from phiops_finetune.preflight import Plan, describe, plan, tokenizer_for
from phiops_finetune.publisher import ProgressPublisher

log = logging.getLogger("phiops_finetune.train")

CHECKPOINTS = "checkpoints"
KEEP_CHECKPOINTS = 2
TRAINER_STATE = "trainer_state.json"
EXIT_INTERRUPTED = 143  # what a SIGTERM'd process reports; the Job's retry resumes
REASON_INTERRUPTED = "Interrupted"


class PhiopsTrainer(Trainer):
    """The HF Trainer, counting the non-padding tokens the collator reports per batch."""

    meter: Meter | None = None
    attention_kernel: str = attention.SDPA
    padding_free: bool = False
    fused_kernels: bool = False

    def training_step(
        self, model: torch.nn.Module, inputs: dict[str, Any], num_items_in_batch: Any = None
    ) -> torch.Tensor:
        tokens = inputs.pop(batching.TOKENS_KEY, None)
        if tokens is not None and self.meter is not None:
            self.meter.tokens += int(tokens)
        loss: torch.Tensor = super().training_step(model, inputs, num_items_in_batch)
        return loss

    def prediction_step(
        self,
        model: torch.nn.Module,
        inputs: dict[str, Any],
        prediction_loss_only: bool,
        ignore_keys: list[str] | None = None,
    ) -> Any:
        inputs.pop(batching.TOKENS_KEY, None)
        return super().prediction_step(model, inputs, prediction_loss_only, ignore_keys)


class StopOnSignal(TrainerCallback):
    """On SIGTERM (eviction, preemption, deletion): finish the step, checkpoint, stop. With
    several ranks, all stop after the same step (the first signalled one decides)."""

    def __init__(self, world: int = 1) -> None:
        self.received: int | None = None
        self.world = world

    def handler(self, signum: int, frame: FrameType | None) -> None:
        log.warning("signal %d: checkpointing after this step, then stopping", signum)
        self.received = signum

    def on_step_end(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        **kwargs: Any,
    ) -> None:
        if distributed.stop_together(self.received is not None, self.world):
            if self.received is None:
                self.received = signal.SIGTERM  # a peer rank was signalled
            control.should_save = True
            control.should_training_stop = True


@contextmanager
def signals_to(callback: StopOnSignal) -> Iterator[None]:
    try:
        previous = signal.signal(signal.SIGTERM, callback.handler)
    except ValueError:  # not the main thread (tests): no signal handling
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def latest_checkpoint(folder: Path) -> tuple[Path, int] | None:
    """The newest complete checkpoint (the Trainer writes trainer_state.json last, so a
    checkpoint cut short by a killed pod has none) and its step."""
    if not folder.is_dir():
        return None
    found: list[tuple[int, Path]] = []
    for child in folder.iterdir():
        name = child.name
        if child.is_dir() and name.startswith("checkpoint-") and (child / TRAINER_STATE).is_file():
            try:
                step = int(json.loads((child / TRAINER_STATE).read_text())["global_step"])
            except (ValueError, KeyError, OSError):
                continue
            found.append((step, child))
    if not found:
        return None
    step, path = max(found)
    return path, step


def is_cuda_oom(err: BaseException) -> bool:
    if isinstance(err, torch.OutOfMemoryError):
        return True
    text = str(err)
    return isinstance(err, RuntimeError) and (
        "CUDA out of memory" in text or "CUBLAS_STATUS_ALLOC_FAILED" in text
    )


def oom_error(config: TrainJobConfig, err: BaseException) -> WorkloadError:
    t = config.training
    advice = [
        f"a smaller training.batchSize (now {t.batch_size}; raise "
        "training.gradientAccumulationSteps to keep the effective batch)",
    ]
    if config.method != "qlora":
        advice.append("method qlora (4-bit base: far less memory)")
    if not t.gradient_checkpointing:
        advice.append("training.gradientCheckpointing: true")
    advice.append(f"a shorter dataset.maxSeqLength (now {config.dataset.max_seq_length})")
    first = str(err).splitlines()[0] if str(err) else type(err).__name__
    message = f"CUDA out of memory ({first[:300]}); try " + ", or ".join(advice)
    return WorkloadError(REASON_GPU_OOM, message, EXIT_OUT_OF_MEMORY)


def training_arguments(
    config: TrainJobConfig, p: Plan, on: str, world: int = 1, fused: bool = False
) -> TrainingArguments:
    t = config.training
    dtype = modeling.compute_dtype(config, on)
    evaluate = bool(p.validation_rows) and bool(t.eval_steps)
    # transformers 5 renamed gradient checkpointing to activation checkpointing.
    fields = TrainingArguments.__dataclass_fields__
    ac = (
        "activation_checkpointing"
        if "activation_checkpointing" in fields
        else "gradient_checkpointing"
    )
    checkpointing: dict[str, Any] = {
        ac: t.gradient_checkpointing,
        f"{ac}_kwargs": {"use_reentrant": False},
    }
    # transformers 5 reads a float warmup_steps below 1 as a ratio; 4.x had warmup_ratio.
    ratio = min(max(t.warmup_ratio, 0.0), 0.99)
    warmup: dict[str, Any] = (
        {"warmup_ratio": ratio} if "warmup_ratio" in fields else {"warmup_steps": ratio}
    )
    # DDP: gloo on CPU, NCCL on GPUs; every LoRA parameter gets a gradient every step, so
    # DDP need not search the graph for unused ones (peft's advice with checkpointing).
    ddp: dict[str, Any] = (
        {"ddp_backend": "nccl" if on == "cuda" else "gloo", "ddp_find_unused_parameters": False}
        if world > 1
        else {}
    )
    return TrainingArguments(
        output_dir=str(Path(config.output_dir) / CHECKPOINTS),
        **ddp,
        use_liger_kernel=fused,
        per_device_train_batch_size=t.batch_size,
        per_device_eval_batch_size=t.batch_size,
        gradient_accumulation_steps=t.gradient_accumulation_steps,
        num_train_epochs=t.epochs,
        max_steps=t.max_steps if t.max_steps else -1,
        learning_rate=t.learning_rate,
        lr_scheduler_type=t.scheduler,
        **warmup,
        weight_decay=0.0,
        max_grad_norm=1.0,
        optim="adamw_torch",
        logging_strategy="steps",
        logging_steps=t.logging_steps,
        save_strategy="steps",
        save_steps=t.save_steps,
        save_total_limit=KEEP_CHECKPOINTS,
        eval_strategy="steps" if evaluate else "no",
        eval_steps=t.eval_steps if evaluate else None,
        **checkpointing,
        bf16=on == "cuda" and dtype == torch.bfloat16,
        fp16=on == "cuda" and dtype == torch.float16,
        use_cpu=on == "cpu",
        seed=t.seed,
        data_seed=t.seed,
        report_to="none",
        disable_tqdm=True,
        remove_unused_columns=False,
        label_names=["labels"],
        dataloader_num_workers=0,
    )


def _last_logged(history: list[dict[str, Any]], key: str) -> tuple[float | None, int | None]:
    for entry in reversed(history):
        if key in entry:
            return float(entry[key]), int(entry.get("step", 0))
    return None, None


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")


def run(config: TrainJobConfig) -> WorkloadResult:
    started, clock = _now(), time.monotonic()
    on = modeling.device()
    ranks = distributed.ranks()
    if ranks.world != config.processes:
        log.warning(
            "%d processes running, the config says %d: the step count planned differs",
            ranks.world,
            config.processes,
        )
    data = dataset.read_bytes(config.dataset.path)
    tokenizer = tokenizer_for(config)
    p = plan(config, tokenizer, data)
    log.info("plan: %s", describe(p, config))
    for problem in p.prepared.report.problems:
        log.warning("skipped %s", problem)

    output = Path(config.output_dir)
    checkpoints = output / CHECKPOINTS
    checkpoints.mkdir(parents=True, exist_ok=True)
    latest = latest_checkpoint(checkpoints)
    resumed_from = latest[1] if latest else None
    if latest:
        log.info("resuming from step %d (%s)", latest[1], latest[0])
    else:
        log.info("starting at step 0 on %s (%s)", on, config.method)

    meter = Meter(total_steps=p.total_steps, resumed_from_step=resumed_from, processes=ranks.world)
    # Rank 0 alone reports: progress, the adapter, provenance.
    publisher = ProgressPublisher(config.progress) if config.progress and ranks.main else None
    stopper = StopOnSignal(ranks.world)
    try:
        with publisher or nullcontext(), signals_to(stopper):
            trainer = build_trainer(config, p, tokenizer, on, meter, publisher, stopper)
            trainer.train(resume_from_checkpoint=str(latest[0]) if latest else None)
            distributed.barrier(ranks.world)  # every rank's part of the checkpoint is written
            if stopper.received is not None:
                raise WorkloadError(
                    REASON_INTERRUPTED,
                    f"stopped by signal {stopper.received} at step {trainer.state.global_step} "
                    "(checkpoint saved; a new attempt resumes there)",
                    EXIT_INTERRUPTED,
                )
            history: list[dict[str, Any]] = trainer.state.log_history
            eval_loss, eval_step = _last_logged(history, "eval_loss")
            if p.validation_rows and eval_step != trainer.state.global_step:
                eval_loss = float(trainer.evaluate()["eval_loss"])
                meter.eval_loss = eval_loss
                log.info(meter.eval_line())
            trained: Any = trainer.model  # the PeftModel: saves the adapter only
            if not ranks.main:
                return _rank_done(ranks, trainer)
            trained.save_pretrained(str(output))
            if publisher is not None:
                meter.step = trainer.state.global_step
                publisher.submit(meter.progress())
    except WorkloadError:
        raise
    except Exception as err:
        if is_cuda_oom(err):
            raise oom_error(config, err) from err
        if isinstance(err, ValueError) and "Target modules" in str(err):
            message = f"lora.targetModules: {err}"
            raise WorkloadError("InvalidConfig", message, EXIT_BAD_CONFIG) from err
        log.exception("training failed")
        raise WorkloadError(REASON_TRAINING_FAILED, f"{type(err).__name__}: {err}") from err

    final_loss, _ = _last_logged(history, "loss")
    steps = int(trainer.state.global_step)
    duration = time.monotonic() - clock
    adapter = provenance.adapter_figures(output)
    metrics = {
        "final_loss": final_loss,
        "eval_loss": eval_loss,
        "steps": steps,
        "total_steps": p.total_steps,
        "resumed_from_step": resumed_from,
        "tokens_trained_this_run": meter.tokens,
        "epoch": trainer.state.epoch,
        "attention": trainer.attention_kernel,
        "processes": ranks.world,
        "padding_free": trainer.padding_free,
        "fused_kernels": trainer.fused_kernels,
    }
    record = provenance.build(
        config,
        fingerprint=provenance.base_model_fingerprint(
            config.base_model, **modeling.hub_kwargs(config.base_model)
        ),
        resolved_revision=getattr(trained.config, "_commit_hash", None),
        dataset={
            "sha256": p.prepared.report.sha256,
            "records": p.prepared.report.records,
            "invalid": p.prepared.report.invalid,
            "train_examples": p.train_examples,
            "validation_examples": p.validation_examples,
        },
        metrics=metrics,
        adapter=adapter,
        started=started,
        finished=_now(),
        device=_device_name(on, ranks.world),
    )
    provenance.write(output, record)
    figures = TrainFigures(
        adapter=adapter,
        final_loss=final_loss,
        eval_loss=eval_loss,
        steps=steps,
        resumed_from_step=resumed_from,
        duration_seconds=round(duration, 2),
    )
    message = (
        f"trained {steps} steps ({config.method}), loss {final_loss}, eval loss {eval_loss}; "
        f"adapter {adapter.path} ({adapter.size_bytes} bytes, sha256 {adapter.sha256[:12]})"
    )
    log.info(message)
    return WorkloadResult(
        outcome="Succeeded", reason=REASON_TRAINED, message=message, figures=figures.model_dump()
    )


def _rank_done(ranks: distributed.Ranks, trainer: PhiopsTrainer) -> WorkloadResult:
    step = trainer.state.global_step
    message = f"rank {ranks.rank} of {ranks.world} trained {step} steps"
    return WorkloadResult(
        outcome="Succeeded", reason=REASON_TRAINED, message=message, figures={"steps": step}
    )


def _device_name(on: str, processes: int = 1) -> str:
    times = f" x {processes}" if processes > 1 else ""
    if on == "cuda":
        return f"cuda: {torch.cuda.get_device_name(0)}{times}"
    return f"cpu{times}"


def build_trainer(
    config: TrainJobConfig,
    p: Plan,
    tokenizer: Any,
    on: str,
    meter: Meter,
    publisher: ProgressPublisher | None = None,
    stopper: StopOnSignal | None = None,
    model: Any = None,
) -> PhiopsTrainer:
    """The model loaded and wrapped (unless one is given), and a Trainer over the planned rows
    (the benchmark uses it too, so that it measures exactly what a FineTuneJob runs)."""
    from transformers import set_seed

    ranks = distributed.ranks()
    fused = kernels.plan(config.training.fused_kernels, on)
    try:
        args = training_arguments(config, p, on, ranks.world, fused.use)
    except ValueError as err:  # e.g. an unknown scheduler name
        raise WorkloadError("InvalidConfig", f"training: {err}", EXIT_BAD_CONFIG) from err
    set_seed(config.training.seed)
    t = config.training
    if model is None:
        chosen = attention.plan(t.packing, t.padding_free, on)
        loaded = modeling.load_model(config, on, chosen.implementation, ranks.local_rank)
        model = modeling.wrap_for_training(loaded, config, on)
        padding_free = chosen.padding_free
    else:  # a model loaded by the caller: its attention kernel decides
        padding_free = t.packing and t.padding_free and attention.is_varlen(model)
    pad = tokenizer.pad_token_id
    # Widths in multiples of 8 suit GPU matmul kernels; on CPU they would only add padding.
    multiple = 8 if on == "cuda" else 1
    collator = batching.Collator(
        pad, packed=t.packing, pad_to_multiple_of=multiple, flatten=padding_free
    )
    callbacks: list[TrainerCallback] = [ProgressReporter(meter, publisher, ranks.main)]
    if stopper is not None:
        callbacks.append(stopper)
    trainer = PhiopsTrainer(
        model=model,
        args=args,
        train_dataset=batching.RowDataset(p.train_rows),
        eval_dataset=batching.RowDataset(p.validation_rows) if p.validation_rows else None,
        data_collator=collator,
        processing_class=tokenizer,
        callbacks=callbacks,
    )
    trainer.meter = meter
    trainer.attention_kernel = str(getattr(model.config, "_attn_implementation", attention.SDPA))
    trainer.padding_free = padding_free
    trainer.fused_kernels = fused.use
    trainer.remove_callback(PrinterCallback)
    return trainer
