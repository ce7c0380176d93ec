"""The training data: read the JSONL file (a mounted file or an http(s) URL), check every
line, and turn the good records into Phi-3 conversations.

Formats (one JSON object per line):
- `messages`: `{"messages": [{"role": "system"|"user"|"assistant", "content": "..."}, ...]}`
  with at least one non-empty assistant message;
- `promptCompletion`: `{"prompt": "...", "completion": "..."}`;
- `instruction`: `{"instruction": "...", "input": "..." (optional), "output": "..."}`.

A bad record (empty line, broken JSON, missing field, wrong role or type, too many tokens) is
reported as `line N: reason` and skipped; a dataset is unusable when no record is good or more
than half are bad.
"""

from __future__ import annotations

import hashlib
import json
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from phiops_workload.finetune import (
    EXIT_INVALID_DATASET,
    REASON_INVALID_DATASET,
    DatasetReport,
    DatasetSpec,
)
from phiops_workload.runtime import EXIT_FAILED, WorkloadError

from phiops_finetune.chat import Encoded, Message, encode_conversation

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

Format = Literal["messages", "promptCompletion", "instruction"]
ROLES = ("system", "user", "assistant")
MAX_PROBLEMS = 20
MAX_PROBLEM_CHARS = 120  # twenty of them must fit a 4 KiB termination message
URL_TIMEOUT_S = 60.0


class RecordError(ValueError):
    """What is wrong with one record (the message is the reason, without the line number)."""


@dataclass
class ParsedDataset:
    sha256: str
    records: int
    """Lines looked at: every line of the file but trailing blank ones."""
    conversations: list[tuple[int, list[Message]]] = field(default_factory=list)
    """(line number, messages) of each record whose structure is right."""
    problems: list[tuple[int, str]] = field(default_factory=list)


@dataclass
class PreparedDataset:
    """The good records, encoded, and the report of the whole file."""

    report: DatasetReport
    examples: list[tuple[int, Encoded]]

    @property
    def usable(self) -> bool:
        return bool(self.examples) and self.report.invalid * 2 <= self.report.records


# -- reading ----------------------------------------------------------------------------------


def read_bytes(path: str) -> bytes:
    """The dataset file's bytes, from a local path or an http(s) URL."""
    if path.startswith(("http://", "https://")):
        request = urllib.request.Request(path, headers={"User-Agent": "phiops-finetune"})
        try:
            with urllib.request.urlopen(request, timeout=URL_TIMEOUT_S) as response:
                data: bytes = response.read()
                return data
        except urllib.error.HTTPError as err:
            # 4xx: the spec names something that is not there; 5xx may pass with a retry.
            code = EXIT_INVALID_DATASET if 400 <= err.code < 500 else EXIT_FAILED
            raise WorkloadError(
                REASON_INVALID_DATASET, f"dataset {path}: HTTP {err.code} {err.reason}", code
            ) from err
        except (urllib.error.URLError, OSError) as err:
            raise WorkloadError(
                REASON_INVALID_DATASET, f"dataset {path} could not be fetched: {err}", EXIT_FAILED
            ) from err
    try:
        return Path(path).read_bytes()
    except OSError as err:
        raise WorkloadError(
            REASON_INVALID_DATASET,
            f"dataset {path} could not be read: {err.strerror or err}",
            EXIT_INVALID_DATASET,
        ) from err


# -- parsing ----------------------------------------------------------------------------------


def _text(obj: dict[str, Any], key: str, required: bool = True, nonempty: bool = False) -> str:
    if key not in obj or obj[key] is None:
        if required:
            raise RecordError(f'missing field "{key}"')
        return ""
    value = obj[key]
    if not isinstance(value, str):
        raise RecordError(f'"{key}" must be a string, not {type(value).__name__}')
    if nonempty and not value.strip():
        raise RecordError(f'"{key}" is empty')
    return value


def _messages(obj: dict[str, Any]) -> list[Message]:
    if "messages" not in obj:
        raise RecordError('missing field "messages"')
    raw = obj["messages"]
    if not isinstance(raw, list) or not raw:
        raise RecordError('"messages" must be a non-empty list')
    messages: list[Message] = []
    for i, item in enumerate(raw):
        if not isinstance(item, dict):
            raise RecordError(f"messages[{i}] must be an object, not {type(item).__name__}")
        if "role" not in item:
            raise RecordError(f'messages[{i}]: missing field "role"')
        role = item["role"]
        if role not in ROLES:
            shown = repr(role)[:40]
            raise RecordError(f"messages[{i}]: role {shown} is not one of {', '.join(ROLES)}")
        if "content" not in item:
            raise RecordError(f'messages[{i}]: missing field "content"')
        content = item["content"]
        if not isinstance(content, str):
            raise RecordError(
                f'messages[{i}]: "content" must be a string, not {type(content).__name__}'
            )
        messages.append({"role": role, "content": content})
    if not any(m["role"] == "assistant" and m["content"].strip() for m in messages):
        raise RecordError("no assistant message with content: nothing to learn")
    return messages


