"""Orders: create (one or a batch), read, list, cancel, approve, report.

``create_orders`` answers per item (accepted or refused, with a reason code and
message) so that the SOAP gateway can build OK / PARTIAL / FAILED replies, and
records every order, refused ones included, with its timeline.

Step 9 hook: when an order ends, :func:`central.services.lifecycle.on_order_finished`
(re-exported here) writes a ``legacy_notifications`` row in the same transaction.
The notifier reads :func:`pending_notifications` and calls :func:`mark_reported`.
"""

from __future__ import annotations

import os
import threading
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Annotated, Any, Final, cast

from pydantic import AwareDatetime, Field, StringConstraints, model_validator
from pydantic_core import PydanticCustomError
from sqlalchemy import Table, select
from sqlalchemy.orm import Session, selectinload

from central import bulk
from central.db import one_of, stale_to_conflict, where_given
from central.errors import BadRequest, InvalidTransition, NotFound, PermissionDenied
from central.models import Batch, Concentrator, LegacyNotification, Meter, Order, OrderEvent
from central.services import anomaly, approvals, lookup, reconnect_sla, validation
from central.services.inputs import Input
from central.services.lifecycle import Actor, advance, note, on_order_finished, utcnow
from central.settings import Settings
from central.state import (
    ACTIVE_STATES,
    ENDED_STATES,
    FINAL_STATE_OF,
    FINAL_STATES,
    IN_FLIGHT_STATES,
    STEP_OF,
    Event,
    OrderState,
    transition,
)
from shared.contracts import Action, OrderReason

__all__ = [
    "BatchOutcome",
    "Channel",
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
    "stop_protected_disconnects",
]

_CHUNK = 500


# Set by the channel a request came in through, never by its body: a REST caller
# naming them is refused (422), so it cannot pick where results are POSTed nor
# forge the channel in the audit trail.
CHANNEL_FIELDS: Final = ("source", "reply_address")


class OrderRequest(Input):
    """One order as a caller asks for it (REST body item, or mapped from CIM)."""

    meter_id: Annotated[  # spaces around an id are never part of it (registry rule)
        str, StringConstraints(strip_whitespace=True, min_length=1, max_length=64)
    ]
    action: Action
    reason: OrderReason
    special: bool = False  # allowed outside Chilean working days
    priority: int | None = Field(default=None, ge=0, le=9)
    idempotency_key: str | None = Field(default=None, max_length=200)
    external_ref: str | None = Field(default=None, max_length=200)  # e.g. issuerTrackingID
    issuer_id: str | None = Field(default=None, max_length=200)
    not_before: AwareDatetime | None = None
    deadline: AwareDatetime | None = None  # overrides the configured activity duration
    correlation_id: str | None = Field(default=None, max_length=200)

    @model_validator(mode="before")
    @classmethod
    def _no_channel_fields(cls, data: Any) -> Any:
        if isinstance(data, dict):
            for name in CHANNEL_FIELDS:
                if name in data:
                    raise PydanticCustomError(
                        "channel_field",
                        "'{field}' is set by the channel the request came in through, "
                        "not by the caller",
                        {"field": name},
                    )
        return data


@dataclass(frozen=True)
class Channel:
    """How a request came in: ``source`` for the audit trail, and the reply address
    the channel vouched for (the SOAP gateway checks it: central/soap/reply_policy)."""

    source: str = "rest"
    reply_address: str | None = None


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


_RANDOM = bytearray()  # os.urandom read 4 KiB at a time: one system call per 256 ids
_RANDOM_LOCK = threading.Lock()


def _forked() -> None:  # a child never repeats its parent's ids, nor inherits a held lock
    global _RANDOM_LOCK
    _RANDOM_LOCK = threading.Lock()
    _RANDOM.clear()


os.register_at_fork(after_in_child=_forked)


def new_id() -> str:
    """A random (version 4) UUID as 32 hex digits, as ``uuid.uuid4().hex`` but without
    building a ``UUID`` object nor a system call per id (two per order on the hot path)."""
    with _RANDOM_LOCK:
        if len(_RANDOM) < 16:
            _RANDOM.extend(os.urandom(4096))
        raw = _RANDOM[-16:]
        del _RANDOM[-16:]
    raw[6] = (raw[6] & 0x0F) | 0x40
    raw[8] = (raw[8] & 0x3F) | 0x80
    return raw.hex()


def _chunks(values: Sequence[str]) -> Iterable[Sequence[str]]:
    for start in range(0, len(values), _CHUNK):
        yield values[start : start + _CHUNK]


def _load_rows(session: Session, columns: Sequence[Any], ids: Iterable[str]) -> dict[str, Any]:
    """Rows (not ORM objects: cheaper) of ``columns`` by id; the first column is the id."""
    wanted = sorted(set(ids))
    found: dict[str, Any] = {}
    for chunk in _chunks(wanted):
        for row in session.execute(select(*columns).where(one_of(session, columns[0], chunk))):
            found[row[0]] = row
    return found


