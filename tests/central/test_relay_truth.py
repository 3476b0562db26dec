"""Issue 16, the coordinator's half, through the service functions on SQLite and
PostgreSQL: relay reports (log entries and audits) against the recorded relay state,
drift, the customer's button on an armed meter (Legacy told connected), tamper and
welded relays, incidents and their held restore, the protected customer's urgent
alarm, refused reports."""

from __future__ import annotations

import itertools
from datetime import datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from central import metrics
from central.errors import BadRequest, Conflict, PermissionDenied
from central.models import (
    Batch,
    DeviceEventNotification,
    LegacyNotification,
    Meter,
    Order,
    RelayAlarm,
    RelayEvent,
    RelayIncident,
    RelayObservation,
    WorkOrder,
)
from central.services import alarms, dispatch, incidents, orders, relay_state, results
from central.services.lifecycle import Actor
from central.settings import Settings
from central.soap.config import SoapSettings
from central.soap.notifier import LegacyNotifier
from ops.legacy import LegacyStandIn, parse_events
from shared.codes import ControlState, Outcome
from shared.contracts import (
    Attempt,
    ConcentratorStatus,
    EnergyReading,
    OrderResult,
    RelayLogEntry,
    RelayReading,
    RelayReport,
    to_builtins,
    validate,
)
from shared.errors import InvalidPayload
from shared.signing import CommandSigner
from tests.soap.standard_clients import assert_standard

from .conftest import APPROVER, OPERATOR, SATURDAY, WORKDAY, RecordingPublisher, add_meters

_ids = itertools.count(1)
STATES = {
    "connected": ControlState.CONNECTED,
    "disconnected": ControlState.DISCONNECTED,
    "armed": ControlState.READY_FOR_RECONNECTION,
}


def report(
    meter: str,
    *,
    at: datetime,
    state: str | None = None,
    wh: float | None = None,
    output: bool | None = None,
    events: list[tuple[int, int]] | None = None,  # (index, code), logged at ``at``
    trigger: str = "audit",
    concentrator: str = "conc-a",
    order_id: str | None = None,
    firmware: str = "",
) -> RelayReport:
    return RelayReport(
        report_id=f"r{next(_ids)}",
        concentrator_id=concentrator,
        meter_id=meter,
        trigger=trigger,  # type: ignore[arg-type]
        order_id=order_id,
        observed_at=at,
        events=[RelayLogEntry(index=i, at=at, code=c) for i, c in events or []],
        relay=RelayReading(output_state=output, control_state=STATES[state], control_mode=3)
        if state
        else None,
        energy=EnergyReading(value=wh, unit="Wh", read_at=at) if wh is not None else None,
        firmware_version=firmware,
    )


def apply(session: Session, settings: Settings, message: RelayReport) -> str:
    effect = relay_state.apply_report(session, message, settings, now=message.observed_at)
    session.commit()
    return effect


def finished(
    session: Session,
    settings: Settings,
    publisher: RecordingPublisher,
    signer: CommandSigner,
    meter: str,
    action: str,
    outcome: Outcome,
    *,
    wh: float = 1000.0,
    **kw: Any,
) -> str:
    """An order on ``meter`` dispatched at WORKDAY and ended ``outcome`` a minute later."""
    request = orders.OrderRequest(
        meter_id=meter,
        action=action,  # type: ignore[arg-type]
        reason="non_payment" if action == "disconnect" else "payment_restored",  # type: ignore[arg-type]
    )
    channel = orders.Channel(source=kw.pop("source", "rest"), reply_address=kw.pop("reply", None))
    item = orders.create_orders(
        session, [request], OPERATOR, settings, now=WORKDAY, channel=channel
    ).items[0]
    session.commit()
    assert item.order_id is not None
    dispatch.dispatch_ready(session, publisher, signer, settings, now=WORKDAY)
    at = WORKDAY + timedelta(minutes=1)
    state = {"connected": "connected", "disconnected": "disconnected", "armed": "armed"}
    result = OrderResult(
        order_id=item.order_id,
        meter_id=meter,
        concentrator_id="conc-a",
        outcome=outcome,
        relay=RelayReading(control_state=STATES[state[outcome.value]], control_mode=3),
        energy=EnergyReading(value=wh, unit="Wh", read_at=at),
        attempts=[Attempt(number=1, started_at=at, finished_at=at)],
        received_at=at,
        finished_at=at,
    )
    assert results.apply_result(session, result, now=at) == "applied"
    session.commit()
    return item.order_id


