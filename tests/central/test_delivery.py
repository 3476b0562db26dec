"""Issue 11, the coordinator's rules (SQLite and PostgreSQL): a command goes out as first
signed until the agent's receipt and never after its deadline; a message an agent could
not verify ends no order; a late result corrects the record and tells Legacy again; a
meter flagged protected gets a cancel for every disconnect an agent may still hold."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from central.coordinator import Coordinator
from central.errors import InvalidTransition
from central.models import LegacyNotification, Meter, Order, OrderEvent, RejectedMessage
from central.services import dispatch, orders, rejected, results, workorders
from central.services.orders import OrderRequest
from central.services.registry import MeterChange, change_meter
from central.settings import Settings
from central.soap import cim_write
from central.soap.config import SoapSettings
from central.soap.notifier import LegacyNotifier, ended_from_order
from shared import topics
from shared.codes import Outcome, ReasonCode
from shared.contracts import (
    Attempt,
    CancelCommand,
    OrderReceipt,
    OrderResult,
    RefusalReport,
    validate,
)
from shared.message_kinds import parse_command
from shared.signing import CommandSigner, open_envelope

from .conftest import OPERATOR, WORKDAY, RecordingPublisher, add_meters


def accept(session: Session, settings: Settings, meter: str = "m0", **kw: object) -> str:
    channel = orders.Channel(
        source=str(kw.pop("source", "rest")), reply_address=kw.pop("reply_address", None)  # type: ignore[arg-type]
    )
    request = OrderRequest(meter_id=meter, action="disconnect", reason="non_payment", **kw)  # type: ignore[arg-type]
    item = orders.create_orders(
        session, [request], OPERATOR, settings, now=WORKDAY, channel=channel
    ).items[0]
    session.commit()
    assert item.order_id is not None
    return item.order_id


def result(order_id: str, outcome: Outcome, at: datetime, meter: str = "m0", **kw: object) -> OrderResult:
    return validate(
        OrderResult,
        {
            "order_id": order_id,
            "meter_id": meter,
            "concentrator_id": "conc-a",
            "outcome": outcome,
            "finished_at": at,
            "received_at": at - timedelta(seconds=30),
            "attempts": [Attempt(number=1, started_at=at - timedelta(seconds=5), finished_at=at)],
            **kw,
        },
    )


def receipt(order: Order) -> OrderReceipt:
    assert order.command_id is not None
    return OrderReceipt(
        order_id=order.id,
        command_id=order.command_id,
        meter_id=order.meter_id,
        concentrator_id="conc-a",
        received_at=WORKDAY,
        queue_depth=1,
    )


def signed_deadline(payload: bytes) -> datetime:
    return parse_command(open_envelope(payload).body).deadline


# -- 1. command delivery ----------------------------------------------------------------
def test_the_command_goes_again_as_first_signed_until_the_receipt(
    session: Session, settings: Settings, publisher: RecordingPublisher, signer: CommandSigner
) -> None:
    add_meters(session, 1)
    order_id = accept(session, settings)
    assert dispatch.dispatch_ready(session, publisher, signer, settings, now=WORKDAY) == 1
    first = publisher.sent[-1].payload
    # the PUBACK came (RecordingPublisher returned): still no receipt, so it goes again,
    # the very same bytes (command id, signed deadline), with a doubling backoff
    gap = settings.republish_after_s
    assert dispatch.republish_unacked(session, publisher, signer, settings, now=WORKDAY + timedelta(seconds=gap - 1)) == 0
    at = WORKDAY + timedelta(seconds=gap)
    assert dispatch.republish_unacked(session, publisher, signer, settings, now=at) == 1
    assert publisher.sent[-1].payload == first
    at += timedelta(seconds=2 * gap - 1)
    assert dispatch.republish_unacked(session, publisher, signer, settings, now=at) == 0
    at += timedelta(seconds=1)
    assert dispatch.republish_unacked(session, publisher, signer, settings, now=at) == 1
    assert publisher.sent[-1].payload == first and len(publisher.sent) == 3
    # the receipt is what stops it
    order = orders.get_order(session, order_id)
    assert results.apply_receipt(session, receipt(order)) == "delivered"
    session.commit()
    later = at + timedelta(hours=1)
    assert dispatch.republish_unacked(session, publisher, signer, settings, now=later) == 0
    assert len(publisher.sent) == 3
    session.expire_all()
    order = orders.get_order(session, order_id)
    assert order.sends == 3 and order.state == "delivered"


def test_no_command_goes_after_its_deadline_and_none_is_extended(
    session: Session, settings: Settings, publisher: RecordingPublisher, signer: CommandSigner
) -> None:
    add_meters(session, 2)
    both = [accept(session, settings, m, deadline=WORKDAY + timedelta(minutes=10)) for m in ("m0", "m1")]
    # one of them waits (in-flight cap) until after its deadline: never sent (it used to
    # go with "now + 1 s" as its deadline), the sweep ends it expired
    settings.max_inflight_per_concentrator = 1
    assert dispatch.dispatch_ready(session, publisher, signer, settings, now=WORKDAY) == 1
    session.expire_all()
    sent, late = sorted(both, key=lambda i: orders.get_order(session, i).state != "dispatched")
    order = orders.get_order(session, sent)
    assert order.deadline is not None
    assert signed_deadline(publisher.sent[-1].payload) == order.deadline  # the order's own
    settings.max_inflight_per_concentrator = 50
    after = WORKDAY + timedelta(minutes=11)
    assert dispatch.dispatch_ready(session, publisher, signer, settings, now=after) == 0
    # no re-send of the sent one either, though it never got a receipt
    assert dispatch.republish_unacked(session, publisher, signer, settings, now=after) == 0
    assert len(publisher.sent) == 1
    assert dispatch.sweep_expired(session, now=after + timedelta(minutes=5)) == 2
    session.expire_all()
    assert orders.get_order(session, late).state == "expired"
    assert orders.get_order(session, late).command_id is None


def test_an_order_past_its_deadline_gets_no_command(settings: Settings) -> None:
    from types import SimpleNamespace

    order = SimpleNamespace(
        id="o1", meter_id="m0", concentrator_id="c1", action="connect", reason="payment_restored",
        priority=8, deadline=WORKDAY - timedelta(seconds=1), not_before=None,
        updated_at=WORKDAY, special=False,
    )
    with pytest.raises(dispatch.DeadlinePassed):
        dispatch.build_command(order, settings, "cmd-1", WORKDAY)  # type: ignore[arg-type]


# -- 4. refused messages end no order ------------------------------------------------------
def refusal(reason: ReasonCode = ReasonCode.BAD_SIGNATURE, rid: str = "r1") -> RefusalReport:
    return RefusalReport(
        refusal_id=rid, concentrator_id="conc-a", reason=reason, detail="signature mismatch",
        topic_leaf="cmd", payload_sha256="ab" * 32, payload_size=321, received_at=WORKDAY,
    )


def test_an_agents_refusal_is_a_security_event_and_ends_no_order(
    settings: Settings, factory: sessionmaker[Session], publisher: RecordingPublisher, signer: CommandSigner
) -> None:
    with factory() as session:
        add_meters(session, 1)
        order_id = accept(session, settings)
        dispatch.dispatch_ready(session, publisher, signer, settings, now=WORKDAY)
    coordinator = Coordinator(settings, factory)
    payload = refusal().to_json()
    topic = topics.results("conc-a")
    assert coordinator.handle_result(topic, payload) is True
    assert coordinator.handle_result(topic, payload) is True  # re-sent: kept once
    # an old agent's "rejected" result, its ids read from a body it could not verify
    old_style = result(order_id, Outcome.REJECTED, WORKDAY, reason=ReasonCode.REPLAYED_COMMAND)
    assert coordinator.handle_result(topic, old_style.to_json()) is True
    with factory() as session:
        order = orders.get_order(session, order_id)
        assert order.state == "dispatched" and order.result_json is None
        assert workorders.work_order_for(session, order_id) is None
        events = [e.detail for e in order.events]
        assert not any("agent stored the order" in d for d in events)
        kept = list(session.scalars(select(RejectedMessage).order_by(RejectedMessage.id)))
        assert len(kept) == 2
        assert kept[0].order_id is None and "bad_signature" in kept[0].reason
        assert "ab" * 32 in kept[0].reason and kept[0].concentrator_id == "conc-a"
        assert "ends no order" in kept[1].reason
        security = rejected.security_events(session)
        assert [r.id for r in security] == [kept[0].id] and rejected.key_alarm(security[0])
        # the concentrator's signature alarm (REST and dashboard), for a day
        alarms = rejected.signature_alarms(session)
        assert list(alarms) == ["conc-a"] and "bad_signature" in alarms["conc-a"]
        assert rejected.signature_alarms(session, now=datetime.now(UTC) + timedelta(days=2)) == {}


def test_a_refusal_for_another_reason_is_no_key_alarm(session: Session) -> None:
    row, new = rejected.record_refusal(
        session, topics.results("conc-a"), refusal(ReasonCode.WRONG_CONCENTRATOR).to_json(),
        refusal(ReasonCode.WRONG_CONCENTRATOR),
    )
    assert new and not rejected.key_alarm(row)


# -- 5. late results correct the record ------------------------------------------------------
def legacy_order(session: Session, settings: Settings) -> str:
    return accept(
        session, settings, source="soap", correlation_id="corr-42", reply_address="http://legacy.invalid/x"
    )


def test_a_late_result_corrects_an_expired_and_reported_order_and_tells_legacy_again(
    session: Session, settings: Settings, publisher: RecordingPublisher, signer: CommandSigner
) -> None:
    add_meters(session, 1)
    order_id = legacy_order(session, settings)
    assert dispatch.dispatch_ready(session, publisher, signer, settings, now=WORKDAY) == 1
    later = WORKDAY + timedelta(seconds=settings.deadline_for("disconnect") + 120)
    assert dispatch.sweep_expired(session, now=later) == 1
    order = orders.get_order(session, order_id)
    first = ended_from_order(order, None)
    assert first is not None
    expired_message_id = cim_write.result_message_id(first)
    orders.mark_reported(session, order_id, "legacy-notifier", now=later)  # Legacy was told
    session.commit()
    work_order = workorders.work_order_for(session, order_id)
    assert work_order is not None and work_order.status == "open"
    # the agent was cut off; its result comes now: the relay did open
    late = result(order_id, Outcome.DISCONNECTED, later - timedelta(minutes=10))
    assert results.apply_result(session, late, now=later + timedelta(minutes=1)) == "corrected"
    session.commit()
    session.expire_all()
    order = orders.get_order(session, order_id)
    assert order.state == "completed_disconnected" and order.result_reason is None
    assert any("corrected by a late result" in e.detail for e in order.events)
    work_order = workorders.work_order_for(session, order_id)
    assert work_order is not None and work_order.status == "cancelled"
    assert "corrected by a late result" in (work_order.notes or "")
    meter = session.get(Meter, "m0")
    assert meter is not None and meter.relay_state == "disconnected"
    # Legacy's outbox row is due again with the new end: same CorrelationID, new MessageID
    row = session.scalars(select(LegacyNotification).where(LegacyNotification.order_id == order_id)).one()
    assert row.final_state == "completed_disconnected" and row.delivered_at is None
    soap = SoapSettings(reply_address_prefixes=("http://legacy.invalid/",))
    notifier = LegacyNotifier(sessionmaker(bind=session.get_bind()), soap)
    delivery = notifier._prepare(session, row, order)
    assert delivery.body is not None and delivery.message_id != expired_message_id
    assert b"corr-42" in delivery.body and delivery.message_id.encode() in delivery.body
    assert delivery.target == "http://legacy.invalid/x"


def test_a_late_failure_or_a_second_copy_changes_nothing(
    session: Session, settings: Settings, publisher: RecordingPublisher, signer: CommandSigner
) -> None:
    add_meters(session, 1)
    order_id = accept(session, settings)
    dispatch.dispatch_ready(session, publisher, signer, settings, now=WORKDAY)
    later = WORKDAY + timedelta(seconds=settings.deadline_for("disconnect") + 120)
    dispatch.sweep_expired(session, now=later)
    late = result(order_id, Outcome.FAILED, later, reason=ReasonCode.METER_NOT_RESPONDING)
    assert results.apply_result(session, late, now=later) == "late"
    assert results.apply_result(session, late, now=later) == "duplicate"
    session.commit()
    assert orders.get_order(session, order_id).state == "expired"


def test_the_notifier_does_not_close_a_row_corrected_while_it_was_sending(
    session: Session, settings: Settings, publisher: RecordingPublisher, signer: CommandSigner
) -> None:
    add_meters(session, 1)
    order_id = legacy_order(session, settings)
    dispatch.dispatch_ready(session, publisher, signer, settings, now=WORKDAY)
    later = WORKDAY + timedelta(seconds=settings.deadline_for("disconnect") + 120)
    dispatch.sweep_expired(session, now=later)
    session.commit()
    factory = sessionmaker(bind=session.get_bind(), expire_on_commit=False)
    notifier = LegacyNotifier(factory, SoapSettings())
    row = session.scalars(select(LegacyNotification).where(LegacyNotification.order_id == order_id)).one()
    delivery = notifier._prepare(session, row, orders.get_order(session, order_id))  # "expired"
    session.rollback()
    results.apply_result(session, result(order_id, Outcome.DISCONNECTED, later), now=later)
    session.commit()
    notifier._close(delivery, "acknowledged by Legacy")  # the expired one was acknowledged
    session.expire_all()
    row = session.scalars(select(LegacyNotification).where(LegacyNotification.order_id == order_id)).one()
    assert row.delivered_at is None and row.final_state == "completed_disconnected"
    assert orders.get_order(session, order_id).state == "completed_disconnected"  # not "reported"


# -- 6. protected flag cancels whatever the coordinator's state ------------------------------
def cancels_for(publisher: RecordingPublisher) -> list[str]:
    out = []
    for message in publisher.sent:
        command = parse_command(open_envelope(message.payload).body)
        if isinstance(command, CancelCommand):
            out.append(command.order_id)
    return out


def test_the_pass_finds_protected_meters_flagged_behind_the_registry_s_back(
    session: Session, settings: Settings, publisher: RecordingPublisher, signer: CommandSigner,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The fleet-wide check before every pass starts from the protected meters (a partial
    index), in chunks: a flag written straight into the database (an import, another
    replica) still stops the disconnect, whichever chunk its meter falls in, and leaves
    every other meter's order alone."""
    monkeypatch.setattr(orders, "_PROTECTED_CHUNK", 2)
    settings.max_inflight_per_concentrator = 10
    settings.approval_threshold = 100
    add_meters(session, 6)
    ids = [accept(session, settings, f"m{n}", deadline=WORKDAY + timedelta(hours=3)) for n in range(6)]
    for n in (1, 3, 4):  # no registry call, so nothing was stopped at flagging time
        meter = session.get(Meter, f"m{n}")
        assert meter is not None
        meter.protected_customer = True
    session.commit()
    assert dispatch.dispatch_ready(session, publisher, signer, settings, now=WORKDAY) == 3
    session.expire_all()
    states = {n: orders.get_order(session, ids[n]) for n in range(6)}
    assert [n for n, o in states.items() if o.state == "cancelled"] == [1, 3, 4]
    assert all("Ley 21.304" in (states[n].result_detail or "") for n in (1, 3, 4))
    assert [n for n, o in states.items() if o.state == "dispatched"] == [0, 2, 5]


