"""An MCP server written with the ``mcp`` SDK, for the tests (and the MCP part of the docs).

    python -m tests.tools_fixtures.mcp_server                  # stdio
    python -m tests.tools_fixtures.mcp_server --http PORT      # streamable HTTP on 127.0.0.1

Tools: ``add`` (structured result), ``echo`` (text), ``files.read/v2`` (a name outside
OpenAI's charset), ``whoami`` (the server's pid, so a test can kill it), ``fail`` (an error
result), ``sleep`` (a slow call), and, when $MCP_FIXTURE_EXTRA is set, ``extra``.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os

from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError

server = MCPServer("turnout-fixture", log_level="WARNING")


@server.tool()
def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


@server.tool()
def echo(text: str) -> str:
    """Say the text back."""
    return text


@server.tool(name="files.read/v2")
def read_file(path: str) -> str:
    """Pretend to read a file."""
    return f"contents of {path}"


@server.tool()
def whoami() -> dict[str, int]:
    """The server process id."""
    return {"pid": os.getpid()}


@server.tool()
def fail(reason: str = "asked to fail") -> str:
    """Always fails."""
    raise ToolError(reason)


@server.tool()
async def sleep(seconds: float) -> str:
    """Answer after a while."""
    await asyncio.sleep(seconds)
    return "slept"


if os.environ.get("MCP_FIXTURE_EXTRA"):

    @server.tool()
    def extra() -> str:
        """Only listed when the environment asks for it."""
        return "extra"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--http", type=int, default=0, help="serve streamable HTTP on this port")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    if args.http:
        server.run("streamable-http", host="127.0.0.1", port=args.http)
    else:
        server.run("stdio")


if __name__ == "__main__":
    main()
