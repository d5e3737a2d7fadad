"""Saving and restoring slots around stop and start, against a loopback server speaking llama-server's slot API."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

import aiohttp
import pytest
from aiohttp import web

from adapters.llamacpp import LlamaCppAdapter
from gateway.config import KvCache, Provider, Role
from gateway.engines import kv_cache
from gateway.engines.kv_slots import KvCacheKeeper, KvCachingDriver
from gateway.engines.process import EngineDriver, ExternalDriver
from gateway.metrics import Metrics


@dataclass
class SlotServer:
    """llama-server's /health and /slots as the real one answers them; files go to ``directory``."""

    directory: Path
    hang_on_save: bool = False
    release: asyncio.Event = field(default_factory=asyncio.Event)
    actions: list[str] = field(default_factory=list)

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/health", self._health)
        app.router.add_get("/slots", self._slots)
        app.router.add_post("/slots/{id}", self._action)
        return app

    async def _health(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def _slots(self, request: web.Request) -> web.Response:
        # Slot 1 never served a task: llama-server omits n_prompt_tokens for it.
        return web.json_response(
            [
                {"id": 0, "n_ctx": 4096, "is_processing": False, "n_prompt_tokens": 700},
                {"id": 1, "n_ctx": 4096, "is_processing": False},
            ]
        )

    async def _action(self, request: web.Request) -> web.Response:
        action, slot = request.query["action"], int(request.match_info["id"])
        filename = (await request.json())["filename"]
        self.actions.append(f"{action} {slot} {filename}")
        if action == "save":
            (self.directory / filename).write_bytes(b"k" * 1000)
            if self.hang_on_save:
                await self.release.wait()
            return web.json_response({"id_slot": slot, "n_saved": 700, "n_written": 1000})
        data = (self.directory / filename).read_bytes()
        if data == b"c" * 1000:  # llama-server aborts on some damage: the answer never comes
            assert request.transport is not None
            request.transport.close()
            await self.release.wait()
        if data != b"k" * 1000:
            return web.json_response(
                {"error": {"code": 400, "message": "Unable to restore slot", "type": "x"}},
                status=400,
            )
        return web.json_response({"id_slot": slot, "n_restored": 700, "n_read": 1000})


@dataclass
class Rig:
    server: SlotServer
    keeper: KvCacheKeeper
    driver: KvCachingDriver
    directory: Path


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[Rig]:
    keeper = KvCacheKeeper(
        KvCache(dir=str(tmp_path / "kv"), save_timeout_seconds=0.5, restore_timeout_seconds=5),
        Metrics(),
    )
    directory = keeper.role_dir("coder")
    directory.mkdir(parents=True)
    server = SlotServer(directory)
    runner = web.AppRunner(server.app())
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    base = f"http://127.0.0.1:{port}"
    role = Role(engine="external", model="m", base_url=base + "/v1", start_timeout_seconds=5)
    async with aiohttp.ClientSession() as session:
        store = LlamaCppAdapter(
            "role:coder", Provider(kind="llamacpp", base_url=base + "/v1"), session
        )
        driver = KvCachingDriver("coder", role, ExternalDriver(role, session), store, keeper)
        yield Rig(server, keeper, driver, directory)
    server.release.set()
    await runner.cleanup()


async def test_only_filled_slots_are_saved_and_restored_on_the_next_start(rig: Rig) -> None:
    await rig.driver.start()
    await rig.driver.stop()
    saved = sorted(p.name for p in rig.directory.iterdir())
    assert len(saved) == 1 and kv_cache.parse_name(saved[0]) is not None
    assert saved[0].endswith("-slot0-1000.kv")  # slot 1 holds nothing; the name records the size
    assert rig.keeper.last_save["coder"].outcome == "ok"

    await rig.driver.start()
    assert rig.server.actions[-1] == f"restore 0 {saved[0]}"
    restore = rig.keeper.last_restore["coder"]
    assert (restore.outcome, restore.tokens, restore.bytes) == ("ok", 700, 1000)
    await rig.driver.stop()


async def test_a_save_that_hangs_never_holds_up_the_stop(rig: Rig) -> None:
    rig.server.hang_on_save = True
    await rig.driver.start()
    started = time.monotonic()
    await rig.driver.stop()
    assert time.monotonic() - started < 5  # save_timeout_seconds is 0.5
    assert rig.keeper.last_save["coder"].outcome == "timeout"
    # What the engine was still writing is removed: never restored as if complete.
    assert list(rig.directory.iterdir()) == []


async def test_a_refused_restore_deletes_the_file_and_the_start_succeeds(rig: Rig) -> None:
    await rig.driver.start()
    await rig.driver.stop()
    [saved] = list(rig.directory.iterdir())
    saved.write_bytes(b"x" * 1000)  # the size it was saved with, but not its content
    await rig.driver.start()  # no exception: the engine only loses its cache
    assert rig.keeper.last_restore["coder"].outcome == "error"
    assert "Unable to restore slot" in rig.keeper.last_restore["coder"].detail
    assert not saved.exists()
    await rig.driver.stop()


async def test_a_file_cut_short_is_discarded_without_asking_the_engine(rig: Rig) -> None:
    await rig.driver.start()
    await rig.driver.stop()
    [saved] = list(rig.directory.iterdir())
    saved.write_bytes(b"k" * 400)
    await rig.driver.start()
    assert not any(a.startswith("restore") for a in rig.server.actions)
    assert not saved.exists() and "coder" not in rig.keeper.last_restore
    await rig.driver.stop()


async def test_an_engine_that_dies_on_a_file_is_restarted_without_it(rig: Rig) -> None:
    await rig.driver.start()
    await rig.driver.stop()
    [saved] = list(rig.directory.iterdir())
    saved.write_bytes(b"c" * 1000)
    await rig.driver.start()  # answered: the engine runs again, cache-less
    restore = rig.keeper.last_restore["coder"]
    assert restore.outcome == "error" and "restarted" in restore.detail
    assert not saved.exists()
    await rig.driver.stop()


@pytest.mark.parametrize(
    ("command", "extra"),
    [
        (("/opt/llama.cpp/bin/llama-server", "-m", "${MODEL}"), "slot dir"),
        (("python", "-m", "http.server", "${PORT}"), None),  # not llama-server: left alone
        (("llama-server", "--slot-save-path", "/mine"), None),  # the user's own slot directory
    ],
)
async def test_only_a_llama_server_command_gets_a_slot_directory(
    tmp_path: Path, command: tuple[str, ...], extra: str | None
) -> None:
    keeper = KvCacheKeeper(KvCache(dir=str(tmp_path)), Metrics())
    role = Role(engine="llamacpp", model="m.gguf", command=command)
    given: list[Sequence[str]] = []

    def make(args: Sequence[str]) -> EngineDriver:
        given.append(args)
        return ExternalDriver(role, cast(aiohttp.ClientSession, None))

    async with aiohttp.ClientSession() as session:
        store = LlamaCppAdapter(
            "role:r", Provider(kind="llamacpp", base_url="http://h/v1"), session
        )
        driver = keeper.wrap("r", role, store, make)
    if extra is None:
        assert given == [()] and not isinstance(driver, KvCachingDriver)
        assert keeper.describe("r") == {"enabled": False}
    else:
        assert given == [["--slot-save-path", str(tmp_path / "r")]]
        assert isinstance(driver, KvCachingDriver) and keeper.describe("r")["enabled"] is True