def test_a_protected_flag_cancels_every_disconnect_an_agent_may_hold(
    session: Session, settings: Settings, publisher: RecordingPublisher, signer: CommandSigner
) -> None:
    add_meters(session, 4)
    ids = [accept(session, settings, f"m{n}", deadline=WORKDAY + timedelta(hours=3)) for n in range(4)]
    assert dispatch.dispatch_ready(session, publisher, signer, settings, now=WORKDAY) == 4
    dispatched_only, delivered, answered, ended_here = ids
    for order_id in (delivered, answered):
        results.apply_receipt(session, receipt(orders.get_order(session, order_id)))
    results.apply_result(session, result(answered, Outcome.FAILED, WORKDAY, "m2", reason=ReasonCode.METER_NOT_RESPONDING))
    # this one ended here without the agent's answer (e.g. a result lost before issue 11's
    # acks, or failed by a refusal), while the agent may still hold and run it
    stuck = orders.get_order(session, ended_here)
    stuck.result_reason = "expired"
    from central.services.lifecycle import SYSTEM, advance
    from central.state import Event

    advance(session, stuck, Event.EXPIRE, SYSTEM, "test: ended without an answer", at=WORKDAY)
    session.commit()
    now = WORKDAY + timedelta(minutes=5)
    for n in range(4):
        change_meter(session, f"m{n}", MeterChange(protected_customer=True))
    orders.stop_protected_disconnects(session, now=now)  # as each dispatch pass does
    session.commit()
    assert dispatch.send_cancels(session, publisher, signer, now=now) == 3
    assert sorted(cancels_for(publisher)) == sorted([dispatched_only, delivered, ended_here])
    # sent again until the agent's result, never once the deadline passed
    sent = len(publisher.sent)
    assert dispatch.send_cancels(session, publisher, signer, now=now + timedelta(seconds=30), resend_after_s=60) == 0
    assert dispatch.send_cancels(session, publisher, signer, now=now + timedelta(seconds=61), resend_after_s=60) == 3
    results.apply_result(session, result(dispatched_only, Outcome.CANCELLED, now, "m0", reason=ReasonCode.CANCELLED))
    session.commit()
    assert dispatch.send_cancels(session, publisher, signer, now=now + timedelta(seconds=200), resend_after_s=60) == 2
    assert dispatch.send_cancels(session, publisher, signer, now=WORKDAY + timedelta(hours=3, seconds=1)) == 0
    assert len(publisher.sent) == sent + 5
    # the agent's own cancel result ends the dispatched one cancelled, with no work order
    session.expire_all()
    assert orders.get_order(session, dispatched_only).state == "cancelled"
    assert workorders.work_order_for(session, dispatched_only) is None


