"""Split text into chunks measured in the embedding model's own tokens.

Every strategy packs token windows over the original text (chunks are slices of it, never
detokenized text) and cuts at the best boundary inside the window:
- `fixed`: the last word boundary that fits;
- `recursive`: paragraph > sentence > line > word boundary, in the second half of the window;
- `markdown`: sections by heading first (each chunk keeps its heading path), then recursive.
A final guard re-tokenizes each chunk as the model will read it and shrinks any that would
exceed the model's limit, so nothing is ever silently truncated by the model.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from phiops_workload.knowledge import ChunkingConfig

log = logging.getLogger(__name__)

HEADING_SEPARATOR = " > "
LEAD_SEPARATOR = ": "


class Tokenizer(Protocol):
    """What chunking needs from a tokenizer: token spans and word membership."""

    def spans(self, text: str) -> tuple[list[tuple[int, int]], list[int | None]]:
        """Character offsets of each token (no special tokens) and its word index."""
        ...

    def count(self, text: str) -> int:
        """Tokens the model reads for `text`, without special tokens."""
        ...


class HFTokenizer:
    """A Hugging Face fast tokenizer (the embedding model's)."""

    def __init__(self, tokenizer: object) -> None:
        self._tok = tokenizer

    def spans(self, text: str) -> tuple[list[tuple[int, int]], list[int | None]]:
        enc = self._tok(  # type: ignore[operator]
            text, add_special_tokens=False, return_offsets_mapping=True, verbose=False
        )
        offsets = [(int(a), int(b)) for a, b in enc["offset_mapping"]]
        return offsets, list(enc.word_ids())

    def count(self, text: str) -> int:
        enc = self._tok(text, add_special_tokens=False, verbose=False)  # type: ignore[operator]
        return len(enc["input_ids"])


@dataclass(frozen=True)
class Chunk:
    text: str
    """The slice of the document (what is stored and shown)."""
    heading: str
    """Heading path, e.g. "Returns > Refunds" ("" outside any heading): stored and cited."""
    tokens: int
    """Tokens of `embed_text`, without the model's special tokens."""
    context: str | None = None
    """What leads the embedded text: the document's title (its path and lead) then the
    heading path. None: the heading path alone."""

    @property
    def embed_text(self) -> str:
        """What the model reads: the title and heading path give the chunk its context."""
        prefix = self.heading if self.context is None else self.context
        return f"{prefix}\n{self.text}" if prefix else self.text


@dataclass(frozen=True)
class Section:
    heading: str
    text: str


# Boundary strengths: where a cut before a token is allowed and how good it is.
_INSIDE_WORD = -1  # inside one word of the tokenizer: re-tokenizing would differ
_WORD = 0  # between two words without whitespace ("policy" "," or "x" "/" "y")
_SPACE = 1
_LINE = 2
_SENTENCE = 3
_PARAGRAPH = 4

_HEADING_RE = re.compile(r"^ {0,3}(#{1,6})[ \t]+(.*?)[ \t]*#*[ \t]*$")
_FENCE_RE = re.compile(r"^ {0,3}(`{3,}|~{3,})")
_HEADING_MARK_RE = re.compile(r"^ {0,3}#{1,6}[ \t]+", re.MULTILINE)
# Characters read to find a document's lead: far more than its tokens ever need.
_LEAD_CHARS_PER_TOKEN = 64


class Chunker:
    def __init__(self, config: ChunkingConfig, tokenizer: Tokenizer, max_tokens: int) -> None:
        """`max_tokens`: what the model reads at most, without its special tokens."""
        if max_tokens < 8:
            raise ValueError(f"max_tokens {max_tokens} is too small to chunk for")
        self.strategy = config.strategy
        self.size = max(8, min(config.size, max_tokens))
        if config.size > max_tokens:
            log.warning(
                "chunk size %d is over the model's %d tokens: using %d",
                config.size,
                max_tokens,
                self.size,
            )
        # An overlap of half a chunk or more would make more chunks than text.
        self.overlap = max(0, min(config.overlap, self.size // 2))
        self.lead_tokens = config.lead_tokens
        self.max_tokens = max_tokens
        self.tokenizer = tokenizer

    def chunk(self, text: str, structured: bool = True, title: str = "") -> list[Chunk]:
        """`title` (the document's path, when the KnowledgeBase includes it) and the document's
        lead (`Chunker.lead`) head every chunk's embedded text before its heading path: a chunk from
        the middle of a document then still says which document it belongs to and what that
        document is about (measured on the evaluation set: the path +11 points grounded@5,
        the lead +10 points grounded@1)."""
        if self.strategy == "markdown" and structured:
            sections = split_sections(text)
        else:
            sections = [Section("", text)]
        title = LEAD_SEPARATOR.join(p for p in (title, self.lead(text)) if p)
        chunks: list[Chunk] = []
        for section in sections:
            chunks.extend(self._chunk_section(section, title))
        return chunks

    def lead(self, text: str) -> str:
        """The document's first `lead_tokens` tokens on one line, ending at a whole word and
        without markdown heading marks: its title and opening words, which say what it is
        about (a manual page's name line, a README's title and first sentence)."""
        if self.lead_tokens <= 0:
            return ""
        head = text[: self.lead_tokens * _LEAD_CHARS_PER_TOKEN]
        flat = " ".join(_HEADING_MARK_RE.sub("", head).split())
        offsets, words = self.tokenizer.spans(flat)
        if len(offsets) <= self.lead_tokens:
            return flat
        end = self.lead_tokens
        while end > 1 and words[end] is not None and words[end] == words[end - 1]:
            end -= 1  # the next token continues this word: stop before the word
        return flat[: offsets[end - 1][1]]

    def _chunk_section(self, section: Section, title: str = "") -> list[Chunk]:
        heading = self._fit_heading(section.heading)
        context = self._context(title, heading) if title else None
        prefix = heading if context is None else context
        heading_tokens = self.tokenizer.count(prefix) if prefix else 0
        budget = self.size - heading_tokens
        body = section.text
        offsets, words = self.tokenizer.spans(body)
        if not offsets:
            return []
        strengths = _boundaries(body, offsets, words)
        chunks: list[Chunk] = []
        start = 0
        n = len(offsets)
        while start < n:
            end = n if n - start <= budget else self._cut(strengths, start, start + budget)
            chunk = self._guarded(body, heading, context, offsets, strengths, start, end)
            chunks.append(chunk[0])
            end = chunk[1]
            if end >= n:
                break
            start = self._next_start(strengths, start, end)
        return chunks

    def _context(self, title: str, heading: str) -> str:
        """Title then heading path (already fitted), together in at most a quarter of a chunk.
        The heading path is the more specific, so the title is cut to the room it leaves:
        the lead's last words go first, the path last."""
        room = self.size // 4
        if heading:
            room -= self.tokenizer.count(heading + HEADING_SEPARATOR)
        return HEADING_SEPARATOR.join(p for p in (self._truncate(title, room), heading) if p)

    def _fit_heading(self, heading: str) -> str:
        """Keep the heading path to at most a quarter of a chunk: the body matters more."""
        limit = self.size // 4
        parts = heading.split(HEADING_SEPARATOR) if heading else []
        while len(parts) > 1 and self.tokenizer.count(HEADING_SEPARATOR.join(parts)) > limit:
            parts = parts[1:]
        return self._truncate(HEADING_SEPARATOR.join(parts), limit)

    def _truncate(self, text: str, limit: int) -> str:
        """`text` cut to its first `limit` tokens (nothing when `limit` is not positive)."""
        if limit <= 0:
            return ""
        if not text or self.tokenizer.count(text) <= limit:
            return text
        offsets, _ = self.tokenizer.spans(text)
        return text[: offsets[limit - 1][1]]

    def _cut(self, strengths: Sequence[int], start: int, limit: int) -> int:
        """Where to end a chunk starting at `start` that may not go past token `limit`."""
        window = range(limit, start, -1)  # cut before token i: the chunk is [start, i)
        if self.strategy == "fixed":
            for minimum in (_SPACE, _WORD):
                for i in window:
                    if strengths[i] >= minimum:
                        return i
            return limit
        # recursive/markdown: the strongest boundary in the second half of the window, the
        # latest among equals; small first pieces are not worth a chunk of their own.
        low = start + max(1, (limit - start) // 2)
        best, best_strength = limit, _INSIDE_WORD
        for i in window:
            if i < low and best_strength >= _SPACE:
                break
            if strengths[i] > best_strength:
                best, best_strength = i, strengths[i]
                if best_strength == _PARAGRAPH:
                    break
        return best

    def _next_start(self, strengths: Sequence[int], start: int, end: int) -> int:
        """The earliest word start at most `overlap` tokens before `end` (progress assured)."""
        if self.overlap == 0:
            return end
        for minimum in (_SPACE, _WORD):
            for i in range(max(start + 1, end - self.overlap), end):
                if strengths[i] >= minimum:
                    return i
        return end

    def _guarded(
        self,
        body: str,
        heading: str,
        context: str | None,
        offsets: Sequence[tuple[int, int]],
        strengths: Sequence[int],
        start: int,
        end: int,
    ) -> tuple[Chunk, int]:
        """The chunk [start, end), shrunk until the model reads all of it."""
        while True:
            text = body[offsets[start][0] : offsets[end - 1][1]]
            chunk = Chunk(text=text, heading=heading, tokens=0, context=context)
            tokens = self.tokenizer.count(chunk.embed_text)
            if tokens <= self.max_tokens or end - start <= 1:
                return Chunk(text=text, heading=heading, tokens=tokens, context=context), end
            # Re-tokenizing a slice can differ from the slice of the whole: step back a word.
            cut = end - 1
            while cut > start + 1 and strengths[cut] < _WORD:
                cut -= 1
            end = cut


def _boundaries(
    text: str, offsets: Sequence[tuple[int, int]], words: Sequence[int | None]
) -> list[int]:
    """strengths[i]: how good a cut before token i is (index 0 and n are the ends)."""
    n = len(offsets)
    strengths = [_INSIDE_WORD] * (n + 1)
    strengths[0] = strengths[n] = _PARAGRAPH
    for i in range(1, n):
        gap = text[offsets[i - 1][1] : offsets[i][0]]
        if not gap:
            same_word = words[i] is not None and words[i] == words[i - 1]
            strengths[i] = _INSIDE_WORD if same_word else _WORD
        elif gap.count("\n") >= 2:
            strengths[i] = _PARAGRAPH
        elif text[offsets[i - 1][1] - 1] in ".!?;:" and not gap.strip():
            strengths[i] = _SENTENCE
        elif "\n" in gap:
            strengths[i] = _LINE
        else:
            strengths[i] = _SPACE
    return strengths


def split_sections(text: str) -> list[Section]:
    """Markdown sections with their heading paths; `#` lines inside code fences are code."""
    sections: list[Section] = []
    stack: list[tuple[int, str]] = []
    body: list[str] = []
    fence: str | None = None

    def flush() -> None:
        content = "\n".join(body).strip()
        if content:
            path = HEADING_SEPARATOR.join(title for _, title in stack)
            sections.append(Section(path, content))
        body.clear()

    for line in text.split("\n"):
        fence_match = _FENCE_RE.match(line)
        if fence is not None:
            if fence_match and fence_match.group(1)[0] == fence[0]:
                fence = None
            body.append(line)
            continue
        if fence_match:
            fence = fence_match.group(1)
            body.append(line)
            continue
        heading = _HEADING_RE.match(line)
        if heading and heading.group(2):
            flush()
            level = len(heading.group(1))
            while stack and stack[-1][0] >= level:
                stack.pop()
            stack.append((level, heading.group(2)))
            continue
        body.append(line)
    flush()
    return sections
