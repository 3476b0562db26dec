"""Safety review (2026-11): second-person approval cannot be bypassed by splitting,
Ley 21.304 re-checked after acceptance, idempotency keys scoped to their caller
(SQLite and PostgreSQL)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import update
from sqlalchemy.orm import Session, sessionmaker

from central.errors import PermissionDenied
from central.models import Meter, Order
from central.services import dispatch, orders, registry, results, workorders
from central.services.lifecycle import Actor
from central.services.orders import OrderRequest
from central.services.registry import MeterChange, MeterFields
from central.settings import Settings
from shared.codes import Outcome, ReasonCode
from shared.signing import CommandSigner

from .conftest import APPROVER, OPERATOR, WORKDAY, RecordingPublisher
from .test_orders import result_for

Meters = Callable[..., list[str]]


def req(meter: str, action: str = "disconnect", **kw: object) -> OrderRequest:
    reason = "non_payment" if action == "disconnect" else "payment_restored"
    return OrderRequest.model_validate(
        {"meter_id": meter, "action": action, "reason": reason, **kw}
    )


def create(
    session: Session,
    settings: Settings,
    requests: list[OrderRequest],
    actor: Actor = OPERATOR,
    now=WORKDAY,  # type: ignore[no-untyped-def]
) -> orders.BatchOutcome:
    outcome = orders.create_orders(session, requests, actor, settings, now=now)
    session.commit()
    return outcome


# -- second-person approval ------------------------------------------------------------


def test_mass_disconnect_split_into_single_orders_is_held(
    session: Session,
    settings: Settings,
    meters: Meters,
    publisher: RecordingPublisher,
    signer: CommandSigner,
) -> None:
    """Threshold 5: five single disconnects pass, the sixth (and any after it within the
    window, by anyone) waits for a second person, like one batch of six would."""
    ids = meters(8)
    held = []
    for n, meter in enumerate(ids):
        actor = OPERATOR if n % 2 else Actor("otto", "operator")  # two accounts, same pool
        outcome = create(session, settings, [req(meter)], actor, WORKDAY + timedelta(minutes=n))
        assert outcome.items[0].accepted
        held.append(outcome.needs_approval)
    assert held == [False] * 5 + [True] * 3
    later = WORKDAY + timedelta(minutes=10)
    assert dispatch.dispatch_ready(session, publisher, signer, settings, now=later) == 5
    # a batch of two that would cross the threshold is held as a whole
    more = meters(2, prefix="x")
    assert create(session, settings, [req(m) for m in more], now=later).needs_approval
    # connects are never counted nor held
    assert not create(session, settings, [req("m0", "connect")], now=later).needs_approval
    # outside the window the count starts again
    fresh = meters(1, prefix="f")
    after = WORKDAY + timedelta(seconds=settings.approval_window_s + 3600)
    assert not create(session, settings, [req(fresh[0])], now=after).needs_approval


def test_held_split_disconnect_needs_a_different_approver(
    session: Session, settings: Settings, meters: Meters
) -> None:
    ids = meters(6)
    for meter in ids[:5]:
        create(session, settings, [req(meter)])
    sixth = create(session, settings, [req(ids[5])])
    assert sixth.needs_approval and sixth.batch_id
    order_id = sixth.items[0].order_id or ""
    approved = orders.approve_order(session, order_id, APPROVER)
    session.commit()
    assert approved.approved_by == APPROVER.name


# -- Ley 21.304 after acceptance -------------------------------------------------------


def test_meter_flagged_protected_by_patch_cancels_its_pending_disconnect(
    session: Session,
    settings: Settings,
    meters: Meters,
    publisher: RecordingPublisher,
    signer: CommandSigner,
) -> None:
    meters(2)
    waiting = create(session, settings, [req("m0")]).items[0]
    flying = create(session, settings, [req("m1")]).items[0]
    # m1's disconnect goes out; m0's waits (e.g. rate limit, not_before) ...
    session.execute(update(Order).where(Order.id == waiting.order_id).values(needs_approval=True))
    session.commit()
    assert dispatch.dispatch_ready(session, publisher, signer, settings, now=WORKDAY) == 1
    # ... then both meters are registered as supplying an electro-dependent patient
    registry.change_meter(session, "m0", MeterChange(protected_customer=True))
    registry.upsert_meter(
        session,
        MeterFields(
            id="m1",
            concentrator_id="conc-a",
            line_id="l1",
            hdlc_address=17,
            protected_customer=True,
        ),
    )
    session.commit()
    session.execute(update(Order).where(Order.id == waiting.order_id).values(approved_by="x"))
    session.commit()
    assert dispatch.dispatch_ready(session, publisher, signer, settings, now=WORKDAY) == 0
    session.expire_all()
    assert orders.get_order(session, waiting.order_id or "").state == "cancelled"
    in_flight = orders.get_order(session, flying.order_id or "")
    assert in_flight.cancel_requested
    assert dispatch.send_cancels(session, publisher, signer, now=WORKDAY) == 1


def test_protected_flag_written_behind_the_api_is_rechecked_at_dispatch(
    session: Session,
    settings: Settings,
    meters: Meters,
    publisher: RecordingPublisher,
    signer: CommandSigner,
) -> None:
    """Even a flag set directly in the database (import tool, replica, SQL) stops the
    disconnect at dispatch time: it is cancelled, never published, no work order."""
    meters(2)
    item = create(session, settings, [req("m0")]).items[0]
    connect = create(session, settings, [req("m1", "connect")]).items[0]
    session.execute(update(Meter).values(protected_customer=True))
    session.commit()
    assert dispatch.dispatch_ready(session, publisher, signer, settings, now=WORKDAY) == 1
    assert [m for m in publisher.sent if b"disconnect" in m.payload] == []
    session.expire_all()
    order = orders.get_order(session, item.order_id or "")
    assert order.state == "cancelled"
    assert orders.get_order(session, connect.order_id or "").state == "dispatched"
    dispatch.sweep_expired(session, now=WORKDAY + timedelta(days=1))
    assert workorders.list_work_orders(session, meter_id="m0") == []  # no field disconnect


def test_reconnect_of_protected_meter_still_goes(
    session: Session,
    settings: Settings,
    meters: Meters,
    publisher: RecordingPublisher,
    signer: CommandSigner,
) -> None:
    meters(1, protected_customer=True)
    assert create(session, settings, [req("m0")]).items[0].code == "protected_customer"
    item = create(session, settings, [req("m0", "connect")]).items[0]
    assert item.accepted
    assert dispatch.dispatch_ready(session, publisher, signer, settings, now=WORKDAY) == 1
    results.apply_result(session, result_for(item.order_id or "", "m0", Outcome.CONNECTED))
    session.commit()


# -- idempotency keys ------------------------------------------------------------------


def test_idempotency_key_of_another_caller_never_returns_their_order(
    session: Session, settings: Settings, meters: Meters
) -> None:
    meters(3)
    mine = create(session, settings, [req("m0", idempotency_key="k-1")]).items[0]
    other = Actor("otto", "operator")
    theirs = create(session, settings, [req("m1", idempotency_key="k-1")], other).items[0]
    assert not theirs.accepted and theirs.order_id != mine.order_id
    assert theirs.code == "invalid_request" and not theirs.duplicate
    # the same caller with the same key but another meter or action: refused too
    again = create(session, settings, [req("m2", idempotency_key="k-1")]).items[0]
    assert not again.accepted and again.order_id != mine.order_id
    # the genuine repeat still returns the original
    repeat = create(session, settings, [req("m0", idempotency_key="k-1")]).items[0]
    assert repeat.duplicate and repeat.order_id == mine.order_id
    # nothing was sent for the refused ones
    assert [o.id for o in orders.list_orders(session, meter_id="m1", state="validated")] == []


def test_late_result_after_expiry_changes_the_outcome_only_when_the_relay_switched(
    session: Session,
    settings: Settings,
    meters: Meters,
    publisher: RecordingPublisher,
    signer: CommandSigner,
) -> None:
    """Issue 11 replaced "a late result never resurrects an expired order": the record
    must be what the meter did. A late failure leaves it expired; a late switch corrects it."""
    meters(2)
    failed, switched = create(session, settings, [req("m0"), req("m1")]).items
    assert dispatch.dispatch_ready(session, publisher, signer, settings, now=WORKDAY) == 2
    later = WORKDAY + timedelta(seconds=settings.deadline_for("disconnect") + 3600)
    assert dispatch.sweep_expired(session, now=later) == 2
    assert (
        results.apply_result(
            session,
            result_for(
                failed.order_id or "", "m0", Outcome.FAILED, reason=ReasonCode.METER_NOT_RESPONDING
            ),
        )
        == "late"
    )
    effect = results.apply_result(
        session, result_for(switched.order_id or "", "m1", Outcome.DISCONNECTED)
    )
    session.commit()
    assert effect == "corrected"
    session.expire_all()
    assert orders.get_order(session, failed.order_id or "").state == "expired"
    assert orders.get_order(session, switched.order_id or "").state == "completed_disconnected"
    assert session.get(Meter, "m1").relay_state == "disconnected"  # type: ignore[union-attr]


def test_requester_cannot_approve_own_batch_sent_through_soap(
    session: Session, settings: Settings, meters: Meters
) -> None:
    """SOAP records the requester as ``soap:<name>``; the same person (same token table)
    approving through REST is still the requester."""
    ids = meters(6)
    arturo_soap = Actor("soap:arturo", "approver")
    outcome = orders.create_orders(
        session, [req(m) for m in ids], arturo_soap, settings, now=WORKDAY,
        channel=orders.Channel("soap"),
    )
    session.commit()
    assert outcome.needs_approval and outcome.batch_id
    with pytest.raises(PermissionDenied):
        orders.approve_batch(session, outcome.batch_id, APPROVER)  # "arturo" via REST
    with pytest.raises(PermissionDenied):
        orders.approve_order(session, outcome.items[0].order_id or "", APPROVER)
    session.rollback()
    # and the other way round
    rest = create(session, settings, [req(m, "connect") for m in ids], APPROVER)
    assert not rest.needs_approval
    more = meters(6, prefix="y")
    by_rest = create(session, settings, [req(m) for m in more], APPROVER)
    assert by_rest.batch_id
    with pytest.raises(PermissionDenied):
        orders.approve_batch(session, by_rest.batch_id, arturo_soap)
    session.rollback()
    assert orders.approve_batch(session, outcome.batch_id, Actor("bea", "approver")).approved_by


# -- working days at the moment of the switch ------------------------------------------

FRIDAY_NIGHT = datetime(2026, 11, 28, 1, 0, tzinfo=UTC)  # Fri 22:00 in Santiago (UTC-3)
SATURDAY_MORNING = datetime(2026, 11, 28, 13, 0, tzinfo=UTC)  # Sat 10:00 in Santiago
MONDAY_MORNING = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)  # Mon 09:00 in Santiago


def test_disconnect_accepted_on_a_working_day_waits_over_the_weekend(
    session: Session,
    settings: Settings,
    meters: Meters,
    publisher: RecordingPublisher,
    signer: CommandSigner,
) -> None:
    meters(3)
    deadline = MONDAY_MORNING + timedelta(hours=6)
    # Friday 22:00 local is already Saturday in UTC: accepted (local day rules)
    held = create(
        session,
        settings,
        [
            req("m0", deadline=deadline),
            req("m1", deadline=deadline, special=True),
            # its own deadline reaches Saturday (a passed one is never sent: issue 11)
            req("m2", "connect", deadline=deadline),
        ],
        now=FRIDAY_NIGHT,
    )
    assert all(item.accepted for item in held.items)
    # Saturday: the connect goes; both disconnects wait (the special flag lifts the
    # weekend rule only with a second person's approval, issue 12)
    assert dispatch.dispatch_ready(session, publisher, signer, settings, now=SATURDAY_MORNING) == 1
    session.expire_all()
    assert orders.get_order(session, held.items[0].order_id or "").state == "validated"
    # a moratorium declared over the weekend holds non-payment disconnects on Monday too
    settings.nonpayment_moratorium_active = True
    assert dispatch.dispatch_ready(session, publisher, signer, settings, now=MONDAY_MORNING) == 0
    settings.nonpayment_moratorium_active = False
    assert dispatch.dispatch_ready(session, publisher, signer, settings, now=MONDAY_MORNING) == 2


def test_disconnect_scheduled_for_a_weekend_or_holiday_is_refused(
    session: Session, settings: Settings, meters: Meters
) -> None:
    """``not_before`` on a Saturday (or a holiday) would let the agent switch the relay
    then: the day rules apply to that day too, unless special."""
    meters(3)
    holiday = datetime(2026, 12, 8, 13, 0, tzinfo=UTC)  # Inmaculada Concepción
    items = create(
        session,
        settings,
        [
            req("m0", not_before=SATURDAY_MORNING),
            req("m1", not_before=holiday, deadline=holiday + timedelta(hours=4)),
            req("m2", not_before=SATURDAY_MORNING, special=True),
        ],
        now=WORKDAY,
    ).items
    assert [i.code for i in items] == ["not_working_day", "not_working_day", None]
    assert (
        create(session, settings, [req("m0", "connect", not_before=SATURDAY_MORNING)])
        .items[0]
        .accepted
    )


# -- fleet-wide disconnect rate across replicas ----------------------------------------


def test_two_replicas_do_not_double_the_disconnect_rate(
    database_url: str,
    settings: Settings,
    factory: sessionmaker[Session],
    session: Session,
    meters: Meters,
) -> None:
    """Two coordinators on one PostgreSQL: while one claim is open, the other waits, then
    sees the first one's dispatches in the per-minute budget."""
    if not database_url.startswith("postgresql"):
        pytest.skip("replicas share PostgreSQL; one SQLite process claims alone")
    settings.disconnects_per_minute = 3
    settings.approval_threshold = 100
    meters(6)
    create(session, settings, [req(f"m{n}") for n in range(6)])
    first = factory()
    ready = dispatch.select_ready(first, settings, WORKDAY, limit=3)
    assert len(ready) == 3
    seen: list[int] = []

    def other_replica() -> None:
        with factory() as second:
            seen.append(len(dispatch.select_ready(second, settings, WORKDAY, limit=3)))
            second.rollback()

    thread = threading.Thread(target=other_replica)
    thread.start()
    thread.join(timeout=1.0)
    blocked = thread.is_alive()
    first.execute(
        update(Order)
        .where(Order.id.in_([r.id for r in ready]))
        .values(state="dispatched", dispatched_at=WORKDAY, command_id="c-test")
    )
    first.commit()
    first.close()
    thread.join(timeout=10)
    assert blocked and seen == [0]


