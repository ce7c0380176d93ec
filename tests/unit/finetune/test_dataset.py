"""Dataset validation and Phi-3 chat encoding: every line checked, problems with line numbers,
loss only on the assistant's tokens."""

from __future__ import annotations

import hashlib
import http.server
import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from phiops_finetune import cli, dataset
from phiops_finetune.chat import IGNORE_INDEX, PHI3_CHAT_TEMPLATE, encode_conversation
from phiops_workload.finetune import (
    EXIT_INPUT_NOT_READY,
    EXIT_INVALID_DATASET,
    REASON_INVALID_DATASET,
    REASON_WAITING_FOR_INPUTS,
    DatasetSpec,
    PreflightFigures,
)
from phiops_workload.runtime import WorkloadError

from tests.unit.finetune.conftest import (
    chat_records,
    make_config,
    result,
    write_config,
    write_jsonl,
)


def lines(*items: Any) -> bytes:
    return "".join((i if isinstance(i, str) else json.dumps(i)) + "\n" for i in items).encode()


def test_messages_format_problems_carry_line_numbers() -> None:
    good = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}
    data = lines(
        good,
        "",  # line 2: empty
        '{"messages": [',  # line 3: broken JSON
        {"text": "no messages"},  # 4
        {"messages": [{"role": "tool", "content": "x"}]},  # 5: wrong role
        {"messages": [{"role": "user", "content": ["a", "b"]}]},  # 6: content type
        {"messages": [{"role": "user", "content": "only a question"}]},  # 7: nothing to learn
        {"messages": [{"content": "x"}]},  # 8: no role
        [1, 2],  # 9: not an object
        good,
    )
    parsed = dataset.parse(data, "messages")
    assert parsed.records == 10
    assert [n for n, _ in parsed.conversations] == [1, 10]
    problems = dict(parsed.problems)
    assert problems[2] == "empty line"
    assert problems[3].startswith("invalid JSON")
    assert problems[4] == 'missing field "messages"'
    assert "role 'tool' is not one of system, user, assistant" in problems[5]
    assert '"content" must be a string, not list' in problems[6]
    assert "no assistant message" in problems[7]
    assert 'missing field "role"' in problems[8]
    assert "must be a JSON object, not list" in problems[9]
    assert parsed.sha256 == hashlib.sha256(data).hexdigest()


def test_prompt_completion_and_instruction_formats() -> None:
    pc = lines(
        {"prompt": "Capital of France?", "completion": "Paris."},
        {"prompt": "x"},
        {"prompt": 3, "completion": "y"},
        {"prompt": "x", "completion": "   "},
    )
    parsed = dataset.parse(pc, "promptCompletion")
    assert parsed.conversations == [
        (
            1,
            [
                {"role": "user", "content": "Capital of France?"},
                {"role": "assistant", "content": "Paris."},
            ],
        )
    ]
    assert dict(parsed.problems) == {
        2: 'missing field "completion"',
        3: '"prompt" must be a string, not int',
        4: '"completion" is empty',
    }

    inst = lines(
        {"instruction": "Translate", "input": "Hallo", "output": "Hello"},
        {"instruction": "Say hi", "output": "Hi"},
        {"instruction": "Say hi"},
        {"input": "x", "output": "y"},
    )
    parsed = dataset.parse(inst, "instruction")
    assert parsed.conversations[0][1][0]["content"] == "Translate\n\nHallo"
    assert parsed.conversations[1][1][0]["content"] == "Say hi"
    assert dict(parsed.problems) == {
        3: 'missing field "output"',
        4: 'missing field "instruction"',
    }


def test_trailing_blank_lines_bom_and_bad_utf8() -> None:
    record = json.dumps({"prompt": "a", "completion": "b"}).encode()
    data = b"\xef\xbb\xbf" + record + b"\n\xff\xfe\n" + record + b"\n\n\n"
    parsed = dataset.parse(data, "promptCompletion")
    assert parsed.records == 3
    assert [n for n, _ in parsed.conversations] == [1, 3]
    assert parsed.problems[0][0] == 2 and parsed.problems[0][1].startswith("not UTF-8")


