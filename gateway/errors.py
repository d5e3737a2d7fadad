"""Every error class turnout raises, and the OpenAI wire envelope.

Adapters translate their client library's exceptions into these once, at their boundary; the
HTTP layer renders them once, in the protocol's envelope. Nothing in between catches bare
``Exception`` to guess what went wrong.

The hierarchy (the status a client sees in brackets)::

    GatewayError [500] ── an error with a client-facing status and OpenAI type/code
    ├── BadRequest [400]
    │   └── ContextExceeded [400]
    ├── Unauthorized [401]
    ├── Forbidden [403]
    │   └── HostNotAllowed [403]
    ├── ModelNotFound [404]
    ├── NotFound [404]
    ├── MethodNotAllowed [405]
    ├── RequestTimeout [408] ── answered by the transport (gateway/connections.py)
    ├── BodyTooLarge [413]
    ├── RateLimited [429]
    ├── BudgetExceeded [429]
    ├── ServerBusy [503] ── answered by the transport (gateway/connections.py)
    ├── NoTargetAvailable [503]
    ├── PluginUnavailable [503] ── what a plugin loads in the background failed to load
    ├── StoreUnavailable [503] ── the shared database holding stored responses or memories is down
    │   └── Unfetched ── not in memory yet: the caller awaits ``fetch`` and tries again
    └── UpstreamError [502] ── one upstream failed; ``retryable`` decides whether to fall back
        ├── UpstreamConnectError [502]
        ├── UpstreamTimeout [504]
        │   └── UpstreamBodyTimeout ── the head came, the content did not
        ├── UpstreamStatus [the upstream's 4xx, 429 or 501, else 502]
        ├── UpstreamProtocolError [502]
        │   ├── StaleConnection ── resent on a new connection, never seen by a client
        │   └── UpstreamHungUp ── a new connection closed before any answer (a peer's "connect")
        ├── EngineUnavailable [503]
        └── AllTargetsFailed [the last failure's 429, 503, 504, else 502]

    ConfigError ── routing.yaml (or what it names) is invalid; the message names the key path
    ├── PromptError
    ├── PluginError
    └── DriverError

    EngineStartError ── a local engine could not be brought up
    IllegalTransition (RuntimeError) ── a bug: an engine state move gateway/engines/states.py forbids
    MigrationError ── the usage database's history does not match this turnout's migrations
    ClientGone ── the client disconnected while its request was still being read
    ToolFailed ── a tool ran and failed (the message goes back to the model)
    DestinationRefused (OSError) ── the tools' resolver refused an internal address
    StoreError ── ``turnout keys`` could not do what was asked (its one-line message is printed)
    NotAConfig (ValueError) ── ``turnout import`` was given a file of another tool

The CLI client's errors (``ClientError``, ``SettingsError``, ``ItemError``) stay in
``gateway/client/``: that package is standard-library only and talks to a gateway over HTTP,
so it shares nothing with this tree.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import msgspec


class GatewayError(Exception):
    """An error with a client-facing status and OpenAI ``type``/``code``."""

    status: int = 500
    type: str = "server_error"
    code: str | None = None

    def __init__(
        self, message: str, *, param: str | None = None, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.headers = headers or {}


class BadRequest(GatewayError):
    status = 400
    type = "invalid_request_error"


class ContextExceeded(BadRequest):
    """The prompt does not fit the serving engine's context window (the engine said so).

    Worded the way clients recover from it: Claude Code compacts its conversation on
    Anthropic's "prompt is too long: N tokens > M maximum"; OpenAI clients (Codex, litellm)
    look for the code ``context_length_exceeded``. Deliberately not an ``UpstreamError``: the
    forwarder neither falls back nor puts the target in cooldown; a smaller prompt is the fix.
    (Routing to a role with a larger context happens before the call, in the engine gate.)
    """

    code = "context_length_exceeded"

    def __init__(self, prompt_tokens: int, context: int) -> None:
        super().__init__(
            f"prompt is too long: {prompt_tokens} tokens > {context} maximum "
            f"(this model's maximum context length is {context} tokens)",
            param="messages",
        )
        self.prompt_tokens = prompt_tokens
        self.context = context


class Unauthorized(GatewayError):
    status = 401
    type = "invalid_request_error"
    code = "invalid_api_key"


class Forbidden(GatewayError):
    status = 403
    type = "invalid_request_error"
    code = "permission_denied"


class HostNotAllowed(Forbidden):
    """A keyless gateway addressed by a name that is not this machine's (see gateway/hosts.py)."""

    code = "host_not_allowed"


