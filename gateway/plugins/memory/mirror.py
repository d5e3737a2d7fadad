"""One agent's memory vectors as a replica holds them to search (the ``postgresql`` backend).

PostgreSQL here has no vector index (Debian's package comes without pgvector), so each replica
keeps a copy of the vectors of the agents it was asked about and ranks them exactly (cosine of
unit vectors: one matrix-vector product), with the columns a scope filters on beside them as
small integer codes. The rows themselves (content, meta) stay in the database.

``AgentVectors`` is plain data with no I/O: the backend decides when to load, extend, prune,
compact and drop it (postgres_store.py), on the event loop. A search reads a ``Snapshot``,
which later changes never touch, so it can be scored on a worker thread while the loop goes
on: appends write past the snapshot's length, growth builds new arrays, and a delete only
clears the row's flag in an ``alive`` mask (the snapshot has its own copy). Rows stay where
they are until a ``Compaction``, built on a worker thread from what was dead when it began,
is swapped in on the loop with whatever changed meanwhile applied to it; the same rebuild
grows a large copy's arrays ahead of need.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from gateway.plugins.memory.items import Scope

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

# What a search needs of one item: id, kind, project, channel, session_id, created_at, vector.
Row = tuple[int, str, str, str, str, float, bytes]
_FILTERED = ("kind", "project", "channel", "session_id")
_FIRST_CAPACITY = 64
# Arrays of this many rows or more are grown ahead of need on a worker thread (a rebuild with
# room to spare), not by the add that fills them: that would copy them all on the event loop.
_GROW_AHEAD = 4096


class _Codes:
    """Small integers for the values of one filtered column (0: the empty string)."""

    def __init__(self) -> None:
        self._codes: dict[str, int] = {"": 0}

    def of(self, value: str) -> int:
        code = self._codes.get(value)
        if code is None:
            code = self._codes[value] = len(self._codes)
        return code

    def find(self, value: str) -> int | None:
        return self._codes.get(value)


class Tally:
    """The rows held by all the copies of one backend: what ``memory.mirror_max_items`` bounds."""

    def __init__(self) -> None:
        self.items = 0


@dataclass(frozen=True, slots=True)
class Snapshot:
    """The first ``size`` items of an ``AgentVectors`` at one moment (``alive``: which of them
    are not deleted; None: all)."""

    ids: Any
    vectors: Any
    columns: dict[str, Any]
    codes: dict[str, _Codes]
    alive: Any = None

    def best(self, query: Any, scope: Scope, pool: int) -> list[tuple[int, float]]:
        """The ``pool`` items in scope most similar to ``query``: (id, similarity), best first,
        ties to the newer id. The agent is this snapshot's; the other filters apply here."""
        import numpy as np

        mask = self._mask(scope)
        if mask is None:
            return []
        if self.alive is not None:
            mask = self.alive if mask is True else mask & self.alive
        ids = self.ids if mask is True else self.ids[mask]
        vectors = self.vectors if mask is True else self.vectors[mask]
        if not len(ids):
            return []
        similarity = vectors @ query
        if pool < len(ids):
            top = np.argpartition(-similarity, pool - 1)[:pool]
        else:
            top = np.arange(len(ids))
        order = sorted(top.tolist(), key=lambda i: (-float(similarity[i]), -int(ids[i])))
        return [(int(ids[i]), float(similarity[i])) for i in order]

    def _mask(self, scope: Scope) -> Any:
        """A boolean mask of the items in scope; True: all of them; None: none can be."""
        import numpy as np

        mask: Any = True
        for column, wanted in (
            ("project", scope.project),
            ("channel", scope.channel),
            ("session_id", scope.session_id),
        ):
            if wanted is None:
                continue
            code = self.codes[column].find(wanted)
            if code is None:
                return None
            mask = mask & (self.columns[column] == code)
        if scope.kinds:
            codes = [c for c in map(self.codes["kind"].find, scope.kinds) if c is not None]
            if not codes:
                return None
            mask = mask & np.isin(self.columns["kind"], codes)
        return mask


def rank_rows(
    dims: int, rows: Sequence[Row], query: Any, scope: Scope, pool: int
) -> list[tuple[int, float]]:
    """``Snapshot.best`` over rows read for one search and kept by none (a worker thread's)."""
    vectors = AgentVectors(dims, stale=False)
    vectors.extend(rows)
    return vectors.snapshot().best(query, scope, pool)


