"""KV cache bookkeeping across swaps: keys, names, what to restore and least-recently-used eviction."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from gateway.config import KvCache, Role, from_mapping
from gateway.engines import kv_cache
from gateway.engines.builtin import LLAMACPP_COMMAND
from gateway.engines.kv_cache import CacheFile, Caps
from gateway.engines.kv_slots import KvCacheKeeper, key_parts
from gateway.errors import ConfigError
from gateway.metrics import Metrics

KEY_A = "a" * 16
KEY_B = "b" * 16


def file(role: str, slot: int, size: int, used: float, key: str = KEY_A) -> CacheFile:
    return CacheFile(role, kv_cache.file_name(key, slot, size), key, slot, size, used, size)


def test_names_round_trip_and_foreign_files_are_ignored() -> None:
    assert kv_cache.parse_name(kv_cache.file_name(KEY_A, 3, 1234)) == (KEY_A, 3, 1234)
    assert kv_cache.parse_name(kv_cache.partial_name(KEY_A, 3)) is None
    assert kv_cache.parse_name("notes.txt") is None
    assert kv_cache.parse_name(f"{KEY_A}-slot1.kv.bak") is None


def test_unsafe_role_names_get_a_digest_directory() -> None:
    assert kv_cache.role_dir_name("coder") == "coder"
    odd = kv_cache.role_dir_name("../etc")
    assert odd.startswith("role-") and "/" not in odd
    assert kv_cache.role_dir_name("a b") != kv_cache.role_dir_name("a_b")


def test_key_changes_when_the_model_file_changes(tmp_path: Path) -> None:
    model = tmp_path / "m.gguf"
    model.write_bytes(b"GGUF" + b"\0" * 100)
    role = Role(engine="llamacpp", model=str(model), command=("true", "-m", "${MODEL}"))
    before = kv_cache.cache_key(key_parts("r", role))
    assert kv_cache.cache_key(key_parts("r", role)) == before  # stable
    model.write_bytes(b"GGUF" + b"\1" * 101)  # another model at the same path
    assert kv_cache.cache_key(key_parts("r", role)) != before
    os.utime(model, ns=(1, 1))  # same size, other mtime: also another file
    touched = kv_cache.cache_key(key_parts("r", role))
    model.write_bytes(b"GGUF" + b"\2" * 101)
    os.utime(model, ns=(1, 1))
    assert kv_cache.cache_key(key_parts("r", role)) == touched  # cheap identity: path+size+mtime


def test_key_changes_with_the_engine_arguments_but_not_the_port(tmp_path: Path) -> None:
    model = tmp_path / "m.gguf"
    model.write_bytes(b"GGUF")
    base = Role(engine="llamacpp", model=str(model), context=4096)
    key = kv_cache.cache_key(key_parts("r", base, LLAMACPP_COMMAND))
    assert (
        kv_cache.cache_key(
            key_parts("r", Role(engine="llamacpp", model=str(model), port=9), LLAMACPP_COMMAND)
        )
        == key
    )
    bigger = Role(engine="llamacpp", model=str(model), context=8192)
    assert kv_cache.cache_key(key_parts("r", bigger, LLAMACPP_COMMAND)) != key
    with_env = Role(engine="llamacpp", model=str(model), env={"LLAMA_ARG_N_PARALLEL": "2"})
    assert kv_cache.cache_key(key_parts("r", with_env, LLAMACPP_COMMAND)) != key


def test_restorable_takes_the_current_key_only_and_discards_the_rest() -> None:
    files = [file("a", 1, 10, 1.0), file("a", 0, 10, 2.0), file("a", 0, 10, 3.0, KEY_B)]
    files.append(file("b", 0, 10, 1.0))
    assert [f.slot for f in kv_cache.restorable(files, "a", KEY_A)] == [0, 1]
    assert [f.key for f in kv_cache.discardable(files, "a", KEY_A)] == [KEY_B]
    assert kv_cache.restorable(files, "c", KEY_A) == []


def test_a_file_whose_size_differs_from_what_was_written_is_never_restored() -> None:
    # llama.cpp aborts on a truncated slot file: such a file must not reach it.
    cut = CacheFile("a", kv_cache.file_name(KEY_A, 0, 100), KEY_A, 0, 60, 1.0, 100)
    assert not cut.intact
    assert kv_cache.restorable([cut], "a", KEY_A) == []
    assert kv_cache.discardable([cut], "a", KEY_A) == [cut]


def test_only_the_newest_save_of_a_slot_is_restored() -> None:
    older, newer = file("a", 0, 10, 1.0), file("a", 0, 20, 2.0)
    assert kv_cache.restorable([newer, older], "a", KEY_A) == [newer]
    assert kv_cache.discardable([newer, older], "a", KEY_A) == [older]


def test_per_role_cap_evicts_that_roles_least_recently_used_first() -> None:
    files = [file("a", 0, 40, 3.0), file("a", 1, 40, 1.0), file("a", 2, 40, 2.0)]
    files.append(file("b", 0, 100, 0.5))
    chosen = kv_cache.evictions(files, Caps(per_role=100, total=0))
    assert [(f.role, f.slot) for f in chosen] == [("a", 1)]


def test_total_cap_evicts_across_roles_oldest_first() -> None:
    files = [file("a", 0, 50, 3.0), file("b", 0, 50, 1.0), file("c", 0, 50, 2.0)]
    chosen = kv_cache.evictions(files, Caps(per_role=0, total=60))
    assert [f.role for f in chosen] == ["b", "c"]


def test_caps_of_zero_keep_everything() -> None:
    files = [file("a", 0, 10**12, 1.0), file("b", 0, 10**12, 2.0)]
    assert kv_cache.evictions(files, Caps(0, 0)) == []


def test_files_being_restored_are_never_evicted() -> None:
    files = [file("a", 0, 50, 1.0), file("b", 0, 50, 2.0)]
    keep = frozenset({kv_cache.path_of(files[0])})
    assert [f.role for f in kv_cache.evictions(files, Caps(0, 60), keep)] == ["b"]


def test_a_file_bigger_than_the_role_cap_is_not_kept() -> None:
    files = [file("a", 0, 500, 1.0)]
    assert kv_cache.evictions(files, Caps(per_role=100, total=0)) == files


def test_usage_sums_files_and_bytes_per_role() -> None:
    files = [file("a", 0, 5, 1.0), file("a", 1, 7, 1.0), file("b", 0, 1, 1.0)]
    stored = kv_cache.usage(files)
    assert stored["a"] == kv_cache.RoleUsage(2, 12) and stored["b"] == kv_cache.RoleUsage(1, 1)


def test_keeper_enforces_caps_on_disk_and_publishes_bytes(tmp_path: Path) -> None:
    metrics = Metrics()
    keeper = KvCacheKeeper(
        KvCache(dir=str(tmp_path), max_bytes_per_role=0, max_bytes_total=250), metrics
    )
    for role in ("a", "b"):
        keeper.role_dir(role).mkdir(parents=True)
    old = tmp_path / "a" / kv_cache.file_name(KEY_A, 0, 200)
    new = tmp_path / "b" / kv_cache.file_name(KEY_A, 0, 200)
    for path, when in ((old, 1_000_000), (new, 2_000_000)):
        path.write_bytes(b"x" * 200)
        os.utime(path, (when, when))
    (tmp_path / "b" / "unrelated.txt").write_text("kept: not ours")
    keeper.refresh()
    assert not old.exists() and new.exists() and (tmp_path / "b" / "unrelated.txt").exists()
    text = metrics.render().decode()
    assert 'turnout_kv_cache_bytes{role="b"} 200.0' in text
    assert 'turnout_kv_cache_evictions_total{role="a"} 1.0' in text
    assert keeper.describe("b")["stored"] is True and keeper.describe("a")["stored"] is False


def test_keeper_drops_stale_and_damaged_files_when_a_restore_begins(tmp_path: Path) -> None:
    keeper = KvCacheKeeper(KvCache(dir=str(tmp_path)), Metrics())
    directory = keeper.role_dir("a")
    directory.mkdir(parents=True)
    (directory / kv_cache.file_name(KEY_B, 0, 9)).write_bytes(b"old model")
    (directory / kv_cache.file_name(KEY_A, 0, 10)).write_bytes(b"this model")
    (directory / kv_cache.file_name(KEY_A, 1, 99)).write_bytes(b"cut short")
    todo = keeper.begin_restore("a", KEY_A)
    assert [(f.key, f.slot) for f in todo] == [(KEY_A, 0)]
    assert sorted(p.name for p in directory.iterdir()) == [kv_cache.file_name(KEY_A, 0, 10)]
    keeper.end_restore("a", todo, [])


@pytest.mark.parametrize(
    ("kv", "message"),
    [
        ({"max_bytes_total": -1}, "engines.kv_cache.max_bytes_total: expected a number >= 0"),
        (
            {"save_timeout_seconds": 0},
            "engines.kv_cache.save_timeout_seconds: expected a number > 0",
        ),
        ({"max_bytes": 5}, "max_bytes"),
    ],
)
def test_kv_cache_config_errors_name_the_key(kv: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        from_mapping({"engines": {"kv_cache": kv}}, "test", {})


def test_kv_cache_is_on_by_default_and_a_role_can_opt_out() -> None:
    config = from_mapping(
        {"roles": {"r": {"engine": "llamacpp", "model": "m.gguf", "kv_cache": False}}}, "test", {}
    )
    assert config.engines.kv_cache.enabled is True and config.roles["r"].kv_cache is False
