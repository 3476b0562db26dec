"""Orders: read, list, cancel, approve, report; creating them (``create_orders``, one or
a batch) is central/services/intake.py, re-exported here.

Step 9 hook: when an order ends, :func:`central.services.lifecycle.on_order_finished`
(re-exported here) writes a ``legacy_notifications`` row in the same transaction.
The notifier reads :func:`pending_notifications` and calls :func:`mark_reported`.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, selectinload

from central.db import changed_meanwhile, stale_to_conflict, where_given
from central.errors import BadRequest, Conflict, InvalidTransition, NotFound, PermissionDenied
from central.models import Batch, LegacyNotification, Meter, Order
from central.services.intake import (
    CHANNEL_FIELDS,
    BatchOutcome,
    Channel,
    ItemResult,
    OrderRequest,
    create_orders,
)
from central.services.lifecycle import (
    Actor,
    advance,
    note,
    on_order_finished,
    request_cancel,
    utcnow,
)
from central.state import (
    ACTIVE_STATES,
    ENDED_STATES,
    FINAL_STATE_OF,
    FINAL_STATES,
    IN_FLIGHT_STATES,
    Event,
    OrderState,
)
from shared.codes import Action

__all__ = [
    "CHANNEL_FIELDS",
    "BatchOutcome",
    "Channel",
    "ItemResult",
    "OrderRequest",
    "approve_batch",
    "approve_order",
    "cancel_and_commit",
    "cancel_order",
    "create_orders",
    "get_order",
    "list_orders",
    "mark_reported",
    "on_order_finished",
    "pending_notifications",
    "stop_protected_disconnects",
]

_FINAL = frozenset(s.value for s in FINAL_STATES)
# never sent to an agent: a cancel ends them here at once
_NOT_SENT = (OrderState.RECEIVED, OrderState.VALIDATED, OrderState.QUARANTINED)
_DISCONNECT = Action.DISCONNECT.value


def get_order(session: Session, order_id: str, *, with_events: bool = True) -> Order:
    query = select(Order).where(Order.id == order_id)
    if with_events:
        query = query.options(selectinload(Order.events))
    order = session.scalars(query).first()
    if order is None:
        raise NotFound(f"order {order_id} does not exist")
    return order


def list_orders(
    session: Session,
    *,
    state: str | None = None,
    outcome: str | None = None,
    meter_id: str | None = None,
    concentrator_id: str | None = None,
    action: str | None = None,
    batch_id: str | None = None,
    external_ref: str | None = None,
    since: datetime | None = None,
    limit: int = 100,
    offset: int = 0,
) -> list[Order]:
    """Newest first. ``state`` of a final state also finds the orders that ended in it
    and were then reported to Legacy; ``outcome`` (connected, ..., rejected) likewise."""
    query = select(Order)
    if state and state in _FINAL:
        query = query.where((Order.state == state) | (Order.final_state == state))
    elif state:
        query = query.where(Order.state == state)
    if outcome:
        query = query.where(Order.final_state == FINAL_STATE_OF[outcome].value)
    query = where_given(
        query,
        (Order.meter_id, meter_id),
        (Order.concentrator_id, concentrator_id),
        (Order.action, action),
        (Order.batch_id, batch_id),
        (Order.external_ref, external_ref),
    )
    if since:
        query = query.where(Order.created_at >= since)
    # Orders created together (a batch) come by meter, not by their random ids.
    query = query.order_by(Order.created_at.desc(), Order.meter_id, Order.id)
    query = query.limit(min(limit, 1000)).offset(offset)
    return list(session.scalars(query))


def cancel_order(
    session: Session, order_id: str, actor: Actor, *, now: datetime | None = None, detail: str = ""
) -> Order:
    """Cancel now if not yet dispatched; if in flight, ask the agent (the result ends it).
    An ended order raises ``InvalidTransition``."""
    now = now or utcnow()
    order = get_order(session, order_id, with_events=False)
    state = OrderState(order.state)
    text = detail or f"cancelled by {actor.name}"
    # Compare-and-set (``Order.__mapper_args__``): if the dispatcher claimed the order
    # after it was read here, the cancel must not overwrite ``dispatched`` (the agent
    # would execute an order the coordinator believes cancelled): Conflict, retry (the
    # retry finds it in flight and asks the agent to cancel; ``cancel_and_commit``).
    with stale_to_conflict(session, f"order {order_id} not cancelled"):
        if state in _NOT_SENT:
            order.result_reason = "cancelled"
            advance(session, order, Event.CANCEL, actor, text, at=now)
        elif state in IN_FLIGHT_STATES:
            detail = text + "; cancel sent to the agent"
            if not order.cancel_requested and not request_cancel(
                session, order, actor, detail, step=2, at=now
            ):  # it ended meanwhile: decided again on a fresh read (cancel_and_commit)
                raise changed_meanwhile(session, f"order {order_id} not cancelled")
        else:
            raise InvalidTransition(Event.CANCEL.value, state.value)
        session.flush()
    return order


def cancel_and_commit(
    session: Session, order_id: str, actor: Actor, *, detail: str = "", tries: int = 3
) -> Order:
    """:func:`cancel_order`, committed. The session must hold nothing else uncommitted: a
    cancel that lost a race with the dispatcher (it claimed the order after it was read
    here) is rolled back and decided again on a fresh read, where it finds the order in
    flight and asks the agent. An ended order raises ``InvalidTransition`` at once;
    ``Conflict`` only if the order kept changing."""
    for attempt in range(1, tries + 1):
        try:
            order = cancel_order(session, order_id, actor, detail=detail)
            session.commit()
            return order
        except InvalidTransition:
            raise  # ended: the same answer on any read
        except Conflict:
            if attempt == tries:
                raise
    raise AssertionError("unreachable")


def stop_protected_disconnects(
    session: Session,
    meter_ids: Sequence[str] | None = None,
    *,
    now: datetime | None = None,
) -> int:
    """Ley 21.304: end every active disconnect of a meter flagged ``protected_customer``
    (of ``meter_ids``, or of the whole fleet): one not yet sent is cancelled, one in flight
    gets a cancel sent to the agent, and so does one that ended here without the agent's
    result while an agent may still hold it (whatever the state, until its deadline).
    Called when a meter is flagged and before every dispatch pass, so a meter protected
    after its disconnect was accepted is never cut. Returns how many orders it touched.
    Does not commit.

    The fleet-wide check starts from the protected meters (a partial index: few meters
    are flagged), not from the active orders: before every claim of a large batch, a
    join from the orders side read every active order (64 ms per pass at 20,000)."""
    now = now or utcnow()
    ids = (
        list(session.scalars(select(Meter.id).where(Meter.protected_customer.is_(True))))
        if meter_ids is None
        else list(meter_ids)
    )
    touched = 0
    for start in range(0, len(ids), _PROTECTED_CHUNK):
        touched += _stop_protected(session, ids[start : start + _PROTECTED_CHUNK], now)
    return touched


# meter ids per query: well under any driver's bound-parameter limit
_PROTECTED_CHUNK = 1000


def _stop_protected(session: Session, meter_ids: list[str], now: datetime) -> int:
    """:func:`stop_protected_disconnects` for some meters (still flagged: checked here)."""
    base = (
        select(Order)
        .join(Meter, Meter.id == Order.meter_id)
        .where(
            Meter.protected_customer.is_(True),
            Order.action == _DISCONNECT,
            Order.meter_id.in_(meter_ids),
        )
    )
    query = base.where(Order.state.in_([s.value for s in ACTIVE_STATES]))
    touched = 0
    detail = "meter supplies a registered electro-dependent patient (Ley 21.304)"
    with stale_to_conflict(session, "protected customer's disconnect not stopped"):
        for order in list(session.scalars(query)):  # read whole: the loop writes
            state = OrderState(order.state)
            if state in _NOT_SENT:
                order.result_reason = "cancelled"
                order.result_detail = detail
                advance(session, order, Event.CANCEL, "central", f"cancelled: {detail}", at=now)
                touched += 1
            elif state in IN_FLIGHT_STATES and not order.cancel_requested:
                # one that ended meanwhile is found by _cancel_held_elsewhere next pass
                why = f"{detail}; cancel sent to the agent"
                touched += request_cancel(session, order, "central", why, step=3, at=now)
        touched += _cancel_held_elsewhere(session, base, detail, now)
        session.flush()
    return touched


def _cancel_held_elsewhere(session: Session, query: Any, detail: str, now: datetime) -> int:
    """Disconnects that ended here (expired, failed) without the agent's result, before
    their deadline: the agent may still hold one and switch it. Each gets a cancel, sent
    until the agent's result says it no longer holds it (``dispatch.send_cancels``)."""
    ended = query.where(
        Order.state.in_([s.value for s in ENDED_STATES]),
        Order.command_id.is_not(None),
        Order.cancel_requested.is_(False),
        Order.deadline > now,
    )
    touched = 0
    for order in list(session.scalars(ended)):  # read whole: the loop writes
        if order.result_json is not None:
            continue  # the agent answered: it holds nothing
        why = (
            f"{detail}; ended here as {order.state} without the agent's result, which may "
            "still hold it: cancel sent to the agent"
        )
        touched += request_cancel(
            session, order, "central", why, step=3, at=now, while_in=ENDED_STATES
        )
    return touched


