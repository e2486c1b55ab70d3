"""Time as cregistry stores it (epoch seconds) and shows it (ISO 8601, UTC)."""

from __future__ import annotations

import datetime


def isoformat(timestamp: float | None) -> str | None:
    if timestamp is None:
        return None
    moment = datetime.datetime.fromtimestamp(timestamp, tz=datetime.UTC)
    return moment.isoformat(timespec="seconds").replace("+00:00", "Z")
