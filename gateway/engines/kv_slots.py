"""Keeping an engine's KV cache across swaps: the effects around ``kv_cache.py``'s bookkeeping.

``KvCachingDriver`` wraps a role's engine driver: before the engine stops it asks the engine to
write each filled slot to a file, and after the next start it reads them back, before the
supervisor admits the first request. The engine kind supplies the how (``SlotStore``, which the
llama.cpp adapter implements); ``KvCacheKeeper`` owns the directory: it lists it, deletes what
the pure policy evicts, and remembers the last save and restore per role for ``/engine/status``.

Nothing here may fail a start or hang a stop: a save is bounded by a timeout, and a restore that
fails (a corrupt file, another llama.cpp version, a full context) is logged and its file
deleted; the engine then prefills as it would have without a cache.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from gateway.config.engines import KvCache, Role
from gateway.engines import kv_cache
from gateway.engines.kv_cache import CacheFile, Caps
from gateway.engines.process import EngineDriver, render_command
from gateway.engines.progress import report_stage
from gateway.errors import UpstreamStatus
from gateway.metrics import Metrics

log = logging.getLogger("turnout.engines")


@runtime_checkable
class SlotStore(Protocol):
    """An engine kind that can write its slots' KV state to files and read it back.

    Filenames are plain names inside the directory given by ``slot_save_args``.
    """

    def slot_save_args(self, command: Sequence[str], directory: str) -> list[str] | None:
        """Arguments to append to ``command`` so the engine saves to and restores from
        ``directory``; None when ``command`` is not one this engine kind can extend (a wrapper
        script, another server)."""
        ...

    async def filled_slots(self) -> list[int]:
        """Slots that hold a prompt worth saving."""
        ...

    async def save_slot(self, slot: int, filename: str) -> int:
        """Write ``slot`` to ``filename``; the bytes written."""
        ...

    async def restore_slot(self, slot: int, filename: str) -> int:
        """Load ``slot`` from ``filename``; the tokens restored."""
        ...


def default_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "turnout" / "kv-cache"


@dataclass(slots=True)
class Outcome:
    """The last save or restore of a role, as /engine/status shows it."""

    outcome: str  # ok | partial | error | timeout | nothing
    files: int
    bytes: int
    seconds: float
    at: float  # wall clock
    tokens: int = 0
    detail: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {
            "outcome": self.outcome,
            "files": self.files,
            "bytes": self.bytes,
            "tokens": self.tokens,
            "seconds": round(self.seconds, 3),
            "at": self.at,
            "detail": self.detail or None,
        }


class KvCacheKeeper:
    """The cache directory shared by all roles. Its methods do blocking file work: call them
    through ``asyncio.to_thread`` (a multi-gigabyte unlink must not stall other streams); the
    lock keeps two roles' saves and restores from evicting under each other."""

    def __init__(self, config: KvCache, metrics: Metrics) -> None:
        self.config = config
        self.root = Path(config.dir).expanduser() if config.dir else default_dir()
        self.caps = Caps(config.max_bytes_per_role, config.max_bytes_total)
        self._metrics = metrics
        self._lock = threading.Lock()
        self._restoring: set[str] = set()
        self._roles: dict[str, str] = {}  # role name → its directory's name
        self.last_save: dict[str, Outcome] = {}
        self.last_restore: dict[str, Outcome] = {}

    def wrap(
        self,
        name: str,
        role: Role,
        engine: object,
        make: Callable[[Sequence[str]], EngineDriver],
        template: Sequence[str] = (),
    ) -> EngineDriver:
        """The role's driver, wrapped when its engine kind can keep a KV cache and the role wants it.

        ``make`` builds the plain driver given extra engine arguments; ``template`` is the
        kind's default command (the role's own ``command`` wins).
        """
        if not (self.config.enabled and role.kv_cache and isinstance(engine, SlotStore)):
            return make(())
        directory = self.role_dir(name)
        extra = engine.slot_save_args(_command(name, role, template), str(directory))
        problem = "its command cannot be given a slot directory" if extra is None else ""
        try:
            directory.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            problem = f"cannot create {directory}: {exc}"
        if extra is None or problem:
            del self._roles[name]
            log.warning("role %s: KV cache off: %s", name, problem)
            return make(())
        return KvCachingDriver(name, role, make(extra), engine, self, template)

    def role_dir(self, role: str) -> Path:
        self._roles[role] = kv_cache.role_dir_name(role)
        return self.root / self._roles[role]

    # --- blocking file work (run in a thread) ---------------------------------------------------

    def listing(self) -> list[CacheFile]:
        files: list[CacheFile] = []
        with contextlib.suppress(FileNotFoundError):
            for directory in self.root.iterdir():
                if not directory.is_dir():
                    continue
                for entry in os.scandir(directory):
                    parsed = kv_cache.parse_name(entry.name)
                    if parsed is None:
                        continue
                    key, slot, recorded = parsed
                    with contextlib.suppress(FileNotFoundError):
                        stat = entry.stat()
                        files.append(
                            CacheFile(
                                directory.name,
                                entry.name,
                                key,
                                slot,
                                stat.st_size,
                                stat.st_mtime,
                                recorded,
                            )
                        )
        return files

    def begin_restore(self, role: str, key: str) -> list[CacheFile]:
        """Drop what must not be restored; return (and protect from eviction) what will be."""
        with self._lock:
            files = self.listing()
            dirname = self._roles[role]
            for f in kv_cache.discardable(files, dirname, key):
                if f.key != key:
                    why, outcome = "saved for another model or other engine arguments", "stale"
                elif not f.intact:
                    why, outcome = f"damaged ({f.size} bytes, {f.recorded} written)", "damaged"
                else:
                    why, outcome = "superseded by a newer save", ""
                log.info("role %s: discarding KV cache %s: %s", role, f.name, why)
                if outcome:
                    self.count_restore(role, outcome)
                self._unlink(f)
            todo = kv_cache.restorable(files, dirname, key)
            self._restoring.update(kv_cache.path_of(f) for f in todo)
            return todo

    def end_restore(self, role: str, used: list[CacheFile], bad: list[CacheFile]) -> None:
        with self._lock:
            for f in used:
                with contextlib.suppress(FileNotFoundError):
                    os.utime(self.root / kv_cache.path_of(f))
            for f in bad:
                self._unlink(f)
            self._restoring.difference_update(kv_cache.path_of(f) for f in used + bad)
            self._settle()

    def commit_save(self, role: str, key: str, slot: int) -> int:
        """Move a complete save into place under a name that records its size; its size."""
        directory = self.root / self._roles[role]
        partial = directory / kv_cache.partial_name(key, slot)
        size = partial.stat().st_size
        final = kv_cache.file_name(key, slot, size)
        os.replace(partial, directory / final)
        for entry in os.scandir(directory):  # the slot's earlier saves
            parsed = kv_cache.parse_name(entry.name)
            if parsed and parsed[:2] == (key, slot) and entry.name != final:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(entry.path)
        return size

    def end_save(self, role: str) -> None:
        """Remove what a save cut short left behind, then keep the caps."""
        with self._lock:
            directory = self.root / self._roles[role]
            with contextlib.suppress(FileNotFoundError):
                for entry in os.scandir(directory):
                    if entry.name.endswith(kv_cache.PARTIAL_SUFFIX):
                        with contextlib.suppress(FileNotFoundError):
                            os.unlink(entry.path)
            self._settle()

    def refresh(self) -> None:
        """Publish the stored bytes per role (at start-up; later every save and restore does)."""
        with self._lock:
            self._settle()

    def _settle(self) -> None:
        files = self.listing()
        victims = kv_cache.evictions(files, self.caps, frozenset(self._restoring))
        by_dir = {d: r for r, d in self._roles.items()}
        for f in victims:
            log.info(
                "KV cache %s/%s evicted (%d bytes; caps: %d per role, %d in all)",
                f.role,
                f.name,
                f.size,
                self.caps.per_role,
                self.caps.total,
            )
            self._metrics.child(self._metrics.kv_cache_evictions, by_dir.get(f.role, f.role)).inc()
            self._unlink(f)
        gone = {id(f) for f in victims}
        stored = kv_cache.usage(f for f in files if id(f) not in gone)
        for role, dirname in self._roles.items():
            self._metrics.child(self._metrics.kv_cache_bytes, role).set(
                stored.get(dirname, kv_cache.RoleUsage()).bytes
            )

    def _unlink(self, f: CacheFile) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.root / kv_cache.path_of(f))

    def count_restore(self, role: str, outcome: str) -> None:
        self._metrics.child(self._metrics.kv_cache_restores, role, outcome).inc()

    def count_save(self, role: str, outcome: str, size: int) -> None:
        m = self._metrics
        m.child(m.kv_cache_saves, role, outcome).inc()
        if size:
            m.child(m.kv_cache_saved_bytes, role).inc(size)

    # --- what /engine/status shows ----------------------------------------------------------------

    def describe(self, role: str) -> dict[str, Any]:
        if role not in self._roles:
            return {"enabled": False}
        stored = kv_cache.usage(f for f in self.listing() if f.role == self._roles[role])
        mine = stored.get(self._roles[role], kv_cache.RoleUsage())
        save, restore = self.last_save.get(role), self.last_restore.get(role)
        return {
            "enabled": True,
            "stored": mine.files > 0,
            "files": mine.files,
            "bytes": mine.bytes,
            "dir": str(self.root / self._roles[role]),
            "last_save": save.as_dict() if save else None,
            "last_restore": restore.as_dict() if restore else None,
        }


