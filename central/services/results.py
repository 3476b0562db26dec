"""Steps 5-8: receipts and results from agents, concentrator status, relay reconciliation.

A receipt (:class:`OrderReceipt`: the agent stored the order) moves a dispatched
order to ``delivered`` (step 5); a copy, or a receipt that arrives after the order
moved on, changes nothing.

Results are idempotent on ``order_id``: a result delivered twice (QoS 1) changes
nothing the second time. The first copy writes one timeline event per DLMS attempt
it lists, then the final transition. The rule for the step of an attempt event:

* every attempt but the last failed and was retried: step 7 (``attempt_retried``,
  "on KO, retry");
* the last attempt is the meter's answer the outcome rests on: step 6
  (``attempt``), whether it succeeded or failed.

A result for an order that already ended (e.g. expired) is kept once as a late
result (its attempts are recorded too) and still reconciles the meter's relay
state, because it is the field's truth. When the order had ended ``expired`` or
``failed`` without the agent's answer and the late result says the relay switched,
it corrects the record (:func:`_correct`): the final outcome becomes what the meter
did, the timeline says "corrected by a late result", Legacy is told again (same
CorrelationID, the new outcome's MessageID) and the open field work order is
cancelled.

An ``OrderResult`` with outcome ``rejected`` (what agents before issue 11 sent for a
command they refused, with ids read from the refused body) ends no order: it is kept
as a rejected message by the coordinator. Refusals now come as ``RefusalReport``.

A meter moved to another concentrator while its order was in flight: when the old
agent answers ``not_in_concentrator_table`` (it got the new meter table first, so it
never touched the meter), the order goes back to ``validated`` on the new concentrator
and is dispatched there, instead of ending in a field work order. One the operator
asked to cancel ends cancelled instead.
"""

from __future__ import annotations

import logging
from datetime import datetime

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from central import metrics
from central.models import Concentrator, LegacyNotification, Meter, Order
from central.services import relay_state
from central.services.lifecycle import advance, cancel_work_order, note, utcnow
from central.state import (
    CORRECTABLE_STATES,
    ENDED_STATES,
    FINAL_STATES,
    IN_FLIGHT_STATES,
    Event,
    OrderState,
)
from shared.codes import ControlState, Outcome, ReasonCode
from shared.contracts import Attempt, ConcentratorStatus, OrderReceipt, OrderResult, to_builtins

log = logging.getLogger(__name__)

