"""Kopf glue for PhiDeployment: parse -> build -> apply -> status."""

from __future__ import annotations

from phiops_operator.builders import phi_deployment as builder
from phiops_operator.models.kinds import PHI_DEPLOYMENT
from phiops_operator.models.phi_deployment import PhiDeploymentSpec
from phiops_operator.reconcile import Context, StatusUpdate, register
from phiops_operator.status.common import awaiting_workload


async def step(context: Context, spec: PhiDeploymentSpec) -> StatusUpdate:
    applied = [
        await context.kube.apply(c) for c in builder.build(context.parent, spec, context.config)
    ]
    return awaiting_workload(applied[0]["metadata"]["name"], "inference"), {}


register(PHI_DEPLOYMENT, step)
