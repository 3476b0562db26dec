"""Structured logs a field engineer can read on the concentrator's console or journal.

One line per event, either ``key=value`` (default)::

    2026-11-26T10:02:03.120Z level=info event=order.finished order=o-17 meter=m-3 outcome=disconnected attempts=1

or one JSON object per line (``agent.log_format = "json"``). Call :func:`log` with an
event name and fields; ordinary ``logging`` calls from libraries are printed too.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any, TextIO

LOGGER = logging.getLogger("rcd.edge")


def _quote(value: Any) -> str:
    text = str(value)
    if text == "" or any(c in text for c in ' "=\n\t'):
        return json.dumps(text)
    return text


def _stamp(record: logging.LogRecord) -> str:
    return (
        datetime.fromtimestamp(record.created, UTC)
        .isoformat(timespec="milliseconds")
        .replace("+00:00", "Z")
    )


class KeyValueFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        fields: dict[str, Any] = getattr(record, "fields", {})
        parts = [
            _stamp(record),
            f"level={record.levelname.lower()}",
            f"event={_quote(record.getMessage())}",
        ]
        parts += [f"{k}={_quote(v)}" for k, v in fields.items() if v is not None]
        if record.exc_info:
            parts.append(f"exc={_quote(self.formatException(record.exc_info))}")
        return " ".join(parts)


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        fields: dict[str, Any] = getattr(record, "fields", {})
        obj: dict[str, Any] = {
            "ts": _stamp(record),
            "level": record.levelname.lower(),
            "event": record.getMessage(),
        }
        obj.update({k: v for k, v in fields.items() if v is not None})
        if record.exc_info:
            obj["exc"] = self.formatException(record.exc_info)
        return json.dumps(obj, default=str)


def configure(fmt: str = "kv", level: str = "info", stream: TextIO | None = None) -> None:
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else KeyValueFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())


def log(event: str, level: int = logging.INFO, exc_info: bool = False, **fields: Any) -> None:
    LOGGER.log(level, event, extra={"fields": fields}, exc_info=exc_info)
