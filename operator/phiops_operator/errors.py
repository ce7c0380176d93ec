"""Turn pydantic validation errors into messages that name the offending field."""

from __future__ import annotations

from pydantic import ValidationError


class FieldError(ValueError):
    """A model validator's complaint about one nested field: `path` is relative to the model
    the validator sits on (e.g. `("adapters", 1, "name")`), so the message can name
    `spec.adapters[1].name` instead of the whole spec."""

    def __init__(self, path: tuple[int | str, ...], message: str) -> None:
        super().__init__(message)
        self.path = path


def field_path(root: str, loc: tuple[int | str, ...]) -> str:
    path = root
    for part in loc:
        path += f"[{part}]" if isinstance(part, int) else f".{part}"
    return path


def describe(err: ValidationError, root: str = "spec", limit: int = 5) -> str:
    """`spec.chunking.overlap: must be smaller than spec.chunking.size; ...` (first `limit`)."""
    parts = []
    for detail in err.errors()[:limit]:
        loc = tuple(detail["loc"])
        cause = (detail.get("ctx") or {}).get("error")
        if isinstance(cause, FieldError):
            loc += cause.path
        message = detail["msg"].removeprefix("Value error, ")
        parts.append(f"{field_path(root, loc)}: {message}")
    more = len(err.errors()) - limit
    if more > 0:
        parts.append(f"... and {more} more")
    return "; ".join(parts)
