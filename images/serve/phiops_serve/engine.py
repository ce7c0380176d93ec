"""One base model and its LoRA adapters in memory; chat completions against any of them."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import AsyncGenerator, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from phiops_workload.serving import ServeConfig
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    StoppingCriteria,
    StoppingCriteriaList,
    TextIteratorStreamer,
)

log = logging.getLogger(__name__)

Message = dict[str, str]

_DTYPES: dict[str, torch.dtype | str] = {
    "auto": "auto",
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
}


class UnknownModel(KeyError):
    """The request names a model this server does not serve."""


@dataclass(frozen=True)
class Sampling:
    """How to pick tokens. `temperature` 0 is greedy."""

    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    seed: int | None = None


@dataclass
class Completion:
    text: str = ""
    prompt_tokens: int = 0
    completion_tokens: int = 0
    finish_reason: str = "stop"
    """`stop` (end of turn or a stop sequence) or `length` (ran into max_tokens)."""

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


def cut_at_stop(text: str, stop: tuple[str, ...]) -> tuple[str, bool]:
    """`text` up to the first stop sequence in it, and whether there was one."""
    cuts = [i for i in (text.find(s) for s in stop if s) if i >= 0]
    return (text[: min(cuts)], True) if cuts else (text, False)


def held_back(text: str, stop: tuple[str, ...]) -> int:
    """How many trailing characters of `text` might begin a stop sequence (not sent yet)."""
    longest = 0
    for s in stop:
        for n in range(min(len(s) - 1, len(text)), longest, -1):
            if s.startswith(text[-n:]):
                longest = n
                break
    return longest


class _CountingStreamer(TextIteratorStreamer):
    """A text streamer that also counts the generated tokens and remembers the last one."""

    def __init__(self, tokenizer: Any, timeout: float | None = None) -> None:
        super().__init__(tokenizer, skip_prompt=True, timeout=timeout, skip_special_tokens=True)
        self.generated = 0
        self.last_token: int | None = None

    def put(self, value: torch.Tensor) -> None:
        if not (self.skip_prompt and self.next_tokens_are_prompt):
            flat = value.reshape(-1)
            self.generated += int(flat.numel())
            if flat.numel():
                self.last_token = int(flat[-1])
        super().put(value)  # type: ignore[no-untyped-call]


class _Cancelled(StoppingCriteria):
    """Ends a generation early once `event` is set (the client left, or a stop matched)."""

    def __init__(self, event: threading.Event) -> None:
        self.event = event

    def __call__(self, input_ids: torch.Tensor, scores: Any, **kwargs: Any) -> torch.Tensor:
        return torch.full((input_ids.shape[0],), self.event.is_set(), dtype=torch.bool)


@dataclass
class Engine:
    """Loads the model at `load()`; serialises generation (one model, one request at a time)."""

    config: ServeConfig
    model: Any = None
    tokenizer: Any = None
    loaded: set[str] = field(default_factory=set)
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    @property
    def base_name(self) -> str:
        return self.config.base_model_name

    @property
    def adapter_names(self) -> list[str]:
        return [a.name for a in self.config.adapters]

    @property
    def ready(self) -> bool:
        return self.loaded >= {self.base_name, *self.adapter_names}

    def device(self) -> str:
        if self.config.device != "auto":
            return self.config.device
        return "cuda" if torch.cuda.is_available() else "cpu"

    def load(self) -> None:
        """Load the base model, then every adapter (blocking: run it in a thread)."""
        path = self.config.base_model_path
        log.info("loading %s from %s", self.base_name, path)
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        model: Any = AutoModelForCausalLM.from_pretrained(path, dtype=_DTYPES[self.config.dtype])
        model.to(self.device())
        model.eval()
        self.loaded.add(self.base_name)
        for i, adapter in enumerate(self.config.adapters):
            from peft import PeftModel

            log.info("loading adapter %s from %s", adapter.name, adapter.path)
            if i == 0:
                model = PeftModel.from_pretrained(model, adapter.path, adapter_name=adapter.name)
            else:
                model.load_adapter(adapter.path, adapter_name=adapter.name)
            model.eval()
            self.loaded.add(adapter.name)
        self.model = model

    @contextlib.contextmanager
    def _selected(self, name: str) -> Iterator[None]:
        """Make `name` (the base or an adapter) the model that answers."""
        if name == self.base_name:
            if self.adapter_names:
                with self.model.disable_adapter():
                    yield
            else:
                yield
        elif name in self.adapter_names:
            self.model.set_adapter(name)
            yield
        else:
            raise UnknownModel(name)

    def _check(self, name: str) -> None:
        if name != self.base_name and name not in self.adapter_names:
            raise UnknownModel(name)

    def _inputs(self, messages: list[Message]) -> dict[str, torch.Tensor]:
        prompt = self.tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=True
        )
        encoded = self.tokenizer(prompt, return_tensors="pt", add_special_tokens=False)
        return {k: v.to(self.model.device) for k, v in encoded.items()}

    def _generate_kwargs(self, sampling: Sampling) -> dict[str, Any]:
        max_tokens = min(sampling.max_tokens, self.config.max_new_tokens)
        kwargs: dict[str, Any] = {"max_new_tokens": max_tokens}
        if sampling.temperature <= 0:
            kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        else:
            kwargs.update(
                do_sample=True, temperature=sampling.temperature, top_p=sampling.top_p, top_k=0
            )
        if sampling.stop:
            kwargs.update(stop_strings=list(sampling.stop), tokenizer=self.tokenizer)
        if self.tokenizer.pad_token_id is None:
            kwargs["pad_token_id"] = self.tokenizer.eos_token_id
        if sampling.seed is not None:
            torch.manual_seed(sampling.seed)
        return kwargs

    def _finish_reason(self, generated: int, last: int | None, sampling: Sampling) -> str:
        limit = min(sampling.max_tokens, self.config.max_new_tokens)
        eos = self.model.generation_config.eos_token_id
        eos_ids = set(eos if isinstance(eos, list) else [eos])
        return "length" if generated >= limit and last not in eos_ids else "stop"

    def _generate(self, model: str, messages: list[Message], sampling: Sampling) -> Completion:
        inputs = self._inputs(messages)
        prompt_len = int(inputs["input_ids"].shape[-1])
        with self._selected(model), torch.inference_mode():
            output = self.model.generate(**inputs, **self._generate_kwargs(sampling))
        new = output[0, prompt_len:].tolist()
        text = self.tokenizer.decode(new, skip_special_tokens=True)
        text, stopped = cut_at_stop(text, sampling.stop)
        last = new[-1] if new else None
        reason = "stop" if stopped else self._finish_reason(len(new), last, sampling)
        return Completion(text, prompt_len, len(new), reason)

    async def complete(self, model: str, messages: list[Message], sampling: Sampling) -> Completion:
        self._check(model)
        async with self._lock:
            return await asyncio.to_thread(self._generate, model, messages, sampling)

    async def stream(
        self, model: str, messages: list[Message], sampling: Sampling, usage: Completion
    ) -> AsyncGenerator[str, None]:
        """Yield the completion's text piece by piece; fills `usage` in as it goes."""
        self._check(model)
        async with self._lock:
            inputs = self._inputs(messages)
            usage.prompt_tokens = int(inputs["input_ids"].shape[-1])
            streamer = _CountingStreamer(self.tokenizer)
            kwargs = self._generate_kwargs(sampling)
            cancel = threading.Event()
            kwargs["stopping_criteria"] = StoppingCriteriaList([_Cancelled(cancel)])
            failure: list[BaseException] = []

            def work() -> None:
                try:
                    with self._selected(model), torch.inference_mode():
                        self.model.generate(**inputs, **kwargs, streamer=streamer)
                except BaseException as err:  # surfaced to the caller below
                    failure.append(err)
                    streamer.end()  # type: ignore[no-untyped-call]

            thread = threading.Thread(target=work, daemon=True)
            thread.start()
            pending, sent, stopped = "", 0, False
            try:
                while True:
                    piece = await asyncio.to_thread(next, streamer, None)
                    if piece is None:
                        break
                    pending += piece
                    pending, stopped = cut_at_stop(pending, sampling.stop)
                    upto = (
                        len(pending)
                        if stopped
                        else len(pending) - held_back(pending, sampling.stop)
                    )
                    if upto > sent:
                        yield pending[sent:upto]
                        sent = upto
                    if stopped:
                        break
                if not stopped and len(pending) > sent:
                    yield pending[sent:]
            finally:
                cancel.set()
                await asyncio.to_thread(thread.join)
            if failure:
                raise failure[0]
            usage.text = pending
            usage.completion_tokens = streamer.generated
            usage.finish_reason = (
                "stop"
                if stopped
                else self._finish_reason(streamer.generated, streamer.last_token, sampling)
            )
