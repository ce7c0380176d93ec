"""The hostile-input corpus (tests/inputs/) against the CRD schemas and the models, without a
cluster: what each file declares must follow from the schema the API server enforces and
from the operator's validation. tests/integration/test_hostile_inputs.py applies it for real."""

from __future__ import annotations

import re
from collections import Counter
from typing import Any

import jsonschema
import pytest
from phiops_operator.crdgen import openapi_schema
from phiops_operator.models.kinds import ALL_KINDS
from phiops_operator.validation import InvalidSpec, validate

from tests.helpers import EXPECT, EXPECT_FIELD, EXPECT_REASON, hostile_inputs

KINDS = {k.kind: k for k in ALL_KINDS}
CORPUS = hostile_inputs()
DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")


def expectation(doc: dict[str, Any]) -> tuple[str, str, str | None]:
    notes = doc["metadata"]["annotations"]
    return notes[EXPECT], notes[EXPECT_FIELD], notes.get(EXPECT_REASON)


def schema_errors(doc: dict[str, Any]) -> set[str]:
    """Fields the API server refuses, as it names them (list indexes left out, as 1.20 does)."""
    name = doc["metadata"]["name"]
    errors = set() if DNS_SUBDOMAIN.match(name) and len(name) <= 253 else {"metadata.name"}
    validator = jsonschema.Draft4Validator(openapi_schema(KINDS[doc["kind"]].spec))
    for error in validator.iter_errors(doc["spec"]):
        path = [p for p in error.absolute_path if isinstance(p, str)]
        if error.validator == "required":  # the missing field itself, as the server says
            path.append(re.findall(r"'([^']+)' is a required", error.message)[0])
        errors.add(".".join(["spec", *path]))
    return errors


def test_the_corpus_is_large_and_covers_every_kind_and_outcome() -> None:
    assert len(CORPUS) >= 40
    seen = Counter((doc["kind"], expectation(doc)[0]) for _, doc in CORPUS)
    for kind in KINDS:
        for outcome in ("rejected", "invalid", "waiting"):
            assert seen[(kind, outcome)] >= 3, (kind, outcome)
    names = [(doc["kind"], doc["metadata"]["name"]) for _, doc in CORPUS]
    assert len(set(names)) == len(names), "one namespace holds the whole corpus"


@pytest.mark.parametrize(("stem", "doc"), CORPUS, ids=[stem for stem, _ in CORPUS])
def test_each_file_meets_its_declared_outcome(stem: str, doc: dict[str, Any]) -> None:
    outcome, field, reason = expectation(doc)
    errors = schema_errors(doc)
    if outcome == "rejected":
        assert field in errors, f"the API server would not name {field}: {errors}"
        return
    assert not errors, f"the API server would refuse it ({errors}), not the operator"
    kind = KINDS[doc["kind"]]
    if outcome == "invalid":
        with pytest.raises(InvalidSpec) as info:
            validate(kind, doc["metadata"]["name"], doc["spec"])
        assert field in str(info.value)
        assert reason is None
    else:
        assert outcome == "waiting" and reason
        validate(kind, doc["metadata"]["name"], doc["spec"])