@dataclass(frozen=True, slots=True)
class Compaction:
    """The rows of an ``AgentVectors`` when a compaction began, and which were dead then."""

    size: int
    ids: Any
    vectors: Any
    columns: dict[str, Any]
    alive: Any
    dead: frozenset[int]

    def build(self) -> tuple[Any, Any, dict[str, Any]]:
        """The live rows in new arrays, with room to grow (on a worker thread)."""
        import numpy as np

        keep = np.flatnonzero(self.alive)
        kept = len(keep)
        capacity = kept + max(_FIRST_CAPACITY, kept // 2)
        # Rows past ``kept`` are never read before they are written (``size`` bounds them).
        ids = np.empty(capacity, np.int64)
        vectors = np.empty((capacity, self.vectors.shape[1]), np.float32)
        columns = {c: np.empty(capacity, np.int32) for c in _FILTERED}
        np.take(self.ids, keep, out=ids[:kept])
        np.take(self.vectors, keep, axis=0, out=vectors[:kept])
        for c in _FILTERED:
            np.take(self.columns[c], keep, out=columns[c][:kept])
        return ids, vectors, columns


@dataclass(eq=False)
class AgentVectors:
    """The vectors of one agent's items, grown in place; deleted rows flagged, then compacted.

    ``stale``: the copy may have missed changes (new, or the listener reconnected): the next
    search asks the database which ids exist. ``pending``: ids another replica added, which
    the next search fetches. ``gone``: ids deleted while a fetch is in flight (``fetching``);
    ids are never reused, so a row that fetch read before its delete was heard is recognised
    and left out. A fetch that starts after a delete was heard cannot read the row (the
    notification comes after the commit), so ``gone`` is emptied when no fetch needs it.
    ``tally``: where this copy counts its rows; None once the backend let go of it.
    """

    dims: int
    tally: Tally | None = None
    stale: bool = True
    pending: set[int] = field(default_factory=set)
    gone: set[int] = field(default_factory=set)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    _size: int = 0
    _fetching: bool = False
    _ids: Any = None
    _vectors: Any = None
    _alive: Any = None
    _columns: dict[str, Any] = field(default_factory=dict)
    _codes: dict[str, _Codes] = field(default_factory=lambda: {c: _Codes() for c in _FILTERED})
    _held: set[int] = field(default_factory=set)
    # Held rows deleted but not compacted away yet (their ``alive`` flag is off).
    _dead: set[int] = field(default_factory=set)

    @property
    def size(self) -> int:
        """Rows in the arrays, dead ones included (what the copy costs in memory)."""
        return self._size

    def ids(self) -> set[int]:
        return set(self._held)

    def dead(self) -> int:
        return len(self._dead)

    def snapshot(self) -> Snapshot:
        n = self._size
        if self._ids is None:
            self._grow(_FIRST_CAPACITY)
        columns = {c: array[:n] for c, array in self._columns.items()}
        alive = self._alive[:n].copy() if self._dead else None
        return Snapshot(self._ids[:n], self._vectors[:n], columns, self._codes, alive)

    def begin_fetch(self) -> None:
        self._fetching = True
        self.gone.clear()

    def end_fetch(self) -> None:
        self._fetching = False
        self.gone.clear()

    def extend(self, rows: Iterable[Row]) -> int:
        """Add the rows not held yet and not deleted; returns how many were added."""
        import numpy as np

        fresh = [r for r in rows if r[0] not in self._held and r[0] not in self.gone]
        if not fresh:
            return 0
        if self._ids is None or self._size + len(fresh) > len(self._ids):
            self._grow(max(_FIRST_CAPACITY, 2 * (self._size + len(fresh))))
        start, end = self._size, self._size + len(fresh)
        self._ids[start:end] = [r[0] for r in fresh]
        self._vectors[start:end] = np.frombuffer(b"".join(r[6] for r in fresh), np.float32).reshape(
            len(fresh), self.dims
        )
        self._alive[start:end] = True
        for column, values in zip(
            _FILTERED, zip(*(r[1:5] for r in fresh), strict=True), strict=True
        ):
            codes = self._codes[column]
            self._columns[column][start:end] = [codes.of(value) for value in values]
        self._held.update(r[0] for r in fresh)
        self.pending.difference_update(r[0] for r in fresh)
        self._resize(end)
        return len(fresh)

    def adopt(self, loaded: AgentVectors, rows: Sequence[Row]) -> None:
        """Take over ``loaded``, built from ``rows`` off the event loop (a first load of many
        items costs tens of ms), then re-apply the deletes heard meanwhile. Should an add
        have reached this copy meanwhile, ``rows`` are merged here instead (rare)."""
        if self._size:
            self.extend(rows)
            return
        self._ids, self._vectors, self._alive = loaded._ids, loaded._vectors, loaded._alive
        self._columns, self._codes, self._held = loaded._columns, loaded._codes, loaded._held
        self._dead = set(loaded._dead)
        self._resize(loaded._size)
        self.pending -= self._held
        self.remove(self.gone)

    def expect(self, ids: Iterable[int]) -> None:
        """Another replica added ``ids``: fetch them before the next search."""
        self.pending.update(i for i in ids if i not in self._held and i not in self.gone)

    def remove(self, ids: Iterable[int]) -> int:
        """Forget ``ids``; returns how many were held. Their rows are only flagged dead (a
        vectorised pass over the ids, no copy): see ``needs_compaction``."""
        import numpy as np

        ids = set(ids)
        if self._fetching:
            self.gone |= ids
        self.pending -= ids
        dropped = ids & self._held
        if not dropped:
            return 0
        self._held -= dropped
        self._dead |= dropped
        n = self._size
        self._alive[:n] &= ~np.isin(self._ids[:n], list(dropped))
        return len(dropped)

    def needs_compaction(self) -> bool:
        """A quarter of the rows dead: ranking and memory pay for them more than a copy costs."""
        return bool(self._dead) and 4 * len(self._dead) >= self._size

    def needs_room(self) -> bool:
        """Large arrays nearly full: rebuild them bigger before an add has to grow them."""
        if self._ids is None or self._size < _GROW_AHEAD:
            return False
        return 8 * (len(self._ids) - self._size) < self._size

    def compaction(self) -> Compaction:
        """What a compaction starts from; its ``build`` runs on a worker thread. The arrays'
        first ``size`` rows never change in place, so the thread may read them."""
        n = self._size
        columns = {c: a[:n] for c, a in self._columns.items()}
        alive = self._alive[:n].copy()
        return Compaction(
            n, self._ids[:n], self._vectors[:n], columns, alive, frozenset(self._dead)
        )

    def compacted(self, compaction: Compaction, built: tuple[Any, Any, dict[str, Any]]) -> None:
        """Swap in ``built`` (``compaction`` built off the loop): rows appended since it began
        are copied after the kept ones, and rows deleted since are flagged dead again."""
        import numpy as np

        ids, vectors, columns = built
        kept = int(np.count_nonzero(compaction.alive))
        start, end = compaction.size, self._size
        total = kept + end - start
        if total > len(ids):  # more appended meanwhile than the room left: grow once
            capacity = 2 * total
            ids = np.resize(ids, capacity)
            vectors = np.resize(vectors, (capacity, self.dims))
            columns = {c: np.resize(a, capacity) for c, a in columns.items()}
        ids[kept:total] = self._ids[start:end]
        vectors[kept:total] = self._vectors[start:end]
        for c in _FILTERED:
            columns[c][kept:total] = self._columns[c][start:end]
        alive = np.zeros(len(ids), np.bool_)
        alive[:total] = True
        dead = self._dead - compaction.dead
        if dead:
            alive[:total] &= ~np.isin(ids[:total], list(dead))
        self._ids, self._vectors, self._columns, self._alive = ids, vectors, columns, alive
        self._dead = dead
        self._resize(total)

    def detach(self) -> None:
        """The backend dropped this copy: its rows no longer count."""
        if self.tally is not None:
            self.tally.items -= self._size
            self.tally = None

    def _resize(self, size: int) -> None:
        if self.tally is not None:
            self.tally.items += size - self._size
        self._size = size

    def _grow(self, capacity: int) -> None:
        import numpy as np

        n = self._size
        ids: npt.NDArray[np.int64] = np.zeros(capacity, np.int64)
        vectors: npt.NDArray[np.float32] = np.zeros((capacity, self.dims), np.float32)
        alive: npt.NDArray[np.bool_] = np.zeros(capacity, np.bool_)
        columns = {c: np.zeros(capacity, np.int32) for c in _FILTERED}
        if self._ids is not None:
            ids[:n] = self._ids[:n]
            vectors[:n] = self._vectors[:n]
            alive[:n] = self._alive[:n]
            for c in _FILTERED:
                columns[c][:n] = self._columns[c][:n]
        self._ids, self._vectors, self._alive, self._columns = ids, vectors, alive, columns
