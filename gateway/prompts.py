"""System prompts composed from layer files (seed 002): persona → rules → overlay → task.

Per logical model (``prompts.routes``) or agent (``prompts.agents``, which wins), a prompt is
composed once, when the gateway is built: the files are read then and never again, a missing
required layer or a prompt over ``prompts.max_chars`` stops start-up with the path in the
message, a missing optional layer is left out. The map is static (seed 002: no runtime
sniffing of what a request looks like).

A built-in plugin applies them: it puts the composed prompt in front of the request's own
system message, merged into one, because many chat templates accept a single system
message only, at the start.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import msgspec

from gateway.config.schema import Layer, Prompt, Prompts
from gateway.errors import PromptError
from gateway.plugins.context import RequestContext
from gateway.plugins.hookspecs import hookimpl

log = logging.getLogger("turnout.prompts")

LAYERS = ("persona", "rules", "overlay", "task")
SEPARATOR = "\n\n"
# Roles a conversation's leading instructions come in ("developer" is OpenAI's newer name).
_SYSTEM_ROLES = ("system", "developer")

_MESSAGES = msgspec.json.Decoder(list[msgspec.Raw])
_OBJECT = msgspec.json.Decoder(dict[str, Any])
_encode = msgspec.json.Encoder().encode


def compose(prompt: Prompt, layers_dir: Path, max_chars: int, where: str) -> str:
    """The layers' text joined in order; ``where`` (``prompts.routes.coder``) names it in errors."""
    parts: list[tuple[str, Path, str]] = []
    for name in LAYERS:
        layer: str | Layer | None = getattr(prompt, name)
        if layer is None:
            continue
        file, required = (layer, True) if isinstance(layer, str) else (layer.file, layer.required)
        path = layers_dir / file
        text = _read(path, required, f"{where}.{name}")
        if text:
            parts.append((name, path, text))
    composed = SEPARATOR.join(text for _, _, text in parts)
    if len(composed) > max_chars:
        sizes = ", ".join(f"{name} {path} ({len(text)})" for name, path, text in parts)
        raise PromptError(
            f"{where}: the composed prompt has {len(composed)} characters, over prompts.max_chars "
            f"({max_chars}); layers: {sizes}"
        )
    return composed


def _read(path: Path, required: bool, where: str) -> str:
    try:
        text = path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        if required:
            raise PromptError(f"{where}: required layer file {path} does not exist") from None
        log.debug("%s: optional layer file %s does not exist; left out", where, path)
        return ""
    except (OSError, UnicodeDecodeError) as exc:
        # Present but unreadable is a mistake even for an optional layer.
        raise PromptError(f"{where}: cannot read layer file {path}: {exc}") from None
    if not text and required:
        raise PromptError(f"{where}: required layer file {path} is empty")
    return text


def with_system(messages: msgspec.Raw, prompt: str) -> msgspec.Raw:
    """``messages`` with ``prompt`` leading the first system message (or as a new one).

    Only the first message is decoded; the others travel on as raw JSON.
    """
    items = _MESSAGES.decode(messages)
    first = _OBJECT.decode(items[0]) if items else None
    if first is not None and first.get("role") in _SYSTEM_ROLES:
        content = first.get("content")
        if isinstance(content, list):
            first["content"] = [{"type": "text", "text": prompt}, *content]
        elif isinstance(content, str) and content:
            first["content"] = prompt + SEPARATOR + content
        else:
            first["content"] = prompt
        items[0] = msgspec.Raw(_encode(first))
    else:
        items.insert(0, msgspec.Raw(_encode({"role": "system", "content": prompt})))
    return msgspec.Raw(_encode(items))


class PromptLayers:
    """The built-in plugin that puts composed prompts in front of chat requests."""

    def __init__(self, routes: dict[str, str], agents: dict[str, str]) -> None:
        self._routes = routes
        self._agents = agents

    @classmethod
    def from_config(cls, config: Prompts) -> PromptLayers | None:
        """Composes every configured prompt now; None when none is configured."""
        if not config.routes and not config.agents:
            return None
        base = Path(config.layers_dir)

        def composed(section: str, prompts: dict[str, Prompt]) -> dict[str, str]:
            texts = {
                key: compose(prompt, base, config.max_chars, f"prompts.{section}.{key}")
                for key, prompt in prompts.items()
            }
            return {key: text for key, text in texts.items() if text}

        return cls(composed("routes", config.routes), composed("agents", config.agents))

    def prompt_for(self, agent_id: str, model: str) -> str | None:
        return self._agents.get(agent_id) or self._routes.get(model)

    # Synchronous on purpose: pure CPU work, so the manager runs it without arming a timeout.
    @hookimpl(tryfirst=True)
    def before_upstream(self, request: RequestContext) -> None:
        prompt = self.prompt_for(request.identity.agent_id, request.model)
        messages = request.fields.get("messages")
        if prompt is not None and messages is not None:
            request.fields["messages"] = with_system(messages, prompt)
