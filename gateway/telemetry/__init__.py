"""OpenTelemetry traces of the gateway's requests (GenAI semantic conventions).

- ``settings.py``: whether to export and where, from routing.yaml's ``telemetry`` section and
  the standard OTEL_* variables (pure; no SDK import);
- ``spans.py``: the spans of one finished request, built from its ``Call`` record after the
  answer with explicit start and end times;
- ``protobuf.py``: those spans in OTLP's protobuf wire format, written directly (it says why);
- ``exporter.py``: the batching OTLP/HTTP exporter, on the event loop.

Off (the default), neither spans.py nor exporter.py is imported and a request pays one
attribute test (``GatewayState.tracer is None``, in gateway/pipeline/accounting.py);
tests/test_telemetry.py checks that no function of this package runs per request then.
"""