def test_over_long_records_are_counted_with_their_lines(tokenizer: Any) -> None:
    long_answer = " ".join(["warranty"] * 80)
    data = lines(
        *chat_records(4),
        {
            "messages": [
                {"role": "user", "content": "q"},
                {"role": "assistant", "content": long_answer},
            ]
        },
    )
    prepared = dataset.prepare(data, DatasetSpec(path="x", max_seq_length=64), tokenizer)
    report = prepared.report
    assert (report.records, report.invalid) == (5, 1)
    assert report.problems[0].startswith("line 5: ")
    assert "more than maxSeqLength 64" in report.problems[0]
    assert report.longest_tokens > 64
    assert [n for n, _ in prepared.examples] == [1, 2, 3, 4]
    assert prepared.usable


def test_unusable_when_more_than_half_invalid(tokenizer: Any) -> None:
    data = lines(*chat_records(2), "oops", "oops", "oops")
    prepared = dataset.prepare(data, DatasetSpec(path="x"), tokenizer)
    assert not prepared.usable
    err = dataset.unusable_error(prepared.report)
    assert (err.reason, err.exit_code) == (REASON_INVALID_DATASET, EXIT_INVALID_DATASET)
    assert "3 of 5 records are invalid" in str(err) and "line 3: invalid JSON" in str(err)
    # Exactly half bad is still usable: the bad half is skipped.
    assert dataset.prepare(
        lines(*chat_records(2), "x", "y"), DatasetSpec(path="x"), tokenizer
    ).usable
    assert not dataset.prepare(b"", DatasetSpec(path="x"), tokenizer).usable


def test_only_assistant_tokens_are_trained(tokenizer: Any) -> None:
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Is the tent light?"},
        {"role": "assistant", "content": "Yes."},
        {"role": "user", "content": "How light?"},
        {"role": "assistant", "content": "Two kilograms."},
    ]
    encoded = encode_conversation(tokenizer, messages)
    full = tokenizer.apply_chat_template(messages, tokenize=False)
    assert tokenizer.decode(encoded.input_ids) == full
    trained = [
        tokenizer.decode([i])
        for i, label in zip(encoded.input_ids, encoded.labels, strict=True)
        if label != IGNORE_INDEX
    ]
    text = "".join(trained)
    # Both assistant turns with their end markers (the model learns to stop); no headers,
    # no system or user words.
    assert text == "Yes.<|end|>\nTwo kilograms.<|end|>\n<|endoftext|>"
    assert encoded.trained_tokens == len(trained)


