"""Steps 7-8: results from agents, concentrator status, relay reconciliation.

Idempotent on ``order_id``: a result delivered twice (QoS 1) changes nothing the
second time. A result for an order that already ended (e.g. expired) is kept
once as a late result and still reconciles the meter's relay state, because it
is the field's truth.
"""

from __future__ import annotations

import logging
from datetime import datetime

from sqlalchemy.orm import Session

from central import metrics
from central.models import Concentrator, Meter, Order
from central.services.lifecycle import advance, note, utcnow
from central.state import ENDED_STATES, Event, OrderState
from shared.contracts import ConcentratorStatus, ControlState, OrderResult, Outcome

log = logging.getLogger(__name__)

_EVENT_OF: dict[Outcome, Event] = {
    Outcome.CONNECTED: Event.COMPLETE_CONNECTED,
    Outcome.DISCONNECTED: Event.COMPLETE_DISCONNECTED,
    Outcome.ARMED: Event.COMPLETE_ARMED,
    Outcome.FAILED: Event.FAIL,
    Outcome.EXPIRED: Event.EXPIRE,
    Outcome.CANCELLED: Event.CANCEL,
    Outcome.REJECTED: Event.FAIL,  # the agent refused the command (signature, table...)
}
_RELAY_OF_STATE = {
    ControlState.DISCONNECTED: "disconnected",
    ControlState.CONNECTED: "connected",
    ControlState.READY_FOR_RECONNECTION: "armed",
}
_RELAY_OF_OUTCOME = {
    Outcome.CONNECTED: "connected",
    Outcome.DISCONNECTED: "disconnected",
    Outcome.ARMED: "armed",
}


def _reconcile_meter(session: Session, result: OrderResult) -> str | None:
    meter = session.get(Meter, result.meter_id)
    if meter is None:
        return None
    state: str | None = None
    if result.relay is not None:
        state = _RELAY_OF_STATE[result.relay.control_state]
    elif result.outcome in _RELAY_OF_OUTCOME:
        state = _RELAY_OF_OUTCOME[result.outcome]
    if state is not None and (
        meter.relay_state_at is None or meter.relay_state_at <= result.finished_at
    ):
        meter.relay_state = state
        meter.relay_state_at = result.finished_at
    if result.energy is not None:
        meter.energy_kwh = result.energy.value
    return state


def apply_result(session: Session, result: OrderResult, *, now: datetime | None = None) -> str:
    """Apply one result; returns what happened: ``applied``, ``duplicate``, ``late``,
    ``unknown_order`` or ``wrong_concentrator``. Does not commit."""
    now = now or utcnow()
    order = session.get(Order, result.order_id)
    if order is None:
        log.warning("result for unknown order %s", result.order_id)
        return _count("unknown_order")
    if order.concentrator_id != result.concentrator_id or order.meter_id != result.meter_id:
        log.warning("result for order %s from the wrong concentrator/meter", result.order_id)
        return _count("wrong_concentrator")
    if order.result_json is not None:
        return _count("duplicate")
    actor = f"agent:{result.concentrator_id}"
    order.result_json = result.model_dump(mode="json")
    order.attempts = len(result.attempts)
    order.already_in_state = result.already_in_state
    if result.energy is not None:
        order.energy_value = result.energy.value
        order.energy_unit = result.energy.unit
        order.energy_read_at = result.energy.read_at
    relay = _reconcile_meter(session, result)
    state = OrderState(order.state)
    summary = _summary(result, relay)
    if state in ENDED_STATES or state is OrderState.VALIDATED:
        note(
            session,
            order,
            "late_result",
            actor,
            f"result after the order ended: {summary}",
            step=8,
            at=now,
        )
        return _count("late")
    order.result_reason = result.reason.value if result.reason else None
    order.result_detail = result.detail or None
    if state is OrderState.DISPATCHED:
        advance(
            session,
            order,
            Event.DELIVER,
            actor,
            "agent stored the order"
            + (f" at {result.received_at.isoformat()}" if result.received_at else ""),
            at=result.received_at if result.received_at and result.received_at <= now else now,
        )
    advance(session, order, _EVENT_OF[result.outcome], actor, summary, at=now)
    order.finished_at = result.finished_at
    return _count("applied")


def _summary(result: OrderResult, relay: str | None) -> str:
    parts = [f"outcome {result.outcome.value}"]
    if result.reason:
        parts.append(f"reason {result.reason.value}")
    if result.detail:
        parts.append(result.detail)
    parts.append(f"{len(result.attempts)} attempt(s)")
    if result.already_in_state:
        parts.append("relay was already in the wanted state")
    if relay:
        parts.append(f"relay {relay}")
    if result.energy is not None:
        parts.append(f"energy {result.energy.value} {result.energy.unit}")
    return "; ".join(parts)


def _count(effect: str) -> str:
    metrics.RESULTS.labels(effect=effect).inc()
    return effect


def apply_status(session: Session, status: ConcentratorStatus) -> bool:
    """Record a concentrator's status (online/offline, queue depth); older ones are ignored."""
    row = session.get(Concentrator, status.concentrator_id)
    if row is None:
        log.warning("status from unregistered concentrator %s", status.concentrator_id)
        return False
    if row.status_at is not None and row.status_at > status.at:
        return False
    row.online = status.online
    row.status_at = status.at
    row.queue_depth = status.queue_depth
    row.outbox_depth = status.outbox_depth
    row.modem = status.modem.value
    row.sim = status.sim.value
    row.signal_dbm = status.signal_dbm
    row.agent_version = status.agent_version
    row.agent_table_generation = status.meter_table_generation
    return True
