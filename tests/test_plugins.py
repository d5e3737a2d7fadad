"""Plugins as a user meets them: a third-party package installed by path, enabled in routing.yaml.

The example package (tests/plugins/example) declares two entry points in the ``turnout`` group:
``example`` (an adapter kind, a request hook that edits the request, an answer hook) and
``example-broken`` (raises in both request hooks). Requests go through a real gateway to a real
fake upstream.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from anthropic import AsyncAnthropic
from anthropic.types import MessageParam
from openai.types.chat import ChatCompletionMessageParam

from adapters.builtin import default_registry
from gateway.app import create_app
from gateway.config import warnings
from gateway.errors import ConfigError, PluginError
from gateway.state import GatewayState, Wiring
from tests.fakes.openai_upstream import FakeOpenAI
from tests.gateway_server import RunningGateway, config_of, running_gateway
from tests.plugins import EXAMPLE, install

USER: list[ChatCompletionMessageParam] = [{"role": "user", "content": "ping"}]
CLAUDE_USER: list[MessageParam] = [{"role": "user", "content": "ping"}]


@pytest.fixture(scope="session")
def example_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    site = tmp_path_factory.mktemp("site-packages")
    install(EXAMPLE, site)
    return site


@pytest.fixture
def example_installed(example_site: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The example package is installed for this test only."""
    monkeypatch.syspath_prepend(str(example_site))
    yield


@pytest.fixture
async def fake() -> AsyncIterator[FakeOpenAI]:
    async with FakeOpenAI() as upstream:
        yield upstream


def raw_config(fake: FakeOpenAI, plugins: dict[str, Any], **sections: Any) -> dict[str, Any]:
    return {
        "providers": {"up": {"kind": "openai", "base_url": fake.url, "local": True}},
        "models": [{"name": "chat", "targets": [{"provider": "up", "model": "ok"}]}],
        "routing": {"retries": 0},
        "plugins": plugins,
        **sections,
    }


def example_of(gw: RunningGateway) -> Any:
    return gw.app.state.gateway.plugins.get("example")


def posts(upstream: FakeOpenAI) -> list[Any]:
    return [r for r in upstream.requests if r.method == "POST"]


async def metrics_text(gw: RunningGateway) -> str:
    async with aiohttp.ClientSession() as session, session.get(gw.url + "/metrics") as response:
        return await response.text()


async def eventually(check: Callable[[], bool], seconds: float = 5) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.02)


def errors_line(plugin: str, hook: str, count: int) -> str:
    return f'turnout_plugin_errors_total{{hook="{hook}",plugin="{plugin}"}} {count:.1f}'


# --- loading ------------------------------------------------------------------------------------


def test_an_unknown_plugin_stops_start_up_naming_the_known_ones(
    example_installed: None, fake: FakeOpenAI
) -> None:
    config = config_of(raw_config(fake, {"enabled": ["example", "exmaple"]}))
    with pytest.raises(PluginError, match=r"unknown plugin 'exmaple' \(known: .*example"):
        create_app(config)


def test_without_the_package_installed_its_name_is_unknown(fake: FakeOpenAI) -> None:
    config = config_of(raw_config(fake, {"enabled": ["example"]}))
    with pytest.raises(PluginError, match="unknown plugin 'example'"):
        create_app(config)


def test_plugin_settings_are_checked_when_routing_yaml_loads(fake: FakeOpenAI) -> None:
    twice = raw_config(fake, {"enabled": ["example", "example"]})
    with pytest.raises(ConfigError, match=r"plugins\.enabled: 'example' is listed twice"):
        config_of(twice)
    instant = raw_config(fake, {"before_upstream_timeout_seconds": 0})
    with pytest.raises(ConfigError, match=r"plugins\.before_upstream_timeout_seconds: expected"):
        config_of(instant)
    orphan = config_of(raw_config(fake, {"settings": {"example": {"stamp": "!"}}}))
    assert "plugins.settings.example: plugin 'example' is not in plugins.enabled" in warnings(
        orphan
    )


def test_no_plugins_means_no_request_hooks(fake: FakeOpenAI) -> None:
    wiring = Wiring.of(config_of(raw_config(fake, {})), default_registry())
    assert wiring.plugins.active is False


async def test_a_plugin_failing_at_start_up_stops_the_gateway_naming_it(
    example_installed: None, fake: FakeOpenAI
) -> None:
    plugins = {"enabled": ["example"], "settings": {"example": {"fail_startup": True}}}
    wiring = Wiring.of(config_of(raw_config(fake, plugins)), default_registry())
    with pytest.raises(PluginError, match="plugin 'example' failed to start"):
        await GatewayState.open(wiring)


# --- what a plugin can do -----------------------------------------------------------------------


async def test_a_plugin_adapter_kind_serves_a_provider(
    example_installed: None, fake: FakeOpenAI
) -> None:
    raw = raw_config(fake, {"enabled": ["example"]})
    raw["providers"]["echo"] = {"kind": "example-echo", "base_url": "http://127.0.0.1:9"}
    raw["models"].append({"name": "echo", "targets": [{"provider": "echo", "model": "e1"}]})
    async with running_gateway(config_of(raw)) as gw:
        client = gw.openai()
        reply = await client.chat.completions.create(model="echo", messages=USER)
        stream = await client.chat.completions.create(model="echo", messages=USER, stream=True)
        streamed = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
    assert reply.choices[0].message.content == "example echo: ping"
    assert streamed == "example echo: ping"
    assert posts(fake) == [], "the echo kind never reaches the OpenAI upstream"