_EVENT_OF: dict[Outcome, Event] = {
    Outcome.CONNECTED: Event.COMPLETE_CONNECTED,
    Outcome.DISCONNECTED: Event.COMPLETE_DISCONNECTED,
    Outcome.ARMED: Event.COMPLETE_ARMED,
    Outcome.FAILED: Event.FAIL,
    Outcome.EXPIRED: Event.EXPIRE,
    Outcome.CANCELLED: Event.CANCEL,
}
_CORRECTION_OF: dict[Outcome, Event] = {
    Outcome.CONNECTED: Event.CORRECT_CONNECTED,
    Outcome.DISCONNECTED: Event.CORRECT_DISCONNECTED,
    Outcome.ARMED: Event.CORRECT_ARMED,
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
    if result.outcome is Outcome.REJECTED:
        # an old agent's refusal: its ids came from a message it could not verify
        return _count("refused_outcome")
    actor = f"agent:{result.concentrator_id}"
    new_home = _concentrator_it_moved_to(session, order, result)
    if new_home is not None:
        return _reroute(session, order, result, new_home, actor, now)
    order.result_json = to_builtins(result)
    order.attempts = len(result.attempts)
    order.already_in_state = result.already_in_state
    if result.energy is not None:
        order.energy_value = result.energy.value
        order.energy_unit = result.energy.unit
        order.energy_read_at = result.energy.read_at
    relay = _reconcile_meter(session, result)
    relay_state.on_result(session, result)  # history and the tamper baseline (issue 16)
    state = OrderState(order.state)
    summary = _summary(result, relay)
    if state in ENDED_STATES or state is OrderState.VALIDATED:
        _record_attempts(session, order, result.attempts, actor)
        ended_as = _ended_as(session, order)
        if result.outcome in _CORRECTION_OF and ended_as in CORRECTABLE_STATES:
            return _correct(session, order, result, ended_as, summary, actor, now)
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
    _record_attempts(session, order, result.attempts, actor)
    advance(session, order, _EVENT_OF[result.outcome], actor, summary, at=now)
    order.finished_at = result.finished_at
    return _count("applied")


def _ended_as(session: Session, order: Order) -> OrderState | None:
    """The final state the order ended in (for a reported one, the state Legacy was told)."""
    state = OrderState(order.state)
    if state is not OrderState.REPORTED:
        return state if state in FINAL_STATES else None
    row = session.scalars(
        select(LegacyNotification).where(LegacyNotification.order_id == order.id)
    ).first()
    return OrderState(row.final_state) if row is not None else None


def _correct(
    session: Session,
    order: Order,
    result: OrderResult,
    ended_as: OrderState,
    summary: str,
    actor: str,
    now: datetime,
) -> str:
    """A late result says the relay switched: the record becomes what the meter did."""
    why = f"corrected by a late result: the order had ended {ended_as.value}, the meter says {summary}"
    order.result_reason = None
    order.result_detail = result.detail or None
    order.finished_at = None  # set again by the final transition
    advance(session, order, _CORRECTION_OF[result.outcome], actor, why, at=now)
    order.finished_at = result.finished_at
    cancel_work_order(
        session,
        order,
        actor,
        f"corrected by a late result: the relay is {result.outcome.value}",
        now,
    )
    log.warning("order %s %s", order.id, why)
    return _count("corrected")


def _concentrator_it_moved_to(session: Session, order: Order, result: OrderResult) -> str | None:
    """The meter's concentrator now, when the old agent no longer has the meter and the
    registry has it elsewhere; None otherwise."""
    if result.reason is not ReasonCode.NOT_IN_CONCENTRATOR_TABLE:
        return None
    if OrderState(order.state) not in IN_FLIGHT_STATES:
        return None
    meter = session.get(Meter, order.meter_id)
    if meter is None or meter.concentrator_id in (None, order.concentrator_id):
        return None
    return meter.concentrator_id


def _reroute(
    session: Session, order: Order, result: OrderResult, new: str, actor: str, now: datetime
) -> str:
    old = order.concentrator_id
    _record_attempts(session, order, result.attempts, actor)
    if order.cancel_requested:
        # the order ends here on the old concentrator: its answer is stored, so that a
        # copy of it (QoS 1) is a duplicate, as for any result
        order.result_json = to_builtins(result)
        order.attempts = len(result.attempts)
        order.result_reason = ReasonCode.CANCELLED.value
        order.result_detail = f"cancel requested; {old} never had the meter (moved to {new})"
        advance(session, order, Event.CANCEL, actor, order.result_detail, at=now)
        order.finished_at = result.finished_at
        return _count("applied")
    advance(
        session,
        order,
        Event.REROUTE,
        actor,
        f"meter moved from concentrator {old} to {new}; {old} answered "
        f"{result.reason.value if result.reason else ''} without switching: "
        f"to be dispatched to {new}",
        at=now,
    )
    order.concentrator_id = new
    order.command_id = None
    order.dispatched_at = None
    order.published_at = None
    return _count("rerouted")


def apply_receipt(session: Session, receipt: OrderReceipt, *, now: datetime | None = None) -> str:
    """Apply one delivery receipt (step 5); returns ``delivered``, ``duplicate`` (the
    order is already delivered or ended: nothing changes), ``unknown_order`` or
    ``wrong_concentrator``. Does not commit."""
    now = now or utcnow()
    order = session.get(Order, receipt.order_id)
    if order is None:
        log.warning("receipt for unknown order %s", receipt.order_id)
        return _count_receipt("unknown_order")
    if order.concentrator_id != receipt.concentrator_id or order.meter_id != receipt.meter_id:
        log.warning("receipt for order %s from the wrong concentrator/meter", receipt.order_id)
        return _count_receipt("wrong_concentrator")
    if OrderState(order.state) is not OrderState.DISPATCHED:
        return _count_receipt("duplicate")
    advance(
        session,
        order,
        Event.DELIVER,
        f"agent:{receipt.concentrator_id}",
        f"stored by the agent at {receipt.received_at.isoformat()}, "
        f"queue depth {receipt.queue_depth} (command {receipt.command_id})",
        at=receipt.received_at if receipt.received_at <= now else now,
    )
    return _count_receipt("delivered")


def apply_agent_message(
    session: Session, message: OrderResult | OrderReceipt, *, now: datetime | None = None
) -> str:
    """A message from the result topic: a receipt or a result. Does not commit.
    (A ``RefusalReport`` goes to ``services.rejected.record_refusal``.)"""
    if isinstance(message, OrderReceipt):
        return apply_receipt(session, message, now=now)
    return apply_result(session, message, now=now)


def _record_attempts(session: Session, order: Order, attempts: list[Attempt], actor: str) -> None:
    """One timeline event per DLMS attempt (rule in the module docstring)."""
    last = len(attempts) - 1
    for index, attempt in enumerate(attempts):
        outcome = attempt.error.value if attempt.error is not None else "ok"
        detail = f"attempt {attempt.number}: {outcome}"
        if attempt.detail:
            detail += f" {attempt.detail}"
        retried = index < last
        note(
            session,
            order,
            "attempt_retried" if retried else "attempt",
            actor,
            detail,
            step=7 if retried else 6,
            at=attempt.finished_at,
        )


def _count_receipt(effect: str) -> str:
    metrics.RECEIPTS.labels(effect=effect).inc()
    return effect


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


def apply_status(
    session: Session, status: ConcentratorStatus, *, now: datetime | None = None
) -> bool:
    """Record a concentrator's status (online/offline, queue depth); older ones are ignored."""
    row = session.get(Concentrator, status.concentrator_id)
    if row is None:
        log.warning("status from unregistered concentrator %s", status.concentrator_id)
        return False
    if row.status_at is not None and row.status_at > status.at:
        return False
    if status.online and not row.online:
        # back online: whatever it has not acknowledged goes again at the next pass (the
        # broker may have lost it while the agent was away), not after a long backoff
        session.execute(
            update(Order)
            .where(
                Order.concentrator_id == row.id,
                Order.state == OrderState.DISPATCHED.value,
                Order.resend_at.is_not(None),
            )
            .values(resend_at=now or utcnow()),
            execution_options={"synchronize_session": False},
        )
    row.online = status.online
    row.status_at = status.at
    row.queue_depth = status.queue_depth
    row.outbox_depth = status.outbox_depth
    row.modem = status.modem.value
    row.sim = status.sim.value
    row.signal_dbm = status.signal_dbm
    row.agent_version = status.agent_version
    row.agent_table_generation = status.meter_table_generation
    row.audit_airtime = dict(status.audit_airtime) or None
    return True
