"""Relay truth (issue 16): what the meters say their relays did, against what we recorded.

A meter's recorded relay (``meters.relay_state``) comes from the latest observation
or result, with its time (``relay_state_at``) and source (``relay_state_source``:
``order``, ``audit``, ``after_order``, ``log_poll`` or ``log``). A
:class:`shared.contracts.RelayReport` brings disconnector log entries (each stored
once per meter and index) and a relay reading; each change it shows is judged:

* explained: an order on the meter is in flight, or ended within
  ``relay_order_match_s`` before it, for that state (a remote switching code 61/62 in
  the log read after an order is that order's): the record follows, nothing else;
* the customer's button: recorded ``armed`` by an order that ended armed, now
  connected: the order ends connected (``customer_connected``) and Legacy is told
  ``connected`` for it;
* otherwise a ``drift`` event on the meter's history, told to Legacy as an
  unsolicited EndDeviceEvent, and by direction: an opening is an
  ``unexplained_open`` (grouped into incidents; for a protected customer the urgent
  alarm); a closing on a meter that should be disconnected is an alarm and a work
  order, never a command.

Energy registered after a confirmed disconnect (baseline ``disconnect_energy_wh``)
over ``relay_tamper_threshold_wh`` is a tamper/bypass alarm, or a welded relay when
the meter says its contacts are still closed (``output_state`` true).

A report names a meter of its own concentrator and, if any, an order of that meter;
otherwise it is refused (kept as a rejected message by the caller) and changes nothing.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Final

from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from central import metrics
from central.models import (
    DeviceEventNotification,
    Meter,
    Order,
    RelayEvent,
    RelayObservation,
    RelayReportRow,
)
from central.services import alarms, incidents
from central.services.lifecycle import advance, utcnow
from central.settings import Settings
from central.state import IN_FLIGHT_STATES, Event, OrderState
from shared.codes import ControlState
from shared.contracts import EnergyReading, OrderResult, RelayLogEntry, RelayReading, RelayReport

log = logging.getLogger(__name__)

# Standard disconnector control event codes (DLMS event log of the Disconnect control).
CODE_NAMES: Final = {
    59: "manual disconnection",
    60: "manual connection",
    61: "remote disconnection",
    62: "remote connection",
    63: "local disconnection",
    64: "limiter threshold exceeded",
    65: "limiter threshold ok",
    67: "disconnect/reconnect failure",
    68: "local reconnection",
}
# Manual and local disconnections leave the Disconnect control in
# ready_for_reconnection (IC 70 transitions c/f and g): the supply is off, and the
# customer's button (or the limiter, by mode) may close it again.
STATE_OF_CODE: Final = {
    59: "armed",
    60: "connected",
    61: "disconnected",
    62: "connected",
    63: "armed",
    68: "connected",
}
# The states in which the supply is off: a change between them is no opening.
SUPPLY_OFF: Final = frozenset({"disconnected", "armed"})
REMOTE_CODES: Final = frozenset({61, 62})
REMOTE_CONNECTION: Final = 62
RELAY_OF_STATE: Final = {
    ControlState.DISCONNECTED: "disconnected",
    ControlState.CONNECTED: "connected",
    ControlState.READY_FOR_RECONNECTION: "armed",
}
# the action whose order explains a change to this state
ACTIONS_FOR: Final = {
    "disconnected": ("disconnect",),
    "connected": ("connect", "arm"),
    "armed": ("arm", "connect"),
}
# refused reports: effect -> why (the caller keeps them as rejected messages)
REFUSED: Final = {
    "unknown_meter": "names a meter that is not registered",
    "wrong_concentrator": "names a meter of another concentrator",
    "wrong_order": "names an order the coordinator does not know, or of another meter",
}
_SWITCHED: Final = ("completed_connected", "completed_disconnected", "completed_armed")
_WH_PER: Final = {"wh": 1.0, "kwh": 1000.0, "mwh": 1_000_000.0}


@dataclass
class _Context:
    session: Session
    meter: Meter
    settings: Settings
    now: datetime
    report_id: str | None
    order_id: str | None  # the order the report follows (trigger after_order)


def energy_wh(energy: EnergyReading | None) -> float | None:
    """The register in Wh, or None when absent or in a unit we do not know."""
    if energy is None:
        return None
    factor = _WH_PER.get(energy.unit.strip().lower())
    return energy.value * factor if factor is not None else None


def apply_report(
    session: Session, report: RelayReport, settings: Settings, *, now: datetime | None = None
) -> str:
    """Apply one relay report; returns ``applied``, ``duplicate`` or a key of
    :data:`REFUSED`. Does not commit."""
    now = now or utcnow()
    refusal = _refusal(session, report)
    if refusal is not None:
        return _count(refusal)
    meter = session.get(Meter, report.meter_id)
    assert meter is not None
    # first, so that a second replica applying the same report fails here
    session.add(
        RelayReportRow(
            report_id=report.report_id,
            concentrator_id=report.concentrator_id,
            meter_id=meter.id,
            trigger=report.trigger,
            order_id=report.order_id,
            observed_at=report.observed_at,
            received_at=now,
            events=len(report.events),
            summary=_summary(report),
        )
    )
    session.flush()
    if report.firmware_version:
        meter.firmware_version = report.firmware_version
    context = _Context(session, meter, settings, now, report.report_id, report.order_id)
    _log_entries(context, report.events)
    if report.relay is not None:
        observe(context, report.observed_at, report.trigger, report.relay, report.energy)
    return _count("applied")


def _refusal(session: Session, report: RelayReport) -> str | None:
    """``duplicate``, a key of :data:`REFUSED`, or None when the report may be applied."""
    if session.get(RelayReportRow, report.report_id) is not None:
        return "duplicate"
    meter = session.get(Meter, report.meter_id)
    if meter is None:
        return "unknown_meter"
    if meter.concentrator_id != report.concentrator_id:
        return "wrong_concentrator"
    if report.order_id is not None:
        order = session.get(Order, report.order_id)
        if order is None or order.meter_id != meter.id:
            return "wrong_order"
    return None


def _log_entries(context: _Context, entries: list[RelayLogEntry]) -> None:
    """Store the entries not stored yet (once per meter and index) and judge each
    switching code as a relay change."""
    known = set(
        context.session.scalars(
            select(RelayEvent.log_index).where(
                RelayEvent.meter_id == context.meter.id,
                RelayEvent.log_index.in_([e.index for e in entries] or [-1]),
            )
        )
    )
    for entry in entries:
        if entry.index in known:
            continue  # read twice (the agent re-read its log): stored once
        row = _event(
            context,
            "log",
            entry.at,
            detail=CODE_NAMES.get(entry.code, f"event code {entry.code}"),
            log_index=entry.index,
            code=entry.code,
        )
        state = STATE_OF_CODE.get(entry.code)
        if state is not None:
            _change(context, entry.at, state, "log", code=entry.code, log_row=row)


def observe(
    context: _Context,
    at: datetime,
    source: str,
    relay: RelayReading,
    energy: EnergyReading | None,
) -> None:
    """One relay (and energy) reading: history, the recorded state, the tamper check."""
    meter = context.meter
    state = state_of_reading(relay)
    wh = energy_wh(energy)
    context.session.add(
        _observation(meter.id, at, source, state, relay, wh, context.report_id, context.order_id)
    )
    if source == "audit" and (meter.audited_at is None or meter.audited_at < at):
        meter.audited_at = at
    _change(context, at, state, source)
    if energy is not None and (meter.relay_state_at is None or meter.relay_state_at <= at):
        meter.energy_kwh = wh / 1000.0 if wh is not None else meter.energy_kwh
    if state == "disconnected" and wh is not None:
        _check_energy(context, at, relay, wh)


def state_of_reading(relay: RelayReading) -> str:
    """The relay's state as a reading shows it. Contacts reported open (output_state
    false) while the control state says connected: the contacts fell open without the
    firmware knowing, and the supply is off whatever the control state says."""
    if relay.output_state is False and relay.control_state == ControlState.CONNECTED:
        return "disconnected"
    return RELAY_OF_STATE[relay.control_state]


def on_result(session: Session, result: OrderResult) -> None:
    """Hook of ``results.apply_result`` (after it set the recorded state): the relay
    read back by an order is an observation too, and a confirmed disconnect sets the
    tamper baseline."""
    meter = session.get(Meter, result.meter_id)
    if meter is None or result.relay is None:
        return
    state = RELAY_OF_STATE[result.relay.control_state]
    wh = energy_wh(result.energy)
    session.add(
        _observation(
            meter.id, result.finished_at, "order", state, result.relay, wh, None, result.order_id
        )
    )
    if meter.relay_state_at != result.finished_at:
        return  # an older reading than what we know: history only
    meter.relay_state_source = "order"
    # a confirmed disconnect: energy from here on is the tamper check's
    meter.disconnect_energy_wh = wh if state == "disconnected" else None


def _observation(
    meter_id: str,
    at: datetime,
    source: str,
    state: str,
    relay: RelayReading,
    wh: float | None,
    report_id: str | None,
    order_id: str | None,
) -> RelayObservation:
    return RelayObservation(
        meter_id=meter_id,
        observed_at=at,
        source=source,
        relay_state=state,
        output_state=relay.output_state,
        control_mode=relay.control_mode,
        energy_wh=wh,
        report_id=report_id,
        order_id=order_id,
    )


def _check_energy(context: _Context, at: datetime, relay: RelayReading, wh: float) -> None:
    meter = context.meter
    if meter.disconnect_energy_wh is None or wh < meter.disconnect_energy_wh:
        meter.disconnect_energy_wh = wh  # the first confirmed reading (or a new register)
        return
    grown = wh - meter.disconnect_energy_wh
    if grown <= context.settings.relay_tamper_threshold_wh:
        return
    welded = relay.output_state is True
    kind = "welded_relay" if welded else "tamper_bypass"
    detail = (
        f"{grown:.0f} Wh registered since the disconnect was confirmed "
        f"(threshold {context.settings.relay_tamper_threshold_wh:.0f} Wh); "
        + (
            "the meter says its contacts are still closed: welded relay"
            if welded
            else "the relay reports open: supply bypassed or tampered with"
        )
    )
    row = _event(context, "energy_after_disconnect", at, detail=detail)
    alarms.raise_alarm(context.session, meter, kind, detail, at, event_id=row.id)


def _change(
    context: _Context,
    at: datetime,
    new: str,
    source: str,
    *,
    code: int | None = None,
    log_row: RelayEvent | None = None,
) -> None:
    meter = context.meter
    if meter.relay_state_at is not None and at < meter.relay_state_at:
        return  # older than what we know: history only
    old = meter.relay_state
    via = f"log code {code} ({CODE_NAMES[code]})" if code is not None else f"{source} read"
    if new == old:
        _record(meter, new, at, source)
        return
    if old == "armed" and code == REMOTE_CONNECTION:
        return  # what arming itself may log; the button is 60/68 or a connected reading
    # before looking for an order: the arm order itself would "explain" the closing
    if old == "armed" and new == "connected" and _button_pressed(context, at, via):
        _record(meter, new, at, source)
        return
    order = _order_behind(context, new, at, code)
    if order is not None:
        if log_row is not None:
            log_row.order_id = order.id
        _record(meter, new, at, source)
        return
    if old == "unknown" and not (new in SUPPLY_OFF and meter.protected_customer):
        _record(meter, new, at, source)  # the first we learn of it: nothing to contradict
        return
    if old in SUPPLY_OFF and new in SUPPLY_OFF:
        # e.g. a local disconnection logged as such, then read as disconnected: the
        # supply was off and still is, nothing opened or closed
        _record(meter, new, at, source)
        return
    _unsolicited(context, at, old, new, via, source)


def _unsolicited(
    context: _Context, at: datetime, old: str, new: str, via: str, source: str
) -> None:
    meter, session = context.meter, context.session
    should_be_off = old == "disconnected" or _last_outcome(context) == "disconnected"
    detail = (
        f"recorded {old}"
        + (f" since {meter.relay_state_at.isoformat()}" if meter.relay_state_at else "")
        + (f" ({meter.relay_state_source})" if meter.relay_state_source else "")
        + f"; the meter says {new} ({via}); no order behind it"
    )
    drift = _event(context, "drift", at, detail=detail, from_state=old, to_state=new)
    metrics.RELAY_DRIFT.labels(to_state=new).inc()
    _record(meter, new, at, source)
    session.add(
        DeviceEventNotification(
            event_id=drift.id, meter_id=meter.id, relay_state=new, at=at, cause=via[:200]
        )
    )
    log.warning("relay drift on meter %s: %s", meter.id, detail)
    if new in SUPPLY_OFF:
        opening = _event(context, incidents.UNEXPLAINED_OPEN, at, detail=detail, from_state=old)
        opening.to_state = new
        if meter.protected_customer:
            alarms.protected_disconnected(
                session,
                meter,
                context.settings,
                at,
                f"protected customer (Ley 21.304) seen disconnected without an order: {detail}",
                opening.id,
                now=context.now,
            )
        incidents.note_unexplained_opening(session, opening, meter, context.settings, context.now)
    elif new == "connected" and should_be_off:
        alarms.raise_alarm(
            session,
            meter,
            "drift_to_connected",
            f"the relay closed on a meter that should be disconnected: {detail}; "
            "no command is sent: a person decides",
            at,
            event_id=drift.id,
        )


def _record(meter: Meter, state: str, at: datetime, source: str) -> None:
    if state != "disconnected":
        meter.disconnect_energy_wh = None  # a new disconnect sets a new baseline
    meter.relay_state = state
    meter.relay_state_at = at
    meter.relay_state_source = source


def _order_behind(context: _Context, new: str, at: datetime, code: int | None) -> Order | None:
    """The order that explains the meter reaching ``new`` at ``at``, if any."""
    session, meter = context.session, context.meter
    actions = ACTIONS_FOR[new]
    if code in REMOTE_CODES and context.order_id is not None:
        order = session.get(Order, context.order_id)
        if order is not None and order.action in actions:
            return order
    since = at - timedelta(seconds=context.settings.relay_order_match_s)
    return session.scalars(
        select(Order)
        .where(
            Order.meter_id == meter.id,
            Order.action.in_(actions),
            or_(
                Order.state.in_([s.value for s in IN_FLIGHT_STATES]),
                Order.finished_at >= since,
            ),
            Order.final_state.is_(None) | Order.final_state.in_(_SWITCHED),
        )
        .order_by(Order.created_at.desc())
    ).first()


def _last_ended(session: Session, meter_id: str) -> Order | None:
    """The meter's latest order that ended after reaching it (a refusal never did)."""
    return session.scalars(
        select(Order)
        .where(
            Order.meter_id == meter_id,
            Order.final_state.is_not(None),
            Order.final_state != OrderState.REJECTED.value,
        )
        .order_by(Order.finished_at.desc().nulls_last(), Order.created_at.desc())
    ).first()


