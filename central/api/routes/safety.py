"""Issue 17: quarantines (release or delete by a second person) and holds on disconnects."""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Annotated, Literal

from fastapi import APIRouter, Query, status
from pydantic import AwareDatetime, Field

from central.api.deps import Approver, ContextDep, Offset, Operator, RowId, SessionDep, Viewer
from central.api.schemas import ORM, OrderOut
from central.errors import DispatchError, StorageError
from central.services import holds, quarantine
from central.services.inputs import Input

log = logging.getLogger(__name__)
router = APIRouter(tags=["safety"])


class QuarantineOut(ORM):
    id: str
    scope_kind: str
    scope_value: str
    state: str
    opened_at: datetime
    window_s: int
    counted: int
    threshold: int
    configured_limit: int
    baseline: float | None
    orders: int
    detail: str
    decided_by: str | None
    decided_at: datetime | None
    decision_note: str | None
    held: int = 0  # still quarantined now
    placed_by: list[str] = Field(default_factory=list)


class QuarantineDetail(QuarantineOut):
    order_ids: list[str] = Field(default_factory=list)


class DecisionIn(Input):
    note: str = Field(default="", max_length=500)


class HoldIn(Input):
    kind: Literal["emergency", "weather"]
    scope: Literal["region", "comuna", "concentrator"]
    value: str = Field(min_length=1, max_length=200)
    reason: str = Field(min_length=1, max_length=1000)
    ends_at: AwareDatetime
    starts_at: AwareDatetime | None = None


class HoldOut(ORM):
    id: int
    kind: str
    scope_kind: str
    scope_value: str
    reason: str
    starts_at: datetime
    ends_at: datetime
    created_by: str
    created_at: datetime
    ended_at: datetime | None
    ended_by: str | None
    in_force: bool = False


def _quarantine_out(session: SessionDep, row: object, detail: bool = False) -> QuarantineOut:
    base = QuarantineDetail if detail else QuarantineOut
    out = base.model_validate(row)
    held = quarantine.held_orders(session, out.id)
    out.held = len(held)
    out.placed_by = quarantine.placers(session, out.id)
    if isinstance(out, QuarantineDetail):
        out.order_ids = [o.id for o in held]
    return out


@router.get("/quarantines", response_model=list[QuarantineOut])
def list_quarantines(
    session: SessionDep,
    _actor: Viewer,
    state: Literal["open", "released", "deleted"] | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    offset: Offset = 0,
) -> list[QuarantineOut]:
    rows = quarantine.list_quarantines(session, state=state, limit=limit, offset=offset)
    return [_quarantine_out(session, row) for row in rows]


@router.get("/quarantines/{quarantine_id}", response_model=QuarantineDetail)
def get_quarantine(quarantine_id: str, session: SessionDep, _actor: Viewer) -> QuarantineOut:
    return _quarantine_out(session, quarantine.get_quarantine(session, quarantine_id), True)


@router.post("/quarantines/{quarantine_id}/release", response_model=QuarantineOut)
def release(
    quarantine_id: str,
    session: SessionDep,
    actor: Approver,
    context: ContextDep,
    body: DecisionIn | None = None,
) -> QuarantineOut:
    """A second person (approver, who placed none of its orders) lets them go on."""
    row = quarantine.release(session, quarantine_id, actor, note_text=body.note if body else "")
    session.commit()
    try:
        context.coordinator.dispatch_now()
    except (DispatchError, StorageError) as exc:
        log.warning("dispatch after a release failed, left to the background loop: %s", exc)
    return _quarantine_out(session, row)


@router.post("/quarantines/{quarantine_id}/delete", response_model=QuarantineOut)
def delete(
    quarantine_id: str,
    session: SessionDep,
    actor: Approver,
    body: DecisionIn | None = None,
) -> QuarantineOut:
    """A second person deletes them: rejected (quarantine_deleted), Legacy is told."""
    row = quarantine.delete(session, quarantine_id, actor, note_text=body.note if body else "")
    session.commit()
    return _quarantine_out(session, row)


def _hold_out(row: object) -> HoldOut:
    out = HoldOut.model_validate(row)
    out.in_force = out.ended_at is None and out.starts_at <= holds.utcnow() < out.ends_at
    return out


@router.get("/holds", response_model=list[HoldOut])
def list_holds(
    session: SessionDep,
    _actor: Viewer,
    active: bool = False,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> list[HoldOut]:
    return [_hold_out(row) for row in holds.list_holds(session, active=active, limit=limit)]


@router.post("/holds", response_model=HoldOut, status_code=status.HTTP_201_CREATED)
def declare_hold(body: HoldIn, session: SessionDep, actor: Operator) -> HoldOut:
    """Declare an emergency or weather hold on disconnects in a scope until ``ends_at``."""
    row = holds.declare(
        session,
        actor,
        kind=body.kind,
        scope=body.scope,
        value=body.value,
        reason=body.reason,
        ends_at=body.ends_at,
        starts_at=body.starts_at,
    )
    session.commit()
    return _hold_out(row)


@router.post("/holds/{hold_id}/end", response_model=HoldOut)
def end_hold(hold_id: RowId, session: SessionDep, actor: Operator, context: ContextDep) -> HoldOut:
    """End a hold early: its disconnects may go on the next pass."""
    row = holds.end(session, hold_id, actor)
    session.commit()
    context.coordinator.kick()
    return _hold_out(row)


@router.get("/held-orders", response_model=list[OrderOut])
def held_orders(
    session: SessionDep,
    _actor: Viewer,
    reason: str | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> list[OrderOut]:
    """Validated disconnects held now (as the last pass stamped them), oldest first."""
    query = holds.select_held(reason).limit(limit)
    return [OrderOut.model_validate(row) for row in session.scalars(query)]
