"""vLLM as an engine kind, its sleep mode a cheaper tier between loaded and stopped.

turnout spawns ``vllm serve MODEL --enable-sleep-mode`` like llama-server and speaks to it as
any OpenAI-compatible server. Evicted (or idle), a role of this kind is put to sleep instead
of stopped: vLLM's level 1 sleep copies the weights to CPU memory and drops the KV cache,
giving back the GPU while the process lives on, and waking it copies them back (vLLM's blog
reports 0.1-0.4 s for small models, where a cold start re-reads the weights, compiles and
captures graphs again). An explicit unload and the gateway's shutdown still stop it.

vLLM's endpoints for this (``vllm/entrypoints/serve/sleep/api_router.py``) exist only with
``VLLM_SERVER_DEV_MODE=1`` in the server's environment, which this kind sets:
``POST /sleep?level=1`` and ``POST /wake_up`` answer 200 (possibly before the engine is done,
says vLLM's own FIXME), so ``GET /is_sleeping`` -> ``{"is_sleeping": bool}`` is polled until
it agrees (newer vLLM aborts requests in flight on ``/sleep``; turnout never evicts a role
that has any). Level 2 would drop the weights too, and waking would need them reloaded by RPC:
no cheaper than a cold start for a swapper, so only level 1 is used.

Registered through ``register_engine_kinds`` like any plugin's kind (see ``builtin.collect``).
A role whose own ``command`` leaves out ``--enable-sleep-mode`` is stopped when evicted. A
sleeping process stays watched: one that dies asleep shows ``failed`` at once (``operations``).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Sequence

import aiohttp
import msgspec

from gateway.config.engines import Role
from gateway.engines.kinds import DriverContext, EngineKind, EngineKinds, spawn_driver
from gateway.engines.placement import Placement
from gateway.engines.process import EngineDriver, ProcessDriver
from gateway.errors import EngineStartError
from gateway.plugins.hookspecs import hookimpl

log = logging.getLogger("turnout.engines")

SLEEP_MODE = "--enable-sleep-mode"
DEV_MODE = "VLLM_SERVER_DEV_MODE"
VLLM_COMMAND = (
    "vllm",
    "serve",
    "${MODEL}",
    "--host",
    "${HOST}",
    "--port",
    "${PORT}",
    "--max-model-len",
    "${CTX}",
    SLEEP_MODE,
)
# Weights to CPU memory, KV cache dropped: the level meant for waking the same model again.
SLEEP_LEVEL = 1
POLL_SECONDS = 0.05


class SleepingDriver:
    """A vLLM process that sleeps when evicted and wakes on its next start."""

    def __init__(
        self, process: ProcessDriver, origin: str, role: Role, session: aiohttp.ClientSession
    ) -> None:
        self._process = process
        self._origin = origin
        self._role = role
        self._session = session
        self._asleep = False

    async def start(self) -> int | None:
        pid = self._process.pid
        if self._asleep and pid is not None:
            try:
                await self._wake()
                return pid
            except EngineStartError as exc:
                # Its process is gone now: a cold start still serves the request.
                log.warning("vLLM did not wake (%s): starting it afresh", exc)
        self._asleep = False
        return await self._process.start()

    async def _wake(self) -> None:
        try:
            await self._command("POST", "/wake_up", self._role.start_timeout_seconds)
            await self._until_sleeping(False, self._role.start_timeout_seconds)
        except BaseException:
            # A wake aborted or failed leaves nothing running, like any start.
            await self.stop()
            raise
        self._asleep = False

    async def sleep(self) -> bool:
        if self._process.pid is None:
            return False
        # Moving the weights to CPU memory is at most a load's worth of copying.
        seconds = self._role.start_timeout_seconds
        try:
            await self._command("POST", f"/sleep?level={SLEEP_LEVEL}", seconds)
            await self._until_sleeping(True, seconds)
        except EngineStartError as exc:
            log.warning("vLLM did not go to sleep (%s): stopping it instead", exc)
            await self.stop()
            return False
        self._asleep = True
        return True

    async def _command(self, method: str, path: str, seconds: float) -> None:
        try:
            async with self._session.request(
                method, self._origin + path, timeout=aiohttp.ClientTimeout(total=seconds)
            ) as response:
                text = await response.text()
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise EngineStartError(f"{method} {path} failed: {exc.__class__.__name__}") from None
        if response.status == 404:
            raise EngineStartError(f"{method} {path}: 404; is {DEV_MODE}=1 in its environment?")
        if response.status != 200:
            raise EngineStartError(f"{method} {path} answered HTTP {response.status}: {text[:200]}")

    async def _until_sleeping(self, wanted: bool, seconds: float) -> None:
        """Poll ``/is_sleeping`` until it says ``wanted``: vLLM may answer before it is done."""
        url = self._origin + "/is_sleeping"
        timeout = aiohttp.ClientTimeout(total=2)
        try:
            async with asyncio.timeout(seconds):
                while True:
                    async with self._session.get(url, timeout=timeout) as response:
                        if response.status == 200:
                            body = await response.json(content_type=None)
                            if isinstance(body, dict) and body.get("is_sleeping") is wanted:
                                return
                    await asyncio.sleep(POLL_SECONDS)
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            raise EngineStartError(
                f"/is_sleeping never said {str(wanted).lower()} ({exc.__class__.__name__})"
            ) from None

    async def wait_exit(self) -> int:
        return await self._process.wait_exit()

    async def stop(self) -> None:
        self._asleep = False
        await self._process.stop()

    def exit_detail(self) -> str:
        return self._process.exit_detail()


def tensor_parallel(command: Sequence[str], placement: Placement) -> list[str]:
    """vLLM uses one GPU unless told: placed on several, it must shard the model over them."""
    if len(placement.devices) < 2 or {"-tp", "--tensor-parallel-size"} & set(command):
        return []
    return ["--tensor-parallel-size", str(len(placement.devices))]


def vllm_driver(context: DriverContext) -> EngineDriver:
    """Spawned as any kind's process (placed on its GPUs), with sleep mode's endpoints on."""
    role = msgspec.structs.replace(context.role, env={DEV_MODE: "1", **context.role.env})
    driver = spawn_driver(dataclasses.replace(context, role=role))
    if SLEEP_MODE not in context.command or not isinstance(driver, ProcessDriver):
        return driver
    return SleepingDriver(driver, f"http://127.0.0.1:{context.port}", role, context.session)


VLLM = EngineKind(
    name="vllm",
    adapter="openai-compatible",
    driver=vllm_driver,
    command=VLLM_COMMAND,
    spawns=True,
    # vLLM's server listens only once its model is loaded: /health means ready, no warm-up.
    base_url="forbidden",
    model_file=False,
    placement_args=tensor_parallel,
)


@hookimpl
def register_engine_kinds(kinds: EngineKinds) -> None:
    kinds.register(VLLM)
