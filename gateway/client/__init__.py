"""The ``turnout`` commands that talk to a running gateway over its HTTP API.

``settings`` finds the gateway (flags, environment, config file), ``api`` is a small typed
client on the standard library, and each command has its own module. Nothing heavy is imported
at module level: ``turnout --help`` builds every command's parser, so it must stay cheap.
"""
