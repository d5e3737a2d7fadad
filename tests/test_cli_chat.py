"""`turnout chat` driven like a person drives it: through a pseudo-terminal, keys and all.

The chat process gets a real pty as its controlling terminal (util-linux `setsid --ctty`), so
readline, arrow keys, Ctrl-R, Ctrl-C (the terminal turns it into SIGINT) and Ctrl-D behave as
in a terminal emulator. The gateway and its fake upstream run on a thread of the test process.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import select
import shutil
import signal
import struct
import subprocess
import sys
import termios
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.cli_harness import ADMIN_KEY, ROOT, Served, cli_env, serve_in_thread, turnout
from tests.fakes.openai_upstream import FakeOpenAI

pytestmark = pytest.mark.skipif(
    shutil.which("setsid") is None, reason="needs util-linux setsid to give the chat a terminal"
)

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b[=>]|\x1b\][^\x07]*\x07|[\r\x07]")
UP = "\x1b[A"
CTRL_C, CTRL_D, CTRL_R = "\x03", "\x04", "\x12"


class Terminal:
    """A process on a pseudo-terminal; ``expect`` waits for a pattern in what it printed."""

    def __init__(self, args: list[str], env: dict[str, str]) -> None:
        master, slave = os.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 50, 200, 0, 0))
        self.process = subprocess.Popen(
            ["setsid", "--ctty", sys.executable, "-m", "gateway", *args],
            stdin=slave,
            stdout=slave,
            stderr=slave,
            cwd=ROOT,
            env={**env, "TERM": "xterm"},
        )
        os.close(slave)
        self.fd = master
        self.screen = ""  # everything printed so far, escape sequences and \r removed
        self.mark = 0  # where the next expect starts looking

    def _read(self, timeout: float) -> bool:
        ready, _, _ = select.select([self.fd], [], [], timeout)
        if not ready:
            return False
        try:
            data = os.read(self.fd, 65536)
        except OSError:  # EIO: the process is gone and the pty closed
            return False
        self.screen += ANSI.sub("", data.decode(errors="replace"))
        return bool(data)

    def expect(self, pattern: str, timeout: float = 15.0) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        compiled = re.compile(pattern)
        while True:
            found = compiled.search(self.screen, self.mark)
            if found:
                self.mark = found.end()
                return found
            left = deadline - time.monotonic()
            if left <= 0 or (not self._read(min(left, 0.5)) and self.process.poll() is not None):
                self._read(0.2)
                raise AssertionError(
                    f"never saw {pattern!r}; the screen after the last match:\n"
                    f"{self.screen[self.mark :]}"
                )

    def send(self, keys: str) -> None:
        os.write(self.fd, keys.encode())

    def interrupt(self) -> None:
        """Ctrl-C. At a prompt, CPython's readline notices a signal only while it waits in
        select(): one that lands while it is still drawing the prompt or handling the previous
        key waits for the next key. A person is never that fast; a test is, so let it settle."""
        time.sleep(0.2)
        self.send(CTRL_C)

    def line(self, text: str) -> None:
        self.send(text + "\r")  # Enter; the terminal turns it into \n

    def prompt(self, model: str = "chat") -> None:
        self.expect(re.escape(f"{model}> "))

    def wait(self, timeout: float = 15.0) -> int:
        deadline = time.monotonic() + timeout
        while self.process.poll() is None and time.monotonic() < deadline:
            self._read(0.1)
        return self.process.wait(timeout=1)

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        os.close(self.fd)


def raw_config(fake: FakeOpenAI | None) -> dict[str, Any]:
    assert fake is not None
    up = {"kind": "openai", "base_url": fake.url, "local": True}
    return {
        "providers": {"up": up},
        "models": [
            {"name": "chat", "targets": [{"provider": "up", "model": "ok"}]},
            # any model name that is not a scenario answers like "ok"
            {"name": "second", "targets": [{"provider": "up", "model": "gpt-4o"}]},
            {"name": "broken", "targets": [{"provider": "up", "model": "error-500"}]},
        ],
        "routing": {"retries": 0},
        "auth": {"admin_key": ADMIN_KEY},
    }


@pytest.fixture(scope="module")
def served() -> Iterator[Served]:
    with serve_in_thread(raw_config, FakeOpenAI(stream_chunks=8)) as running:
        yield running


@pytest.fixture
def fake(served: Served) -> Iterator[FakeOpenAI]:
    assert served.fake is not None
    served.fake.chunk_delay = 0.0
    yield served.fake
    served.fake.chunk_delay = 0.0


@pytest.fixture
def env(served: Served, tmp_path: Path) -> dict[str, str]:
    return cli_env(tmp_path, TURNOUT_URL=served.url, TURNOUT_API_KEY=ADMIN_KEY)


@pytest.fixture
def terminals() -> Iterator[list[Terminal]]:
    opened: list[Terminal] = []
    yield opened
    for terminal in opened:
        terminal.close()


def chat(terminals: list[Terminal], env: dict[str, str], *args: str) -> Terminal:
    terminal = Terminal(["chat", *args], env)
    terminals.append(terminal)
    return terminal


def test_a_session_streams_replies_and_handles_every_command(
    env: dict[str, str], fake: FakeOpenAI, terminals: list[Terminal], tmp_path: Path
) -> None:
    term = chat(terminals, env, "--model", "chat")
    term.expect(r"turnout chat: chat at http://127\.0\.0\.1:\d+ \(/help for commands")
    term.prompt()

    # A reply is printed as it streams: its first words show well before its last ones.
    fake.chunk_delay = 0.15
    term.line("hello there")
    term.expect(r"echo")
    first_seen = time.monotonic()
    term.expect(r": hello there\n")
    assert time.monotonic() - first_seen > 0.5, "the reply was not streamed"
    fake.chunk_delay = 0.0
    term.prompt()

    term.line("first line \\")
    term.expect(r"\.\.\. ")
    term.line("second line")
    term.expect(r"echo: first line \nsecond line\n")
    term.prompt()
    assert fake.requests[-1].body["messages"][-1]["content"] == "first line \nsecond line"

    term.line('"""')
    term.line("block one")
    term.line("")
    term.line('block two"""')
    term.expect(r"echo: block one\n\nblock two\n")
    term.prompt()

    term.line("/help")
    term.expect(r"/switch <role>")
    term.prompt()

    term.line("/model nope")
    term.expect(r"error: unknown model 'nope'; models: broken, chat, second\n")
    term.prompt("chat")
    term.line("/model second")
    term.expect(r"model: second\n")
    term.prompt("second")
    term.line("and now?")
    term.expect(r"echo: and now\?\n")
    term.prompt("second")
    assert fake.requests[-1].body["model"] == "gpt-4o"
    assert len(fake.requests[-1].body["messages"]) == 7  # the conversation goes along

    term.line("/history")
    term.expect(r"user: hello there\nassistant: echo: hello there\nuser: first line \nsecond line")
    term.expect(r"user: and now\?\nassistant: echo: and now\?\n")
    term.prompt("second")
    term.line("/clear")
    term.expect(r"conversation cleared\n")
    term.line("/history")
    term.expect(r"\(no messages yet\)\n")
    term.line("/bogus")
    term.expect(r"error: unknown command /bogus; /help lists them\n")
    term.line("/exit")
    assert term.wait() == 0
    assert "Traceback" not in term.screen

    history = (tmp_path / "history").read_text().splitlines()
    assert "hello there" in history and "/model second" in history and history[-1] == "/exit"

    # A second session starts with the first one's input history: arrow keys and Ctrl-R.
    again = chat(terminals, env, "--model", "chat")
    again.prompt()
    again.send(UP + UP)  # the last two inputs: /exit, then /bogus
    again.expect(r"/exit\S*bogus")  # readline redraws only what changed
    again.send("\x15")  # Ctrl-U: clear the line
    again.send(CTRL_R + "hello th")
    again.expect(r"hello th")
    again.send("\r")
    again.expect(r"echo: hello there\n")
    again.prompt()
    again.send("/his\t")  # Tab completes the command
    again.expect(r"/history ")
    again.send("\r")
    again.expect(r"user: hello there\nassistant: echo: hello there\n")
    again.prompt()
    again.send(CTRL_D)
    assert again.wait() == 0