def test_a_cancel_decided_while_the_agents_receipt_moved_the_order_still_goes(
    session: Session,
    factory: sessionmaker[Session],
    settings: Settings,
    publisher: RecordingPublisher,
    signer: CommandSigner,
) -> None:
    """The CI run of stop 24: the cancel read the order ``dispatched``, the agent's receipt
    moved it to ``delivered`` before the cancel was written, and the cancel was a 409 that
    nobody retried; the relay was switched. Likewise a reconnect superseding the
    disconnect, and a cancel that read the order before the dispatcher claimed it."""
    add_meters(session, 3)
    cancelled, superseded = (
        accept(session, settings, f"m{n}", deadline=WORKDAY + timedelta(hours=3)) for n in range(2)
    )
    assert dispatch.dispatch_ready(session, publisher, signer, settings, now=WORKDAY) == 2
    # read here as dispatched (held: the session's identity map keeps what it read) ...
    read = [orders.get_order(session, order_id) for order_id in (cancelled, superseded)]
    assert [order.state for order in read] == ["dispatched", "dispatched"]
    with factory() as other:  # ... while the receipts come in on the consumer's session
        for order_id in (cancelled, superseded):
            assert results.apply_receipt(other, receipt(orders.get_order(other, order_id))) == "delivered"
        other.commit()
    connect = OrderRequest(meter_id="m1", action="connect", reason="payment_restored")
    item = orders.create_orders(session, [connect], OPERATOR, settings, now=WORKDAY).items[0]
    session.commit()
    assert item.accepted
    order = orders.cancel_order(session, cancelled, OPERATOR)  # not compared on the state
    session.commit()
    assert order.cancel_requested
    # read validated; the dispatcher claims it before the cancel is written: decided again
    claimed = accept(session, settings, "m2", deadline=WORKDAY + timedelta(hours=3))
    read.append(orders.get_order(session, claimed))
    assert read[-1].state == "validated"
    with factory() as other:
        assert dispatch.dispatch_ready(other, publisher, signer, settings, now=WORKDAY) == 1
    order = orders.cancel_and_commit(session, claimed, OPERATOR)
    assert order.state == "dispatched" and order.cancel_requested
    with factory() as fresh:
        stored = {o.id: o for o in fresh.scalars(select(Order))}
        assert (stored[cancelled].state, stored[cancelled].cancel_requested) == ("delivered", True)
        assert stored[superseded].cancel_requested and stored[superseded].superseded_by == item.order_id
        assert stored[claimed].cancel_requested
        assert dispatch.send_cancels(fresh, publisher, signer, now=WORKDAY) == 3
    assert sorted(cancels_for(publisher)) == sorted([cancelled, superseded, claimed])