class ModelNotFound(GatewayError):
    status = 404
    type = "invalid_request_error"
    code = "model_not_found"


class NotFound(GatewayError):
    status = 404
    type = "invalid_request_error"
    code = "not_found"


class MethodNotAllowed(GatewayError):
    status = 405
    type = "invalid_request_error"
    code = "method_not_allowed"


class RequestTimeout(GatewayError):
    status = 408
    type = "invalid_request_error"
    code = "request_timeout"


class BodyTooLarge(GatewayError):
    status = 413
    type = "invalid_request_error"
    code = "request_too_large"


class RateLimited(GatewayError):
    status = 429
    type = "rate_limit_error"
    code = "rate_limit_exceeded"


class BudgetExceeded(GatewayError):
    status = 429
    type = "insufficient_quota"
    code = "insufficient_quota"


class ServerBusy(GatewayError):
    status = 503
    type = "server_error"
    code = "server_busy"


class NoTargetAvailable(GatewayError):
    """Every target of a model is excluded (e.g. ``local_only`` with no local target)."""

    status = 503
    type = "server_error"
    code = "no_target_available"


class PluginUnavailable(GatewayError):
    """A part a plugin loads in the background, off the start-up path, failed to load."""

    status = 503
    type = "server_error"
    code = "plugin_unavailable"


class StoreUnavailable(GatewayError):
    """A stored response this replica has not cached, or an agent's memories, while the shared
    database is down."""

    status = 503
    type = "server_error"
    code = "store_unavailable"


class Unfetched(StoreUnavailable):
    """What a request needs is in the shared database (PostgreSQL), not in this replica's
    memory. Raised by synchronous code that must not block the event loop on a query; the
    async caller awaits ``fetch`` (which raises ``NotFound`` or ``StoreUnavailable`` itself)
    and tries again. A client sees it (503) only if the second try misses too."""

    def __init__(self, message: str, fetch: Callable[[], Awaitable[None]]) -> None:
        super().__init__(message)
        self.fetch = fetch


class UpstreamError(GatewayError):
    """Something went wrong talking to one upstream. ``retryable`` decides whether to try the next."""

    status = 502
    type = "upstream_error"
    code = "upstream_error"
    retryable = True


class UpstreamConnectError(UpstreamError):
    code = "upstream_connect_error"


class UpstreamTimeout(UpstreamError):
    status = 504
    code = "upstream_timeout"


class UpstreamBodyTimeout(UpstreamTimeout):
    """The response head arrived but its content did not in time (peers' ``body_timeout``)."""


class UpstreamStatus(UpstreamError):
    """The upstream answered with an HTTP error status; ``body`` is what it said."""

    def __init__(self, status: int, body: bytes, *, retry_after: float | None = None) -> None:
        self.upstream_status = status
        self.body = body
        self.retry_after = retry_after
        super().__init__(f"upstream returned HTTP {status}: {_upstream_message(body)}")
        # 429 and 5xx may succeed elsewhere; other 4xx are the client's fault and would fail
        # anywhere. So would 501: the upstream cannot do what was asked (llama-server without
        # --embeddings), an answer for the client, not an outage to fail over from.
        self.retryable = status == 429 or (status >= 500 and status != 501)
        self.status = status if not self.retryable else 502
        if status == 429:
            self.status = 429
            self.type = "rate_limit_error"
            self.code = "rate_limit_exceeded"
        elif status == 501:
            self.type = "invalid_request_error"
            self.code = "not_implemented"
        elif not self.retryable:
            self.type = "invalid_request_error"
            self.code = "upstream_rejected"


