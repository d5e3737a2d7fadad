"""``GET /openapi.json``: the control plane as an OpenAPI 3.1 document.

Litestar describes every controller route from its handler (parameters, msgspec body schemas);
this adds what it cannot know (gateway/api/openapi_docs.py: summaries, request examples, tags,
the keys) and replaces its default 400 answer with the gateway's own error envelope. The proxy
endpoints are raw ASGI (gateway/pipeline/), outside Litestar's routing, so they are not listed.

The app is built with ``openapi_config=None``: Litestar's own schema routes would mount a
catch-all under their prefix, and nothing here should cost start-up time. The document is built
on the first request (~0.1 s) and kept on the app's state.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version
from typing import Any

from litestar import Controller, Litestar, Request, get

from gateway.api.openapi_docs import DESCRIPTION, ERROR_SCHEMA, OPEN, OPERATIONS, TAGS
from gateway.guards import local_page

_STATE_KEY = "openapi_document"
_METHODS = ("get", "put", "post", "delete", "patch")


class OpenAPIController(Controller):
    path = "/openapi.json"
    include_in_schema = False

    @get("/", guards=[local_page])
    async def document(self, request: Request[Any, Any, Any]) -> dict[str, Any]:
        app = request.app
        built: dict[str, Any] | None = app.state.get(_STATE_KEY)
        if built is None:
            built = app.state[_STATE_KEY] = build(app)
        return built


def build(app: Litestar) -> dict[str, Any]:
    """The document for ``app``'s Litestar routes, as JSON-ready data."""
    # Imported here: Litestar's schema generation is needed only when the document is asked for.
    from litestar._openapi.datastructures import OpenAPIContext
    from litestar._openapi.path_item import (
        create_path_item_for_route,
        merge_path_item_operations,
    )
    from litestar._openapi.plugin import OpenAPIPlugin
    from litestar.openapi.config import OpenAPIConfig
    from litestar.openapi.spec import PathItem

    config = OpenAPIConfig(
        title="turnout", version=_version(), description=DESCRIPTION, use_handler_docstrings=True
    )
    openapi = config.to_openapi_schema()
    context = OpenAPIContext(openapi_config=config, plugins=app.plugins.openapi)
    items: dict[str, PathItem] = {}
    for route in app.plugins.get(OpenAPIPlugin).included_routes.values():
        path = route.path_format or "/"
        item = create_path_item_for_route(context, route)
        if path in items:
            item = merge_path_item_operations(items[path], item, for_path=path)
        items[path] = item
    openapi.paths = items
    openapi.components.schemas = context.schema_registry.generate_components_schemas()
    document: dict[str, Any] = openapi.to_schema()
    return annotate(document)


def annotate(document: dict[str, Any]) -> dict[str, Any]:
    """Summaries, examples, tags, the error envelope and the keys, on a generated document."""
    components = document.setdefault("components", {})
    components.setdefault("schemas", {})["Error"] = ERROR_SCHEMA
    components["securitySchemes"] = {
        "bearer": {"type": "http", "scheme": "bearer", "description": "a key or the admin key"},
        "x-api-key": {"type": "apiKey", "in": "header", "name": "x-api-key"},
    }
    # {}: a keyless gateway (embedded mode) lets local callers in without one.
    document["security"] = [{"bearer": []}, {"x-api-key": []}, {}]
    for path, item in document.get("paths", {}).items():
        for method in _METHODS:
            operation = item.get(method)
            if operation is not None:
                _annotate_operation(method, path, operation)
    return document


def _annotate_operation(method: str, path: str, operation: dict[str, Any]) -> None:
    doc = OPERATIONS.get((method, path))
    if doc is not None:
        operation["summary"] = doc.summary
        body = operation.get("requestBody", {}).get("content", {}).get("application/json")
        if body is not None and doc.examples:
            body["examples"] = {name: {"value": value} for name, value in doc.examples.items()}
    tag = next((tag for prefix, tag in TAGS if path.startswith(prefix)), None)
    if tag is not None:
        operation["tags"] = [tag]
    responses = operation.setdefault("responses", {})
    responses["400"] = _error("a bad parameter or body field, named in `param`")
    if path.startswith(OPEN):
        operation["security"] = []
    else:
        responses["401"] = _error("no key, or an unknown one")
        responses["403"] = _error("the key may not do this (admin endpoints need the admin key)")
    if "{" in path:
        responses.setdefault("404", _error("nothing by that name"))


def _error(description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
    }


def _version() -> str:
    try:
        return version("turnout")
    except PackageNotFoundError:
        return "0.0.0"
