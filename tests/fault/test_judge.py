"""The fault suite's judge counts each kind of wrong end (pure logic, no processes)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from tests.fault.judge import OrderRecord, judge, render

DEADLINE = datetime(2026, 12, 1, 22, 0, 0, tzinfo=UTC)


def op(at: datetime, before: int, after: int, result: int = 0) -> dict[str, Any]:
    return {
        "at": at.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z", "action_result": result,
        "control_state_before": before, "control_state_after": after, "seq": 1,
    }


def record(final: str | None, state: str = "reported") -> OrderRecord:
    return OrderRecord("o1", "M1", "disconnect", state, final, DEADLINE)


def told(outcome: str, message_id: str = "mid-1", status: int = 200) -> dict[str, Any]:
    return {"order_id": "o1", "outcome": outcome, "message_id": message_id,
            "status": status, "at": 1.0}


def verdict(rec: OrderRecord | None, ops: list[dict[str, Any]], legacy: list[dict[str, Any]]):  # type: ignore[no-untyped-def]
    records = {"o1": rec} if rec else {}
    return judge("s", {"M1": "o1"}, {"M1": "disconnect"}, records, {"M1": ops}, legacy, 1.0)


BEFORE = DEADLINE - timedelta(seconds=5)


def test_a_clean_disconnect_passes() -> None:
    v = verdict(record("completed_disconnected"), [op(BEFORE, 1, 0)], [told("disconnected")])
    assert v.ok, v.problems


def test_expired_while_the_relay_opened_is_a_wrong_outcome() -> None:
    v = verdict(record("expired"), [op(BEFORE, 1, 0)], [told("expired")])
    assert (v.wrong, v.legacy_missing) == (1, 0)


def test_completed_without_a_relay_operation_is_a_wrong_outcome() -> None:
    v = verdict(record("completed_disconnected"), [], [told("disconnected")])
    assert v.wrong == 1


def test_operation_after_the_deadline_and_twice() -> None:
    late = DEADLINE + timedelta(milliseconds=1)
    v = verdict(
        record("completed_disconnected"), [op(BEFORE, 1, 0), op(late, 0, 0)],
        [told("disconnected")],
    )
    assert (v.late_ops, v.double, v.wrong) == (1, 1, 0)


def test_unended_or_unknown_order_is_lost() -> None:
    assert verdict(record(None, state="delivered"), [], []).lost == 1
    assert verdict(None, [], []).lost == 1
    v = judge("s", {"M1": None}, {"M1": "disconnect"}, {}, {}, [], 1.0)
    assert v.lost == 1 and "never taken" in v.problems[0]


def test_legacy_not_told_not_acknowledged_or_told_the_old_outcome() -> None:
    rec = record("completed_disconnected")
    ops = [op(BEFORE, 1, 0)]
    assert verdict(rec, ops, []).legacy_missing == 1
    assert verdict(rec, ops, [told("disconnected", status=503)]).legacy_missing == 1
    assert verdict(record("completed_disconnected", "completed_disconnected"), ops,
                   [told("disconnected")]).legacy_missing == 1
    corrected = [told("expired", "m1"), {**told("disconnected", "m2"), "at": 2.0}]
    assert verdict(rec, ops, corrected).ok
    assert verdict(rec, ops, list(reversed(corrected))).ok  # order by time, not by file
    stale = [told("disconnected", "m1"), {**told("expired", "m2"), "at": 2.0}]
    assert verdict(rec, ops, stale).legacy_missing == 1


def test_same_outcome_under_a_new_message_id_is_counted() -> None:
    rec = record("completed_disconnected")
    ops = [op(BEFORE, 1, 0)]
    assert verdict(rec, ops, [told("disconnected"), told("disconnected")]).ok
    v = verdict(rec, ops, [told("disconnected", "a"), told("disconnected", "b")])
    assert v.legacy_dup_new_id == 1


def test_render_has_one_row_per_verdict() -> None:
    v = verdict(record("completed_disconnected"), [op(BEFORE, 1, 0)], [told("disconnected")])
    lines = render([v, v]).splitlines()
    assert len(lines) == 4 and lines[0].startswith("scenario")


def test_broker_config_can_leave_a_directive_to_mosquittos_default(tmp_path: Any) -> None:
    from shared.broker import DEPLOY_DIR, render_config

    shipped = (DEPLOY_DIR / "ami-rcd.conf").read_text()
    text = render_config(shipped, port=1, work_dir=tmp_path, drop=("autosave_interval",))
    assert not [ln for ln in text.splitlines() if ln.startswith("autosave_interval")]
    assert "max_queued_messages 1000000" in text  # everything else as shipped
