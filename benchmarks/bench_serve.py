"""Benchmark of the inference server on vLLM: ratios measured side by side in one run.

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/bench_serve.py [--model DIR] [--reps 5] [--quick]

1. aggregate generated tokens/s through the server (`python -m phiops_serve`, real HTTP,
   `openai.AsyncOpenAI` clients streaming, greedy, `max_tokens` fixed with `ignore_eos` so
   every answer has exactly that many tokens) at 1, 8 and 32 concurrent clients, against a
   serialised transformers `generate` loop over the same requests on the same weights in this
   process (batch 1, one request after another, as the server answered before vLLM): aim
   server at 32 clients >= 8x the loop; time to first token p50/p95 at 32 clients, seen by
   the clients;
2. 32 clients spread over the base and two LoRA adapters vs all 32 on the base (aim >= 0.5x);
3. the server at 32 clients vs vLLM's offline engine (`vllm.LLM.generate`, in a process of
   its own) given the same prompt token ids, the server's own SamplingParams and engine
   settings, all 32 prompts at once (aim >= 0.9x); the offline engine also runs the base
   without the zero adapter, which prices that CPU workaround (zero_adapter.py);
4. time to first token with retrieval vs without at the same final prompt, 8 concurrent
   clients: a second server, identical but without retrieval, is sent the very messages the
   retrieval server builds (prompt token counts checked equal pair by pair) (aim <= 1.15x);
5. `POST /v1/retrieve` latency p50/p95, dense and hybrid (the real all-MiniLM-L6-v2 and a
   real milvus-lite server holding the test handbook plus generated documents).

Without `--model`, the model is a random-weight Phi-3 built like the tests' (`--layers`,
`--hidden`; 2 and 64 by default, heads of 32 dimensions, as vLLM's CPU attention needs) with
two random LoRA adapters; with `--model DIR`, adapters are made for it the same way. Each
figure is the median of `--reps` repetitions; within a repetition the sides run one after
another (never two engines generating at once) and their order flips every repetition, so a
busy neighbour on the machine hits every side alike; each RATIO is the median of the
repetition-by-repetition ratios. Every request of a run has a prompt of its own that no run
before used, so no side profits from another's prefix cache. `--quick` is a smoke test of
the code path (1 repetition, 8 requests of 16 tokens); its figures mean nothing.

Every process started here (the servers and their vLLM processes, the offline engine, the
milvus-lite server) is stopped on the way out, errors, Ctrl-C and SIGTERM included.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import itertools
import json
import os
import platform
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import IO, Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch
from bench_embed import PLACES, PRODUCTS, TOPICS, document, free_port, job, start_store
from openai import AsyncOpenAI, OpenAI
from phiops_serve.engine import Engine
from phiops_serve.engine_args import engine_environment
from phiops_serve.rag import grounded_messages
from phiops_workload.serving import AdapterConfig, EngineConfig, RetrievalConfig, ServeConfig

HANDBOOK = Path(__file__).resolve().parents[1] / "tests" / "embed_fixtures" / "handbook"
BASE, ADAPTER_A, ADAPTER_B = "phi-3-bench", "expert-a", "expert-b"
SYSTEM = "You are the Acme support assistant."
QUESTIONS = [
    "What is the return window for unused items?",
    "How long does delivery to Norway take?",
    "Does the warranty cover broken zippers?",
    "Which carrier ships tents?",
    "When is the Amsterdam store open on Sunday?",
    "How do I reset my password?",
    "Can I exchange a jacket for another colour?",
    "Is the sleeping bag rated for winter camping?",
]
READY_SECONDS = 600
STOP_SECONDS = 30
SETTLE_SECONDS = 2.0
Messages = list[dict[str, str]]


# -- processes: every one started is stopped, whatever happens ----------------------------------


# Run first in every child: SIGTERM it when the benchmark dies, even by SIGKILL (a flag that
# survives exec), then exec the real command. Not a preexec_fn: this process has threads.
ORPHAN_GUARD = (
    "import ctypes, os, signal, sys; ctypes.CDLL(None).prctl(1, signal.SIGTERM); "
    "os.getppid() == int(sys.argv[1]) or sys.exit('the benchmark is gone'); "
    "os.execv(sys.executable, [sys.executable, *sys.argv[2:]])"
)


def spawn(arguments: list[str], log: IO[bytes], **kwargs: Any) -> subprocess.Popen[bytes]:
    """`python ARGUMENTS` in a session of its own (its vLLM processes join its process
    group), so `stop` reaches them all and a Ctrl-C on the terminal reaches only the
    benchmark, which stops them."""
    guard = [sys.executable, "-c", ORPHAN_GUARD, str(os.getpid())]
    return subprocess.Popen(
        [*guard, *arguments],
        stdout=kwargs.pop("stdout", log),
        stderr=log,
        start_new_session=True,
        **kwargs,
    )


_stopped: set[int] = set()


def stop(process: subprocess.Popen[bytes], grace: float = STOP_SECONDS) -> None:
    """SIGTERM to the leader (the server shuts vLLM down itself), then SIGKILL to whatever is
    left of its process group, vLLM's processes of a leader that died early included. The
    leader is reaped last: until then its group id cannot be reused."""
    if process.pid in _stopped:
        return
    _stopped.add(process.pid)
    if process.returncode is None:  # not reaped: the pid is still ours
        os.kill(process.pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while process.returncode is None and time.monotonic() < deadline:
        try:
            if os.waitid(os.P_PID, process.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT):
                break
        except ChildProcessError:
            break
        time.sleep(0.1)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()


def _raise_interrupt(signum: int, _frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def get(url: str) -> tuple[int, Any]:
    try:
        with urllib.request.urlopen(url) as response:
            return response.status, json.load(response)
    except urllib.error.HTTPError as err:
        return err.code, json.load(err)


@dataclass
class Server:
    """`python -m phiops_serve --config serve.json` as the pod runs it, on free ports."""

    name: str
    url: str
    process: subprocess.Popen[bytes]
    log: Path

    @classmethod
    def start(cls, config: ServeConfig, work: Path, name: str, stack: Any) -> Server:
        port, admin = free_port(), free_port()
        changes = {"host": "127.0.0.1", "port": port, "admin_port": admin}
        config = config.model_copy(update={**changes, "work_dir": str(work / f"{name}-work")})
        path = work / f"{name}.json"
        path.write_text(config.model_dump_json())
        log = work / f"{name}.log"
        with log.open("wb") as output:
            process = spawn(["-m", "phiops_serve", "--config", str(path)], output)
        stack.callback(stop, process)
        return cls(name, f"http://127.0.0.1:{port}", process, log)

    def wait_ready(self) -> None:
        deadline = time.monotonic() + READY_SECONDS
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"the {self.name} server exited; see {self.log}")
            with contextlib.suppress(OSError):
                if get(f"{self.url}/readyz")[0] == 200:
                    return
            if time.monotonic() > deadline:
                raise RuntimeError(f"the {self.name} server was not ready in time; see {self.log}")
            time.sleep(0.5)

    def searches(self) -> tuple[float, float]:
        """(count, seconds) of the knowledge base searches the server has made."""
        from prometheus_client.parser import text_string_to_metric_families

        with urllib.request.urlopen(f"{self.url}/metrics") as response:
            text = response.read().decode()
        found = {
            sample.name: sample.value
            for family in text_string_to_metric_families(text)
            for sample in family.samples
            if sample.name.startswith("phiops_serve_retrieval_duration_seconds_")
        }
        prefix = "phiops_serve_retrieval_duration_seconds_"
        return found.get(prefix + "count", 0.0), found.get(prefix + "sum", 0.0)

    def binding(self) -> str:
        """vLLM's OpenMP thread binding, as its log says."""
        for line in self.log.read_text(errors="replace").splitlines():
            if "local_rank=0, core ids=" in line:
                return "core ids " + line.split("core ids=", 1)[1].strip()
        return "binding not logged"


