"""Kopf glue for FineTuneJob: parse -> build -> apply -> status."""

from __future__ import annotations

from typing import Any

import kopf

from phiops_operator import GROUP, VERSION
from phiops_operator.builders import fine_tune_job as builder
from phiops_operator.models.kinds import FINE_TUNE_JOB
from phiops_operator.reconcile import reconcile
from phiops_operator.status.common import awaiting_workload, invalid_spec


def _status(_spec: Any, applied: list[dict[str, Any]]) -> Any:
    return awaiting_workload(applied[0]["metadata"]["name"], "training")


@kopf.on.resume(GROUP, VERSION, FINE_TUNE_JOB.plural)
@kopf.on.create(GROUP, VERSION, FINE_TUNE_JOB.plural)
@kopf.on.update(GROUP, VERSION, FINE_TUNE_JOB.plural)
async def reconcile_fine_tune_job(
    body: kopf.Body, patch: kopf.Patch, memo: kopf.Memo, **_: Any
) -> None:
    await reconcile(FINE_TUNE_JOB, body, patch, memo, builder.build, _status, invalid_spec)
