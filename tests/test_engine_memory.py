"""Memory as the scheduling budget: estimates from GGUF files, need precedence, eviction choice.

Pure functions first (``memory.py``, ``gguf.py`` on a real GGUF file written here), then the
scheduler choosing victims by memory across groups, then the owner loop against fake drivers
on a machine whose free memory follows what is loaded.
"""

from __future__ import annotations

import asyncio
import os
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from gguf import GGUFWriter

from gateway.config import Engines, Group, Role
from gateway.engines.gguf import ModelShape, file_size_and_shape, read_shape
from gateway.engines.memory import (
    OVERHEAD_MB,
    Candidate,
    Footprint,
    cheapest_evictions,
    estimate_mb,
    need_mb,
)
from gateway.engines.resources import Resources, process_tree_rss_mb
from gateway.engines.scheduler import plan, victims
from gateway.engines.sizing import measure
from gateway.engines.states import EngineState
from gateway.engines.supervisor import Supervisor
from gateway.metrics import Metrics
from tests.test_engine_scheduler import NOW, FakeDriver, snapshot, status

S = EngineState


def write_gguf(path: Path, layers: int = 4, heads: int = 8, kv_heads: int = 2) -> None:
    writer = GGUFWriter(str(path), "llama")
    writer.add_block_count(layers)
    writer.add_embedding_length(heads * 32)
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv_heads)
    writer.add_token_list([b"a", b"b", b"c"])  # an array of strings, skipped by the reader
    writer.add_tensor("token_embd.weight", np.zeros((16, 64), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


# --- estimates ----------------------------------------------------------------------------------


def test_the_kv_cache_size_is_read_from_the_gguf_header(tmp_path: Path) -> None:
    model = tmp_path / "m.gguf"
    write_gguf(model)
    shape = read_shape(model)
    assert shape == ModelShape(layers=4, kv_heads=2, key_length=32, value_length=32)
    # K and V, f16: 4 layers x 2 heads x (32 + 32) x 2 bytes per token.
    assert shape.kv_bytes_per_token == 1024
    found = file_size_and_shape(model)
    assert found is not None and found[0] == model.stat().st_size and found[1] == shape


def test_files_that_are_not_gguf_models_have_no_estimate(tmp_path: Path) -> None:
    text = tmp_path / "notes.gguf"
    text.write_text("not a model")
    assert read_shape(text) is None
    assert file_size_and_shape(tmp_path / "missing.gguf") is None
    assert file_size_and_shape("qwen2.5:7b") is None  # an Ollama name, not a file


def test_a_split_model_weighs_all_its_parts(tmp_path: Path) -> None:
    first = tmp_path / "big-00001-of-00002.gguf"
    write_gguf(first)
    (tmp_path / "big-00002-of-00002.gguf").write_bytes(b"\0" * 2**20)
    found = file_size_and_shape(first)
    assert found is not None and found[0] == first.stat().st_size + 2**20


def test_the_estimate_is_weights_plus_kv_cache_for_the_context_plus_overhead() -> None:
    shape = ModelShape(layers=32, kv_heads=8, key_length=128, value_length=128)
    # 4 GiB of weights, 32768 tokens x 128 KiB of cache = 4 GiB.
    assert estimate_mb(4 * 2**30, shape, 32768) == 4096 + 4096 + OVERHEAD_MB
    assert estimate_mb(2**20, None, 4096) == 1 + OVERHEAD_MB


def test_measured_beats_configured_beats_estimated() -> None:
    assert need_mb(configured_mb=0, estimated_mb=900, measured_mb=0) == 900
    assert need_mb(configured_mb=2000, estimated_mb=900, measured_mb=0) == 2000
    assert need_mb(configured_mb=2000, estimated_mb=900, measured_mb=1200) == 1200
    assert Footprint(load_seconds=None).reload_seconds(4000) == pytest.approx(4.0)
    assert Footprint(measured_mb=10, load_seconds=0.7).reload_seconds(4000) == 0.7


# --- which roles to unload ----------------------------------------------------------------------


def test_eviction_frees_enough_at_the_least_reload_cost() -> None:
    candidates = [
        Candidate("big-slow", 4000, reload_seconds=9.0),
        Candidate("big-quick", 4000, reload_seconds=2.0),
        Candidate("small", 2000, reload_seconds=1.5),
        Candidate("small2", 2000, reload_seconds=1.6),
    ]
    # One 4 GB role that reloads in 2 s beats two 2 GB roles that take 3.1 s together.
    assert cheapest_evictions(3000, candidates) == ["big-quick"]
    assert cheapest_evictions(2000, candidates) == ["small"]
    assert cheapest_evictions(6000, candidates) == ["big-quick", "small"]
    assert cheapest_evictions(0, candidates) == []
    assert cheapest_evictions(20_000, candidates) is None


def test_eviction_drains_a_busy_role_only_when_idle_ones_cannot_free_enough() -> None:
    busy = Candidate("busy", 8000, reload_seconds=0.1, busy=True)
    idle = [Candidate("a", 2000, 5.0), Candidate("b", 2000, 5.0)]
    assert cheapest_evictions(3000, [busy, *idle]) == ["a", "b"]
    assert cheapest_evictions(6000, [busy, *idle]) == ["busy"]


def test_many_candidates_are_chosen_greedily() -> None:
    candidates = [Candidate(f"r{i}", 1000, reload_seconds=float(i)) for i in range(20)]
    assert cheapest_evictions(2500, candidates) == ["r0", "r1", "r2"]


# --- the scheduler across groups ----------------------------------------------------------------


def three_roles(**extra: Any) -> dict[str, Role]:
    return {n: Role(engine="llamacpp", model=f"/{n}.gguf", **extra) for n in ("a", "b", "c")}


def separate_groups(**persistent: tuple[str, ...]) -> Engines:
    return Engines(
        max_wait_seconds=10,
        groups={n: Group(members=(n,), persistent=persistent.get(n, ())) for n in ("a", "b", "c")},
    )


def footprints(mb: dict[str, int], seconds: dict[str, float]) -> dict[str, Footprint]:
    return {n: Footprint(measured_mb=mb[n], load_seconds=seconds.get(n)) for n in mb}


def test_a_role_that_needs_memory_unloads_the_cheapest_role_to_reload_in_any_group() -> None:
    loaded = {"a": status("a", S.READY), "b": status("b", S.READY)}
    snap = snapshot(
        three_roles(),
        loaded,
        (("c", 0.1),),
        engines=separate_groups(),
        free_mb=lambda: 1000,
        footprints=footprints({"a": 3000, "b": 3000, "c": 3500}, {"a": 8.0, "b": 1.5}),
    )
    decided = plan(snap, NOW)
    assert decided.stops == ["b"] and decided.draining == {"b"}
    assert decided.starts == []  # c starts once b's memory is back
    stopping = snapshot(
        three_roles(),
        {"a": status("a", S.READY), "b": status("b", S.STOPPING)},
        (("c", 0.2),),
        engines=separate_groups(),
        busy=frozenset({"b"}),
        draining=frozenset({"b"}),
        free_mb=lambda: 1000,
        footprints=footprints({"a": 3000, "b": 3000, "c": 3500}, {"a": 8.0, "b": 1.5}),
    )
    decided = plan(stopping, NOW)
    # Waiting for b's memory: no second victim, no fallback, no start yet.
    assert decided.stops == [] and decided.starts == [] and decided.redirects == {}


def test_memory_eviction_never_stops_a_role_in_flight_or_a_persistent_one() -> None:
    loaded = {"a": status("a", S.READY), "b": status("b", S.READY, inflight=1)}

    def waiting(seconds: float) -> Any:
        return snapshot(
            three_roles(),
            loaded,
            (("c", seconds),),
            engines=separate_groups(a=("a",)),
            free_mb=lambda: 1000,
            footprints=footprints({"a": 3000, "b": 3000, "c": 3500}, {"b": 1.0}),
        )

    # a is persistent; b has a request in flight: b's work goes first ...
    decided = plan(waiting(0.1), NOW)
    assert decided.stops == [] and decided.starts == [] and decided.draining == set()
    # ... until c has waited max_wait_seconds: then b drains (no new requests), still not stopped.
    decided = plan(waiting(11.0), NOW)
    assert decided.stops == [] and decided.starts == [] and decided.draining == {"b"}


def test_a_role_that_cannot_fit_even_alone_falls_back_at_once() -> None:
    all_roles = three_roles() | {
        "huge": Role(engine="llamacpp", model="/huge.gguf", memory_mb=50_000, fallback=("c",))
    }
    snap = snapshot(
        all_roles,
        {"a": status("a", S.READY)},
        (("huge", 0.0),),
        free_mb=lambda: 4000,
        footprints=footprints({"a": 3000, "b": 0, "c": 1000}, {}),
    )
    decided = plan(snap, NOW)
    reason = "role huge needs 50000 MB, 7000 MB available"
    assert decided.fallbacks == [(reason, "c")]
    assert decided.redirects == {0: ("c", f"{reason}; served by c")}


def test_a_memory_budget_counts_what_the_loaded_roles_hold() -> None:
    # The machine has plenty free; engines.memory_budget_mb says only 7000 MB are ours.
    budget = Engines(max_wait_seconds=10, memory_budget_mb=7000, groups=separate_groups().groups)
    snap = snapshot(
        three_roles(),
        {"a": status("a", S.READY), "b": status("b", S.READY)},
        (("c", 0.1),),
        engines=budget,
        free_mb=lambda: 100_000,
        footprints=footprints({"a": 3000, "b": 3000, "c": 3500}, {"a": 8.0, "b": 1.5}),
    )
    decided = plan(snap, NOW)
    # 1000 MB left of the budget: b frees enough at the least reload cost.
    assert decided.stops == ["b"] and decided.starts == []
    roomy = snapshot(
        three_roles(),
        {"a": status("a", S.READY)},
        (("c", 0.1),),
        engines=budget,
        free_mb=lambda: 100_000,
        footprints=footprints({"a": 3000, "b": 3000, "c": 3500}, {}),
    )
    assert plan(roomy, NOW).starts == ["c"]


def sleeping_b(host: bool, free_mb: int, budget: int = 0) -> Any:
    """a ready, b asleep (vLLM level 1: its 3000 MB of weights in host RAM), c queued."""
    engines = Engines(max_wait_seconds=10, memory_budget_mb=budget, groups=separate_groups().groups)
    return snapshot(
        three_roles(),
        {"a": status("a", S.READY), "b": status("b", S.SLEEPING)},
        (("c", 0.1),),
        engines=engines,
        free_mb=lambda: free_mb,
        footprints=footprints({"a": 3000, "b": 3000, "c": 3500}, {"a": 1.0, "b": 2.0}),
        sleepers=frozenset({"b"}),
        on_host=lambda: host,
    )


def test_a_sleeping_role_holds_its_host_ram_in_the_budget() -> None:
    # Budget 10000: a (3000) and sleeping b (3000, in RAM) leave 4000, enough for c.
    assert plan(sleeping_b(host=True, free_mb=100_000, budget=10_000), NOW).starts == ["c"]
    # Budget 8000: 2000 left, as b's RAM is taken. Stopping b costs a 2 s cold start later,
    # stopping a a 1 s reload: a goes.
    decided = plan(sleeping_b(host=True, free_mb=100_000, budget=8000), NOW)
    assert decided.stops == ["a"] and decided.sleeps == [] and decided.starts == []


def test_a_sleeping_role_is_stopped_for_good_when_its_host_ram_is_needed() -> None:
    # What the machine shows free already leaves out b's RAM (1000 MB); a is busy.
    snap = sleeping_b(host=True, free_mb=1000)
    busy = {**snap.status, "a": status("a", S.READY, inflight=1)}
    decided = plan(replace(snap, status=busy), NOW)
    # b is stopped (not put to sleep again): its weights leave RAM and c fits.
    assert decided.stops == ["b"] and decided.sleeps == [] and decided.draining == {"b"}
    assert decided.redirects == {} and decided.refusals == {}


def test_a_sleeping_role_frees_no_gpu_memory_by_stopping() -> None:
    # On a GPU the budget is VRAM: sleeping b holds none, so stopping it would not help.
    snap = sleeping_b(host=False, free_mb=1000)
    busy = {**snap.status, "a": status("a", S.READY, inflight=1)}
    decided = plan(replace(snap, status=busy), NOW)
    assert "b" not in decided.stops and decided.starts == []
    # On a GPU, a sleeping role also does not count against a budget.
    assert plan(sleeping_b(host=False, free_mb=100_000, budget=7000), NOW).starts == ["c"]


def test_a_role_evicted_for_host_ram_is_stopped_not_put_to_sleep() -> None:
    def evicting(host: bool) -> Any:
        return snapshot(
            three_roles(),
            {"a": status("a", S.READY), "b": status("b", S.READY)},
            (("c", 0.1),),
            engines=separate_groups(),
            free_mb=lambda: 1000,
            footprints=footprints({"a": 3000, "b": 3000, "c": 3500}, {"a": 8.0, "b": 1.5}),
            sleepers=frozenset({"a", "b"}),
            on_host=lambda: host,
        )

    # Asleep, b would keep its weights in RAM: it is stopped for good.
    decided = plan(evicting(host=True), NOW)
    assert decided.stops == ["b"] and decided.sleeps == []
    assert decided.evictions and decided.evictions[0].startswith("unloading b for role c")
    # On a GPU, sleeping gives the VRAM back: b sleeps.
    decided = plan(evicting(host=False), NOW)
    assert decided.stops == [] and decided.sleeps == ["b"]


# --- the owner loop on a machine whose free memory follows what is loaded -----------------------


async def test_the_owner_evicts_by_memory_and_plans_with_measured_sizes() -> None:
    log: list[str] = []
    all_roles = three_roles()
    sizes = {"a": 3000, "b": 3000, "c": 3500}
    sup: Supervisor

    def resources() -> Resources:
        used = sum(sizes[n] for n in all_roles if sup.status(n).loaded)
        return Resources(ram_free_mb=8000 - used, ram_total_mb=8000)

    sup = Supervisor(
        all_roles,
        separate_groups(),
        {n: FakeDriver(log, n) for n in all_roles},
        Metrics(),
        resources,
    )
    await sup.start()
    try:
        for name in ("a", "b"):
            sup.release(await sup.acquire(name))
            sup.footprint(name).measured_mb = sizes[name]  # as if measured after the load
        sup.footprint("a").load_seconds, sup.footprint("b").load_seconds = 9.0, 1.0
        assert sup.loaded() == ["b", "a"]
        sup.footprint("c").estimated_mb = sizes["c"]
        lease = await asyncio.wait_for(sup.acquire("c"), 5)
        assert lease.role == "c"
        assert log == ["start a", "start b", "stop b", "start c"]
        assert sup.status("a").state is S.READY and sup.status("b").state is S.STOPPED
        sup.release(lease)
    finally:
        await sup.stop()


def test_the_resident_size_of_a_process_tree_is_measured() -> None:
    assert process_tree_rss_mb(os.getpid()) > 10
    assert process_tree_rss_mb(2**22 + 1) == 0  # no such process


# --- measuring a loaded engine ------------------------------------------------------------------


def fake_nvidia_smi(directory: Path, rows: str) -> None:
    """An ``nvidia-smi`` that prints what the real one prints for the two queries turnout makes
    (``--format=csv,noheader,nounits``: MiB, no units, no header)."""
    script = directory / "nvidia-smi"
    script.write_text(
        "#!/bin/sh\n"
        'case "$1" in\n'
        f"  --query-compute-apps=*) printf '{rows}' ;;\n"
        "  --query-gpu=*) printf '80000, 81559\\n' ;;\n"
        "esac\n"
    )
    script.chmod(0o755)


async def test_an_engine_on_a_gpu_is_measured_by_the_vram_its_processes_hold(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pid = os.getpid()
    # The engine on two GPUs (a row per GPU), and someone else's process.
    fake_nvidia_smi(tmp_path, f"{pid}, 2048\\n4194305, 512\\n{pid}, 1024\\n")
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    role = Role(engine="llamacpp", model="/m.gguf")
    sized = await measure("fast", role, pid, 1.5, "")
    assert sized is not None and sized.measured_mb == 3072 and sized.load_seconds == 1.5


async def test_a_cpu_engine_is_measured_by_its_resident_memory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake_nvidia_smi(tmp_path, "4194305, 512\\n")  # a GPU, but our engine holds none of it
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    sized = await measure("fast", Role(engine="llamacpp", model="/m.gguf"), os.getpid(), 1.0, "")
    # This test process's resident size (it moves by a few MB between two reads).
    assert sized is not None and abs(sized.measured_mb - process_tree_rss_mb(os.getpid())) < 64


def test_two_roles_that_fit_only_one_at_a_time_do_not_start_together() -> None:
    engines = Engines(groups={"one": Group(members=("a",)), "two": Group(members=("b",))})
    sizes = footprints({"a": 3000, "b": 3000, "c": 0}, {})
    both = snapshot(
        three_roles(),
        waiters=(("a", 1.0), ("b", 0.5)),
        engines=engines,
        free_mb=lambda: 4000,
        footprints=sizes,
    )
    decided = plan(both, NOW)
    # b does not fit beside a (starting: not yet visible in free memory) but would alone:
    # it waits for its turn, neither refused nor started to overcommit.
    assert decided.starts == ["a"] and decided.refusals == {} and decided.redirects == {}


async def test_two_roles_that_fit_only_one_at_a_time_take_turns_through_the_owner() -> None:
    log: list[str] = []
    all_roles = three_roles()
    engines = Engines(
        max_wait_seconds=0.05,
        wait_timeout_seconds=5,
        groups={"one": Group(members=("a",)), "two": Group(members=("b",))},
    )
    sup: Supervisor

    def resources() -> Resources:
        used = sum(3000 for n in ("a", "b") if sup.status(n).state is S.READY)
        return Resources(ram_free_mb=4000 - used, ram_total_mb=4000)

    sup = Supervisor(
        all_roles, engines, {n: FakeDriver(log, n) for n in all_roles}, Metrics(), resources
    )
    for name in ("a", "b"):
        sup.footprint(name).measured_mb = 3000
    await sup.start()
    try:
        wanted = [asyncio.create_task(sup.acquire(n)) for n in ("a", "b")]
        done, _ = await asyncio.wait(wanted, timeout=5, return_when=asyncio.FIRST_COMPLETED)
        (first,) = [t.result() for t in done]
        await asyncio.sleep(0.2)
        # The other waits: it fits only once the first is unloaded, which never happens
        # while the first has a request in flight.
        assert len(log) == 1 and sup.status(first.role).state is S.READY
        sup.release(first)
        second = await asyncio.wait_for(next(t for t in wanted if t not in done), 5)
        assert {first.role, second.role} == {"a", "b"}
        assert log == [f"start {first.role}", f"stop {first.role}", f"start {second.role}"]
        sup.release(second)
    finally:
        await sup.stop()


def test_a_switch_names_the_roles_it_unloads_for_memory_as_from() -> None:
    loaded = {"a": status("a", S.READY), "b": status("b", S.READY)}
    snap = snapshot(
        three_roles(),
        loaded,
        engines=separate_groups(),
        free_mb=lambda: 1000,
        footprints=footprints({"a": 3000, "b": 3000, "c": 3500}, {"a": 8.0, "b": 1.5}),
    )
    assert victims(snap, "c", NOW) == ["b"]
    assert victims(snap, "a", NOW) == []  # already loaded: nothing to unload
