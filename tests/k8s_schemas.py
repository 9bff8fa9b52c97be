"""Offline schema checks of Kubernetes objects: custom resources against the CRDs the real
operators publish (../shared/k8s-crds/), with unknown fields refused as the API server does."""

from __future__ import annotations

import copy
import functools
from pathlib import Path

import jsonschema
import yaml

_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # the CRDs are megabytes of YAML
CRDS = Path(__file__).resolve().parents[2] / "shared" / "k8s-crds"


@functools.lru_cache(maxsize=None)
def _crd_documents() -> tuple[dict, ...]:
    assert CRDS.is_dir(), f"CRD folder {CRDS} is missing: the manifests cannot be validated offline"
    return tuple(doc for path in sorted(CRDS.glob("*.y*ml")) for doc in yaml.load_all(path.read_text(), Loader=_LOADER)
                 if doc and doc.get("kind") == "CustomResourceDefinition")


def find_crd(group: str, kind: str) -> dict:
    for doc in _crd_documents():
        if doc["spec"]["group"] == group and doc["spec"]["names"]["kind"] == kind:
            return doc
    raise AssertionError(f"no CRD for {kind}.{group} in {CRDS}")


def has_crd(api_version: str, kind: str) -> bool:
    group = api_version.partition("/")[0]
    return any(d["spec"]["group"] == group and d["spec"]["names"]["kind"] == kind for d in _crd_documents())


def strict(schema: dict) -> dict:
    """The schema with unknown fields refused, as the API server does with field validation
    Strict (kubectl's default): the CRD's objects leave additionalProperties unset, which JSON
    Schema reads as "anything goes", so a misspelt field would otherwise validate."""
    schema = copy.deepcopy(schema)

    def walk(node):
        if isinstance(node, dict):
            if "properties" in node and "additionalProperties" not in node \
                    and not node.get("x-kubernetes-preserve-unknown-fields"):
                node["additionalProperties"] = False
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(schema)
    return schema


def crd_validator(resource: dict) -> jsonschema.Validator:
    return _crd_validator(resource["apiVersion"], resource["kind"])


@functools.lru_cache(maxsize=None)
def _crd_validator(api_version: str, kind: str) -> jsonschema.Validator:
    group, _, version = api_version.partition("/")
    crd = find_crd(group, kind)
    versions = {v["name"]: v for v in crd["spec"]["versions"] if v.get("served")}
    assert version in versions, f"{api_version} is not served by the CRD (serves {sorted(versions)})"
    # OpenAPI v3.0 schemas follow JSON Schema draft 4 (boolean exclusiveMinimum and the like).
    return jsonschema.Draft4Validator(strict(versions[version]["schema"]["openAPIV3Schema"]))
