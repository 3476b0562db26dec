"""Concentrators with their live status (online, queue depth, modem, SIM)."""

from __future__ import annotations

from fastapi import APIRouter

from central.api.deps import Admin, ContextDep, SessionDep, Viewer
from central.api.schemas import ConcentratorChange, ConcentratorOut
from central.models import Concentrator
from central.services import registry, rejected

router = APIRouter(tags=["concentrators"])


def _out(row: Concentrator, alarms: dict[str, str]) -> ConcentratorOut:
    out = ConcentratorOut.model_validate(row)
    out.signature_alarm = alarms.get(row.id)
    return out


@router.get("/concentrators", response_model=list[ConcentratorOut])
def list_concentrators(session: SessionDep, _actor: Viewer) -> list[ConcentratorOut]:
    alarms = rejected.signature_alarms(session)
    return [_out(row, alarms) for row in registry.list_concentrators(session)]


@router.get("/concentrators/{concentrator_id}", response_model=ConcentratorOut)
def show_concentrator(concentrator_id: str, session: SessionDep, _actor: Viewer) -> ConcentratorOut:
    row = registry.get_concentrator(session, concentrator_id)
    return _out(row, rejected.signature_alarms(session))


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
