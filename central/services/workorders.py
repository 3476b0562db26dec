"""Field work orders (step 10): created for failed/expired orders by
``lifecycle.on_order_finished``; listed, filtered, exported and closed here."""

from __future__ import annotations

import csv
import io
from datetime import datetime
from typing import Literal

from sqlalchemy import select
from sqlalchemy.orm import Session

from central.db import where_given
from central.errors import Conflict, NotFound
from central.models import Meter, WorkOrder
from central.services.lifecycle import Actor, utcnow

TechnicianOutcome = Literal[
    "connected", "disconnected", "no_access", "meter_replaced", "meter_faulty", "other"
]
CSV_FIELDS = (
    "id",
    "order_id",
    "meter_id",
    "concentrator_id",
    "action",
    "reason",
    "detail",
    "service_address",
    "comuna",
    "region",
    "latitude",
    "longitude",
    "customer_ref",
    "access_notes",
    "last_relay_state",
    "status",
    "created_at",
    "closed_at",
    "closed_by",
    "technician_outcome",
    "notes",
    "kind",  # issue 16: appended, so that existing readers of the columns keep working
    "alarm_id",
)


def list_work_orders(
    session: Session,
    *,
    status: str | None = None,
    meter_id: str | None = None,
    concentrator_id: str | None = None,
    reason: str | None = None,
    kind: str | None = None,
    since: datetime | None = None,
    limit: int = 1000,
    offset: int = 0,
) -> list[WorkOrder]:
    query = where_given(
        select(WorkOrder),
        (WorkOrder.status, status),
        (WorkOrder.meter_id, meter_id),
        (WorkOrder.concentrator_id, concentrator_id),
        (WorkOrder.reason, reason),
        (WorkOrder.kind, kind),
    )
    if since:
        query = query.where(WorkOrder.created_at >= since)
    query = query.order_by(WorkOrder.id).limit(min(limit, 100_000)).offset(offset)
    return list(session.scalars(query))


def get_work_order(session: Session, work_order_id: int) -> WorkOrder:
    row = session.get(WorkOrder, work_order_id)
    if row is None:
        raise NotFound(f"work order {work_order_id} does not exist")
    return row


def work_order_for(session: Session, order_id: str) -> WorkOrder | None:
    return session.scalars(select(WorkOrder).where(WorkOrder.order_id == order_id)).first()


def export_csv(rows: list[WorkOrder]) -> str:
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(CSV_FIELDS)
    for row in rows:
        values = []
        for name in CSV_FIELDS:
            value = getattr(row, name)
            values.append(value.isoformat() if isinstance(value, datetime) else value)
        writer.writerow(["" if v is None else v for v in values])
    return out.getvalue()


def close_work_order(
    session: Session,
    work_order_id: int,
    actor: Actor,
    outcome: TechnicianOutcome,
    notes: str = "",
    *,
    now: datetime | None = None,
) -> WorkOrder:
    """Close with the technician's outcome; a switched relay updates the meter."""
    now = now or utcnow()
    row = get_work_order(session, work_order_id)
    if row.status == "closed":
        raise Conflict(f"work order {work_order_id} is already closed")
    row.status = "closed"
    row.closed_at = now
    row.closed_by = actor.name
    row.technician_outcome = outcome
    row.notes = notes
    if outcome in ("connected", "disconnected"):
        meter = session.get(Meter, row.meter_id)
        if meter is not None:
            meter.relay_state = outcome
            meter.relay_state_at = now
    session.flush()
    return row