def test_tokenizer_without_template_gets_phi3s(tiny_model: Path) -> None:
    from phiops_finetune.chat import ensure_chat_template
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model)
    tok.chat_template = None
    tok.pad_token = None
    ensure_chat_template(tok)
    assert tok.chat_template == PHI3_CHAT_TEMPLATE
    assert tok.pad_token == "<|endoftext|>"
    text = tok.apply_chat_template(
        [{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True
    )
    assert text == "<|user|>\nhi<|end|>\n<|assistant|>\n"


@pytest.fixture
def http_dataset(tmp_path: Path) -> Iterator[str]:
    body = lines(*chat_records(8))

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path != "/data.jsonl":
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_dataset_from_url_and_missing_sources(http_dataset: str, tmp_path: Path) -> None:
    assert dataset.read_bytes(f"{http_dataset}/data.jsonl") == lines(*chat_records(8))
    with pytest.raises(WorkloadError) as err:
        dataset.read_bytes(f"{http_dataset}/nope.jsonl")
    assert err.value.exit_code == EXIT_INVALID_DATASET and "HTTP 404" in str(err.value)
    with pytest.raises(WorkloadError) as err:
        dataset.read_bytes(str(tmp_path / "absent.jsonl"))
    assert err.value.reason == REASON_INVALID_DATASET
    assert err.value.exit_code == EXIT_INVALID_DATASET


def test_preflight_cli_passes_with_figures(
    tiny_model: Path, tmp_path: Path, termination_log: Path
) -> None:
    records: list[Any] = chat_records(20)
    data = write_jsonl(tmp_path / "data.jsonl", [*records, "not json"])
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
    assert cli.main(["preflight", "--config", write_config(tmp_path, config)]) == 0
    message = result(termination_log)
    assert (message["outcome"], message["reason"]) == ("Succeeded", "PreflightPassed")
    figures = PreflightFigures.model_validate(message["figures"])
    assert (figures.dataset.records, figures.dataset.invalid) == (21, 1)
    assert figures.dataset.problems == ["line 21: a record must be a JSON object, not str"]
    assert figures.dataset.sha256 == hashlib.sha256(data.read_bytes()).hexdigest()
    # 20 good records, 2 for validation: 18 -> 5 batches of 4 -> 3 steps per epoch (2+2+1) x 2.
    assert figures.total_steps == 6
    assert not (tmp_path / "out").exists()  # the pre-flight writes nothing but its result


def test_preflight_cli_fails_an_unusable_dataset(
    tiny_model: Path, tmp_path: Path, termination_log: Path
) -> None:
    data = tmp_path / "data.jsonl"
    data.write_text('{"messages": []}\n\n{"prompt": "a"}\n')
    config = make_config(tiny_model, data, tmp_path / "out")
    code = cli.main(["preflight", "--config", write_config(tmp_path, config)])
    assert code == EXIT_INVALID_DATASET
    message = result(termination_log)
    assert (message["outcome"], message["reason"]) == ("Failed", REASON_INVALID_DATASET)
    assert "line 1: " in message["message"] and "line 2: empty line" in message["message"]


@pytest.mark.parametrize("absent", ["model", "empty-model", "dataset"])
def test_preflight_waits_for_inputs_not_on_their_volume_yet(
    tiny_model: Path, tmp_path: Path, termination_log: Path, absent: str
) -> None:
    # A missing local folder must not be read as a model-hub repo id (a permanent failure).
    model = tmp_path / "no-model" if absent == "model" else tiny_model
    if absent == "empty-model":
        model = tmp_path / "empty"
        model.mkdir()
    data = tmp_path / "absent.jsonl"
    if absent != "dataset":
        write_jsonl(data, chat_records(4))
    config = make_config(model, data, tmp_path / "out")
    code = cli.main(["preflight", "--config", write_config(tmp_path, config)])
    assert code == EXIT_INPUT_NOT_READY
    message = result(termination_log)
    assert (message["outcome"], message["reason"]) == ("Failed", REASON_WAITING_FOR_INPUTS)
    field = "spec.dataset" if absent == "dataset" else "spec.baseModel.pvc"
    assert field in message["message"] and "Repo id" not in message["message"]


def test_preflight_result_fits_the_termination_message(
    tiny_model: Path, tmp_path: Path, termination_log: Path
) -> None:
    bad_role = {"messages": [{"role": "x" * 500, "content": "y"}]}
    records: list[Any] = [*chat_records(25), *[bad_role] * 25]
    data = write_jsonl(tmp_path / "data.jsonl", records)
    config = make_config(tiny_model, data, tmp_path / "out")
    assert cli.main(["preflight", "--config", write_config(tmp_path, config)]) == 0
    raw = termination_log.read_bytes()
    assert len(raw) <= 4096
    figures = PreflightFigures.model_validate(json.loads(raw)["figures"])
    assert figures.dataset.invalid == 25
    assert 10 <= len(figures.dataset.problems) <= 20
    assert figures.dataset.problems[0].startswith("line 26: messages[0]: role 'xxx")


def test_importing_the_entrypoint_loads_no_ml_library() -> None:
    import subprocess
    import sys

    code = (
        "import sys, phiops_finetune.cli, phiops_finetune.preflight, phiops_finetune.dataset; "
        "print(sorted(m for m in ('torch', 'transformers', 'peft') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