def test_a_plugins_own_section_of_routing_yaml_is_checked_by_the_plugin(
    example_installed: None, fake: FakeOpenAI
) -> None:
    empty = {**raw_config(fake, {}), "example": {"greeting": ""}}
    with pytest.raises(ConfigError, match=r"example\.greeting: expected some text"):
        config_of(empty)
    typo = {**raw_config(fake, {}), "example": {"greting": "hi"}}
    with pytest.raises(ConfigError, match=r"example: unknown key `greting`"):
        config_of(typo)
    stranger = {**raw_config(fake, {}), "exampel": {}}
    with pytest.raises(ConfigError, match=r"\(top level\): unknown key `exampel`"):
        config_of(stranger)


async def test_a_plugin_mounts_its_api_and_stands_in_for_the_forwarder(
    example_installed: None, fake: FakeOpenAI
) -> None:
    raw = {
        **raw_config(fake, {"enabled": ["example"]}),
        "example": {"greeting": "hi", "wrap": True},
    }
    async with running_gateway(config_of(raw)) as gw:
        client = gw.openai()
        reply = await client.chat.completions.create(model="chat", messages=USER)
        stream = await client.chat.completions.create(model="chat", messages=USER, stream=True)
        streamed = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
        async with aiohttp.ClientSession() as session:
            async with session.get(gw.url + "/v1/example") as response:
                api = await response.json()
    assert reply.choices[0].message.content == "echo: ping" and streamed == "echo: ping"
    assert api == {"greeting": "hi", "wrapped": 2}


async def test_an_installed_plugin_left_off_says_how_to_turn_its_api_on(
    example_installed: None, fake: FakeOpenAI
) -> None:
    async with running_gateway(config_of(raw_config(fake, {}))) as gw:
        async with aiohttp.ClientSession() as session:
            async with session.get(gw.url + "/v1/example") as response:
                status, body = response.status, await response.json()
    assert status == 404
    assert (
        body["error"]["message"] == "example is off: add example to plugins.enabled in routing.yaml"
    )


async def test_before_upstream_edits_reach_the_upstream_and_after_response_gets_the_answer(
    example_installed: None, fake: FakeOpenAI
) -> None:
    plugins = {"enabled": ["example"], "settings": {"example": {"stamp": " [stamped]"}}}
    async with running_gateway(config_of(raw_config(fake, plugins))) as gw:
        client = gw.openai()
        reply = await client.chat.completions.create(model="chat", messages=USER)
        stream = await client.chat.completions.create(model="chat", messages=USER, stream=True)
        streamed = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
        claude = AsyncAnthropic(base_url=gw.url, api_key="unused", max_retries=0)
        message = await claude.messages.create(model="chat", max_tokens=64, messages=CLAUDE_USER)
        await claude.close()
        await client.completions.create(model="chat", prompt="plain")
        example = example_of(gw)
        await eventually(lambda: len(example.answers) == 3)
    assert reply.choices[0].message.content == "echo: ping [stamped]"
    assert streamed == "echo: ping [stamped]"
    assert message.content[0].type == "text"
    assert message.content[0].text == "echo: ping [stamped]"
    sent = [r.body for r in posts(fake)]
    assert [b["messages"][-1]["content"] for b in sent[:3]] == ["ping [stamped]"] * 3
    assert sent[3]["prompt"] == "plain", "completions carry no messages: no request hooks"
    answers = {(a.route, a.status, a.reply_text) for a in example.answers}
    assert answers == {
        ("chat", 200, "echo: ping [stamped]"),
        ("messages", 200, "echo: ping [stamped]"),
    }
    assert len({a.request_id for a in example.answers}) == 3


async def test_a_raising_plugin_never_breaks_a_request_and_is_counted(
    example_installed: None, fake: FakeOpenAI
) -> None:
    plugins = {
        "enabled": ["example-broken", "example"],
        "settings": {"example": {"stamp": " [stamped]"}},
    }
    async with running_gateway(config_of(raw_config(fake, plugins))) as gw:
        client = gw.openai()
        reply = await client.chat.completions.create(model="chat", messages=USER)
        stream = await client.chat.completions.create(model="chat", messages=USER, stream=True)
        streamed = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
        example = example_of(gw)
        await eventually(lambda: len(example.answers) == 2)
        text = await metrics_text(gw)
    assert reply.choices[0].message.content == streamed == "echo: ping [stamped]", (
        "the plugin after the broken one still ran"
    )
    assert errors_line("example-broken", "before_upstream", 2) in text
    assert errors_line("example-broken", "after_response", 2) in text
    assert 'plugin="example"' not in text


async def test_a_slow_before_upstream_is_abandoned_after_its_timeout(
    example_installed: None, fake: FakeOpenAI
) -> None:
    plugins = {
        "enabled": ["example"],
        "settings": {"example": {"stamp": " [late]", "before_delay": 30}},
        "before_upstream_timeout_seconds": 0.2,
    }
    async with running_gateway(config_of(raw_config(fake, plugins))) as gw:
        started = time.monotonic()
        reply = await gw.openai().chat.completions.create(model="chat", messages=USER)
        elapsed = time.monotonic() - started
        text = await metrics_text(gw)
    assert reply.choices[0].message.content == "echo: ping"
    assert elapsed < 5
    assert errors_line("example", "before_upstream", 1) in text


async def test_after_response_work_finishes_before_the_gateway_stops(
    example_installed: None, fake: FakeOpenAI
) -> None:
    plugins = {"enabled": ["example"], "settings": {"example": {"after_delay": 0.5}}}
    async with running_gateway(config_of(raw_config(fake, plugins))) as gw:
        started = time.monotonic()
        await gw.openai().chat.completions.create(model="chat", messages=USER)
        answered = time.monotonic() - started
        example = example_of(gw)
        assert example.answers == [], "after_response is off the request path"
    assert answered < 0.5
    assert [a.reply_text for a in example.answers] == ["echo: ping"]
    assert example.stopped
