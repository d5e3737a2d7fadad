"""The python executor: an in-process function named by import path (``package.module:function``).

The function is imported when the tool is registered, so a wrong path stops start-up instead
of failing on the first call. It is called with the arguments as keywords, plus ``caller``
when it has a parameter of that name (set by turnout: a model cannot pass its own).
Coroutine functions run on the event loop; plain functions on a thread of ``ToolThreads``,
because a blocking call on the loop would stall every request.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import importlib
import inspect
import threading
from collections.abc import Callable
from typing import Any

from gateway.errors import ToolFailed
from gateway.plugins.tools.registry import Caller, ToolFactory, ToolSpec
from gateway.plugins.tools.settings import ToolDefinition


def load_function(path: str) -> Callable[..., Any]:
    """``package.module:attr`` (or ``package.module.attr``) → the callable it names."""
    module_name, colon, attribute = path.partition(":")
    if not colon:
        module_name, _, attribute = path.rpartition(".")
    if not module_name or not attribute:
        raise ValueError(f"expected an import path such as 'package.module:function', got {path!r}")
    try:
        target: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise ValueError(f"cannot import {module_name!r}: {exc}") from None
    for part in attribute.split("."):
        try:
            target = getattr(target, part)
        except AttributeError:
            raise ValueError(f"{module_name!r} has no attribute {attribute!r}") from None
    if not callable(target):
        raise ValueError(f"{path!r} is not callable")
    function: Callable[..., Any] = target
    return function


class ToolThreads:
    """At most ``limit`` threads running plain tool functions, apart from everything else.

    Not the loop's default executor: that one also resolves upstream host names and serves
    the control plane, and a tool stuck past its timeout kept its worker (a thread cannot be
    stopped), so a few hung tools once delayed a key revocation by 24 s. Here a stuck tool
    holds one of this pool's slots until it returns; with every slot held, further calls are
    refused at once with a tool error instead of queueing behind them. Each call gets a fresh
    daemon thread (tens of microseconds, small beside any tool), so a stuck one never blocks
    the process from exiting either, as ``ThreadPoolExecutor``'s joined workers would.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._slots = threading.BoundedSemaphore(limit)
        self._running = 0

    @property
    def running(self) -> int:
        """Threads still running, including those whose callers gave up (timed out)."""
        return self._running

    async def run(self, function: Callable[[], Any]) -> Any:
        if not self._slots.acquire(blocking=False):
            raise ToolFailed(
                f"all {self.limit} python tool threads are busy (calls still running, some past"
                " their timeout); try again later or raise tools.python_threads"
            )
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        self._running += 1
        thread = threading.Thread(
            target=self._work, args=(function, loop, future), name="turnout-tool", daemon=True
        )
        try:
            thread.start()
        except RuntimeError as exc:  # the OS would not give a thread
            self._release()
            raise ToolFailed(f"cannot start a thread for the tool: {exc}") from None
        return await future

    def _work(
        self,
        function: Callable[[], Any],
        loop: asyncio.AbstractEventLoop,
        future: asyncio.Future[Any],
    ) -> None:
        try:
            result: Any = function()
            error: BaseException | None = None
        except BaseException as exc:
            result, error = None, exc
        # The slot is freed when the function returns, not when its caller stops waiting.
        with contextlib.suppress(RuntimeError):  # the loop closed while the tool ran
            loop.call_soon_threadsafe(self._settle, future, result, error)
            return
        self._slots.release()

    def _settle(
        self, future: asyncio.Future[Any], result: Any, error: BaseException | None
    ) -> None:
        self._release()
        if future.done():  # the caller timed out or was cancelled
            return
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)

    def _release(self) -> None:
        self._running -= 1
        self._slots.release()


class PythonTool:
    def __init__(self, spec: ToolSpec, function: Callable[..., Any], threads: ToolThreads) -> None:
        self._spec = spec
        self._function = function
        self._threads = threads
        self._is_async = inspect.iscoroutinefunction(function)
        self._wants_caller = "caller" in inspect.signature(function).parameters

    @property
    def spec(self) -> ToolSpec:
        return self._spec

    async def run(self, arguments: dict[str, Any], caller: Caller) -> Any:
        keywords = dict(arguments)
        if self._wants_caller:
            keywords["caller"] = caller
        if self._is_async:
            return await self._function(**keywords)
        return await self._threads.run(functools.partial(self._function, **keywords))


# Used when no pool is given (tests, embedders); the plugin passes the configured one.
DEFAULT_THREADS = 8


def python_tool(definition: ToolDefinition, threads: ToolThreads | None = None) -> PythonTool:
    """The ``python`` executor kind."""
    return PythonTool(
        ToolSpec.from_definition(definition),
        load_function(definition.target),
        threads if threads is not None else ToolThreads(DEFAULT_THREADS),
    )


def python_kind(threads: ToolThreads) -> ToolFactory:
    """The ``python`` kind with every tool sharing ``threads``."""
    return functools.partial(python_tool, threads=threads)
