"""Orders: create (one or a batch), read, list, cancel, approve, report.

``create_orders`` answers per item (accepted or refused, with a reason code and
message) so that the SOAP gateway can build OK / PARTIAL / FAILED replies, and
records every order, refused ones included, with its timeline.

Step 9 hook: when an order ends, :func:`central.services.lifecycle.on_order_finished`
(re-exported here) writes a ``legacy_notifications`` row in the same transaction.
The notifier reads :func:`pending_notifications` and calls :func:`mark_reported`.
"""

from __future__ import annotations

import uuid
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TypeVar

from pydantic import BaseModel, Field
from sqlalchemy import Select, select
from sqlalchemy.orm import Session, selectinload

from central.errors import BadRequest, InvalidTransition, NotFound, PermissionDenied
from central.models import Batch, Concentrator, LegacyNotification, Meter, Order, OrderEvent
from central.services import validation
from central.services.lifecycle import Actor, advance, note, on_order_finished, utcnow
from central.settings import Settings
from central.state import ACTIVE_STATES, IN_FLIGHT_STATES, Event, OrderState
from shared.contracts import Action, OrderReason

__all__ = [
    "BatchOutcome",
    "ItemResult",
    "OrderRequest",
    "approve_batch",
    "approve_order",
    "cancel_order",
    "create_orders",
    "get_order",
    "list_orders",
    "mark_reported",
    "on_order_finished",
    "pending_notifications",
]

_CHUNK = 500


class OrderRequest(BaseModel):
    """One order as a caller asks for it (REST body item, or mapped from CIM)."""

    meter_id: str = Field(min_length=1, max_length=64)
    action: Action
    reason: OrderReason
    special: bool = False  # allowed outside Chilean working days
    priority: int | None = Field(default=None, ge=0, le=9)
    idempotency_key: str | None = Field(default=None, max_length=200)
    external_ref: str | None = Field(default=None, max_length=200)  # e.g. issuerTrackingID
    issuer_id: str | None = Field(default=None, max_length=200)
    not_before: datetime | None = None
    deadline: datetime | None = None  # overrides the configured activity duration
    correlation_id: str | None = Field(default=None, max_length=200)
    reply_address: str | None = Field(default=None, max_length=500)
    source: str = Field(default="rest", max_length=16)


@dataclass
class ItemResult:
    index: int
    meter_id: str
    accepted: bool
    order_id: str | None
    state: str | None
    code: str | None = None  # refusal code (validation.RefusalCode) when refused
    message: str = ""
    duplicate: bool = False  # the same request was already known: existing order returned
    needs_approval: bool = False


@dataclass
class BatchOutcome:
    batch_id: str | None
    needs_approval: bool
    items: list[ItemResult] = field(default_factory=list)

    @property
    def accepted(self) -> int:
        return sum(1 for item in self.items if item.accepted)

    @property
    def refused(self) -> int:
        return len(self.items) - self.accepted


def new_id() -> str:
    return uuid.uuid4().hex


def _chunks(values: Sequence[str]) -> Iterable[Sequence[str]]:
    for start in range(0, len(values), _CHUNK):
        yield values[start : start + _CHUNK]


_Row = TypeVar("_Row", Meter, Concentrator)


def _load_by_id(session: Session, model: type[_Row], ids: Iterable[str]) -> dict[str, _Row]:
    wanted = sorted(set(ids))
    found: dict[str, _Row] = {}
    for chunk in _chunks(wanted):
        for row in session.scalars(select(model).where(model.id.in_(chunk))):
            found[row.id] = row
    return found


def _item_from_existing(index: int, order: Order) -> ItemResult:
    refused = order.state == OrderState.REJECTED or order.refusal_code is not None
    return ItemResult(
        index=index,
        meter_id=order.meter_id,
        accepted=not refused,
        order_id=order.id,
        state=order.state,
        code=order.refusal_code,
        message=order.refusal_detail or "duplicate: the existing order is returned",
        duplicate=True,
        needs_approval=order.needs_approval and order.approved_by is None,
    )