def key_parts(name: str, role: Role, template: Sequence[str] = ()) -> list[str]:
    """What a saved cache depends on, read from the disk now (see ``kv_cache.cache_key``).

    ``template``: the engine kind's default command (the role's own ``command`` wins).
    """
    command = _command(name, role, template)
    parts = ["\x1f".join(command), *(f"{k}={v}" for k, v in sorted(role.env.items()))]
    executable = shutil.which(command[0]) if command else None
    for path in (role.model, executable):
        if not path:
            continue
        try:
            stat = os.stat(path)
            parts.append(
                kv_cache.file_identity(os.path.realpath(path), stat.st_size, stat.st_mtime_ns)
            )
        except OSError:
            parts.append(kv_cache.file_identity(path, None, None))
    return parts


def _command(name: str, role: Role, template: Sequence[str]) -> list[str]:
    # Rendered without host and port: a port picked at random per gateway start changes nothing.
    return render_command(name, role, role.command or template, "", 0)


class KvCachingDriver:
    """A role's driver whose engine keeps its KV cache across stops (see the module docstring)."""

    def __init__(
        self,
        name: str,
        role: Role,
        inner: EngineDriver,
        store: SlotStore,
        keeper: KvCacheKeeper,
        template: Sequence[str] = (),
    ) -> None:
        self._name = name
        self._template = tuple(template)
        self._role = role
        self._inner = inner
        self._store = store
        self._keeper = keeper
        self._key = ""
        self._running = False

    async def start(self) -> int | None:
        # The key is taken before the engine loads the model: a model file replaced while the
        # engine runs must not have the old model's cache saved under the new file's key.
        self._key = kv_cache.cache_key(
            await asyncio.to_thread(key_parts, self._name, self._role, self._template)
        )
        pid = await self._inner.start()
        self._running = True
        try:
            if not await self._restore():
                # The engine died on a file it could not read (llama.cpp aborts on some damage
                # instead of refusing it). The file is gone now: start once more, cache-less.
                log.warning(
                    "role %s: engine lost while restoring its KV cache; restarting", self._name
                )
                lost = self._keeper.last_restore[self._name]
                lost.detail += "; the engine died on it and was restarted"
                pid = await self._inner.start()
        except BaseException:
            # Cancelled (a stop during start): leave nothing running, as the plain driver does.
            self._running = False
            await self._inner.stop()
            raise
        return pid

    async def stop(self) -> None:
        if self._running:
            self._running = False
            await self._save()
        await self._inner.stop()

    async def wait_exit(self) -> int:
        return await self._inner.wait_exit()

    def exit_detail(self) -> str:
        return self._inner.exit_detail()

    async def _restore(self) -> bool:
        """Restore what the keeper offers; False when the engine stopped answering meanwhile."""
        keeper, role = self._keeper, self._name
        todo = await asyncio.to_thread(keeper.begin_restore, role, self._key)
        if not todo:
            return True
        report_stage("restoring cache")
        started = time.monotonic()
        used: list[CacheFile] = []
        bad: list[CacheFile] = []
        tokens, outcome, detail, alive = 0, "ok", "", True
        try:
            async with asyncio.timeout(keeper.config.restore_timeout_seconds):
                for f in todo:
                    try:
                        tokens += await self._store.restore_slot(f.slot, f.name)
                        used.append(f)
                        keeper.count_restore(role, "ok")
                    except Exception as exc:  # any failure only costs a prefill
                        bad.append(f)
                        outcome, detail = "error", f"{f.name}: {exc}"
                        keeper.count_restore(role, "error")
                        log.warning(
                            "role %s: KV cache %s not restored (deleted): %s", role, f.name, exc
                        )
                        # An engine that refused the file still runs; one that gave no answer
                        # at all has most likely crashed on it.
                        if not isinstance(exc, UpstreamStatus):
                            alive = False
                            break
        except TimeoutError:
            outcome = "timeout"
            detail = f"restore took over {keeper.config.restore_timeout_seconds:g} s"
            keeper.count_restore(role, "timeout")
            log.warning("role %s: KV cache restore stopped: %s", role, detail)
        finally:
            await asyncio.shield(asyncio.to_thread(keeper.end_restore, role, used, bad))
        seconds = time.monotonic() - started
        size = sum(f.size for f in used)
        if used and outcome != "ok":
            outcome = "partial"
        keeper.last_restore[role] = Outcome(
            outcome, len(used), size, seconds, time.time(), tokens, detail
        )
        if used:
            log.info(
                "role %s: restored KV cache of %d slot(s), %d tokens, %d bytes in %.3f s",
                role,
                len(used),
                tokens,
                size,
                seconds,
            )
        return alive

    async def _save(self) -> None:
        keeper, role = self._keeper, self._name
        started = time.monotonic()
        saved, size, outcome, detail = 0, 0, "ok", ""
        try:
            async with asyncio.timeout(keeper.config.save_timeout_seconds):
                slots = await self._store.filled_slots()
                for slot in slots:
                    await self._store.save_slot(slot, kv_cache.partial_name(self._key, slot))
                    size += await asyncio.to_thread(keeper.commit_save, role, self._key, slot)
                    saved += 1
            if not slots:
                outcome = "nothing"
        except TimeoutError:
            outcome = "timeout"
            detail = f"save took over {keeper.config.save_timeout_seconds:g} s"
        except Exception as exc:  # the stop goes on; the next start prefills
            outcome, detail = "error", f"{exc.__class__.__name__}: {exc}"
        finally:
            await asyncio.shield(asyncio.to_thread(keeper.end_save, role))
        seconds = time.monotonic() - started
        if outcome != "nothing":
            keeper.count_save(role, outcome, size)
        keeper.last_save[role] = Outcome(outcome, saved, size, seconds, time.time(), detail=detail)
        level = logging.INFO if outcome in ("ok", "nothing") else logging.WARNING
        log.log(
            level,
            "role %s: KV cache save %s: %d slot(s), %d bytes in %.3f s%s",
            role,
            outcome,
            saved,
            size,
            seconds,
            f" ({detail})" if detail else "",
        )
