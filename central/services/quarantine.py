"""Deciding a quarantine (issue 17): a second person releases or deletes it.

The second person has role approver and placed none of the orders still held in it
(the same person through another channel, ``soap:ana`` and ``ana``, counts as one, as
for batch approvals). Release: each held disconnect goes back to ``validated`` and on
to dispatch; it needed a batch approval, the release is that approval. Delete: each
ends ``rejected`` with refusal code ``quarantine_deleted``; Legacy is told through its
notifier (a coded refusal: the synchronous reply had accepted it). Orders that left the
quarantine meanwhile (cancelled, superseded by a reconnect, expired) are not touched.
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Final

from sqlalchemy import select
from sqlalchemy.orm import Session

from central import metrics
from central.db import stale_to_conflict
from central.errors import BadRequest, Conflict, NotFound, PermissionDenied
from central.models import Order, Quarantine
from central.services.anomaly import OPEN
from central.services.lifecycle import Actor, advance, note, utcnow
from central.services.protections import person, raise_alarm
from central.state import Event, OrderState

log = logging.getLogger(__name__)

RELEASED: Final = "released"
DELETED: Final = "deleted"
STATES: Final = (OPEN, RELEASED, DELETED)
# The refusal code (and result reason) of a disconnect deleted from a quarantine.
DELETED_CODE: Final = "quarantine_deleted"


def list_quarantines(
    session: Session, *, state: str | None = None, limit: int = 100, offset: int = 0
) -> list[Quarantine]:
    query = select(Quarantine)
    if state is not None:
        if state not in STATES:
            raise BadRequest(f"quarantine state {state!r} is not one of {', '.join(STATES)}")
        query = query.where(Quarantine.state == state)
    query = query.order_by(Quarantine.opened_at.desc(), Quarantine.id).limit(limit).offset(offset)
    return list(session.scalars(query))


def get_quarantine(session: Session, quarantine_id: str) -> Quarantine:
    found = session.get(Quarantine, quarantine_id)
    if found is None:
        raise NotFound(f"quarantine {quarantine_id} does not exist")
    return found


def held_orders(session: Session, quarantine_id: str) -> list[Order]:
    """The orders still quarantined in it, oldest first."""
    return list(
        session.scalars(
            select(Order)
            .where(
                Order.quarantine_id == quarantine_id,
                Order.state == OrderState.QUARANTINED.value,
            )
            .order_by(Order.created_at, Order.meter_id)
        )
    )


def placers(session: Session, quarantine_id: str) -> list[str]:
    """Who placed the orders held in it (their ``created_by``)."""
    rows = session.scalars(
        select(Order.created_by)
        .where(Order.quarantine_id == quarantine_id)
        .distinct()
        .order_by(Order.created_by)
    )
    return list(rows)


def _decide(
    session: Session, quarantine_id: str, actor: Actor, verb: str
) -> tuple[Quarantine, list[Order]]:
    if not actor.at_least("approver"):
        raise PermissionDenied(f"{actor.name} ({actor.role}) may not {verb} quarantines")
    quarantine = get_quarantine(session, quarantine_id)
    if quarantine.state != OPEN:
        raise Conflict(f"quarantine {quarantine_id} is already {quarantine.state}")
    placed = {person(name) for name in placers(session, quarantine_id)}
    if person(actor.name) in placed:
        raise PermissionDenied(
            f"{actor.name} placed orders of quarantine {quarantine_id}: a second person "
            f"must {verb} it"
        )
    return quarantine, held_orders(session, quarantine_id)


def release(
    session: Session,
    quarantine_id: str,
    actor: Actor,
    *,
    note_text: str = "",
    now: datetime | None = None,
) -> Quarantine:
    """The held disconnects go on to dispatch. Does not commit."""
    now = now or utcnow()
    quarantine, orders = _decide(session, quarantine_id, actor, "release")
    why = f"released from quarantine {quarantine_id} by {actor.name}"
    if note_text:
        why += f": {note_text}"
    with stale_to_conflict(session, f"quarantine {quarantine_id} not released"):
        for order in orders:
            advance(session, order, Event.RELEASE, actor, why, at=now)
            if order.needs_approval and order.approved_by is None:
                order.approved_by = actor.name
                note(
                    session,
                    order,
                    "approved",
                    actor,
                    f"approved by the release: {why}",
                    step=3,
                    at=now,
                )
        _close(quarantine, RELEASED, actor, note_text, now)
        session.flush()
    metrics.QUARANTINE.labels(event="released").inc(len(orders))
    raise_alarm("anomaly_released", f"quarantine {quarantine_id}: {len(orders)} {why}")
    return quarantine


def delete(
    session: Session,
    quarantine_id: str,
    actor: Actor,
    *,
    note_text: str = "",
    now: datetime | None = None,
) -> Quarantine:
    """The held disconnects end rejected (``quarantine_deleted``); Legacy is told.
    Does not commit."""
    now = now or utcnow()
    quarantine, orders = _decide(session, quarantine_id, actor, "delete")
    why = f"deleted from quarantine {quarantine_id} by {actor.name}"
    if note_text:
        why += f": {note_text}"
    with stale_to_conflict(session, f"quarantine {quarantine_id} not deleted"):
        for order in orders:
            order.refusal_code = DELETED_CODE
            order.refusal_detail = why
            order.result_reason = DELETED_CODE
            order.result_detail = why
            advance(session, order, Event.DISCARD, actor, f"{DELETED_CODE}: {why}", at=now)
        _close(quarantine, DELETED, actor, note_text, now)
        session.flush()
    metrics.QUARANTINE.labels(event="deleted").inc(len(orders))
    log.warning("quarantine %s: %d %s", quarantine_id, len(orders), why)
    return quarantine


def _close(quarantine: Quarantine, state: str, actor: Actor, text: str, now: datetime) -> None:
    quarantine.state = state
    quarantine.decided_by = actor.name
    quarantine.decided_at = now
    quarantine.decision_note = text or None


def deleted_from_quarantine(order: Order) -> bool:
    """An order that ended rejected after it was accepted: Legacy must be told."""
    return order.refusal_code == DELETED_CODE
