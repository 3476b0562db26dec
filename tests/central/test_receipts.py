"""Steps 5-7 in the coordinator's timeline: the agent's delivery receipt and one
event per DLMS attempt of its result (SQLite and PostgreSQL)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from central.coordinator import Coordinator
from central.models import Order, OrderEvent
from central.services import dispatch, orders, results
from central.services.orders import OrderRequest
from central.settings import Settings
from shared import topics
from shared.codes import Outcome, ReasonCode
from shared.contracts import Attempt, OrderReceipt, OrderResult, replace, validate
from shared.signing import CommandSigner

from .conftest import OPERATOR, WORKDAY, RecordingPublisher, add_meters

Meters = Callable[..., list[str]]
STORED = WORKDAY + timedelta(seconds=2)
NOW = WORKDAY + timedelta(minutes=2)


def dispatched(
    session: Session,
    settings: Settings,
    publisher: RecordingPublisher,
    signer: CommandSigner,
    meter: str = "m0",
) -> str:
    item = orders.create_orders(
        session,
        [OrderRequest(meter_id=meter, action="disconnect", reason="non_payment")],
        OPERATOR,
        settings,
        now=WORKDAY,
    ).items[0]
    session.commit()
    assert dispatch.dispatch_ready(session, publisher, signer, settings, now=WORKDAY) == 1
    session.commit()
    assert item.order_id is not None
    return item.order_id


def receipt_for(order_id: str, meter: str = "m0", conc: str = "conc-a", **kw: object) -> OrderReceipt:
    fields: dict[str, object] = {
        "order_id": order_id,
        "command_id": f"cmd-{order_id}",
        "meter_id": meter,
        "concentrator_id": conc,
        "received_at": STORED,
        "queue_depth": 3,
    }
    fields.update(kw)
    return validate(OrderReceipt, fields)


def at(seconds: float) -> datetime:
    return WORKDAY + timedelta(seconds=seconds)


def result_with_retries(order_id: str, meter: str = "m0", **kw: object) -> OrderResult:
    fields: dict[str, object] = {
        "order_id": order_id,
        "meter_id": meter,
        "concentrator_id": "conc-a",
        "outcome": Outcome.DISCONNECTED,
        "attempts": [
            Attempt(
                number=1,
                started_at=at(3),
                finished_at=at(8),
                error=ReasonCode.METER_NOT_RESPONDING,
                detail="no data within 5.0 s",
            ),
            Attempt(
                number=2,
                started_at=at(10),
                finished_at=at(15),
                error=ReasonCode.INVALID_METER_RESPONSE,
                detail="bad FCS",
            ),
            Attempt(number=3, started_at=at(20), finished_at=at(21)),
        ],
        "received_at": STORED,
        "started_at": at(3),
        "finished_at": at(21),
    }
    fields.update(kw)
    return validate(OrderResult, fields)


def timeline(session: Session, order_id: str) -> list[OrderEvent]:
    session.expire_all()
    return list(
        session.scalars(
            select(OrderEvent).where(OrderEvent.order_id == order_id).order_by(OrderEvent.id)
        )
    )


def test_receipt_moves_dispatched_to_delivered_with_step_5(
    session: Session,
    settings: Settings,
    meters: Meters,
    publisher: RecordingPublisher,
    signer: CommandSigner,
) -> None:
    meters(1)
    order_id = dispatched(session, settings, publisher, signer)
    assert results.apply_receipt(session, receipt_for(order_id), now=NOW) == "delivered"
    session.commit()
    order = session.get(Order, order_id)
    assert order is not None and order.state == "delivered"
    last = timeline(session, order_id)[-1]
    assert (last.event, last.step, last.actor) == ("deliver", 5, "agent:conc-a")
    assert (last.from_state, last.to_state) == ("dispatched", "delivered")
    assert last.at.replace(tzinfo=None) == STORED.replace(tzinfo=None)
    assert last.detail.startswith(f"stored by the agent at {STORED.isoformat()}, queue depth 3")


def test_duplicate_and_late_receipts_change_nothing(
    session: Session,
    settings: Settings,
    meters: Meters,
    publisher: RecordingPublisher,
    signer: CommandSigner,
) -> None:
    meters(1)
    order_id = dispatched(session, settings, publisher, signer)
    receipt = receipt_for(order_id)
    assert results.apply_receipt(session, receipt, now=NOW) == "delivered"
    session.commit()
    count = len(timeline(session, order_id))
    # QoS 1 copy, and a receipt from a republished command (new command id)
    assert results.apply_receipt(session, receipt, now=NOW) == "duplicate"
    again = receipt_for(order_id, command_id="cmd-again", queue_depth=9)
    assert results.apply_receipt(session, again, now=NOW) == "duplicate"
    session.commit()
    assert len(timeline(session, order_id)) == count
    # the result ends the order from delivered; a receipt after that is late: nothing
    assert results.apply_result(session, result_with_retries(order_id), now=NOW) == "applied"
    session.commit()
    count = len(timeline(session, order_id))
    assert results.apply_receipt(session, receipt, now=NOW) == "duplicate"
    session.commit()
    order = session.get(Order, order_id)
    assert order is not None and order.state == "completed_disconnected"
    assert len(timeline(session, order_id)) == count


def test_receipt_for_unknown_order_or_other_concentrator_is_ignored(
    session: Session,
    settings: Settings,
    meters: Meters,
    publisher: RecordingPublisher,
    signer: CommandSigner,
) -> None:
    meters(1)
    order_id = dispatched(session, settings, publisher, signer)
    assert results.apply_receipt(session, receipt_for("nope"), now=NOW) == "unknown_order"
    wrong = receipt_for(order_id, conc="conc-b")
    assert results.apply_receipt(session, wrong, now=NOW) == "wrong_concentrator"
    other_meter = receipt_for(order_id, meter="m9")
    assert results.apply_receipt(session, other_meter, now=NOW) == "wrong_concentrator"
    session.commit()
    order = session.get(Order, order_id)
    assert order is not None and order.state == "dispatched"


def test_receipt_from_the_future_is_clamped_to_now(
    session: Session,
    settings: Settings,
    meters: Meters,
    publisher: RecordingPublisher,
    signer: CommandSigner,
) -> None:
    meters(1)
    order_id = dispatched(session, settings, publisher, signer)
    ahead = receipt_for(order_id, received_at=NOW + timedelta(hours=1))  # agent clock ahead
    assert results.apply_receipt(session, ahead, now=NOW) == "delivered"
    session.commit()
    last = timeline(session, order_id)[-1]
    assert last.at.replace(tzinfo=None) == NOW.replace(tzinfo=None)


def test_result_writes_one_event_per_attempt_before_the_outcome(
    session: Session,
    settings: Settings,
    meters: Meters,
    publisher: RecordingPublisher,
    signer: CommandSigner,
) -> None:
    meters(1)
    order_id = dispatched(session, settings, publisher, signer)
    results.apply_receipt(session, receipt_for(order_id), now=NOW)
    result = result_with_retries(order_id)
    assert results.apply_result(session, result, now=NOW) == "applied"
    session.commit()
    events = timeline(session, order_id)
    assert [(e.event, e.step) for e in events] == [
        ("receive", 2),
        ("validate", 3),
        ("dispatch", 4),
        ("deliver", 5),
        ("attempt_retried", 7),
        ("attempt_retried", 7),
        ("attempt", 6),
        ("complete_disconnected", 8),
    ]
    attempts = events[4:7]
    assert [e.detail for e in attempts] == [
        "attempt 1: meter_not_responding no data within 5.0 s",
        "attempt 2: invalid_meter_response bad FCS",
        "attempt 3: ok",
    ]
    assert [e.at.replace(tzinfo=None) for e in attempts] == [
        at(s).replace(tzinfo=None) for s in (8, 15, 21)
    ]
    assert {e.actor for e in attempts} == {"agent:conc-a"}
    assert all(e.from_state == e.to_state == "delivered" for e in attempts)
    # the same result again: no second set of attempt events
    assert results.apply_result(session, result, now=NOW) == "duplicate"
    session.commit()
    assert len(timeline(session, order_id)) == len(events)


def test_failed_result_last_attempt_is_step_6_and_opens_work_order(
    session: Session,
    settings: Settings,
    meters: Meters,
    publisher: RecordingPublisher,
    signer: CommandSigner,
) -> None:
    meters(1)
    order_id = dispatched(session, settings, publisher, signer)
    failed = result_with_retries(order_id, outcome=Outcome.FAILED, reason=ReasonCode.METER_NOT_RESPONDING)
    last = Attempt(number=3, started_at=at(20), finished_at=at(25), error=ReasonCode.METER_NOT_RESPONDING)
    failed = replace(failed, attempts=[*failed.attempts[:2], last])
    # no receipt arrived (lost, or an older agent): the result still delivers first
    assert results.apply_result(session, failed, now=NOW) == "applied"
    session.commit()
    events = timeline(session, order_id)
    assert [(e.event, e.step) for e in events][3:] == [
        ("deliver", 5),
        ("attempt_retried", 7),
        ("attempt_retried", 7),
        ("attempt", 6),
        ("fail", 8),
        ("work_order_created", 10),
    ]
    assert events[6].detail == "attempt 3: meter_not_responding"


def test_late_result_records_its_attempts_once(
    session: Session,
    settings: Settings,
    meters: Meters,
    publisher: RecordingPublisher,
    signer: CommandSigner,
) -> None:
    meters(1)
    order_id = dispatched(session, settings, publisher, signer)
    later = WORKDAY + timedelta(seconds=settings.deadline_for("disconnect") + 120)
    assert dispatch.sweep_expired(session, now=later) == 1
    session.commit()
    result = result_with_retries(order_id)
    # the relay did switch: the late result corrects the expired order (issue 11)
    assert results.apply_result(session, result, now=later) == "corrected"
    assert results.apply_result(session, result, now=later) == "duplicate"
    session.commit()
    events = [(e.event, e.step) for e in timeline(session, order_id)]
    assert events[-5:] == [
        ("attempt_retried", 7),
        ("attempt_retried", 7),
        ("attempt", 6),
        ("correct_disconnected", 8),
        ("work_order_cancelled", 10),
    ]
    assert events.count(("attempt", 6)) == 1


def test_consumer_accepts_receipts_and_results(
    settings: Settings, factory: sessionmaker[Session], signer: CommandSigner
) -> None:
    publisher = RecordingPublisher()
    with factory() as session:
        add_meters(session, 1)
        order_id = dispatched(session, settings, publisher, signer)
    coordinator = Coordinator(settings, factory)
    receipt = receipt_for(order_id, received_at=WORKDAY - timedelta(days=1))
    # spoofed topic and malformed payloads: acknowledged, ignored
    assert coordinator.handle_result(topics.results("conc-b"), receipt.to_json()) is True
    assert coordinator.handle_result(topics.results("conc-a"), b'{"kind": "receipt"}') is True
    assert coordinator.handle_result(topics.results("conc-a"), b'{"kind": "other"}') is True
    with factory() as session:
        assert orders.get_order(session, order_id).state == "dispatched"
    assert coordinator.handle_result(topics.results("conc-a"), receipt.to_json()) is True
    assert coordinator.handle_result(topics.results("conc-a"), receipt.to_json()) is True
    with factory() as session:
        order = orders.get_order(session, order_id)
        assert order.state == "delivered"
        assert [e.event for e in order.events].count("deliver") == 1
    result = result_with_retries(order_id, received_at=receipt.received_at)
    for _ in range(2):
        assert coordinator.handle_result(topics.results("conc-a"), result.to_json()) is True
    with factory() as session:
        order = orders.get_order(session, order_id)
        assert order.state == "completed_disconnected"
        assert [e.step for e in order.events] == [2, 3, 4, 5, 7, 7, 6, 8]


@pytest.mark.parametrize("outcome", [Outcome.DISCONNECTED, Outcome.FAILED])
def test_result_without_attempts_adds_no_attempt_events(
    session: Session,
    settings: Settings,
    meters: Meters,
    publisher: RecordingPublisher,
    signer: CommandSigner,
    outcome: Outcome,
) -> None:
    meters(1)
    order_id = dispatched(session, settings, publisher, signer)
    reason = ReasonCode.NOT_IN_CONCENTRATOR_TABLE if outcome is Outcome.FAILED else None
    result = result_with_retries(order_id, outcome=outcome, reason=reason, attempts=[])
    assert results.apply_result(session, result, now=NOW) == "applied"
    session.commit()
    steps = [e.step for e in timeline(session, order_id)]
    assert 6 not in steps and 7 not in steps
