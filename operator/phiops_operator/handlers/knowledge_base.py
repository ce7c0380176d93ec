"""Kopf glue for KnowledgeBase: parse -> build -> apply -> status."""

from __future__ import annotations

from typing import Any

import kopf

from phiops_operator import GROUP, VERSION
from phiops_operator.builders import knowledge_base as builder
from phiops_operator.models.kinds import KNOWLEDGE_BASE
from phiops_operator.reconcile import reconcile
from phiops_operator.status.common import awaiting_workload, invalid_spec


def _status(_spec: Any, applied: list[dict[str, Any]]) -> Any:
    return awaiting_workload(applied[0]["metadata"]["name"], "embedding")


@kopf.on.resume(GROUP, VERSION, KNOWLEDGE_BASE.plural)
@kopf.on.create(GROUP, VERSION, KNOWLEDGE_BASE.plural)
@kopf.on.update(GROUP, VERSION, KNOWLEDGE_BASE.plural)
async def reconcile_knowledge_base(
    body: kopf.Body, patch: kopf.Patch, memo: kopf.Memo, **_: Any
) -> None:
    await reconcile(KNOWLEDGE_BASE, body, patch, memo, builder.build, _status, invalid_spec)