def kinds(session: Session, meter: str) -> list[str]:
    return list(
        session.scalars(
            select(RelayEvent.kind).where(RelayEvent.meter_id == meter).order_by(RelayEvent.id)
        )
    )


LATER = WORKDAY + timedelta(hours=2)


def test_contacts_read_open_while_the_control_state_says_connected_are_an_opening(
    session: Session, settings: Settings, publisher: RecordingPublisher, signer: CommandSigner
) -> None:
    add_meters(session, 1)
    finished(session, settings, publisher, signer, "m0", "connect", Outcome.CONNECTED)
    apply(session, settings, report("m0", at=LATER, state="connected", output=False, wh=1000.0))
    meter = session.get(Meter, "m0")
    assert meter is not None and meter.relay_state == "disconnected"
    assert kinds(session, "m0") == ["drift", "unexplained_open"]


def test_a_local_disconnection_logged_then_read_is_one_opening_not_two(
    session: Session, settings: Settings, publisher: RecordingPublisher, signer: CommandSigner
) -> None:
    add_meters(session, 1)
    finished(session, settings, publisher, signer, "m0", "connect", Outcome.CONNECTED)
    # code 63 leaves the control in ready_for_reconnection; the firmware of this meter
    # then reads disconnected: the supply went off once
    apply(session, settings, report("m0", at=LATER, events=[(1, 63)], trigger="log_poll"))
    apply(session, settings, report("m0", at=LATER + timedelta(seconds=5), state="disconnected"))
    meter = session.get(Meter, "m0")
    assert meter is not None and meter.relay_state == "disconnected"
    assert kinds(session, "m0") == ["log", "drift", "unexplained_open"]


# -- 1. state from the latest observation, with time and source ----------------------------
def test_the_first_audit_sets_the_relay_state_with_its_time_and_source(
    session: Session, settings: Settings
) -> None:
    add_meters(session, 1)
    assert apply(session, settings, report("m0", at=LATER, state="connected", wh=5.0)) == "applied"
    meter = session.get(Meter, "m0")
    assert meter is not None
    assert (meter.relay_state, meter.relay_state_at, meter.relay_state_source) == (
        "connected",
        LATER,
        "audit",
    )
    assert meter.audited_at == LATER
    assert kinds(session, "m0") == []  # nothing to contradict: no drift
    assert session.scalar(select(func.count()).select_from(RelayObservation)) == 1


# -- 2. drift ----------------------------------------------------------------------------------
def test_an_audit_that_contradicts_the_record_is_drift_and_legacy_is_told(
    session: Session, settings: Settings, publisher: RecordingPublisher, signer: CommandSigner
) -> None:
    add_meters(session, 1)
    finished(session, settings, publisher, signer, "m0", "connect", Outcome.CONNECTED)
    message = report("m0", at=LATER, state="disconnected", wh=2000.0)
    assert apply(session, settings, message) == "applied"
    assert apply(session, settings, message) == "duplicate"  # a copy: nothing twice
    assert kinds(session, "m0") == ["drift", "unexplained_open"]
    meter = session.get(Meter, "m0")
    assert meter is not None and (meter.relay_state, meter.relay_state_source) == (
        "disconnected",
        "audit",
    )
    row = session.scalars(select(DeviceEventNotification)).one()
    assert (row.meter_id, row.relay_state, row.delivered_at) == ("m0", "disconnected", None)
    # Legacy is told: a standard EndDeviceEvent, marked as not the result of an order
    with LegacyStandIn() as legacy:
        soap = SoapSettings(legacy_endpoint=legacy.url)
        notifier = LegacyNotifier(sessionmaker(bind=session.get_bind()), soap)
        legacy.up = False  # Legacy down: kept, due again after the backoff
        notifier.run_once()  # (the REST order's own row is closed unsent: not Legacy's)
        session.expire_all()
        row = session.scalars(select(DeviceEventNotification)).one()
        assert row.delivered_at is None and row.attempts == 1 and "503" in (row.last_error or "")
        legacy.up = True
        assert notifier.run_once(now=row.next_attempt_at) == 1
        assert notifier.run_once(now=row.next_attempt_at) == 0  # delivered once
        (body,) = legacy.received
    message = assert_standard(body)
    assert message.find(".//{*}CorrelationID") is None and message.find(".//{*}issuerID") is None
    (event,) = parse_events(body)
    assert (event.meter_id, event.event_code) == ("m0", "3.31.0.68")
    assert event.details["orderInitiated"] == "false" and "audit read" in event.details["cause"]
    session.expire_all()
    assert session.scalars(select(DeviceEventNotification)).one().delivered_at is not None