def _command_deadlines(publisher: RecordingPublisher, signer: CommandSigner) -> dict[str, datetime]:
    from shared.contracts import OrderCommand
    from shared.message_kinds import parse_command
    from shared.signing import open_envelope

    deadlines = {}
    for message in publisher.sent:
        command = parse_command(open_envelope(message.payload).body)
        assert isinstance(command, OrderCommand)
        deadlines[command.meter_id] = command.deadline
    return deadlines


def test_ordinary_disconnect_cannot_run_past_the_local_working_day_on_the_agent(
    session: Session,
    settings: Settings,
    meters: Meters,
    publisher: RecordingPublisher,
    signer: CommandSigner,
) -> None:
    """Sent Friday 20:00 in Santiago with a deadline on Saturday: the agent's deadline is
    Friday midnight local, so retries cannot switch the relay on the weekend; a reconnect
    keeps its full deadline, and so does a special disconnect only once a second person
    approved it (issue 12): this one was not, so it ends with the working day too."""
    meters(3)
    friday_evening = datetime(2026, 11, 27, 23, 0, tzinfo=UTC)  # Fri 20:00 in Santiago
    deadline = friday_evening + timedelta(hours=8)  # Sat 04:00 local
    items = create(
        session,
        settings,
        [
            req("m0", deadline=deadline),
            req("m1", deadline=deadline, special=True),
            req("m2", "connect", deadline=deadline),
        ],
        now=friday_evening,
    )
    assert all(item.accepted for item in items.items)
    assert dispatch.dispatch_ready(session, publisher, signer, settings, now=friday_evening) == 3
    sent = _command_deadlines(publisher, signer)
    saturday_midnight_local = datetime(2026, 11, 28, 3, 0, tzinfo=UTC)
    assert sent["m0"] == saturday_midnight_local
    assert sent["m1"] == saturday_midnight_local
    assert sent["m2"] == deadline


