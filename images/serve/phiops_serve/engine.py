"""One base model and its LoRA adapters in memory; chat completions against any of them.

Generation is serialised (one model, one request at a time): the adapter is switched per
request, and a request waits for the one before it. Generation runs in a worker thread so
the event loop keeps answering health checks, metrics and queued clients.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncGenerator, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from phiops_workload.serving import ServeConfig
from transformers import StoppingCriteriaList

from phiops_serve.loading import LoadError, ModelState, load_models
from phiops_serve.tokens import Cancelled, TokenStream

log = logging.getLogger(__name__)

Message = dict[str, str]


class UnknownModel(KeyError):
    """The request names a model this server does not serve."""


class NotLoaded(Exception):
    """The model is configured but not (yet, or ever) loaded; the message says which."""


@dataclass(frozen=True)
class Sampling:
    """How to pick tokens. `temperature` 0 is greedy."""

    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    seed: int | None = None
    ignore_eos: bool = False
    """Generate exactly `max_tokens` (benchmarks): end-of-text tokens are never picked."""


@dataclass
class Completion:
    text: str = ""
    prompt_tokens: int = 0
    completion_tokens: int = 0
    finish_reason: str = "stop"
    """`stop` (end of turn or a stop sequence) or `length` (ran into max_tokens)."""
    started: float = 0.0
    """time.monotonic() when generation began (after waiting for the model)."""
    first_token: float | None = None
    finished: float = 0.0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


class Engine:
    """Loads the models at `load()` (blocking: run it in a thread), then generates."""

    def __init__(self, config: ServeConfig) -> None:
        self.config = config
        self.model: Any = None
        self.tokenizer: Any = None
        base = ModelState(config.base_model_name, adapter=False)
        adapters = [ModelState(a.name, adapter=True, source=a.source) for a in config.adapters]
        self.states = {s.name: s for s in (base, *adapters)}
        self._lock = asyncio.Lock()

    @property
    def base_name(self) -> str:
        return self.config.base_model_name

    @property
    def adapter_names(self) -> list[str]:
        return [a.name for a in self.config.adapters]

    @property
    def loaded(self) -> set[str]:
        return {name for name, state in self.states.items() if state.loaded}

    @property
    def ready(self) -> bool:
        return all(state.loaded for state in self.states.values())

    def load(self) -> None:
        """Load the base model, then every adapter; failures are kept in `states`."""
        log.info("loading %s from %s", self.base_name, self.config.base_model_path)
        try:
            model, tokenizer = load_models(self.config, self.states)
        except LoadError as err:
            log.error("%s", err)
            return
        except Exception as err:  # a bug, or torch failing: shown by /readyz, not a crash
            log.exception("loading failed")
            for state in self.states.values():
                state.loaded, state.error = False, state.error or f"loading failed: {err}"
            return
        self.model, self.tokenizer = model, tokenizer
        log.info("loaded: %s", ", ".join(sorted(self.loaded)))

    def require(self, name: str) -> None:
        """Raise UnknownModel or NotLoaded unless `name` can answer now."""
        state = self.states.get(name)
        if state is None:
            raise UnknownModel(name)
        if not state.loaded or self.model is None:
            why = f": {state.error}" if state.error else " (still loading)"
            raise NotLoaded(f"the model '{name}' is not loaded{why}")

    @contextlib.contextmanager
    def _selected(self, name: str) -> Iterator[None]:
        """Make `name` (the base or an adapter) the model that answers."""
        if name != self.base_name:
            self.model.set_adapter(name)
            yield
        elif any(self.states[a].loaded for a in self.adapter_names):
            with self.model.disable_adapter():
                yield
        else:
            yield

    def _generator(self) -> Any:
        """What to call generate() on. LoRA layers sit inside the base model and follow the
        selected adapter, so the base generates for any of them, without PeftModel's
        per-step wrapper (prompt-learning adapters, which need it, are refused at load)."""
        get_base = getattr(self.model, "get_base_model", None)
        return get_base() if get_base is not None else self.model

    def _limit(self, sampling: Sampling) -> int:
        return min(sampling.max_tokens, self.config.max_new_tokens)

    def _generate_kwargs(self, sampling: Sampling, tokens: TokenStream) -> dict[str, Any]:
        limit = self._limit(sampling)
        kwargs: dict[str, Any] = {"max_new_tokens": limit, "streamer": tokens}
        if tokens.decoding:  # streamed or with stop sequences: it can be cut short
            kwargs["stopping_criteria"] = StoppingCriteriaList([Cancelled(tokens)])
        if sampling.temperature <= 0:
            kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        else:
            kwargs.update(
                do_sample=True, temperature=sampling.temperature, top_p=sampling.top_p, top_k=0
            )
        if sampling.ignore_eos:
            kwargs["min_new_tokens"] = limit
        if self.tokenizer.pad_token_id is None:
            kwargs["pad_token_id"] = self.tokenizer.eos_token_id
        if sampling.seed is not None:
            torch.manual_seed(sampling.seed)
        return kwargs

    def _finish_reason(self, tokens: TokenStream, sampling: Sampling) -> str:
        if tokens.stopped:
            return "stop"
        eos = self.model.generation_config.eos_token_id
        eos_ids = set(eos if isinstance(eos, list) else [eos])
        ran_out = len(tokens.ids) >= self._limit(sampling)
        return "length" if ran_out and tokens.last_token not in eos_ids else "stop"

    def _run(
        self, model: str, messages: list[Message], sampling: Sampling, tokens: TokenStream
    ) -> Completion:
        """One generation, in a worker thread."""
        prompt = self.tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=True
        )
        encoded = self.tokenizer(prompt, return_tensors="pt", add_special_tokens=False)
        inputs = {k: v.to(self.model.device) for k, v in encoded.items()}
        done = Completion(prompt_tokens=int(inputs["input_ids"].shape[-1]))
        done.started = time.monotonic()
        with self._selected(model), torch.inference_mode():
            self._generator().generate(**inputs, **self._generate_kwargs(sampling, tokens))
        done.finished = time.monotonic()
        done.text = tokens.final_text()
        done.completion_tokens = len(tokens.ids)
        done.first_token = tokens.first_token_at
        done.finish_reason = self._finish_reason(tokens, sampling)
        return done

    async def complete(self, model: str, messages: list[Message], sampling: Sampling) -> Completion:
        self.require(model)
        tokens = TokenStream(self.tokenizer, sampling.stop)
        async with self._lock:
            return await asyncio.to_thread(self._run, model, messages, sampling, tokens)

    async def stream(
        self, model: str, messages: list[Message], sampling: Sampling, usage: Completion
    ) -> AsyncGenerator[str, None]:
        """Yield the completion's text piece by piece; `usage` is filled in at the end.
        Close the generator (`contextlib.aclosing`) to stop generating early."""
        self.require(model)
        loop = asyncio.get_running_loop()
        pieces: asyncio.Queue[str | None] = asyncio.Queue()

        def sink(piece: str | None) -> None:
            loop.call_soon_threadsafe(pieces.put_nowait, piece)

        tokens = TokenStream(self.tokenizer, sampling.stop, sink)

        def work() -> Completion:
            try:
                return self._run(model, messages, sampling, tokens)
            finally:
                sink(None)

        async with self._lock:
            future = loop.run_in_executor(None, work)
            try:
                while (piece := await pieces.get()) is not None:
                    yield piece
                done = await future
            finally:
                tokens.cancelled.set()
                with contextlib.suppress(Exception):
                    await future
        vars(usage).update(vars(done))
