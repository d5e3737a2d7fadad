"""Peers: other turnouts whose roles this one routes to (issue 17).

``policy`` decides (pure), ``watcher`` follows one peer's engines, ``fleet`` ties them to the
forwarder and to ``/engine/status``.
"""