def test_an_order_read_back_and_its_remote_disconnection_in_the_log_are_no_drift(
    session: Session, settings: Settings, publisher: RecordingPublisher, signer: CommandSigner
) -> None:
    add_meters(session, 1)
    order_id = finished(
        session, settings, publisher, signer, "m0", "disconnect", Outcome.DISCONNECTED
    )
    # the order's own read-back is an observation; an older audit changes nothing
    older = WORKDAY - timedelta(minutes=5)
    assert apply(session, settings, report("m0", at=older, state="connected")) == "applied"
    meter = session.get(Meter, "m0")
    assert meter is not None and (meter.relay_state, meter.relay_state_source) == (
        "disconnected",
        "order",
    )
    sources = session.scalars(select(RelayObservation.source).order_by(RelayObservation.id))
    assert list(sources) == ["order", "audit"]
    at = WORKDAY + timedelta(minutes=2)
    message = report(
        "m0",
        at=at,
        events=[(7, 61)],
        state="disconnected",
        trigger="after_order",
        order_id=order_id,
    )
    assert apply(session, settings, message) == "applied"
    assert kinds(session, "m0") == ["log"]
    # the same entry read again in the next poll is stored once
    assert apply(session, settings, report("m0", at=at, events=[(7, 61), (8, 65)])) == "applied"
    assert kinds(session, "m0") == ["log", "log"]
    assert session.scalar(select(func.count()).select_from(DeviceEventNotification)) == 0


# -- 3. the customer's button on an armed meter ----------------------------------------------
@pytest.mark.parametrize("seen", ["log", "audit"])
def test_the_button_press_ends_the_armed_order_connected_and_legacy_gets_connected(
    session: Session,
    settings: Settings,
    publisher: RecordingPublisher,
    signer: CommandSigner,
    seen: str,
) -> None:
    add_meters(session, 1)
    with LegacyStandIn() as legacy:
        order_id = finished(
            session,
            settings,
            publisher,
            signer,
            "m0",
            "connect",
            Outcome.ARMED,
            source="soap",
            reply=legacy.url,
        )
        soap = SoapSettings(reply_address_prefixes=(legacy.url,), legacy_endpoint=legacy.url)
        notifier = LegacyNotifier(sessionmaker(bind=session.get_bind()), soap)
        assert notifier.run_once() == 1  # Legacy told "armed"
        session.expire_all()
        assert orders.get_order(session, order_id).state == "reported"
        # the log read after the arm order may hold the remote connection it logged:
        # that is not the button
        after = report(
            "m0",
            at=WORKDAY + timedelta(minutes=2),
            events=[(2, 62)],
            trigger="after_order",
            order_id=order_id,
        )
        assert apply(session, settings, after) == "applied"
        assert orders.get_order(session, order_id).state == "reported"
        # a later request refused at validation never reached the meter: still the button
        refused = orders.OrderRequest(meter_id="m0", action="disconnect", reason="non_payment")
        item = orders.create_orders(session, [refused], OPERATOR, settings, now=SATURDAY).items[0]
        assert not item.accepted
        session.commit()
        pressed = LATER
        message = (
            report("m0", at=pressed, events=[(3, 60)], trigger="log_poll")
            if seen == "log"
            else report("m0", at=pressed, state="connected")
        )
        assert apply(session, settings, message) == "applied"
        order = orders.get_order(session, order_id)
        assert order.state == "completed_connected" and order.finished_at == pressed
        press = [e for e in order.events if e.event == "customer_connected"]
        assert len(press) == 1 and "pressed the button" in press[0].detail
        assert "button_press" in kinds(session, "m0") and "drift" not in kinds(session, "m0")
        assert notifier.run_once() >= 1  # (the refused order's row closes unsent)
        codes = [e.event_code for body in legacy.received for e in parse_events(body)]
        assert codes == ["3.31.0.11", "3.31.0.42"]  # armed, then connected for the same order
        session.expire_all()
        assert orders.get_order(session, order_id).state == "reported"
        assert session.scalar(select(func.count()).select_from(DeviceEventNotification)) == 0


