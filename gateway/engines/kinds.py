"""Engine kinds, registered rather than branched on: everything turnout knows about one kind.

A role names its kind (``roles.X.engine``); every place that used to ask ``role.engine == ...``
asks the role's ``EngineKind`` instead: which adapter speaks to it, the default command, the
name requests carry, whether turnout spawns a process (and so picks a port), whether "healthy"
needs a warm-up request, how its driver is built, and what the role's fields must look like.

Kinds arrive through the ``register_engine_kinds`` plugin hook. The built-in ones
(``gateway/engines/builtin.py``: llamacpp, mlx, ollama, external; ``vllm.py`` and
``llamacpp_router.py``, one module each) register through it exactly as a third-party kind
does. Adding a kind is one new module and one registration line::

    # my_engine.py
    from gateway.engines.kinds import EngineKind, spawn_driver
    from gateway.plugins.hookspecs import hookimpl

    @hookimpl
    def register_engine_kinds(kinds):
        kinds.register(EngineKind(
            name="sglang", adapter="openai-compatible", driver=spawn_driver, spawns=True,
            command=("python", "-m", "sglang.launch_server", "--model-path", "${MODEL}",
                     "--host", "${HOST}", "--port", "${PORT}"),
        ))

    # pyproject.toml of the plugin's package (the registration line)
    [project.entry-points.turnout]
    sglang = "my_engine"

with ``plugins: {enabled: [sglang]}`` in routing.yaml (a built-in module's line is its entry
in ``builtin.MODULES`` instead). ``tests/test_engine_kinds.py`` does
exactly this with a kind whose engine is a real loopback server process.
"""

from __future__ import annotations

import shutil
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import aiohttp

from gateway.config.engines import Role
from gateway.engines.gpus import GpuPlacer
from gateway.engines.kv_slots import KvCacheKeeper
from gateway.engines.placement import Placement
from gateway.engines.process import EngineDriver, Launch, ProcessDriver, render_command

# What a kind demands of ``roles.X.base_url``: servers turnout does not start need one, engines
# it spawns listen where turnout tells them (``port``).
BaseUrl = Literal["required", "forbidden", "optional"]


@dataclass(frozen=True, slots=True)
class DriverContext:
    """What a kind's driver factory may use to build one role's driver."""

    name: str
    role: Role
    kind: EngineKind
    # The loopback port picked for an engine turnout spawns (0 for kinds that spawn nothing).
    port: int
    log_path: Path
    session: aiohttp.ClientSession
    # The adapter of the role's provider (``role:<name>``): some kinds drive the engine
    # through it (Ollama loads and unloads models by API; llama.cpp saves KV slots).
    adapter: object | None
    kv_cache: KvCacheKeeper
    # Puts a spawned engine on the GPU(s) with room at each start; None: never placed.
    placer: GpuPlacer | None = None

    @property
    def command(self) -> list[str]:
        """The kind's command line for this role (the role's own ``command`` wins)."""
        return render_command(
            self.name, self.role, self.kind.template(self.role), "127.0.0.1", self.port
        )


DriverFactory = Callable[[DriverContext], EngineDriver]


def model_name(name: str, role: Role) -> str:
    """The default upstream model: the role's ``model`` (servers that host several need it)."""
    return role.model


def no_problems(where: str, role: Role) -> list[str]:
    return []


def no_args(command: Sequence[str]) -> list[str]:
    return []


def no_placement_args(command: Sequence[str], placement: Placement) -> list[str]:
    return []


def spawn_driver(context: DriverContext) -> EngineDriver:
    """A process turnout starts from the kind's command; its KV cache kept if the kind can."""
    kind, role = context.kind, context.role

    def process(extra: Sequence[str]) -> EngineDriver:
        warmup = role.warmup if role.warmup is not None else kind.warmup
        command = [*context.command, *extra]
        command += kind.command_args(command)
        return ProcessDriver(
            context.name,
            role,
            command,
            context.port,
            context.log_path,
            context.session,
            warmup=warmup,
            upstream_model=role.upstream_model or kind.upstream_model(context.name, role),
            launch=_launcher(context, command),
        )

    if not kind.kv_slots:
        return process(())
    return context.kv_cache.wrap(context.name, role, context.adapter, process, kind.command)


def _launcher(
    context: DriverContext, command: Sequence[str]
) -> Callable[[], Awaitable[Launch]] | None:
    """Where each start of the engine goes: its GPUs, as environment and the kind's arguments."""
    placer, kind = context.placer, context.kind
    if placer is None:
        return None

    async def launch() -> Launch:
        placement = await placer.place(context.name, context.role)
        return Launch(tuple(kind.placement_args(command, placement)), placement.env())

    return launch


