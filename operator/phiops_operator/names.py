"""How long a custom resource's name may be, derived from the children its builder names.

The CRD schema cannot limit `metadata.name` on Kubernetes 1.20 (no CEL), and the API server
accepts any DNS subdomain of up to 253 characters. Children are named `<name>-<component>`
and labelled with the name, so a long name only fails when a child is created, half-way
through. This module tells, before anything is created, the longest name whose children
all fit, computed by calling the builders' own naming functions. PURE.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

from pydantic import BaseModel

from phiops_operator.builders import fine_tune_job as ftj_builder
from phiops_operator.builders import knowledge_base as kb_builder
from phiops_operator.builders import phi_deployment as pd_builder
from phiops_operator.builders.common import child_name
from phiops_operator.models.fine_tune_job import FineTuneJobSpec
from phiops_operator.models.kinds import FINE_TUNE_JOB, KNOWLEDGE_BASE, PHI_DEPLOYMENT, Kind
from phiops_operator.models.knowledge_base import Sync

LABEL_VALUE_MAX = 63  # label values, and so the names of Jobs (their pods' job-name label)
DNS_LABEL_MAX = 63  # Service names (RFC 1035 labels)
DNS_1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")


def _upper_bound(model: type[BaseModel], field: str) -> int:
    """The `le` bound a model declares for `field` (so the limits follow the models)."""
    for item in model.model_fields[field].metadata:
        if isinstance(getattr(item, "le", None), int):
            return int(item.le)
    raise ValueError(f"{model.__name__}.{field} declares no upper bound")


MAX_ATTEMPT = _upper_bound(FineTuneJobSpec, "backoff_limit")  # attempts are numbered 0..limit
MAX_SHARD = _upper_bound(Sync, "parallelism") - 1


@dataclass(frozen=True)
class DerivedName:
    """One name or label value a builder derives from the resource's name."""

    what: str
    derive: Callable[[str], str]
    max_length: int
    dns_1035: bool = False  # a Service name: must start with a letter, no dots


def _instance_label(name: str) -> str:
    return name


# Every derived name that has a limit tighter than an object name's 253 characters.
_COMMON = [DerivedName("the label app.kubernetes.io/instance", _instance_label, LABEL_VALUE_MAX)]
DERIVED: dict[str, list[DerivedName]] = {
    KNOWLEDGE_BASE.kind: [
        *_COMMON,
        DerivedName("the store's Service", kb_builder.store_name, DNS_LABEL_MAX, dns_1035=True),
        DerivedName(
            "a sync's promotion Job",
            lambda n: kb_builder.job_name(n, kb_builder.sync_id({}), kb_builder.PROMOTE_STEP),
            LABEL_VALUE_MAX,
        ),
        DerivedName(
            "a sync's shard Job",
            lambda n: kb_builder.job_name(n, kb_builder.sync_id({}), MAX_SHARD),
            LABEL_VALUE_MAX,
        ),
    ],
    FINE_TUNE_JOB.kind: [
        *_COMMON,
        DerivedName(
            "the pre-flight Job",
            lambda n: child_name(n, ftj_builder.PREFLIGHT_COMPONENT),
            LABEL_VALUE_MAX,
        ),
        DerivedName(
            "the last training attempt's Job",
            lambda n: ftj_builder.train_job_name(n, MAX_ATTEMPT),
            LABEL_VALUE_MAX,
        ),
    ],
    PHI_DEPLOYMENT.kind: [
        *_COMMON,
        DerivedName("the server's Service", pd_builder.server_name, DNS_LABEL_MAX, dns_1035=True),
    ],
}


def max_name_length(kind: Kind) -> int:
    """The longest name a resource of `kind` may have for every derived name to fit."""
    probe = "a"
    return min(
        rule.max_length - (len(rule.derive(probe)) - len(probe)) for rule in DERIVED[kind.kind]
    )


def _shape(name: str, derived: str) -> str:
    """`<name>-store` rather than a 70-character string."""
    return derived.replace(name, "<name>", 1)


def name_problem(kind: Kind, name: str) -> str | None:
    """Why `name` cannot work for `kind` (a message naming metadata.name), or None."""
    limit = max_name_length(kind)
    for rule in DERIVED[kind.kind]:
        derived = rule.derive(name)
        if len(derived) > rule.max_length:
            return (
                f"metadata.name: {len(name)} characters is too long; a {kind.kind} name may have "
                f"at most {limit} (it names {rule.what}, {_shape(name, derived)}, which may "
                f"have at most {rule.max_length})"
            )
        if rule.dns_1035 and not DNS_1035.match(derived):
            return (
                f"metadata.name: {name!r} must start with a letter and contain no dots: it "
                f"names {rule.what}, {derived!r} (an RFC 1035 label)"
            )
    return None