_METER_COLUMNS = (Meter.id, Meter.concentrator_id, Meter.commissioned, Meter.protected_customer)
_CONCENTRATOR_COLUMNS = (Concentrator.id, Concentrator.decommissioned)


def _item_from_existing(index: int, order: Order | _Pending) -> ItemResult:
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


def _same_request(known: Order | _Pending, request: OrderRequest, actor: Actor) -> bool:
    """May a request carrying ``known``'s idempotency key get ``known`` back? Only the
    same caller asking for the same meter and action."""
    created_by = known.row["created_by"] if isinstance(known, _Pending) else known.created_by
    return (
        created_by == actor.name
        and known.meter_id == request.meter_id
        and known.action == request.action.value
    )


@dataclass(slots=True)
class _Pending:
    """An order being created: written with one bulk INSERT (the hot path of a batch)."""

    id: str
    meter_id: str
    action: str
    state: str
    row: dict[str, Any]
    refusal_code: str | None = None
    refusal_detail: str | None = None
    needs_approval: bool = False
    approved_by: str | None = None


class _Writer:
    """Collects rows of new orders, their timeline events and outbox rows."""

    def __init__(self, now: datetime) -> None:
        self.now = now
        self.orders: list[_Pending] = []
        self.events: list[dict[str, Any]] = []
        self.notifications: list[dict[str, Any]] = []

    def event(
        self,
        order: _Pending,
        event: str,
        actor: str,
        detail: str,
        step: int,
        before: str | None,
        after: str | None,
    ) -> None:
        self.events.append(
            {
                "order_id": order.id,
                "at": self.now,
                "step": step,
                "actor": actor,
                "event": event,
                "from_state": before,
                "to_state": after,
                "detail": detail,
            }
        )

    def advance(self, order: _Pending, event: Event, actor: str, detail: str) -> None:
        before = order.state
        after = transition(before, event).value
        order.state = after
        self.event(order, event.value, actor, detail, STEP_OF[event], before, after)
        if after in _FINAL:
            order.row["final_state"] = after
            order.row["finished_at"] = self.now
            self.notifications.append(
                {"order_id": order.id, "final_state": after, "created_at": self.now}
            )

    def flush(self, session: Session) -> None:
        rows = []
        for pending in self.orders:
            row = pending.row
            row["state"] = pending.state
            row["refusal_code"] = pending.refusal_code
            row["refusal_detail"] = pending.refusal_detail
            row["needs_approval"] = pending.needs_approval
            row.setdefault("final_state", None)
            rows.append(row)
        for start in range(0, len(rows), 2000):
            bulk.insert_rows(session, cast(Table, Order.__table__), rows[start : start + 2000])
        for start in range(0, len(self.events), 2000):
            bulk.insert_rows(
                session, cast(Table, OrderEvent.__table__), self.events[start : start + 2000]
            )
        if self.notifications:
            bulk.insert_rows(session, cast(Table, LegacyNotification.__table__), self.notifications)


_FINAL = frozenset(s.value for s in FINAL_STATES)


