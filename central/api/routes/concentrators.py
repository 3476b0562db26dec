"""Concentrators with their live status (online, queue depth, modem, SIM)."""

from __future__ import annotations

from fastapi import APIRouter

from central.api.deps import Admin, ContextDep, SessionDep, Viewer
from central.api.schemas import ConcentratorChange, ConcentratorOut
from central.services import registry

router = APIRouter(tags=["concentrators"])


@router.get("/concentrators", response_model=list[ConcentratorOut])
def list_concentrators(session: SessionDep, _actor: Viewer) -> list[ConcentratorOut]:
    return [ConcentratorOut.model_validate(row) for row in registry.list_concentrators(session)]


@router.get("/concentrators/{concentrator_id}", response_model=ConcentratorOut)
def show_concentrator(concentrator_id: str, session: SessionDep, _actor: Viewer) -> ConcentratorOut:
    return ConcentratorOut.model_validate(registry.get_concentrator(session, concentrator_id))


@router.patch("/concentrators/{concentrator_id}", response_model=ConcentratorOut)
def change_concentrator(
    concentrator_id: str,
    body: ConcentratorChange,
    session: SessionDep,
    context: ContextDep,
    _actor: Admin,
) -> ConcentratorOut:
    row, _created = registry.ensure_concentrator(session, concentrator_id, body.name or "")
    if body.name is not None:
        row.name = body.name
    if body.decommissioned is not None:
        row.decommissioned = body.decommissioned
    session.commit()
    context.coordinator.kick()
    return ConcentratorOut.model_validate(row)
