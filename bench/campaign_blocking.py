"""A plain (blocking) python tool for the campaign: it holds its thread for ``seconds``.

Imported by the gateway under test (``tools.registry`` target ``bench.campaign_blocking:block``)
to show whether tools stuck past their timeout starve the threads the control plane needs.
"""

from __future__ import annotations

import time


def block(seconds: float = 20.0) -> str:
    time.sleep(min(float(seconds), 60.0))
    return "unblocked"