def test_ctrl_c_cancels_the_reply_and_ctrl_d_leaves(
    served: Served, env: dict[str, str], fake: FakeOpenAI, terminals: list[Terminal]
) -> None:
    term = chat(terminals, env, "--model", "chat")
    term.prompt()
    term.line("ctrl-c at the prompt just clears the line")
    term.expect(r"echo: ctrl-c at the prompt")
    term.prompt()
    term.send("half typed")
    term.interrupt()
    term.expect(r"\^C\n")
    term.prompt()

    disconnects = _disconnects(served)
    fake.chunk_delay = 0.5  # 8 chunks: 4 s for the whole reply
    term.line("a long answer please")
    term.expect(r"echo")
    term.send(CTRL_C)  # mid-stream: the read of the socket is interrupted at once
    term.expect(r"\[reply cancelled\]\n")
    term.prompt()
    fake.chunk_delay = 0.0
    # The gateway saw the client hang up and cancelled the upstream request.
    deadline = time.monotonic() + 5
    while _disconnects(served) <= disconnects and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _disconnects(served) > disconnects

    term.line("/history")  # the cancelled exchange is not part of the conversation
    shown = term.expect(r"(?s)/history\n(.*?)\nchat> ").group(1)
    assert shown == (
        "user: ctrl-c at the prompt just clears the line\n"
        "assistant: echo: ctrl-c at the prompt just clears the line"
    )
    term.line("still here?")
    term.expect(r"echo: still here\?\n")
    term.prompt()
    term.send(CTRL_D)
    assert term.wait() == 0
    assert "Traceback" not in term.screen


