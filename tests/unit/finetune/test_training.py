"""Training for real on the tiny Phi-3: LoRA and QLoRA (bitsandbytes 4-bit on CPU), the
adapter and its provenance, resume from a checkpoint, progress publishing, OOM mapping."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import signal
from pathlib import Path
from typing import Any

import pytest
from phiops_finetune import cli, training
from phiops_finetune.callbacks import ProgressReporter
from phiops_workload.finetune import (
    EXIT_INVALID_DATASET,
    PROGRESS_KEY,
    REASON_GPU_OOM,
    REASON_INVALID_DATASET,
    Progress,
    TrainFigures,
)
from phiops_workload.runtime import EXIT_OUT_OF_MEMORY

from tests.unit.finetune.conftest import (
    FakeApiServer,
    chat_records,
    make_config,
    result,
    write_config,
    write_jsonl,
)


def logged_losses(output: Path) -> list[float]:
    """The training losses the Trainer logged, from the last checkpoint's state."""
    last = max((output / "checkpoints").glob("checkpoint-*"), key=lambda p: int(p.name[11:]))
    history = json.loads((last / "trainer_state.json").read_text())["log_history"]
    return [entry["loss"] for entry in history if "loss" in entry]


def greedy(model: Any, tokenizer: Any, question: str) -> list[int]:
    import torch

    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": question}], tokenize=False, add_generation_prompt=True
    )
    ids = tokenizer(text, add_special_tokens=False, return_tensors="pt").input_ids
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=8, do_sample=False)
    tokens: list[int] = out[0, ids.shape[1] :].tolist()
    return tokens