def create_orders(
    session: Session,
    requests: Sequence[OrderRequest],
    actor: Actor,
    settings: Settings,
    *,
    now: datetime | None = None,
    channel: Channel = Channel(),
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
    by_key: dict[str, Order | _Pending] = {}
    for chunk in _chunks(sorted(set(keys))):
        for order in session.scalars(select(Order).where(Order.idempotency_key.in_(chunk))):
            assert order.idempotency_key is not None
            by_key[order.idempotency_key] = order
    meters = _load_rows(session, _METER_COLUMNS, (r.meter_id for r in requests))
    concentrators = _load_rows(
        session,
        _CONCENTRATOR_COLUMNS,
        (m.concentrator_id for m in meters.values() if m.concentrator_id),
    )
    active: dict[str, list[Order | _Pending]] = defaultdict(list)
    for chunk in _chunks(sorted(meters)):
        for order in session.scalars(
            select(Order).where(
                Order.meter_id.in_(chunk), Order.state.in_([s.value for s in ACTIVE_STATES])
            )
        ):
            active[order.meter_id].append(order)

    # Nothing is written before the loop: on SQLite the first write takes the database's
    # write lock until the caller commits, so every row (the batch's included) goes out
    # at the end in bulk and the lock is held for the inserts only, not the validation.
    batch_id = new_id()
    batch: dict[str, Any] = {
        "id": batch_id,
        "created_by": actor.name,
        "created_at": now,
        "size": len(requests),
        "disconnects": 0,
        "needs_approval": False,
        "approved_by": None,
        "approved_at": None,
    }
    outcome = BatchOutcome(batch_id=batch_id, needs_approval=False)
    writer = _Writer(now)
    accepted_disconnects: list[_Pending] = []
    received = f"received from {actor.name}"
    per_action = {  # priority, activity duration, attempts: looked up once per batch
        a.value: (
            settings.priority.get(a.value, 5),
            timedelta(seconds=settings.deadline_for(a.value)),
            settings.retry_for(a.value).max_attempts,
        )
        for a in Action
    }

    for index, request in enumerate(requests):
        key = request.idempotency_key or None  # an empty key is no key (it is not unique)
        if key and key in by_key:
            known = by_key[key]
            if _same_request(known, request, actor):
                outcome.items.append(_item_from_existing(index, known))
                continue
            # the key belongs to another caller's (or another meter's) order: never hand
            # that order back; this request is refused (recorded without the key)
            key = None
            reused: validation.Refusal | None = validation.Refusal(
                validation.RefusalCode.INVALID_REQUEST,
                f"idempotency key {request.idempotency_key!r} is already used by another "
                "request (different caller, meter or action)",
            )
        else:
            reused = None
        meter = meters.get(request.meter_id)
        others = active.get(request.meter_id, [])
        action = request.action.value
        same = [o for o in others if o.action == action]
        if same and reused is None:
            outcome.items.append(_item_from_existing(index, same[0]))
            continue
        concentrator = (
            concentrators.get(meter.concentrator_id) if meter and meter.concentrator_id else None
        )
        refusal = reused or validation.check(
            request.meter_id,
            request.action,
            request.reason,
            request.special,
            meter,
            concentrator,
            settings,
            now,
        )
        if refusal is not None and refusal.code is validation.RefusalCode.UNKNOWN_METER:
            refusal = _with_suggestion(session, refusal, request.meter_id)
        if (
            refusal is None
            and request.not_before is not None
            and request.not_before > now
            and action == _DISCONNECT
        ):
            # the day rules apply to the day the relay may first be switched too
            refusal = validation.check(
                request.meter_id,
                request.action,
                request.reason,
                request.special,
                meter,
                concentrator,
                settings,
                request.not_before,
            )
        if refusal is None and request.deadline is not None and request.deadline <= now:
            refusal = validation.Refusal(
                validation.RefusalCode.INVALID_REQUEST,
                f"deadline {request.deadline.isoformat()} has already passed",
            )
        if refusal is None and action == _DISCONNECT and others:
            refusal = validation.Refusal(
                validation.RefusalCode.METER_BUSY,
                f"meter {request.meter_id} has an active {others[0].action} order {others[0].id}",
            )
        reason = request.reason.value
        priority, duration, max_attempts = per_action[action]
        order_id = new_id()
        pending = _Pending(
            id=order_id,
            meter_id=request.meter_id,
            action=action,
            state=_RECEIVED,
            row={
                "id": order_id,
                "idempotency_key": key,
                "meter_id": request.meter_id,
                "concentrator_id": meter.concentrator_id if meter else None,
                "action": action,
                "reason": reason,
                "special": request.special,
                "priority": request.priority if request.priority is not None else priority,
                "created_by": actor.name,
                "created_at": now,
                "updated_at": now,
                "deadline": request.deadline or now + duration,
                "not_before": request.not_before,
                "issuer_id": request.issuer_id,
                "max_attempts": max_attempts,
                "batch_id": batch_id,
                "source": channel.source,
                "external_ref": request.external_ref,
                "correlation_id": request.correlation_id,
                "reply_address": channel.reply_address,
                "finished_at": None,
                "superseded_by": None,
                "result_reason": None,
                "sla_due_at": reconnect_sla.due_at(action, now, settings),
            },
        )
        writer.orders.append(pending)
        writer.event(
            pending,
            "receive",
            actor.name,
            f"{received}: {action} ({reason}) via {channel.source}",
            2,
            None,
            _RECEIVED,
        )
        if refusal is not None:
            pending.refusal_code = refusal.code.value
            pending.refusal_detail = refusal.message
            writer.advance(pending, Event.REJECT, "central", f"{refusal.code}: {refusal.message}")
            outcome.items.append(
                ItemResult(
                    index,
                    request.meter_id,
                    False,
                    order_id,
                    pending.state,
                    refusal.code.value,
                    refusal.message,
                )
            )
        else:
            for other in others:  # connect/arm supersedes a pending disconnect
                if isinstance(other, _Pending):
                    _supersede_pending(writer, other, pending)
                else:
                    _supersede(session, other, pending, now)
            writer.advance(pending, Event.VALIDATE, "central", "all checks passed")
            if action == _DISCONNECT:
                accepted_disconnects.append(pending)
            outcome.items.append(
                ItemResult(index, request.meter_id, True, order_id, pending.state, None, "accepted")
            )
            active[request.meter_id] = [o for o in others if o.state in _ACTIVE] + [pending]
        if key:
            by_key[key] = pending

    batch["disconnects"] = len(accepted_disconnects)
    detail = approvals.hold_reason(
        session,
        settings,
        now,
        batch_id,
        [
            (approvals.switch_time(now, o.row["not_before"]), bool(o.row["special"]))
            for o in accepted_disconnects
        ],
    )
    if detail is not None:
        batch["needs_approval"] = True
        outcome.needs_approval = True
        held = {o.id for o in accepted_disconnects}
        for pending in accepted_disconnects:
            pending.needs_approval = True
            writer.event(
                pending, "approval_required", "central", detail, 3, pending.state, pending.state
            )
        for item in outcome.items:
            if item.order_id in held:
                item.needs_approval = True
    # issue 17: disconnects over a scope's limits wait in quarantine for a second person
    quarantined = anomaly.screen(session, settings, now, accepted_disconnects, writer.advance)
    for item in outcome.items:
        if item.order_id in quarantined:
            item.state = OrderState.QUARANTINED.value
    # the batch first (orders refer to it), then orders and events, then ORM changes
    # (superseded orders refer to the new ones)
    bulk.insert_rows(session, cast(Table, Batch.__table__), [batch])
    writer.flush(session)
    with stale_to_conflict(session, "orders not created"):
        session.flush()
    return outcome


def _with_suggestion(
    session: Session, refusal: validation.Refusal, meter_id: str
) -> validation.Refusal:
    similar = lookup.similar_meter(session, meter_id)
    if similar is None:
        return refusal
    return validation.Refusal(refusal.code, f"{refusal.message}; did you mean {similar}?")


_ACTIVE = frozenset(s.value for s in ACTIVE_STATES)
# never sent to an agent: a cancel ends them here at once
_NOT_SENT = (OrderState.RECEIVED, OrderState.VALIDATED, OrderState.QUARANTINED)
_RECEIVED = OrderState.RECEIVED.value
_DISCONNECT = Action.DISCONNECT.value


def _supersede_pending(writer: _Writer, old: _Pending, new: _Pending) -> None:
    if old.action != Action.DISCONNECT.value or old.state not in _ACTIVE:
        return
    old.row["superseded_by"] = new.id
    old.row["result_reason"] = "cancelled"
    writer.advance(old, Event.CANCEL, "central", f"superseded by {new.action} order {new.id}")


def _supersede(session: Session, old: Order, new: Order | _Pending, now: datetime) -> None:
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
    # retry finds it in flight and asks the agent to cancel).
    with stale_to_conflict(session, f"order {order_id} not cancelled"):
        if state in _NOT_SENT:
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


def stop_protected_disconnects(
    session: Session,
    meter_ids: Sequence[str] | None = None,
    *,
    now: datetime | None = None,
) -> int:
    """Ley 21.304: end every active disconnect of a meter flagged ``protected_customer``
    (of ``meter_ids``, or of the whole fleet): one not yet sent is cancelled, one in flight
    gets a cancel sent to the agent, and so does one that ended here without the agent's
    result while an agent may still hold it (whatever the state, until its deadline). Called when a meter is flagged and before every
    dispatch pass, so a meter protected after its disconnect was accepted is never cut.
    Returns how many orders it touched. Does not commit."""
    now = now or utcnow()
    base = (
        select(Order)
        .join(Meter, Meter.id == Order.meter_id)
        .where(Meter.protected_customer.is_(True), Order.action == _DISCONNECT)
    )
    if meter_ids is not None:
        if not meter_ids:
            return 0
        base = base.where(Order.meter_id.in_(list(meter_ids)))
    query = base.where(Order.state.in_([s.value for s in ACTIVE_STATES]))
    touched = 0
    detail = "meter supplies a registered electro-dependent patient (Ley 21.304)"
    with stale_to_conflict(session, "protected customer's disconnect not stopped"):
        for order in session.scalars(query):
            state = OrderState(order.state)
            if state in _NOT_SENT:
                order.result_reason = "cancelled"
                order.result_detail = detail
                advance(session, order, Event.CANCEL, "central", f"cancelled: {detail}", at=now)
                touched += 1
            elif state in IN_FLIGHT_STATES and not order.cancel_requested:
                order.cancel_requested = True
                note(
                    session,
                    order,
                    "cancel_requested",
                    "central",
                    f"{detail}; cancel sent to the agent",
                    step=3,
                    at=now,
                )
                touched += 1
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
    for order in session.scalars(ended):
        if order.result_json is not None:
            continue  # the agent answered: it holds nothing
        order.cancel_requested = True
        note(
            session,
            order,
            "cancel_requested",
            "central",
            f"{detail}; ended here as {order.state} without the agent's result, which may "
            "still hold it: cancel sent to the agent",
            step=3,
            at=now,
        )
        touched += 1
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
