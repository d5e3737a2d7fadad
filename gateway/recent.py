"""The newest usage rows in memory, for the dashboard's live table (GET /v1/requests/recent)."""

from __future__ import annotations

from collections import deque

from gateway.usage import UsageRecord

# Usage rows kept for the dashboard.
RECENT_REQUESTS = 500


class RecentRequests:
    def __init__(self, size: int = RECENT_REQUESTS) -> None:
        # Oldest first; ``count`` is how many were ever appended (a polling cursor).
        self.rows: deque[UsageRecord] = deque(maxlen=size)
        self.count = 0

    def append(self, record: UsageRecord) -> None:
        self.rows.append(record)
        self.count += 1