@dataclass(frozen=True, slots=True)
class EngineKind:
    name: str
    # The adapter kind of the role's provider (``role:<name>``) once the engine runs.
    adapter: str
    driver: DriverFactory
    # Default command template (${PORT} ${MODEL} ${HOST} ${CTX} ${ROLE}); a role's own wins.
    command: tuple[str, ...] = ()
    # turnout starts a process for it (and picks its port); else it lives elsewhere.
    spawns: bool = False
    # Send one 1-token request before "ready" unless the role says otherwise.
    warmup: bool = False
    # The ``model`` requests to a role of this kind carry, unless the role sets upstream_model.
    upstream_model: Callable[[str, Role], str] = model_name
    base_url: BaseUrl = "optional"
    # ``roles.X.model`` must not be empty (an unset ${VAR} leaves "").
    needs_model: bool = True
    # turnout loads and unloads it: it takes a slot in its group and may be evicted. Servers
    # turnout does not control (external) are not ours to evict.
    managed: bool = True
    # Capability: the engine's adapter can save and restore KV slots (``kv_slots.SlotStore``),
    # so the role's cache is kept across swaps.
    kv_slots: bool = False
    # Anything else this kind demands of a role; problems name the key path (``where``).
    validate: Callable[[str, Role], list[str]] = no_problems
    # Path of the engine's own Prometheus metrics, re-exported on turnout's /metrics with a
    # role label (engine_metrics.py); "": it has none.
    metrics_path: str = ""
    # Arguments added to a spawned role's rendered command: what turnout relies on that a
    # role's own command may lack (llama-server's --metrics).
    command_args: Callable[[Sequence[str]], list[str]] = no_args
    # Arguments that put the engine where its placement says, beyond CUDA_VISIBLE_DEVICES
    # (llama-server's --tensor-split).
    placement_args: Callable[[Sequence[str], Placement], list[str]] = no_placement_args
    # ``roles.X.model`` is a local file, checked before a start; else a name the engine
    # resolves itself (vLLM's Hugging Face repo ids).
    model_file: bool = True

    def template(self, role: Role) -> tuple[str, ...]:
        return role.command or self.command

    def problems(self, where: str, role: Role) -> list[str]:
        problems: list[str] = []
        if self.needs_model and not role.model.strip():
            # An unset ${VAR} leaves "": llama-server would start in router mode and refuse
            # every request with 400, long after the gateway said it was fine.
            problems.append(
                f"{where}.model: expected a model file (or an Ollama model name), got an empty "
                "value; is an environment variable in it unset?"
            )
        if self.base_url == "required" and not role.base_url:
            problems.append(f"{where}.base_url: expected the URL of the {self.name} server")
        if self.base_url == "forbidden" and role.base_url:
            problems.append(
                f"{where}.base_url: turnout starts {self.name} engines itself; use port instead"
            )
        return problems + self.validate(where, role)

    def missing(self, role: Role) -> str:
        """Why a role of this kind cannot possibly start here (no binary, no model file), or ''."""
        if not self.spawns:
            return ""
        template = self.template(role)
        if not template or shutil.which(template[0]) is None:
            return f"executable {template[0] if template else ''!r} not found"
        if self.model_file and "${MODEL}" in " ".join(template) and not Path(role.model).exists():
            return f"model {role.model!r} not found"
        return ""


class EngineKinds:
    """The registry plugins fill through ``register_engine_kinds``."""

    def __init__(self) -> None:
        self._kinds: dict[str, EngineKind] = {}

    def register(self, kind: EngineKind) -> None:
        if kind.name in self._kinds:
            raise ValueError(f"engine kind {kind.name!r} is registered twice")
        self._kinds[kind.name] = kind

    def __getitem__(self, name: str) -> EngineKind:
        return self._kinds[name]

    def __contains__(self, name: object) -> bool:
        return name in self._kinds

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._kinds))

    def of(self, role: Role) -> EngineKind:
        return self._kinds[role.engine]

    def role_problems(self, roles: Mapping[str, Role]) -> list[str]:
        """Every role's kind is known and its fields fit that kind; one line per problem."""
        problems: list[str] = []
        for name, role in roles.items():
            where = f"roles.{name}"
            kind = self._kinds.get(role.engine)
            if kind is None:
                problems.append(
                    f"{where}.engine: unknown engine kind {role.engine!r} "
                    f"(known: {', '.join(self)}); a plugin in plugins.enabled may add it"
                )
            else:
                problems.extend(kind.problems(where, role))
        return problems

    def missing_parts(self, role: Role) -> str:
        kind = self._kinds.get(role.engine)
        return kind.missing(role) if kind is not None else ""

    def upstream_model(self, name: str, role: Role) -> str:
        if role.upstream_model:
            return role.upstream_model
        return self._kinds[role.engine].upstream_model(name, role)

    def unmanaged(self, roles: Mapping[str, Role]) -> frozenset[str]:
        """Roles whose engine turnout neither loads nor evicts."""
        return frozenset(
            n for n, r in roles.items() if r.engine in self._kinds and not self.of(r).managed
        )
