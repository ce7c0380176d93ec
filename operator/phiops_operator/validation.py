"""Everything checked before a reconcile creates anything: the spec against its model, and
the resource's name against what its children need (see names.py). A resource that fails
here gets InvalidSpec and no children at all."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ValidationError

from phiops_operator.errors import describe
from phiops_operator.models.kinds import Kind
from phiops_operator.names import name_problem


class InvalidSpec(Exception):
    """The resource cannot work as written; the message names the fields."""


def validate(kind: Kind, name: str, spec: Mapping[str, Any]) -> BaseModel:
    """The parsed spec, or InvalidSpec listing every problem found (name first)."""
    problems = [p for p in (name_problem(kind, name),) if p]
    parsed = None
    try:
        parsed = kind.spec.model_validate(dict(spec))
    except ValidationError as err:
        problems.append(describe(err))
    if problems or parsed is None:
        raise InvalidSpec("; ".join(problems))
    return parsed