def test_a_cancel_decided_while_the_order_ended_says_so(
    session: Session,
    factory: sessionmaker[Session],
    settings: Settings,
    publisher: RecordingPublisher,
    signer: CommandSigner,
) -> None:
    """Read in flight, ended by the agent's failure before the cancel was written: the
    operator is told it can no longer be cancelled (its work order stands), not that a
    cancel went to the agent."""
    add_meters(session, 1)
    order_id = accept(session, settings, deadline=WORKDAY + timedelta(hours=3))
    assert dispatch.dispatch_ready(session, publisher, signer, settings, now=WORKDAY) == 1
    read = orders.get_order(session, order_id)
    assert read.state == "dispatched"
    with factory() as other:
        failure = result(order_id, Outcome.FAILED, WORKDAY, reason=ReasonCode.METER_NOT_RESPONDING)
        results.apply_result(other, failure)
        other.commit()
    with pytest.raises(InvalidTransition, match="failed"):
        orders.cancel_and_commit(session, order_id, OPERATOR)
    with factory() as fresh:
        stored = orders.get_order(fresh, order_id)
        assert (stored.state, stored.cancel_requested) == ("failed", False)
        assert "cancel_requested" not in [e.event for e in stored.events]
        assert workorders.work_order_for(fresh, order_id) is not None