# The offline engine, in a process of its own (`python -c`: vLLM's spawned processes have no
# main module to re-import). Commands are JSON lines on stdin; answers go to a copy of the
# original stdout, and everything else (vLLM's logs, its processes') to the log.
OFFLINE_WORKER = r"""
import json, os, sys, time
answers = os.fdopen(os.dup(1), "w", buffering=1)
os.dup2(2, 1)

from pathlib import Path
from phiops_serve import engine_args
from phiops_serve.engine import Engine, Sampling
from phiops_serve.loading import lora_rank
from phiops_serve.zero_adapter import write_zero_adapter
from phiops_workload.serving import ServeConfig
from transformers import AutoConfig
from vllm import LLM
from vllm.engine.arg_utils import AsyncEngineArgs
from vllm.inputs import TokensPrompt
from vllm.lora.request import LoRARequest
from vllm.platforms import current_platform
from vllm.sampling_params import RequestOutputKind
from vllm.usage.usage_lib import UsageContext


def main():
    config = ServeConfig.model_validate_json(Path(sys.argv[1]).read_text())
    work = Path(sys.argv[2])
    cpu = current_platform.is_cpu()
    # The engine arguments exactly as Engine._start_engine computes them...
    ranks = [lora_rank(adapter.path) for adapter in config.adapters]
    kwargs = engine_args.engine_kwargs(
        config,
        cpu=cpu,
        max_loras=engine_args.lora_slots(config, base_rides_adapter=cpu),
        max_lora_rank=engine_args.lora_rank_limit(config, ranks),
    )
    # ... and what AsyncLLM makes of those left unset (the LLM class has defaults of its own).
    served = AsyncEngineArgs(**kwargs).create_engine_config(UsageContext.ENGINE_CONTEXT)
    scheduler = served.scheduler_config
    kwargs["max_num_seqs"] = scheduler.max_num_seqs
    kwargs["max_num_batched_tokens"] = scheduler.max_num_batched_tokens
    kwargs["gpu_memory_utilization"] = served.cache_config.gpu_memory_utilization
    llm = LLM(**kwargs)
    zero = None
    if cpu:
        model_config = AutoConfig.from_pretrained(config.base_model_path).to_dict()
        path = write_zero_adapter(model_config, work / "phiops-base-zero")
        zero = LoRARequest(lora_name="phiops-base-zero@1", lora_int_id=1, lora_path=str(path))
    engine = Engine(config, work)  # its SamplingParams, never started
    engine.stop_token_ids = []
    settings = {
        "cpu": cpu,
        "max_num_seqs": scheduler.max_num_seqs,
        "max_num_batched_tokens": scheduler.max_num_batched_tokens,
        "max_loras": kwargs["max_loras"],
        "max_lora_rank": kwargs["max_lora_rank"],
        "enable_prefix_caching": kwargs["enable_prefix_caching"],
        "enforce_eager": kwargs["enforce_eager"],
        "kv_cache_gib": os.environ.get("VLLM_CPU_KVCACHE_SPACE"),
    }
    answers.write(json.dumps({"ready": settings}) + "\n")
    for line in sys.stdin:
        ask = json.loads(line)
        sampling = Sampling(ask["max_tokens"], temperature=0.0, ignore_eos=True)
        params = engine._sampling_params(sampling)
        params.output_kind = RequestOutputKind.FINAL_ONLY  # what LLM.generate collects
        prompts = [TokensPrompt(prompt_token_ids=ids) for ids in ask["prompts"]]
        lora = zero if ask["zero_adapter"] else None
        started = time.perf_counter()
        outputs = llm.generate(prompts, params, lora_request=lora, use_tqdm=False)
        seconds = time.perf_counter() - started
        tokens = sum(len(output.outputs[0].token_ids) for output in outputs)
        answers.write(json.dumps({"tokens": tokens, "seconds": seconds}) + "\n")


if __name__ == "__main__":
    main()
"""


