"""Running the app under uvicorn with the settings the hot path was measured with."""

from __future__ import annotations

import logging
import signal
import socket
from collections.abc import Awaitable, Callable
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any, cast

from gateway.asgi import Message, Receive, Scope, Send
from gateway.config.schema import Config
from gateway.dialect import is_postgres
from gateway.errors import ConfigError

if TYPE_CHECKING:
    from gateway.state import Wiring

ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


def run(
    config: Config,
    wiring: Wiring,
    host: str | None = None,
    port: int | None = None,
    log_level: str | None = None,
) -> int:
    """Serves ``config`` until a signal; ``wiring``: what passed the start-up checks
    (gateway/preflight.py). Raises ConfigError for a problem only the start found."""
    import uvicorn

    from gateway.app import create_app, serving_app
    from gateway.config.validation import warnings
    from gateway.connections import guarded_protocol
    from gateway.draining import draining

    level = (log_level or config.server.log_level).upper()
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    log = logging.getLogger("turnout")
    for note in warnings(config):
        log.warning("%s", note)
    # uvicorn shuts down gracefully on SIGTERM/SIGINT, then re-raises the signal to the handler
    # that was installed before it; these make that final step a clean exit instead of a kill
    # (exit status 0 for SIGTERM, so service managers see a normal stop) or a traceback.
    signal.signal(signal.SIGTERM, _exit_with(0))
    signal.signal(signal.SIGINT, _exit_with(130))
    # Listening before anything starts: a port in use is one line before any engine or worker
    # starts, and the engines' ports (picked free at start) can never be the gateway's own.
    host = host or config.server.host
    port = port if port is not None else config.server.port
    listeners = listen(host, port)
    app = create_app(config, wiring=wiring)
    startup = StartupReport(cast(ASGIApp, app))
    server = uvicorn.Server(
        uvicorn.Config(
            # The protocol below cancels a request whose connection is lost.
            serving_app(app, cancels_on_disconnect=True, rest=startup),
            host=host,  # served on ``listeners``; uvicorn names it in its "running on" line
            port=port,
            # uvloop + httptools: the fastest pair measured here; access logs cost ~10% at
            # load, and the gateway keeps its own per-request metrics. The httptools protocol
            # carries client deadlines and the connection cap (gateway/connections.py), and
            # serves the requests clients had begun when SIGTERM came (gateway/draining.py).
            loop="uvloop",
            http=draining(guarded_protocol(config.server)),
            access_log=False,
            log_level=level.lower(),
            lifespan="on",
            timeout_graceful_shutdown=10,
        )
    )
    try:
        server.run(sockets=listeners)
    except SystemExit:
        # uvicorn exits (status 3) when the start fails.
        if startup.problem is not None:
            raise startup.problem from None
        raise
    return 0


Address = tuple[int, int, int, tuple[Any, ...]]  # family, type, protocol, socket address


def addresses(host: str, port: int = 0) -> list[Address]:
    """Where serving on ``host`` listens: each address it resolves to, as asyncio's
    ``create_server`` (so uvicorn) would bind (``localhost``: 127.0.0.1, and ::1 where named).
    ConfigError naming ``server.host`` if it resolves to none (``turnout check`` asks too)."""
    try:
        found = socket.getaddrinfo(
            host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
    except OSError as exc:
        raise ConfigError(f"server.host: cannot resolve {host!r}: {exc.strerror or exc}") from None
    return list(dict.fromkeys((a[0], a[1], a[2], a[4]) for a in found))


def listen(host: str, port: int) -> list[socket.socket]:
    """The gateway's listening sockets (``addresses``), bound now; ConfigError naming the
    address if one cannot be (in use, not an address of this machine)."""
    bound: list[socket.socket] = []
    try:
        for family, kind, proto, address in addresses(host, port):
            sock = socket.socket(family, kind, proto)
            bound.append(sock)
            # As asyncio binds: a restart does not wait for the last run's connections in
            # TIME_WAIT, and an IPv6 socket leaves IPv4 to its own (no dual stack).
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            # Port 0: every address on the port the first one was given.
            sock.bind((address[0], port or bound[0].getsockname()[1], *address[2:]))
            sock.listen(2048)
    except OSError as exc:
        for sock in bound:
            sock.close()
        reason = exc.strerror or str(exc)
        raise ConfigError(f"server.port: cannot listen on {host}:{port}: {reason}") from None
    return bound


class StartupReport:
    """The app as uvicorn's lifespan sees it: a configuration problem that stops the start is
    reported as one line (``problem``, raised by ``run``), not as the traceback Litestar sends.

    The start-up checks (gateway/preflight.py) find what they can before this; this catches
    what only opening the gateway finds. It answers the paths off the hot path too, one call
    deeper; the proxy endpoints never pass through it.
    """

    __slots__ = ("_app", "problem")

    def __init__(self, app: ASGIApp) -> None:
        self._app = app
        self.problem: ConfigError | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "lifespan":
            await self._app(scope, receive, send)
            return
        failed: list[Message] = []

        async def held(message: Message) -> None:
            # Litestar sends the failure before it raises the error: hold it until the error
            # says whether it is a configuration problem.
            if message["type"] == "lifespan.startup.failed":
                failed.append(message)
            else:
                await send(message)

        try:
            await self._app(scope, receive, held)
        except BaseException as exc:
            if failed:
                self.problem = _config_error(exc)
            raise
        finally:
            if failed:
                await send({**failed[0], "message": ""} if self.problem else failed[0])


def _config_error(exc: BaseException) -> ConfigError | None:
    """The ConfigError ``exc`` is or carries (Litestar's task groups wrap it in a group)."""
    if isinstance(exc, ConfigError):
        return exc
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            found = _config_error(inner)
            if found is not None:
                return found
    return None


def _exit_with(status: int) -> Callable[[int, FrameType | None], None]:
    def handler(signum: int, frame: FrameType | None) -> None:
        raise SystemExit(status)

    return handler


def open_network_refusal(config: Config, bind: str) -> str:
    """Why turnout will not listen on ``bind``: a keyless gateway is for this machine only."""
    from gateway.auth import is_loopback
    from gateway.keys import connect, list_keys

    if is_loopback(bind) or config.auth.admin_key or config.auth.allow_open_network:
        return ""
    database = config.server.database
    if is_postgres(database):
        return _postgres_refusal(database, bind)
    if database == ":memory:" or not (database.startswith("file:") or Path(database).exists()):
        # No file, no keys: say so without creating it (``turnout check`` writes nothing).
        return _REFUSAL.format(bind=bind)
    connection = connect(database)
    try:
        if list_keys(connection):
            return ""
    finally:
        connection.close()
    return _REFUSAL.format(bind=bind)


def _postgres_refusal(database: str, bind: str) -> str:
    """``open_network_refusal`` on PostgreSQL, which ``turnout check`` reaches over the network."""
    from gateway.dialect import driver_problem, redacted
    from gateway.keys import connect, list_keys

    if driver_problem("server.database", database):
        return ""  # reported by the start-up checks already
    try:
        connection = connect(database)
    except Exception as exc:
        return f"server.database: cannot open {redacted(database)}: {exc}"
    try:
        return "" if list_keys(connection) else _REFUSAL.format(bind=bind)
    finally:
        connection.close()


_REFUSAL = (
    "refusing to listen on {bind}: no API keys are configured, so anyone on the network could "
    "use every model. Set auth.admin_key (e.g. ${{TURNOUT_ADMIN_KEY}}) or create keys with "
    "`turnout keys create`, or set auth.allow_open_network: true to accept that."
)
