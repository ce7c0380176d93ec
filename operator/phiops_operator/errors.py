"""Turn pydantic validation errors into messages that name the offending field."""

from __future__ import annotations

from pydantic import ValidationError


def field_path(root: str, loc: tuple[int | str, ...]) -> str:
    path = root
    for part in loc:
        path += f"[{part}]" if isinstance(part, int) else f".{part}"
    return path


def describe(err: ValidationError, root: str = "spec", limit: int = 5) -> str:
    """`spec.chunking.overlap: must be smaller than spec.chunking.size; ...` (first `limit`)."""
    parts = []
    for detail in err.errors()[:limit]:
        message = detail["msg"].removeprefix("Value error, ")
        parts.append(f"{field_path(root, tuple(detail['loc']))}: {message}")
    more = len(err.errors()) - limit
    if more > 0:
        parts.append(f"... and {more} more")
    return "; ".join(parts)
