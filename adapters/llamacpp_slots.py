"""llama-server's slot files: the ``SlotStore`` capability (``gateway.engines.kv_slots``).

``--slot-save-path DIR`` enables ``POST /slots/{id}?action=save|restore`` with a body
``{"filename": "<plain name inside DIR>"}``; ``GET /slots`` (on by default, ``--no-slots`` turns
it off) lists each slot with ``n_prompt_tokens`` once it has served a task. A save answers
``{"n_saved": tokens, "n_written": bytes}``, a restore ``{"n_restored": tokens, "n_read": bytes}``;
a corrupt or foreign file is refused with HTTP 400 and leaves the slot empty.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import aiohttp
import msgspec

from adapters.http import mapped_client_errors
from gateway.config.upstreams import Provider
from gateway.errors import UpstreamProtocolError, UpstreamStatus


class _Slot(msgspec.Struct):
    id: int
    is_processing: bool = False
    n_prompt_tokens: int = 0


_slots = msgspec.json.Decoder(list[_Slot])
_object = msgspec.json.Decoder(dict[str, Any])
_encode = msgspec.json.Encoder().encode

# Slot files hold the whole KV cache of a slot: gigabytes for a long prompt on a large model.
# The callers bound the whole save or restore; a single request gets no shorter limit.
_TIMEOUT = aiohttp.ClientTimeout(total=None, sock_connect=5)


class LlamaCppSlots:
    """Mixed into the llama.cpp adapter: save and restore slots over llama-server's HTTP API."""

    provider: Provider
    _session: aiohttp.ClientSession

    def _slots_url(self, path: str = "") -> str:
        parts = urlsplit(self.provider.base_url)
        return urlunsplit((parts.scheme, parts.netloc, "/slots" + path, "", ""))

    def slot_save_args(self, command: Sequence[str], directory: str) -> list[str] | None:
        # Appending to anything but llama-server itself (a wrapper script, a container runner,
        # another program) could break its start; a command that already names a slot
        # directory is the user's to manage.
        if not command or not os.path.basename(command[0]).startswith("llama-server"):
            return None
        if "--slot-save-path" in command:
            return None
        return ["--slot-save-path", directory]

    async def filled_slots(self) -> list[int]:
        body = await self._call("GET", self._slots_url(), None)
        try:
            slots = _slots.decode(body)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            raise UpstreamProtocolError(f"GET /slots answered an unexpected shape: {exc}") from None
        return [s.id for s in slots if s.n_prompt_tokens > 0 and not s.is_processing]

    async def save_slot(self, slot: int, filename: str) -> int:
        answer = await self._action(slot, "save", filename)
        return _int(answer, "n_written")

    async def restore_slot(self, slot: int, filename: str) -> int:
        answer = await self._action(slot, "restore", filename)
        return _int(answer, "n_restored")

    async def _action(self, slot: int, action: str, filename: str) -> dict[str, Any]:
        url = self._slots_url(f"/{slot}") + f"?action={action}"
        body = await self._call("POST", url, _encode({"filename": filename}))
        try:
            return _object.decode(body)
        except (msgspec.DecodeError, msgspec.ValidationError):
            raise UpstreamProtocolError(f"slot {action} answered no JSON object") from None

    async def _call(self, method: str, url: str, body: bytes | None) -> bytes:
        headers = {"Content-Type": "application/json"} if body is not None else None
        with mapped_client_errors():
            async with self._session.request(
                method, url, data=body, headers=headers, timeout=_TIMEOUT
            ) as response:
                data = await response.read()
                if response.status >= 400:
                    raise UpstreamStatus(response.status, data)
                return data


def _int(answer: dict[str, Any], field: str) -> int:
    value = answer.get(field)
    return value if isinstance(value, int) else 0
