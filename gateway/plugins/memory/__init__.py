"""The memory plugin: what agents remember, scoped by agent, project and channel.

``plugins.enabled: [memory]`` in routing.yaml turns it on; the ``memory:`` section configures
it. Items (kinds conversation, kb, task, event, summary) are embedded by a local ONNX model or
by one of the gateway's own embeddings routes, stored in SQLite with sqlite-vec, and found by
cosine similarity blended with recency. See ``plugin.py`` for the hooks, ``api.py`` for HTTP.
"""
