"""Stored Responses: ``store: true`` responses kept per caller, and the conversations they continue.

``records`` is one stored response; ``store`` keeps them (memory first, SQLite behind, written
off the request path); ``recording`` takes a whole answer or a stream's final Response into
the store; ``listing`` pages a response's input items for ``GET /v1/responses/{id}/input_items``.
"""
