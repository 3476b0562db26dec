"""Field work orders (step 10): list, filter, CSV export, close."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal, cast

from fastapi import APIRouter, Query
from fastapi.responses import Response

from central.api.deps import Offset, Operator, RowId, SessionDep, Viewer
from central.api.schemas import CloseIn, WorkOrderOut
from central.models import WorkOrder
from central.services import workorders as service

router = APIRouter(tags=["work-orders"])


def _filtered(
    session: SessionDep,
    status: str | None,
    meter_id: str | None,
    concentrator_id: str | None,
    reason: str | None,
    since: datetime | None,
    limit: int,
    offset: int,
    kind: str | None = None,
) -> list[WorkOrder]:
    return service.list_work_orders(
        session,
        status=status,
        meter_id=meter_id,
        concentrator_id=concentrator_id,
        reason=reason,
        kind=kind,
        since=since,
        limit=limit,
        offset=offset,
    )


@router.get("/work-orders", response_model=list[WorkOrderOut])
def list_work_orders(
    session: SessionDep,
    _actor: Viewer,
    status: Literal["open", "closed", "cancelled"] | None = None,
    meter_id: str | None = None,
    concentrator_id: str | None = None,
    reason: str | None = None,
    kind: Literal["order", "tamper", "welded_relay", "drift"] | None = None,
    since: datetime | None = None,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 1000,
    offset: Offset = 0,
) -> list[WorkOrderOut]:
    """Field work orders; ``kind`` order (a failed/expired order), tamper, welded_relay or
    drift (raised by a relay alarm, issue 16)."""
    rows = _filtered(
        session, status, meter_id, concentrator_id, reason, since, limit, offset, kind
    )
    return [WorkOrderOut.model_validate(row) for row in rows]


@router.get("/work-orders/export", response_class=Response)
def export_work_orders(
    session: SessionDep,
    _actor: Viewer,
    status: Literal["open", "closed", "cancelled"] | None = None,
    meter_id: str | None = None,
    concentrator_id: str | None = None,
    reason: str | None = None,
    since: datetime | None = None,
) -> Response:
    rows = _filtered(session, status, meter_id, concentrator_id, reason, since, 100_000, 0)
    return Response(
        service.export_csv(rows),
        media_type="text/csv; charset=utf-8",
        headers={"Content-Disposition": 'attachment; filename="work-orders.csv"'},
    )


@router.get("/work-orders/{work_order_id}", response_model=WorkOrderOut)
def show_work_order(work_order_id: RowId, session: SessionDep, _actor: Viewer) -> WorkOrderOut:
    return WorkOrderOut.model_validate(service.get_work_order(session, work_order_id))


@router.post("/work-orders/{work_order_id}/close", response_model=WorkOrderOut)
def close_work_order(
    work_order_id: RowId, body: CloseIn, session: SessionDep, actor: Operator
) -> WorkOrderOut:
    row = service.close_work_order(
        session, work_order_id, actor, cast(service.TechnicianOutcome, body.outcome), body.notes
    )
    session.commit()
    return WorkOrderOut.model_validate(row)
