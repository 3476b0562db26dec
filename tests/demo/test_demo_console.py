"""The demo console keeps the relay audit's failed reads of the meters the demo breaks on
purpose out of its output (they repeat every few seconds), and only those."""

from __future__ import annotations

import logging

from ops.demo_console import QuietAudit
from ops.demo_scenarios import SCENARIOS


def record(message: str, meter: str) -> logging.LogRecord:
    entry = logging.LogRecord("rcd.agent", logging.WARNING, __file__, 1, message, None, None)
    entry.fields = {"meter": meter, "trigger": "log_poll"}
    return entry


def test_audit_failures_of_broken_meters_are_dropped_and_nothing_else() -> None:
    quiet = QuietAudit(SCENARIOS)
    assert not quiet.filter(record("audit.failed", "DC01-M05"))  # does not answer, on purpose
    assert quiet.filter(record("audit.failed", "DC01-M10"))  # a healthy meter failing: shown
    assert quiet.filter(record("attempt.failed", "DC01-M05"))  # the order's own story stays
