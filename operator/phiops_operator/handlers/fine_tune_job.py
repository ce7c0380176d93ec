"""Kopf glue for FineTuneJob: parse -> build -> apply -> status."""

from __future__ import annotations

from typing import Any

import kopf

from phiops_operator import GROUP, VERSION
from phiops_operator.builders import fine_tune_job as builder
from phiops_operator.models.fine_tune_job import FineTuneJobSpec
from phiops_operator.models.kinds import FINE_TUNE_JOB
from phiops_operator.reconcile import Context, StatusUpdate, reconcile
from phiops_operator.status.common import awaiting_workload


async def step(context: Context, spec: FineTuneJobSpec) -> StatusUpdate:
    applied = [
        await context.kube.apply(c) for c in builder.build(context.parent, spec, context.config)
    ]
    return awaiting_workload(applied[0]["metadata"]["name"], "training"), {}


@kopf.on.resume(GROUP, VERSION, FINE_TUNE_JOB.plural)
@kopf.on.create(GROUP, VERSION, FINE_TUNE_JOB.plural)
@kopf.on.update(GROUP, VERSION, FINE_TUNE_JOB.plural)
async def reconcile_fine_tune_job(
    body: kopf.Body, patch: kopf.Patch, memo: kopf.Memo, logger: Any, **_: Any
) -> None:
    await reconcile(FINE_TUNE_JOB, body, patch, memo, logger, step)