def test_a_receipt_that_comes_in_while_the_cancels_are_on_the_wire_loses_no_record(
    session: Session,
    factory: sessionmaker[Session],
    settings: Settings,
    signer: CommandSigner,
) -> None:
    """The pass's record of the cancels it sent is not undone by an order a receipt moved
    meanwhile: before, the whole record was rolled back (a conflict), and every cancel
    went again on the next pass, one pass after another while receipts kept coming."""
    add_meters(session, 2)
    ids = [accept(session, settings, f"m{n}", deadline=WORKDAY + timedelta(hours=3)) for n in range(2)]
    assert dispatch.dispatch_ready(session, RecordingPublisher(), signer, settings, now=WORKDAY) == 2
    for order_id in ids:
        orders.cancel_order(session, order_id, OPERATOR, now=WORKDAY)
    session.commit()

    class ReceiptMeanwhile(RecordingPublisher):
        def publish_many(self, messages):  # type: ignore[no-untyped-def]
            super().publish_many(messages)
            with factory() as other:  # the consumer, on its own session
                results.apply_receipt(other, receipt(orders.get_order(other, ids[0])))
                other.commit()

    publisher = ReceiptMeanwhile()
    assert dispatch.send_cancels(session, publisher, signer, now=WORKDAY) == 2
    assert dispatch.send_cancels(session, publisher, signer, now=WORKDAY + timedelta(seconds=1)) == 0
    assert sorted(cancels_for(publisher)) == sorted(ids)
    with factory() as fresh:
        stored = [orders.get_order(fresh, order_id) for order_id in ids]
        assert [o.state for o in stored] == ["delivered", "dispatched"]
        assert all(o.cancel_sent_at is not None for o in stored)
        assert all("cancel_sent" in [e.event for e in o.events] for o in stored)