def assert_adapter_changes_output(tiny_model: Path, output: Path, tokenizer: Any) -> None:
    """The adapter loads with peft onto the fp32 base (never merged into a 4-bit one) and
    changes greedy decoding towards the memorised answer."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(tiny_model)
    before = greedy(base, tokenizer, "Is shipping free?")
    tuned = PeftModel.from_pretrained(base, output)
    after = greedy(tuned, tokenizer, "Is shipping free?")
    assert after != before
    with tuned.disable_adapter():
        assert greedy(tuned, tokenizer, "Is shipping free?") == before


def test_lora_trains_publishes_progress_and_leaves_a_traceable_adapter(
    tiny_model: Path,
    tokenizer: Any,
    tmp_path: Path,
    termination_log: Path,
    api_server: FakeApiServer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("PHIOPS_KUBE_API_URL", api_server.url)
    sa = tmp_path / "serviceaccount"
    sa.mkdir()
    (sa / "token").write_text("the-pod-token\n")
    monkeypatch.setenv("PHIOPS_SERVICEACCOUNT_DIR", str(sa))
    data = write_jsonl(tmp_path / "data.jsonl", chat_records(24))
    output = tmp_path / "out"
    config = make_config(
        tiny_model,
        data,
        output,
        progress={"namespace": "default", "config_map": "support-expert-progress"},
    )
    assert cli.main(["train", "--config", write_config(tmp_path, config)]) == 0

    message = result(termination_log)
    assert (message["outcome"], message["reason"]) == ("Succeeded", "Trained")
    figures = TrainFigures.model_validate(message["figures"])
    assert figures.steps == 20 and figures.resumed_from_step is None
    weights = output / "adapter_model.safetensors"
    assert figures.adapter.sha256 == hashlib.sha256(weights.read_bytes()).hexdigest()
    assert figures.adapter.size_bytes == weights.stat().st_size
    assert (output / "adapter_config.json").is_file()

    losses = logged_losses(output)
    assert len(losses) == 20
    assert sum(losses[-3:]) / 3 < 0.8 * sum(losses[:3]) / 3, losses
    assert figures.final_loss == pytest.approx(losses[-1])

    prov = json.loads((output / "provenance.json").read_text())
    assert prov["dataset"]["sha256"] == hashlib.sha256(data.read_bytes()).hexdigest()
    assert prov["dataset"]["records"] == 24 and prov["dataset"]["invalid"] == 0
    assert prov["method"] == "lora" and prov["quantization"] is None
    assert prov["lora"] == config.lora.model_dump()
    assert prov["training"] == config.training.model_dump()
    assert prov["base_model"]["path"] == str(tiny_model)
    weights_sha = hashlib.sha256((tiny_model / "model.safetensors").read_bytes()).hexdigest()
    assert prov["base_model"]["fingerprint"] == {"file": "model.safetensors", "sha256": weights_sha}
    assert prov["metrics"]["steps"] == 20 and prov["metrics"]["final_loss"] == losses[-1]
    assert prov["adapter"]["sha256"] == figures.adapter.sha256
    assert prov["phiops_version"] == config.phiops_version
    assert prov["started"] <= prov["finished"]
    # Two checkpoints at most (save_steps 10 -> 10 and 20).
    assert sorted(p.name for p in (output / "checkpoints").iterdir()) == [
        "checkpoint-10",
        "checkpoint-20",
    ]

    # Progress: merge PATCHes of the one ConfigMap, with the pod's token, the last one final.
    assert api_server.requests, "no progress was published"
    for request in api_server.requests:
        assert request["path"] == "/api/v1/namespaces/default/configmaps/support-expert-progress"
        assert request["headers"]["Content-Type"] == "application/merge-patch+json"
        assert request["headers"]["Authorization"] == "Bearer the-pod-token"
    last = Progress.model_validate_json(api_server.requests[-1]["body"]["data"][PROGRESS_KEY])
    assert (last.step, last.total_steps) == (20, 20)
    assert last.loss == pytest.approx(losses[-1])
    assert last.tokens_per_second and last.tokens_per_second > 0

    assert_adapter_changes_output(tiny_model, output, tokenizer)


def test_qlora_4bit_on_cpu_trains_with_eval_packing_and_checkpointing(
    tiny_model: Path,
    tokenizer: Any,
    tmp_path: Path,
    termination_log: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    data = write_jsonl(tmp_path / "data.jsonl", chat_records(24))
    output = tmp_path / "out"
    config = make_config(
        tiny_model,
        data,
        output,
        method="qlora",
        quantization={"type": "nf4", "double_quant": True, "compute_dtype": "bfloat16"},
        dataset={"validation_split": 0.1},
        # Evaluating during training is safe: the 4-bit layers are guarded (see modeling).
        training={"packing": True, "gradient_checkpointing": True, "eval_steps": 10},
    )
    with caplog.at_level(logging.INFO, logger="phiops_finetune.train"):
        assert cli.main(["train", "--config", write_config(tmp_path, config)]) == 0
    figures = TrainFigures.model_validate(result(termination_log)["figures"])
    losses = logged_losses(output)
    assert sum(losses[-3:]) / 3 < 0.8 * sum(losses[:3]) / 3, losses
    assert figures.eval_loss is not None

    # One progress line per logging step, the training loss its first "loss"; evaluations
    # on lines of their own.
    progress = [r.getMessage() for r in caplog.records if r.getMessage().startswith("progress:")]
    assert len(progress) == 20
    assert progress[-1].startswith("progress: step 20/20, epoch ")
    assert all("eval" not in line for line in progress)
    first = float(progress[0].split("loss")[1].split()[0].strip(":= ,"))
    assert first == pytest.approx(losses[0], abs=1e-4)
    assert (
        "validation loss" in progress[-1] and "tokens/s" in progress[-1] and "ETA" in progress[-1]
    )
    evaluations = [
        r.getMessage() for r in caplog.records if r.getMessage().startswith("evaluation")
    ]
    assert [line.split(",")[0] for line in evaluations] == [
        "evaluation: step 10/20",
        "evaluation: step 20/20",
    ]
    prov = json.loads((output / "provenance.json").read_text())
    assert prov["method"] == "qlora"
    assert prov["quantization"] == {
        "type": "nf4",
        "double_quant": True,
        "compute_dtype": "bfloat16",
        "unquantized_dtype": "float32",
    }
    assert prov["training"]["packing"] is True
    assert_adapter_changes_output(tiny_model, output, tokenizer)


@pytest.mark.parametrize("unquantized", ["float32", "compute"])
def test_qlora_keeps_the_unquantized_weights_in_the_dtype_asked_and_trains_only_lora(
    tiny_model: Path, unquantized: str
) -> None:
    import torch
    from phiops_finetune import modeling

    config = make_config(
        tiny_model,
        tiny_model,
        tiny_model,
        method="qlora",
        quantization={"compute_dtype": "bfloat16", "unquantized_dtype": unquantized},
        training={"gradient_checkpointing": True},
    )
    model = modeling.wrap_for_training(modeling.load_model(config, "cpu"), config, "cpu")
    expected = torch.float32 if unquantized == "float32" else torch.bfloat16
    plain = {
        name: p.dtype
        for name, p in model.named_parameters()
        if "lora_" not in name and p.__class__.__name__ != "Params4bit"
    }
    assert any("embed_tokens" in n for n in plain) and any("lm_head" in n for n in plain)
    assert set(plain.values()) == {expected}, plain
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    assert model.is_gradient_checkpointing
    model.train()
    ids = torch.arange(5, 37).reshape(2, 16)
    model(input_ids=ids, labels=ids).loss.backward()
    grads = [p.grad for n, p in model.named_parameters() if "lora_B" in n]
    assert grads and all(g is not None and torch.isfinite(g).all() for g in grads)
    assert any(float(g.abs().sum()) > 0 for g in grads if g is not None)


def test_guarded_4bit_layers_keep_gradients_right_after_an_eval(tiny_model: Path) -> None:
    """bitsandbytes on CPUs with AVX512-BF16 repacks 4-bit weights on the first no-grad eval
    forward, and later gradients are wrong. With the guard they equal a model never evaluated."""
    import torch
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
    from phiops_finetune import modeling

    config = make_config(tiny_model, tiny_model, tiny_model, method="qlora")

    prepare: Any = prepare_model_for_kbit_training  # untyped in peft

    def gradients(evaluate_first: bool) -> torch.Tensor:
        model = prepare(modeling.load_model(config, "cpu"), use_gradient_checkpointing=False)
        assert modeling.guard_cpu_4bit(model) == 8
        torch.manual_seed(0)
        lora = LoraConfig(r=4, target_modules=config.lora.target_modules, init_lora_weights=False)
        model = get_peft_model(model, lora)
        ids = torch.arange(5, 21).reshape(1, 16)
        if evaluate_first:
            model.eval()
            with torch.no_grad():
                model(input_ids=ids)
        model.train()
        model(input_ids=ids, labels=ids).loss.backward()
        return torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])

    torch.testing.assert_close(gradients(True), gradients(False), atol=0, rtol=0)


def test_sigterm_checkpoints_and_the_next_attempt_resumes(
    tiny_model: Path,
    tmp_path: Path,
    termination_log: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    data = write_jsonl(tmp_path / "data.jsonl", chat_records(16))
    output = tmp_path / "out"
    config = make_config(
        tiny_model, data, output, training={"max_steps": 12, "save_steps": 4, "logging_steps": 2}
    )
    path = write_config(tmp_path, config)

    def kill_at_step_6(self: Any, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if state.global_step == 6:
            os.kill(os.getpid(), signal.SIGTERM)  # what the kubelet sends on eviction

    with monkeypatch.context() as patch:
        patch.setattr(ProgressReporter, "on_step_end", kill_at_step_6, raising=False)
        assert cli.main(["train", "--config", path]) == training.EXIT_INTERRUPTED
    stopped = result(termination_log)
    assert stopped["reason"] == training.REASON_INTERRUPTED
    assert "stopped by signal 15 at step 6" in stopped["message"]
    assert training.latest_checkpoint(output / "checkpoints") == (
        output / "checkpoints" / "checkpoint-6",
        6,
    )
    assert not (output / "adapter_model.safetensors").exists()
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the handler is put back

    caplog.clear()
    with caplog.at_level(logging.INFO, logger="phiops_finetune.train"):
        assert cli.main(["train", "--config", path]) == 0
    assert "resuming from step 6" in caplog.text
    figures = TrainFigures.model_validate(result(termination_log)["figures"])
    assert (figures.resumed_from_step, figures.steps) == (6, 12)
    assert json.loads((output / "provenance.json").read_text())["metrics"]["resumed_from_step"] == 6


def test_incomplete_checkpoints_are_not_resumed(tmp_path: Path) -> None:
    for step, complete in ((4, True), (8, True), (12, False)):
        folder = tmp_path / f"checkpoint-{step}"
        folder.mkdir()
        (folder / "adapter_model.safetensors").write_bytes(b"x")
        if complete:
            (folder / "trainer_state.json").write_text(json.dumps({"global_step": step}))
    assert training.latest_checkpoint(tmp_path) == (tmp_path / "checkpoint-8", 8)
    assert training.latest_checkpoint(tmp_path / "absent") is None


def test_cuda_out_of_memory_exits_3_with_advice(
    tiny_model: Path, tmp_path: Path, termination_log: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import torch

    def out_of_memory(*args: Any, **kwargs: Any) -> Any:
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(training.PhiopsTrainer, "training_step", out_of_memory)
    data = write_jsonl(tmp_path / "data.jsonl", chat_records(8))
    config = make_config(tiny_model, data, tmp_path / "out")
    assert cli.main(["train", "--config", write_config(tmp_path, config)]) == EXIT_OUT_OF_MEMORY
    message = result(termination_log)
    assert (message["outcome"], message["reason"]) == ("Failed", REASON_GPU_OOM)
    for advice in ("batchSize", "method qlora", "gradientCheckpointing", "maxSeqLength"):
        assert advice in message["message"]


def test_epoch_based_run_takes_the_preflight_steps_and_skips_bad_records(
    tiny_model: Path, tmp_path: Path, termination_log: Path
) -> None:
    records: list[Any] = [*chat_records(20), "{broken"]
    data = write_jsonl(tmp_path / "data.jsonl", records)
    config = make_config(
        tiny_model,
        data,
        tmp_path / "out",
        dataset={"validation_split": 0.1},
        training={
            "max_steps": None,
            "epochs": 2,
            "batch_size": 4,
            "gradient_accumulation_steps": 2,
        },
    )
    path = write_config(tmp_path, config)
    assert cli.main(["preflight", "--config", path]) == 0
    planned = result(termination_log)["figures"]["total_steps"]
    assert cli.main(["train", "--config", path]) == 0
    assert result(termination_log)["figures"]["steps"] == planned == 6
    prov = json.loads((tmp_path / "out" / "provenance.json").read_text())
    assert (prov["dataset"]["invalid"], prov["dataset"]["train_examples"]) == (1, 18)


def test_train_refuses_an_unusable_dataset(
    tiny_model: Path, tmp_path: Path, termination_log: Path
) -> None:
    data = tmp_path / "data.jsonl"
    data.write_text("nope\n")
    config = make_config(tiny_model, data, tmp_path / "out")
    assert cli.main(["train", "--config", write_config(tmp_path, config)]) == EXIT_INVALID_DATASET
    assert result(termination_log)["reason"] == REASON_INVALID_DATASET
