"""Markdown, text, HTML and PDF become text; broken documents raise ExtractionError."""

from __future__ import annotations

import pytest
from phiops_embed.formats import ExtractionError, detect_format, extract

from tests.unit.embed.conftest import FIXTURES
from tests.unit.embed.pdfgen import make_pdf


def test_format_detection_by_extension_content_type_and_bytes() -> None:
    assert detect_format("a/b/guide.MD", None, b"") == "markdown"
    assert detect_format("page.htm", "application/pdf", b"") == "html"  # extension first
    assert detect_format("/docs/page", "text/html; charset=utf-8", b"") == "html"
    assert detect_format("/report", "application/octet-stream", b"%PDF-1.7 ...") == "pdf"
    assert detect_format("noext", None, b"  <!DOCTYPE html><html>") == "html"
    assert detect_format("README", None, b"just words") == "text"


def test_html_keeps_headings_and_drops_scripts() -> None:
    text = extract((FIXTURES / "security.html").read_bytes(), "html")
    assert text.structured
    assert "# Account security" in text.text.splitlines()
    assert "## Password resets" in text.text.splitlines()
    assert "expires after 30 minutes" in text.text
    assert "var x" not in text.text and "color:red" not in text.text
    assert "Never share your one-time codes." in text.text.splitlines()


def test_pdf_text_is_extracted_from_every_page() -> None:
    data = make_pdf([["Glacier tents are rated for -30 C."], ["Page two: the stove manual."]])
    text = extract(data, "pdf")
    assert "Glacier tents are rated for -30 C." in text.text
    assert "stove manual" in text.text
    assert not text.structured


def test_markdown_and_text_decode_strictly() -> None:
    assert extract("# Título\n\nçà".encode(), "markdown").text == "# Título\n\nçà"
    assert extract("\ufeffwith BOM".encode(), "text").text == "with BOM"
    assert extract("utf16 text".encode("utf-16"), "text").text == "utf16 text"
    assert extract("caf\xe9".encode("latin-1"), "text", "text/plain; charset=latin-1").text == (
        "café"
    )
    with pytest.raises(ExtractionError, match="utf-8"):
        extract(b"caf\xe9 \xff\xfe\xfd broken", "text")
    with pytest.raises(ExtractionError, match="binary"):
        extract(b"\x00\x01\x02binary", "text")


def test_corrupt_pdf_raises_extraction_error() -> None:
    good = make_pdf([["fine"]])
    for broken in (good[: len(good) // 3], b"%PDF-1.4\n" + bytes(range(256)) * 8):
        with pytest.raises(ExtractionError):
            extract(broken, "pdf")