def test_gateway_errors_are_one_line_and_the_session_goes_on(
    env: dict[str, str], fake: FakeOpenAI, terminals: list[Terminal]
) -> None:
    term = chat(terminals, env, "--model", "broken", "--system", "be brief")
    term.prompt("broken")
    term.line("hi")
    term.expect(r"error: HTTP 502: all 1 attempts for model 'broken' failed; last: up/error-500: ")
    term.prompt("broken")
    term.line("/model chat")
    term.prompt("chat")
    term.line("hi again")
    term.expect(r"echo: hi again\n")
    assert fake.requests[-1].body["messages"] == [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "hi again"},
    ]
    term.line("/exit")
    assert term.wait() == 0
    assert "Traceback" not in term.screen


def test_no_stream_prints_the_whole_reply(
    env: dict[str, str], fake: FakeOpenAI, terminals: list[Terminal]
) -> None:
    term = chat(terminals, env, "--model", "chat", "--no-stream")
    term.prompt()
    term.line("whole")
    term.expect(r"echo: whole\n")
    assert fake.requests[-1].body["stream"] is False
    term.prompt()  # Ctrl-D before readline has the terminal would be read in cooked mode
    term.send(CTRL_D)
    assert term.wait() == 0


def test_piped_json_mode_prints_one_json_line_per_reply(
    env: dict[str, str], fake: FakeOpenAI
) -> None:
    script = 'one\ntwo \\\nlines\n"""\nblock\n"""\n/model broken\nthree\n/history\n'
    result = turnout("chat", "--json", "--model", "chat", env=env, stdin=script)
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert [line.get("content") for line in lines[:3]] == [
        "echo: one",
        "echo: two \nlines",
        "echo: block",
    ]
    assert lines[0]["usage"]["completion_tokens"] > 0 and lines[0]["latency_ms"] > 0
    assert lines[3] == {"model": "broken"}
    assert lines[4]["error"].startswith("HTTP 502: all 1 attempts for model 'broken' failed")
    assert [m["role"] for m in lines[5]["history"]] == ["user", "assistant"] * 3
    # A script learns from the exit code that a reply failed.
    assert result.returncode == 1
    assert result.stderr.startswith("error: HTTP 502") and "Traceback" not in result.stderr
    ok = turnout("chat", "--json", "--no-stream", env=env, stdin="default model\n")
    assert ok.returncode == 0 and json.loads(ok.stdout)["content"] == "echo: default model"


def _disconnects(served: Served) -> float:
    with urllib.request.urlopen(served.url + "/metrics") as response:
        text = response.read().decode()
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("turnout_client_disconnects_total")
    )


# --- /switch on real llama-server engines -------------------------------------------------------


@pytest.mark.engine
def test_switch_in_chat_loads_the_role_and_talks_to_it(
    tiny_models: dict[str, Path], tmp_path: Path, terminals: list[Terminal]
) -> None:
    from tests.engines.engines import HELLO_TEXT
    from tests.test_engines import role

    def raw(_: FakeOpenAI | None) -> dict[str, Any]:
        return {
            "roles": {
                "fast": role(tiny_models["tiny-hello"]),
                "coder": role(tiny_models["tiny-toolcall"]),
            },
            "engines": {
                "max_wait_seconds": 2,
                "wait_timeout_seconds": 60,
                "log_dir": str(tmp_path),
            },
            "routing": {"retries": 0},
        }

    with serve_in_thread(raw) as engines:
        env = cli_env(tmp_path, TURNOUT_URL=engines.url)
        term = chat(terminals, env, "--model", "coder")
        term.prompt("coder")
        term.line("/switch fast")
        term.expect(r"starting role fast\n")
        term.expect(r"fast is ready \([\d.]+ s\); talking to fast\n")
        term.prompt("fast")
        term.line("hi")
        term.expect(re.escape(HELLO_TEXT))
        term.prompt("fast")
        term.line("/switch nope")
        term.expect(r"error: HTTP 404: unknown role 'nope'; roles: coder, fast\n")
        term.prompt("fast")
        term.send(CTRL_D)
        assert term.wait() == 0
        status = json.loads(turnout("status", "--json", env=env).stdout)
        assert status["role"] == "fast"


def test_the_terminal_helper_delivers_ctrl_c_as_sigint(
    env: dict[str, str], terminals: list[Terminal]
) -> None:
    """Guards the harness itself: without a controlling terminal Ctrl-C would be plain text."""
    term = Terminal(["chat", "--model", "chat"], env)
    terminals.append(term)
    term.prompt()
    assert os.getsid(term.process.pid) == term.process.pid
    term.interrupt()
    term.expect(r"\^C")
    term.process.send_signal(signal.SIGTERM)
    term.wait()