# -- 4. tamper and welded relay ------------------------------------------------------------------
@pytest.mark.parametrize(
    ("output", "kind", "work"),
    [(False, "tamper_bypass", "tamper"), (True, "welded_relay", "welded_relay")],
)
def test_energy_after_a_confirmed_disconnect_is_an_alarm_and_a_work_order(
    session: Session,
    settings: Settings,
    publisher: RecordingPublisher,
    signer: CommandSigner,
    output: bool,
    kind: str,
    work: str,
) -> None:
    add_meters(session, 1)
    finished(
        session, settings, publisher, signer, "m0", "disconnect", Outcome.DISCONNECTED, wh=1000.0
    )
    threshold = settings.relay_tamper_threshold_wh
    # under the threshold: nothing
    apply(
        session,
        settings,
        report("m0", at=LATER, state="disconnected", wh=1000 + threshold / 2, output=output),
    )
    assert session.scalar(select(func.count()).select_from(RelayAlarm)) == 0
    for hours in (3, 4):  # over it, twice: one alarm, one work order
        apply(
            session,
            settings,
            report(
                "m0",
                at=WORKDAY + timedelta(hours=hours),
                state="disconnected",
                wh=1000 + 4 * threshold,
                output=output,
            ),
        )
    alarm = session.scalars(select(RelayAlarm)).one()
    assert (alarm.kind, alarm.severity, alarm.status) == (kind, "high", "open")
    assert alarm.last_seen_at == WORKDAY + timedelta(hours=4)
    work_order = session.scalars(select(WorkOrder)).one()
    assert (work_order.kind, work_order.order_id, work_order.alarm_id) == (work, None, alarm.id)
    assert work_order.meter_id == "m0" and alarm.work_order_id == work_order.id
    # never a command: no order was created for it
    assert session.scalar(select(func.count()).select_from(Order)) == 1


def test_a_relay_closing_on_a_meter_that_should_be_off_is_an_alarm_not_a_command(
    session: Session, settings: Settings, publisher: RecordingPublisher, signer: CommandSigner
) -> None:
    add_meters(session, 1)
    finished(session, settings, publisher, signer, "m0", "disconnect", Outcome.DISCONNECTED)
    apply(session, settings, report("m0", at=LATER, events=[(4, 68)], trigger="log_poll"))
    alarm = session.scalars(select(RelayAlarm)).one()
    assert alarm.kind == "drift_to_connected"
    assert session.scalars(select(WorkOrder.kind)).one() == "drift"
    assert session.scalar(select(func.count()).select_from(Order)) == 1  # no re-cut
    assert session.scalars(select(DeviceEventNotification.relay_state)).one() == "connected"


