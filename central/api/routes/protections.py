"""Protection changes: a protection is removed only with a second person's approval."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Query

from central.api.deps import Approver, Offset, Operator, RowId, SessionDep
from central.api.schemas import ProtectionChangeOut
from central.services import protections

router = APIRouter(tags=["protection-changes"])




@router.get("/protection-changes", response_model=list[ProtectionChangeOut])
def list_changes(
    session: SessionDep,
    _actor: Operator,
    state: Literal["pending", "approved"] | None = None,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 1000,
    offset: Offset = 0,
) -> list[ProtectionChangeOut]:
    rows = protections.list_changes(session, state=state, limit=limit, offset=offset)
    return [ProtectionChangeOut.model_validate(row) for row in rows]


@router.post("/protection-changes/{change_id}/approve", response_model=ProtectionChangeOut)
def approve_change(
    change_id: RowId, session: SessionDep, actor: Approver
) -> ProtectionChangeOut:
    """A second person (role approver, not the requester) removes the protection."""
    change = protections.approve(session, change_id, actor)
    session.commit()
    return ProtectionChangeOut.model_validate(change)
