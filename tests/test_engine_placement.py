"""Placing roles on GPUs: the pure decision, nvidia-smi read through a fake on PATH (or the real
one where a GPU exists), and a real llama-server started where the placement says."""

from __future__ import annotations

import asyncio
import os
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from gateway.config.engines import Role
from gateway.engines.builtin import builtin_kinds
from gateway.engines.gpus import GpuPlacer
from gateway.engines.placement import Gpu, Placement, place
from gateway.engines.resources import parse_gpus, read_gpus, read_resources
from gateway.errors import ConfigError
from tests.engines.engines import llama_server_binary
from tests.fakes.nvidia_smi import FakeGpu, calls, install
from tests.gateway_server import RunningGateway, config_of, running_gateway
from tests.test_dashboard import CHROMIUM, CHROMIUM_ARGS, open_dashboard

# Looked up before any test puts a fake first on PATH.
REAL_NVIDIA_SMI = shutil.which("nvidia-smi")

TWO = (Gpu(0, 81559, 20000), Gpu(1, 81559, 40000))


# --- the decision (pure) ------------------------------------------------------------------------


def test_a_role_that_fits_on_one_gpu_goes_to_the_tightest_fit() -> None:
    three = (*TWO, Gpu(2, 81559, 70000))
    placed = place("auto", three, 30000)
    assert placed.devices == (1,) and placed.split == ()
    # The roomiest GPU stays free for a bigger role; a small one takes the fullest that fits.
    assert place("auto", three, 10000).devices == (0,)


def test_a_role_too_big_for_any_one_gpu_is_split_over_the_fewest_by_free_memory() -> None:
    three = (*TWO, Gpu(2, 81559, 5000))
    placed = place("auto", three, 50000)
    assert placed.devices == (0, 1) and placed.split == (20000, 40000)
    assert place("auto", three, 64000).devices == (0, 1, 2)


def test_a_role_that_fits_nowhere_keeps_the_engines_default() -> None:
    placed = place("auto", TWO, 90000)
    assert placed.devices == () and "90000 MB" in placed.reason


def test_auto_has_nothing_to_choose_with_one_gpu_none_or_an_unknown_size() -> None:
    assert place("auto", (), 1000) == Placement(reason="no GPU")
    assert place("auto", TWO[:1], 1000) == Placement(reason="one GPU")
    assert place("auto", TWO, 0).devices == ()


def test_configured_gpus_win_and_all_leaves_the_engine_alone() -> None:
    assert place((3, 1), TWO, 90000).devices == (3, 1)
    assert place("all", TWO, 1000).devices == ()


def test_a_placement_restricts_cuda_in_nvidia_smi_order() -> None:
    assert Placement((1, 2)).env() == {
        "CUDA_DEVICE_ORDER": "PCI_BUS_ID",
        "CUDA_VISIBLE_DEVICES": "1,2",
    }
    assert Placement().env() == {}


def test_llama_server_gets_a_tensor_split_only_when_spread_and_not_placed_by_its_command() -> None:
    kind = builtin_kinds()["llamacpp"]
    spread = Placement((0, 1), (20000, 40000))
    assert kind.placement_args(["/opt/bin/llama-server", "-m", "x"], spread) == [
        "--tensor-split",
        "20000,40000",
    ]
    assert kind.placement_args(["llama-server", "-ts", "1,1"], spread) == []
    assert kind.placement_args(["run-llama.sh"], spread) == []
    assert kind.placement_args(["llama-server"], Placement((1,))) == []


def test_llama_server_is_always_started_with_its_metrics_endpoint() -> None:
    kind = builtin_kinds()["llamacpp"]
    assert "--metrics" in kind.command
    assert kind.command_args(["/opt/llama-server", "-m", "x"]) == ["--metrics"]
    assert kind.command_args(["llama-server", "--metrics"]) == []
    assert kind.command_args(["docker", "run", "llama"]) == []


def test_nvidia_smi_rows_are_parsed_as_the_real_tool_prints_them() -> None:
    text = "0, NVIDIA H100 80GB HBM3, 81559, 81004\n1, NVIDIA A100-SXM4-40GB, 40960, 1200\n"
    assert parse_gpus(text) == (
        Gpu(0, 81559, 81004, "NVIDIA H100 80GB HBM3"),
        Gpu(1, 40960, 1200, "NVIDIA A100-SXM4-40GB"),
    )
    assert parse_gpus("0, NVIDIA GH200, [N/A], [N/A]\n") == ()
    assert parse_gpus("No devices were found\n") == ()


