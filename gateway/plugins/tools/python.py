"""The python executor: an in-process function named by import path (``package.module:function``).

The function is imported when the tool is registered, so a wrong path stops start-up instead
of failing on the first call. It is called with the arguments as keywords, plus ``caller``
when it has a parameter of that name (set by turnout: a model cannot pass its own).
Coroutine functions run on the event loop; plain functions in a worker thread, because a
blocking call on the loop would stall every request. A worker thread cannot be stopped, so a
plain function that overruns its timeout is reported as timed out but runs on to its end.
"""

from __future__ import annotations

import asyncio
import functools
import importlib
import inspect
from collections.abc import Callable
from typing import Any

from gateway.config import ToolDefinition
from gateway.plugins.tools.registry import Caller, ToolSpec


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


class PythonTool:
    def __init__(self, spec: ToolSpec, function: Callable[..., Any]) -> None:
        self._spec = spec
        self._function = function
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
        return await asyncio.to_thread(functools.partial(self._function, **keywords))


def python_tool(definition: ToolDefinition) -> PythonTool:
    """The ``python`` executor kind."""
    return PythonTool(ToolSpec.from_definition(definition), load_function(definition.target))
