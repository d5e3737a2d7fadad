"""Keys and credentials out of captured headers and bodies, before anyone can read them."""

from __future__ import annotations

import re
from collections.abc import Iterable

from gateway.asgi import Headers

MASK = "[redacted]"

# Header names whose values are credentials, whatever the value looks like.
_SECRET_HEADER = re.compile(r"auth|key|token|secret|cookie|password", re.IGNORECASE)

# Values that look like keys wherever they appear in a body: bearer tokens, API keys of the
# usual providers (OpenAI/Anthropic/turnout ``sk-``, Google ``AIza``, AWS ``AKIA``, GitHub,
# Slack) and JSON members named like secrets.
_SECRET_VALUE = re.compile(
    r"""(?ix)
    (?P<field>"(?:[a-z_-]*api[_-]?key|authorization|x-api-key|password|passwd|secret|
        client[_-]?secret|access[_-]?token|refresh[_-]?token|token)"\s*:\s*)"(?:[^"\\]|\\.)*"
    | (?P<bearer>\bbearer\s+)[a-z0-9._~+/=-]{8,}
    | \bsk-[a-z0-9_-]{8,}
    | \bAIza[0-9a-z_-]{30,}
    | \bAKIA[0-9A-Z]{16}\b
    | \bgh[pousr]_[a-z0-9]{30,}
    | \bxox[abprs]-[a-z0-9-]{10,}
    """
)


class Redactor:
    """Masks credentials: by header name, by shape, and the configured secrets themselves."""

    __slots__ = ("_known",)

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        # Longest first, so a secret that contains another is masked whole. Very short ones
        # would mask ordinary words.
        self._known = sorted({s for s in secrets if len(s) >= 8}, key=len, reverse=True)

    def headers(self, headers: Headers) -> dict[str, str]:
        shown: dict[str, str] = {}
        for raw_name, raw_value in headers:
            name = raw_name.decode("latin-1").lower()
            value = raw_value.decode("latin-1")
            shown[name] = MASK if _SECRET_HEADER.search(name) else self.text(value)
        return shown

    def text(self, text: str) -> str:
        for secret in self._known:
            if secret in text:
                text = text.replace(secret, MASK)
        return _SECRET_VALUE.sub(_mask, text)


def _mask(match: re.Match[str]) -> str:
    if match.group("field") is not None:
        return f'{match.group("field")}"{MASK}"'
    if match.group("bearer") is not None:
        return match.group("bearer") + MASK
    return MASK
