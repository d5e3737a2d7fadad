"""Anthropic's error types, as the HTTP statuses they stand for."""

from __future__ import annotations

import msgspec

from gateway.errors import UpstreamStatus

_STATUS = {
    "invalid_request_error": 400,
    "authentication_error": 401,
    "billing_error": 402,
    "permission_error": 403,
    "not_found_error": 404,
    "request_too_large": 413,
    "rate_limit_error": 429,
    "api_error": 500,
    "timeout_error": 504,
    "overloaded_error": 529,
}


def stream_error(data: bytes) -> UpstreamStatus:
    """An in-stream ``error`` event, as the HTTP error it stands for (overloaded: 529)."""
    try:
        value = msgspec.json.decode(data)
    except msgspec.DecodeError:
        value = None
    error = value.get("error") if isinstance(value, dict) else None
    kind = error.get("type") if isinstance(error, dict) else None
    status = _STATUS.get(kind, 500) if isinstance(kind, str) else 500
    return UpstreamStatus(status, data)