class UpstreamProtocolError(UpstreamError):
    """The upstream answered 200 with something that is not the protocol (bad JSON, cut stream)."""

    code = "upstream_protocol_error"


class StaleConnection(UpstreamProtocolError):
    """A pooled connection the server had already closed failed before any response byte.

    Not the target's fault: the forwarder sends the request again on a new connection, without
    using a retry, cooling the target down or falling back (see ``adapters/connections.py``).
    """


class UpstreamHungUp(UpstreamProtocolError):
    """A new connection closed before any byte of an answer: the server went away (killed,
    crashed, its box down) while the request waited. Falls back like any broken answer; a
    peer's ``failures.connect`` counts it as a connection failure (gateway/peers/policy.py).
    """


class EngineUnavailable(UpstreamError):
    """A role could not be made ready for a request; another target may still serve it."""

    status = 503
    type = "server_error"
    code = "engine_unavailable"


class AllTargetsFailed(UpstreamError):
    """Every attempt failed: the client sees the last failure's class (502, 503, 504 or 429)."""

    def __init__(self, message: str, last: UpstreamError) -> None:
        headers = {}
        if isinstance(last, UpstreamStatus) and last.retry_after is not None:
            headers["Retry-After"] = str(int(last.retry_after + 0.999))
        super().__init__(message, headers=headers)
        self.status = last.status if last.status in (429, 503, 504) else 502
        self.type = last.type
        self.code = last.code
        self.last = last


class ConfigError(Exception):
    """routing.yaml is unreadable or invalid; the message names the key path."""


class PromptError(ConfigError):
    """A prompt cannot be composed: a required layer is missing or empty, or it is too long."""


class PluginError(ConfigError):
    """A plugin cannot be loaded, or failed while the gateway started."""


class DriverError(ConfigError):
    """No SQLite driver here can load sqlite-vec; the message says how to fix it."""


class EngineStartError(Exception):
    """The engine could not be brought up; the message says why (and quotes its log)."""

    def __init__(self, message: str, exit_code: int | None = None) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class IllegalTransition(RuntimeError):
    """The supervisor tried an engine state move ``engines/states.py`` does not allow: a bug."""


class MigrationError(Exception):
    """The database's recorded history does not match this turnout's migrations."""


class ClientGone(Exception):
    """The client disconnected while we were still reading its request."""


class ToolFailed(Exception):
    """A tool ran and failed; the message is what the caller (and the model) sees."""


class StoreError(Exception):
    """``turnout keys`` could not do what was asked (refused input, a database or admin API
    failure); the message fits on one line."""


class NotAConfig(ValueError):
    """The input is not a config of the tool named: ``turnout import`` says so in one line."""


class DestinationRefused(OSError):
    """Raised by the tools' resolver (aiohttp wraps resolver OSErrors; we unwrap it again)."""


class ErrorBody(msgspec.Struct):
    message: str
    type: str
    param: str | None
    code: str | None


class ErrorEnvelope(msgspec.Struct):
    error: ErrorBody


_encoder = msgspec.json.Encoder()


def openai_envelope(error: GatewayError) -> bytes:
    return _encoder.encode(
        ErrorEnvelope(ErrorBody(error.message, error.type, error.param, error.code))
    )


def _upstream_message(body: bytes) -> str:
    """Pull a human message out of whatever error shape the upstream used."""
    text = body[:2000]
    try:
        decoded = msgspec.json.decode(text)
    except msgspec.DecodeError:
        return text.decode("utf-8", "replace").strip()[:300] or "(empty body)"
    if isinstance(decoded, dict):
        inner = decoded.get("error", decoded)
        if isinstance(inner, dict):
            message = inner.get("message") or inner.get("detail")
            if isinstance(message, str):
                return message[:300]
        if isinstance(inner, str):
            return inner[:300]
    return str(decoded)[:300]
