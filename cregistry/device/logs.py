"""The agent's log: one event per line, as text or as JSON."""

from __future__ import annotations

import json
import logging
from typing import Any

from cregistry.timestamps import isoformat

# One logger for the whole agent, the one `cregistry device run` sends to stderr.
log = logging.getLogger("cregistry.device")


def event(level: int, name: str, message: str, **fields: Any) -> None:
    """One log line; `fields` appear as keys in --log-format json."""
    log.log(level, message, extra={"fields": {"event": name, **fields}})


def describe_os_error(error: OSError) -> str:
    return f"{type(error).__name__}: {error.strerror or error}"


class TextLogFormatter(logging.Formatter):
    """2026-11-21T20:00:00Z INFO connected as sensor-17 to broker:1883"""

    def format(self, record: logging.LogRecord) -> str:
        line = f"{isoformat(record.created)} {record.levelname} {record.getMessage()}"
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


class JsonLogFormatter(logging.Formatter):
    """One JSON object per line: time, level, message and the event's fields."""

    def format(self, record: logging.LogRecord) -> str:
        data: dict[str, Any] = {"time": isoformat(record.created), "level": record.levelname}
        data["message"] = record.getMessage()
        data.update(getattr(record, "fields", {}))
        if record.exc_info:
            data["exception"] = self.formatException(record.exc_info)
        return json.dumps(data, ensure_ascii=False)