def to_messages(obj: Any, fmt: Format) -> list[Message]:
    """One record as a chat conversation; `RecordError` says what is wrong."""
    if not isinstance(obj, dict):
        raise RecordError(f"a record must be a JSON object, not {type(obj).__name__}")
    if fmt == "messages":
        return _messages(obj)
    if fmt == "promptCompletion":
        prompt = _text(obj, "prompt")
        completion = _text(obj, "completion", nonempty=True)
        return [{"role": "user", "content": prompt}, {"role": "assistant", "content": completion}]
    instruction = _text(obj, "instruction", nonempty=True)
    extra = _text(obj, "input", required=False)
    output = _text(obj, "output", nonempty=True)
    user = f"{instruction}\n\n{extra}" if extra.strip() else instruction
    return [{"role": "user", "content": user}, {"role": "assistant", "content": output}]


def parse(data: bytes, fmt: Format) -> ParsedDataset:
    """Check every line's structure (no tokenizer needed)."""
    lines = data.split(b"\n")
    while lines and not lines[-1].strip():
        lines.pop()
    parsed = ParsedDataset(sha256=hashlib.sha256(data).hexdigest(), records=len(lines))
    for number, raw in enumerate(lines, start=1):
        if number == 1 and raw.startswith(b"\xef\xbb\xbf"):
            raw = raw[3:]
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as err:
            parsed.problems.append((number, f"not UTF-8 ({err.reason} at byte {err.start})"))
            continue
        if not text.strip():
            parsed.problems.append((number, "empty line"))
            continue
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as err:
            parsed.problems.append((number, f"invalid JSON: {err.msg} at column {err.colno}"))
            continue
        try:
            parsed.conversations.append((number, to_messages(obj, fmt)))
        except RecordError as err:
            parsed.problems.append((number, str(err)))
    return parsed


# -- tokenizing -------------------------------------------------------------------------------


def prepare(data: bytes, spec: DatasetSpec, tokenizer: PreTrainedTokenizerBase) -> PreparedDataset:
    """Parse, then encode each good record with the chat template; records longer than
    `max_seq_length` tokens are problems too."""
    parsed = parse(data, spec.format)
    problems = list(parsed.problems)
    examples: list[tuple[int, Encoded]] = []
    longest = 0
    for number, messages in parsed.conversations:
        encoded = encode_conversation(tokenizer, messages)
        longest = max(longest, len(encoded))
        if len(encoded) > spec.max_seq_length:
            problems.append(
                (number, f"{len(encoded)} tokens, more than maxSeqLength {spec.max_seq_length}")
            )
        elif encoded.trained_tokens == 0:
            problems.append((number, "the assistant's answer produced no tokens to learn"))
        else:
            examples.append((number, encoded))
    problems.sort()
    report = DatasetReport(
        records=parsed.records,
        invalid=len(problems),
        sha256=parsed.sha256,
        problems=[
            _clip(f"line {n}: {reason}", MAX_PROBLEM_CHARS) for n, reason in problems[:MAX_PROBLEMS]
        ],
        longest_tokens=longest,
    )
    return PreparedDataset(report=report, examples=examples)


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def unusable_error(report: DatasetReport) -> WorkloadError:
    good = report.records - report.invalid
    head = (
        "dataset is empty"
        if report.records == 0
        else f"dataset unusable: {report.invalid} of {report.records} records are invalid"
        + (" (none usable)" if good == 0 else " (more than half)")
    )
    detail = "; ".join(report.problems[:5])
    message = f"{head}: {detail}" if detail else head
    return WorkloadError(REASON_INVALID_DATASET, message, EXIT_INVALID_DATASET)


def summary(report: DatasetReport, examples: Sequence[tuple[int, Encoded]]) -> str:
    tokens = sum(len(e) for _, e in examples)
    return (
        f"dataset: {report.records} records, {report.invalid} invalid, {len(examples)} used "
        f"({tokens} tokens, longest {report.longest_tokens}), sha256 {report.sha256[:12]}"
    )
