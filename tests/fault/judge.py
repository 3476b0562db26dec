"""Decide a fault scenario from the meters' own logs (pure logic, no I/O).

Inputs: the orders Legacy placed (meter -> order id from the synchronous Reply, None if
the order was never taken), the coordinator's record of each order (read from its
database), the simulator's relay log per meter since the scenario began, and every
delivery the Legacy receiver recorded. The relay log decides what happened; the
record and what Legacy was told must agree with it.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from firmware_sim.client import parse_at

SUCCESS = {
    "completed_disconnected": "disconnected",
    "completed_connected": "connected",
    "completed_armed": "armed",
}
# The outcome Legacy is told for each final state (central.soap.notifier.OUTCOME_OF_STATE).
LEGACY_OUTCOME = {
    **SUCCESS,
    "failed": "failed",
    "expired": "expired",
    "cancelled": "cancelled",
}
TARGET_STATE = {"disconnect": 0, "connect": 1}  # control_state the relay must reach


@dataclass(frozen=True)
class OrderRecord:
    """What the coordinator recorded: ``final`` is the last final state of its timeline
    (a late result that corrects the record moves it again)."""

    order_id: str
    meter_id: str
    action: str
    state: str
    final: str | None
    deadline: datetime


@dataclass
class Verdict:
    scenario: str
    orders: int = 0
    lost: int = 0
    wrong: int = 0
    late_ops: int = 0
    double: int = 0
    legacy_missing: int = 0
    legacy_dup_new_id: int = 0
    seconds: float = 0.0
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (
            self.lost or self.wrong or self.late_ops or self.double
            or self.legacy_missing or self.legacy_dup_new_id
        )

    def row(self) -> list[str]:
        return [
            self.scenario, str(self.orders), str(self.lost), str(self.wrong),
            str(self.late_ops), str(self.double), str(self.legacy_missing),
            str(self.legacy_dup_new_id), f"{self.seconds:.1f}",
        ]


HEADERS = [
    "scenario", "orders", "lost", "wrong outcome", "late ops", "double ops",
    "Legacy missing", "Legacy dup-with-new-id", "seconds",
]


def judge(
    scenario: str,
    placed: dict[str, str | None],
    actions: dict[str, str],
    records: dict[str, OrderRecord],
    relay_log: dict[str, list[dict[str, Any]]],
    legacy: list[dict[str, Any]],
    seconds: float,
) -> Verdict:
    v = Verdict(scenario, orders=len(placed), seconds=seconds)
    deliveries: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for d in legacy:
        if d.get("status") == 200:
            deliveries[d["order_id"]].append(d)
    for meter_id, order_id in sorted(placed.items()):
        record = records.get(order_id) if order_id else None
        if record is None or record.final is None:
            v.lost += 1
            v.problems.append(
                f"{meter_id}: lost ({'never taken' if not order_id else record.state if record else 'not recorded'})"
            )
            continue
        _judge_relay(v, record, actions[meter_id], relay_log.get(meter_id, []))
        _judge_legacy(v, record, deliveries.get(record.order_id, []))
    return v


def _judge_relay(v: Verdict, record: OrderRecord, action: str, ops: list[dict[str, Any]]) -> None:
    target = TARGET_STATE[action]
    accepted = [op for op in ops if op["action_result"] == 0]
    switched = any(
        op["control_state_before"] != target and op["control_state_after"] == target
        for op in accepted
    )
    recorded = record.final in SUCCESS
    who = f"{record.meter_id} ({record.order_id})"
    if switched != recorded:
        v.wrong += 1
        v.problems.append(
            f"{who}: recorded {record.final}, relay {'switched' if switched else 'not switched'}"
        )
    late = [op for op in ops if parse_at(op["at"]) > record.deadline]
    if late:
        v.late_ops += len(late)
        v.problems.append(
            f"{who}: {len(late)} relay op(s) after the deadline {record.deadline.isoformat()}: "
            + ", ".join(op["at"] for op in late)
        )
    if len(accepted) > 1:
        v.double += 1
        v.problems.append(f"{who}: relay method invoked {len(accepted)} times")


def _judge_legacy(v: Verdict, record: OrderRecord, got: list[dict[str, Any]]) -> None:
    who = f"{record.meter_id} ({record.order_id})"
    wanted = LEGACY_OUTCOME.get(record.final or "")
    got = sorted(got, key=lambda d: d["at"])
    if record.state != "reported" or not got or got[-1]["outcome"] != wanted:
        v.legacy_missing += 1
        told = got[-1]["outcome"] if got else "nothing"
        v.problems.append(
            f"{who}: Legacy last told {told}, record {record.final}, state {record.state}"
        )
    ids: dict[str, set[str]] = defaultdict(set)
    for d in got:
        ids[d["outcome"]].add(d["message_id"])
    if any(len(m) > 1 for m in ids.values()):
        v.legacy_dup_new_id += 1
        v.problems.append(f"{who}: the same outcome delivered under several MessageIDs")


def render(verdicts: list[Verdict]) -> str:
    rows = [v.row() for v in verdicts]
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h)
              for i, h in enumerate(HEADERS)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(HEADERS, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    return "\n".join(lines)
