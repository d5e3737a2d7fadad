"""Request captures for debugging: the last few exchanges, bodies and all (like llama-swap's).

- ``redact.py``: what must never be shown (keys, authorization headers, secret-looking strings);
- ``ring.py``: the bounded ring of captured exchanges and which requests go in it;
- ``recording.py``: the ``Client`` wrapper that copies an answer as it is sent.

Opt-in (routing.yaml ``capture:``); off, a request pays one attribute test
(``GatewayState.captures is None``, in gateway/pipeline/run.py). Not to be confused with
gateway/plugins/capture.py, which keeps a reply's text for plugins' ``after_response``.
"""