def create_orders(
    session: Session,
    requests: Sequence[OrderRequest],
    actor: Actor,
    settings: Settings,
    *,
    now: datetime | None = None,
) -> BatchOutcome:
    """Validate and store orders (steps 2-3); one result per request, in order.

    Accepted orders end ``validated`` (the dispatcher sends them); refused ones
    end ``rejected`` with ``refusal_code``. Rules: see ``validation.check`` plus
    one active order per meter (a connect/arm supersedes a pending disconnect;
    a disconnect while a connect is active is refused ``meter_busy``) and
    idempotency (same ``idempotency_key``, or the same action already active on
    the meter, returns the existing order with ``duplicate=True``).
    A batch with more disconnects than ``approval_threshold`` waits for a second
    person (role approver) before any of its disconnects is dispatched.
    Does not commit.
    """
    if not requests:
        raise BadRequest("no orders given")
    now = now or utcnow()
    keys = [r.idempotency_key for r in requests if r.idempotency_key]
    by_key: dict[str, Order] = {}
    for chunk in _chunks(sorted(set(keys))):
        for order in session.scalars(select(Order).where(Order.idempotency_key.in_(chunk))):
            assert order.idempotency_key is not None
            by_key[order.idempotency_key] = order
    meters = _load_by_id(session, Meter, (r.meter_id for r in requests))
    concentrators = _load_by_id(
        session, Concentrator, (m.concentrator_id for m in meters.values() if m.concentrator_id)
    )
    active: dict[str, list[Order]] = defaultdict(list)
    for chunk in _chunks(sorted(meters)):
        for order in session.scalars(
            select(Order).where(
                Order.meter_id.in_(chunk), Order.state.in_([s.value for s in ACTIVE_STATES])
            )
        ):
            active[order.meter_id].append(order)

    batch = Batch(id=new_id(), created_by=actor.name, created_at=now, size=len(requests))
    session.add(batch)
    outcome = BatchOutcome(batch_id=batch.id, needs_approval=False)
    accepted_disconnects: list[Order] = []
    received = f"received from {actor.name}"

    for index, request in enumerate(requests):
        key = request.idempotency_key
        if key and key in by_key:
            outcome.items.append(_item_from_existing(index, by_key[key]))
            continue
        meter = meters.get(request.meter_id)
        same = [o for o in active.get(request.meter_id, []) if o.action == request.action.value]
        if same:
            outcome.items.append(_item_from_existing(index, same[0]))
            continue
        concentrator = (
            concentrators.get(meter.concentrator_id) if meter and meter.concentrator_id else None
        )
        refusal = validation.check(
            request.meter_id,
            request.action,
            request.reason,
            request.special,
            meter,
            concentrator,
            settings,
            now,
        )
        others = active.get(request.meter_id, [])
        if refusal is None and request.action is Action.DISCONNECT and others:
            refusal = validation.Refusal(
                validation.RefusalCode.METER_BUSY,
                f"meter {request.meter_id} has an active {others[0].action} order {others[0].id}",
            )
        action = request.action.value
        order = Order(
            id=new_id(),
            idempotency_key=key,
            meter_id=request.meter_id,
            concentrator_id=meter.concentrator_id if meter else None,
            action=action,
            reason=request.reason.value,
            special=request.special,
            priority=request.priority
            if request.priority is not None
            else settings.priority.get(action, 5),
            state=OrderState.RECEIVED.value,
            created_by=actor.name,
            created_at=now,
            updated_at=now,
            deadline=request.deadline or now + timedelta(seconds=settings.deadline_for(action)),
            not_before=request.not_before,
            issuer_id=request.issuer_id,
            max_attempts=settings.retry_for(action).max_attempts,
            batch_id=batch.id,
            source=request.source,
            external_ref=request.external_ref,
            correlation_id=request.correlation_id,
            reply_address=request.reply_address,
        )
        session.add(order)
        session.add(
            OrderEvent(
                order_id=order.id,
                at=now,
                step=2,
                actor=actor.name,
                event="receive",
                from_state=None,
                to_state=OrderState.RECEIVED.value,
                detail=f"{received}: {action} ({request.reason.value}) via {request.source}",
            )
        )
        if refusal is not None:
            order.refusal_code = refusal.code.value
            order.refusal_detail = refusal.message
            advance(
                session,
                order,
                Event.REJECT,
                "central",
                f"{refusal.code}: {refusal.message}",
                at=now,
            )
            outcome.items.append(
                ItemResult(
                    index,
                    request.meter_id,
                    False,
                    order.id,
                    order.state,
                    refusal.code.value,
                    refusal.message,
                )
            )
        else:
            for other in others:  # connect/arm supersedes a pending disconnect
                _supersede(session, other, order, now)
            advance(session, order, Event.VALIDATE, "central", "all checks passed", at=now)
            if request.action is Action.DISCONNECT:
                accepted_disconnects.append(order)
            outcome.items.append(
                ItemResult(index, request.meter_id, True, order.id, order.state, None, "accepted")
            )
            active[request.meter_id] = [*others, order]
        if key:
            by_key[key] = order

    batch.disconnects = len(accepted_disconnects)
    if len(accepted_disconnects) > settings.approval_threshold:
        batch.needs_approval = True
        outcome.needs_approval = True
        held = {o.id for o in accepted_disconnects}
        for order in accepted_disconnects:
            order.needs_approval = True
            note(
                session,
                order,
                "approval_required",
                "central",
                f"batch {batch.id} holds {len(accepted_disconnects)} disconnects, over the "
                f"threshold of {settings.approval_threshold}: a second person must approve",
                step=3,
                at=now,
            )
        for item in outcome.items:
            if item.order_id in held:
                item.needs_approval = True
    session.flush()
    return outcome


