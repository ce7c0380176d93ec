"""Benchmark of the inference server: ratios measured side by side in one run.

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/bench_serve.py [--model DIR] [--reps 5]

1. generation tokens/s through the server (`python -m phiops_serve`, real HTTP, the `openai`
   client, greedy, `max_tokens` fixed and `ignore_eos` so every answer has exactly that many
   tokens) vs a raw `model.generate` loop over the same prompts on the same model in this
   process (aim >= 0.95x);
2. the same through the server with requests alternating between two LoRA adapters vs all
   on one adapter (aim >= 0.90x);
3. time to first token with retrieval vs without at the same final prompt: the plain server
   gets the very messages the retrieval server builds (checked by their prompt token counts)
   (aim <= 1.15x);
4. retrieval latency p50/p95 of `POST /v1/retrieve` (the real all-MiniLM-L6-v2 and a real
   milvus-lite server holding the test handbook plus generated documents), dense and hybrid.

Without `--model`, the model is a random-weight Phi-3 built like the tests' (`--layers`,
`--hidden`; 2 and 64 by default) with two random LoRA adapters; with `--model DIR`, adapters
are made for it the same way. Each figure is the median of `--reps` repetitions; the runs of
each pair alternate, so a busy neighbour on the machine hits both sides alike.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch
from bench_embed import document, free_port, job, start_store
from openai import OpenAI
from phiops_serve.rag import grounded_messages
from phiops_workload.serving import AdapterConfig, RetrievalConfig, ServeConfig

HANDBOOK = Path(__file__).resolve().parents[1] / "tests" / "embed_fixtures" / "handbook"
BASE, ADAPTER_A, ADAPTER_B = "phi-3-bench", "expert-a", "expert-b"
SYSTEM = "You are the Acme support assistant."
PROMPTS = [
    "What is the return window for unused items?",
    "How long does delivery to Norway take?",
    "Does the warranty cover broken zippers?",
    "Which carrier ships tents?",
    "When is the Amsterdam store open on Sunday?",
    "How do I reset my password?",
    "Can I exchange a jacket for another colour?",
    "Is the sleeping bag rated for winter camping?",
]


# -- set-up -------------------------------------------------------------------------------------


def make_models(args: argparse.Namespace, work: Path) -> tuple[str, str, str]:
    """(base, adapter a, adapter b) folders; adapters start non-zero, as in the tests."""
    from peft import LoraConfig, get_peft_model
    from phiops_finetune.tiny_model import make_tiny_model
    from transformers import AutoModelForCausalLM

    base = args.model or str(make_tiny_model(work / "base", layers=args.layers, hidden=args.hidden))
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


def get(url: str) -> tuple[int, Any]:
    try:
        with urllib.request.urlopen(url) as response:
            return response.status, json.load(response)
    except urllib.error.HTTPError as err:
        return err.code, json.load(err)


@contextmanager
def serving(config: ServeConfig, work: Path, name: str) -> Iterator[OpenAI]:
    """`python -m phiops_serve` in a process of its own, as the pod runs it; its client once
    /readyz says ready."""
    port = free_port()
    path = work / f"{name}.json"
    path.write_text(config.model_copy(update={"host": "127.0.0.1", "port": port}).model_dump_json())
    log = (work / f"{name}.log").open("w")
    process = subprocess.Popen(
        [sys.executable, "-m", "phiops_serve", "--config", str(path)], stdout=log, stderr=log
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 300
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"the {name} server exited; see {work / name}.log")
            try:
                if get(f"{url}/readyz")[0] == 200:
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"the {name} server never became ready")
            time.sleep(0.2)
        yield OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=600)
    finally:
        process.terminate()
        process.wait(30)
        log.close()


# -- measurements ---------------------------------------------------------------------------------


def chat(prompt: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": prompt}]


def raw_generate(model: Any, tokenizer: Any, prompt: str, max_tokens: int) -> int:
    """Plain `model.generate` of one prompt; the tokens it generated."""
    text = tokenizer.apply_chat_template(chat(prompt), tokenize=False, add_generation_prompt=True)
    inputs = tokenizer(text, return_tensors="pt", add_special_tokens=False)
    with torch.inference_mode():
        output = model.generate(
            **inputs,
            max_new_tokens=max_tokens,
            min_new_tokens=max_tokens,
            do_sample=False,
            pad_token_id=tokenizer.pad_token_id,
        )
    return int(output.shape[-1] - inputs["input_ids"].shape[-1])


def served(client: OpenAI, model: str, prompt: str, max_tokens: int) -> int:
    """One prompt through the server; the tokens it generated."""
    completion = client.chat.completions.create(
        model=model,
        messages=chat(prompt),  # type: ignore[arg-type]
        max_tokens=max_tokens,
        temperature=0,
        extra_body={"ignore_eos": True},
    )
    assert completion.usage is not None
    return completion.usage.completion_tokens


def timed(call: Callable[[], int]) -> tuple[int, float]:
    started = time.perf_counter()
    tokens = call()
    return tokens, time.perf_counter() - started


def interleaved(
    reps: int, first: Callable[[str], int], second: Callable[[str], int]
) -> tuple[list[tuple[int, float]], list[tuple[int, float]]]:
    """Runs of every prompt for both sides, alternating prompt by prompt (a neighbour's load
    hits both alike); (tokens, seconds) of each run of each side."""
    a, b = [], []
    for _ in range(reps):
        runs = [[0, 0.0], [0, 0.0]]
        for prompt in PROMPTS:
            for side, call in ((0, first), (1, second)):
                tokens, seconds = timed(partial(call, prompt))
                runs[side][0] += tokens
                runs[side][1] += seconds
        a.append((int(runs[0][0]), float(runs[0][1])))
        b.append((int(runs[1][0]), float(runs[1][1])))
    return a, b


def server_loop(client: OpenAI, models: list[str], max_tokens: int) -> tuple[int, float]:
    """(generated tokens, seconds) through the server, prompt after prompt, the model of each
    request taken in turn from `models`."""
    tokens, started = 0, time.perf_counter()
    for i, prompt in enumerate(PROMPTS):
        tokens += served(client, models[i % len(models)], prompt, max_tokens)
    return tokens, time.perf_counter() - started


def first_token(client: OpenAI, model: str, messages: list[dict[str, str]]) -> tuple[float, int]:
    """(seconds to the first chunk with text, prompt tokens) of one streamed answer."""
    started = time.perf_counter()
    stream = client.chat.completions.create(
        model=model,
        messages=messages,  # type: ignore[arg-type]
        max_tokens=8,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
        extra_body={"ignore_eos": True},
    )
    seconds, prompt_tokens = 0.0, 0
    for chunk in stream:
        if not seconds and chunk.choices and chunk.choices[0].delta.content:
            seconds = time.perf_counter() - started
        if chunk.usage is not None:
            prompt_tokens = chunk.usage.prompt_tokens
    return seconds, prompt_tokens


def alternate(
    reps: int, first: Callable[[], tuple[int, float]], second: Callable[[], tuple[int, float]]
) -> tuple[list[tuple[int, float]], list[tuple[int, float]]]:
    a, b = [], []
    for _ in range(reps):
        a.append(first())
        b.append(second())
    return a, b


def rate(runs: list[tuple[int, float]]) -> tuple[float, list[float], int]:
    """(median tokens/s, each run's tokens/s, tokens per run)."""
    rates = [tokens / seconds for tokens, seconds in runs]
    return statistics.median(rates), rates, runs[0][0]


def show_rates(label: str, runs: list[tuple[int, float]]) -> None:
    median, rates, tokens = rate(runs)
    each = ", ".join(f"{r:.0f}" for r in rates)
    print(f"{label:<34}{median:8.1f} tokens/s  ({tokens} tokens per run; runs: {each})")


def server_seconds(client: OpenAI, model: str) -> float:
    """The server's own count of seconds spent answering `model` (arrival to last byte)."""
    from prometheus_client.parser import text_string_to_metric_families

    url = str(client.base_url).removesuffix("/").removesuffix("/v1")
    with urllib.request.urlopen(f"{url}/metrics") as response:
        text = response.read().decode()
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "phiops_serve_request_duration_seconds_sum"
        and sample.labels.get("model") == model
    )


