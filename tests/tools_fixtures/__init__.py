"""Real tool servers for the tools plugin's tests: an MCP server (stdio or streamable HTTP),
an HTTP tool server on loopback, and plain Python functions for the python executor."""