def _last_outcome(context: _Context) -> str | None:
    order = _last_ended(context.session, context.meter.id)
    return order.outcome if order is not None else None


def _button_pressed(context: _Context, at: datetime, via: str) -> bool:
    """The meter's latest order ended armed: it ends connected now (Legacy told)."""
    session = context.session
    order = _last_ended(session, context.meter.id)
    if order is None or order.final_state != OrderState.COMPLETED_ARMED.value:
        return False
    actor = f"meter:{context.meter.id}"
    detail = f"the customer pressed the button: the meter is connected ({via})"
    order.finished_at = None  # set again by the final transition
    advance(session, order, Event.CUSTOMER_CONNECTED, actor, detail, at=max(at, order.updated_at))
    order.finished_at = at
    press = _event(context, "button_press", at, detail=detail, from_state="armed")
    press.to_state, press.order_id = "connected", order.id
    log.info("order %s: %s", order.id, detail)
    return True


def _event(
    context: _Context,
    kind: str,
    at: datetime,
    *,
    detail: str = "",
    log_index: int | None = None,
    code: int | None = None,
    from_state: str | None = None,
    to_state: str | None = None,
) -> RelayEvent:
    row = RelayEvent(
        meter_id=context.meter.id,
        concentrator_id=context.meter.concentrator_id,
        at=at,
        kind=kind,
        log_index=log_index,
        code=code,
        from_state=from_state,
        to_state=to_state,
        report_id=context.report_id,
        firmware_version=context.meter.firmware_version,
        detail=detail,
    )
    context.session.add(row)
    context.session.flush()
    return row


def _summary(report: RelayReport) -> str:
    parts = [f"{report.trigger}", f"{len(report.events)} log entries"]
    if report.relay is not None:
        parts.append(f"relay {state_of_reading(report.relay)}")
    if report.energy is not None:
        parts.append(f"energy {report.energy.value} {report.energy.unit}")
    return "; ".join(parts)


def _count(effect: str) -> str:
    metrics.RELAY_REPORTS.labels(effect=effect).inc()
    return effect
