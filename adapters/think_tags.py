"""``<think>`` blocks left in ``content`` by an engine, split out as ``reasoning_content``.

llama-server parses a reasoning model's thinking into ``reasoning_content`` itself
(``--reasoning-format auto``, its default); with ``--reasoning-format none``, and on MLX and
some vLLM builds, the thinking stays in the text between ``<think>`` and ``</think>``. A
provider or role with ``reasoning: {think_tags: true}`` gets it split here, inside the adapter,
so every client protocol sees the same OpenAI shape llama.cpp's parser gives.

Streams hold back only what may be the start of a tag (``"<thi"`` at a chunk's end), never a
whole chunk; the held text goes out with the next chunk, or with the finish chunk. Providers
without the setting pay nothing: the adapter installs no event fix for them.
"""

from __future__ import annotations

from typing import Any

import msgspec

from gateway.translate import estimate_reasoning_tokens

OPEN = "<think>"
CLOSE = "</think>"

_encode = msgspec.json.Encoder().encode


def _partial_tag(text: str, tag: str) -> int:
    """How many characters at the end of ``text`` may begin ``tag`` (0 when none can)."""
    tail = text[-(len(tag) - 1) :]
    start = tail.find("<")
    while start >= 0:
        if tag.startswith(tail[start:]):
            return len(tail) - start
        start = tail.find("<", start + 1)
    return 0


class ThinkSplitter:
    """One answer's text in, (reasoning, content) pieces out, tags removed."""

    __slots__ = ("_held", "_inside", "_trim", "reasoning_chars")

    def __init__(self) -> None:
        self._inside = False
        self._held = ""
        # The answer usually follows </think> after a blank line: not part of the answer.
        self._trim = False
        self.reasoning_chars = 0

    def feed(self, text: str) -> tuple[str, str]:
        text = self._held + text if self._held else text
        self._held = ""
        reasoning: list[str] = []
        content: list[str] = []
        while text:
            tag = CLOSE if self._inside else OPEN
            at = text.find(tag)
            if at < 0:
                keep = _partial_tag(text, tag)
                if keep:
                    text, self._held = text[:-keep], text[-keep:]
                self._put(text, reasoning, content)
                break
            self._put(text[:at], reasoning, content)
            text = text[at + len(tag) :]
            self._inside = not self._inside
            self._trim = not self._inside
        thought = "".join(reasoning)
        self.reasoning_chars += len(thought)
        return thought, "".join(content)

    def flush(self) -> tuple[str, str]:
        """What was held back, once the answer is over (a lone ``"<"`` is text after all)."""
        held, self._held = self._held, ""
        if self._inside:
            self.reasoning_chars += len(held)
            return held, ""
        return "", held

    def _put(self, text: str, reasoning: list[str], content: list[str]) -> None:
        if self._inside:
            reasoning.append(text)
            return
        if self._trim:
            text = text.lstrip()
            if not text:
                return
            self._trim = False
        content.append(text)


def split_message(message: dict[str, Any]) -> None:
    """A whole answer's ``message``: its content's think blocks moved to reasoning_content."""
    content = message.get("content")
    if not isinstance(content, str) or OPEN not in content:
        return
    splitter = ThinkSplitter()
    thought, text = splitter.feed(content)
    held_thought, held_text = splitter.flush()
    thought, text = thought + held_thought, text + held_text
    if thought:
        message["reasoning_content"] = (message.get("reasoning_content") or "") + thought
    message["content"] = text


def split_reply(body: bytes) -> bytes:
    """A whole chat completion with its think blocks split out (unchanged when it has none)."""
    if b"<think>" not in body:
        return body
    try:
        reply = msgspec.json.decode(body)
    except msgspec.DecodeError:
        return body
    if not isinstance(reply, dict):
        return body
    for choice in reply.get("choices") or ():
        message = choice.get("message") if isinstance(choice, dict) else None
        if isinstance(message, dict):
            split_message(message)
    return _encode(reply)


class ThinkStream:
    """The event fix for one stream (``adapters.openai_compat.EventFix``): first choice only."""

    __slots__ = ("_splitter",)

    def __init__(self) -> None:
        self._splitter = ThinkSplitter()

    def __call__(self, event: bytes) -> bytes | None:
        if not event.startswith(b"data: {"):
            return event  # [DONE], comments, named events: nothing to split
        try:
            chunk = msgspec.json.decode(event[6:])
        except msgspec.DecodeError:
            return event
        if not isinstance(chunk, dict):
            return event
        changed = self._choice(chunk)
        usage = chunk.get("usage")
        if isinstance(usage, dict) and self._splitter.reasoning_chars:
            changed = _count_reasoning(usage, self._splitter.reasoning_chars) or changed
        return b"data: " + _encode(chunk) if changed else event

    def _choice(self, chunk: dict[str, Any]) -> bool:
        choices = chunk.get("choices")
        choice = choices[0] if isinstance(choices, list) and choices else None
        if not isinstance(choice, dict) or choice.get("index", 0):
            return False
        delta = choice.get("delta")
        if not isinstance(delta, dict):
            return False
        content = delta.get("content")
        thought, text = self._splitter.feed(content) if isinstance(content, str) else ("", "")
        if choice.get("finish_reason"):
            held_thought, held_text = self._splitter.flush()
            thought, text = thought + held_thought, text + held_text
        if not isinstance(content, str) and not thought and not text:
            return False
        if thought:
            delta["reasoning_content"] = (delta.get("reasoning_content") or "") + thought
        delta["content"] = text or None
        return True


def _count_reasoning(usage: dict[str, Any], chars: int) -> bool:
    """An estimate of reasoning_tokens where the engine reports none (llama.cpp does not)."""
    details = usage.get("completion_tokens_details")
    if isinstance(details, dict) and details.get("reasoning_tokens"):
        return False
    completion = usage.get("completion_tokens")
    estimate = estimate_reasoning_tokens(chars, completion if isinstance(completion, int) else 0)
    if isinstance(details, dict):
        details["reasoning_tokens"] = estimate
    else:
        usage["completion_tokens_details"] = {"reasoning_tokens": estimate}
    return True
