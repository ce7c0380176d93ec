"""Kopf glue for PhiDeployment: parse -> build -> apply -> status."""

from __future__ import annotations

from typing import Any

import kopf

from phiops_operator import GROUP, VERSION
from phiops_operator.builders import phi_deployment as builder
from phiops_operator.models.kinds import PHI_DEPLOYMENT
from phiops_operator.models.phi_deployment import PhiDeploymentSpec
from phiops_operator.reconcile import Context, StatusUpdate, reconcile
from phiops_operator.status.common import awaiting_workload


async def step(context: Context, spec: PhiDeploymentSpec) -> StatusUpdate:
    applied = [
        await context.kube.apply(c) for c in builder.build(context.parent, spec, context.config)
    ]
    return awaiting_workload(applied[0]["metadata"]["name"], "inference"), {}


@kopf.on.resume(GROUP, VERSION, PHI_DEPLOYMENT.plural)
@kopf.on.create(GROUP, VERSION, PHI_DEPLOYMENT.plural)
@kopf.on.update(GROUP, VERSION, PHI_DEPLOYMENT.plural)
async def reconcile_phi_deployment(
    body: kopf.Body, patch: kopf.Patch, memo: kopf.Memo, logger: Any, **_: Any
) -> None:
    await reconcile(PHI_DEPLOYMENT, body, patch, memo, logger, step)
