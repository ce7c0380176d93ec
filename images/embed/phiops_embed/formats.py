"""Turn a document's bytes into text: Markdown, plain text, HTML (headings kept), PDF."""

from __future__ import annotations

import io
import re
from dataclasses import dataclass
from typing import Literal

Format = Literal["markdown", "text", "html", "pdf"]

_BY_EXTENSION: dict[str, Format] = {
    ".md": "markdown",
    ".markdown": "markdown",
    ".mdx": "markdown",
    ".txt": "text",
    ".text": "text",
    ".rst": "text",
    ".html": "html",
    ".htm": "html",
    ".xhtml": "html",
    ".pdf": "pdf",
}
_BY_CONTENT_TYPE: dict[str, Format] = {
    "text/markdown": "markdown",
    "text/x-markdown": "markdown",
    "text/plain": "text",
    "text/html": "html",
    "application/xhtml+xml": "html",
    "application/pdf": "pdf",
}


class ExtractionError(Exception):
    """The document cannot be turned into text; it is skipped and reported."""


@dataclass(frozen=True)
class ExtractedText:
    text: str
    structured: bool
    """True when `#` lines are headings (Markdown, and HTML converted to it)."""


def detect_format(name: str, content_type: str | None, data: bytes) -> Format:
    """By extension, then by content type, then by the first bytes."""
    suffix = name.rsplit("/", 1)[-1]
    suffix = suffix[suffix.rfind(".") :].lower() if "." in suffix else ""
    if suffix in _BY_EXTENSION:
        return _BY_EXTENSION[suffix]
    mime = (content_type or "").split(";")[0].strip().lower()
    if mime in _BY_CONTENT_TYPE:
        return _BY_CONTENT_TYPE[mime]
    head = data[:1024].lstrip().lower()
    if head.startswith(b"%pdf-"):
        return "pdf"
    if head.startswith((b"<!doctype html", b"<html")) or b"<body" in head:
        return "html"
    return "text"


def extract(data: bytes, fmt: Format, content_type: str | None = None) -> ExtractedText:
    if fmt == "pdf":
        return ExtractedText(_pdf_text(data), structured=False)
    if fmt == "html":
        return ExtractedText(_html_text(data, _charset(content_type)), structured=True)
    text = _decode(data, _charset(content_type))
    return ExtractedText(_tidy(text), structured=fmt == "markdown")


def _charset(content_type: str | None) -> str | None:
    match = re.search(r"charset=[\"']?([\w.-]+)", content_type or "", re.IGNORECASE)
    return match.group(1) if match else None


def _decode(data: bytes, charset: str | None) -> str:
    """Strict: guessing an encoding would embed mojibake; a wrong file is reported instead."""
    bom16 = data.startswith((b"\xff\xfe", b"\xfe\xff"))
    encoding = "utf-16" if bom16 else charset or "utf-8-sig"
    try:
        text = data.decode(encoding)
    except (UnicodeDecodeError, LookupError) as err:
        raise ExtractionError(f"not valid {encoding} text: {err}") from err
    if "\x00" in text:
        raise ExtractionError("binary content (NUL bytes), not text")
    return text


def _tidy(text: str) -> str:
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    text = re.sub(r"[ \t\f\v]+\n", "\n", text)
    return re.sub(r"\n{3,}", "\n\n", text).strip()


_HEADINGS = ("h1", "h2", "h3", "h4", "h5", "h6")
_BLOCKS = (
    "p",
    "div",
    "section",
    "article",
    "main",
    "header",
    "footer",
    "li",
    "ul",
    "ol",
    "dl",
    "dt",
    "dd",
    "pre",
    "blockquote",
    "table",
    "tr",
    "figure",
    "figcaption",
    "br",
    "hr",
)


def _html_text(data: bytes, charset: str | None) -> str:
    """HTML to Markdown-ish text: headings become `#` lines so chunks keep their heading path."""
    from bs4 import BeautifulSoup
    from bs4.element import NavigableString

    try:
        soup = BeautifulSoup(data, "html.parser", from_encoding=charset)
    except Exception as err:  # bs4 raises assorted errors on hostile input
        raise ExtractionError(f"cannot parse HTML: {err}") from err
    for tag in soup.find_all(["script", "style", "noscript", "template", "head", "svg"]):
        tag.decompose()
    for tag in soup.find_all(_HEADINGS):
        level = int(tag.name[1])
        title = " ".join(tag.get_text(" ", strip=True).split())
        tag.replace_with(NavigableString(f"\n\n{'#' * level} {title}\n\n" if title else "\n"))
    for tag in soup.find_all(_BLOCKS):
        tag.insert_before(NavigableString("\n"))
        tag.insert_after(NavigableString("\n"))
    text = soup.get_text()
    # Source indentation and line wrapping inside a paragraph are not meaningful in HTML.
    lines = [" ".join(line.split()) for line in text.split("\n")]
    return _tidy("\n".join(lines))


def _pdf_text(data: bytes) -> str:
    from pypdf import PdfReader

    try:
        reader = PdfReader(io.BytesIO(data), strict=False)
        if reader.is_encrypted and not reader.decrypt(""):
            raise ExtractionError("the PDF is encrypted")
        pages = [page.extract_text() or "" for page in reader.pages]
    except ExtractionError:
        raise
    except Exception as err:  # pypdf raises many types on corrupt files; all mean "unreadable"
        raise ExtractionError(f"cannot read PDF: {err}") from err
    return _tidy("\n\n".join(pages))
