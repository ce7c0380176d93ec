"""Generate the CustomResourceDefinitions in crds/ from the pydantic models.

The models are the single source of truth; `make crds` rewrites the YAML and a test fails
when the committed files drift from what the models say.

Pydantic emits JSON Schema (draft 2020-12); Kubernetes wants a *structural* OpenAPI v3
schema: every `$ref` inlined, no `anyOf: [X, null]`, `exclusiveMinimum` as a boolean, no
`additionalProperties` beside `properties`, no `title`.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel
from pydantic.json_schema import GenerateJsonSchema, JsonSchemaValue, NoDefault
from pydantic_core import core_schema

from phiops_operator import GROUP, VERSION
from phiops_operator.models.kinds import ALL_KINDS, CATEGORY, Kind

_DROP = {"title"}


class _WithFactoryDefaults(GenerateJsonSchema):
    """Also report defaults made by `default_factory`, so the API server applies nested defaults.

    A nested object's default is written as `{}`: the server creates the object and fills in
    each of its own fields' defaults, so `kubectl get -o yaml` shows the effective settings.
    """

    def get_default_value(self, schema: core_schema.WithDefaultSchema) -> Any:
        factory = schema.get("default_factory")
        if factory is None or schema.get("default_factory_takes_data"):
            return super().get_default_value(schema)
        value = factory()  # type: ignore[call-arg]
        if isinstance(value, BaseModel):
            return {}
        return value


def _structural(node: Any, defs: dict[str, Any]) -> Any:
    if isinstance(node, list):
        return [_structural(item, defs) for item in node]
    if not isinstance(node, dict):
        return node
    if "$ref" in node:
        target = defs[node["$ref"].rsplit("/", 1)[1]]
        merged = {**target, **{k: v for k, v in node.items() if k != "$ref"}}
        return _structural(merged, defs)
    any_of = node.get("anyOf")
    if any_of is not None:
        non_null = [s for s in any_of if s.get("type") != "null"]
        rest = {k: v for k, v in node.items() if k != "anyOf"}
        if rest.get("x-kubernetes-int-or-string"):
            return _structural({k: v for k, v in rest.items() if k != "default"}, defs)
        if len(non_null) == 1:
            if rest.get("default", NoDefault) is None:
                rest.pop("default")
            return _structural({**non_null[0], **rest}, defs)
        raise ValueError(f"union types are not structural: {node}")
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key in _DROP or key == "$defs":
            continue
        if key == "const":
            out["enum"] = [value]
        elif key in ("exclusiveMinimum", "exclusiveMaximum"):
            bound = "minimum" if key == "exclusiveMinimum" else "maximum"
            out[bound] = value
            out[key] = True
        elif key == "additionalProperties" and (value is False or "properties" in node):
            continue
        elif key == "additionalProperties" and value is True:
            out["x-kubernetes-preserve-unknown-fields"] = True
        elif key == "properties":
            out[key] = {name: _structural(sub, defs) for name, sub in value.items()}
        elif key == "default" and value is None:
            continue
        else:
            out[key] = _structural(value, defs)
    if out.get("x-kubernetes-preserve-unknown-fields") and out.get("type") == "object":
        out.pop("additionalProperties", None)
    return out


def openapi_schema(model: type[BaseModel]) -> dict[str, Any]:
    """The structural OpenAPI v3 schema of a model, as the API server wants it."""
    raw: JsonSchemaValue = model.model_json_schema(
        by_alias=True, mode="validation", schema_generator=_WithFactoryDefaults
    )
    defs = raw.get("$defs", {})
    schema: dict[str, Any] = _structural(raw, defs)
    return schema


def _without_defaults(node: Any) -> Any:
    if isinstance(node, list):
        return [_without_defaults(item) for item in node]
    if isinstance(node, dict):
        return {k: _without_defaults(v) for k, v in node.items() if k != "default"}
    return node


def crd(kind: Kind) -> dict[str, Any]:
    spec_schema = openapi_schema(kind.spec)
    # The operator writes every status field it means; server-side defaults there would only
    # invent values (and 1.20 rejects an empty-string default).
    status_schema = _without_defaults(openapi_schema(kind.status))
    version: dict[str, Any] = {
        "name": VERSION,
        "served": True,
        "storage": True,
        "subresources": {"status": {}},
        "additionalPrinterColumns": list(kind.printer_columns),
        "schema": {
            "openAPIV3Schema": {
                "type": "object",
                "description": f"{kind.kind}: {kind.summary}",
                "required": ["spec"],
                "properties": {
                    "apiVersion": {"type": "string"},
                    "kind": {"type": "string"},
                    "metadata": {"type": "object"},
                    "spec": spec_schema,
                    "status": status_schema,
                },
            }
        },
    }
    if kind.scale:
        version["subresources"]["scale"] = dict(kind.scale)
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": f"{kind.plural}.{GROUP}",
            "labels": {"app.kubernetes.io/part-of": "phiops"},
        },
        "spec": {
            "group": GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": kind.kind,
                "listKind": f"{kind.kind}List",
                "plural": kind.plural,
                "singular": kind.singular,
                "shortNames": list(kind.short_names),
                "categories": [CATEGORY],
            },
            "versions": [version],
        },
    }


HEADER = "# Generated from operator/phiops_operator/models by `make crds`. Do not edit.\n"


def render(kind: Kind) -> str:
    return HEADER + yaml.safe_dump(crd(kind), sort_keys=False, width=100)


def crd_path(crd_dir: Path, kind: Kind) -> Path:
    return crd_dir / f"{GROUP}_{kind.plural}.yaml"


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    crd_dir = Path(args[0]) if args else Path("crds")
    crd_dir.mkdir(parents=True, exist_ok=True)
    for kind in ALL_KINDS:
        path = crd_path(crd_dir, kind)
        path.write_text(render(kind))
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
