"""msgspec's decode errors, rewritten to lead with the key path a user can find in the file."""

from __future__ import annotations

import re


def readable(message: str, section: str = "") -> str:
    """msgspec says ``Expected `int`, got `str` - at `$.server.port```; lead with the path instead.

    ``section``: the top-level key the decoded document sat under (a plugin's own section).
    """
    match = re.search(r" - at `\$\.?(.*)`$", message)
    if not match and not section:
        return message
    path = ".".join(p for p in (section, match.group(1) if match else "") if p) or "(top level)"
    what = message[: match.start()] if match else message
    what = what.replace("Object contains unknown field", "unknown key")
    return f"{path}: {what}"
