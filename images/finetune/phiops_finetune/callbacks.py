"""Progress while training: a log line per logging step and the `Progress` the publisher
sends to the operator. Imported only when training (it needs transformers)."""

from __future__ import annotations

import datetime
import logging
import time
from dataclasses import dataclass, field
from typing import Any

from phiops_workload.finetune import Progress
from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from phiops_finetune.publisher import ProgressPublisher

log = logging.getLogger("phiops_finetune.train")


@dataclass
class Meter:
    """Counts what a run does (the trainer adds the non-padding tokens of each micro-batch)."""

    total_steps: int
    resumed_from_step: int | None = None
    processes: int = 1
    """Ranks training alike: throughput is this rank's tokens times the ranks."""
    tokens: int = 0
    started: float = field(default_factory=time.monotonic)
    start_step: int = 0
    loss: float | None = None
    eval_loss: float | None = None
    step: int = 0
    epoch: float | None = None
    _last_time: float = 0.0
    _last_tokens: int = 0
    tokens_per_second: float | None = None

    def begin(self, step: int) -> None:
        self.started = self._last_time = time.monotonic()
        self.start_step = self.step = step
        self._last_tokens = self.tokens

    def sample_throughput(self) -> None:
        now = time.monotonic()
        if now > self._last_time and self.tokens > self._last_tokens:
            tokens = (self.tokens - self._last_tokens) * self.processes
            self.tokens_per_second = tokens / (now - self._last_time)
        self._last_time, self._last_tokens = now, self.tokens

    def eta_seconds(self) -> float | None:
        done = self.step - self.start_step
        if done <= 0:
            return None
        per_step = (time.monotonic() - self.started) / done
        return max(self.total_steps - self.step, 0) * per_step

    def progress(self) -> Progress:
        return Progress(
            step=self.step,
            total_steps=self.total_steps,
            epoch=None if self.epoch is None else round(self.epoch, 4),
            loss=self.loss,
            eval_loss=self.eval_loss,
            tokens_per_second=(
                None if self.tokens_per_second is None else round(self.tokens_per_second, 1)
            ),
            eta_seconds=None if (eta := self.eta_seconds()) is None else round(eta, 1),
            resumed_from_step=self.resumed_from_step,
            updated=datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        )

    def line(self) -> str:
        """`progress: step 10/100, epoch 0.50, loss 2.3456, validation loss 2.4012,
        tokens/s 1234, ETA 0:01:23` (the training loss is the first "loss" of the line)."""
        eta = self.eta_seconds()
        val = self.eval_loss
        parts = [
            f"step {self.step}/{self.total_steps}",
            f"epoch {self.epoch:.2f}" if self.epoch is not None else "epoch -",
            f"loss {self.loss:.4f}" if self.loss is not None else "loss -",
            f"validation loss {val:.4f}" if val is not None else "validation loss -",
            f"tokens/s {self.tokens_per_second:.0f}" if self.tokens_per_second else "tokens/s -",
            f"ETA {datetime.timedelta(seconds=round(eta))}" if eta is not None else "ETA -",
        ]
        return "progress: " + ", ".join(parts)

    def eval_line(self) -> str:
        return f"evaluation: step {self.step}/{self.total_steps}, eval_loss {self.eval_loss:.4f}"


class ProgressReporter(TrainerCallback):
    def __init__(
        self, meter: Meter, publisher: ProgressPublisher | None, main: bool = True
    ) -> None:
        self.meter = meter
        self.publisher = publisher
        self.main = main  # only rank 0 logs progress lines

    def on_train_begin(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        **kwargs: Any,
    ) -> None:
        self.meter.begin(state.global_step)
        self.meter.epoch = state.epoch
        self._publish()

    def on_log(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        logs: dict[str, float] | None = None,
        **kwargs: Any,
    ) -> None:
        logs = logs or {}
        m = self.meter
        m.step, m.epoch = state.global_step, state.epoch
        if "loss" in logs:
            m.loss = float(logs["loss"])
            m.sample_throughput()
        if "loss" in logs and self.main:
            log.info(m.line())
        if "eval_loss" in logs:
            m.eval_loss = float(logs["eval_loss"])
            if self.main:
                log.info(m.eval_line())
        if "loss" in logs or "eval_loss" in logs:
            self._publish()

    def on_train_end(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        **kwargs: Any,
    ) -> None:
        self.meter.step, self.meter.epoch = state.global_step, state.epoch
        self._publish()

    def _publish(self) -> None:
        if self.publisher is not None:
            self.publisher.submit(self.meter.progress())
