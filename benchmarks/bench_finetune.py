"""Benchmark of the fine-tuning workload: LoRA and QLoRA side by side in one run.

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/bench_finetune.py [--steps 12] [--rounds 2]
    python benchmarks/bench_finetune.py --gpu        # on a machine with CUDA

CPU (always): a tiny random-weight Phi-3 (`make-tiny-model`, 4 layers, hidden 256, vocab
1,024) trained on generated chat records of ~200 tokens with the trainer's own code path
(`plan` -> `build_trainer` -> `Trainer.train`), LoRA vs QLoRA (NF4, double quantization, bf16
compute): median optimizer-step time, peak memory (RSS high-water mark minus RSS before the
model loaded) and the base model's weight bytes, with QLoRA/LoRA ratios.

GPU (`--gpu`, needs CUDA): the real Phi-3-mini architecture at full size (`Phi3Config` with
Phi-3-mini's dimensions, random bf16 weights written once to `--model-dir`), with gradient
checkpointing, at 1k, 4k and 8k tokens per micro-batch (1x1024, 1x4096, 2x4096): non-padding
tokens/s and peak GPU memory (`torch.cuda.max_memory_allocated`, beside the FineTuneJob's
status estimate) of both methods, for the plain stack (`training.fusedKernels: off`) and
phiops's default (`auto`: Liger's kernels where installed), `--gpu-stacks`; then packed vs
padded batches of variable-length examples (64..1024 tokens) with QLoRA, non-padding
tokens/s. Aims (issue 13): LoRA >= 14,000 tokens/s at 8k, QLoRA step <= 1.15x LoRA at 4k,
QLoRA peak memory <= 0.55x LoRA, packing >= 1.8x padded.

Each measurement runs in a fresh process (`--worker`), so one method's memory never counts
against the other; rounds alternate the methods and the best step time of each counts (the
machine may be shared).
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

RESOURCE = {
    "apiVersion": "phiops.dev/v1alpha1",
    "kind": "FineTuneJob",
    "namespace": "bench",
    "name": "bench",
    "uid": "bench",
}
PHI3_MINI = {
    "vocab_size": 32064,
    "hidden_size": 3072,
    "intermediate_size": 8192,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "num_key_value_heads": 32,
    "max_position_embeddings": 8192,
    "original_max_position_embeddings": 4096,
}
# The GPU section's columns: (method, quantization.unquantizedDtype); qlora-compute is QLoRA
# without peft's fp32 upcast (`--gpu-lean-qlora`).
VARIANTS = {
    "lora": ("lora", "float32"),
    "qlora": ("qlora", "float32"),
    "qlora-compute": ("qlora", "compute"),
}
GPU_SIZES = [(1, 1024), (1, 4096), (2, 4096)]  # (rows, tokens per row) per micro-batch
WARMUP_STEPS = 2


# -- measuring inside a worker ------------------------------------------------------------------


def proc_status(field: str) -> int:
    """A /proc/self/status figure in bytes (VmRSS, VmHWM)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    return 0


def reset_peak_rss() -> None:
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS


def weight_bytes(model: Any) -> int:
    """Bytes of the frozen base: parameters and buffers (4-bit weights are packed uint8)."""
    total = 0
    for name, tensor in [*model.named_parameters(), *model.named_buffers()]:
        if "lora_" not in name:
            total += tensor.numel() * tensor.element_size()
    return total


