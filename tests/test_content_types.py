"""Content types as strict clients parse them: /metrics as Prometheus 3 reads it, /ui and the
usage CSV as Go's ``mime.ParseMediaType`` would (a parameter said twice is an error there).

Litestar appends ``; charset=utf-8`` to every ``text/`` type, so a handler that named the
charset itself sent it twice (``text/plain; version=1.0.0; charset=utf-8; charset=utf-8``).
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.fakes.openai_upstream import FakeOpenAI
from tests.gateway_server import RunningGateway, config_of, running_gateway

_TOKEN = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")
# What a Prometheus 3 scrape accepts without a fallback_scrape_protocol (text formats).
_PROMETHEUS_TEXT_VERSIONS = {"0.0.4", "1.0.0"}


def media_type(value: str) -> tuple[str, dict[str, str]]:
    """``value`` parsed the way Go's mime.ParseMediaType does, failing where it fails."""
    kind, *params = value.split(";")
    main, slash, sub = kind.strip().lower().partition("/")
    assert slash and _TOKEN.match(main) and _TOKEN.match(sub), f"bad media type in {value!r}"
    parsed: dict[str, str] = {}
    for param in params:
        key, equals, raw = param.strip().partition("=")
        key = key.lower()
        assert equals and _TOKEN.match(key), f"bad parameter {param!r} in {value!r}"
        assert key not in parsed, f"mime: duplicate parameter name {key!r} in {value!r}"
        parsed[key] = raw.strip().strip('"')
    return f"{main}/{sub}", parsed


def test_the_strict_parse_refuses_the_header_turnout_used_to_send() -> None:
    with pytest.raises(AssertionError, match="duplicate parameter"):
        media_type("text/plain; version=1.0.0; charset=utf-8; charset=utf-8")


@pytest.fixture
async def gw() -> AsyncIterator[RunningGateway]:
    async with FakeOpenAI() as fake:
        raw = {
            "providers": {"up": {"kind": "openai", "base_url": fake.url, "local": True}},
            "models": [{"name": "m", "targets": [{"provider": "up", "model": "ok"}]}],
        }
        async with running_gateway(config_of(raw)) as gateway:
            yield gateway


async def fetch(gw: RunningGateway, path: str) -> tuple[str, bytes]:
    async with aiohttp.ClientSession() as session, session.get(gw.url + path) as response:
        assert response.status == 200, path
        # Every content-type header, raw: a duplicated header is as wrong as a duplicated param.
        types = response.headers.getall("content-type")
        assert len(types) == 1, types
        return types[0], await response.read()


async def test_prometheus_3_accepts_the_metrics_content_type(gw: RunningGateway) -> None:
    value, _ = await fetch(gw, "/metrics")
    kind, params = media_type(value)
    assert kind == "text/plain"
    assert params.get("version") in _PROMETHEUS_TEXT_VERSIONS, value
    assert params.get("charset", "utf-8").lower() == "utf-8"


async def test_metrics_show_the_process_and_the_interpreter(gw: RunningGateway) -> None:
    """RSS and CPU for an operator, as any Python exporter shows them."""
    _, body = await fetch(gw, "/metrics")
    samples = {
        sample.name: sample.value
        for family in text_string_to_metric_families(body.decode())
        for sample in family.samples
    }
    assert samples["process_resident_memory_bytes"] > 10 * 2**20
    assert samples["process_cpu_seconds_total"] > 0
    assert "process_open_fds" in samples and "process_start_time_seconds" in samples
    assert samples["python_info"] == 1
    assert "python_gc_objects_collected_total" in samples
    assert any(name.startswith("turnout_") for name in samples)


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("/ui", "text/html"),
        ("/ui/dashboard.js", "text/javascript"),
        ("/ui/dashboard.css", "text/css"),
        ("/v1/usage?format=csv", "text/csv"),
    ],
)
async def test_text_answers_name_their_charset_once(
    gw: RunningGateway, path: str, expected: str
) -> None:
    value, _ = await fetch(gw, path)
    kind, params = media_type(value)
    assert kind == expected
    assert params == {"charset": "utf-8"}, value
