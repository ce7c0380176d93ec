"""The base model and its LoRA adapters on vLLM's async engine, in this process.

Requests are batched continuously by vLLM (paged KV cache, prefix caching); each names its
adapter with a LoRARequest, so requests for the base and for different adapters share a
batch. Adapters are loaded and replaced while serving: a new version gets a new LoRA id and
takes new requests at once, and the old one is removed when its last request ends, so a
reload fails no request.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
import uuid
from collections.abc import AsyncGenerator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from phiops_workload.serving import AdapterConfig, ServeConfig

from phiops_serve import engine_args
from phiops_serve.loading import LoadError, ModelState, check_digest, lora_rank, weights_digest
from phiops_serve.zero_adapter import write_zero_adapter

log = logging.getLogger(__name__)

Message = dict[str, str]
ZERO_ADAPTER = "phiops-base-zero"


class UnknownModel(KeyError):
    """The request names a model this server does not serve."""


class NotLoaded(Exception):
    """The model is configured but not (yet, or ever) loaded; the message says which."""


class PromptRejected(ValueError):
    """The engine refused the request as given (e.g. a prompt longer than max_model_len)."""


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
    """time.monotonic() when the request went to the engine."""
    first_token: float | None = None
    finished: float = 0.0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass
class _Version:
    """One loaded version of an adapter, and the requests still using it."""

    request: Any  # vllm.lora.request.LoRARequest
    path: str
    sha256: str | None
    users: int = 0
    retired: bool = False


@dataclass
class _Adapters:
    current: dict[str, _Version] = field(default_factory=dict)
    ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))


class Engine:
    """`start()` brings vLLM up (tens of seconds; /healthz answers meanwhile), then serves."""

    def __init__(self, config: ServeConfig, work_dir: Path) -> None:
        self.config = config
        self.work_dir = work_dir
        self.llm: Any = None  # vllm.v1.engine.async_llm.AsyncLLM
        self.tokenizer: Any = None
        self.stop_token_ids: list[int] = []
        base = ModelState(config.base_model_name, adapter=False, path=config.base_model_path)
        adapters = [
            ModelState(a.name, adapter=True, source=a.source, path=a.path) for a in config.adapters
        ]
        self.states = {s.name: s for s in (base, *adapters)}
        self.settled = False
        """True once the engine is up and every startup adapter was tried."""
        self.max_lora_rank = 0
        self._adapters = _Adapters()
        self._base_adapter: Any = None
        self._changing = asyncio.Lock()

    @property
    def base_name(self) -> str:
        return self.config.base_model_name

    @property
    def adapter_names(self) -> list[str]:
        return [name for name, state in self.states.items() if state.adapter]

    @property
    def ready(self) -> bool:
        return self.settled and self.states[self.base_name].loaded

    # -- start and stop -------------------------------------------------------------------

    async def start(self) -> None:
        """Start vLLM, then load every configured adapter; failures land in `states`."""
        base = self.states[self.base_name]
        try:
            await self._start_engine()
        except Exception as err:  # bad model, out of memory, unsupported CPU...
            log.exception("the engine did not start")
            base.error = f"the engine did not start: {err}"
            for name in self.adapter_names:
                self.states[name].error = "not loaded: the base model did not load"
            self.settled = True
            return
        base.loaded, base.error = True, None
        log.info("engine up: %s (max_lora_rank %d)", self.base_name, self.max_lora_rank)
        for adapter in self.config.adapters:
            with contextlib.suppress(LoadError):  # recorded in its state; the others serve
                await self.load_adapter(adapter)
        self.settled = True

    async def _start_engine(self) -> None:
        # Importing vLLM and transformers takes tens of seconds: never on the event loop,
        # which must keep answering /healthz (the liveness probe) meanwhile.
        kwargs, zero = await asyncio.to_thread(self._prepare)
        self.llm = await asyncio.to_thread(_build_engine, kwargs)
        if zero is not None:
            self._base_adapter = self._lora_request(ZERO_ADAPTER, str(zero))
            await self.llm.add_lora(self._base_adapter)

    def _prepare(self) -> tuple[dict[str, Any], Path | None]:
        """(vLLM's engine arguments, the zero adapter's folder on the CPU build). Loads the
        tokenizer and the end-of-turn ids; blocking."""
        from transformers import AutoConfig, AutoTokenizer, GenerationConfig
        from vllm.platforms import current_platform

        cpu = current_platform.is_cpu()
        hub: dict[str, Any] = {"revision": self.config.revision, "token": self._hub_token()}
        path = self.config.base_model_path
        self.tokenizer = AutoTokenizer.from_pretrained(path, **hub)
        self.stop_token_ids = _stop_token_ids(path, hub, GenerationConfig)
        ranks = []
        for adapter in self.config.adapters:
            try:  # a bad adapter is refused later, when loaded; it does not size the engine
                ranks.append(lora_rank(adapter.path))
            except LoadError:
                continue
        self.max_lora_rank = engine_args.lora_rank_limit(self.config, ranks)
        kwargs = engine_args.engine_kwargs(
            self.config,
            cpu=cpu,
            max_loras=engine_args.lora_slots(self.config, base_rides_adapter=cpu),
            max_lora_rank=self.max_lora_rank,
        )
        zero = None
        if cpu:
            model_config = AutoConfig.from_pretrained(path, **hub).to_dict()
            zero = write_zero_adapter(model_config, self.work_dir / ZERO_ADAPTER)
        return kwargs, zero

    def _hub_token(self) -> str | None:
        if not self.config.hub_token_file:
            return None
        try:
            return Path(self.config.hub_token_file).read_text().strip() or None
        except OSError as err:
            raise LoadError(f"cannot read the model hub token file: {err}") from err

    def shutdown(self) -> None:
        if self.llm is not None:
            self.llm.shutdown()
            self.llm = None

    # -- adapters ---------------------------------------------------------------------------

    def _lora_request(self, name: str, path: str) -> Any:
        from vllm.lora.request import LoRARequest

        ident = next(self._adapters.ids)
        # The name is unique per version: vLLM tells LoRA requests apart by name.
        return LoRARequest(lora_name=f"{name}@{ident}", lora_int_id=ident, lora_path=path)

    async def load_adapter(self, adapter: AdapterConfig) -> ModelState:
        """Load `adapter`, or its new version in place of the old one (which keeps serving
        until then). Raises LoadError; the state says why, and a previous version serves on."""
        if self.llm is None:
            raise LoadError("the engine is not running")
        async with self._changing:
            state = self.states.get(adapter.name)
            if state is None or not state.adapter:
                if state is not None:
                    raise LoadError(f"'{adapter.name}' is the base model's name")
                state = ModelState(adapter.name, adapter=True)
                self.states[adapter.name] = state
            state.source = adapter.source
            current = self._adapters.current.get(adapter.name)
            try:
                digest = await asyncio.to_thread(weights_digest, adapter.path)
                if current is not None and (current.path, current.sha256) == (adapter.path, digest):
                    state.error = None
                    return state  # already serving exactly this
                check_digest(adapter, digest)
                rank = lora_rank(adapter.path)
                if rank > self.max_lora_rank:
                    raise LoadError(
                        f"LoRA rank {rank} is above this engine's max_lora_rank "
                        f"{self.max_lora_rank}; raise spec.engine.maxLoraRank (the pods restart)"
                    )
                request = self._lora_request(adapter.name, adapter.path)
                await self._add_lora(request, adapter.path)
            except LoadError as err:
                state.error = str(err) + (
                    "; the previous version keeps serving" if current is not None else ""
                )
                state.loaded = current is not None
                if current is None:  # what was asked for, as the operator compares it
                    state.path, state.sha256 = adapter.path, adapter.sha256
                log.error("adapter %s: %s", adapter.name, state.error)
                raise LoadError(state.error) from None
            self._adapters.current[adapter.name] = _Version(request, adapter.path, digest)
            state.loaded, state.sha256, state.path, state.error = True, digest, adapter.path, None
            log.info("adapter %s loaded from %s", adapter.name, adapter.path)
            if current is not None:
                await self._retire(current)
            return state

    async def _add_lora(self, request: Any, path: str) -> None:
        try:
            added = await self.llm.add_lora(request)
        except Exception as err:  # vLLM's own checks: shapes, target modules, files
            raise LoadError(f"cannot load the adapter from {path!r}: {err}") from err
        if added is False:
            raise LoadError(f"the engine refused the adapter from {path!r}")

    async def unload_adapter(self, name: str) -> None:
        """Stop serving adapter `name`; requests already running finish on it."""
        async with self._changing:
            state = self.states.get(name)
            if state is None or not state.adapter:
                raise UnknownModel(name)
            del self.states[name]
            current = self._adapters.current.pop(name, None)
            if current is not None:
                await self._retire(current)
            log.info("adapter %s unloaded", name)

    async def _retire(self, version: _Version) -> None:
        version.retired = True
        if version.users == 0:
            await self._remove(version)

    async def _remove(self, version: _Version) -> None:
        try:
            await self.llm.remove_lora(version.request.lora_int_id)
        except Exception:  # it goes with the engine's LRU anyway
            log.warning("removing %s failed", version.request.lora_name, exc_info=True)

    # -- generation -------------------------------------------------------------------------

    def require(self, name: str) -> None:
        """Raise UnknownModel or NotLoaded unless `name` can answer now."""
        state = self.states.get(name)
        if state is None:
            raise UnknownModel(name)
        if not state.loaded or self.llm is None:
            why = f": {state.error}" if state.error else " (still loading)"
            raise NotLoaded(f"the model '{name}' is not loaded{why}")

    def _sampling_params(self, sampling: Sampling) -> Any:
        from vllm import SamplingParams
        from vllm.sampling_params import RequestOutputKind

        greedy = sampling.temperature <= 0
        return SamplingParams(
            max_tokens=min(sampling.max_tokens, self.config.max_new_tokens),
            temperature=0.0 if greedy else sampling.temperature,
            top_p=1.0 if greedy else sampling.top_p,
            seed=sampling.seed,
            stop=list(sampling.stop) or None,
            # vLLM's ignore_eos spares only EOS itself: the end-of-turn ids must go too.
            stop_token_ids=[] if sampling.ignore_eos else self.stop_token_ids,
            ignore_eos=sampling.ignore_eos,
            output_kind=RequestOutputKind.DELTA,
        )

    def prompt_ids(self, messages: list[Message]) -> list[int]:
        """The chat's prompt tokens. Raises PromptRejected when no token would fit after it
        (checked here so that a stream can still answer 400 before its headers)."""
        return self.checked(self.tokens(messages))

    def tokens(self, messages: list[Message]) -> list[int]:
        """The chat's prompt tokens, unchecked (the context fit tries several)."""
        text = self.tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=True
        )
        ids: list[int] = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        return ids

    def room(self, ids: list[int]) -> int | None:
        """Tokens the model's context has left after the prompt `ids`; None: no known limit."""
        limit = self.llm.model_config.max_model_len if self.llm is not None else None
        return None if limit is None else limit - len(ids)

    def checked(self, ids: list[int]) -> list[int]:
        left = self.room(ids)
        if left is not None and left <= 0:
            raise PromptRejected(
                f"the prompt has {len(ids)} tokens (system prompt and any retrieved context "
                f"included); this server takes at most {len(ids) + left} tokens of prompt and "
                "completion together"
            )
        return ids

    async def stream(
        self, model: str, ids: list[int], sampling: Sampling, usage: Completion
    ) -> AsyncGenerator[str, None]:
        """Yield the completion of the prompt `ids` (from `prompt_ids`) piece by piece;
        `usage` is filled in as it goes. Closing the generator (or cancelling its task)
        aborts the request in vLLM and frees its slot."""
        from vllm.exceptions import VLLMValidationError
        from vllm.inputs import TokensPrompt

        self.require(model)
        usage.prompt_tokens = len(ids)
        version = self._adapters.current.get(model)
        lora = version.request if version is not None else self._base_adapter
        if version is not None:
            version.users += 1
        usage.started = time.monotonic()
        try:
            outputs = self.llm.generate(
                TokensPrompt(prompt_token_ids=ids),
                self._sampling_params(sampling),
                f"chatcmpl-{uuid.uuid4().hex}",
                lora_request=lora,
            )
            try:
                async for output in outputs:
                    piece = output.outputs[0]
                    if piece.token_ids and usage.first_token is None:
                        usage.first_token = time.monotonic()
                    usage.completion_tokens += len(piece.token_ids)
                    usage.finish_reason = _finish_reason(piece.finish_reason)
                    if piece.text:
                        usage.text += piece.text
                        yield piece.text
            finally:
                await outputs.aclose()
        except (VLLMValidationError, ValueError) as err:
            if usage.first_token is None:
                raise PromptRejected(str(err)) from err
            raise
        finally:
            usage.finished = time.monotonic()
            if version is not None:
                version.users -= 1
                if version.retired and version.users == 0:
                    await self._remove(version)

    async def complete(self, model: str, ids: list[int], sampling: Sampling) -> Completion:
        done = Completion()
        async for _ in self.stream(model, ids, sampling, done):
            pass
        return done


def _finish_reason(reason: str | None) -> str:
    return "length" if reason == "length" else "stop"


def _stop_token_ids(path: str, hub: dict[str, Any], generation_config: Any) -> list[int]:
    """The model's end-of-turn tokens (Phi-3 ends a turn with <|end|>, not only EOS)."""
    try:
        config = generation_config.from_pretrained(path, **hub)
    except Exception:  # no generation_config.json: vLLM's EOS alone
        return []
    eos = config.eos_token_id
    if eos is None:
        return []
    return [int(e) for e in (eos if isinstance(eos, list) else [eos])]


def _build_engine(kwargs: dict[str, Any]) -> Any:
    """vLLM's AsyncLLM (blocking: it starts the engine process and loads the weights)."""
    from vllm.engine.arg_utils import AsyncEngineArgs
    from vllm.v1.engine.async_llm import AsyncLLM

    return AsyncLLM.from_engine_args(AsyncEngineArgs(**kwargs))
