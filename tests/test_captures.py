"""Request captures for debugging: a real gateway, the fake upstream, the official SDK, and the
dashboard's panel in headless Chromium."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from openai.types.chat import ChatCompletionMessageParam

from gateway.captures.redact import MASK, Redactor
from gateway.cli import main
from gateway.config.observability import Capture
from gateway.errors import ConfigError
from gateway.pipeline.call import Call
from tests.fakes.openai_upstream import FakeOpenAI
from tests.gateway_server import RunningGateway, config_of, running_gateway
from tests.test_dashboard import browser, open_dashboard  # noqa: F401  (the browser fixture)

USER: list[ChatCompletionMessageParam] = [{"role": "user", "content": "hello there"}]
ADMIN = "sk-admin-captures-1"
PROVIDER_SECRET = "provider-secret-value-0042"


@pytest.fixture
async def fake() -> AsyncIterator[FakeOpenAI]:
    async with FakeOpenAI(stream_chunks=3) as upstream:
        yield upstream


def routing(fake: FakeOpenAI, **sections: Any) -> dict[str, Any]:
    return {
        "providers": {
            "up": {
                "kind": "openai",
                "base_url": fake.url,
                "local": True,
                "api_key": PROVIDER_SECRET,
            }
        },
        "models": [
            {"name": "chat", "targets": [{"provider": "up", "model": "ok"}]},
            {"name": "quiet", "targets": [{"provider": "up", "model": "ok"}]},
        ],
        "routing": {"retries": 0},
        "auth": {"admin_key": ADMIN},
        **sections,
    }


async def get(gw: RunningGateway, path: str, key: str | None = ADMIN) -> tuple[int, Any]:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    async with (
        aiohttp.ClientSession() as session,
        session.get(gw.url + path, headers=headers) as response,
    ):
        return response.status, await response.json()


async def test_capture_is_off_by_default(fake: FakeOpenAI) -> None:
    async with running_gateway(config_of(routing(fake))) as gw:
        await gw.openai(api_key=ADMIN).chat.completions.create(model="chat", messages=USER)
        status, listing = await get(gw, "/v1/captures")
        assert status == 200
        assert listing["enabled"] is False and listing["data"] == []
        assert "capture.enabled" in listing["hint"]
        status, _ = await get(gw, "/v1/captures/1")
        assert status == 404
        assert gw.app.state.gateway.captures is None


async def test_captured_exchange_keeps_bodies_with_keys_redacted(fake: FakeOpenAI) -> None:
    capture = {"enabled": True}
    async with running_gateway(config_of(routing(fake, capture=capture))) as gw:
        await gw.openai(api_key=ADMIN).chat.completions.create(
            model="chat",
            messages=[{"role": "user", "content": "my key is sk-live-abcdefghijklmnop, ok?"}],
            extra_body={"metadata": {"api_key": "plain-secret", "note": PROVIDER_SECRET}},
            extra_headers={"x-api-key": "another-secret", "x-trace": "visible"},
        )
        status, listing = await get(gw, "/v1/captures")
        assert status == 200 and listing["enabled"] is True
        [summary] = listing["data"]
        assert summary["model"] == "chat" and summary["status"] == 200 and summary["done"]
        status, detail = await get(gw, f"/v1/captures/{summary['id']}")
        unauthorised, _ = await get(gw, f"/v1/captures/{summary['id']}", key="sk-wrong")
    assert status == 200 and unauthorised in (401, 403)
    request, response = detail["request"], detail["response"]
    assert request["headers"]["authorization"] == MASK
    assert request["headers"]["x-api-key"] == MASK
    assert request["headers"]["x-trace"] == "visible"
    body = request["body"]
    assert "sk-live-abcdefghijklmnop" not in body and "plain-secret" not in body
    assert PROVIDER_SECRET not in body
    assert '"api_key":"[redacted]"' in body and "my key is [redacted], ok?" in body
    assert "echo: my key is" in response["body"]
    assert response["headers"]["x-turnout-target"] == "up/ok"
    assert not request["truncated"] and not response["truncated"]


async def test_a_stream_is_captured_as_the_sse_text_sent(fake: FakeOpenAI) -> None:
    async with running_gateway(config_of(routing(fake, capture={"enabled": True}))) as gw:
        stream = await gw.openai(api_key=ADMIN).chat.completions.create(
            model="chat", messages=USER, stream=True
        )
        async for _ in stream:
            pass
        _, listing = await get(gw, "/v1/captures")
        _, detail = await get(gw, f"/v1/captures/{listing['data'][0]['id']}")
    assert detail["stream"] is True and detail["status"] == 200
    text = detail["response"]["body"]
    assert text.startswith("data: ") and text.rstrip().endswith("data: [DONE]")
    assert detail["response"]["headers"]["content-type"] == "text/event-stream"


async def test_only_listed_models_are_captured_and_the_ring_keeps_the_newest(
    fake: FakeOpenAI,
) -> None:
    capture = {"enabled": True, "models": ["chat"], "max_entries": 2, "max_bytes": 40}
    async with running_gateway(config_of(routing(fake, capture=capture))) as gw:
        client = gw.openai(api_key=ADMIN)
        for model in ("chat", "quiet", "chat", "chat"):
            await client.chat.completions.create(model=model, messages=USER)
        _, listing = await get(gw, "/v1/captures")
        _, newest = await get(gw, f"/v1/captures/{listing['data'][0]['id']}")
        gone, _ = await get(gw, "/v1/captures/1")
    assert [c["model"] for c in listing["data"]] == ["chat", "chat"]
    assert [c["id"] for c in listing["data"]] == [3, 2]
    assert gone == 404
    assert newest["request"]["truncated"] and len(newest["request"]["body"]) <= 40
    assert newest["request_bytes"] > 40


async def test_refused_and_failed_requests_are_captured_with_their_status(
    fake: FakeOpenAI,
) -> None:
    """A body the gateway could not read and an unknown model are refused before admission;
    an upstream's 500 after it: all three are captured, with what the client sent."""
    raw = routing(fake, capture={"enabled": True})
    raw["models"].append({"name": "broken", "targets": [{"provider": "up", "model": "error-500"}]})
    async with running_gateway(config_of(raw)) as gw:
        headers = {"Authorization": f"Bearer {ADMIN}", "content-type": "application/json"}
        async with aiohttp.ClientSession() as session:
            for body in (
                b'{"model": "chat", "messages": [',
                b'{"model": "nowhere", "messages": [{"role": "user", "content": "hi"}]}',
                b'{"model": "broken", "messages": [{"role": "user", "content": "hi"}]}',
            ):
                async with session.post(
                    gw.v1 + "/chat/completions", data=body, headers=headers
                ) as response:
                    assert response.status >= 400
        _, listing = await get(gw, "/v1/captures")
        details = [(await get(gw, f"/v1/captures/{c['id']}"))[1] for c in listing["data"]]
    broken, unknown, unreadable = details
    assert unreadable["status"] == 400 and unreadable["request"]["body"].endswith('"messages": [')
    assert unknown["status"] == 404 and '"nowhere"' in unknown["request"]["body"]
    assert broken["model"] == "broken" and broken["status"] >= 500
    for detail in details:
        assert detail["done"] and '"error"' in detail["response"]["body"]
        assert detail["request"]["headers"]["authorization"] == MASK