@dataclass
class Offline:
    """vLLM's offline engine on the server's settings, idle between commands."""

    process: subprocess.Popen[bytes]
    log: Path
    settings: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def start(cls, config: ServeConfig, work: Path, stack: Any) -> Offline:
        folder = work / "offline-work"
        for sub in ("vllm-cache", "ipc", "tmp"):
            (folder / sub).mkdir(parents=True, exist_ok=True)
        path = work / "offline.json"
        path.write_text(config.model_dump_json())
        env = {**os.environ, **engine_environment(config, folder)}
        log = work / "offline.log"
        with log.open("wb") as output:
            process = spawn(
                ["-c", OFFLINE_WORKER, str(path), str(folder)],
                output,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                env=env,
            )
        stack.callback(stop, process)
        return cls(process, log)

    def _answer(self) -> dict[str, Any]:
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError(f"the offline engine exited; see {self.log}")
        answer: dict[str, Any] = json.loads(line)
        return answer

    def wait_ready(self) -> None:
        self.settings = self._answer()["ready"]

    def generate(self, prompts: list[list[int]], max_tokens: int, zero_adapter: bool) -> Run:
        assert self.process.stdin is not None
        ask = {"prompts": prompts, "max_tokens": max_tokens, "zero_adapter": zero_adapter}
        self.process.stdin.write((json.dumps(ask) + "\n").encode())
        self.process.stdin.flush()
        answer = self._answer()
        return Run(answer["tokens"], answer["seconds"])

    def close(self) -> None:
        if self.process.stdin is not None:
            self.process.stdin.close()  # the worker's loop ends; vLLM shuts down
        stop(self.process)


