"""What the demo checks and prints at the end: one :class:`Row` per scenario.

:func:`check_row` compares an order's end (its outcome, reason, work order, what Legacy
received, the energy read) with what its :class:`ops.demo_scenarios.Scenario`
expects; :func:`render_table` prints the rows; :class:`DemoReport` is the run's
result (``rcd demo --json``).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

from ops.demo_relay import RelayOutcome
from ops.demo_scenarios import EVENT_CODES, Scenario


@dataclass
class Row:
    scenario: Scenario
    outcome: str = "pending"
    reason: str = ""
    energy: str = ""
    attempts: int = 0
    seconds: float | None = None
    work_order: str = ""
    legacy_event: str = ""
    order_id: str = ""
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


@dataclass
class DemoReport:
    rows: list[Row]
    dashboard_url: str
    broker: str
    elapsed_s: float
    relay: RelayOutcome | None = None  # the button press and the incident (issue 16)

    @property
    def ok(self) -> bool:
        return all(row.ok for row in self.rows) and (self.relay is None or self.relay.ok)

    def to_json(self) -> str:
        return json.dumps(
            {
                "ok": self.ok,
                "broker": self.broker,
                "elapsed_s": round(self.elapsed_s, 1),
                "relay": asdict(self.relay) if self.relay else None,
                "rows": [
                    {
                        **asdict(row.scenario),
                        **{k: v for k, v in asdict(row).items() if k != "scenario"},
                    }
                    for row in self.rows
                ],
            },
            indent=2,
        )


def final_outcome(detail: dict[str, Any]) -> str:
    """The order's end state from its timeline (reported orders keep it in their events)."""
    names = {
        "completed_connected": "connected",
        "completed_disconnected": "disconnected",
        "completed_armed": "armed",
        "failed": "failed",
        "expired": "expired",
        "cancelled": "cancelled",
        "rejected": "rejected",
    }
    outcome = "pending"
    for event in detail.get("events", []):
        state = event.get("to_state")
        if state in names:
            outcome = names[state]
    return outcome


def check_row(row: Row, scenario: Scenario, refused_now: dict[str, str], event: Any) -> None:
    if scenario.expect == "rejected":
        if scenario.meter_id not in refused_now:
            row.problems.append("expected a refusal in the synchronous Reply")
        elif (
            scenario.reason
            and scenario.reason.replace("_", " ") not in refused_now[scenario.meter_id].lower()
            and scenario.reason not in (row.reason or "")
        ):
            row.problems.append(
                f"refused for {refused_now[scenario.meter_id]!r}, expected {scenario.reason}"
            )
        return
    if row.outcome != scenario.expect:
        row.problems.append(f"ended {row.outcome}, expected {scenario.expect}")
    if scenario.reason and row.reason != scenario.reason:
        row.problems.append(f"reason {row.reason or '-'}, expected {scenario.reason}")
    if scenario.expect == "failed" and not row.work_order:
        row.problems.append("no field work order")
    key: Any = (
        (scenario.expect, scenario.action) if scenario.expect == "failed" else scenario.expect
    )
    wanted = EVENT_CODES.get(key)
    if wanted and (event is None or event.event_code != wanted):
        row.problems.append(
            f"Legacy got {event.event_code if event else 'nothing'}, expected {wanted}"
        )
    if scenario.expect in ("disconnected", "connected", "armed") and not row.energy:
        row.problems.append("no energy reading")


def render_table(rows: list[Row]) -> str:
    headers = [
        "meter",
        "action",
        "outcome",
        "reason",
        "energy",
        "tries",
        "time",
        "work order",
        "Legacy",
        "check",
    ]
    body = [
        [
            row.scenario.meter_id,
            row.scenario.action,
            row.outcome,
            row.reason or "-",
            row.energy or "-",
            str(row.attempts) if row.attempts else "-",
            f"{row.seconds:.1f}s" if row.seconds is not None else "-",
            row.work_order or "-",
            row.legacy_event or "-",
            "ok" if row.ok else "FAIL: " + "; ".join(row.problems),
        ]
        for row in rows
    ]
    widths = [max(len(h), *(len(r[i]) for r in body)) for i, h in enumerate(headers)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in body]
    return "\n".join(lines)