def test_no_ordinary_disconnect_command_is_built_on_a_non_working_day(settings: Settings) -> None:
    """A command built on a Saturday must not give the agent a weekend to act in. It used to
    get a deadline one second ahead; since issue 11 no deadline is ever moved, so none is
    built (a re-send goes out as first signed, on its working day's deadline)."""
    from types import SimpleNamespace

    saturday = datetime(2026, 11, 28, 15, 0, tzinfo=UTC)
    order = SimpleNamespace(
        id="o1",
        meter_id="m0",
        concentrator_id="c1",
        action="disconnect",
        reason="non_payment",
        priority=5,
        deadline=saturday + timedelta(hours=5),
        not_before=None,
        updated_at=saturday,
        special=False,
        approved_by=None,
    )
    with pytest.raises(dispatch.DeadlinePassed):
        dispatch.build_command(order, settings, "cmd-1", saturday)  # type: ignore[arg-type]
    # special lifts the rule only with a second person's approval (issue 12)
    with pytest.raises(dispatch.DeadlinePassed):
        dispatch.build_command(  # type: ignore[arg-type]
            SimpleNamespace(**{**vars(order), "special": True}), settings, "cmd-2", saturday
        )
    special = dispatch.build_command(  # type: ignore[arg-type]
        SimpleNamespace(**{**vars(order), "special": True, "approved_by": "caro"}),
        settings,
        "cmd-3",
        saturday,
    )
    assert special.deadline == saturday + timedelta(hours=5)