def timed_trainer(
    config: Any, rows: Any, tokenizer: Any, on: str, model: Any = None
) -> tuple[Any, Any, list[Any]]:
    """`build_trainer` over ready rows, with a callback timing each optimizer step and the
    non-padding tokens it trained on."""
    from phiops_finetune import training
    from phiops_finetune.callbacks import Meter
    from phiops_finetune.preflight import Plan
    from transformers import TrainerCallback

    meter = Meter(total_steps=config.training.max_steps)
    plan = Plan(
        prepared=None,  # type: ignore[arg-type]  # build_trainer only reads the rows
        train_rows=rows,
        validation_rows=[],
        train_examples=len(rows),
        validation_examples=0,
        total_steps=config.training.max_steps,
    )
    steps: list[tuple[float, int]] = []

    class Timer(TrainerCallback):
        def on_step_begin(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            if on == "cuda":
                import torch

                torch.cuda.synchronize()
            self.t, self.tokens = time.perf_counter(), meter.tokens

        def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            if on == "cuda":
                import torch

                torch.cuda.synchronize()
            steps.append((time.perf_counter() - self.t, meter.tokens - self.tokens))

    trainer = training.build_trainer(config, plan, tokenizer, on, meter, model=model)
    trainer.add_callback(Timer())
    return trainer, meter, steps


def summarize(steps: list[tuple[float, int]]) -> dict[str, float]:
    timed = steps[WARMUP_STEPS:] or steps
    seconds = statistics.median(s for s, _ in timed)
    tokens = sum(t for _, t in timed) / sum(s for s, _ in timed)
    return {"step_s": seconds, "tokens_per_s": tokens}


def train_config(
    model_dir: str, method: str, out: str, unquantized: str = "float32", **training: Any
) -> Any:
    from phiops_workload.finetune import TrainJobConfig

    return TrainJobConfig.model_validate(
        {
            "resource": RESOURCE,
            "base_model": {"name": "bench-phi3", "path": model_dir},
            "dataset": {"path": "generated", "max_seq_length": training.pop("max_seq", 256)},
            "method": method,
            "lora": {"r": 16, "alpha": 32, "dropout": 0.05},
            "quantization": {
                "type": "nf4",
                "double_quant": True,
                "compute_dtype": "bfloat16",
                "unquantized_dtype": unquantized,
            },
            "training": {
                "learning_rate": 2e-4,
                "scheduler": "constant",
                "warmup_ratio": 0.0,
                "gradient_accumulation_steps": 1,
                "save_steps": 10_000,
                "logging_steps": 10_000,
                **training,
            },
            "output_dir": out,
        }
    )


def chat_data(n: int, seed: int = 0) -> bytes:
    """Chat records of ~150-250 tokens from the tiny model's corpus sentences."""
    from phiops_finetune.tiny_model import CORPUS

    sentences = [s for s in CORPUS.splitlines() if s]
    rng = random.Random(seed)
    lines = []
    for _ in range(n):
        question = rng.choice(sentences)
        answer = " ".join(rng.choice(sentences) for _ in range(rng.randint(8, 12)))
        messages = [
            {"role": "user", "content": question},
            {"role": "assistant", "content": answer},
        ]
        lines.append(json.dumps({"messages": messages}))
    return ("\n".join(lines) + "\n").encode()


def worker_cpu(job: dict[str, Any]) -> dict[str, Any]:
    from phiops_finetune.modeling import load_tokenizer
    from phiops_finetune.preflight import plan

    steps, batch = job["steps"], job["batch"]
    with tempfile.TemporaryDirectory() as out:

        def run(model: str, n_steps: int) -> tuple[Any, list[Any]]:
            config = train_config(
                model,
                job["method"],
                out,
                max_steps=n_steps,
                batch_size=batch,
                gradient_checkpointing=False,
            )
            tokenizer = load_tokenizer(config.base_model)
            p = plan(config, tokenizer, chat_data(n_steps * batch))
            trainer, _, timings = timed_trainer(config, p.train_rows, tokenizer, "cpu")
            trainer.train()
            return trainer, timings

        # A 1-step run on a micro model first: the libraries' lazy imports and one-time set-up
        # then land before the baseline, so the peak counts what training this model takes.
        run(job["micro"], 1)
        gc.collect()
        rss_before = proc_status("VmRSS")
        reset_peak_rss()
        trainer, timings = run(job["model"], steps)
        peak = proc_status("VmHWM")
        return {
            **summarize(timings),
            "peak_delta_bytes": peak - rss_before,
            "peak_rss_bytes": peak,
            "weight_bytes": weight_bytes(trainer.model),
            "tokens_per_step": sum(t for _, t in timings) / len(timings),
        }


def synthetic_rows(lengths: list[int], vocab: int, seed: int) -> list[Any]:
    """Examples of random token ids (all trained), for shapes that matter, not content."""
    from phiops_finetune.chat import Encoded

    rng = random.Random(seed)
    examples = []
    for n in lengths:
        ids = [rng.randrange(16, vocab) for _ in range(n)]
        examples.append(Encoded(input_ids=ids, labels=list(ids)))
    return examples


def worker_gpu(job: dict[str, Any]) -> dict[str, Any]:
    import torch
    from phiops_finetune import batching
    from phiops_finetune.modeling import load_model, load_tokenizer, wrap_for_training

    on = "cuda" if torch.cuda.is_available() else "cpu"
    steps = job["steps"]
    vocab = job["vocab"]
    results: dict[str, Any] = {"device": torch.cuda.get_device_name(0) if on == "cuda" else on}

    def reset_peak() -> None:
        if on == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        else:
            reset_peak_rss()

    def peak() -> int:
        return torch.cuda.max_memory_allocated() if on == "cuda" else proc_status("VmHWM")

    with tempfile.TemporaryDirectory() as out:
        unquantized = job.get("unquantized", "float32")
        base = train_config(
            job["model"], job["method"], out, unquantized, gradient_checkpointing=True
        )
        tokenizer = load_tokenizer(base.base_model)
        # Loaded (and quantized, for qlora) once; each measurement gets its own Trainer.
        model = wrap_for_training(load_model(base, on), base, on)
        if job["kind"] == "sizes":
            for rows_per_batch, tokens in job["sizes"]:
                config = train_config(
                    job["model"],
                    job["method"],
                    out,
                    unquantized,
                    max_steps=steps,
                    batch_size=rows_per_batch,
                    gradient_checkpointing=True,
                    max_seq=tokens,
                    fused_kernels=job["fused"],
                )
                examples = synthetic_rows([tokens] * steps * rows_per_batch, vocab, seed=1)
                rows = batching.rows(examples, packing=False, max_seq_length=tokens)
                reset_peak()
                trainer, _, timings = timed_trainer(config, rows, tokenizer, on, model)
                results["fused"] = bool(trainer.fused_kernels)
                try:
                    trainer.train()
                    results[f"{rows_per_batch}x{tokens}"] = {**summarize(timings), "peak": peak()}
                except torch.OutOfMemoryError:
                    results[f"{rows_per_batch}x{tokens}"] = {"oom": True}
                del trainer
                gc.collect()
        else:  # packing vs padding: the same examples
            from phiops_finetune import attention

            rng = random.Random(7)
            max_len, padded_batch, packed_batch = job["max_len"], job["padded_batch"], 2
            lengths = [rng.randint(64, max_len) for _ in range(steps * padded_batch)]
            examples = synthetic_rows(lengths, vocab, seed=2)
            # padding-free: the kernel the trainer would pick (flash-attn, else flex_attention)
            chosen = attention.plan(True, True, on)
            free_model = None
            if chosen.padding_free:
                loaded = load_model(base, on, chosen.implementation)
                free_model = wrap_for_training(loaded, base, on)
            results["padding_free_kernel"] = chosen.implementation if chosen.padding_free else None
            for mode in ("padded", "packed", "padding-free"):
                if mode == "padding-free" and free_model is None:
                    continue
                packing = mode != "padded"
                config = train_config(
                    job["model"],
                    job["method"],
                    out,
                    max_steps=steps,
                    batch_size=packed_batch if packing else padded_batch,
                    gradient_checkpointing=True,
                    packing=packing,
                    max_seq=job["packed_seq"] if packing else max_len,
                )
                rows = batching.rows(examples, packing, config.dataset.max_seq_length)
                use = free_model if mode == "padding-free" else model
                trainer, _, timings = timed_trainer(config, rows, tokenizer, on, use)
                trainer.train()
                results[mode] = summarize(timings)
                del trainer
                gc.collect()
    return results


# -- the parent: starting workers, printing ratios --------------------------------------------


def run_worker(job: dict[str, Any]) -> dict[str, Any]:
    proc = subprocess.run(
        [sys.executable, __file__, "--worker", json.dumps(job)],
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr[-4000:])
        raise SystemExit(f"worker {job.get('method')} failed ({proc.returncode})")
    last = proc.stdout.strip().splitlines()[-1]
    data: dict[str, Any] = json.loads(last)
    return data


def mib(n: float) -> str:
    return f"{n / 2**20:.1f} MiB"


def gib(n: float) -> str:
    return f"{n / 2**30:.2f} GiB"


def bench_cpu(args: argparse.Namespace, work: Path) -> None:
    from phiops_finetune.tiny_model import make_tiny_model

    model = make_tiny_model(work / "tiny", layers=args.layers, hidden=args.hidden, vocab=1024)
    micro = make_tiny_model(work / "micro", layers=1, hidden=16, vocab=1024)
    print(
        f"cpu: tiny Phi-3 ({args.layers} layers, hidden {args.hidden}, vocab 1024), "
        f"batch {args.batch} x ~200 tokens, {args.steps} steps ({WARMUP_STEPS} warm-up), "
        f"{os.cpu_count()} cores, torch threads {_threads()}"
    )
    runs: dict[str, list[dict[str, Any]]] = {"lora": [], "qlora": []}
    for _ in range(args.rounds):
        for method in ("lora", "qlora"):
            job = {
                "kind": "cpu",
                "model": str(model),
                "micro": str(micro),
                "method": method,
                "steps": args.steps,
                "batch": args.batch,
            }
            runs[method].append(run_worker(job))
    best = {m: min(r, key=lambda x: x["step_s"]) for m, r in runs.items()}
    for method, result in best.items():
        rounds = ", ".join(f"{r['step_s'] * 1000:.0f}" for r in runs[method])
        print(
            f"{method:6} step {result['step_s'] * 1000:7.1f} ms (rounds: {rounds} ms)  "
            f"{result['tokens_per_s']:8.0f} tokens/s  peak +{mib(result['peak_delta_bytes'])} "
            f"(RSS {mib(result['peak_rss_bytes'])})  base weights {mib(result['weight_bytes'])}"
        )
    lora, qlora = best["lora"], best["qlora"]
    print(f"RATIO qlora/lora step time      {qlora['step_s'] / lora['step_s']:.2f}")
    print(
        f"RATIO qlora/lora peak memory    "
        f"{qlora['peak_delta_bytes'] / lora['peak_delta_bytes']:.2f}  (added over the process "
        f"before loading the model)"
    )
    print(f"RATIO qlora/lora base weights   {qlora['weight_bytes'] / lora['weight_bytes']:.2f}")


def _threads() -> int:
    import torch

    return torch.get_num_threads()


def make_big_model(model_dir: Path, shape: dict[str, int]) -> None:
    """Random weights in Phi-3's architecture, written once (bf16 safetensors)."""
    import torch
    from phiops_finetune.tiny_model import build_tokenizer
    from transformers import Phi3Config, Phi3ForCausalLM

    if (model_dir / "config.json").exists():
        return
    tokenizer = build_tokenizer(1024)
    eos = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    config = Phi3Config(**shape, bos_token_id=eos, eos_token_id=eos, pad_token_id=eos)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.manual_seed(0)
    with torch.device(device):
        model = Phi3ForCausalLM(config).to(torch.bfloat16)
    model.save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    del model


def estimated_allocation(
    shape: dict[str, Any], variant: str, rows: int, tokens: int, fused_loss: bool
) -> int:
    """The FineTuneJob status's memory estimate for this shape and variant (LoRA r 16,
    checkpointing, as measured here), less the CUDA context that torch's peak does not count."""
    from phiops_workload.finetune import CUDA_CONTEXT_BYTES, estimate_gpu_memory_bytes, phi3_shape

    method, unquantized = VARIANTS[variant]
    dims = phi3_shape(
        shape["hidden_size"],
        shape["intermediate_size"],
        shape["num_hidden_layers"],
        shape["vocab_size"],
    )
    total = estimate_gpu_memory_bytes(
        "",
        method,  # type: ignore[arg-type]
        rows,
        tokens,
        16,
        True,
        shape=dims,
        fused_loss=fused_loss,
        unquantized_fp32=unquantized == "float32",
    )
    return total - CUDA_CONTEXT_BYTES


def bench_gpu(args: argparse.Namespace, work: Path) -> None:
    import torch

    tiny = args.gpu_shape == "tiny"
    if not torch.cuda.is_available() and not tiny:
        print("gpu: no CUDA device here; the GPU section (Phi-3-mini size) was not run")
        return
    shape = (
        PHI3_MINI
        if not tiny
        else {
            **PHI3_MINI,
            "hidden_size": 128,
            "intermediate_size": 256,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "num_key_value_heads": 4,
        }
    )
    sizes = GPU_SIZES if not tiny else [(1, 128), (1, 256), (2, 256)]
    model_dir = Path(args.model_dir) if args.model_dir else work / "phi3-mini-random"
    started = time.monotonic()
    make_big_model(model_dir, shape)
    print(
        f"gpu: Phi-3 {'(tiny dry run) ' if tiny else ''}{shape['num_hidden_layers']} layers, "
        f"hidden {shape['hidden_size']}, vocab {shape['vocab_size']}, random bf16 weights "
        f"({time.monotonic() - started:.0f} s to make), gradient checkpointing, "
        f"{args.gpu_steps} steps per size ({WARMUP_STEPS} warm-up)"
    )
    # The plain stack (fused kernels off) and phiops's default (`auto`: Liger on a GPU where
    # installed), each method in a worker process of its own: Liger patches the model in place.
    stacks = {"plain": "off", "default": "auto"}
    methods = ["lora", "qlora"] + (["qlora-compute"] if args.gpu_lean_qlora else [])
    results: dict[tuple[str, str], dict[str, Any]] = {}
    for stack in args.gpu_stacks.split(","):
        for method in methods:
            job = {
                "kind": "sizes",
                "model": str(model_dir),
                "method": VARIANTS[method][0],
                "unquantized": VARIANTS[method][1],
                "steps": args.gpu_steps,
                "sizes": sizes,
                "vocab": 1024,
                "fused": stacks[stack],
            }
            results[method, stack] = run_worker(job)
    print(f"device: {next(iter(results.values()))['device']}")
    for stack in args.gpu_stacks.split(","):
        fused = {m: results[m, stack]["fused"] for m in methods}
        print(f"{stack} stack (training.fusedKernels: {stacks[stack]}; Liger used: {fused})")
        for rows, tokens in sizes:
            key = f"{rows}x{tokens}"
            line = [f"{rows * tokens:>6} tokens ({key:>6})"]
            for method in methods:
                r = results[method, stack][key]
                # The operator's status estimate less the CUDA context (outside torch's count).
                estimate = estimated_allocation(shape, method, rows, tokens, fused[method])
                line.append(
                    f"{method}: OOM"
                    if r.get("oom")
                    else f"{method}: {r['tokens_per_s']:7.0f} tok/s, {r['step_s']:.2f} s/step, "
                    f"peak {gib(r['peak'])} (estimate {gib(estimate)}, "
                    f"{estimate / r['peak']:.2f}x)"
                )
            print("  ".join(line))
    stack = args.gpu_stacks.split(",")[-1]
    mid, top = f"{sizes[1][0]}x{sizes[1][1]}", f"{sizes[2][0]}x{sizes[2][1]}"
    lora, qlora = results["lora", stack][mid], results["qlora", stack][mid]
    if not lora.get("oom") and not qlora.get("oom"):
        print(
            f"RATIO qlora/lora step time at {mid} ({stack})   "
            f"{qlora['step_s'] / lora['step_s']:.2f}  (aim <= 1.15)"
        )
        print(
            f"RATIO qlora/lora peak memory at {mid} ({stack}) "
            f"{qlora['peak'] / lora['peak']:.2f}  (aim <= 0.55)"
        )
    lean = results.get(("qlora-compute", stack), {}).get(mid, {"oom": True})
    if not lora.get("oom") and not lean.get("oom"):
        print(
            f"RATIO qlora-compute/lora step time at {mid} ({stack})   "
            f"{lean['step_s'] / lora['step_s']:.2f}  (aim <= 1.15)"
        )
        print(
            f"RATIO qlora-compute/lora peak memory at {mid} ({stack}) "
            f"{lean['peak'] / lora['peak']:.2f}  (aim <= 0.55)"
        )
    if ("lora", "plain") in results and ("lora", "default") in results:
        plain, default = results["lora", "plain"][top], results["lora", "default"][top]
        if not plain.get("oom") and not default.get("oom"):
            print(f"lora at {top}: {default['tokens_per_s']:.0f} tok/s (aim >= 14000 on an H200)")
            print(
                f"RATIO default/plain lora tokens/s at {top}   "
                f"{default['tokens_per_s'] / plain['tokens_per_s']:.2f}"
            )
    job = {
        "kind": "packing",
        "model": str(model_dir),
        "method": "qlora",
        "steps": args.gpu_steps,
        "vocab": 1024,
        "max_len": 1024 if not tiny else 128,
        "padded_batch": 8,
        "packed_seq": 4096 if not tiny else 512,
    }
    packing = run_worker(job)
    print(
        f"padded (batch 8, 64..{job['max_len']} tokens): "
        f"{packing['padded']['tokens_per_s']:.0f} non-padding tok/s; packed (2 x "
        f"{job['packed_seq']}): {packing['packed']['tokens_per_s']:.0f} tok/s"
    )
    ratio = packing["packed"]["tokens_per_s"] / packing["padded"]["tokens_per_s"]
    print(f"RATIO packed/padded tokens/s    {ratio:.2f}  (packed rows, block-diagonal mask)")
    if "padding-free" in packing:
        free = packing["padding-free"]["tokens_per_s"]
        print(
            f"padding-free ({packing['padding_free_kernel']}, one row of 2 x "
            f"{job['packed_seq']} tokens): {free:.0f} tok/s"
        )
        print(
            f"RATIO padding-free/padded tokens/s {free / packing['padded']['tokens_per_s']:.2f}"
            "  (aim >= 1.8)"
        )
    else:
        print("padding-free: no varlen kernel here (flash-attn, or flex_attention on a GPU)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=12, help="CPU: steps per method and round")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--gpu", action="store_true", help="also run the GPU section")
    parser.add_argument("--gpu-steps", type=int, default=6)
    parser.add_argument(
        "--gpu-shape",
        choices=["phi3-mini", "tiny"],
        default="phi3-mini",
        help="tiny: a dry run of the GPU section's code on any device",
    )
    parser.add_argument(
        "--gpu-stacks",
        default="plain,default",
        help="GPU sizes: plain (fused kernels off), default (training.fusedKernels auto), or both",
    )
    parser.add_argument(
        "--gpu-lean-qlora",
        action="store_true",
        help="GPU sizes: also QLoRA with quantization.unquantizedDtype compute (no fp32 upcast)",
    )
    parser.add_argument("--model-dir", help="GPU: where the random Phi-3-mini is (or goes)")
    parser.add_argument("--skip-cpu", action="store_true")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        job = json.loads(args.worker)
        result = worker_cpu(job) if job["kind"] == "cpu" else worker_gpu(job)
        print(json.dumps(result), flush=True)
        return
    with tempfile.TemporaryDirectory(prefix="bench-finetune-") as tmp:
        work = Path(tmp)
        if not args.skip_cpu:
            bench_cpu(args, work)
        if args.gpu:
            bench_gpu(args, work)
        elif not args.skip_cpu:
            print("gpu: not requested (--gpu); needs CUDA")


if __name__ == "__main__":
    main()
