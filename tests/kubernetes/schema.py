"""Request bodies checked against the official Kubernetes OpenAPI schemas.

The schemas are kubernetes-validate's (the JSON schemas generated from Kubernetes' OpenAPI
spec, one per kind, with `_definitions.json`), read from the package, never copied here.
Strict variants: an unknown field is an error, as `kubectl --validate=strict` and the API
server's strict field validation make it. Validators are built once per kind.
"""

from __future__ import annotations

import functools
import re
from typing import Any

import jsonschema
from kubernetes_validate.utils import latest_version, schema_contents
from referencing import Registry, Resource

VERSION = latest_version()
SCHEMA_DIR = f"kubernetes-json-schema/v{VERSION}-local-strict"


@functools.cache
def _definitions() -> Registry[Any]:
    contents = schema_contents(f"{SCHEMA_DIR}/_definitions.json", VERSION)
    return Resource.from_contents(contents) @ Registry()


@functools.cache
def validator(schema: str) -> jsonschema.protocols.Validator:
    """The validator of one schema file, e.g. `job-batch-v1`, `deleteoptions-meta-v1`."""
    contents = schema_contents(f"{SCHEMA_DIR}/{schema}.json", VERSION)
    registry = Resource.from_contents(contents) @ _definitions()
    return jsonschema.Draft202012Validator(contents, registry=registry)


def schema_of(obj: dict[str, Any]) -> str:
    """kubernetes-validate's file name for an object's apiVersion and kind."""
    api_version = re.sub(r"^([^./]*)(?:\.[^/]*)?/", r"\1-", str(obj.get("apiVersion", "")))
    return f"{str(obj.get('kind', '')).lower()}-{api_version}"


def problems(body: Any, schema: str) -> list[str]:
    """Every way `body` breaks `schema`, as `path: message` lines (empty: it is valid)."""
    found = []
    for error in sorted(validator(schema).iter_errors(body), key=lambda e: list(e.path)):
        path = ".".join(str(p) for p in error.absolute_path) or "(root)"
        found.append(f"{path}: {error.message}")
    return found