def test_the_agents_meter_table_carries_the_protected_flag(
    session: Session, settings: Settings, publisher: RecordingPublisher, signer: CommandSigner
) -> None:
    add_meters(session, 2)
    change_meter(session, "m1", MeterChange(protected_customer=True))
    session.commit()
    assert dispatch.push_meter_tables(session, publisher, signer) == 1
    table = json.loads(open_envelope(publisher.sent[-1].payload).body)
    assert {m["meter_id"]: m["protected_customer"] for m in table["meters"]} == {"m0": False, "m1": True}


def test_timeline_of_a_resent_command_names_each_sending(
    session: Session, settings: Settings, publisher: RecordingPublisher, signer: CommandSigner
) -> None:
    add_meters(session, 1)
    order_id = accept(session, settings)
    dispatch.dispatch_ready(session, publisher, signer, settings, now=WORKDAY)
    dispatch.republish_unacked(session, publisher, signer, settings, now=WORKDAY + timedelta(minutes=2))
    lines = list(
        session.scalars(
            select(OrderEvent.detail).where(OrderEvent.order_id == order_id, OrderEvent.event == "republish")
        )
    )
    command_id = orders.get_order(session, order_id).command_id
    assert len(lines) == 1 and f"command {command_id} sent again (sending 2" in lines[0]