# --- nvidia-smi through a fake on PATH ------------------------------------------------------------


@pytest.fixture
def two_gpus(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    directory = tmp_path / "bin"
    directory.mkdir()
    install(directory, [FakeGpu(0, 20000), FakeGpu(1, 40000)])
    monkeypatch.setenv("PATH", f"{directory}{os.pathsep}{os.environ['PATH']}")
    return directory


async def test_free_vram_is_read_per_gpu_and_summed_for_the_memory_budget(two_gpus: Path) -> None:
    resources = await read_resources()
    assert [(g.index, g.free_mb) for g in resources.gpus] == [(0, 20000), (1, 40000)]
    assert (resources.vram_free_mb, resources.vram_total_mb) == (60000, 2 * 81559)
    assert resources.free_mb == 60000


async def test_each_start_of_an_auto_role_reads_the_gpus_afresh(two_gpus: Path) -> None:
    placer = GpuPlacer(lambda role: 30000)
    role = Role(engine="llamacpp", model="/m.gguf")
    assert (await placer.place("big", role)).devices == (1,)
    install(two_gpus, [FakeGpu(0, 35000), FakeGpu(1, 1000)])  # the other role moved
    assert (await placer.place("big", role)).devices == (0,)
    assert placer.placement("big") == Placement((0,), reason="fits on GPU 0 (35000 MB free)")
    assert len(calls(two_gpus)) == 2


async def test_one_gpu_is_read_once_and_pinned_roles_are_not_read_at_all(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    install(tmp_path, [FakeGpu(0, 20000)])
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    placer = GpuPlacer(lambda role: 1000)
    auto = Role(engine="llamacpp", model="/m.gguf")
    for _ in range(3):
        assert (await placer.place("a", auto)).reason == "one GPU"
    pinned = Role(engine="llamacpp", model="/m.gguf", gpus=(0,))
    assert (await placer.place("b", pinned)).devices == (0,)
    assert len(calls(tmp_path)) == 1


async def test_a_role_whose_env_names_its_devices_is_left_alone(two_gpus: Path) -> None:
    role = Role(engine="llamacpp", model="/m.gguf", env={"CUDA_VISIBLE_DEVICES": "0"})
    placed = await GpuPlacer(lambda role: 30000).place("mine", role)
    assert placed.devices == () and "CUDA_VISIBLE_DEVICES" in placed.reason
    assert calls(two_gpus) == []


def test_gpus_config_errors_name_the_key() -> None:
    for bad in ("most", [], [0, 0], [-1]):
        raw = {"roles": {"r": {"engine": "llamacpp", "model": "/m.gguf", "gpus": bad}}}
        with pytest.raises(ConfigError, match=r"roles\.r\.gpus"):
            config_of(raw)


# --- a real llama-server placed through the gateway ---------------------------------------------


def engine_environ(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return dict(item.decode().split("=", 1) for item in raw if b"=" in item)


def engine_cmdline(pid: int) -> list[str]:
    return Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")


async def get(gw: RunningGateway, path: str) -> Any:
    async with aiohttp.ClientSession() as session, session.get(gw.url + path) as response:
        return await response.json()


async def switch(gw: RunningGateway, role: str) -> Any:
    url = f"{gw.url}/engine/switch/{role}?wait=true"
    async with aiohttp.ClientSession() as session, session.post(url) as response:
        return await response.json()


@pytest.mark.engine
async def test_roles_start_on_the_gpus_with_room_and_status_shows_free_vram_per_gpu(
    tiny_models: dict[str, Path], two_gpus: Path, tmp_path: Path
) -> None:
    binary = str(llama_server_binary())

    def role(memory_mb: int) -> dict[str, Any]:
        # memory_mb: what placement plans with before the first load measures the engine.
        command = [binary, "-m", "${MODEL}", "--port", "${PORT}", "-c", "${CTX}", "-t", "1"]
        return {
            "engine": "llamacpp",
            "model": str(tiny_models["tiny-spm"]),
            "command": command,
            "memory_mb": memory_mb,
            "start_timeout_seconds": 30,
        }

    raw = {
        "roles": {"small": role(30000), "large": role(50000), "pinned": {**role(1), "gpus": [0]}},
        "engines": {"log_dir": str(tmp_path / "logs"), "wait_timeout_seconds": 30},
    }
    async with running_gateway(config_of(raw)) as gw:
        status = await get(gw, "/engine/status")
        assert [(g["index"], g["free_mb"], g["total_mb"]) for g in status["gpus"]] == [
            (0, 20000, 81559),
            (1, 40000, 81559),
        ]
        assert status["engines"]["small"]["gpus"]["reason"] is None  # not started yet

        assert (await switch(gw, "small"))["status"] == "ready"
        status = await get(gw, "/engine/status")
        small = status["engines"]["small"]
        assert small["gpus"]["devices"] == [1] and small["gpus"]["configured"] == "auto"
        assert engine_environ(small["pid"])["CUDA_VISIBLE_DEVICES"] == "1"
        assert engine_environ(small["pid"])["CUDA_DEVICE_ORDER"] == "PCI_BUS_ID"

        assert (await switch(gw, "large"))["status"] == "ready"
        large = (await get(gw, "/engine/status"))["engines"]["large"]
        assert large["gpus"]["devices"] == [0, 1] and large["gpus"]["split"] == [20000, 40000]
        assert engine_environ(large["pid"])["CUDA_VISIBLE_DEVICES"] == "0,1"
        cmdline = engine_cmdline(large["pid"])
        assert cmdline[cmdline.index("--tensor-split") + 1] == "20000,40000"

        assert (await switch(gw, "pinned"))["status"] == "ready"
        pinned = (await get(gw, "/engine/status"))["engines"]["pinned"]
        assert engine_environ(pinned["pid"])["CUDA_VISIBLE_DEVICES"] == "0"
        # The engine's log names where it went, next to the command.
        log = (tmp_path / "logs" / "large.log").read_text()
        assert "CUDA_VISIBLE_DEVICES=0,1" in log


# --- a real GPU ----------------------------------------------------------------------------------


@pytest.mark.skipif(
    REAL_NVIDIA_SMI is None, reason="no NVIDIA GPU here (nvidia-smi is not on PATH)"
)
async def test_the_real_nvidia_smi_answers_the_query_placement_reads() -> None:
    gpus = await asyncio.wait_for(read_gpus(), 10)
    if not gpus:
        pytest.skip("nvidia-smi is installed but reports no GPU")
    assert all(0 <= g.free_mb <= g.total_mb and g.name for g in gpus)
    assert [g.index for g in gpus] == sorted(g.index for g in gpus)
    # Half the most free memory: fits on one GPU, so with several a single one is chosen.
    placed = place("auto", gpus, max(1, max(g.free_mb for g in gpus) // 2))
    if len(gpus) > 1:
        assert len(placed.devices) == 1 and placed.devices[0] in {g.index for g in gpus}
    else:
        assert placed == Placement(reason="one GPU")


@pytest.fixture
async def chromium() -> AsyncIterator[Any]:
    playwright_api = pytest.importorskip(
        "playwright.async_api", reason="playwright (Python package) not installed"
    )
    if CHROMIUM is None:
        pytest.skip("Chromium not installed: apt-get install chromium (Debian package)")
    async with playwright_api.async_playwright() as driver:
        browser = await driver.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            await browser.close()


@pytest.mark.engine
async def test_the_dashboard_shows_free_vram_per_gpu_and_where_a_role_went(
    chromium: Any, tiny_models: dict[str, Path], two_gpus: Path, tmp_path: Path
) -> None:
    command = [str(llama_server_binary()), "-m", "${MODEL}", "--port", "${PORT}", "-t", "1"]
    small = {
        "engine": "llamacpp",
        "model": str(tiny_models["tiny-spm"]),
        "command": command,
        "memory_mb": 30000,
    }
    raw = {"roles": {"small": small}, "engines": {"log_dir": str(tmp_path)}}
    errors: list[str] = []
    async with running_gateway(config_of(raw)) as gw:
        assert (await switch(gw, "small"))["status"] == "ready"
        page = await open_dashboard(chromium, gw, errors)
        chips = page.locator("#gpus .chip")
        await page.locator("[data-role=small][data-state=ready]").wait_for()
        texts = await chips.all_inner_texts()
        role_cell = await page.locator("[data-role=small] td").first.inner_text()
        await page.screenshot(path=tmp_path / "gpus.png", full_page=True)
    assert len(texts) == 2
    assert "GPU 1" in texts[1] and "39.1 GiB free of 79.6 GiB" in texts[1]
    assert "GPU 1" in role_cell
    assert errors == []