# Channels that prefix the caller's name (the SOAP gateway records "soap:<name>"); the
# REST API and SOAP share one token table, so "soap:ana" and "ana" are the same person.
_CHANNEL_PREFIXES = ("soap:",)


def _person(name: str) -> str:
    """The person behind an actor name, whatever channel she used."""
    for prefix in _CHANNEL_PREFIXES:
        if name.startswith(prefix):
            return name[len(prefix) :]
    return name


def approve_batch(
    session: Session, batch_id: str, actor: Actor, *, now: datetime | None = None
) -> Batch:
    """Second-person approval of a mass disconnect (role approver, not the requester)."""
    now = now or utcnow()
    if not actor.at_least("approver"):
        raise PermissionDenied(f"{actor.name} ({actor.role}) may not approve batches")
    batch = session.get(Batch, batch_id)
    if batch is None:
        raise NotFound(f"batch {batch_id} does not exist")
    if _person(batch.created_by) == _person(actor.name):
        raise PermissionDenied("the approver must be a different person from the requester")
    if batch.approved_by is None:
        batch.approved_by = actor.name
        batch.approved_at = now
        for order in session.scalars(
            select(Order).where(Order.batch_id == batch_id, Order.needs_approval)
        ):
            order.approved_by = actor.name
            note(
                session, order, "approved", actor, f"batch approved by {actor.name}", step=3, at=now
            )
    with stale_to_conflict(session, f"batch {batch_id} not approved"):
        session.flush()
    return batch