# -- set-up -------------------------------------------------------------------------------------


def make_models(args: argparse.Namespace, work: Path) -> tuple[str, str, str]:
    """(base, adapter a, adapter b) folders; adapters start non-zero, as in the tests."""
    from peft import LoraConfig, get_peft_model
    from phiops_finetune.tiny_model import make_tiny_model
    from transformers import AutoModelForCausalLM

    if args.model:
        base = args.model
    else:
        heads = max(1, args.hidden // 32)  # vLLM's CPU attention needs heads of >= 32
        base = str(
            make_tiny_model(work / "base", layers=args.layers, hidden=args.hidden, heads=heads)
        )
    adapters = []
    for seed, name in ((1, "a"), (2, "b")):
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
        lora = LoraConfig(
            r=8,
            lora_alpha=32,
            target_modules=["qkv_proj", "o_proj"],
            init_lora_weights=False,
            task_type="CAUSAL_LM",
        )
        get_peft_model(model, lora).save_pretrained(str(work / name))
        adapters.append(str(work / name))
    return base, adapters[0], adapters[1]


def fill_knowledge_base(uri: str, work: Path, generated: int) -> tuple[str, int]:
    """The test handbook plus `generated` documents, embedded by the real sync code with BM25
    beside the vectors; returns (alias, chunks)."""
    from phiops_embed.embedder import SentenceTransformerEmbedder
    from phiops_embed.sync import run_sync
    from phiops_workload.knowledge import EmbeddingConfig

    docs = work / "docs"
    shutil.copytree(HANDBOOK, docs)
    rng = random.Random(7)
    for i in range(generated):
        (docs / f"generated-{i:04d}.md").write_text(document(rng, 3))
    config = job(uri, docs, EmbeddingConfig(), "AUTOINDEX")
    config = config.model_copy(update={"store": config.store.model_copy(update={"hybrid": True})})
    report = run_sync(config, SentenceTransformerEmbedder())
    return config.store.alias, report.figures.chunks


# -- the workload ---------------------------------------------------------------------------------

_runs = itertools.count(1)


def chat(prompt: str) -> Messages:
    return [{"role": "user", "content": prompt}]


def fresh_prompts(n: int) -> list[str]:
    """`n` prompts no run used before: a ticket number first, so even the prefix cache's
    first blocks differ from any earlier run's (the shared system prompt aside)."""
    run = next(_runs)
    return [f"Ticket {run}-{i}: {QUESTIONS[i % len(QUESTIONS)]}" for i in range(n)]


def rag_questions(rng: random.Random, n: int) -> list[str]:
    """Questions over the generated documents' vocabulary: their retrieved contexts differ."""
    return [
        f"What does the {rng.choice(PLACES)} office say about {rng.choice(TOPICS)} for a "
        f"{rng.choice(PRODUCTS).replace('-', ' ')}?"
        for _ in range(n)
    ]


@dataclass
class Run:
    """One run of one side: `tokens` generated in `seconds` of wall time."""

    tokens: int
    seconds: float
    first_tokens: list[float] = field(default_factory=list)
    """Each request's seconds from sending to its first text, seen by the client."""
    prompt_tokens: list[int] = field(default_factory=list)
    """Each request's prompt tokens as the server counted them (its `usage`)."""
    cpu: float = 0.0
    """CPU seconds this process (the clients) spent in the run."""

    @property
    def rate(self) -> float:
        return self.tokens / self.seconds


async def _one(
    client: AsyncOpenAI, model: str, messages: Messages, max_tokens: int
) -> tuple[float, int, int]:
    """(seconds to the first chunk with text, prompt tokens, completion tokens) of one
    streamed answer; an answer without any text (a random model may pick only special
    tokens, which decode to nothing) counts its end."""
    sent = time.perf_counter()
    stream = await client.chat.completions.create(
        model=model,
        messages=messages,  # type: ignore[arg-type]
        max_tokens=max_tokens,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
        extra_body={"ignore_eos": True},
    )
    first, usage = 0.0, None
    async for chunk in stream:
        if not first and chunk.choices and chunk.choices[0].delta.content:
            first = time.perf_counter() - sent
        if chunk.usage is not None:
            usage = chunk.usage
    assert usage is not None, "no usage in the stream"
    return first or time.perf_counter() - sent, usage.prompt_tokens, usage.completion_tokens


async def _clients(
    url: str, requests: list[tuple[str, Messages]], concurrency: int, max_tokens: int
) -> Run:
    """`concurrency` clients taking the requests in turn, each sending its next as soon as
    its answer ends."""
    results: list[tuple[float, int, int]] = [(0.0, 0, 0)] * len(requests)
    queue = iter(enumerate(requests))

    async with AsyncOpenAI(
        base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=600
    ) as client:

        async def worker() -> None:
            for i, (model, messages) in queue:
                results[i] = await _one(client, model, messages, max_tokens)

        cpu, started = time.process_time(), time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
    tokens = [completion for _, _, completion in results]
    assert tokens == [max_tokens] * len(requests), f"answers of other lengths: {set(tokens)}"
    first = [s for s, _, _ in results]
    prompt = [count for _, count, _ in results]
    return Run(sum(tokens), seconds, first, prompt, cpu)


def through_server(
    server: Server, requests: list[tuple[str, Messages]], concurrency: int, max_tokens: int
) -> Run:
    return asyncio.run(_clients(server.url, requests, concurrency, max_tokens))


def serial_loop(model: Any, tokenizer: Any, prompts: list[list[int]], max_tokens: int) -> Run:
    """transformers `generate`, one request after another, batch 1 (the old server's way)."""
    tokens, started = 0, time.perf_counter()
    with torch.inference_mode():
        for ids in prompts:
            inputs = torch.tensor([ids])
            output = model.generate(
                input_ids=inputs,
                attention_mask=torch.ones_like(inputs),
                max_new_tokens=max_tokens,
                min_new_tokens=max_tokens,
                do_sample=False,
                pad_token_id=tokenizer.pad_token_id,
            )
            tokens += int(output.shape[-1] - inputs.shape[-1])
    return Run(tokens, time.perf_counter() - started)


# -- figures ------------------------------------------------------------------------------------


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def show(label: str, runs: list[Run]) -> None:
    rates = [run.rate for run in runs]
    each = ", ".join(f"{r:.0f}" for r in rates)
    print(
        f"{label:<40}{statistics.median(rates):9.1f} tokens/s"
        f"  ({runs[0].tokens} tokens per run; runs: {each})"
    )


def paired(label: str, top: list[float], bottom: list[float], aim: str) -> float:
    """The median of the repetition-by-repetition ratios: both sides of a pair ran in the
    same repetition, so a neighbour's load cancels out of the ratio far better than out of
    two separate medians."""
    ratios = [t / b for t, b in zip(top, bottom, strict=True)]
    each = ", ".join(f"{r:.3f}" for r in ratios)
    ratio = statistics.median(ratios)
    print(f"RATIO {label:<34}{ratio:.3f}  ({aim}; runs: {each})")
    return ratio


def latency(label: str, values: list[float]) -> str:
    p50, p95 = percentile(values, 50) * 1000, percentile(values, 95) * 1000
    line = f"p50 {p50:7.1f} ms, p95 {p95:7.1f} ms ({len(values)} requests)"
    print(f"{label:<40}{line}")
    return line


def in_turn(rep: int, sides: list[tuple[str, Callable[[], Run]]]) -> dict[str, Run]:
    """Each side once, in the given order on even repetitions and reversed on odd ones,
    each after a pause: vLLM's worker spins for a second after its last step."""
    done = {}
    for name, call in sides if rep % 2 == 0 else sides[::-1]:
        time.sleep(SETTLE_SECONDS)
        done[name] = call()
    return done


def machine() -> str:
    cpu = platform.processor() or "cpu"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return f"{os.cpu_count()} cores ({cpu}), {gpu}"


# -- the benchmark ------------------------------------------------------------------------------


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--model", help="a model folder (default: a random tiny Phi-3)")
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--max-tokens", type=int, default=64, help="tokens of every answer")
    parser.add_argument(
        "--clients", type=int, nargs="+", default=[1, 8, 32], help="concurrent clients (1.)"
    )
    parser.add_argument("--rag-clients", type=int, default=8, help="concurrent clients (4.)")
    parser.add_argument("--rag-requests", type=int, default=32, help="requests per run (4.)")
    parser.add_argument("--kb-docs", type=int, default=60, help="generated documents in the KB")
    parser.add_argument("--queries", type=int, default=200, help="retrieval latency samples")
    parser.add_argument("--kv-cache-gib", type=int, default=1, help="engine.kv_cache_space_gib")
    parser.add_argument("--max-model-len", type=int, default=4096, help="engine.max_model_len")
    parser.add_argument(
        "--threads", type=int, default=1, help="torch threads of the transformers loop"
    )
    parser.add_argument(
        "--keep", action="store_true", help="keep the work folder (models, configs, logs)"
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="smoke test: 1 repetition, 1 and 8 clients, 16 tokens, a small knowledge base",
    )
    args = parser.parse_args()
    if args.quick:
        args.reps, args.max_tokens, args.clients = 1, 16, [1, 8]
        args.rag_clients, args.rag_requests, args.kb_docs, args.queries = 4, 8, 10, 20
    args.clients = sorted(set(args.clients))
    return args


def main() -> None:
    args = parse_args()
    signal.signal(signal.SIGTERM, _raise_interrupt)
    signal.signal(signal.SIGHUP, _raise_interrupt)
    work = Path(tempfile.mkdtemp(prefix="bench-serve-"))
    keep = args.keep
    try:
        with contextlib.ExitStack() as stack:  # stops every process started, in reverse
            benchmark(args, work, stack)
    except KeyboardInterrupt:
        print("\ninterrupted; every process started here was stopped", file=sys.stderr)
        sys.exit(130)
    except BaseException:
        keep = True  # the logs the error points to
        raise
    finally:
        if keep:
            print(f"work folder kept (logs, configs, models): {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)


Summary = list[tuple[str, str, str]]


def verdict(ok: bool) -> str:
    return "met" if ok else "MISSED"


def benchmark(args: argparse.Namespace, work: Path, stack: contextlib.ExitStack) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(args.threads)
    print(f"machine: {machine()}")
    base, adapter_a, adapter_b = make_models(args, work)
    config = ServeConfig(
        base_model_path=base,
        base_model_name=BASE,
        adapters=[
            AdapterConfig(name=ADAPTER_A, path=adapter_a),
            AdapterConfig(name=ADAPTER_B, path=adapter_b),
        ],
        max_new_tokens=args.max_tokens,
        dtype="float32",
        system_prompt=SYSTEM,
        max_concurrent_requests=max(64, *args.clients, args.rag_clients),
        # enforce_eager: on CPU vLLM compiles nothing with LoRA enabled anyway.
        engine=EngineConfig(
            enforce_eager=True,
            kv_cache_space_gib=args.kv_cache_gib,
            max_model_len=args.max_model_len,
        ),
    )
    # Both start while the knowledge base fills: start-up is not measured.
    server = Server.start(config, work, "server", stack)
    offline = Offline.start(config, work, stack)
    store, uri = start_store(work / "milvus")
    stack.callback(stop_store, store)
    started = time.monotonic()
    alias, chunks = fill_knowledge_base(uri, work, args.kb_docs)
    kb_seconds = time.monotonic() - started
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(base)
    size = sum(p.numel() for p in model.parameters())
    server.wait_ready()
    offline.wait_ready()

    settings = offline.settings
    print(
        f"model: {args.model or f'random Phi-3, {args.layers} layers, hidden {args.hidden}'}"
        f" ({size / 1e6:.2f} M parameters), float32, greedy, {args.max_tokens} tokens per"
        f" answer (ignore_eos), {max(args.clients)} requests per run, {args.reps} runs"
    )
    print(
        f"engine (the server's and the offline one's): vLLM on"
        f" {'CPU' if settings['cpu'] else 'GPU'}, max_num_seqs {settings['max_num_seqs']},"
        f" max_num_batched_tokens {settings['max_num_batched_tokens']}, prefix caching"
        f" {'on' if settings['enable_prefix_caching'] else 'off'}, enforce_eager"
        f" {settings['enforce_eager']}, max_loras {settings['max_loras']}, max_lora_rank"
        f" {settings['max_lora_rank']}, KV cache {settings['kv_cache_gib']} GiB"
    )
    print(
        f"threads: vLLM's worker {server.binding()}; the transformers loop"
        f" {torch.get_num_threads()} torch thread(s)"
    )
    print(
        f"knowledge base: {chunks} chunks (handbook + {args.kb_docs} generated documents),"
        f" embedded in {kb_seconds:.0f} s"
    )

    summary: Summary = []
    engine = Engine(config, work)  # never started: the server's own prompt token ids
    engine.tokenizer = tokenizer
    generation(args, server, offline, model, tokenizer, engine, summary)
    offline.close()  # before the second server starts: never two engines at work
    del model
    gc.collect()

    retrieval = RetrievalConfig(uri=uri, collection=alias)
    rag = Server.start(config.model_copy(update={"retrieval": retrieval}), work, "rag", stack)
    rag.wait_ready()
    grounding(args, server, rag, summary)

    note = " (--quick: a smoke test of the code; its figures mean nothing)" if args.quick else ""
    print(f"\nsummary{note}")
    width = max(len(aim) for aim, _, _ in summary)
    for aim, measured, judged in summary:
        print(f"  {aim:<{width}}  {measured:<50}  {judged}")


def generation(
    args: argparse.Namespace,
    server: Server,
    offline: Offline,
    model: Any,
    tokenizer: Any,
    engine: Engine,
    summary: Summary,
) -> None:
    """Sections 1 to 3: throughput through the server, the loop and the offline engine."""
    top, tokens = max(args.clients), args.max_tokens
    models = [BASE, ADAPTER_A, ADAPTER_B]

    def ids(prompts: list[str]) -> list[list[int]]:
        return [engine.prompt_ids(grounded_messages(chat(p), [], SYSTEM, None)) for p in prompts]

    def on_base(prompts: list[str]) -> list[tuple[str, Messages]]:
        return [(BASE, chat(p)) for p in prompts]

    def spread(prompts: list[str]) -> list[tuple[str, Messages]]:
        return [(models[i % len(models)], chat(p)) for i, p in enumerate(prompts)]

    # Warm-up: every model through the server (the adapters into their slots), both offline
    # variants, the loop.
    through_server(server, spread(fresh_prompts(top)), top, 4)
    for zero in (True, False):
        offline.generate(ids(fresh_prompts(top)), 4, zero)
    serial_loop(model, tokenizer, ids(fresh_prompts(1)), 4)

    runs: dict[str, list[Run]] = {}
    for rep in range(args.reps):
        # The loop and the offline engine get the very prompt ids of the server at `top`.
        shared = fresh_prompts(top)
        shared_ids = ids(shared)
        sides: list[tuple[str, Callable[[], Run]]] = [
            ("loop", partial(serial_loop, model, tokenizer, shared_ids, tokens))
        ]
        for n in args.clients:
            prompts = shared if n == top else fresh_prompts(top)
            sides.append((f"c{n}", partial(through_server, server, on_base(prompts), n, tokens)))
        sides += [
            ("zero", partial(offline.generate, shared_ids, tokens, True)),
            ("none", partial(offline.generate, shared_ids, tokens, False)),
            ("mixed", partial(through_server, server, spread(fresh_prompts(top)), top, tokens)),
        ]
        done = in_turn(rep, sides)
        read = done[f"c{top}"].prompt_tokens
        assert read == [len(i) for i in shared_ids], "the server read other prompt token ids"
        for name, one in done.items():
            runs.setdefault(name, []).append(one)

    def rates(name: str) -> list[float]:
        return [one.rate for one in runs[name]]

    print(
        f"\n1. throughput: the server at {', '.join(map(str, args.clients))} concurrent"
        " streaming clients vs a serial transformers generate loop"
    )
    show("transformers generate, serial, batch 1", runs["loop"])
    for n in args.clients:
        show(f"server, {n} client{'s' if n > 1 else ''}", runs[f"c{n}"])
    first = [s for one in runs[f"c{top}"] for s in one.first_tokens]
    first_line = latency(f"  time to first token, {top} clients", first)
    cpu, wall = (sum(getattr(one, f) for one in runs[f"c{top}"]) for f in ("cpu", "seconds"))
    print(f"  the {top} clients (this process) took {cpu:.2f} CPU s of those runs' {wall:.2f} s")
    ratio = paired(f"server@{top} / serial loop", rates(f"c{top}"), rates("loop"), "aim >= 8")
    summary.append((f"server@{top} / serial loop >= 8x", f"{ratio:.2f}x", verdict(ratio >= 8)))
    summary.append((f"time to first token, {top} clients", first_line, ""))
    low = args.clients[0]
    paired(f"server@{low} / serial loop", rates(f"c{low}"), rates("loop"), "no aim")

    print(f"\n2. adapters: {top} clients over the base and two adapters vs all on the base")
    show(f"server, {top} clients, all on the base", runs[f"c{top}"])
    show(f"server, {top} clients, base + 2 adapters", runs["mixed"])
    ratio = paired("base + 2 adapters / base", rates("mixed"), rates(f"c{top}"), "aim >= 0.5")
    summary.append(
        ("base + 2 adapters / base only >= 0.5x", f"{ratio:.3f}x", verdict(ratio >= 0.5))
    )

    print(f"\n3. the server vs vLLM's offline engine: {top} prompts at once, the same ids")
    show("offline LLM.generate, base (zero adapter)", runs["zero"])
    show("offline LLM.generate, base (no adapter)", runs["none"])
    show(f"server, {top} clients", runs[f"c{top}"])
    ratio = paired("server / offline", rates(f"c{top}"), rates("zero"), "aim >= 0.9")
    summary.append(("server / offline engine >= 0.9x", f"{ratio:.3f}x", verdict(ratio >= 0.9)))
    cost = paired("offline, zero adapter / none", rates("zero"), rates("none"), "no aim")
    summary.append(("offline, base via zero adapter / without", f"{cost:.3f}x", ""))


def grounding(args: argparse.Namespace, server: Server, rag: Server, summary: Summary) -> None:
    """Sections 4 and 5: time to first token with retrieval, retrieval latency."""
    client = OpenAI(base_url=f"{rag.url}/v1", api_key="unused", max_retries=0, timeout=600)
    rng = random.Random(11)

    def grounded(question: str) -> Messages:
        """The messages the retrieval server builds for `question` (same search, same
        defaults), for the server without retrieval."""
        hits = client.post("/retrieve", body={"query": question}, cast_to=object)["data"]
        return grounded_messages(chat(question), _hits(hits), SYSTEM, None)

    clients, tokens = args.rag_clients, args.max_tokens
    warm = rag_questions(rng, clients)
    through_server(rag, [(BASE, chat(q)) for q in warm], clients, 4)
    through_server(server, [(BASE, grounded(q)) for q in warm], clients, 4)
    with_rag: list[Run] = []
    without: list[Run] = []
    searches_before = rag.searches()
    for rep in range(args.reps):
        questions = rag_questions(rng, args.rag_requests)
        asked = [(BASE, chat(q)) for q in questions]
        given = [(BASE, grounded(q)) for q in questions]
        done = in_turn(
            rep,
            [
                ("rag", partial(through_server, rag, asked, clients, tokens)),
                ("plain", partial(through_server, server, given, clients, tokens)),
            ],
        )
        assert done["rag"].prompt_tokens == done["plain"].prompt_tokens, "the prompts differ"
        with_rag.append(done["rag"])
        without.append(done["plain"])
    count, seconds = (a - b for a, b in zip(rag.searches(), searches_before, strict=True))

    lengths = [n for one in with_rag for n in one.prompt_tokens]
    print(
        "\n4. time to first token with retrieval vs the same final prompt without,"
        f" {clients} clients, {args.rag_requests} requests per run"
    )
    print(f"{'prompt tokens':<40}{min(lengths)}..{max(lengths)} (the same both ways)")
    line = latency("with retrieval", [s for one in with_rag for s in one.first_tokens])
    latency("without (the prompt given)", [s for one in without for s in one.first_tokens])
    print(
        f"  the retrieval server's own count: {count:.0f} searches (query embedding + Milvus)"
        f" of {seconds / max(count, 1) * 1000:.1f} ms on average, one at a time"
    )
    ratio = paired(
        "p50 with / without",
        [percentile(one.first_tokens, 50) for one in with_rag],
        [percentile(one.first_tokens, 50) for one in without],
        "aim <= 1.15",
    )
    summary.append(
        ("time to first token, retrieval / none <= 1.15x", f"{ratio:.3f}x", verdict(ratio <= 1.15))
    )
    summary.append((f"time to first token with retrieval, {clients} clients", line, ""))

    print(f"\n5. retrieval latency, POST /v1/retrieve, top_k 4, {args.queries} queries")
    for hybrid in (False, True):
        latencies = []
        for i in range(args.queries):
            body = {"query": QUESTIONS[i % len(QUESTIONS)] + f" ({i})", "hybrid": hybrid}
            started = time.perf_counter()
            client.post("/retrieve", body=body, cast_to=object)
            latencies.append(time.perf_counter() - started)
        name = "hybrid (dense + BM25, RRF)" if hybrid else "dense"
        summary.append((f"retrieval latency, {name}", latency(name, latencies), ""))
    client.close()


def stop_store(store: subprocess.Popen[bytes]) -> None:
    store.terminate()
    try:
        store.wait(STOP_SECONDS)
    except subprocess.TimeoutExpired:
        store.kill()
        store.wait()


def _hits(data: list[dict[str, Any]]) -> list[Any]:
    from phiops_embed.retrieval import Hit

    return [Hit.model_validate(hit) for hit in data]


if __name__ == "__main__":
    main()
