"""A fake engine process, run the way turnout runs ``llama-server``, for the driver's mechanics.

    python -m tests.fakes.engine_process PORT [--ready-after S] [--ignore-sigterm]

``GET /health`` answers 503 until ``--ready-after`` seconds have passed, then 200; at that
moment (as llama-server does) it writes "listening" to stdout, which turnout sends to the
role's log. Connections are kept alive (HTTP/1.1). On SIGTERM it waits up to 2 s for open
connections to be closed by their clients and writes ``connections open at exit: N`` before it
exits; with ``--ignore-sigterm`` it does not exit at all (only SIGKILL ends it). Stdlib only:
it starts in tens of milliseconds.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

DRAIN_SECONDS = 2.0


class Engine:
    def __init__(self, ready_after: float) -> None:
        self.ready_at = time.monotonic() + ready_after
        self.open = 0
        self.lock = threading.Lock()

    def handler(self) -> type[BaseHTTPRequestHandler]:
        engine = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def setup(self) -> None:
                super().setup()
                with engine.lock:
                    engine.open += 1

            def finish(self) -> None:
                super().finish()
                with engine.lock:
                    engine.open -= 1

            def do_GET(self) -> None:
                status = 200 if time.monotonic() >= engine.ready_at else 503
                body = b'{"status":"ok"}' if status == 200 else b'{"status":"loading"}'
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                pass

        return Handler


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("port", type=int)
    parser.add_argument("--ready-after", type=float, default=0.0)
    parser.add_argument("--ignore-sigterm", action="store_true")
    args = parser.parse_args()
    engine = Engine(args.ready_after)
    server = ThreadingHTTPServer(("127.0.0.1", args.port), engine.handler())
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    stop = threading.Event()
    signal.signal(
        signal.SIGTERM, signal.SIG_IGN if args.ignore_sigterm else (lambda *_: stop.set())
    )
    time.sleep(max(0.0, engine.ready_at - time.monotonic()))
    print("listening", flush=True)
    while not stop.wait(0.05):
        pass
    deadline = time.monotonic() + DRAIN_SECONDS
    while engine.open and time.monotonic() < deadline:
        time.sleep(0.01)
    print(f"connections open at exit: {engine.open}", flush=True)
    sys.exit(0)


if __name__ == "__main__":
    main()
