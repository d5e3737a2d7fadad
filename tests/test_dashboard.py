"""The dashboard at /ui and its feeds (/v1/requests/*), up to headless Chromium driving a real turnout.

Browser tests use Debian's ``chromium`` through playwright's Python package (its bundled driver,
never its browser downloads) and skip when either is missing. Screenshots land in the test's
tmp dir; the engine scenario also copies its busiest one to /tmp/turnout-dashboard.png.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import signal
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any

import aiohttp
import openai
import psutil
import pytest
from openai.types.chat import ChatCompletionMessageParam

from gateway.api.events import bucket_width
from tests.engines.engines import HELLO_TEXT
from tests.fakes.openai_upstream import FakeOpenAI
from tests.gateway_server import RunningGateway, config_of, free_port, running_gateway
from tests.test_engines import role
from tests.test_peers import peer_process

CHROMIUM = shutil.which("chromium")  # Debian's package: /usr/bin/chromium
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SHOWCASE = Path("/tmp/turnout-dashboard.png")
STATIC = Path(__file__).resolve().parents[1] / "gateway" / "ui" / "static"
USER: list[ChatCompletionMessageParam] = [{"role": "user", "content": "hi"}]


@pytest.fixture
async def fake() -> AsyncIterator[FakeOpenAI]:
    async with FakeOpenAI(stream_chunks=4) as upstream:
        yield upstream


def with_fake(fake: FakeOpenAI, **sections: Any) -> AbstractAsyncContextManager[RunningGateway]:
    raw = {
        "providers": {"cloud": {"kind": "openai", "base_url": fake.url, "local": True}},
        "models": [
            {"name": "chat", "targets": [{"provider": "cloud", "model": "ok"}]},
            {"name": "other", "targets": [{"provider": "cloud", "model": "ok"}]},
        ],
        "routing": {"retries": 0},
        "usage": {"flush_interval_seconds": 0.05},
        **sections,
    }
    return running_gateway(config_of(raw))


async def get(gw: RunningGateway, path: str, key: str | None = None) -> tuple[int, Any, Any]:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    async with (
        aiohttp.ClientSession() as session,
        session.get(gw.url + path, headers=headers) as response,
    ):
        body = await response.read()
        is_json = response.content_type == "application/json"
        return response.status, response.headers, (await response.json() if is_json else body)


async def ask(
    gw: RunningGateway, model: str, agent: str, key: str = "unused", **options: Any
) -> None:
    await gw.openai(api_key=key).chat.completions.create(
        model=model, messages=USER, max_tokens=16, extra_headers={"X-Agent-Id": agent}, **options
    )


# --- the page and its files ---------------------------------------------------------------------


async def test_ui_serves_the_page_and_its_files_from_the_package(fake: FakeOpenAI) -> None:
    async with with_fake(fake) as gw:
        status, headers, page = await get(gw, "/ui")
        assert status == 200 and headers["content-type"].startswith("text/html")
        assert "script-src 'self'" in headers["content-security-policy"]
        referenced = re.findall(rb'(?:src|href)="/ui/([^"]+)"', page)
        imported = re.findall(rb'from "\./([^"]+)"', (STATIC / "dashboard.js").read_bytes())
        assert {b"dashboard.js", b"dashboard.css", b"favicon.svg"} <= set(referenced)
        for name in {*referenced, *imported}:
            status, headers, _ = await get(gw, "/ui/" + name.decode())
            assert status == 200, name
        _, headers, _ = await get(gw, "/ui/dashboard.js")
        assert headers["content-type"].startswith("text/javascript")
        for bad in ("/ui/nope.js", "/ui/__init__.py", "/ui/..%2Fdashboard.py", "/ui/.hidden.js"):
            status, _, _ = await get(gw, bad)
            assert status == 404, bad


def test_the_dashboard_loads_nothing_from_elsewhere() -> None:
    for path in STATIC.iterdir():
        text = path.read_text()
        text = text.replace('xmlns="http://www.w3.org/2000/svg"', "")
        text = text.replace('"http://www.w3.org/2000/svg"', "")
        assert not re.search(r"https?://|//cdn|@import", text), path.name


def test_static_files_ship_as_package_data() -> None:
    pyproject = (STATIC.parents[2] / "pyproject.toml").read_text()
    assert '"gateway.ui" = ["static/*"]' in pyproject


# --- the feeds ---------------------------------------------------------------------------------


async def test_recent_requests_come_newest_first_after_a_cursor(fake: FakeOpenAI) -> None:
    limits = {"models": {"other": {"rpm": 1}}}
    async with with_fake(fake, limits=limits) as gw:
        await ask(gw, "chat", "alice")
        await ask(gw, "chat", "bob", stream=True)
        await ask(gw, "other", "bob")
        with pytest.raises(openai.RateLimitError):
            await ask(gw, "other", "bob")
        _, _, first = await get(gw, "/v1/requests/recent")
        _, _, nothing_new = await get(gw, f"/v1/requests/recent?after={first['cursor']}")
        await ask(gw, "chat", "carol")
        _, _, one_new = await get(gw, f"/v1/requests/recent?after={first['cursor']}")
        _, _, limited = await get(gw, "/v1/requests/recent?limit=2")
    assert first["cursor"] == 4 and first["usage_log"] is True and first["in_flight"] == 0
    rows = first["data"]
    assert [(r["seq"], r["agent_id"], r["model"], r["status"]) for r in rows] == [
        (4, "bob", "other", 429),
        (3, "bob", "other", 200),
        (2, "bob", "chat", 200),
        (1, "alice", "chat", 200),
    ]
    assert rows[2]["stream"] is True and rows[3]["completion_tokens"] > 0
    assert first["rejections"] == [{"scope": "model", "limit": "requests", "count": 1}]
    assert nothing_new["data"] == [] and nothing_new["cursor"] == 4
    assert [r["agent_id"] for r in one_new["data"]] == ["carol"]
    assert [r["seq"] for r in limited["data"]] == [5, 4]


async def test_series_buckets_usage_over_time_per_model_and_agent(fake: FakeOpenAI) -> None:
    async with with_fake(fake) as gw:
        for agent in ("alice", "alice", "bob"):
            await ask(gw, "chat", agent)
        await ask(gw, "other", "bob")
        await asyncio.sleep(0.3)  # the usage writer flushes every 50 ms here
        _, _, by_model = await get(gw, "/v1/requests/series?since=10m")
        _, _, by_agent = await get(gw, "/v1/requests/series?since=10m&by=agent&bucket=60")
        _, _, overall = await get(gw, "/v1/requests/series?since=10m&by=none")
        status, _, wrong = await get(gw, "/v1/requests/series?by=day")
        backwards, _, _ = await get(gw, "/v1/requests/series?since=1h&until=2h")
    assert by_model["keys"] == ["chat", "other"] and by_model["bucket_seconds"] == 10
    assert sum(p["requests"] for p in by_model["data"] if p["key"] == "chat") == 3
    assert by_agent["keys"] == ["alice", "bob"] and by_agent["bucket_seconds"] == 60
    point = next(p for p in by_agent["data"] if p["key"] == "alice")
    assert point["t"] % 60 == 0 and point["requests"] >= 1 and point["completion_tokens"] > 0
    assert point["latency_ms_p50"] <= point["latency_ms_p95"] <= point["latency_ms_p99"]
    assert {p["key"] for p in overall["data"]} == {"all"}
    assert sum(p["requests"] for p in overall["data"]) == 4
    totals = by_agent["totals"]
    assert totals["requests"] == 4 and totals["errors"] == totals["rate_limited"] == 0
    assert totals["completion_tokens"] == sum(p["completion_tokens"] for p in by_agent["data"])
    assert 0 < totals["latency_ms_p50"] <= totals["latency_ms_p95"]
    assert status == 400 and wrong["error"]["param"] == "by"
    assert backwards == 400


def test_buckets_snap_to_round_widths() -> None:
    assert bucket_width(900, None) == 15
    assert bucket_width(3600, None) == 60
    assert bucket_width(86400, None) == 1800
    assert bucket_width(3600, 7) == 10
    assert bucket_width(90 * 86400, None) == 86400 * 2


async def test_the_feeds_need_the_admin_key_but_the_page_does_not(fake: FakeOpenAI) -> None:
    async with with_fake(fake, auth={"admin_key": "sk-admin-2"}) as gw:
        page, _, _ = await get(gw, "/ui")
        without, _, body = await get(gw, "/v1/requests/recent")
        wrong, _, _ = await get(gw, "/v1/requests/series", key="nope")
        with_key, _, _ = await get(gw, "/v1/requests/recent", key="sk-admin-2")
    assert page == 200 and without == 401 and wrong == 403 and with_key == 200
    assert "admin key" in body["error"]["message"]


# --- in a real browser -----------------------------------------------------------------------------


@pytest.fixture
async def browser() -> AsyncIterator[Any]:
    playwright_api = pytest.importorskip(
        "playwright.async_api", reason="playwright (Python package) not installed"
    )
    if CHROMIUM is None:
        pytest.skip("Chromium not installed: apt-get install chromium (Debian package)")
    async with playwright_api.async_playwright() as driver:
        chromium = await driver.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            await chromium.close()


def exactly(text: str) -> re.Pattern[str]:
    return re.compile(f"^{re.escape(text)}$")


async def open_dashboard(browser: Any, gw: RunningGateway, errors: list[str]) -> Any:
    page = await browser.new_page(viewport={"width": 1440, "height": 1000})
    page.set_default_timeout(20000)
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    await page.goto(gw.url + "/ui")
    return page


async def test_dashboard_asks_for_the_admin_key_then_shows_the_gateway(
    browser: Any, fake: FakeOpenAI, tmp_path: Path
) -> None:
    errors: list[str] = []
    async with with_fake(fake, auth={"admin_key": "sk-admin-3"}) as gw:
        await ask(gw, "chat", "alice", key="sk-admin-3")
        page = await open_dashboard(browser, gw, errors)
        dialog = page.locator("#key-dialog")
        await dialog.wait_for(state="visible")
        assert "admin key" in await page.locator("#key-reason").inner_text()
        await page.screenshot(path=tmp_path / "key-dialog.png")
        await page.fill("#key-input", "sk-admin-3")
        await page.click("#key-ok")
        await page.locator("#providers .chip").first.wait_for()
        await page.locator("#recent tbody tr").first.wait_for()
        stored = await page.evaluate("sessionStorage.getItem('turnout.adminKey')")
        cells = await page.locator("#recent tbody tr").first.locator("td").all_inner_texts()
        await page.screenshot(path=tmp_path / "with-key.png", full_page=True)
    assert stored == "sk-admin-3"
    assert "alice" in cells and "chat" in cells and "200" in cells
    # 401s before the key are the browser's console noise, nothing else may fail.
    assert [e for e in errors if "401" not in e] == []


@pytest.mark.engine
async def test_dashboard_switches_and_unloads_real_engines_and_charts_traffic(
    browser: Any, tiny_models: dict[str, Path], tmp_path: Path
) -> None:
    raw = {
        "roles": {
            "fast": role(tiny_models["tiny-hello"]),
            "coder": role(tiny_models["tiny-toolcall"]),
        },
        "engines": {"max_wait_seconds": 2, "wait_timeout_seconds": 60, "log_dir": str(tmp_path)},
        "routing": {"retries": 0},
        "limits": {"models": {"fast": {"rpm": 3}}},
        "usage": {"flush_interval_seconds": 0.05},
    }
    errors: list[str] = []
    async with running_gateway(config_of(raw)) as gw:
        page = await open_dashboard(browser, gw, errors)
        fast = page.locator("[data-role=fast]")
        coder = page.locator("[data-role=coder]")
        await page.locator("[data-role=fast][data-state=stopped]").wait_for()
        await page.screenshot(path=tmp_path / "1-idle.png", full_page=True)

        await fast.locator("[data-action=switch]").click()
        await page.locator("[data-role=fast][data-state=ready]").wait_for(timeout=40000)
        assert "ready" in await fast.locator(".badge").inner_text()
        # The row turns with the engine event; the pill with the status read that follows it.
        await page.locator("#connection .label", has_text="ready · fast").wait_for()
        assert await page.locator("#connection .label").inner_text() == "ready · fast"
        await page.screenshot(path=tmp_path / "2-fast-ready.png", full_page=True)

        reply = await gw.openai().chat.completions.create(model="fast", messages=USER)
        assert reply.choices[0].message.content == HELLO_TEXT
        await ask(gw, "fast", "alice", stream=True)
        await ask(gw, "fast", "bob")
        with pytest.raises(openai.RateLimitError):
            await ask(gw, "fast", "bob")
        await page.locator("#recent tbody tr").nth(3).wait_for()
        await asyncio.sleep(0.3)  # the usage log has the rows too
        await page.select_option("#range", "15m")  # redraws the charts at once
        await page.locator("[data-kpi=limited] .kpi-value", has_text=exactly("1")).wait_for()
        assert await page.locator("#chart-requests rect.bar").count() >= 1
        assert await page.locator("#chart-tokens rect.bar").count() >= 1
        assert await page.locator("#chart-latency circle.point").count() >= 1
        assert await page.locator("#chart-limits rect.bar").count() == 1
        assert await page.locator("[data-kpi=requests] .kpi-value").inner_text() == "4"
        # The same prompt three times: llama-server served the repeats from its prompt cache.
        assert (await page.locator("[data-kpi=cache] .kpi-value").inner_text()).endswith("%")
        assert "cached" in await page.locator("[data-kpi=cache] .kpi-sub").inner_text()
        assert await page.locator("#recent tr[data-status='429']").count() == 1
        assert "model" in await page.locator("#rejections").inner_text()
        await page.click("#group-by [data-by=agent]")
        await page.locator("#legend-requests", has_text="alice").wait_for()
        bar = await page.locator("#chart-requests rect.bar").last.bounding_box()
        await page.mouse.move(bar["x"] + bar["width"] / 2, bar["y"] + 2)  # the chart's tooltip
        await page.screenshot(path=tmp_path / "3-traffic.png", full_page=True)
        shutil.copyfile(tmp_path / "3-traffic.png", SHOWCASE)

        await coder.locator("[data-action=switch]").click()
        await page.locator("[data-role=coder][data-state=ready]").wait_for(timeout=40000)
        await page.locator("[data-role=fast][data-state=stopped]").wait_for()
        await coder.locator("[data-action=unload]").click()
        await page.locator("[data-role=coder][data-state=stopped]").wait_for()
        await page.locator("#connection .label", has_text=exactly("idle")).wait_for()
        await page.screenshot(path=tmp_path / "4-unloaded.png", full_page=True)
        status = (await get(gw, "/engine/status"))[2]
    assert status["loaded"] == [] and status["engines"]["coder"]["state"] == "stopped"
    assert errors == []
    for name in ("1-idle", "2-fast-ready", "3-traffic", "4-unloaded"):
        assert (tmp_path / f"{name}.png").stat().st_size > 10000


# --- issue 16: upstream 429s and colours past the palette ------------------------------------------


async def test_an_upstream_429_passed_through_is_not_counted_as_a_turnout_refusal(
    browser: Any, fake: FakeOpenAI, tmp_path: Path
) -> None:
    raw = {
        "providers": {"cloud": {"kind": "openai", "base_url": fake.url, "local": True}},
        "models": [{"name": "busy", "targets": [{"provider": "cloud", "model": "error-429"}]}],
        "routing": {"retries": 0},
        "usage": {"flush_interval_seconds": 0.05},
    }
    errors: list[str] = []
    async with running_gateway(config_of(raw)) as gw:
        with pytest.raises(openai.RateLimitError):
            await ask(gw, "busy", "alice")
        await asyncio.sleep(0.3)  # the usage writer flushes every 50 ms here
        _, _, recent = await get(gw, "/v1/requests/recent")
        _, _, series = await get(gw, "/v1/requests/series?since=10m")
        page = await open_dashboard(browser, gw, errors)
        row = page.locator("#recent tr[data-status='429']")
        await row.wait_for()
        badge = await row.locator(".status").inner_text()
        await page.locator("[data-kpi=requests] .kpi-value", has_text=exactly("1")).wait_for()
        limited = await page.locator("[data-kpi=limited] .kpi-value").inner_text()
        caption = await page.locator("#rejections").inner_text()
        await page.screenshot(path=tmp_path / "upstream-429.png", full_page=True)
    assert recent["data"][0]["provider"] == "cloud" and recent["rejections"] == []
    assert series["totals"]["errors"] == 1 and series["totals"]["rate_limited"] == 0
    # The table and the caption agree: the upstream said 429, turnout refused nothing.
    assert badge == "429 upstream"
    assert limited == "0" and "No request has been refused" in caption
    assert [e for e in errors if "429" not in e] == []


async def test_a_turnout_refusal_is_still_shown_as_limited(browser: Any, fake: FakeOpenAI) -> None:
    errors: list[str] = []
    async with with_fake(fake, limits={"models": {"chat": {"rpm": 1}}}) as gw:
        await ask(gw, "chat", "alice")
        with pytest.raises(openai.RateLimitError):
            await ask(gw, "chat", "alice")
        page = await open_dashboard(browser, gw, errors)
        row = page.locator("#recent tr[data-status='429']")
        await row.wait_for()
        badge = await row.locator(".status").inner_text()
        await page.locator("[data-kpi=limited] .kpi-value", has_text=exactly("1")).wait_for()
    assert badge == "429 limited" and errors == []


async def test_chart_colours_stay_distinct_past_the_palette(browser: Any, fake: FakeOpenAI) -> None:
    names = [f"m{i:02}" for i in range(14)]
    raw = {
        "providers": {"cloud": {"kind": "openai", "base_url": fake.url, "local": True}},
        "models": [{"name": n, "targets": [{"provider": "cloud", "model": "ok"}]} for n in names],
        "usage": {"flush_interval_seconds": 0.05},
    }
    errors: list[str] = []
    async with running_gateway(config_of(raw)) as gw:
        for name in names:
            await ask(gw, name, "alice")
        await asyncio.sleep(0.3)
        page = await open_dashboard(browser, gw, errors)
        legend = page.locator("#legend-requests .legend-item")
        await legend.nth(len(names) - 1).wait_for()
        colours = await page.eval_on_selector_all(
            "#legend-requests .swatch", "nodes => nodes.map(n => getComputedStyle(n).borderColor)"
        )
    assert len(colours) == len(names)
    assert len(set(colours)) == len(names), colours
    assert errors == []


# --- issue 14 item 4: engine states from /engine/events ------------------------------------------


@pytest.mark.engine
async def test_dashboard_shows_a_role_change_from_engine_events_while_polling_is_down(
    browser: Any, tiny_models: dict[str, Path], tmp_path: Path
) -> None:
    raw = {
        "roles": {"fast": role(tiny_models["tiny-hello"])},
        "engines": {"wait_timeout_seconds": 60, "log_dir": str(tmp_path)},
    }
    errors: list[str] = []
    async with running_gateway(config_of(raw)) as gw:
        page = await open_dashboard(browser, gw, errors)
        await page.locator("[data-role=fast][data-state=stopped]").wait_for()
        # The page subscribed: the gateway has a reader of its engine events.
        events = gw.app.state.gateway.supervisor.events
        for _ in range(200):
            if events.readers:
                break
            await asyncio.sleep(0.05)
        assert events.readers == 1
        # From now on every /engine/status poll fails: only the event stream can tell the page.
        await page.route("**/engine/status", lambda route: route.abort())
        status, _ = await post_json(gw, "/engine/switch/fast?wait=true")
        assert status == 200
        ready = page.locator("[data-role=fast][data-state=ready]")
        await ready.wait_for(timeout=20000)
        assert "ready" in await ready.locator(".badge").inner_text()
        status, _ = await post_json(gw, "/engine/unload?role=fast")
        await page.locator("[data-role=fast][data-state=stopped]").wait_for(timeout=20000)
    assert [e for e in errors if "ERR_FAILED" not in e] == []


async def post_json(gw: RunningGateway, path: str) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as session, session.post(gw.url + path) as response:
        return response.status, await response.json()


# --- issue 17 item 2: the whole fleet -------------------------------------------------------------


@pytest.mark.engine
async def test_dashboard_shows_a_peers_role_loading_then_the_peer_going_down(
    browser: Any, tiny_models: dict[str, Path], tmp_path: Path
) -> None:
    peer_raw = {"roles": {"fast": role(tiny_models["tiny-hello"])}, "engines": {}}
    gone = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    errors: list[str] = []
    # The box in a process of its own, so that it can go down the way a machine does.
    async with peer_process(peer_raw, tmp_path, "box") as (box_url, box_process):
        front_raw = {
            "routing": {"retries": 0},
            "peers": {
                name: {"url": url, "roles": ["fast"], "poll_seconds": 0.5}
                for name, url in {"box": box_url, "gone": gone}.items()
            },
        }
        async with running_gateway(config_of(front_raw)) as front:
            page = await open_dashboard(browser, front, errors)
            await page.locator("[data-peer=box][data-role=fast][data-state=stopped]").wait_for()
            assert await page.locator("#fleet-card").is_visible()
            box_row = page.locator("[data-peer=box][data-role=fast]")
            assert await box_row.locator("[data-reachable=yes]").count() == 1
            assert await box_row.locator("[data-queue]").inner_text() == "0"
            down = page.locator("[data-peer=gone]")
            await down.locator("[data-reachable=no]").wait_for()
            assert await down.get_attribute("data-state") == "unknown"
            assert "connect" in (await down.locator(".engine-error").inner_text()).lower()
            summary = page.locator("#fleet-summary")
            assert await summary.inner_text() == "1 of 2 peers reachable"

            # A swap on the box: the front learns it from the box's events, the page from
            # the front's status.
            async with aiohttp.ClientSession() as session:
                response = await session.post(box_url + "/engine/switch/fast?wait=true")
                assert response.status == 200
                response.release()
            ready = page.locator("[data-peer=box][data-role=fast][data-state=ready]")
            await ready.wait_for(timeout=20000)
            assert "ready" in await ready.locator(".badge").inner_text()
            await page.screenshot(path=tmp_path / "fleet.png", full_page=True)

            # The box goes down, its engine with it: the row says so, and no longer shows its
            # last state as current.
            engines = psutil.Process(box_process.pid).children()
            os.killpg(box_process.pid, signal.SIGKILL)
            for engine in engines:
                with contextlib.suppress(psutil.NoSuchProcess):
                    engine.kill()
            await page.locator("[data-peer=box] [data-reachable=no]").wait_for()
            await page.locator("[data-peer=box][data-state=unknown]").wait_for()
            title = await box_row.locator(".badge").get_attribute("title")
            await summary.filter(has_text=exactly("0 of 2 peers reachable")).wait_for()
    assert title == "last seen ready"
    assert errors == []


async def test_the_fleet_panel_stays_hidden_without_peers(browser: Any, fake: FakeOpenAI) -> None:
    errors: list[str] = []
    async with with_fake(fake) as gw:
        page = await open_dashboard(browser, gw, errors)
        await page.locator("#providers .chip").first.wait_for()
        assert await page.locator("#fleet-card").is_hidden()
    assert errors == []
