"""Where requests go: providers (upstream endpoints), logical models and their targets, retries."""

from __future__ import annotations

import ipaddress
from typing import Literal
from urllib.parse import urlsplit

import msgspec

Balance = Literal["ordered", "weighted", "least_inflight"]


class Timeouts(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """Per-target upstream deadlines (seconds) and the size bound on one upstream event.

    Stream deadlines count content only: upstream comments (``: ping``) and Anthropic ``ping``
    events reset none of them, so a wedged upstream with a heartbeat still times out.
    """

    connect: float = 5.0
    # Non-streaming calls: the whole answer. Streaming calls: the first content event (a data
    # event, not a comment), counted from the request's start.
    first_byte: float = 300.0
    # Streaming calls: the longest wait for the next content event.
    idle: float = 120.0
    # Streaming calls: the longest a whole stream may run; 0 = unlimited.
    max_stream: float = 1800.0
    # The largest single SSE event or NDJSON line accepted from the upstream.
    max_event_bytes: int = 16 * 1024 * 1024
    # The largest whole non-stream answer accepted from the upstream (after decoding).
    max_body_bytes: int = 64 * 1024 * 1024


class Reasoning(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """How an upstream's thinking travels (``reasoning:`` on a provider or a role)."""

    # The engine leaves the model's thinking in ``content`` between <think> and </think>
    # (llama-server --reasoning-format none, MLX, some vLLM builds): split it out as
    # ``reasoning_content``, as llama.cpp's own parser would, in streams and whole answers.
    think_tags: bool = False
    # Thinking a client sends back in its history (Anthropic thinking blocks, Responses
    # reasoning items) reaches this upstream as ``reasoning_content`` on assistant messages.
    # None: by adapter kind (llama.cpp, vLLM, DeepSeek, MLX take it; OpenAI does not; Ollama
    # always gets it, as its own ``thinking``).
    history: bool | None = None


class Provider(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """One upstream endpoint: an engine on this machine or a cloud API."""

    kind: str
    base_url: str
    api_key: str = ""
    # Local providers are allowed behind ``local_only`` models. None: inferred from base_url's host.
    local: bool | None = None
    headers: dict[str, str] = {}
    timeouts: Timeouts = Timeouts()
    # Remove volatile text clients put at the very start of a prompt (Claude Code's
    # x-anthropic-billing-header line, new on every request) so the engine's prefix cache hits.
    # None: on for local providers, off for cloud ones; never for adapter kinds registered as
    # keeping the client's prefix (adapters.base.AdapterRegistry).
    strip_volatile_prefix: bool | None = None
    reasoning: Reasoning = Reasoning()
    # Send Responses requests (Codex, the openai SDK's ``responses``) to the upstream's own
    # ``/responses`` as they came, and relay its answer unchanged, instead of translating to
    # chat. None: on for kind openai at api.openai.com, off elsewhere.
    responses_api: bool | None = None
    # Filled by the loader: environment variables named in this provider but not set.
    missing_env: tuple[str, ...] = ()

    @property
    def is_local(self) -> bool:
        if self.local is not None:
            return self.local
        return _is_private_host(urlsplit(self.base_url).hostname or "")

    @property
    def strips_volatile_prefix(self) -> bool:
        """Whether requests to this provider lose their volatile prompt prefix, as configured
        (the adapter kind may still keep it: ``gateway.translate.prefix.request_shapers``)."""
        if self.strip_volatile_prefix is not None:
            return self.strip_volatile_prefix
        return self.is_local


class Target(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """One place a logical model can be served: a provider and the model name it knows.

    ``role: coder`` is shorthand for the provider turnout creates for that local role.
    """

    provider: str = ""
    model: str = ""
    weight: float = 1.0
    # Lower is tried first; targets sharing a priority are load-balanced.
    priority: int = 0
    role: str = ""


class Model(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """A logical model clients ask for by name or alias."""

    name: str
    targets: tuple[Target, ...]
    aliases: tuple[str, ...] = ()
    # Glob patterns (``claude-*``) for names clients send that no name or alias matches;
    # tried after every exact name, in file order.
    patterns: tuple[str, ...] = ()
    balance: Balance = "ordered"
    # Never send this model's traffic to a provider that is not local, even as a fallback.
    local_only: bool = False
    description: str = ""


class Routing(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """How the router retries and cools down failing targets."""

    # Extra passes over the whole target list after every target failed once.
    retries: int = 1
    backoff_seconds: float = 0.25
    backoff_max_seconds: float = 4.0
    # A target that failed is tried last for this long.
    cooldown_seconds: float = 30.0


def _is_private_host(host: str) -> bool:
    if host in ("localhost", ""):
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return host.endswith(".local") or host.endswith(".localhost")
    return address.is_loopback or address.is_private or address.is_link_local
