"""The engines' own metrics on turnout's /metrics: relabelled by role, read at scrape time, and
a scrape that never fails because an engine does not answer."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from openai.types.chat import ChatCompletionMessageParam
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from gateway.engines.engine_metrics import EngineMetrics, relabel
from tests.engines.engines import HELLO_TEXT, llama_server_binary
from tests.gateway_server import config_of, free_port, running_gateway

# As llama-server --metrics writes it (names with a colon, counters ending in _total).
LLAMACPP_TEXT = """\
# HELP llamacpp:prompt_tokens_total Number of prompt tokens processed.
# TYPE llamacpp:prompt_tokens_total counter
llamacpp:prompt_tokens_total 9
# HELP llamacpp:requests_processing Number of requests processing.
# TYPE llamacpp:requests_processing gauge
llamacpp:requests_processing 0
"""
USER: list[ChatCompletionMessageParam] = [{"role": "user", "content": "hi"}]


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """{(sample name, sorted labels): value}; parsing fails on an invalid exposition."""
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_two_roles_share_one_family_per_name_each_sample_labelled_by_role() -> None:
    other = LLAMACPP_TEXT.replace(" 9\n", " 4\n") + "turnout_requests_total 5\n"
    families = relabel({"fast": LLAMACPP_TEXT, "coder": other, "broken": "{{{ not metrics"})
    assert [f.name for f in families] == ["llamacpp:prompt_tokens", "llamacpp:requests_processing"]

    registry = CollectorRegistry()
    registry.register(_Fixed(families))
    text = generate_latest(registry).decode()
    # One HELP/TYPE per family (a second one would make Prometheus reject the scrape).
    assert text.count("# TYPE llamacpp:prompt_tokens_total counter") == 1
    found = samples(text)
    assert found[("llamacpp:prompt_tokens_total", (("role", "fast"),))] == 9
    assert found[("llamacpp:prompt_tokens_total", (("role", "coder"),))] == 4
    # An engine cannot write into turnout's own names.
    assert not any(name.startswith("turnout_") for name, _ in found)


class _Fixed:
    def __init__(self, families: list[Any]) -> None:
        self._families = families

    def collect(self) -> list[Any]:
        return self._families


@pytest.fixture
async def engines() -> AsyncIterator[tuple[str, str]]:
    """An engine that answers its metrics, and one that accepts and never answers."""

    async def metrics(request: web.Request) -> web.Response:
        return web.Response(text=LLAMACPP_TEXT)

    app = web.Application()
    app.router.add_get("/metrics", metrics)
    runner = web.AppRunner(app)
    await runner.setup()
    answering = free_port()
    await web.TCPSite(runner, "127.0.0.1", answering).start()
    held: list[asyncio.StreamWriter] = []

    async def hold(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)

    stuck = await asyncio.start_server(hold, "127.0.0.1", 0)
    stuck_port = stuck.sockets[0].getsockname()[1]
    yield f"http://127.0.0.1:{answering}/metrics", f"http://127.0.0.1:{stuck_port}/metrics"
    for writer in held:
        writer.close()
    stuck.close()
    await runner.cleanup()


async def test_an_engine_that_does_not_answer_costs_its_samples_not_the_scrape(
    engines: tuple[str, str],
) -> None:
    answering, stuck = engines
    urls = {"fast": answering, "stuck": stuck, "stopped": answering}
    async with aiohttp.ClientSession() as session:
        collector = EngineMetrics(urls, lambda role: role != "stopped", session, timeout=0.3)
        registry = CollectorRegistry()
        registry.register(collector)
        async with asyncio.timeout(10):
            await collector.refresh()
        found = samples(generate_latest(registry).decode())
    assert found[("llamacpp:prompt_tokens_total", (("role", "fast"),))] == 9
    assert found[("turnout_engine_metrics_up", (("role", "fast"),))] == 1
    assert found[("turnout_engine_metrics_up", (("role", "stuck"),))] == 0
    # Only ready roles are asked.
    assert not any(dict(labels).get("role") == "stopped" for _, labels in found)


@pytest.mark.engine
async def test_a_ready_llama_server_roles_metrics_appear_on_turnouts_metrics(
    tiny_models: dict[str, Path], tmp_path: Path
) -> None:
    binary = str(llama_server_binary())
    # A role's own command without --metrics: turnout adds it.
    command = [binary, "-m", "${MODEL}", "--port", "${PORT}", "-c", "${CTX}", "-a", "${ROLE}"]
    roles = {
        name: {
            "engine": "llamacpp",
            "model": str(tiny_models[model]),
            "command": [*command, "-t", "1"],
        }
        for name, model in (("fast", "tiny-hello"), ("coder", "tiny-toolcall"))
    }
    raw = {"roles": roles, "engines": {"log_dir": str(tmp_path), "wait_timeout_seconds": 30}}
    async with running_gateway(config_of(raw)) as gw:
        reply = await gw.openai().chat.completions.create(
            model="fast", messages=USER, max_tokens=16
        )
        assert reply.choices[0].message.content == HELLO_TEXT
        async with aiohttp.ClientSession() as session:
            async with session.get(gw.url + "/metrics") as response:
                assert response.status == 200
                text = await response.text()
    assert '{role="fast"}' in text and "llamacpp:" in text
    found = samples(text)
    assert found[("llamacpp:prompt_tokens_total", (("role", "fast"),))] > 0
    assert found[("llamacpp:tokens_predicted_total", (("role", "fast"),))] > 0
    assert found[("turnout_engine_metrics_up", (("role", "fast"),))] == 1
    # coder was never loaded: not asked, not shown.
    engines = {dict(labels).get("role") for name, labels in found if name.startswith("llamacpp:")}
    assert engines == {"fast"}
    # turnout's own metrics are still there.
    assert any(name == "turnout_engine_swaps_total" for name, _ in found)
