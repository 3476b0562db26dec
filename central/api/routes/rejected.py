"""Agent messages the coordinator refused, kept for audit (``services.rejected``)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Query

from central.api.deps import Offset, Operator, SessionDep
from central.api.schemas import RejectedMessageOut
from central.models import RejectedMessage
from central.services import rejected as service

router = APIRouter(tags=["rejected-messages"])

_PREVIEW_BYTES = 4096


def _out(row: RejectedMessage) -> RejectedMessageOut:
    return RejectedMessageOut(
        id=row.id,
        received_at=row.received_at,
        topic=row.topic,
        concentrator_id=row.concentrator_id,
        order_id=row.order_id,
        reason=row.reason,
        size=row.size,
        payload_text=row.payload[:_PREVIEW_BYTES].decode("utf-8", errors="replace"),
    )


@router.get("/rejected-messages", response_model=list[RejectedMessageOut])
def list_rejected_messages(
    session: SessionDep,
    _actor: Operator,
    concentrator_id: str | None = None,
    order_id: str | None = None,
    since: datetime | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    offset: Offset = 0,
) -> list[RejectedMessageOut]:
    rows = service.list_rejected(
        session,
        concentrator_id=concentrator_id,
        order_id=order_id,
        since=since,
        limit=limit,
        offset=offset,
    )
    return [_out(row) for row in rows]
