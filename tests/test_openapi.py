"""/openapi.json on a real gateway with memory and tools on: valid OpenAPI 3.1, every listed
path served, every control-plane route listed, and every request example fits its schema."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import jsonschema
import pytest
from litestar.routes import HTTPRoute
from openapi_spec_validator import validate

from gateway.api.openapi_docs import OPERATIONS
from tests.fakes.openai_upstream import FakeOpenAI
from tests.gateway_server import RunningGateway, config_of, running_gateway

ROOT = Path(__file__).resolve().parent.parent

# The control plane: each must be in the document, and each with a body must show examples.
CONTROL_PLANE = {
    ("post", "/v1/keys"),
    ("get", "/v1/keys"),
    ("delete", "/v1/keys/{key_id}"),
    ("get", "/v1/budgets"),
    ("put", "/v1/budgets/{project}"),
    ("delete", "/v1/budgets/{project}"),
    ("get", "/v1/usage"),
    ("get", "/engine/status"),
    ("get", "/engine/health"),
    ("post", "/engine/switch/{role}"),
    ("post", "/engine/unload"),
    ("post", "/v1/memory/query"),
    ("post", "/v1/memory/store"),
    ("post", "/v1/memory/summarize"),
    ("get", "/v1/memory/items/{item_id}"),
    ("delete", "/v1/memory"),
    ("post", "/internal/agent-memory/query"),
    ("post", "/internal/agent-memory/store"),
    ("post", "/internal/agent-memory/summarize"),
    ("get", "/v1/tools"),
    ("post", "/v1/tools/call"),
    ("get", "/internal/tools"),
    ("post", "/internal/tools/call"),
}
PROXY = ("/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/messages")


@pytest.fixture
async def gateway(tmp_path: Path) -> AsyncIterator[RunningGateway]:
    async with FakeOpenAI() as fake:
        raw = {
            "server": {"database": str(tmp_path / "t.db")},
            "providers": {"up": {"kind": "openai", "base_url": fake.url, "local": True}},
            "models": [{"name": "chat", "targets": [{"provider": "up", "model": "ok"}]}],
            "plugins": {"enabled": ["memory", "tools"]},
            "auth": {"admin_key": "admin-secret"},
        }
        async with running_gateway(config_of(raw)) as gw:
            yield gw


async def fetch(gw: RunningGateway) -> dict[str, Any]:
    async with (
        aiohttp.ClientSession() as session,
        session.get(gw.url + "/openapi.json") as response,
    ):
        assert response.status == 200
        document: dict[str, Any] = await response.json()
        return document


async def test_the_document_is_valid_openapi_3_1_without_a_key(gateway: RunningGateway) -> None:
    document = await fetch(gateway)
    assert document["openapi"].startswith("3.1")
    validate(document)
    assert document == await fetch(gateway), "built once, then the same answer"


async def test_every_listed_path_is_served_and_every_route_is_listed(
    gateway: RunningGateway,
) -> None:
    document = await fetch(gateway)
    listed = {
        (method, path)
        for path, item in document["paths"].items()
        for method in ("get", "put", "post", "delete", "patch")
        if method in item
    }
    served = {
        (method.lower(), route.path_format)
        for route in gateway.app.routes
        if isinstance(route, HTTPRoute)
        for method, (handler, _) in route.route_handler_map.items()
        if handler.resolve_include_in_schema() and method not in ("HEAD", "OPTIONS")
    }
    assert listed == served
    assert CONTROL_PLANE <= listed, CONTROL_PLANE - listed
    assert not [path for path in document["paths"] if path.startswith(PROXY)]
    assert "/openapi.json" not in document["paths"]


async def test_control_plane_bodies_have_examples_that_fit_their_schema(
    gateway: RunningGateway,
) -> None:
    document = await fetch(gateway)
    for method, path in sorted(CONTROL_PLANE):
        operation = document["paths"][path][method]
        assert operation["summary"] == OPERATIONS[(method, path)].summary
        body = operation.get("requestBody")
        if body is None:
            continue
        content = body["content"]["application/json"]
        assert content["examples"], (method, path)
        schema = {**content["schema"], "components": document["components"]}
        for name, example in content["examples"].items():
            errors = list(jsonschema.Draft202012Validator(schema).iter_errors(example["value"]))
            assert not errors, (method, path, name, errors[0].message)


async def test_errors_are_described_as_the_openai_envelope(gateway: RunningGateway) -> None:
    document = await fetch(gateway)
    create = document["paths"]["/v1/keys"]["post"]
    error = {"$ref": "#/components/schemas/Error"}
    for status in ("400", "401", "403"):
        assert create["responses"][status]["content"]["application/json"]["schema"] == error
    assert "security" not in create, "the document's keys apply"
    assert document["paths"]["/health"]["get"]["security"] == []
    assert document["components"]["schemas"]["NewKey"]["required"] == ["agent"]


def test_the_readme_links_the_document() -> None:
    assert "/openapi.json" in (ROOT / "README.md").read_text()