def test_keys_select_captures_as_models_do() -> None:
    from gateway.captures.ring import Captures
    from gateway.identity import Identity

    captures = Captures(Capture(enabled=True, keys=("k1",)))
    call = Call("r")
    call.identity = Identity(key_id="k1", agent_id="a")
    assert captures.wants(call)
    call.identity = Identity(key_id="k2", agent_id="a")
    assert not captures.wants(call)


def test_redactor_masks_credentials_by_name_shape_and_value() -> None:
    redactor = Redactor(["configured-secret-77"])
    headers = [
        (b"Authorization", b"Bearer sk-abc"),
        (b"anthropic-version", b"2023-06-01"),
        (b"cookie", b"s=1"),
    ]
    assert redactor.headers(headers) == {
        "authorization": MASK,
        "anthropic-version": "2023-06-01",
        "cookie": MASK,
    }
    text = (
        '{"password": "p\\"w", "max_tokens": 5, "token": "t0k", '
        '"x": "Bearer abcdefghijk", "y": "AKIAABCDEFGHIJKLMNOP", "z": "configured-secret-77"}'
    )
    assert redactor.text(text) == (
        '{"password": "[redacted]", "max_tokens": 5, "token": "[redacted]", '
        '"x": "Bearer [redacted]", "y": "[redacted]", "z": "[redacted]"}'
    )


def test_capture_settings_are_checked_by_key_path() -> None:
    with pytest.raises(ConfigError, match=r"capture\.max_entries: expected a number >= 1"):
        config_of({"capture": {"enabled": True, "max_entries": 0}})


async def test_dashboard_shows_captures_and_one_exchange(
    browser: Any,  # noqa: F811
    fake: FakeOpenAI,
) -> None:
    errors: list[str] = []
    capture = {"enabled": True}
    raw = routing(fake, capture=capture)
    raw["auth"] = {}
    async with running_gateway(config_of(raw)) as gw:
        await gw.openai().chat.completions.create(model="chat", messages=USER)
        page = await open_dashboard(browser, gw, errors)
        row = page.locator("#captures tbody tr").first
        await row.wait_for()
        cells = await row.locator("td").all_inner_texts()
        await row.click()
        body = page.locator("#capture-detail .capture-body").last
        await body.wait_for()
        answer = await body.inner_text()
    assert "chat" in cells and "200" in cells
    assert "echo: hello there" in answer
    assert errors == []


def test_turnout_check_names_the_bad_capture_and_telemetry_keys(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in [n for n in os.environ if n.startswith("OTEL_")]:
        monkeypatch.delenv(name)
    database = tmp_path / "t.db"
    cases = {
        "capture: {enabled: true, max_bytes: 0}": "capture.max_bytes: expected a number",
        "capture: {enable: true}": "capture: unknown key `enable`",
        "capture: {models: coder}": "capture.models",
        "telemetry: {otlp: {endpoint: 'collector:4317'}}": "telemetry.otlp.endpoint",
        "telemetry: {otlp: {endpoint: http://c:4318, header: {}}}": "telemetry.otlp: unknown key `header`",
    }
    for section, named in cases.items():
        path = tmp_path / "routing.yaml"
        path.write_text(f"server: {{database: {database}}}\n{section}\n")
        assert main(["check", str(path)]) != 0, section
        assert named in capsys.readouterr().err, section
    path.write_text(
        f"server: {{database: {database}}}\n"
        "capture: {enabled: true, models: [coder], keys: [k1], max_entries: 5, max_bytes: 1024}\n"
        "telemetry: {otlp: {endpoint: http://c:4318, headers: {x: y}}, service_name: gw}\n"
    )
    assert main(["check", str(path)]) == 0
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "zipkin")
    assert main(["check", str(path)]) != 0
    assert "OTEL_TRACES_EXPORTER" in capsys.readouterr().err
