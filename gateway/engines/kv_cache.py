"""KV cache files kept across swaps, as pure bookkeeping: keys, file names, what to restore, what to evict.

An engine that stops writes one file per filled slot; the next start of the same role reads them
back, so an agent's 50k-token prompt is not prefilled again after every swap. The effects (HTTP to
the engine, the disk) live in ``kv_slots.py``; everything here is decided from a listing of the
cache directory and never touches a file, a socket or the clock.

A file's key covers everything that makes a saved cache valid: the model file (path, size,
modification time), the engine binary and the engine's arguments (context size, slots, cache
types). A changed model changes the key, so a stale cache is never loaded into a new model.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

SUFFIX = ".kv"
# The engine writes here first; a save cut short never leaves a file that looks complete.
PARTIAL_SUFFIX = ".kv.part"

_NAME = re.compile(r"^([0-9a-f]{16})-slot(\d+)-(\d+)\.kv$")
_SAFE_ROLE = re.compile(r"^[A-Za-z0-9_-][A-Za-z0-9._-]{0,63}$")


@dataclass(frozen=True, slots=True)
class CacheFile:
    """One saved slot of one role, as the directory listing shows it."""

    role: str  # the role directory's name
    name: str
    key: str
    slot: int
    size: int
    # Last save or restore (the file's modification time): the least recently used goes first.
    used: float
    # The size the save wrote, from the name. A file of another size was damaged since, and
    # llama.cpp aborts (GGML_ASSERT) on a truncated slot file instead of refusing it.
    recorded: int = -1

    @property
    def intact(self) -> bool:
        return self.size == self.recorded


@dataclass(frozen=True, slots=True)
class Caps:
    """Byte caps; 0 means no cap."""

    per_role: int
    total: int


@dataclass(frozen=True, slots=True)
class RoleUsage:
    files: int = 0
    bytes: int = 0


def cache_key(parts: Iterable[str]) -> str:
    """A short stable digest of what a cache depends on (see the module docstring)."""
    digest = hashlib.sha256()
    for part in parts:
        digest.update(part.encode())
        digest.update(b"\0")
    return digest.hexdigest()[:16]


def file_identity(path: str, size: int | None, mtime_ns: int | None) -> str:
    """How a file enters a key: cheap to compute, changes whenever the file is replaced."""
    if size is None or mtime_ns is None:
        return f"{path}:absent"
    return f"{path}:{size}:{mtime_ns}"


def file_name(key: str, slot: int, size: int) -> str:
    return f"{key}-slot{slot}-{size}{SUFFIX}"


def partial_name(key: str, slot: int) -> str:
    return f"{key}-slot{slot}{PARTIAL_SUFFIX}"


def parse_name(name: str) -> tuple[str, int, int] | None:
    """(key, slot, recorded size) of a complete cache file's name; None for anything else."""
    match = _NAME.match(name)
    return (match.group(1), int(match.group(2)), int(match.group(3))) if match else None


def role_dir_name(role: str) -> str:
    """A directory name for a role: the name itself when it is safe, else a digest of it."""
    if _SAFE_ROLE.match(role) and role not in (".", ".."):
        return role
    return "role-" + cache_key([role])


def restorable(files: Iterable[CacheFile], role: str, key: str) -> list[CacheFile]:
    """The role's intact files saved under its current key: the newest per slot, by slot."""
    newest: dict[int, CacheFile] = {}
    for f in files:
        if f.role == role and f.key == key and f.intact:
            if f.slot not in newest or f.used > newest[f.slot].used:
                newest[f.slot] = f
    return [newest[slot] for slot in sorted(newest)]


def discardable(files: Iterable[CacheFile], role: str, key: str) -> list[CacheFile]:
    """The role's files that must never be restored: saved under another key (another model or
    other engine arguments), damaged, or superseded by a newer save of the same slot."""
    keep = {id(f) for f in restorable(files, role, key)}
    return [f for f in files if f.role == role and id(f) not in keep]


def evictions(
    files: Sequence[CacheFile], caps: Caps, keep: frozenset[str] = frozenset()
) -> list[CacheFile]:
    """Files to delete so every role stays under ``caps.per_role`` and all under ``caps.total``.

    Least recently used first, per role, then across roles. Files named in ``keep`` (being
    restored right now) are never chosen; their bytes still count.
    """
    chosen: list[CacheFile] = []
    if caps.per_role > 0:
        for role in sorted({f.role for f in files}):
            mine = [f for f in files if f.role == role]
            chosen.extend(_oldest_over(mine, caps.per_role, keep))
    if caps.total > 0:
        gone = {id(f) for f in chosen}
        left = [f for f in files if id(f) not in gone]
        chosen.extend(_oldest_over(left, caps.total, keep))
    return chosen


def _oldest_over(files: Sequence[CacheFile], cap: int, keep: frozenset[str]) -> list[CacheFile]:
    excess = sum(f.size for f in files) - cap
    chosen: list[CacheFile] = []
    for f in sorted(files, key=lambda f: (f.used, f.role, f.name)):
        if excess <= 0:
            break
        if path_of(f) in keep:
            continue
        chosen.append(f)
        excess -= f.size
    return chosen


def path_of(f: CacheFile) -> str:
    """The file's path relative to the cache directory (what ``keep`` holds)."""
    return f"{f.role}/{f.name}"


def usage(files: Iterable[CacheFile]) -> dict[str, RoleUsage]:
    """Files and bytes stored per role directory."""
    result: dict[str, RoleUsage] = {}
    for f in files:
        before = result.get(f.role, RoleUsage())
        result[f.role] = RoleUsage(before.files + 1, before.bytes + f.size)
    return result
