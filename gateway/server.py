"""Running the app under uvicorn with the settings the hot path was measured with."""

from __future__ import annotations

import logging
import signal
from collections.abc import Callable
from types import FrameType

from gateway.config import Config


def run(
    config: Config, host: str | None = None, port: int | None = None, log_level: str | None = None
) -> int:
    import uvicorn

    from gateway.app import create_app
    from gateway.config import warnings
    from gateway.connections import guarded_protocol
    from gateway.draining import draining

    level = (log_level or config.server.log_level).upper()
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    log = logging.getLogger("turnout")
    for note in warnings(config):
        log.warning("%s", note)
    bind = host or config.server.host
    refusal = open_network_refusal(config, bind)
    if refusal:
        log.error("%s", refusal)
        return 2
    # uvicorn shuts down gracefully on SIGTERM/SIGINT, then re-raises the signal to the handler
    # that was installed before it; these make that final step a clean exit instead of a kill
    # (exit status 0 for SIGTERM, so service managers see a normal stop) or a traceback.
    signal.signal(signal.SIGTERM, _exit_with(0))
    signal.signal(signal.SIGINT, _exit_with(130))
    uvicorn.run(
        create_app(config),
        host=bind,
        port=port if port is not None else config.server.port,
        # uvloop + httptools: the fastest pair measured here; access logs cost ~10% at load,
        # and the gateway keeps its own per-request metrics. The httptools protocol carries
        # client deadlines and the connection cap (gateway/connections.py), and
        # serves the requests clients had begun when SIGTERM came (gateway/draining.py).
        loop="uvloop",
        http=draining(guarded_protocol(config.server)),
        access_log=False,
        log_level=level.lower(),
        lifespan="on",
        timeout_graceful_shutdown=10,
    )
    return 0


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
    connection = connect(config.server.database)
    try:
        if list_keys(connection):
            return ""
    finally:
        connection.close()
    return (
        f"refusing to listen on {bind}: no API keys are configured, so anyone on the network could "
        "use every model. Set auth.admin_key (e.g. ${TURNOUT_ADMIN_KEY}) or create keys with "
        "`turnout keys create`, or set auth.allow_open_network: true to accept that."
    )
