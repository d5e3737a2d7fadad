"""The SQL of the memory backends (``store.py``, ``postgres_store.py``): filters, rows, the KNN
search and hashes (``sqlite-vec`` only).

Pure: each function builds a statement or its parameters from a scope; nothing here opens a
connection.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import msgspec

from gateway.plugins.memory.items import KINDS, MemoryItem, NewItem, Scope

if TYPE_CHECKING:
    from gateway.plugins.memory.backends import Vectors

COLUMNS = "id, agent_id, kind, content, project, channel, session_id, meta, created_at"
_decode_meta = msgspec.json.Decoder(dict[str, Any])
_encode_meta = msgspec.json.Encoder().encode


def item_of(row: Sequence[Any]) -> MemoryItem:
    """An item from a row of ``COLUMNS`` (either backend's)."""
    id_, agent, kind, content, project, channel, session, meta, created_at = row
    return MemoryItem(
        id=id_,
        agent_id=agent,
        kind=kind,
        content=content,
        project=project,
        channel=channel,
        session_id=session,
        meta=_decode_meta.decode(meta),
        created_at=created_at,
    )


def row_of(item_id: int, item: NewItem, now: float) -> tuple[Any, ...]:
    """A new item's values for ``COLUMNS``, in order (either backend's insert, before the
    columns of its own); ``now`` when the item does not say when it was made."""
    return (
        item_id,
        item.agent_id,
        item.kind,
        item.content,
        item.project,
        item.channel,
        item.session_id,
        _encode_meta(item.meta).decode(),
        item.created_at or now,
    )


def unit_vectors(items: Sequence[NewItem], vectors: Vectors) -> Vectors:
    """``vectors`` as one contiguous float32 row per item, or a ValueError."""
    import numpy as np

    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    if vectors.ndim != 2 or len(vectors) != len(items):
        raise ValueError(f"expected {len(items)} vectors, got an array of {vectors.shape}")
    return vectors


def code(text: str) -> int:
    """A signed 64-bit hash for vec0's integer metadata columns; 0 for "none"."""
    if not text:
        return 0
    digest = hashlib.blake2b(text.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True) or 1


KIND_CODES = {kind: i + 1 for i, kind in enumerate(KINDS)}


def items_where(scope: Scope, ids: Sequence[int] = ()) -> tuple[str, list[Any]]:
    """A WHERE clause over memory_items for a scope (and optionally some ids)."""
    conditions: list[str] = []
    params: list[Any] = []
    for column, value in (
        ("agent_id", scope.agent_id),
        ("project", scope.project),
        ("channel", scope.channel),
        ("session_id", scope.session_id),
    ):
        if value is not None:
            conditions.append(f"{column} = ?")
            params.append(value)
    if scope.kinds:
        conditions.append(f"kind IN ({', '.join('?' * len(scope.kinds))})")
        params.extend(scope.kinds)
    if ids:
        conditions.append(f"id IN ({', '.join('?' * len(ids))})")
        params.extend(ids)
    return ("WHERE " + " AND ".join(conditions) if conditions else ""), params


def knn_sql(scope: Scope, shards: int) -> str:
    """One statement for a search: each shard's nearest codes, then the exact re-rank.

    The coarse pass filters on the hashed metadata inside vec0; the re-rank checks the real
    values on memory_items and orders the candidates by exact cosine distance, so only the
    best ``:m`` rows come back to Python. Parameters: ``:q`` (the query's code), ``:k``
    (candidates per shard), ``:vector`` (the query, float32), ``:m``, and for what the scope
    names, ``:agent`` and ``:project``/``:channel``/``:session`` with their ``_code`` hashes.
    """
    # The exact filters' columns carry a unary + so SQLite cannot pick an index on them
    # (scanning all of an agent's items) over looking the few candidates up by id.
    coarse = exact = ""
    if scope.agent_id is not None:
        coarse += " AND agent_id = :agent"
        exact += " AND +agent_id = :agent"
    for column, name, value in (
        ("project", "project", scope.project),
        ("channel", "channel", scope.channel),
        ("session_id", "session", scope.session_id),
    ):
        if value is not None:
            coarse += f" AND {name} = :{name}_code"
            exact += f" AND +{column} = :{name}"
    if scope.kinds:
        # Kinds are checked against KINDS before they get here, so inlining them is safe.
        coarse += f" AND kind IN ({', '.join(str(KIND_CODES[k]) for k in scope.kinds)})"
        exact += f" AND +kind IN ({', '.join(repr(k) for k in scope.kinds)})"
    # Each KNN sits in its own subquery: vec0 takes k and the partition from its own WHERE.
    per_shard = " UNION ALL ".join(
        "SELECT id FROM (SELECT id FROM memory_vectors"
        f" WHERE bits MATCH vec_bit(:q) AND k = :k{coarse} AND shard = {shard})"
        for shard in range(shards)
    )
    # The inner query ranks the candidates reading no text; only the best :m rows are read whole.
    return (
        f"SELECT {COLUMNS}, best.distance FROM ("
        "SELECT id, vec_distance_cosine(embedding, :vector) AS distance"
        f" FROM memory_items WHERE id IN ({per_shard}){exact}"
        " ORDER BY distance, id DESC LIMIT :m"
        ") AS best JOIN memory_items USING (id) ORDER BY best.distance, id DESC"
    )


def knn_params(scope: Scope, query: Vectors, k: int, m: int) -> dict[str, Any]:
    params: dict[str, Any] = {
        "q": bit_codes(query[None, :])[0].tobytes(),
        "k": k,
        "vector": query.tobytes(),
        "m": m,
    }
    if scope.agent_id is not None:
        params["agent"] = scope.agent_id
    for name, value in (
        ("project", scope.project),
        ("channel", scope.channel),
        ("session", scope.session_id),
    ):
        if value is not None:
            params[name] = value
            params[f"{name}_code"] = code(value)
    return params


def bit_codes(vectors: Vectors) -> Any:
    """One bit per dimension, set where the component is positive (sqlite-vec's bit[] layout)."""
    import numpy as np

    return np.packbits(vectors > 0, axis=1)
