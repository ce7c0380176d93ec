"""Phi-3's chat format: the template, and one conversation turned into token ids plus labels
that train only on the assistant's tokens.

The same `encode_conversation` serves the pre-flight (its length decides "over-long") and the
training, so what the pre-flight accepts is exactly what the trainer sees.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

IGNORE_INDEX = -100

# Phi-3-mini-instruct's own template: `<|role|>\ncontent<|end|>\n` per message, the assistant
# header as generation prompt, the end-of-text token closing a whole conversation.
PHI3_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}{{ '<|system|>\n' + message['content'] + '<|end|>\n' }}"
    "{% elif message['role'] == 'user' %}{{ '<|user|>\n' + message['content'] + '<|end|>\n' }}"
    "{% elif message['role'] == 'assistant' %}"
    "{{ '<|assistant|>\n' + message['content'] + '<|end|>\n' }}"
    "{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% else %}{{ eos_token }}{% endif %}"
)

PHI3_SPECIAL_TOKENS = ("<|endoftext|>", "<|user|>", "<|assistant|>", "<|system|>", "<|end|>")

Message = dict[str, str]


@dataclass(frozen=True)
class Encoded:
    input_ids: list[int]
    labels: list[int]
    """`input_ids` where the model should learn, `IGNORE_INDEX` elsewhere."""

    def __len__(self) -> int:
        return len(self.input_ids)

    @property
    def trained_tokens(self) -> int:
        return sum(1 for label in self.labels if label != IGNORE_INDEX)


def ensure_chat_template(tokenizer: PreTrainedTokenizerBase) -> None:
    """Use the tokenizer's own chat template; set Phi-3's when it has none. Give it a pad token
    (Phi-3's is `<|endoftext|>`, which is also its end-of-sequence token)."""
    if not getattr(tokenizer, "chat_template", None):
        tokenizer.chat_template = PHI3_CHAT_TEMPLATE
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token


def render(
    tokenizer: PreTrainedTokenizerBase, messages: Sequence[Message], generation_prompt: bool
) -> str:
    text = tokenizer.apply_chat_template(
        list(messages), tokenize=False, add_generation_prompt=generation_prompt
    )
    if not isinstance(text, str):  # pragma: no cover - tokenize=False always gives text
        raise TypeError(f"chat template rendered {type(text).__name__}, not text")
    return text


def _common_prefix(a: str, b: str) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


def assistant_spans(
    tokenizer: PreTrainedTokenizerBase, messages: Sequence[Message]
) -> tuple[str, list[tuple[int, int]]]:
    """The whole conversation's text and the character spans the model must learn: each
    assistant message's content and its end-of-turn marker (so it learns to stop), never the
    `<|assistant|>` header, the user's or system's words.

    Works for any template whose rendering of a conversation's first messages is a prefix of
    the rendering of the whole (Phi-3's is); otherwise only the last assistant turn is
    trained, and if even that cannot be located, the whole text.
    """
    full = render(tokenizer, messages, generation_prompt=False)
    spans: list[tuple[int, int]] = []
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        prompt = render(tokenizer, messages[:i], generation_prompt=True) if i else ""
        if not full.startswith(prompt):
            spans = []
            break
        upto = render(tokenizer, messages[: i + 1], generation_prompt=False)
        end = len(full) if i == len(messages) - 1 else _common_prefix(upto, full)
        if end > len(prompt):
            spans.append((len(prompt), end))
    if spans:
        return full, spans
    last = max(i for i, m in enumerate(messages) if m["role"] == "assistant")
    prompt = render(tokenizer, messages[:last], generation_prompt=True) if last else ""
    if full.startswith(prompt):
        return full, [(len(prompt), len(full))]
    return full, [(0, len(full))]


def encode_conversation(tokenizer: PreTrainedTokenizerBase, messages: Sequence[Message]) -> Encoded:
    """Tokenize the rendered conversation in one piece (as inference will see it) and label the
    tokens that lie inside an assistant span."""
    text, spans = assistant_spans(tokenizer, messages)
    encoding: Any = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids: list[int] = list(encoding["input_ids"])
    offsets: list[tuple[int, int]] = list(encoding["offset_mapping"])
    labels = [IGNORE_INDEX] * len(ids)
    span_index = 0
    for t, (start, end) in enumerate(offsets):
        while span_index < len(spans) and start >= spans[span_index][1]:
            span_index += 1
        if span_index < len(spans):
            span_start, span_end = spans[span_index]
            # A span's end may reach a few characters into the next header ("<|" of
            # "<|user|>" is common to it and to "<|endoftext|>"): such a token is not the
            # assistant's, as it ends past the span.
            if span_start <= start and end <= span_end:
                labels[t] = ids[t]
    return Encoded(input_ids=ids, labels=labels)
