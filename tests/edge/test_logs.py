from __future__ import annotations

import io
import json
import logging

from edge_agent import logs


def test_key_value_and_json_lines() -> None:
    stream = io.StringIO()
    logs.configure("kv", "info", stream)
    logs.log("order.finished", order="o-1", outcome="disconnected", detail="two words", none=None)
    line = stream.getvalue().strip()
    assert 'level=info event=order.finished order=o-1 outcome=disconnected detail="two words"' in line
    assert "none=" not in line

    stream = io.StringIO()
    logs.configure("json", "info", stream)
    logs.log("attempt.failed", logging.WARNING, reason="meter_not_responding", attempt=2)
    obj = json.loads(stream.getvalue())
    assert obj["event"] == "attempt.failed" and obj["level"] == "warning" and obj["attempt"] == 2
    logging.getLogger().handlers.clear()
