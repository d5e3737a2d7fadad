"""What the generated OpenAPI document cannot know from the handlers: a summary per operation,
request examples, and which tag each path belongs to. Data only (gateway/api/openapi.py applies it).

Keyed by (method, path) as the document spells them. An operation missing here is still listed
(Litestar describes its parameters and body schema); tests/test_openapi.py checks that every
control-plane operation with a body has examples.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True, slots=True)
class Doc:
    summary: str
    # Request body examples by name.
    examples: dict[str, Any] = field(default_factory=dict)


_SOFIA = {"agent_id": "agent:sofia", "microdao_id": "microdao:7", "channel_id": "tg-ops"}

OPERATIONS: dict[tuple[str, str], Doc] = {
    ("post", "/v1/keys"): Doc(
        "Create a key; its secret is answered once, as `key`",
        {
            "agent with limits and a daily budget": {
                "agent": "ci-bot",
                "name": "ci",
                "models": ["fast", "local*"],
                "rpm": 60,
                "tpm": 100000,
                "concurrent": 4,
                "budget": 5.0,
                "budget_period": "daily",
            },
            "trusted service key": {"agent": "agent-runtime", "trusted": True},
        },
    ),
    ("get", "/v1/keys"): Doc("List keys with what each spent this budget period"),
    ("delete", "/v1/keys/{key_id}"): Doc("Revoke a key by id or name"),
    ("get", "/v1/budgets"): Doc("List project budgets (seed 004's microdao_id) with their spend"),
    ("put", "/v1/budgets/{project}"): Doc(
        "Set a project's budget; requests naming the project are charged to it",
        {
            "monthly": {"budget": 20.0, "budget_period": "monthly"},
            "lifetime": {"budget": 100.0},
        },
    ),
    ("delete", "/v1/budgets/{project}"): Doc("Remove a project's budget"),
    ("get", "/v1/usage"): Doc("The usage log, filtered and optionally grouped (JSON or CSV)"),
    ("post", "/engine/switch/{role}"): Doc("Load a local role, unloading what it displaces"),
    ("post", "/engine/unload"): Doc("Unload one local role (?role=) or all"),
    ("get", "/engine/status"): Doc("Local engines, the queue and providers"),
    ("get", "/engine/health"): Doc("Readiness of the local engines (200 ready, 503 not)"),
    ("get", "/engine/events"): Doc("Engine state changes as server-sent events"),
    ("post", "/v1/memory/query"): Doc(
        "Search the caller's memory (without text: its newest items)",
        {
            "search": {"query": "when can we deploy?", "limit": 5, "channel": "ops"},
            "newest tasks": {"kinds": ["task"], "limit": 10},
        },
    ),
    ("post", "/v1/memory/store"): Doc(
        "Store one item or several",
        {
            "one item": {"content": "We deploy on Fridays after 16:00 UTC.", "kind": "kb"},
            "several": {
                "channel": "ops",
                "items": [
                    {"content": "Rotate the API keys", "kind": "task"},
                    {"content": "Release 2.1 shipped", "kind": "event"},
                ],
            },
        },
    ),
    ("post", "/v1/memory/summarize"): Doc(
        "Summarise a scope's conversation into a summary item",
        {"channel": {"channel": "ops", "model": "chat"}},
    ),
    ("get", "/v1/memory/items/{item_id}"): Doc("One memory item"),
    ("delete", "/v1/memory/items/{item_id}"): Doc("Forget one memory item"),
    ("delete", "/v1/memory"): Doc("Forget a scope's items (?channel=, ?session_id=, ?all=true)"),
    ("post", "/internal/agent-memory/query"): Doc(
        "Seed 004: search an agent's memory",
        {"seed 004": {**_SOFIA, "query": "what changed in this microDAO lately?", "limit": 5}},
    ),
    ("post", "/internal/agent-memory/store"): Doc(
        "Seed 004: store a conversation turn or a note",
        {
            "conversation turn": {
                **_SOFIA,
                "kind": "conversation",
                "content": {"user_message": "hi", "agent_reply": "hello, how can I help?"},
            }
        },
    ),
    ("post", "/internal/agent-memory/summarize"): Doc(
        "Seed 004: summarise an agent's conversation in a channel",
        {"seed 004": {**_SOFIA, "limit": 50}},
    ),
    ("get", "/v1/tools"): Doc("Tools the caller may use, as OpenAI function definitions"),
    ("post", "/v1/tools/call"): Doc(
        "Call a tool: {ok, result, error}",
        {
            "arguments object": {"tool": "get_weather", "arguments": {"city": "Paris"}},
            "a model's tool call": {"tool": "get_weather", "arguments": '{"city": "Paris"}'},
        },
    ),
    ("get", "/internal/tools"): Doc("Seed 004: the tool registry the caller may use"),
    ("post", "/internal/tools/call"): Doc(
        "Seed 004: call a tool for an agent",
        {
            "seed 004": {
                "tool_id": "projects.list",
                "agent_id": "agent:sofia",
                "microdao_id": "microdao:7",
                "args": {"microdao_id": "microdao:7"},
            }
        },
    ),
}

# Tags by path prefix, first match wins.
TAGS: tuple[tuple[str, str], ...] = (
    ("/v1/keys", "keys"),
    ("/v1/budgets", "keys"),
    ("/v1/usage", "usage"),
    ("/engine", "engine"),
    ("/v1/memory", "memory"),
    ("/internal/agent-memory", "seed 004"),
    ("/internal/tools", "seed 004"),
    ("/v1/tools", "tools"),
    ("/v1/models", "models"),
    ("/v1/responses", "responses"),
    ("/v1/captures", "captures"),
    ("/v1/requests", "dashboard"),
    ("/health", "system"),
    ("/metrics", "system"),
)

# Answered to anyone (no key): no 401/403 responses listed.
OPEN = ("/health", "/metrics", "/openapi.json")

ERROR_SCHEMA: dict[str, Any] = {
    "type": "object",
    "description": "OpenAI's error envelope; `param` names the field a 400 is about",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["message", "type"],
            "properties": {
                "message": {"type": "string"},
                "type": {"type": "string"},
                "param": {"type": ["string", "null"]},
                "code": {"type": ["string", "null"]},
            },
        }
    },
    "examples": [
        {
            "error": {
                "message": "invalid value for 'rpm': Expected `int` >= 0",
                "type": "invalid_request_error",
                "param": "rpm",
                "code": None,
            }
        }
    ],
}

DESCRIPTION = """The control plane of a turnout gateway: keys and budgets, usage, local engines,
memory, tools and seed 004's internal endpoints.

The proxy endpoints (`/v1/chat/completions`, `/v1/completions`, `/v1/embeddings`,
`/v1/messages`, `POST /v1/responses`, `/internal/llm/proxy`, `/v1/chat/ws`) speak OpenAI's and
Anthropic's own APIs and are documented there, not here.

Authentication: `Authorization: Bearer <key>` (or `x-api-key`). Admin endpoints (keys, budgets,
usage, engine) need the admin key (`auth.admin_key`); without one configured, only local
callers may use them. Every error is OpenAI's envelope; a 400 names the field in `param`."""