# -- 5. incidents --------------------------------------------------------------------------------
def test_thirty_unexplained_openings_within_a_minute_are_one_incident(
    session: Session, settings: Settings
) -> None:
    ids = add_meters(session, 30)
    other = add_meters(session, 2, concentrator="conc-b", prefix="b")
    for meter in [*ids, *other]:
        apply(
            session,
            settings,
            report(
                meter,
                at=WORKDAY,
                state="connected",
                concentrator="conc-b" if meter.startswith("b") else "conc-a",
            ),
        )
    for n, meter in enumerate(ids):
        apply(
            session,
            settings,
            report(
                meter, at=LATER + timedelta(seconds=n * 1.5), events=[(2, 63)], trigger="log_poll"
            ),
        )
    # two on another concentrator, below the minimum: no incident of their own
    for meter in other:
        apply(
            session,
            settings,
            report(meter, at=LATER, events=[(2, 63)], trigger="log_poll", concentrator="conc-b"),
        )
    incident = session.scalars(select(RelayIncident)).one()
    assert (incident.group_kind, incident.group_key, incident.meters) == (
        "concentrator",
        "conc-a",
        30,
    )
    assert incidents.meters_of(session, incident.id) == sorted(ids)
    # much later, another opening there is a new story, not this incident
    apply(session, settings, report(ids[0], at=LATER + timedelta(hours=1), state="connected"))
    apply(session, settings, report(ids[0], at=LATER + timedelta(hours=2), state="disconnected"))
    assert session.scalar(select(func.count()).select_from(RelayIncident)) == 1
    assert incidents.get_incident(session, incident.id).meters == 30


def test_the_restore_of_an_incident_is_held_for_a_second_person_then_dispatched(
    session: Session, settings: Settings, publisher: RecordingPublisher, signer: CommandSigner
) -> None:
    ids = add_meters(session, 4)
    for meter in ids:
        apply(session, settings, report(meter, at=WORKDAY, state="connected"))
    for n, meter in enumerate(ids):
        apply(
            session, settings, report(meter, at=LATER + timedelta(seconds=n), state="disconnected")
        )
    incident = session.scalars(select(RelayIncident)).one()
    # one meter was meanwhile reconnected by hand: only three are left to restore
    apply(session, settings, report(ids[3], at=LATER + timedelta(minutes=5), state="connected"))
    incidents.acknowledge(session, incident.id, OPERATOR)
    _incident, placed = incidents.restore(session, incident.id, OPERATOR, settings, now=LATER)
    session.commit()
    assert sorted(placed) == ids[:3]
    batch = session.get(Batch, incident.restore_batch_id)
    assert batch is not None and batch.needs_approval
    assert dispatch.dispatch_ready(session, publisher, signer, settings, now=LATER) == 0  # held
    with pytest.raises(Conflict):
        incidents.restore(session, incident.id, OPERATOR, settings, now=LATER)
    with pytest.raises(PermissionDenied):  # not the person who asked
        orders.approve_batch(session, batch.id, Actor(OPERATOR.name, "approver"))
    orders.approve_batch(session, batch.id, APPROVER)
    session.commit()
    assert dispatch.dispatch_ready(session, publisher, signer, settings, now=LATER) == 3
    states = {o.meter_id: o.state for o in session.scalars(select(Order))}
    assert states == {m: "dispatched" for m in ids[:3]}
    incidents.close(session, incident.id, OPERATOR, "feeder fault")
    session.commit()
    with pytest.raises(Conflict):
        incidents.restore(session, incident.id, OPERATOR, settings, now=LATER)


def test_openings_on_one_firmware_across_concentrators_are_one_incident(
    session: Session, settings: Settings
) -> None:
    # three meters of three concentrators, one firmware version (the bad update)
    ids = [add_meters(session, 1, concentrator=f"conc-{c}", prefix=c)[0] for c in "xyz"]
    for n, meter in enumerate(ids):
        conc = f"conc-{meter[0]}"
        apply(session, settings, report(meter, at=WORKDAY, state="connected", concentrator=conc))
        opened = report(
            meter,
            at=LATER + timedelta(seconds=n),
            state="disconnected",
            concentrator=conc,
            firmware="fw-4.2.1",
        )
        apply(session, settings, opened)
        back = report(meter, at=LATER + timedelta(minutes=9), state="connected", concentrator=conc)
        apply(session, settings, back)  # reconnected by hand meanwhile
    incident = session.scalars(select(RelayIncident)).one()
    assert (incident.group_kind, incident.group_key, incident.meters) == ("firmware", "fw-4.2.1", 3)
    with pytest.raises(BadRequest, match="no meter left disconnected"):
        incidents.restore(session, incident.id, OPERATOR, settings, now=LATER)


