"""Record real coding-agent sessions for bench/agent_session.py.

Runs Claude Code and Codex (installed from npm by tests/agent_clients.py) through
``turnout launch`` against a gateway whose upstream is a scripted session
(tests/fakes/scripted_session.py: read a file, run ``ls``, edit the file, answer). A recording
tap between the client and the gateway keeps every body the client sent; the main conversation's
requests (those offering tools) are saved as bench/sessions/<client>.json, with the session's
temporary working folder replaced by ``/work/project`` so the files hold nothing machine-specific.

    .venv/bin/python -m bench.record_sessions [--clients claude codex]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.agent_clients import PACKAGES, ensure_clients  # noqa: E402
from tests.fakes.scripted_session import RecordingTap, ScriptedSession  # noqa: E402
from tests.gateway_server import config_of, running_gateway  # noqa: E402

SESSIONS = ROOT / "bench" / "sessions"
PROJECT = "/work/project"
PROMPT = "Read notes.txt, list the files, then change hello to 'hello, turnout' in notes.txt."
# How each client runs one non-interactive task; the prompt goes last.
RUNS: dict[str, tuple[str, ...]] = {
    "claude": ("-p", "--allowedTools", "Read,Bash,Edit", "--max-turns", "8"),
    "codex": ("exec", "--skip-git-repo-check", "--dangerously-bypass-approvals-and-sandbox"),
}
ID = re.compile(
    r"\b[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\b|\b[0-9a-f]{64}\b"
)
INGRESS = {"claude": "/v1/messages", "codex": "/v1/responses"}


def gateway_config(upstream: str) -> dict[str, Any]:
    return {
        "providers": {"engine": {"kind": "openai-compatible", "base_url": upstream, "local": True}},
        "models": [
            {"name": "coder", "targets": [{"provider": "engine", "model": "coder"}]},
            {"name": "fast", "targets": [{"provider": "engine", "model": "fast"}]},
        ],
        "routing": {"retries": 0},
    }


def serve(workdir: str) -> tuple[str, RecordingTap, threading.Event, threading.Thread]:
    """A scripted upstream, a gateway and a tap on a thread's loop; returns the tap's URL."""
    ready, stop_flag = threading.Event(), threading.Event()
    box: list[Any] = []

    async def main() -> None:
        async with ScriptedSession(workdir) as fake:
            async with running_gateway(config_of(gateway_config(fake.url))) as gateway:
                async with RecordingTap(gateway.url) as tap:
                    box.append(tap)
                    ready.set()
                    await asyncio.to_thread(stop_flag.wait)

    thread = threading.Thread(target=asyncio.run, args=(main(),), daemon=True)
    thread.start()
    if not ready.wait(60):
        raise RuntimeError("the gateway did not start")
    return box[0].url, box[0], stop_flag, thread


def record(client: str, bin_dir: Path) -> list[dict[str, Any]]:
    workdir = tempfile.mkdtemp(prefix="turnout-session-")
    home = tempfile.mkdtemp(prefix="turnout-home-")
    Path(workdir, "notes.txt").write_text("hello\n")
    Path(workdir, "README.md").write_text("# demo project\n")
    url, tap, stop, thread = serve(workdir)
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("TURNOUT_", "ANTHROPIC_"))},
        "HOME": home,
        "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    argv = [sys.executable, "-m", "gateway", "launch", client, "--url", url, "--model", "coder"]
    argv += ["--", *RUNS[client], PROMPT]
    try:
        import subprocess

        done = subprocess.run(
            argv, cwd=workdir, env=env, capture_output=True, text=True, timeout=300
        )
        print(
            f"{client}: exit {done.returncode}; notes.txt = {Path(workdir, 'notes.txt').read_text()!r}"
        )
        if done.returncode != 0:
            print(done.stdout[-2000:], done.stderr[-2000:], file=sys.stderr)
    finally:
        stop.set()
        thread.join(30)
    bodies = [
        r.body
        for r in tap.records
        if r.path == INGRESS[client] and isinstance(r.body, dict) and r.body.get("tools")
    ]
    shutil.rmtree(home, ignore_errors=True)
    ids: dict[str, str] = {}
    return [scrub(body, workdir, ids) for body in bodies]


def scrub(body: Any, workdir: str, ids: dict[str, str]) -> Any:
    """The body with the temporary folder and the per-machine ids (device, installation,
    session: UUIDs and 64-hex digests) replaced by stable placeholders, the same one for the
    same id across a session's turns, so the replay's prefixes stay what they were."""
    text = json.dumps(body).replace(workdir, PROJECT)

    def stable(match: re.Match[str]) -> str:
        found = match.group(0)
        if found not in ids:
            n = len(ids) + 1
            ids[found] = f"{n:08x}-0000-4000-8000-000000000000" if "-" in found else f"{n:064x}"
        return ids[found]

    return json.loads(ID.sub(stable, text))


def pack(turns: list[dict[str, Any]]) -> dict[str, Any]:
    """Fields equal in every turn (system prompt, tools: most of the bytes) stored once;
    ``bench.agent_session.unpack`` rebuilds each body with its keys in the recorded order."""
    common = {
        key: value
        for key, value in turns[0].items()
        if all(key in turn and turn[key] == value for turn in turns)
    }
    return {
        "key_order": [list(turn) for turn in turns],
        "common": common,
        "turns": [{k: v for k, v in turn.items() if k not in common} for turn in turns],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clients", nargs="+", default=list(RUNS), choices=list(RUNS))
    parser.add_argument("--out", type=Path, default=SESSIONS, help="folder for <client>.json")
    args = parser.parse_args()
    bin_dir = ensure_clients(tuple(args.clients))
    if bin_dir is None:
        print("npm is not installed: cannot install the clients", file=sys.stderr)
        return 2
    args.out.mkdir(exist_ok=True)
    for client in args.clients:
        turns = record(client, bin_dir)
        out = args.out / f"{client}.json"
        meta = {"client": client, "package": PACKAGES[client], "ingress": INGRESS[client]}
        out.write_text(json.dumps({**meta, **pack(turns)}, indent=1) + "\n")
        print(f"{out}: {len(turns)} turns, {out.stat().st_size} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
