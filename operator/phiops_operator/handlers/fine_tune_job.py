"""Kopf glue for FineTuneJob: inputs -> pre-flight Job -> training attempts -> status. Runs
when the resource, its children (Jobs finishing, the progress ConfigMap) or its inputs
(dataset ConfigMap, claims) change."""

from __future__ import annotations

import time
from dataclasses import replace
from typing import Any

import kopf
from phiops_workload.finetune import (
    PROGRESS_KEY,
    REASON_INVALID_DATASET,
    REASON_TRAINING_FAILED,
    Progress,
    estimate_gpu_memory_bytes,
)
from pydantic import ValidationError

from phiops_operator import GROUP, VERSION, metrics
from phiops_operator.builders import fine_tune_job as builder
from phiops_operator.models.fine_tune_job import FineTuneJobSpec
from phiops_operator.models.kinds import FINE_TUNE_JOB
from phiops_operator.observe import job_outcome, job_state, job_times
from phiops_operator.reconcile import Context, InputRef, StatusUpdate, register
from phiops_operator.status import fine_tune_job as status
from phiops_operator.units import parse_quantity, parse_time


async def _missing_inputs(context: Context, spec: FineTuneJobSpec) -> list[str]:
    """Inputs the API can show missing, each with the field naming it."""
    kube, ns, missing = context.kube, context.namespace, []
    dataset = spec.dataset
    if dataset.config_map is not None:
        ref = dataset.config_map
        found = await kube.get("v1", "ConfigMap", ns, ref.name)
        if found is None:
            missing.append(f"ConfigMap {ref.name} (spec.dataset.configMap.name)")
        elif ref.key not in (found.get("data") or {}):
            missing.append(f"key {ref.key} in ConfigMap {ref.name} (spec.dataset.configMap.key)")
    claims = [
        ("spec.dataset.pvc", dataset.pvc),
        ("spec.baseModel.pvc", spec.base_model.pvc),
        ("spec.output.pvc", spec.output.pvc),
    ]
    for field, claim in claims:
        if (
            claim is not None
            and await kube.get("v1", "PersistentVolumeClaim", ns, claim.claim_name) is None
        ):
            missing.append(f"PersistentVolumeClaim {claim.claim_name} ({field}.claimName)")
    return missing


async def _observe_step(
    context: Context, job: dict[str, Any], fallback: str
) -> status.StepObservation:
    name = job["metadata"]["name"]
    outcome = await job_outcome(context.kube, context.namespace, name, fallback)
    started, finished = job_times(job)
    return status.StepObservation(
        name=name,
        state=job_state(job),
        result=outcome.result,
        exit_code=outcome.exit_code,
        pod_reason=outcome.pod_reason,
        pods=outcome.pods,
        started=started,
        finished=finished,
        spec_hash=(job["metadata"].get("annotations") or {}).get(builder.SPEC_HASH_ANNOTATION),
    )


async def _attempts(context: Context) -> list[status.StepObservation]:
    jobs = await context.kube.list(
        "batch/v1",
        "Job",
        context.namespace,
        f"app.kubernetes.io/instance={context.name},"
        f"app.kubernetes.io/component={builder.TRAIN_COMPONENT}",
    )
    jobs.sort(key=lambda j: int(j["metadata"]["labels"].get(builder.ATTEMPT_LABEL, "0")))
    return [await _observe_step(context, job, REASON_TRAINING_FAILED) for job in jobs]


async def _progress(context: Context) -> Progress | None:
    name = f"{context.name}-{builder.PROGRESS_COMPONENT}"
    found = await context.kube.get("v1", "ConfigMap", context.namespace, name)
    text = ((found or {}).get("data") or {}).get(PROGRESS_KEY) or "{}"
    try:
        return Progress.model_validate_json(text)
    except ValidationError:
        return None  # not published yet ("{}") or from another version: ignore


def _record_metrics(
    context: Context, obs: status.FineTuneObservation, fields: dict[str, Any]
) -> None:
    ns, name = context.namespace, context.name
    for phase in metrics.FTJ_PHASES:
        metrics.FTJ_PHASE.labels(ns, name, phase).set(1 if fields.get("phase") == phase else 0)
    if fields.get("startTime"):
        end = parse_time(fields["completionTime"]) if fields.get("completionTime") else time.time()
        metrics.FTJ_DURATION.labels(ns, name).set(end - parse_time(fields["startTime"]))
    if fields.get("phase") == "Succeeded" and "loss" in fields.get("progress", {}):
        metrics.FTJ_FINAL_LOSS.labels(ns, name).set(fields["progress"]["loss"])
    if obs.progress is not None and obs.progress.updated:
        metrics.FTJ_LAST_PROGRESS.labels(ns, name).set(parse_time(obs.progress.updated))
    reasons: dict[str, int] = {}
    for attempt in obs.attempts:
        if attempt.state == "failed":
            reason = (attempt.result.reason if attempt.result else None) or attempt.pod_reason
            reasons[reason or "Error"] = reasons.get(reason or "Error", 0) + 1
    for reason, count in reasons.items():
        metrics.FTJ_RESTARTS.labels(ns, name, reason).set(count)


