"""What `model.generate` produces, token by token: counted, timed, turned into text as soon
as it decodes to whole characters, and cut at the request's stop sequences."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import torch
from transformers import StoppingCriteria
from transformers.generation.streamers import BaseStreamer

# A byte-level token can end inside a UTF-8 character; the decoder shows that as U+FFFD.
_INCOMPLETE = "\ufffd"


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


class TokenStream(BaseStreamer):
    """A `generate()` streamer. Text is decoded incrementally (a window of a few tokens, so
    SentencePiece spaces come out right) only when someone needs it: a `sink` taking the
    pieces safe to send, or stop sequences to watch for."""

    def __init__(
        self,
        tokenizer: Any,
        stop: tuple[str, ...] = (),
        sink: Callable[[str], None] | None = None,
    ) -> None:
        self.tokenizer = tokenizer
        self.stop = tuple(s for s in stop if s)
        self.sink = sink
        self.decoding = sink is not None or bool(self.stop)
        self.ids: list[int] = []
        self.text = ""
        self.sent = 0
        self.stopped = False
        """A stop sequence appeared: generation ends at this step, `text` is cut before it."""
        self.cancelled = threading.Event()
        self.first_token_at: float | None = None
        self._prompt_seen = False
        self._prefix = 0
        self._read = 0

    def put(self, value: torch.Tensor) -> None:
        if not self._prompt_seen:  # generate() hands over the prompt first
            self._prompt_seen = True
            return
        if self.first_token_at is None:
            self.first_token_at = time.monotonic()
        self.ids.extend(value.reshape(-1).tolist())
        if self.decoding and not self.stopped:
            self._add(self._decode_new(final=False))

    def end(self) -> None:
        if self.decoding and not self.stopped:
            self._add(self._decode_new(final=True))
            self._emit(len(self.text))

    @property
    def last_token(self) -> int | None:
        return self.ids[-1] if self.ids else None

    def final_text(self) -> str:
        """The whole completion (cut at a stop sequence), once generation has ended."""
        if self.decoding:
            return self.text
        return str(self.tokenizer.decode(self.ids, skip_special_tokens=True))

    def _decode(self, ids: list[int]) -> str:
        return str(self.tokenizer.decode(ids, skip_special_tokens=True))

    def _decode_new(self, final: bool) -> str:
        before = self._decode(self.ids[self._prefix : self._read])
        after = self._decode(self.ids[self._prefix :])
        if len(after) <= len(before) or (after.endswith(_INCOMPLETE) and not final):
            return ""
        self._prefix, self._read = self._read, len(self.ids)
        return after[len(before) :]

    def _add(self, piece: str) -> None:
        if not piece:
            return
        longest = max((len(s) for s in self.stop), default=0)
        start = max(0, len(self.text) - longest + 1)
        self.text += piece
        window, found = cut_at_stop(self.text[start:], self.stop)
        if found:
            self.text = self.text[:start] + window
            self.stopped = True
            self.cancelled.set()
            self._emit(len(self.text))
        else:
            self._emit(len(self.text) - held_back(self.text, self.stop))

    def _emit(self, upto: int) -> None:
        if self.sink is not None and upto > self.sent:
            self.sink(self.text[self.sent : upto])
            self.sent = upto


class Cancelled(StoppingCriteria):
    """Ends a generation once its stream is cancelled (a stop sequence, or the client left)."""

    def __init__(self, stream: TokenStream) -> None:
        self.stream = stream

    def __call__(self, input_ids: torch.Tensor, scores: Any, **kwargs: Any) -> torch.Tensor:
        done = self.stream.cancelled.is_set()
        return torch.full((input_ids.shape[0],), done, dtype=torch.bool)