def approve_order(
    session: Session, order_id: str, actor: Actor, *, now: datetime | None = None
) -> Batch:
    """Approve the batch that holds this order."""
    order = get_order(session, order_id, with_events=False)
    if order.batch_id is None or not order.needs_approval:
        raise BadRequest(f"order {order_id} does not need approval")
    return approve_batch(session, order.batch_id, actor, now=now)


def pending_notifications(
    session: Session, *, limit: int = 100, now: datetime | None = None
) -> list[LegacyNotification]:
    """Outbox rows not yet delivered to Legacy whose next attempt is due (oldest first)."""
    now = now or utcnow()
    query = (
        select(LegacyNotification)
        .where(LegacyNotification.delivered_at.is_(None))
        .where(
            (LegacyNotification.next_attempt_at.is_(None))
            | (LegacyNotification.next_attempt_at <= now)
        )
        .order_by(LegacyNotification.id)
        .limit(limit)
    )
    return list(session.scalars(query))


def mark_reported(
    session: Session,
    order_id: str,
    actor: Actor | str,
    detail: str = "",
    *,
    now: datetime | None = None,
) -> Order:
    """Legacy acknowledged the result: outbox row delivered, order ``reported`` (step 9)."""
    now = now or utcnow()
    order = get_order(session, order_id, with_events=False)
    if order.state != OrderState.REPORTED:
        advance(
            session, order, Event.REPORT, actor, detail or "result acknowledged by Legacy", at=now
        )
    row = session.scalars(
        select(LegacyNotification).where(LegacyNotification.order_id == order_id)
    ).first()
    if row is not None and row.delivered_at is None:
        row.delivered_at = now
    with stale_to_conflict(session, f"order {order_id} not marked reported"):
        session.flush()
    return order