def paired(
    label: str, top: list[tuple[int, float]], bottom: list[tuple[int, float]], aim: str
) -> None:
    """The median of the run-by-run ratios: each pair ran side by side, so a neighbour's load
    cancels out of the ratio far better than out of two separate medians."""
    ratios = [(t / s) / (b / c) for (t, s), (b, c) in zip(top, bottom, strict=True)]
    each = ", ".join(f"{r:.3f}" for r in ratios)
    print(f"RATIO {label:<28}{statistics.median(ratios):.3f}  ({aim}; runs: {each})")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


# -- the benchmark ------------------------------------------------------------------------------


def machine() -> str:
    cpu = platform.processor() or "cpu"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return f"{os.cpu_count()} cores ({cpu}), torch threads {torch.get_num_threads()}, {gpu}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help="a model folder (default: a random tiny Phi-3)")
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--reps", type=int, default=7)
    parser.add_argument("--kb-docs", type=int, default=60, help="generated documents in the KB")
    parser.add_argument("--queries", type=int, default=200, help="retrieval latency samples")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads of this process and of the servers (0: torch's default)",
    )
    args = parser.parse_args()
    if args.threads:
        # The servers inherit it. On a shared 2-core machine a 2-thread OpenMP team stalls
        # whenever another process takes a core (the same raw loop measured 210-990 tokens/s).
        os.environ["OMP_NUM_THREADS"] = str(args.threads)
        torch.set_num_threads(args.threads)

    from transformers import AutoModelForCausalLM, AutoTokenizer

    work = Path(tempfile.mkdtemp(prefix="bench-serve-"))
    store, uri = start_store(work / "milvus")
    try:
        print(f"machine: {machine()}")
        base, adapter_a, adapter_b = make_models(args, work)
        model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32).eval()
        tokenizer = AutoTokenizer.from_pretrained(base)
        size = sum(p.numel() for p in model.parameters())
        print(
            f"model: {args.model or f'random Phi-3, {args.layers} layers, hidden {args.hidden}'}"
            f" ({size / 1e6:.2f} M parameters), float32, greedy, {args.max_tokens} tokens"
            f" per answer (ignore_eos), {len(PROMPTS)} prompts per run, {args.reps} runs"
        )
        started = time.monotonic()
        alias, chunks = fill_knowledge_base(uri, work, args.kb_docs)
        print(
            f"knowledge base: {chunks} chunks (handbook + {args.kb_docs} generated documents),"
            f" embedded in {time.monotonic() - started:.0f} s"
        )
        plain = ServeConfig(
            base_model_path=base,
            base_model_name=BASE,
            adapters=[
                AdapterConfig(name=ADAPTER_A, path=adapter_a),
                AdapterConfig(name=ADAPTER_B, path=adapter_b),
            ],
            max_new_tokens=args.max_tokens,
            dtype="float32",
            device="cpu",
            system_prompt=SYSTEM,
        )
        retrieval = RetrievalConfig(uri=uri, collection=alias)
        # Throughput against the raw loop on a server holding just the base: with adapters
        # loaded, the base answers through disabled LoRA layers (measured in section 2).
        with (
            serving(plain.model_copy(update={"adapters": []}), work, "base") as base_only,
            serving(plain, work, "plain") as client,
            serving(plain.model_copy(update={"retrieval": retrieval}), work, "rag") as rag,
        ):
            warm = lambda: server_loop(client, [BASE, ADAPTER_A, ADAPTER_B], 4)  # noqa: E731
            warm()
            server_loop(base_only, [BASE], 4)
            raw_generate(model, tokenizer, PROMPTS[0], 4)

            print("\n1. generation throughput, server vs raw model.generate (same model, prompts)")
            inside = server_seconds(base_only, BASE)
            raw, through = interleaved(
                args.reps,
                lambda prompt: raw_generate(model, tokenizer, prompt, args.max_tokens),
                lambda prompt: served(base_only, BASE, prompt, args.max_tokens),
            )
            show_rates("raw model.generate", raw)
            show_rates("server, base model", through)
            inside = server_seconds(base_only, BASE) - inside
            outside = sum(seconds for _, seconds in through)
            print(
                f"  of the client's {outside:.2f} s, the server counted {inside:.2f} s"
                f" ({(outside - inside) / (len(PROMPTS) * args.reps) * 1000:.1f} ms per request"
                " in HTTP and the openai client)"
            )
            paired("server / raw", through, raw, "aim >= 0.95")

            print("\n2. adapters: alternating two vs one (through the server)")
            one, two = alternate(
                args.reps,
                lambda: server_loop(client, [ADAPTER_A], args.max_tokens),
                lambda: server_loop(client, [ADAPTER_A, ADAPTER_B], args.max_tokens),
            )
            show_rates("one adapter", one)
            show_rates("two adapters, alternating", two)
            paired("two / one", two, one, "aim >= 0.90")

            print("\n3. time to first token, retrieval vs the same final prompt without")
            with_rag: list[float] = []
            without: list[float] = []
            lengths = set()
            for _ in range(args.reps):
                for prompt in PROMPTS:
                    hits = rag.post("/retrieve", body={"query": prompt}, cast_to=object)["data"]
                    same = grounded_messages(chat(prompt), _hits(hits), SYSTEM, None)
                    seconds, grounded = first_token(rag, BASE, chat(prompt))
                    with_rag.append(seconds)
                    seconds, given = first_token(client, BASE, same)
                    without.append(seconds)
                    assert grounded == given, f"prompts differ: {grounded} vs {given} tokens"
                    lengths.add(grounded)
            a, b = statistics.median(with_rag), statistics.median(without)
            ratios = [x / y for x, y in zip(with_rag, without, strict=True)]
            print(
                f"prompt tokens                     {min(lengths)}..{max(lengths)} (same both ways)"
            )
            print(f"with retrieval                    {a * 1000:8.1f} ms median")
            print(f"without (prompt given)            {b * 1000:8.1f} ms median")
            print(
                f"RATIO with / without              {statistics.median(ratios):.3f}"
                f"  (aim <= 1.15; median of {len(ratios)} request pairs)"
            )

            print(f"\n4. retrieval latency, POST /v1/retrieve, top_k 4, {args.queries} queries")
            for hybrid in (False, True):
                latencies = []
                for i in range(args.queries):
                    started = time.perf_counter()
                    body = {"query": PROMPTS[i % len(PROMPTS)] + f" ({i})", "hybrid": hybrid}
                    rag.post("/retrieve", body=body, cast_to=object)
                    latencies.append(time.perf_counter() - started)
                name = "hybrid (dense + BM25, RRF)" if hybrid else "dense"
                p50, p95 = percentile(latencies, 50) * 1000, percentile(latencies, 95) * 1000
                print(f"{name:<34}p50 {p50:6.1f} ms, p95 {p95:6.1f} ms")
    finally:
        store.terminate()
        store.wait(30)
        shutil.rmtree(work, ignore_errors=True)


def _hits(data: list[dict[str, Any]]) -> list[Any]:
    from phiops_embed.retrieval import Hit

    return [Hit.model_validate(hit) for hit in data]


if __name__ == "__main__":
    main()
