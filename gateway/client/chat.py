"""``turnout chat``: an interactive conversation with a model of a running gateway.

Replies stream as they arrive. Input lines are kept with readline (arrow keys, Ctrl-R) in a
history file that outlives the session. A line ending in ``\\`` continues on the next one, and
a block between two ``\"\"\"`` lines is one message. Ctrl-C cancels the reply being written (or
the line being typed), Ctrl-D leaves. With stdin not a terminal it reads messages from it, so
``echo hi | turnout chat --json`` works in scripts.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gateway.client.output import emit_json, fail

if TYPE_CHECKING:
    from gateway.client.api import GatewayClient
    from gateway.client.conversation import Conversation

HELP = """commands:
  /help            this help
  /model [name]    show the model, or talk to another one from the next message on
  /switch <role>   load a local role on the gateway (progress shown), then talk to it
  /history         the conversation so far
  /clear           forget the conversation (the system prompt stays)
  /exit            leave (or Ctrl-D)
input:
  a line ending in \\ continues on the next line; \"\"\" on its own line starts and ends a block
  Ctrl-C cancels the reply being written; //text sends /text"""
COMMANDS = ("/help", "/model", "/switch", "/history", "/clear", "/exit", "/quit")
BLOCK = '"""'


def add_parser(commands: Any, common: argparse.ArgumentParser) -> None:
    parser = commands.add_parser(
        "chat",
        parents=[common],
        help="chat with a model of a running gateway (streaming, history, /commands)",
        description="Interactive chat: replies stream as they arrive, /help lists the commands. "
        "Reads messages from stdin when it is not a terminal.",
    )
    parser.add_argument(
        "--model", help="model to talk to (env TURNOUT_MODEL; default: first available)"
    )
    parser.add_argument("--system", help="system prompt")
    parser.add_argument(
        "--no-stream", action="store_true", help="ask for whole replies instead of a stream"
    )
    parser.add_argument(
        "--history-file",
        help="input history (env TURNOUT_CHAT_HISTORY; default ~/.local/share/turnout/chat_history)",
    )
    parser.add_argument(
        "--timeout", type=float, default=600.0, help="seconds to wait for the gateway (600)"
    )
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from gateway.client.api import ClientError, GatewayClient
    from gateway.client.conversation import Conversation
    from gateway.client.settings import SettingsError, from_args

    try:
        settings = from_args(args)
        client = GatewayClient(
            settings.url, key=settings.api_key, admin_key=settings.admin, timeout=args.timeout
        )
        model = settings.model or first_model(client)
    except (ClientError, SettingsError) as exc:
        return fail(str(exc))
    conversation = Conversation(client, model, args.system, stream=not args.no_stream)
    interactive = sys.stdin.isatty()
    lines = Lines(history_path(args.history_file) if interactive else None, interactive)
    repl = Repl(conversation, lines, as_json=args.json, interactive=interactive)
    if interactive and not args.json:
        print(f"turnout chat: {model} at {settings.url} (/help for commands, Ctrl-D to leave)")
    return repl.loop()


def first_model(client: GatewayClient) -> str:
    from gateway.client.api import ClientError

    models = [m for m in client.models() if not m.get("alias_of")]
    if not models:
        raise ClientError(f"{client.url} serves no models; pass --model")
    # The first available one, else the first one (which will then say why it is not).
    return str(min(models, key=lambda m: not m.get("available"))["id"])


def history_path(flag: str | None) -> Path:
    explicit = flag or os.environ.get("TURNOUT_CHAT_HISTORY")
    if explicit:
        return Path(explicit).expanduser()
    data = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(data) / "turnout" / "chat_history"


class Lines:
    """Where messages come from: readline with a persistent history, or plain stdin."""

    def __init__(self, history: Path | None, interactive: bool) -> None:
        self.history = history
        self.interactive = interactive
        self._warned = False
        if interactive:
            import readline

            readline.set_history_length(1000)
            readline.set_completer(_complete)
            readline.set_completer_delims(" ")
            if "libedit" in (readline.__doc__ or ""):  # macOS's Python
                readline.parse_and_bind("bind ^I rl_complete")
            else:
                readline.parse_and_bind("tab: complete")
            if history is not None and history.exists():
                try:
                    readline.read_history_file(history)
                except OSError as exc:
                    self._warn(f"cannot read the history file {history}: {exc}")

    def read(self, prompt: str) -> str:
        """One line; EOFError at the end, KeyboardInterrupt on Ctrl-C."""
        return input(prompt if self.interactive else "")

    def entry(self, prompt: str) -> str:
        """One message: a line, lines joined by a trailing \\, or a \"\"\" block."""
        line = self.read(prompt)
        if line.lstrip().startswith(BLOCK):
            text = self._block(line.lstrip()[len(BLOCK) :])
        else:
            parts = []
            while line.endswith("\\"):
                parts.append(line[:-1])
                line = self.read("... ")
            text = "\n".join([*parts, line])
        self.save()
        return text

    def _block(self, first: str) -> str:
        if first.rstrip().endswith(BLOCK):  # """all on one line"""
            return first.rstrip()[: -len(BLOCK)]
        parts = [first] if first.strip() else []
        while True:
            line = self.read("... ")
            if line.rstrip().endswith(BLOCK):
                parts.append(line.rstrip()[: -len(BLOCK)])
                return "\n".join(parts).strip("\n")
            parts.append(line)

    def save(self) -> None:
        # After every message, so a killed terminal loses nothing.
        if self.history is None:
            return
        import readline

        try:
            self.history.parent.mkdir(parents=True, exist_ok=True)
            readline.write_history_file(self.history)
        except OSError as exc:
            self._warn(f"cannot write the history file {self.history}: {exc}")

    def _warn(self, message: str) -> None:
        if not self._warned:
            self._warned = True
            print(f"warning: {message}", file=sys.stderr)


