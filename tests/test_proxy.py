"""The forwarding path end to end: real gateway, real fake upstreams on loopback, the openai SDK.

A fake upstream picks its behaviour from the model name it receives, so a target's upstream model
name ("ok", "tools", "error-500", "hang", ...) scripts what that target does.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Mapping
from contextlib import AbstractAsyncContextManager
from typing import Any

import aiohttp
import openai
import pytest
from openai import AsyncOpenAI
from openai.types.chat import ChatCompletionFunctionToolParam, ChatCompletionMessageParam

from tests.fakes.openai_upstream import FakeOpenAI
from tests.gateway_server import RunningGateway, config_of, free_port, running_gateway

USER: list[ChatCompletionMessageParam] = [{"role": "user", "content": "ping"}]


@pytest.fixture
async def fake() -> AsyncIterator[FakeOpenAI]:
    async with FakeOpenAI() as upstream:
        yield upstream


@pytest.fixture
async def fake2() -> AsyncIterator[FakeOpenAI]:
    async with FakeOpenAI() as upstream:
        yield upstream


def provider(upstream: FakeOpenAI | str, *, local: bool = True, **extra: Any) -> dict[str, Any]:
    url = upstream.url if isinstance(upstream, FakeOpenAI) else upstream
    return {"kind": "openai", "base_url": url, "local": local, **extra}


def gateway(
    providers: dict[str, Any], models: list[dict[str, Any]], **sections: Any
) -> AbstractAsyncContextManager[RunningGateway]:
    raw = {
        "providers": providers,
        "models": models,
        "routing": {"retries": 0, "backoff_seconds": 0.01, "cooldown_seconds": 30},
        **sections,
    }
    return running_gateway(config_of(raw))


def client(gw: RunningGateway, **options: Any) -> AsyncOpenAI:
    return gw.openai(**options)


def posts(upstream: FakeOpenAI) -> list[Any]:
    """API calls the upstream received (its GET /v1/models availability probes left out)."""
    return [r for r in upstream.requests if r.method == "POST"]


async def metrics_text(gw: RunningGateway) -> str:
    async with aiohttp.ClientSession() as session, session.get(gw.url + "/metrics") as response:
        return await response.text()


# --- the happy paths ----------------------------------------------------------------------------


async def test_non_stream_forwards_the_body_intact_with_the_upstream_model_name(
    fake: FakeOpenAI,
) -> None:
    async with gateway(
        {"up": provider(fake)},
        [{"name": "chat", "aliases": ["gpt-4o"], "targets": [{"provider": "up", "model": "ok"}]}],
    ) as gw:
        reply = await client(gw).chat.completions.create(
            model="gpt-4o",
            messages=USER,
            temperature=0.5,
            logprobs=True,
            extra_body={"vendor_extra": {"keep": [1, 2]}},
        )
    assert reply.choices[0].message.content == "echo: ping"
    sent = posts(fake)[-1].body
    assert sent["model"] == "ok"
    assert sent["messages"] == USER and sent["temperature"] == 0.5 and sent["logprobs"] is True
    assert sent["vendor_extra"] == {"keep": [1, 2]}


async def test_stream_relays_every_chunk_and_always_asks_upstream_for_usage(
    fake: FakeOpenAI,
) -> None:
    async with gateway(
        {"up": provider(fake)}, [{"name": "chat", "targets": [{"provider": "up", "model": "ok"}]}]
    ) as gw:
        stream = await client(gw).chat.completions.create(model="chat", messages=USER, stream=True)
        chunks = [c async for c in stream]
        assert posts(fake)[-1].body["stream_options"] == {"include_usage": True}
        assert (
            "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "echo: ping"
        )
        assert all(c.usage is None for c in chunks), (
            "usage chunk must be dropped when not asked for"
        )
        assert chunks[-1].choices[0].finish_reason == "stop"

        stream = await client(gw).chat.completions.create(
            model="chat", messages=USER, stream=True, stream_options={"include_usage": True}
        )
        chunks = [c async for c in stream]
        assert chunks[-1].usage is not None and chunks[-1].usage.total_tokens > 0
        text = await metrics_text(gw)
    assert 'turnout_tokens_total{model="chat",type="completion"}' in text
    assert 'turnout_time_to_first_token_seconds_count{model="chat"} 2.0' in text


async def test_streamed_tool_call_arguments_arrive_whole(fake: FakeOpenAI) -> None:
    tool: ChatCompletionFunctionToolParam = {
        "type": "function",
        "function": {"name": "get_weather", "parameters": {"type": "object"}},
    }
    async with gateway(
        {"up": provider(fake)},
        [{"name": "chat", "targets": [{"provider": "up", "model": "tools"}]}],
    ) as gw:
        stream = await client(gw).chat.completions.create(
            model="chat", messages=USER, tools=[tool], stream=True
        )
        name, arguments = "", ""
        async for chunk in stream:
            for choice in chunk.choices:
                for call in choice.delta.tool_calls or ():
                    assert call.function is not None
                    name += call.function.name or ""
                    arguments += call.function.arguments or ""
    assert name == "get_weather" and json.loads(arguments) == {"city": "Paris"}


async def test_completions_and_embeddings_are_forwarded(fake: FakeOpenAI) -> None:
    async with gateway(
        {"up": provider(fake)}, [{"name": "m", "targets": [{"provider": "up", "model": "ok"}]}]
    ) as gw:
        c = client(gw)
        completion = await c.completions.create(model="m", prompt="hello")
        assert completion.choices[0].text == "echo: hello"
        stream = await c.completions.create(model="m", prompt="hello", stream=True)
        assert (
            "".join([chunk.choices[0].text async for chunk in stream if chunk.choices])
            == "echo: hello"
        )
        embedding = await c.embeddings.create(model="m", input=["a", "b"])
        assert len(embedding.data) == 2 and len(embedding.data[0].embedding) == 8
    assert [r.path for r in posts(fake)] == ["/v1/completions", "/v1/completions", "/v1/embeddings"]


async def test_mlx_and_llamacpp_quirks_are_invisible_to_clients() -> None:
    tool: ChatCompletionFunctionToolParam = {
        "type": "function",
        "function": {"name": "get_weather", "parameters": {"type": "object"}},
    }
    async with FakeOpenAI(flavor="mlx") as mlx, FakeOpenAI(flavor="llamacpp") as lcp:
        providers = {
            "mlx": {"kind": "mlx", "base_url": mlx.url},
            "lcp": {"kind": "llamacpp", "base_url": lcp.url},
        }
        models = [
            {"name": "mlx", "targets": [{"provider": "mlx", "model": "ok"}]},
            {"name": "lcp", "targets": [{"provider": "lcp", "model": "tools"}]},
        ]
        async with gateway(providers, models) as gw:
            async with aiohttp.ClientSession() as session:
                body = {
                    "model": "mlx",
                    "messages": USER,
                    "stream": True,
                    "stream_options": {"include_usage": True},
                }
                async with session.post(gw.v1 + "/chat/completions", json=body) as response:
                    raw = await response.read()
            events = [json.loads(e[6:]) for e in raw.split(b"\n\n") if e.startswith(b"data: {")]
            roles = [e["choices"][0]["delta"].get("role") for e in events if e["choices"]]
            assert roles[0] == "assistant" and not any(roles[1:])
            assert all(e["object"] == "chat.completion.chunk" for e in events)
            assert b": keepalive" not in raw

            reply = await client(gw).chat.completions.create(
                model="lcp", messages=USER, tools=[tool]
            )
            assert reply.choices[0].message.content is None
            assert reply.choices[0].message.tool_calls


# --- fallback, cooldown, balancing ----------------------------------------------------------


async def test_fallback_to_the_next_target_on_5xx_429_and_connect_errors(
    fake: FakeOpenAI, fake2: FakeOpenAI
) -> None:
    dead = f"http://127.0.0.1:{free_port()}/v1"
    providers = {"a": provider(fake), "b": provider(fake2), "dead": provider(dead)}
    models = [
        {
            "name": "five",
            "targets": [{"provider": "a", "model": "error-503"}, {"provider": "b", "model": "ok"}],
        },
        {
            "name": "limited",
            "targets": [{"provider": "a", "model": "error-429"}, {"provider": "b", "model": "ok"}],
        },
        {
            "name": "refused",
            "targets": [{"provider": "dead", "model": "ok"}, {"provider": "b", "model": "ok"}],
        },
    ]
    async with gateway(providers, models) as gw:
        for name in ("five", "limited", "refused"):
            raw = await client(gw).chat.completions.with_raw_response.create(
                model=name, messages=USER
            )
            assert raw.parse().choices[0].message.content == "echo: ping"
            assert raw.headers["x-turnout-attempts"] == "2"
            assert raw.headers["x-turnout-target"] == "b/ok"
        text = await metrics_text(gw)
    assert 'turnout_fallbacks_total{model="five"} 1.0' in text
    assert 'outcome="upstream_connect_error"' in text


async def test_stream_falls_back_when_the_upstream_fails_before_its_first_event(
    fake: FakeOpenAI, fake2: FakeOpenAI
) -> None:
    models = [
        {
            "name": "m",
            "targets": [{"provider": "a", "model": "error-500"}, {"provider": "b", "model": "ok"}],
        }
    ]
    async with gateway({"a": provider(fake), "b": provider(fake2)}, models) as gw:
        stream = await client(gw).chat.completions.create(model="m", messages=USER, stream=True)
        text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
    assert text == "echo: ping"
    assert len(posts(fake)) == 1 and len(posts(fake2)) == 1


async def test_client_errors_are_not_retried_elsewhere(fake: FakeOpenAI, fake2: FakeOpenAI) -> None:
    models = [
        {
            "name": "m",
            "targets": [{"provider": "a", "model": "error-400"}, {"provider": "b", "model": "ok"}],
        }
    ]
    async with gateway({"a": provider(fake), "b": provider(fake2)}, models) as gw:
        with pytest.raises(openai.BadRequestError) as caught:
            await client(gw).chat.completions.create(model="m", messages=USER)
    assert caught.value.status_code == 400
    assert posts(fake2) == []


async def test_local_only_never_reaches_the_cloud_canary(fake: FakeOpenAI) -> None:
    async with FakeOpenAI() as canary:
        providers = {
            "local": provider(fake),
            "cloud": provider(canary, local=False, api_key="sk-test"),
        }
        models = [
            {
                "name": "private",
                "local_only": True,
                "targets": [
                    {"provider": "local", "model": "error-500"},
                    {"provider": "cloud", "model": "ok"},
                ],
            }
        ]
        async with gateway(providers, models) as gw:
            with pytest.raises(openai.InternalServerError) as caught:
                await client(gw).chat.completions.create(model="private", messages=USER)
            with pytest.raises(openai.APIError):
                stream = await client(gw).chat.completions.create(
                    model="private", messages=USER, stream=True
                )
                async for _ in stream:
                    pass
        assert caught.value.status_code == 502
        assert canary.requests == [], "a local_only model sent traffic to a cloud provider"


async def test_failed_target_cools_down_and_is_tried_last(
    fake: FakeOpenAI, fake2: FakeOpenAI
) -> None:
    models = [
        {
            "name": "m",
            "targets": [{"provider": "a", "model": "ok"}, {"provider": "b", "model": "ok"}],
        }
    ]
    async with gateway({"a": provider(fake), "b": provider(fake2)}, models) as gw:
        fake.fail_next(1, 500)
        await client(gw).chat.completions.create(model="m", messages=USER)
        for _ in range(3):
            raw = await client(gw).chat.completions.with_raw_response.create(
                model="m", messages=USER
            )
            assert raw.headers["x-turnout-target"] == "b/ok"
    assert len(posts(fake)) == 1 and len(posts(fake2)) == 4


async def test_weighted_balance_spreads_load(fake: FakeOpenAI, fake2: FakeOpenAI) -> None:
    models = [
        {
            "name": "m",
            "balance": "weighted",
            "targets": [
                {"provider": "a", "model": "ok", "weight": 1},
                {"provider": "b", "model": "ok", "weight": 1},
            ],
        }
    ]
    async with gateway({"a": provider(fake), "b": provider(fake2)}, models) as gw:
        c = client(gw)
        await asyncio.gather(
            *(c.chat.completions.create(model="m", messages=USER) for _ in range(40))
        )
    assert len(posts(fake)) + len(posts(fake2)) == 40
    assert min(len(posts(fake)), len(posts(fake2))) >= 8


async def test_least_inflight_avoids_the_busy_target(fake: FakeOpenAI, fake2: FakeOpenAI) -> None:
    fake.first_byte_delay = 1.0
    models = [
        {
            "name": "m",
            "balance": "least_inflight",
            "targets": [
                {"provider": "a", "model": "slow-first-byte"},
                {"provider": "b", "model": "ok"},
            ],
        }
    ]
    async with gateway({"a": provider(fake), "b": provider(fake2)}, models) as gw:
        c = client(gw)
        slow = asyncio.create_task(c.chat.completions.create(model="m", messages=USER))
        await asyncio.sleep(0.2)
        for _ in range(3):
            raw = await c.chat.completions.with_raw_response.create(model="m", messages=USER)
            assert raw.headers["x-turnout-target"] == "b/ok"
        await slow


# --- failures the client must see clearly ----------------------------------------------------


async def test_all_targets_failed_names_the_last_error(fake: FakeOpenAI) -> None:
    dead = f"http://127.0.0.1:{free_port()}/v1"
    models = [
        {
            "name": "m",
            "targets": [
                {"provider": "a", "model": "error-500"},
                {"provider": "dead", "model": "x"},
            ],
        }
    ]
    async with gateway({"a": provider(fake), "dead": provider(dead)}, models) as gw:
        with pytest.raises(openai.APIStatusError) as caught:
            await client(gw).chat.completions.create(model="m", messages=USER)
    assert caught.value.status_code == 502
    error = caught.value.body
    assert isinstance(error, dict)
    assert "all 2 attempts" in error["message"] and "cannot connect" in error["message"]
    assert error["code"] == "upstream_connect_error"


async def test_upstream_timeout_is_504(fake: FakeOpenAI) -> None:
    providers = {"a": provider(fake, timeouts={"connect": 1, "first_byte": 0.3, "idle": 0.3})}
    async with gateway(
        providers, [{"name": "m", "targets": [{"provider": "a", "model": "hang"}]}]
    ) as gw:
        with pytest.raises(openai.APIStatusError) as caught:
            await client(gw).chat.completions.create(model="m", messages=USER)
        assert caught.value.status_code == 504
        with pytest.raises(openai.APIStatusError) as caught:
            await client(gw).chat.completions.create(model="m", messages=USER, stream=True)
        assert caught.value.status_code == 504


async def test_mid_stream_drop_ends_with_an_in_band_error(fake: FakeOpenAI) -> None:
    async with gateway(
        {"a": provider(fake)},
        [{"name": "m", "targets": [{"provider": "a", "model": "drop-mid-stream"}]}],
    ) as gw:
        received = []
        with pytest.raises(openai.APIError, match=r"cut off|closed"):
            stream = await client(gw).chat.completions.create(model="m", messages=USER, stream=True)
            async for chunk in stream:
                received.append(chunk)
        assert received, "chunks sent before the drop reach the client"


async def test_slow_first_token_gets_keepalive_comments(fake: FakeOpenAI) -> None:
    fake.first_byte_delay = 0.7
    async with gateway(
        {"a": provider(fake)},
        [{"name": "m", "targets": [{"provider": "a", "model": "slow-first-byte"}]}],
        server={"keepalive_seconds": 0.2},
    ) as gw:
        async with aiohttp.ClientSession() as session:
            body = {"model": "m", "messages": USER, "stream": True}
            async with session.post(gw.v1 + "/chat/completions", json=body) as response:
                raw = await response.read()
    assert raw.startswith(b": keepalive\n\n")
    assert raw.count(b": keepalive") >= 2
    assert raw.rstrip().endswith(b"data: [DONE]")


async def test_stream_failure_after_keepalive_is_reported_in_band(fake: FakeOpenAI) -> None:
    providers = {"a": provider(fake, timeouts={"connect": 1, "first_byte": 0.6, "idle": 1})}
    async with gateway(
        providers,
        [{"name": "m", "targets": [{"provider": "a", "model": "hang"}]}],
        server={"keepalive_seconds": 0.2},
    ) as gw:
        async with aiohttp.ClientSession() as session:
            body = {"model": "m", "messages": USER, "stream": True}
            async with session.post(gw.v1 + "/chat/completions", json=body) as response:
                assert response.status == 200
                raw = await response.read()
    assert b": keepalive" in raw
    error = json.loads(raw.split(b"data: ")[-1])
    assert error["error"]["code"] == "upstream_timeout"


# --- client disconnects cancel upstream work ---------------------------------------------------


async def wait_until_idle(gw: RunningGateway) -> str:
    text = ""
    for _ in range(100):
        text = await metrics_text(gw)
        if "turnout_requests_in_flight 0.0" in text:
            return text
        await asyncio.sleep(0.05)
    return text


async def test_disconnected_stream_client_cancels_the_upstream_request(fake: FakeOpenAI) -> None:
    fake.chunk_delay = 0.2
    async with gateway(
        {"a": provider(fake)}, [{"name": "m", "targets": [{"provider": "a", "model": "ok"}]}]
    ) as gw:
        async with aiohttp.ClientSession() as session:
            body = {"model": "m", "messages": USER, "stream": True}
            async with session.post(gw.v1 + "/chat/completions", json=body) as response:
                await response.content.readline()
        text = await wait_until_idle(gw)
        async with (
            aiohttp.ClientSession() as session,
            session.get(gw.url + "/engine/status") as status,
        ):
            targets = (await status.json())["targets"]
    assert "turnout_requests_in_flight 0.0" in text, "the relay kept running after the client left"
    assert 'turnout_client_disconnects_total{route="chat"} 1.0' in text
    assert targets["a/ok"]["inflight"] == 0


async def test_disconnected_non_stream_client_cancels_the_upstream_request(
    fake: FakeOpenAI,
) -> None:
    async with gateway(
        {"a": provider(fake)}, [{"name": "m", "targets": [{"provider": "a", "model": "hang"}]}]
    ) as gw:
        with pytest.raises(openai.APITimeoutError):
            await client(gw, timeout=0.5).chat.completions.create(model="m", messages=USER)
        text = await wait_until_idle(gw)
    assert "turnout_requests_in_flight 0.0" in text
    assert 'turnout_client_disconnects_total{route="chat"} 1.0' in text


# --- bad input gets OpenAI's envelope with a 4xx ----------------------------------------------


async def raw_post(
    gw: RunningGateway, path: str, data: bytes, **headers: str
) -> tuple[int, Mapping[str, str], Any]:
    async with aiohttp.ClientSession() as session:
        async with session.post(
            gw.url + path, data=data, headers={"Content-Type": "application/json", **headers}
        ) as r:
            return r.status, r.headers.copy(), await r.json(content_type=None)


async def test_bad_requests_get_clear_openai_errors(fake: FakeOpenAI) -> None:
    models = [
        {"name": "chat", "aliases": ["gpt-4o"], "targets": [{"provider": "a", "model": "ok"}]}
    ]
    async with gateway({"a": provider(fake)}, models, server={"max_body_bytes": 4096}) as gw:
        status, _, body = await raw_post(
            gw, "/v1/chat/completions", b'{"model": "chat", "messages": ['
        )
        assert status == 400 and "not valid JSON" in body["error"]["message"]
        status, _, body = await raw_post(
            gw, "/v1/chat/completions", b'{"model": "chat", "messages": [], "n": "two"}'
        )
        assert status == 400 and body["error"]["param"] == "n"
        status, _, body = await raw_post(
            gw, "/v1/chat/completions", b'{"model": "nope", "messages": []}'
        )
        assert status == 404 and body["error"]["code"] == "model_not_found"
        assert "chat" in body["error"]["message"] and "gpt-4o" in body["error"]["message"]
        status, _, body = await raw_post(
            gw,
            "/v1/chat/completions",
            b'{"model": "chat", "messages": [], "pad": "' + b"x" * 5000 + b'"}',
        )
        assert status == 413 and body["error"]["code"] == "request_too_large"
        status, _, body = await raw_post(gw, "/v1/nothing-here", b"{}")
        assert status == 404 and body["error"]["type"] == "invalid_request_error"
        async with (
            aiohttp.ClientSession() as session,
            session.get(gw.v1 + "/chat/completions") as r,
        ):
            assert r.status == 405 and (await r.json())["error"]["code"] == "method_not_allowed"
    assert posts(fake) == []


async def test_request_id_is_echoed_or_generated(fake: FakeOpenAI) -> None:
    async with gateway(
        {"a": provider(fake)}, [{"name": "m", "targets": [{"provider": "a", "model": "ok"}]}]
    ) as gw:
        body = json.dumps({"model": "m", "messages": USER}).encode()
        _, headers, _ = await raw_post(
            gw, "/v1/chat/completions", body, **{"X-Request-Id": "abc-123"}
        )
        assert headers["x-request-id"] == "abc-123"
        _, headers, _ = await raw_post(gw, "/v1/chat/completions", body)
        assert len(headers["x-request-id"]) == 24


# --- visibility --------------------------------------------------------------------------------


async def test_models_list_reports_availability_per_target(fake: FakeOpenAI) -> None:
    dead = f"http://127.0.0.1:{free_port()}/v1"
    providers = {
        "up": provider(fake),
        "down": provider(dead),
        "cloud": {
            "kind": "openai",
            "base_url": "https://api.example.com/v1",
            "api_key": "${UNSET_KEY}",
        },
    }
    models = [
        {"name": "good", "aliases": ["g"], "targets": [{"provider": "up", "model": "ok"}]},
        {
            "name": "bad",
            "targets": [{"provider": "down", "model": "x"}, {"provider": "cloud", "model": "y"}],
        },
    ]
    async with gateway(providers, models) as gw:
        listing = await client(gw).models.list()
        by_id = {m.id: m.model_dump() for m in listing.data}
    assert set(by_id) == {"good", "g", "bad"}
    assert by_id["good"]["available"] is True and by_id["g"]["alias_of"] == "good"
    assert by_id["bad"]["available"] is False
    details = " ".join(t["detail"] for t in by_id["bad"]["targets"])
    assert "cannot connect" in details and "UNSET_KEY" in details


async def test_metrics_expose_requests_latency_overhead_and_upstreams(fake: FakeOpenAI) -> None:
    async with gateway(
        {"a": provider(fake)}, [{"name": "m", "targets": [{"provider": "a", "model": "ok"}]}]
    ) as gw:
        await client(gw).chat.completions.create(model="m", messages=USER)
        text = await metrics_text(gw)
    for line in (
        'turnout_requests_total{model="m",route="chat",status="200"} 1.0',
        'turnout_upstream_requests_total{outcome="ok",provider="a",upstream_model="ok"} 1.0',
        'turnout_request_duration_seconds_count{model="m",route="chat"} 1.0',
        'turnout_gateway_overhead_seconds_count{route="chat"} 1.0',
        'turnout_provider_available{provider="a"} 1.0',
        "turnout_requests_in_flight 0.0",
    ):
        assert line in text, line


async def test_retry_pass_with_backoff_recovers_a_single_target(fake: FakeOpenAI) -> None:
    raw = {
        "providers": {"a": provider(fake)},
        "models": [{"name": "m", "targets": [{"provider": "a", "model": "ok"}]}],
        "routing": {"retries": 2, "backoff_seconds": 0.05, "cooldown_seconds": 30},
    }
    async with running_gateway(config_of(raw)) as gw:
        fake.fail_next(2, 503)
        reply = await client(gw).chat.completions.with_raw_response.create(model="m", messages=USER)
    assert reply.parse().choices[0].message.content == "echo: ping"
    assert reply.headers["x-turnout-attempts"] == "3"
    gaps = [
        b.received_at - a.received_at for a, b in zip(posts(fake), posts(fake)[1:], strict=False)
    ]
    assert all(gap >= 0.02 for gap in gaps), gaps


async def test_litestar_routes_carry_a_request_id(fake: FakeOpenAI) -> None:
    async with gateway(
        {"a": provider(fake)}, [{"name": "m", "targets": [{"provider": "a", "model": "ok"}]}]
    ) as gw:
        async with aiohttp.ClientSession() as session:
            for path in ("/v1/models", "/health", "/metrics", "/nope"):
                async with session.get(gw.url + path, headers={"X-Request-Id": "r-1"}) as response:
                    assert response.headers["x-request-id"] == "r-1", path
