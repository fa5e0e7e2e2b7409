"""The client's models against the server's OpenAPI document, so neither can change alone.

Every model that mirrors a server schema is mapped to its component in ``models.SERVER_SCHEMAS``;
their field names, required fields and enumerations must agree. Every route the server documents
must have an operation in the client, except those listed as deliberately left out."""

from __future__ import annotations

import inspect
import typing
from typing import Any

import httpx
import pytest
from pydantic import BaseModel
from support import TIMEOUT_S

from exemplar_client import _operations, models

# Routes the client leaves out on purpose: Prometheus text for scrapers.
NOT_COVERED = {"/metrics"}
# Client models with no server component: the server answers these routes with plain dicts.
NO_SERVER_SCHEMA = {models.HealthStatus, models.ReadyStatus, models.ServerInfo}


@pytest.fixture(scope="module")
def document(server_url: str, api_key: str | None) -> dict[str, Any]:
    headers = {"authorization": f"Bearer {api_key}"} if api_key else {}
    response = httpx.get(f"{server_url}/openapi.json", headers=headers, timeout=TIMEOUT_S)
    response.raise_for_status()
    return response.json()


def _enum(schema: dict[str, Any]) -> set[Any] | None:
    """The values a property allows, where the document lists them (directly or in an anyOf)."""
    if "enum" in schema:
        return set(schema["enum"])
    if "const" in schema:
        return {schema["const"]}
    for option in schema.get("anyOf", []):
        found = _enum(option)
        if found is not None:
            return found
    return None


def _literal_values(annotation: Any) -> set[Any] | None:  # noqa: ANN401 - a type annotation
    if typing.get_origin(annotation) is typing.Literal:
        return set(typing.get_args(annotation))
    for arg in typing.get_args(annotation):
        found = _literal_values(arg)
        if found is not None:
            return found
    return None


def test_every_client_model_is_mapped_or_known_to_have_no_server_schema() -> None:
    public = {obj for name, obj in vars(models).items()
              if inspect.isclass(obj) and issubclass(obj, BaseModel) and not name.startswith("_")
              and obj.__module__ == models.__name__}
    assert public == set(models.SERVER_SCHEMAS) | NO_SERVER_SCHEMA


@pytest.mark.parametrize("model", list(models.SERVER_SCHEMAS), ids=lambda m: m.__name__)
def test_model_fields_match_the_server_schema(model: type[BaseModel], document: dict[str, Any]) -> None:
    name = models.SERVER_SCHEMAS[model]
    schemas = document["components"]["schemas"]
    assert name in schemas, f"the server has no schema {name!r} (client model {model.__name__})"
    component = schemas[name]
    properties = component.get("properties", {})
    # Wire names: a field may carry an alias ('lambda' is a Python keyword).
    wire = {field: info.alias or field for field, info in model.model_fields.items()}
    assert set(wire.values()) == set(properties), f"{model.__name__} against {name}"
    required = {wire[field] for field, info in model.model_fields.items() if info.is_required()}
    assert required == set(component.get("required", [])), f"required fields of {model.__name__} against {name}"
    for field, info in model.model_fields.items():
        allowed = _literal_values(info.annotation)
        if allowed is not None:
            assert _enum(properties[wire[field]]) == allowed, f"{model.__name__}.{field} against {name}.{field}"


def test_every_server_route_has_a_client_operation(document: dict[str, Any]) -> None:
    served = {path: sorted(item) for path, item in document["paths"].items() if path not in NOT_COVERED}
    covered = {path: sorted(methods) for path, methods in _operations.COVERED_ROUTES.items()}
    assert served == covered
