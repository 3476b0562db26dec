"""Validation, lifecycle and results through the service functions (SQLite and PostgreSQL)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from central.errors import InvalidTransition, PermissionDenied
from central.models import Concentrator, LegacyNotification, Meter, OrderEvent, WorkOrder
from central.services import dispatch, orders, registry, results, workorders
from central.services.orders import OrderRequest
from central.settings import DateWindow, Settings
from shared.codes import Action, ControlState, OrderReason, Outcome, ReasonCode
from shared.contracts import Attempt, EnergyReading, OrderResult, RelayReading, validate
from shared.signing import CommandSigner

from .conftest import APPROVER, HOLIDAY, OPERATOR, SATURDAY, WORKDAY, RecordingPublisher

Meters = Callable[..., list[str]]


def req(
    meter: str, action: str = "disconnect", reason: str = "non_payment", **kw: object
) -> OrderRequest:
    return OrderRequest.model_validate(
        {"meter_id": meter, "action": action, "reason": reason, **kw}
    )


def create_one(
    session: Session, settings: Settings, request: OrderRequest, now=WORKDAY
) -> orders.ItemResult:  # type: ignore[no-untyped-def]
    outcome = orders.create_orders(session, [request], OPERATOR, settings, now=now)
    session.commit()
    return outcome.items[0]


def result_for(
    order_id: str, meter: str, outcome: Outcome, conc: str = "conc-a", **kw: object
) -> OrderResult:
    now = WORKDAY + timedelta(minutes=1)
    return validate(OrderResult,
        {
            "order_id": order_id,
            "meter_id": meter,
            "concentrator_id": conc,
            "outcome": outcome,
            "finished_at": now,
            "received_at": now - timedelta(seconds=30),
            "attempts": [Attempt(number=1, started_at=now - timedelta(seconds=5), finished_at=now)],
            **kw,
        }
    )


def test_accepted_order_has_timeline(session: Session, settings: Settings, meters: Meters) -> None:
    meters(1)
    item = create_one(session, settings, req("m0"))
    assert item.accepted and item.state == "validated" and item.code is None
    order = orders.get_order(session, item.order_id or "")
    assert [e.event for e in order.events] == ["receive", "validate"]
    assert [e.step for e in order.events] == [2, 3]
    assert order.events[0].actor == "olga"


@pytest.mark.parametrize(
    ("setup", "code"),
    [
        ("unknown", "unknown_meter"),
        ("not_commissioned", "not_commissioned"),
        ("no_concentrator", "no_concentrator"),
        ("decommissioned", "concentrator_decommissioned"),
        ("protected", "protected_customer"),
    ],
)
def test_each_validation_refusal_has_its_reason(
    session: Session, settings: Settings, meters: Meters, setup: str, code: str
) -> None:
    meters(1)
    meter = session.get(Meter, "m0")
    assert meter is not None
    if setup == "not_commissioned":
        meter.commissioned = False
    elif setup == "no_concentrator":
        meter.concentrator_id = None
    elif setup == "decommissioned":
        registry.set_concentrator_decommissioned(session, "conc-a", True)
    elif setup == "protected":
        meter.protected_customer = True
    session.commit()
    item = create_one(session, settings, req("nope" if setup == "unknown" else "m0"))
    assert not item.accepted
    assert item.code == code
    assert item.message
    order = orders.get_order(session, item.order_id or "")
    assert order.state == "rejected"
    assert order.events[-1].step == 3 and code in order.events[-1].detail
    # The refusal is final and Legacy is told (outbox row).
    assert session.scalars(
        select(LegacyNotification).where(LegacyNotification.order_id == order.id)
    ).one()


def test_protected_customer_refused_even_if_special(
    session: Session, settings: Settings, meters: Meters
) -> None:
    meters(1, protected_customer=True)
    item = create_one(session, settings, req("m0", special=True, reason="customer_request"))
    assert item.code == "protected_customer"
    # reconnecting a protected customer is fine
    assert create_one(
        session, settings, req("m0", action="connect", reason="payment_restored")
    ).accepted


@pytest.mark.parametrize("day", [SATURDAY, HOLIDAY], ids=["saturday", "holiday"])
def test_disconnect_only_on_working_days_unless_special(
    session: Session, settings: Settings, meters: Meters, day: object
) -> None:
    meters(3)
    assert create_one(session, settings, req("m0"), now=day).code == "not_working_day"
    assert create_one(session, settings, req("m1", special=True), now=day).accepted
    # reconnects are not restricted
    assert create_one(
        session, settings, req("m2", action="connect", reason="payment_restored"), now=day
    ).accepted


def test_past_deadline_is_refused(session: Session, settings: Settings, meters: Meters) -> None:
    meters(1)
    item = create_one(session, settings, req("m0", deadline=WORKDAY - timedelta(minutes=1)))
    assert item.code == "invalid_request" and "deadline" in item.message


def test_moratorium_refuses_non_payment_disconnects(
    session: Session, settings: Settings, meters: Meters
) -> None:
    meters(2)
    settings.nonpayment_moratorium = [DateWindow(start=WORKDAY.date(), end=WORKDAY.date())]
    assert create_one(session, settings, req("m0")).code == "moratorium"
    assert create_one(session, settings, req("m1", reason="losses")).accepted


def test_same_request_twice_returns_existing_order(
    session: Session, settings: Settings, meters: Meters
) -> None:
    meters(2)
    first = create_one(session, settings, req("m0", idempotency_key="legacy-1"))
    again = create_one(session, settings, req("m0", idempotency_key="legacy-1"))
    assert again.duplicate and again.order_id == first.order_id
    # same action already active on the meter, no key: also the existing order
    same = create_one(session, settings, req("m0"))
    assert same.duplicate and same.order_id == first.order_id
    # a refused request repeated with its key returns the same refusal
    refused = create_one(session, settings, req("ghost", idempotency_key="legacy-2"))
    repeat = create_one(session, settings, req("ghost", idempotency_key="legacy-2"))
    assert (
        repeat.order_id == refused.order_id and repeat.code == "unknown_meter" and repeat.duplicate
    )
    assert len(orders.list_orders(session, meter_id="m0")) == 1


def test_reconnect_supersedes_pending_disconnect(
    session: Session, settings: Settings, meters: Meters
) -> None:
    meters(1)
    disconnect = create_one(session, settings, req("m0"))
    connect = create_one(session, settings, req("m0", action="connect", reason="payment_restored"))
    assert connect.accepted
    old = orders.get_order(session, disconnect.order_id or "")
    assert old.state == "cancelled" and old.superseded_by == connect.order_id
    # a disconnect while the connect is active is refused
    assert create_one(session, settings, req("m0")).code == "meter_busy"


def test_reconnect_requests_cancel_of_in_flight_disconnect(
    session: Session,
    settings: Settings,
    meters: Meters,
    publisher: RecordingPublisher,
    signer: CommandSigner,
) -> None:
    meters(1)
    disconnect = create_one(session, settings, req("m0"))
    assert dispatch.dispatch_ready(session, publisher, signer, settings, now=WORKDAY) == 1
    connect = create_one(session, settings, req("m0", action="connect", reason="payment_restored"))
    old = orders.get_order(session, disconnect.order_id or "")
    assert old.cancel_requested and old.state == "dispatched"
    # the connect waits only until the disconnect's cancel is out (issue 17: reconnects
    # never wait for the agent's answer; the cancel reaches the agent first)
    assert dispatch.dispatch_ready(session, publisher, signer, settings, now=WORKDAY) == 0
    assert dispatch.send_cancels(session, publisher, signer, now=WORKDAY) == 1
    assert b'\\"kind\\":\\"cancel\\"' in publisher.sent[-1].payload
    assert dispatch.dispatch_ready(session, publisher, signer, settings, now=WORKDAY) == 1
    assert orders.get_order(session, connect.order_id or "").state == "dispatched"
    results.apply_result(
        session, result_for(old.id, "m0", Outcome.CANCELLED, reason=ReasonCode.CANCELLED)
    )
    session.commit()
    assert orders.get_order(session, old.id).state == "cancelled"


def test_happy_path_result_twice_changes_nothing(
    session: Session,
    settings: Settings,
    meters: Meters,
    publisher: RecordingPublisher,
    signer: CommandSigner,
) -> None:
    meters(1)
    item = create_one(session, settings, req("m0"))
    assert dispatch.dispatch_ready(session, publisher, signer, settings, now=WORKDAY) == 1
    result = result_for(
        item.order_id or "",
        "m0",
        Outcome.DISCONNECTED,
        relay=RelayReading(
            output_state=False, control_state=ControlState.DISCONNECTED, control_mode=1
        ),
        energy=EnergyReading(value=1234.5, unit="kWh", read_at=WORKDAY),
    )
    assert results.apply_result(session, result) == "applied"
    session.commit()
    order = orders.get_order(session, item.order_id or "")
    events_before = len(order.events)
    assert order.state == "completed_disconnected" and order.energy_value == 1234.5
    assert [e.step for e in order.events] == [2, 3, 4, 5, 6, 8]
    meter = session.get(Meter, "m0")
    assert meter is not None and meter.relay_state == "disconnected"
    assert results.apply_result(session, result) == "duplicate"
    session.commit()
    session.expire_all()
    order = orders.get_order(session, item.order_id or "")
    assert len(order.events) == events_before and order.state == "completed_disconnected"
    assert len(session.scalars(select(LegacyNotification)).all()) == 1
    # Step 9: the notifier marks it reported
    assert [n.order_id for n in orders.pending_notifications(session)] == [order.id]
    orders.mark_reported(session, order.id, "soap-notifier")
    session.commit()
    assert orders.get_order(session, order.id).state == "reported"
    assert orders.pending_notifications(session) == []


def test_failure_creates_work_order(
    session: Session,
    settings: Settings,
    meters: Meters,
    publisher: RecordingPublisher,
    signer: CommandSigner,
) -> None:
    meters(1)
    item = create_one(session, settings, req("m0"))
    dispatch.dispatch_ready(session, publisher, signer, settings, now=WORKDAY)
    results.apply_result(
        session,
        result_for(
            item.order_id or "",
            "m0",
            Outcome.FAILED,
            reason=ReasonCode.METER_NOT_RESPONDING,
            detail="3 timeouts",
        ),
    )
    session.commit()
    order = orders.get_order(session, item.order_id or "")
    assert order.state == "failed"
    assert order.events[-1].step == 10
    (wo,) = workorders.list_work_orders(session, status="open")
    assert (
        wo.order_id == order.id
        and wo.reason == "meter_not_responding"
        and wo.last_relay_state == "unknown"
    )
    csv_text = workorders.export_csv(
        workorders.list_work_orders(session, reason="meter_not_responding")
    )
    assert "meter_not_responding" in csv_text.splitlines()[1]
    workorders.close_work_order(session, wo.id, OPERATOR, "disconnected", "cut at the pole")
    session.commit()
    assert workorders.list_work_orders(session, status="open") == []
    meter = session.get(Meter, "m0")
    assert meter is not None and meter.relay_state == "disconnected"


def test_expiry_creates_work_order_and_late_result_reconciles(
    session: Session,
    settings: Settings,
    meters: Meters,
    publisher: RecordingPublisher,
    signer: CommandSigner,
) -> None:
    meters(2)
    flying = create_one(session, settings, req("m0"))
    dispatch.dispatch_ready(session, publisher, signer, settings, now=WORKDAY)
    waiting = create_one(session, settings, req("m1"))
    settings.max_inflight_per_concentrator = 1  # m1 cannot be dispatched
    assert dispatch.dispatch_ready(session, publisher, signer, settings, now=WORKDAY) == 0
    later = WORKDAY + timedelta(seconds=settings.deadline_for("disconnect") + 120)
    assert dispatch.sweep_expired(session, now=later) == 2
    for item in (flying, waiting):
        order = orders.get_order(session, item.order_id or "")
        assert order.state == "expired"
        assert workorders.work_order_for(session, order.id) is not None
    # a late result that says the relay switched corrects the record, once (issue 11)
    late = result_for(flying.order_id or "", "m0", Outcome.DISCONNECTED)
    assert results.apply_result(session, late) == "corrected"
    assert results.apply_result(session, late) == "duplicate"
    session.commit()
    meter = session.get(Meter, "m0")
    assert meter is not None and meter.relay_state == "disconnected"
    corrected = orders.get_order(session, flying.order_id or "")
    assert corrected.state == "completed_disconnected"
    work_order = workorders.work_order_for(session, corrected.id)
    assert work_order is not None and work_order.status == "cancelled"


def test_cancel(
    session: Session,
    settings: Settings,
    meters: Meters,
    publisher: RecordingPublisher,
    signer: CommandSigner,
) -> None:
    meters(2)
    a = create_one(session, settings, req("m0"))
    order = orders.cancel_order(session, a.order_id or "", OPERATOR)
    session.commit()
    assert order.state == "cancelled"
    with pytest.raises(InvalidTransition):
        orders.cancel_order(session, a.order_id or "", OPERATOR)
    b = create_one(session, settings, req("m1"))
    dispatch.dispatch_ready(session, publisher, signer, settings, now=WORKDAY)
    order = orders.cancel_order(session, b.order_id or "", OPERATOR)
    session.commit()
    assert order.state == "dispatched" and order.cancel_requested
    assert dispatch.send_cancels(session, publisher, signer, now=WORKDAY) == 1


def test_mass_disconnect_needs_second_person(
    session: Session,
    settings: Settings,
    meters: Meters,
    publisher: RecordingPublisher,
    signer: CommandSigner,
) -> None:
    ids = meters(8)
    outcome = orders.create_orders(session, [req(m) for m in ids], OPERATOR, settings, now=WORKDAY)
    session.commit()
    assert outcome.needs_approval and all(i.needs_approval for i in outcome.items)
    assert dispatch.dispatch_ready(session, publisher, signer, settings, now=WORKDAY) == 0
    assert outcome.batch_id is not None
    with pytest.raises(PermissionDenied):  # the requester cannot approve her own batch
        orders.approve_batch(session, outcome.batch_id, orders.Actor("olga", "admin"))
    with pytest.raises(PermissionDenied):  # an operator is not an approver
        orders.approve_batch(session, outcome.batch_id, orders.Actor("otto", "operator"))
    orders.approve_order(session, outcome.items[0].order_id or "", APPROVER)
    session.commit()
    assert dispatch.dispatch_ready(session, publisher, signer, settings, now=WORKDAY) == 8
    assert (
        session.scalars(select(OrderEvent).where(OrderEvent.event == "approved")).first()
        is not None
    )


def test_unapproved_mass_disconnect_expires_without_work_orders(
    session: Session, settings: Settings, meters: Meters
) -> None:
    ids = meters(8)
    orders.create_orders(session, [req(m) for m in ids], OPERATOR, settings, now=WORKDAY)
    session.commit()
    later = WORKDAY + timedelta(seconds=settings.deadline_for("disconnect") + 1)
    assert dispatch.sweep_expired(session, now=later) == 8
    assert workorders.list_work_orders(session) == []
    assert len(orders.list_orders(session, state="expired")) == 8


def test_fleet_disconnect_rate_and_inflight_cap(
    session: Session,
    settings: Settings,
    meters: Meters,
    publisher: RecordingPublisher,
    signer: CommandSigner,
) -> None:
    settings.approval_threshold = 100
    settings.disconnects_per_minute = 3
    settings.max_inflight_per_concentrator = 2
    a = meters(3, concentrator="conc-a", prefix="a")
    b = meters(3, concentrator="conc-b", prefix="b")
    orders.create_orders(session, [req(m) for m in a + b], OPERATOR, settings, now=WORKDAY)
    session.commit()
    assert dispatch.dispatch_ready(session, publisher, signer, settings, now=WORKDAY) == 3
    settings.disconnects_per_minute = 100
    assert (
        dispatch.dispatch_ready(session, publisher, signer, settings, now=WORKDAY) == 1
    )  # caps: 2 + 2


def test_unacked_dispatch_is_published_again(
    session: Session,
    settings: Settings,
    meters: Meters,
    publisher: RecordingPublisher,
    signer: CommandSigner,
) -> None:
    meters(1)
    item = create_one(session, settings, req("m0"))
    publisher.fail = True
    with pytest.raises(Exception, match="unreachable"):
        dispatch.dispatch_ready(session, publisher, signer, settings, now=WORKDAY)
    session.rollback()
    publisher.fail = False
    order = orders.get_order(session, item.order_id or "")
    assert order.state == "dispatched" and order.published_at is None
    later = WORKDAY + timedelta(seconds=settings.republish_after_s + 1)
    assert dispatch.republish_unacked(session, publisher, signer, settings, now=later) == 1
    session.expire_all()
    assert orders.get_order(session, item.order_id or "").published_at is not None


def test_status_and_meter_table(
    session: Session,
    settings: Settings,
    meters: Meters,
    publisher: RecordingPublisher,
    signer: CommandSigner,
) -> None:
    from shared.contracts import ConcentratorStatus

    meters(2)
    assert dispatch.push_meter_tables(session, publisher, signer) == 1
    assert publisher.sent[-1].retain and publisher.sent[-1].topic.endswith("/meters")
    assert dispatch.push_meter_tables(session, publisher, signer) == 0
    results.apply_status(
        session,
        ConcentratorStatus(concentrator_id="conc-a", online=True, at=WORKDAY, queue_depth=4),
    )
    results.apply_status(
        session,
        ConcentratorStatus(concentrator_id="conc-a", online=False, at=WORKDAY - timedelta(hours=1)),
    )
    session.commit()
    conc = session.get(Concentrator, "conc-a")
    assert conc is not None and conc.online and conc.queue_depth == 4


def test_csv_import_reports_bad_rows(session: Session) -> None:
    text = (
        "meter_id,concentrator_id,line_id,hdlc_address,commissioned,protected_customer\n"
        "x1,conc-z,l1,17,true,no\n"
        "x2,conc-z,l1,18,maybe,no\n"
        "x3,,,,false,yes\n"
    )
    report = registry.import_meters_csv(session, text)
    session.commit()
    assert (report.created, report.concentrators_created, len(report.errors)) == (2, 1, 1)
    assert "line 3" in report.errors[0]
    x3 = registry.get_meter(session, "x3")
    assert x3.protected_customer and not x3.commissioned
    assert session.scalars(select(WorkOrder)).all() == []
    _ = Action, OrderReason


def test_a_batch_records_every_request_in_its_size(
    session: Session, settings: Settings, meters: Meters
) -> None:
    """Accepted, refused and repeated requests alike count in the batch's size."""
    from central.models import Batch

    meters(2)
    batch = [req("m0"), req("m0"), req("nope"), req("m1", action="connect", reason="payment_restored")]
    outcome = orders.create_orders(session, batch, OPERATOR, settings, now=WORKDAY)
    session.commit()
    assert [item.duplicate for item in outcome.items] == [False, True, False, False]
    row = session.get(Batch, outcome.batch_id)
    assert row is not None and row.size == 4
