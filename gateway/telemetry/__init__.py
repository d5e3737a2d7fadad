"""OpenTelemetry traces of the gateway's requests (GenAI semantic conventions).

- ``settings.py``: whether to export and where, from routing.yaml's ``telemetry`` section and
  the standard OTEL_* variables (pure; no SDK import);
- ``spans.py``: the spans of one finished request, built from its ``Call`` record after the
  answer with explicit start and end times, and the SDK's batching exporter behind them.

Off (the default), nothing here imports the OpenTelemetry SDK and a request pays one attribute
test (``GatewayState.tracer is None``, in gateway/pipeline/accounting.py).
"""
