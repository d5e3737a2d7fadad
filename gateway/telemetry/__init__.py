"""OpenTelemetry traces of the gateway's requests (GenAI semantic conventions).

- ``settings.py``: whether to export and where, from routing.yaml's ``telemetry`` section and
  the standard OTEL_* variables (pure; no SDK import);
- ``spans.py``: what the spans of one finished request need, taken from its ``Call`` record
  after the answer (ids, times, tokens), and the heads many requests' spans share;
- ``link.py``: ships those to the tracing worker over a pipe, starting it when needed;
- ``worker.py``: the worker process: ``encoding.py`` writes the spans in OTLP's protobuf wire
  format (``protobuf.py``, written directly: it says why) and ``exporter.py`` batches and posts
  them over OTLP/HTTP.

Off (the default), neither spans.py nor exporter.py is imported and a request pays one
attribute test (``GatewayState.tracer is None``, in gateway/pipeline/accounting.py);
tests/test_telemetry.py checks that no function of this package runs per request then.
"""
