"""A wrong field in a body Litestar decodes (plugins, seed 004) names the field, as the core does.

Issue 16: these endpoints answered "Validation failed for POST /v1/memory/store" with
``param: null``, leaving the client to guess which field was wrong.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from gateway.field_errors import field_error
from tests.gateway_server import RunningGateway, config_of, running_gateway


def plugins_config(database: Path) -> dict[str, Any]:
    return {
        "server": {"database": str(database)},
        "plugins": {"enabled": ["memory", "tools"]},
        "tools": {
            "registry": [
                {
                    "id": "weather.get",
                    "executor": "python",
                    "target": "tests.tools_fixtures.functions:get_weather",
                    "input_schema": {
                        "type": "object",
                        "properties": {"city": {"type": "string"}},
                        "required": ["city"],
                    },
                }
            ]
        },
    }


@pytest.fixture
async def gateway(tmp_path: Path) -> AsyncIterator[RunningGateway]:
    async with running_gateway(config_of(plugins_config(tmp_path / "t.db"))) as gw:
        yield gw


async def post(gw: RunningGateway, path: str, body: Any) -> tuple[int, dict[str, Any]]:
    async with (
        aiohttp.ClientSession() as session,
        session.post(gw.url + path, json=body) as response,
    ):
        return response.status, (await response.json())["error"]


async def test_memory_store_with_a_number_for_content_names_content(
    gateway: RunningGateway,
) -> None:
    status, error = await post(gateway, "/v1/memory/store", {"content": 5})
    assert status == 400
    assert error["param"] == "content"
    assert error["message"].startswith("invalid value for 'content': Expected `str")
    assert error["type"] == "invalid_request_error"


async def test_memory_store_names_a_nested_field_by_its_path(gateway: RunningGateway) -> None:
    status, error = await post(gateway, "/v1/memory/store", {"items": [{"content": 5}]})
    assert status == 400 and error["param"] == "items[0].content"
    assert "'items[0].content'" in error["message"]


async def test_memory_store_names_an_unknown_field(gateway: RunningGateway) -> None:
    status, error = await post(gateway, "/v1/memory/store", {"contents": "hi"})
    assert status == 400
    assert error == {
        "message": "unknown field 'contents'",
        "type": "invalid_request_error",
        "param": "contents",
        "code": None,
    }


async def test_tools_call_without_a_tool_names_the_missing_field(
    gateway: RunningGateway,
) -> None:
    status, error = await post(gateway, "/v1/tools/call", {"arguments": {}})
    assert status == 400
    assert error["param"] == "tool" and error["message"] == "missing required field 'tool'"


async def test_seed_tools_call_with_a_list_for_args_names_args(gateway: RunningGateway) -> None:
    status, error = await post(gateway, "/internal/tools/call", {"tool_id": "x", "args": []})
    assert status == 400 and error["param"] == "args"
    assert error["message"] == "invalid value for 'args': Expected `object`, got `array`"


async def test_seed_memory_store_with_a_number_for_agent_id_names_agent_id(
    gateway: RunningGateway,
) -> None:
    body = {"agent_id": 3, "content": "hi"}
    status, error = await post(gateway, "/internal/agent-memory/store", body)
    assert status == 400 and error["param"] == "agent_id"
    assert "'agent_id'" in error["message"]


async def test_a_body_of_the_wrong_json_type_is_refused_without_a_param(
    gateway: RunningGateway,
) -> None:
    status, error = await post(gateway, "/v1/memory/store", [1])
    assert status == 400 and error["param"] is None
    assert error["message"] == "invalid request body: Expected `object`, got `array`"


async def test_memory_query_names_the_unknown_kind_by_its_index(gateway: RunningGateway) -> None:
    status, error = await post(gateway, "/v1/memory/query", {"kinds": ["kb", "notes"]})
    assert status == 400 and error["param"] == "kinds[1]"
    assert error["message"].startswith("unknown kind 'notes' in 'kinds[1]'")


async def test_memory_store_names_the_item_whose_kind_is_unknown(gateway: RunningGateway) -> None:
    body = {"content": "first", "items": [{"content": "a"}, {"content": "b", "kind": "x"}]}
    status, error = await post(gateway, "/v1/memory/store", body)
    assert status == 400 and error["param"] == "items[1].kind"
    assert error["message"].startswith("items[1].kind: expected one of")
    status, error = await post(gateway, "/v1/memory/store", {"content": "a", "kind": "x"})
    assert status == 400 and error["param"] == "kind"


async def test_memory_store_names_the_item_whose_content_is_empty(gateway: RunningGateway) -> None:
    status, error = await post(gateway, "/v1/memory/store", {"items": [{"content": "  "}]})
    assert status == 400 and error["param"] == "items[0].content"
    assert error["message"] == "items[0].content is empty"


async def test_seed_memory_query_and_delete_name_an_unknown_kind(gateway: RunningGateway) -> None:
    status, error = await post(gateway, "/internal/agent-memory/query", {"kind": "notes"})
    assert status == 400 and error["param"] == "kind"
    async with (
        aiohttp.ClientSession() as session,
        session.delete(gateway.url + "/v1/memory?kind=notes") as response,
    ):
        error = (await response.json())["error"]
    assert response.status == 400 and error["param"] == "kind"


async def test_tools_call_names_the_argument_the_schema_refuses(gateway: RunningGateway) -> None:
    """A tool call answers seed 004's {ok, result, error, code}; a 400 adds ``param``."""
    body = {"tool": "weather.get", "arguments": {"city": 7}}
    status, answer = await post_raw(gateway, "/v1/tools/call", body)
    assert (status, answer["code"], answer["param"]) == (400, "invalid_arguments", "arguments.city")
    status, answer = await post_raw(gateway, "/v1/tools/call", {"tool": "weather.get"})
    assert (status, answer["param"]) == (400, "arguments.city"), "a missing required property"
    assert "'city' is a required property" in answer["error"]
    body = {"tool_id": "weather.get", "args": {"town": "Paris"}}
    status, answer = await post_raw(gateway, "/internal/tools/call", body)
    assert (status, answer["param"]) == (400, "args.city")
    body = {"tool": "weather.get", "arguments": "[1]"}
    status, answer = await post_raw(gateway, "/v1/tools/call", body)
    assert (status, answer["param"]) == (400, "arguments")


