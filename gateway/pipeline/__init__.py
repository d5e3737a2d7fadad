"""The one request pipeline every client protocol goes through (OpenAI, Anthropic, Responses).

Per request, in order, whatever the transport (an HTTP request or a chat on a WebSocket):

- ``call.py``: the one record a request fills on its way through (``Call``), and what differs
  per client protocol (``Dialect``);
- ``client.py``: the other end, as the pipeline sees it: where the answer goes and whether the
  caller left (``Client``); HTTP's is in ``endpoint.py``, the WebSocket's in gateway/api/websocket.py;
- ``admission.py``: identity -> model -> permission -> budget -> rate limits, then plugins'
  ``before_upstream``: every refusal before any upstream is touched;
- ``relay.py``: the answer: a whole body, or a stream relayed event by event with keep-alives
  while the upstream is silent; errors in the protocol's envelope, in-band once committed;
- ``accounting.py``: metrics, the usage row, the rate-limit settlement and ``after_response``,
  for every request however it ended;
- ``run.py``: the order of those steps (``Pipeline``);
- ``endpoint.py``: the raw-ASGI glue only (kept raw for speed; see gateway/asgi.py).
"""