# -- 6. protected customer ---------------------------------------------------------------------
def test_a_protected_customer_seen_disconnected_is_the_urgent_alarm_with_a_held_reconnect(
    session: Session, settings: Settings, publisher: RecordingPublisher, signer: CommandSigner
) -> None:
    add_meters(session, 1, protected_customer=True)
    add_meters(session, 1, prefix="x")
    apply(session, settings, report("m0", at=WORKDAY, state="connected"))
    apply(session, settings, report("x0", at=WORKDAY, state="connected"))
    apply(session, settings, report("x0", at=LATER, state="connected", wh=100.0))
    # an ordinary meter cut by hand: drift, but no alarm
    apply(session, settings, report("x0", at=LATER, events=[(1, 59)], trigger="log_poll"))
    apply(session, settings, report("m0", at=LATER, events=[(5, 63)], trigger="log_poll"))
    top = alarms.list_alarms(session, status="active")
    assert [a.kind for a in top] == ["protected_disconnected"]
    alarm = top[0]
    assert alarm.severity == "urgent" and alarm.work_order_id is None and alarm.order_id
    order = orders.get_order(session, alarm.order_id)
    assert (order.action, order.meter_id, order.state, order.needs_approval) == (
        "connect",
        "m0",
        "validated",
        True,
    )
    assert order.priority == 9  # the highest: it runs first
    assert dispatch.dispatch_ready(session, publisher, signer, settings, now=LATER) == 0
    assert order.batch_id is not None
    orders.approve_batch(session, order.batch_id, APPROVER)
    session.commit()
    assert dispatch.dispatch_ready(session, publisher, signer, settings, now=LATER) == 1
    # seen again: the same alarm, no second order
    apply(session, settings, report("m0", at=LATER + timedelta(minutes=1), state="disconnected"))
    assert session.scalar(select(func.count()).select_from(RelayAlarm)) == 1
    alarms.close(session, alarm.id, OPERATOR)
    session.commit()
    assert alarms.list_alarms(session, status="active") == []


# -- 7. refused reports --------------------------------------------------------------------------
def test_a_report_about_a_meter_it_cannot_be_about_changes_nothing(
    session: Session, settings: Settings, publisher: RecordingPublisher, signer: CommandSigner
) -> None:
    add_meters(session, 1)
    add_meters(session, 1, concentrator="conc-b", prefix="b")
    order_m0 = finished(session, settings, publisher, signer, "m0", "connect", Outcome.CONNECTED)
    cases = {
        "unknown_meter": report("nobody", at=LATER, state="disconnected"),
        "wrong_concentrator": report("b0", at=LATER, state="disconnected"),
        "wrong_order": report(
            "b0", at=LATER, state="disconnected", concentrator="conc-b", order_id=order_m0
        ),
    }
    for effect, message in cases.items():
        assert apply(session, settings, message) == effect
    assert session.scalar(select(func.count()).select_from(RelayEvent)) == 0
    assert session.scalar(select(func.count()).select_from(RelayObservation)) == 1  # the order's
    meter = session.get(Meter, "b0")
    assert meter is not None and meter.relay_state == "unknown"
    assert session.scalar(select(func.count()).select_from(LegacyNotification)) == 1


def test_the_audit_airtime_share_per_line_reaches_the_metrics(
    session: Session, settings: Settings, factory: sessionmaker[Session]
) -> None:
    add_meters(session, 1)
    status = ConcentratorStatus(
        concentrator_id="conc-a",
        online=True,
        at=LATER,
        audit_airtime={"line:plc1": 0.07, "line:plc2": 0.0},
    )
    assert results.apply_status(session, status, now=LATER)
    session.commit()
    gauges = {
        tuple(sample.labels.values()): sample.value
        for family in metrics.DatabaseCollector(factory).collect()
        if family.name == "rcd_relay_audit_airtime_share"
        for sample in family.samples
    }
    assert gauges == {("conc-a", "line:plc1"): 0.07, ("conc-a", "line:plc2"): 0.0}
    with pytest.raises(InvalidPayload):  # a share is a fraction of the line's time
        validate(ConcentratorStatus, {**to_builtins(status), "audit_airtime": {"line:x": 1.5}})