def test_settings_choose_the_results_subscription(database_url: str) -> None:
    assert Settings(database_url=database_url).mqtt_results_subscription == "shared"
    plain = Settings(database_url=database_url, mqtt_results_subscription="plain")
    assert plain.mqtt_results_subscription == "plain"


def test_no_pile_of_copies_for_an_offline_agent_and_all_due_when_it_is_back(
    session: Session, settings: Settings, publisher: RecordingPublisher, signer: CommandSigner
) -> None:
    from shared.contracts import ConcentratorStatus

    add_meters(session, 1)
    order_id = accept(session, settings)
    dispatch.dispatch_ready(session, publisher, signer, settings, now=WORKDAY)
    results.apply_status(session, ConcentratorStatus(concentrator_id="conc-a", online=False, at=WORKDAY))
    session.commit()
    later = WORKDAY + timedelta(minutes=30)
    # due by its backoff, but its agent is offline: the broker holds the copy it queued
    assert dispatch.republish_unacked(session, publisher, signer, settings, now=later) == 0
    order = orders.get_order(session, order_id)
    order.resend_at = later + timedelta(minutes=10)  # where a long backoff had put it
    session.commit()
    back = ConcentratorStatus(concentrator_id="conc-a", online=True, at=later)
    results.apply_status(session, back, now=later)
    session.commit()
    # due at once (not after the backoff it had reached), the same signed command
    assert dispatch.republish_unacked(session, publisher, signer, settings, now=later) == 1
    assert publisher.sent[-1].payload == publisher.sent[0].payload
    assert orders.get_order(session, order_id).sends == 2
