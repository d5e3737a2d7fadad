"""A real Prometheus scrapes a real turnout with the shipped scrape config and alert rules.

The binary is Debian's (``apt-get install -y prometheus``); without it these tests skip. The
shipped deploy/prometheus/prometheus.yml is used as it is, except for what a test must change:
the turnout job's target (a free loopback port), 1 s intervals, and only that job.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import json
import re
import shutil
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import openai
import pytest
import pytest_asyncio
import yaml
from openai.types.chat import ChatCompletionMessageParam
from prometheus_client.parser import text_string_to_metric_families

from tests.fakes.openai_upstream import FakeOpenAI
from tests.gateway_server import RunningGateway, config_of, free_port, running_gateway

DEPLOY_PROMETHEUS = Path(__file__).resolve().parent.parent / "deploy" / "prometheus"
DASHBOARD = DEPLOY_PROMETHEUS.parent / "grafana" / "dashboard.json"
BINARY = shutil.which("prometheus")
USER: list[ChatCompletionMessageParam] = [{"role": "user", "content": "ping"}]
# Labels Prometheus adds to what turnout exports (the last one from the shipped static_configs).
ADDED_LABELS = {"__name__", "job", "instance", "service"}

pytestmark = [
    pytest.mark.skipif(
        BINARY is None, reason="prometheus not installed (apt-get install -y prometheus)"
    ),
    pytest.mark.asyncio(loop_scope="module"),
]


class PrometheusAPI:
    def __init__(
        self,
        url: str,
        session: aiohttp.ClientSession,
        process: asyncio.subprocess.Process,
        log: Path,
    ) -> None:
        self.url = url
        self.session = session
        self.process = process
        self.log = log

    async def get(self, path: str, **params: str) -> Any:
        async with self.session.get(self.url + path, params=params) as response:
            body = await response.json()
        assert body["status"] == "success", body
        return body["data"]

    async def query(self, promql: str) -> list[dict[str, Any]]:
        data = await self.get("/api/v1/query", query=promql)
        result: list[dict[str, Any]] = data["result"]
        return result

    async def value(self, promql: str) -> float | None:
        result = await self.query(promql)
        return float(result[0]["value"][1]) if result else None


def scrape_config(target: str) -> dict[str, Any]:
    """The shipped prometheus.yml, pointed at one turnout on loopback, every second."""
    config: dict[str, Any] = yaml.safe_load(
        (DEPLOY_PROMETHEUS / "prometheus.yml").read_text(encoding="utf-8")
    )
    (job,) = [copy.deepcopy(j) for j in config["scrape_configs"] if j["job_name"] == "turnout"]
    job["static_configs"][0]["targets"] = [target]
    config["scrape_configs"] = [job]
    config["global"].update(scrape_interval="1s", scrape_timeout="1s", evaluation_interval="1s")
    config["rule_files"] = [str(DEPLOY_PROMETHEUS / name) for name in config["rule_files"]]
    return config


@contextlib.asynccontextmanager
async def prometheus(config: dict[str, Any], tmp_path: Path) -> AsyncIterator[PrometheusAPI]:
    assert BINARY is not None
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config), encoding="utf-8")
    address = f"127.0.0.1:{free_port()}"
    log_path = tmp_path / "prometheus.log"
    log = log_path.open("wb")
    process = await asyncio.create_subprocess_exec(
        BINARY,
        f"--config.file={tmp_path / 'prometheus.yml'}",
        f"--storage.tsdb.path={tmp_path / 'data'}",
        f"--web.listen-address={address}",
        "--log.level=warn",
        stdout=log,
        stderr=log,
    )
    try:
        async with aiohttp.ClientSession() as session:
            api = PrometheusAPI(f"http://{address}", session, process, log_path)
            await until(lambda: ready(api), "Prometheus to be ready", api)
            yield api
    finally:
        if process.returncode is None:
            process.terminate()
            try:
                await asyncio.wait_for(process.wait(), 10)
            except TimeoutError:
                process.kill()
                await process.wait()
        log.close()


async def ready(api: PrometheusAPI) -> bool:
    try:
        async with api.session.get(api.url + "/-/ready") as response:
            return response.status == 200
    except aiohttp.ClientError:
        return False


async def until(
    check: Callable[[], Awaitable[bool]], what: str, api: PrometheusAPI, within: float = 15.0
) -> None:
    deadline = time.monotonic() + within
    while not await check():
        if api.process.returncode is not None or time.monotonic() > deadline:
            log = api.log.read_text(errors="replace")[-2000:]
            pytest.fail(f"gave up waiting for {what}; prometheus log:\n{log}")
        await asyncio.sleep(0.1)


async def turnout_samples(
    gw: RunningGateway,
) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    async with aiohttp.ClientSession() as session, session.get(gw.url + "/metrics") as response:
        text = await response.text()
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


async def make_traffic(gw: RunningGateway) -> None:
    client = gw.openai()
    for _ in range(3):
        await client.chat.completions.create(model="chat", messages=USER)
    stream = await client.chat.completions.create(model="chat", messages=USER, stream=True)
    assert [chunk async for chunk in stream]
    with pytest.raises(openai.NotFoundError):
        await client.chat.completions.create(model="no-such-model", messages=USER)


@dataclass
class Scraped:
    gateway: RunningGateway
    api: PrometheusAPI
    target: str  # host:port Prometheus scrapes


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def scraped(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Scraped]:
    """One turnout that served a little traffic, and one Prometheus that has scraped it twice.

    Shared by the module's tests: Prometheus applies new scrape targets only every 5 seconds,
    so every fresh instance costs that much before its first scrape.
    """
    tmp_path = tmp_path_factory.mktemp("prometheus")
    async with FakeOpenAI() as fake:
        raw = {
            "server": {"database": str(tmp_path / "turnout.db")},
            "providers": {"up": {"kind": "openai", "base_url": fake.url, "local": True}},
            "models": [{"name": "chat", "targets": [{"provider": "up", "model": "ok"}]}],
            "routing": {"retries": 0},
        }
        async with running_gateway(config_of(raw)) as gw:
            await make_traffic(gw)
            target = gw.url.removeprefix("http://")
            async with prometheus(scrape_config(target), tmp_path) as api:

                async def two_scrapes() -> bool:
                    count = await api.value('count_over_time(up{job="turnout"}[1m])')
                    return (count or 0) >= 2  # rate() needs two samples

                async def rules_evaluated() -> bool:
                    rules = [
                        r for g in (await api.get("/api/v1/rules"))["groups"] for r in g["rules"]
                    ]
                    return bool(rules) and all(r["health"] != "unknown" for r in rules)

                await until(two_scrapes, "two scrapes of turnout", api, within=20)
                await until(rules_evaluated, "every alert rule to be evaluated", api)
                yield Scraped(gw, api, target)


async def test_prometheus_scrapes_turnout_and_stores_the_same_counters(scraped: Scraped) -> None:
    api = scraped.api
    (up,) = await api.query("up")
    assert up["metric"]["job"] == "turnout" and up["metric"]["instance"] == scraped.target
    assert up["value"][1] == "1"
    assert await api.value('sum(turnout_requests_total{route="chat",status="200"})') == 4.0
    assert await api.value('sum(turnout_requests_total{status="404"})') == 1.0

    # Every counter Prometheus stored equals what turnout itself reports (no traffic since).
    ours = await turnout_samples(scraped.gateway)
    for series in ("turnout_tokens_total", "turnout_upstream_requests_total"):
        stored = await api.query(series)
        assert stored, series
        for sample in stored:
            labels = {k: v for k, v in sample["metric"].items() if k not in ADDED_LABELS}
            key = (series, frozenset(labels.items()))
            assert float(sample["value"][1]) == ours[key], (series, labels)
    assert await api.value('turnout_time_to_first_token_seconds_count{model="chat"}') == 1.0
    assert await api.value('turnout_provider_available{provider="up"}') == 1.0
    # The static label the shipped config adds survives.
    assert (await api.query("turnout_requests_in_flight"))[0]["metric"]["service"] == "turnout"


async def test_shipped_alert_rules_load_evaluate_and_stay_quiet(scraped: Scraped) -> None:
    rules = [r for g in (await scraped.api.get("/api/v1/rules"))["groups"] for r in g["rules"]]
    shipped = yaml.safe_load((DEPLOY_PROMETHEUS / "alerts.yml").read_text(encoding="utf-8"))
    assert {r["name"] for r in rules} == {r["alert"] for g in shipped["groups"] for r in g["rules"]}
    assert all(r["health"] == "ok" for r in rules), [(r["name"], r.get("lastError")) for r in rules]
    # A healthy gateway that answered one 404 fires nothing.
    assert [r["name"] for r in rules if r["state"] != "inactive"] == []


async def test_every_dashboard_query_runs_on_real_data(scraped: Scraped) -> None:
    board = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    variables = {
        "$__rate_interval": "1m",
        "$__range": "1m",
        "$job": "turnout",
        "$instance": ".*",
        "$model": ".*",
    }
    for panel in board["panels"]:
        for t in panel.get("targets", []):
            expr = t["expr"]
            for name, value in variables.items():
                expr = expr.replace(name, value)
            assert not re.search(r"\$\w", expr), expr
            await scraped.api.query(expr)  # fails unless Prometheus answers "success"
    by_status = await scraped.api.query(
        'sum by (status) (rate(turnout_requests_total{job="turnout", instance=~".*", model=~".*"}[1m]))'
    )
    assert {s["metric"]["status"] for s in by_status} == {"200", "404"}