@pytest.mark.parametrize(
    "change",
    [{"hdlc_address": 5}, {"line_id": None}, {"id": "MTR 1/#"}, {"keys_ref": "k" * 65},
     {"logical_server": 0}],
)
def test_meter_the_agent_could_not_use_is_left_out_of_its_table(change: dict[str, object]) -> None:
    fields: dict[str, object] = {"id": "MTR-1", "concentrator_id": "conc-a", "transport": "hdlc",
                                 "line_id": "plc0", "hdlc_address": 17, "logical_server": 1,
                                 "commissioned": True}
    assert registry.meter_entry(Meter(**fields)) is not None
    assert registry.meter_entry(Meter(**(fields | change))) is None


def test_an_order_whose_command_is_invalid_holds_back_no_other_order(
    session: Session,
    settings: Settings,
    meters: Meters,
    publisher: RecordingPublisher,
    signer: CommandSigner,
) -> None:
    """A row written behind the API (here a concentrator id that is no topic segment)
    makes that one command invalid: it is not sent, the others still are."""
    meters(2)
    bad = create(session, settings, [req("m0", "connect")]).items[0].order_id
    good = create(session, settings, [req("m1", "connect")]).items[0].order_id
    session.execute(update(Order).where(Order.id == bad).values(concentrator_id="conc/a"))
    session.commit()
    assert dispatch.dispatch_ready(session, publisher, signer, settings, now=WORKDAY) == 1
    session.expire_all()
    assert orders.get_order(session, good or "").state == "dispatched"
    assert orders.get_order(session, bad or "").state == "validated"
    assert [m.topic for m in publisher.sent] == ["rcd/v1/c/conc-a/cmd"]