async def test_a_tool_call_that_ran_keeps_seed_004s_shape(gateway: RunningGateway) -> None:
    body = {"tool": "weather.get", "arguments": {"city": "Paris"}}
    status, answer = await post_raw(gateway, "/v1/tools/call", body)
    assert status == 200 and sorted(answer) == ["code", "error", "ok", "result"]


async def post_raw(gw: RunningGateway, path: str, body: Any) -> tuple[int, dict[str, Any]]:
    async with (
        aiohttp.ClientSession() as session,
        session.post(gw.url + path, json=body) as response,
    ):
        return response.status, await response.json()


def test_a_missing_field_inside_a_nested_object_is_named_by_its_full_path() -> None:
    problems = [{"message": "Object missing required field `role`", "key": "messages[2]"}]
    error = field_error(problems, "Validation failed")
    assert error.param == "messages[2].role"
    assert error.message == "missing required field 'messages[2].role'"


def test_without_litestars_details_the_generic_message_stays() -> None:
    error = field_error(None, "Validation failed for POST /v1/x")
    assert error.param is None and error.message == "Validation failed for POST /v1/x"
    assert error.status == 400


def test_several_problems_are_all_told_and_the_first_field_is_the_param() -> None:
    problems = [
        {"message": "Expected `int`, got `str`", "key": "limit", "source": "query"},
        {"message": "Expected `str`, got `int`", "key": "query", "source": "body"},
    ]
    error = field_error(problems, "Validation failed")
    assert error.param == "limit"
    assert error.message == (
        "invalid value for 'limit': Expected `int`, got `str`; "
        "invalid value for 'query': Expected `str`, got `int`"
    )
