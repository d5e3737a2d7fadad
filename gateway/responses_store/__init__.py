"""Stored Responses: ``store: true`` responses kept per caller, and the conversations they continue.

``records`` is one stored response; ``store`` keeps them (memory first, a database behind,
written off the request path); ``backend`` is what that database implements: ``sqlite`` on this
machine, ``postgres`` shared by replicas; ``recording`` takes a whole answer or a stream's final
Response into the store; ``listing`` pages a response's input items for
``GET /v1/responses/{id}/input_items``.
"""
