"""The built-in engine kinds, registered through ``register_engine_kinds`` like any plugin's.

Nothing else in turnout names these kinds: the rest asks ``gateway.engines.kinds``.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from typing import cast

import pluggy

from gateway.config.engines import Role
from gateway.engines import llamacpp_router, vllm
from gateway.engines.kinds import DriverContext, EngineKind, EngineKinds, spawn_driver
from gateway.engines.placement import Placement
from gateway.engines.process import EngineDriver, ExternalDriver, HostedModelDriver, ModelHost
from gateway.errors import PluginError
from gateway.plugins import hookspecs
from gateway.plugins.hookspecs import hookimpl

LLAMACPP_COMMAND = (
    "llama-server",
    "-m",
    "${MODEL}",
    "--host",
    "${HOST}",
    "--port",
    "${PORT}",
    "-c",
    "${CTX}",
    "--jinja",
    "--no-webui",
    "--metrics",
    "-a",
    "${ROLE}",
)
MLX_COMMAND = ("mlx_lm.server", "--model", "${MODEL}", "--host", "${HOST}", "--port", "${PORT}")


def _role_name(name: str, role: Role) -> str:
    # llama-server (one model per process) ignores ``model``, so the role name shows in replies.
    return name


def _mlx_alias(name: str, role: Role) -> str:
    # mlx_lm.server would look any other name up on the Hugging Face hub: its own alias for
    # the loaded model.
    return "default_model"


def _runs_llama_server(command: Sequence[str]) -> bool:
    # Adding arguments to anything else (a wrapper script, a container runner) could break it.
    return bool(command) and os.path.basename(command[0]).startswith("llama-server")


def _llamacpp_args(command: Sequence[str]) -> list[str]:
    # Its own /metrics, re-exported labelled by role, even when a role's own command omits it.
    if not _runs_llama_server(command) or "--metrics" in command:
        return []
    return ["--metrics"]


def _llamacpp_split(command: Sequence[str], placement: Placement) -> list[str]:
    # CUDA_VISIBLE_DEVICES renumbers the chosen GPUs from 0, in the order of the split.
    if len(placement.split) < 2 or not _runs_llama_server(command):
        return []
    if {"-ts", "--tensor-split", "-dev", "--device"} & set(command):
        return []  # the role's command places it itself
    return ["--tensor-split", ",".join(str(share) for share in placement.split)]


def _hosted_model(context: DriverContext) -> EngineDriver:
    # The Ollama adapter doubles as the model host: load and unload are API calls.
    return HostedModelDriver(context.role, cast(ModelHost, context.adapter))


def _external(context: DriverContext) -> EngineDriver:
    return ExternalDriver(context.role, context.session)


BUILTIN = (
    EngineKind(
        name="llamacpp",
        adapter="llamacpp",
        driver=spawn_driver,
        command=LLAMACPP_COMMAND,
        spawns=True,
        upstream_model=_role_name,
        base_url="forbidden",
        kv_slots=True,
        metrics_path="/metrics",
        command_args=_llamacpp_args,
        placement_args=_llamacpp_split,
    ),
    # mlx_lm.server answers /health before it has loaded the model (it loads on the first
    # request): warm up by default.
    EngineKind(
        name="mlx",
        adapter="mlx",
        driver=spawn_driver,
        command=MLX_COMMAND,
        spawns=True,
        warmup=True,
        upstream_model=_mlx_alias,
        base_url="forbidden",
    ),
    EngineKind(name="ollama", adapter="ollama", driver=_hosted_model, base_url="required"),
    # Any OpenAI-compatible server turnout does not start: only its health is ours.
    EngineKind(
        name="external",
        adapter="openai-compatible",
        driver=_external,
        base_url="required",
        needs_model=False,
        managed=False,
    ),
)


# Built-in kinds in modules of their own, each registering through the hook as a plugin does:
# adding one is its module and its line here.
MODULES: tuple[tuple[str, object], ...] = (
    ("engine-kind-vllm", vllm),
    ("engine-kind-llamacpp-router", llamacpp_router),
)


def builtin_plugins() -> list[tuple[str, object]]:
    """The plugins that register the built-in kinds: this module and ``MODULES``."""
    return [("engine-kinds", sys.modules[__name__]), *MODULES]


@hookimpl
def register_engine_kinds(kinds: EngineKinds) -> None:
    for kind in BUILTIN:
        kinds.register(kind)


def collect(plugins: list[tuple[str, object]]) -> EngineKinds:
    """The built-in kinds plus those ``plugins`` register, through the one hook."""
    manager = pluggy.PluginManager("turnout")
    manager.add_hookspecs(hookspecs)
    # pluggy calls the last registered first: in reverse, hooks run in the listed order.
    for name, plugin in reversed([*builtin_plugins(), *plugins]):
        manager.register(plugin, name=name)
    kinds = EngineKinds()
    try:
        manager.hook.register_engine_kinds(kinds=kinds)
    except Exception as exc:
        raise PluginError(f"registering engine kinds failed: {exc}") from exc
    return kinds


def builtin_kinds() -> EngineKinds:
    return collect([])
