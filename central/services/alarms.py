"""Relay alarms (issue 16): what a meter's relay did that a person must look at.

* ``protected_disconnected`` (urgent): a protected customer (Ley 21.304) seen
  disconnected without an order; a reconnect order is proposed at once, held for a
  second person's approval like any held batch (``central.services.orders``);
* ``tamper_bypass`` / ``welded_relay`` (high): energy registered after a confirmed
  disconnect, with the contacts reported open (someone bypasses the relay) or still
  closed (the relay welded);
* ``drift_to_connected`` (high): the relay closed on a meter that should be
  disconnected. Never answered with a command: a re-cut nobody decided could cut
  someone who has just paid, or a patient; a person and a field crew decide.

Every alarm but the urgent one comes with a field work order of its own kind (no
order behind it). One alarm per meter and kind while it is not closed: a repeat only
moves ``last_seen_at``.
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Final

from sqlalchemy import case, select
from sqlalchemy.orm import Session

from central import metrics
from central.errors import Conflict, NotFound
from central.models import Batch, Meter, Order, RelayAlarm, RelayIncident, WorkOrder
from central.services import orders as order_service
from central.services.lifecycle import Actor, field_details, note, utcnow
from central.settings import Settings
from shared.codes import Action, OrderReason

log = logging.getLogger(__name__)
alarm_log = logging.getLogger("central.alarms")

SEVERITY: Final = {
    "protected_disconnected": "urgent",
    "tamper_bypass": "high",
    "welded_relay": "high",
    "drift_to_connected": "high",
}
WORK_ORDER_KIND: Final = {
    "tamper_bypass": "tamper",
    "welded_relay": "welded_relay",
    "drift_to_connected": "drift",
}
OPEN_STATUSES: Final = ("open", "acknowledged")
# who proposes orders on the coordinator's own initiative (never approves them)
RELAY_TRUTH: Final = Actor("central:relay-truth", "operator")
# urgent first, then newest
_RANK = case((RelayAlarm.severity == "urgent", 0), (RelayAlarm.severity == "high", 1), else_=2)


def raise_alarm(
    session: Session,
    meter: Meter,
    kind: str,
    detail: str,
    at: datetime,
    *,
    event_id: int | None = None,
) -> tuple[RelayAlarm, bool]:
    """The meter's open alarm of ``kind`` (moved to ``at``), or a new one with its
    work order; and whether it is new. Does not commit."""
    existing = session.scalars(
        select(RelayAlarm).where(
            RelayAlarm.meter_id == meter.id,
            RelayAlarm.kind == kind,
            RelayAlarm.status.in_(OPEN_STATUSES),
        )
    ).first()
    if existing is not None:
        existing.last_seen_at = max(existing.last_seen_at, at)
        return existing, False
    alarm = RelayAlarm(
        meter_id=meter.id,
        concentrator_id=meter.concentrator_id,
        kind=kind,
        severity=SEVERITY[kind],
        status="open",
        raised_at=at,
        last_seen_at=at,
        detail=detail,
        event_id=event_id,
    )
    session.add(alarm)
    session.flush()
    work_kind = WORK_ORDER_KIND.get(kind)
    if work_kind is not None:
        work_order = WorkOrder(
            order_id=None,
            kind=work_kind,
            alarm_id=alarm.id,
            meter_id=meter.id,
            concentrator_id=meter.concentrator_id,
            action="inspect",
            reason=kind,
            detail=detail,
            last_relay_state=meter.relay_state,
            created_at=at,
            **field_details(meter),
        )
        session.add(work_order)
        session.flush()
        alarm.work_order_id = work_order.id
    metrics.RELAY_ALARMS.labels(kind=kind).inc()
    alarm_log.error("ALARM %s on meter %s: %s", kind, meter.id, detail)
    return alarm, True


def protected_disconnected(
    session: Session,
    meter: Meter,
    settings: Settings,
    at: datetime,
    detail: str,
    event_id: int,
    *,
    now: datetime | None = None,
) -> RelayAlarm:
    """The most urgent alarm, with a reconnect order proposed for approval."""
    alarm, new = raise_alarm(
        session, meter, "protected_disconnected", detail, at, event_id=event_id
    )
    if new and settings.relay_protected_reconnect:
        alarm.order_id = propose_connects(
            session,
            [meter.id],
            settings,
            f"relay alarm {alarm.id}: protected customer (Ley 21.304) seen disconnected "
            "without an order; reconnect proposed, a second person approves",
            actor=RELAY_TRUTH,
            priority=9,  # higher runs first: the most urgent reconnect there is
            now=now,
        ).get(meter.id)
    return alarm


def propose_connects(
    session: Session,
    meter_ids: list[str],
    settings: Settings,
    why: str,
    *,
    actor: Actor,
    priority: int | None = None,
    now: datetime | None = None,
) -> dict[str, str]:
    """Connect orders for ``meter_ids`` through the ordinary validation
    (``orders.create_orders``), every accepted one held for a second person's approval
    (``orders.approve_batch``); returns meter id -> order id of the accepted ones."""
    requests = [
        order_service.OrderRequest(
            meter_id=meter_id,
            action=Action.CONNECT,
            reason=OrderReason.CUSTOMER_REQUEST,
            priority=priority,
        )
        for meter_id in meter_ids
    ]
    outcome = order_service.create_orders(session, requests, actor, settings, now=now)
    accepted = {
        item.meter_id: item.order_id
        for item in outcome.items
        if item.accepted and item.order_id and not item.duplicate
    }
    if outcome.batch_id is not None and accepted:
        hold_batch(session, outcome.batch_id, [o for o in accepted.values() if o], why, now)
    return {m: o for m, o in accepted.items() if o is not None}


def hold_batch(
    session: Session, batch_id: str, order_ids: list[str], why: str, now: datetime | None = None
) -> None:
    """Mark a just-created batch as waiting for a second person: the dispatcher sends
    none of its orders before ``approve_batch``."""
    batch = session.get(Batch, batch_id)
    if batch is not None:
        batch.needs_approval = True
    for order in session.scalars(select(Order).where(Order.id.in_(order_ids))):
        if order.approved_by is None and not order.needs_approval:
            order.needs_approval = True
            note(session, order, "approval_required", "central", why, step=3, at=now)
    session.flush()


def list_alarms(
    session: Session,
    *,
    status: str | None = None,
    meter_id: str | None = None,
    limit: int = 500,
) -> list[RelayAlarm]:
    query = select(RelayAlarm)
    if status == "active":
        query = query.where(RelayAlarm.status.in_(OPEN_STATUSES))
    elif status:
        query = query.where(RelayAlarm.status == status)
    if meter_id:
        query = query.where(RelayAlarm.meter_id == meter_id)
    return list(session.scalars(query.order_by(_RANK, RelayAlarm.id.desc()).limit(limit)))


def get_alarm(session: Session, alarm_id: int) -> RelayAlarm:
    alarm = session.get(RelayAlarm, alarm_id)
    if alarm is None:
        raise NotFound(f"relay alarm {alarm_id} does not exist")
    return alarm


def acknowledge_row(
    row: RelayAlarm | RelayIncident, what: str, actor: Actor, now: datetime | None
) -> None:
    """open -> acknowledged (someone is on it); a closed one is refused naming it."""
    if row.status == "closed":
        raise Conflict(f"{what} is closed")
    if row.status == "open":
        row.status = "acknowledged"
        row.acknowledged_by = actor.name
        row.acknowledged_at = now or utcnow()


def close_row(
    row: RelayAlarm | RelayIncident, what: str, actor: Actor, now: datetime | None
) -> None:
    """-> closed, acknowledged at the same moment if nobody had; closing twice is refused."""
    if row.status == "closed":
        raise Conflict(f"{what} is already closed")
    now = now or utcnow()
    if row.acknowledged_at is None:
        row.acknowledged_by, row.acknowledged_at = actor.name, now
    row.status = "closed"
    row.closed_by = actor.name
    row.closed_at = now


def acknowledge(
    session: Session, alarm_id: int, actor: Actor, *, now: datetime | None = None
) -> RelayAlarm:
    alarm = get_alarm(session, alarm_id)
    acknowledge_row(alarm, f"relay alarm {alarm_id}", actor, now)
    session.flush()
    return alarm


def close(
    session: Session, alarm_id: int, actor: Actor, *, now: datetime | None = None
) -> RelayAlarm:
    alarm = get_alarm(session, alarm_id)
    close_row(alarm, f"relay alarm {alarm_id}", actor, now)
    session.flush()
    return alarm
