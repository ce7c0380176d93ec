"""The CRDs in crds/ are exactly what the models say, complete, and accept the samples."""

from __future__ import annotations

from typing import Any, get_args, get_origin

import jsonschema
import pytest
from phiops_operator.crdgen import crd_path, openapi_schema, render
from phiops_operator.models.kinds import ALL_KINDS, Kind
from pydantic import BaseModel

from tests.helpers import CRD_DIR, load_all, samples

KINDS = {kind.kind: kind for kind in ALL_KINDS}


@pytest.mark.parametrize("kind", ALL_KINDS, ids=lambda k: k.kind)
def test_committed_crd_is_generated_from_the_models(kind: Kind) -> None:
    assert crd_path(CRD_DIR, kind).read_text() == render(kind), "run `make crds`"


def walk(schema: dict[str, Any], path: str = "") -> list[tuple[str, dict[str, Any]]]:
    found = []
    for name, sub in schema.get("properties", {}).items():
        found.append((f"{path}.{name}", sub))
        found.extend(walk(sub, f"{path}.{name}"))
    if "items" in schema:
        found.extend(walk(schema["items"], f"{path}[]"))
    if isinstance(schema.get("additionalProperties"), dict):
        found.extend(walk(schema["additionalProperties"], f"{path}{{}}"))
    return found


@pytest.mark.parametrize("kind", ALL_KINDS, ids=lambda k: k.kind)
def test_every_field_is_described_and_structural(kind: Kind) -> None:
    (doc,) = load_all(crd_path(CRD_DIR, kind))
    schema = doc["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    for section in ("spec", "status"):
        for path, sub in walk(schema["properties"][section], section):
            assert sub.get("description"), f"{path} has no description"
            assert "type" in sub or sub.get("x-kubernetes-int-or-string"), f"{path} has no type"
            assert not {"$ref", "anyOf", "title"} & sub.keys(), f"{path} is not structural"


def model_fields(model: type[BaseModel], path: str) -> set[str]:
    """Every field path a model declares, by wire name."""
    paths = set()
    for name, info in model.model_fields.items():
        here = f"{path}.{info.alias or name}"
        paths.add(here)
        for nested, suffix in nested_models(info.annotation):
            paths |= model_fields(nested, here + suffix)
    return paths


def nested_models(annotation: Any, suffix: str = "") -> list[tuple[type[BaseModel], str]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [(annotation, suffix)]
    origin, args = get_origin(annotation), get_args(annotation)
    if origin is list:
        return nested_models(args[0], suffix + "[]")
    if origin is dict:
        return nested_models(args[1], suffix + "{}")
    return [found for arg in args for found in nested_models(arg, suffix)]


@pytest.mark.parametrize("kind", ALL_KINDS, ids=lambda k: k.kind)
def test_models_and_schema_declare_the_same_fields(kind: Kind) -> None:
    """Both ways: no model field missing from the CRD (it would be pruned silently), and no
    CRD field the model does not know (the operator would reject it)."""
    (doc,) = load_all(crd_path(CRD_DIR, kind))
    schema = doc["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    for section, model in (("spec", kind.spec), ("status", kind.status)):
        in_schema = {path for path, _ in walk(schema["properties"][section], section)}
        assert in_schema == model_fields(model, section)


def test_printer_columns_categories_and_scale() -> None:
    for kind in ALL_KINDS:
        (doc,) = load_all(crd_path(CRD_DIR, kind))
        names = doc["spec"]["names"]
        assert names["categories"] == ["phiops"]
        assert names["shortNames"]
        columns = [c["name"] for c in doc["spec"]["versions"][0]["additionalPrinterColumns"]]
        assert columns[0] == "Ready" and columns[-1] == "Age"
        assert "status" in doc["spec"]["versions"][0]["subresources"]
    (deployment,) = load_all(crd_path(CRD_DIR, KINDS["PhiDeployment"]))
    assert deployment["spec"]["versions"][0]["subresources"]["scale"] == {
        "specReplicasPath": ".spec.replicas",
        "statusReplicasPath": ".status.replicas",
        "labelSelectorPath": ".status.selector",
    }


@pytest.mark.parametrize("sample", samples(), ids=lambda s: f"{s['kind']}/{s['metadata']['name']}")
def test_samples_validate_against_schema_and_model(sample: dict[str, Any]) -> None:
    kind = KINDS[sample["kind"]]
    jsonschema.Draft4Validator(openapi_schema(kind.spec)).validate(sample["spec"])
    kind.spec.model_validate(sample["spec"])


def test_schema_rejects_what_the_api_server_must_reject() -> None:
    schema = openapi_schema(KINDS["FineTuneJob"].spec)
    validator = jsonschema.Draft4Validator(schema)
    bad = {
        "dataset": {"url": "https://e/d.jsonl"},
        "method": "dora",
        "training": {"batchSize": 0, "learningRate": "fast"},
    }
    errors = {".".join(map(str, e.absolute_path)) for e in validator.iter_errors(bad)}
    assert errors == {"method", "training.batchSize", "training.learningRate"}