class Repl:
    def __init__(
        self, conversation: Conversation, lines: Lines, *, as_json: bool, interactive: bool
    ) -> None:
        self.conversation = conversation
        self.lines = lines
        self.as_json = as_json
        self.interactive = interactive
        self.failures = 0
        self.commands: dict[str, Callable[[str], bool]] = {
            "/help": self._help,
            "/model": self._model,
            "/switch": self._switch,
            "/history": self._history,
            "/clear": self._clear,
            "/exit": self._exit,
            "/quit": self._exit,
        }

    def loop(self) -> int:
        while True:
            try:
                text = self.lines.entry(f"{self.conversation.model}> ")
            except EOFError:
                if self.interactive:
                    print()
                break
            except KeyboardInterrupt:
                if not self.interactive:
                    return 130
                print("^C")
                continue
            if not self.handle(text):
                break
        # Scripts learn from the exit code that a reply failed; a person saw it happen.
        return 1 if self.failures and not self.interactive else 0

    def handle(self, text: str) -> bool:
        """Act on one message or command; False to leave."""
        stripped = text.strip()
        if not stripped:
            return True
        if stripped.startswith("/") and not stripped.startswith("//"):
            name, _, rest = stripped.partition(" ")
            command = self.commands.get(name)
            if command is None:
                self._error(f"unknown command {name}; /help lists them")
                return True
            return command(rest.strip())
        self._ask(text[1:] if stripped.startswith("//") else text)
        return True

    def _ask(self, text: str) -> None:
        from gateway.client.api import ClientError

        streaming = self.conversation.stream and not self.as_json
        try:
            reply = self.conversation.ask(text, self._write if streaming else None)
        except KeyboardInterrupt:
            print("\n[reply cancelled]" if streaming else "[reply cancelled]", flush=True)
            return
        except ClientError as exc:
            if streaming:
                print(flush=True)
            self._error(str(exc))
            return
        if self.as_json:
            emit_json(reply.as_json())
        elif streaming:
            print(flush=True)
        else:
            print(reply.text, flush=True)

    @staticmethod
    def _write(delta: str) -> None:
        sys.stdout.write(delta)
        sys.stdout.flush()

    def _error(self, message: str) -> None:
        self.failures += 1
        if self.as_json:
            emit_json({"error": message})
        fail(message)

    def _say(self, message: str, value: dict[str, Any]) -> None:
        if self.as_json:
            emit_json(value)
        else:
            print(message, flush=True)

    # --- the slash commands -----------------------------------------------------------------

    def _help(self, _: str) -> bool:
        self._say(HELP, {"help": HELP})
        return True

    def _model(self, name: str) -> bool:
        from gateway.client.api import ClientError

        if name:
            try:
                known = {m.get("id") for m in self.conversation.client.models()}
            except ClientError as exc:
                print(f"warning: cannot check the model list: {exc}", file=sys.stderr)
                known = {name}  # the next message will tell
            if name not in known:
                listed = ", ".join(sorted(str(k) for k in known))
                self._error(f"unknown model {name!r}; models: {listed}")
                return True
            self.conversation.model = name
        model = self.conversation.model
        self._say(f"model: {model}", {"model": model})
        return True

    def _switch(self, role: str) -> bool:
        from gateway.client.api import ClientError
        from gateway.client.switch import StatePrinter, follow

        if not role:
            self._error("usage: /switch <role>")
            return True
        printer = None if self.as_json else StatePrinter(sys.stdout)
        try:
            try:
                outcome = follow(self.conversation.client, role, 600.0, printer)
            finally:
                if printer is not None:
                    printer.close()
        except ClientError as exc:
            self._error(str(exc))
            return True
        except KeyboardInterrupt:
            print("[stopped following the switch; it goes on in the gateway]", flush=True)
            return True
        if not outcome["ok"]:
            self._error(outcome["error"])
            return True
        self.conversation.model = role
        seconds = outcome["elapsed_seconds"]
        self._say(f"{role} is ready ({seconds:.1f} s); talking to {role}", outcome)
        return True

    def _history(self, _: str) -> bool:
        messages = self.conversation.messages()
        if self.as_json:
            emit_json({"history": messages})
        elif not messages:
            print("(no messages yet)")
        else:
            for message in messages:
                print(f"{message['role']}: {message['content']}")
        return True

    def _clear(self, _: str) -> bool:
        self.conversation.clear()
        self._say("conversation cleared", {"cleared": True})
        return True

    def _exit(self, _: str) -> bool:
        return False


def _complete(text: str, state: int) -> str | None:
    matches = [c + " " for c in COMMANDS if c.startswith(text)] if text.startswith("/") else []
    return matches[state] if state < len(matches) else None
