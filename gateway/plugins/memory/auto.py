"""Automatic mode: recall into the latest user message before the upstream call, remember after.

For the models and agents ``memory.auto`` names. Before: the items most relevant to the latest
user message, and the latest turns of the same session that the request does not already
carry, go in front of that message's text (not into the system prompt: see ``with_memory``).
After: the user message and the reply are remembered as a
``conversation`` item of that session, in the background. Sessions are the caller's
(``metadata.session_id``), not the model's, so a conversation
carries over when the client switches models (seed 001).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from fnmatch import fnmatchcase
from typing import Any

import msgspec

from gateway.errors import StoreUnavailable
from gateway.plugins.context import Exchanged, RequestContext
from gateway.plugins.memory.items import Hit, MemoryItem, NewItem, Scope
from gateway.plugins.memory.service import MemoryService
from gateway.plugins.memory.settings import MemoryAuto
from gateway.plugins.memory.summary import timestamp

HEADER = "Memory (what you remember from before; use it where it helps, do not recite it):"
TURNS_HEADER = "Earlier in this conversation:"
# The latest user message as the client sent it, before the memory block went in front of it.
USER_TEXT = "memory.user_text"
_metadata = msgspec.json.Decoder(dict[str, Any])
log = logging.getLogger("turnout.memory")


def applies(auto: MemoryAuto, model: str, agent: str) -> bool:
    return any(fnmatchcase(model, p) for p in auto.models) or any(
        fnmatchcase(agent, p) for p in auto.agents
    )


def session_of(request: RequestContext) -> str | None:
    """The caller's session: ``metadata.session_id`` (seed 004's), else the X-Session-Id header."""
    raw = request.fields.get("metadata")
    if raw is not None:
        try:
            value = _metadata.decode(raw).get("session_id")
        except msgspec.DecodeError:
            value = None
        if isinstance(value, str | int) and str(value):
            return str(value)[:256]
    return request.session_id


def unseen_turns(
    turns: Sequence[MemoryItem], messages: Sequence[dict[str, Any]]
) -> list[MemoryItem]:
    """Turns whose user message the request does not carry already (clients often resend
    the whole conversation; only one that switched models or lost it needs the turns)."""
    sent = {m.get("content") for m in messages if m.get("role") == "user"}
    return [t for t in turns if t.meta.get("user_message") not in sent]


def memory_block(hits: Sequence[Hit], turns: Sequence[MemoryItem], max_chars: int) -> str:
    """The text added to the system prompt; the most relevant first, cut at ``max_chars``."""
    shown = {t.id for t in turns}
    lines: list[str] = []
    budget = max_chars
    relevant = [
        f"- [{timestamp(h.item.created_at)[:10]}, {h.item.kind}] {_one_line(h.item.content)}"
        for h in hits
        if h.item.id not in shown
    ]
    chronological = [t.content for t in turns]
    for header, entries in ((HEADER, relevant), (TURNS_HEADER, chronological)):
        taken: list[str] = []
        for entry in entries:
            if len(entry) + 1 > budget - len(header) - 2:
                break
            taken.append(entry)
            budget -= len(entry) + 1
        if taken:
            budget -= len(header) + 2
            lines.extend([*([""] if lines else []), header, *taken])
    return "\n".join(lines)


def with_memory(messages: list[dict[str, Any]], block: str) -> list[dict[str, Any]]:
    """The messages with ``block`` in front of the latest user message's text.

    Not in the system prompt: the block changes from turn to turn (new hits, new turns), and an
    engine re-reads everything after the first token that changed, so a block in the first
    message made every turn prefill the whole prompt again (tens of thousands of tokens for a
    coding agent). In the latest user message only that message onward differs from what the
    engine saw last turn, and it has to read that anyway. A separate system message there
    instead is refused by some chat templates (system only first; strict user/assistant
    alternation). With no user message at all, the system prompt is the only place left.
    """
    for index in range(len(messages) - 1, -1, -1):
        if messages[index].get("role") == "user":
            latest = dict(messages[index])
            latest["content"] = _before(block, latest.get("content"))
            return [*messages[:index], latest, *messages[index + 1 :]]
    return _into_system(messages, block)


def _before(block: str, content: Any) -> Any:
    if isinstance(content, list):
        return [{"type": "text", "text": block}, *content]
    return f"{block}\n\n{content}" if content else block


def _into_system(messages: list[dict[str, Any]], block: str) -> list[dict[str, Any]]:
    if messages and messages[0].get("role") in ("system", "developer"):
        first = dict(messages[0])
        content = first.get("content")
        if isinstance(content, list):
            first["content"] = [*content, {"type": "text", "text": block}]
        else:
            first["content"] = f"{content}\n\n{block}" if content else block
        return [first, *messages[1:]]
    return [{"role": "system", "content": block}, *messages]


async def recall(service: MemoryService, request: RequestContext) -> None:
    auto = service.settings.auto
    identity = request.identity
    if not applies(auto, request.model, identity.agent_id):
        return
    request.capture_reply = True
    try:
        await _recall(service, request, auto)
    except StoreUnavailable as exc:
        # The shared database is down: the request goes on without memories, not failed.
        log.warning("%s; recall skipped for request %s", exc.message, request.request_id)


async def _recall(service: MemoryService, request: RequestContext, auto: MemoryAuto) -> None:
    identity = request.identity
    text = request.last_user_text()
    session = session_of(request)
    messages = request.messages()
    hits: list[Hit] = []
    if text and auto.top_k:
        found = await service.search(Scope(identity.agent_id, identity.project), auto.top_k, text)
        hits = [h for h in found if h.similarity >= auto.min_similarity]
    turns: list[MemoryItem] = []
    if session and auto.session_turns:
        scope = Scope(identity.agent_id, session_id=session, kinds=("conversation",))
        turns = unseen_turns(await service.recent(scope, auto.session_turns), messages)
        turns.reverse()
    block = memory_block(hits, turns, auto.max_chars)
    if block:
        # Remembered as the client said it, without the block (which goes in front of it).
        request.notes[USER_TEXT] = text
        request.set_messages(with_memory(messages, block))


def exchange_item(request: RequestContext, reply: str) -> NewItem | None:
    user = request.notes.get(USER_TEXT) or request.last_user_text()
    if not user:
        return None
    identity = request.identity
    return NewItem(
        agent_id=identity.agent_id,
        kind="conversation",
        content=f"User: {user}\nAssistant: {reply}",
        project=identity.project or "",
        channel=identity.channel or "",
        session_id=session_of(request) or "",
        meta={
            "model": request.model,
            "request_id": request.request_id,
            "user_message": user,
            "agent_reply": reply,
        },
    )


async def remember(service: MemoryService, request: RequestContext, exchanged: Exchanged) -> None:
    if not applies(service.settings.auto, request.model, request.identity.agent_id):
        return
    # Failed or abandoned answers are not part of the conversation.
    if exchanged.status != 200 or not exchanged.reply_text:
        return
    item = exchange_item(request, exchanged.reply_text)
    if item is not None:
        service.remember(item)


def _one_line(text: str) -> str:
    return " ".join(text.split())