def _supersede(session: Session, old: Order, new: Order, now: datetime) -> None:
    if old.action != Action.DISCONNECT.value:
        return
    old.superseded_by = new.id
    if OrderState(old.state) in IN_FLIGHT_STATES:
        old.cancel_requested = True
        note(
            session,
            old,
            "cancel_requested",
            "central",
            f"superseded by {new.action} order {new.id}; cancel sent to the agent",
            step=2,
            at=now,
        )
    else:
        old.result_reason = "cancelled"
        advance(
            session,
            old,
            Event.CANCEL,
            "central",
            f"superseded by {new.action} order {new.id}",
            at=now,
        )


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
    meter_id: str | None = None,
    concentrator_id: str | None = None,
    action: str | None = None,
    batch_id: str | None = None,
    external_ref: str | None = None,
    since: datetime | None = None,
    limit: int = 100,
    offset: int = 0,
) -> list[Order]:
    query: Select[tuple[Order]] = select(Order)
    if state:
        query = query.where(Order.state == state)
    if meter_id:
        query = query.where(Order.meter_id == meter_id)
    if concentrator_id:
        query = query.where(Order.concentrator_id == concentrator_id)
    if action:
        query = query.where(Order.action == action)
    if batch_id:
        query = query.where(Order.batch_id == batch_id)
    if external_ref:
        query = query.where(Order.external_ref == external_ref)
    if since:
        query = query.where(Order.created_at >= since)
    query = query.order_by(Order.created_at.desc(), Order.id).limit(min(limit, 1000)).offset(offset)
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
    if state in (OrderState.RECEIVED, OrderState.VALIDATED):
        order.result_reason = "cancelled"
        advance(session, order, Event.CANCEL, actor, text, at=now)
    elif state in IN_FLIGHT_STATES:
        if not order.cancel_requested:
            order.cancel_requested = True
            note(
                session,
                order,
                "cancel_requested",
                actor,
                text + "; cancel sent to the agent",
                step=2,
                at=now,
            )
    else:
        raise InvalidTransition(Event.CANCEL.value, state.value)
    session.flush()
    return order


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
    if batch.created_by == actor.name:
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
    session.flush()
    return order