async def step(context: Context, spec: FineTuneJobSpec) -> StatusUpdate:
    attempts = await _attempts(context)
    # Inputs first: a job waiting for them creates nothing (nothing to leave behind).
    missing = await _missing_inputs(context, spec) if not attempts else []
    if not attempts and not missing:
        # Once training started nothing is re-rendered: the spec is immutable from then on.
        await context.kube.apply_all(builder.setup_children(context.parent, spec, context.config))
    preflight_name = f"{context.name}-{builder.PREFLIGHT_COMPONENT}"
    preflight_job = await context.kube.get("batch/v1", "Job", context.namespace, preflight_name)
    preflight = (
        await _observe_step(context, preflight_job, REASON_INVALID_DATASET)
        if preflight_job
        else None
    )
    training = spec.training
    declared = spec.resources.gpu_memory
    observation = status.FineTuneObservation(
        spec_hash=builder.spec_hash(spec),
        backoff_limit=spec.backoff_limit,
        estimate_bytes=estimate_gpu_memory_bytes(
            spec.base_model.name,
            spec.method,
            training.batch_size,
            spec.dataset.max_seq_length,
            spec.lora.r,
            training.gradient_checkpointing,
            # The trainer image has Liger: `auto` fuses the loss on a GPU.
            fused_loss=training.fused_kernels != "off",
            unquantized_fp32=spec.quantization.unquantized_dtype == "float32",
        ),
        declared_gpu_bytes=int(parse_quantity(declared)) if declared else None,
        missing_inputs=missing,
        preflight=preflight,
        attempts=attempts,
        progress=await _progress(context) if attempts else None,
        output=builder.output_location(context.name, spec),
        now=time.time(),
    )
    action, attempt = status.next_action(observation)
    if action == "none" and (wait := status.preflight_retry_in(observation)) is not None:
        context.hints.again_in(wait + 0.5)
    if action == "preflight":
        await context.kube.apply(builder.preflight_job(context.parent, spec, context.config))
        context.logger.info("pre-flight started: validating the dataset")
        started = status.StepObservation(name=preflight_name, state="active")
        observation = replace(observation, preflight=started)
    elif action == "retry-preflight":
        # The next reconcile finds no pre-flight and starts a fresh one.
        await context.kube.delete(
            "batch/v1", "Job", context.namespace, preflight_name, "Foreground"
        )
        context.logger.info("pre-flight found inputs missing: checking again")
    elif action == "train":
        claim = builder.output_claim(context.parent, spec) if attempt == 0 else None
        if claim is not None:
            await context.kube.apply(claim)
        job = builder.train_job(context.parent, spec, context.config, attempt)
        await context.kube.apply(job)
        context.logger.info(f"training attempt {attempt} started")
        started = status.StepObservation(
            name=job["metadata"]["name"],
            state="active",
            spec_hash=builder.spec_hash(spec),
        )
        observation = replace(observation, attempts=[*attempts, started])
    observed, fields = status.compute(observation)
    _record_metrics(context, observation, fields)
    return observed, fields


def inputs(spec: FineTuneJobSpec) -> set[InputRef]:
    """The dataset ConfigMap and the claims a FineTuneJob reads or writes."""
    refs: set[InputRef] = set()
    if spec.dataset.config_map is not None:
        refs.add(("ConfigMap", spec.dataset.config_map.name))
    for ref in (spec.dataset.pvc, spec.base_model.pvc, spec.output.pvc):
        if ref is not None:
            refs.add(("PersistentVolumeClaim", ref.claim_name))
    return refs


register(FINE_TUNE_JOB, step, inputs)


@kopf.on.delete(GROUP, VERSION, FINE_TUNE_JOB.plural, optional=True)
async def forget_fine_tune_job(body: kopf.Body, **_: Any) -> None:
    """The output claim goes with the resource only under reclaimPolicy Delete (it is owned
    then); everything else is owned and garbage-collected."""
    metrics.forget_fine_tune_job(body.meta["namespace"], body.meta["name"])
