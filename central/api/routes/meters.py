"""Meters: CSV import, read, change. Changes are pushed to the agents' meter tables."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Body, Query

from central.api.deps import Admin, ContextDep, Offset, SessionDep, Viewer
from central.api.schemas import ImportOut, MeterOut
from central.errors import BadRequest
from central.models import Meter
from central.services import protections, registry
from central.services.registry import MeterChange, MeterFields

router = APIRouter(tags=["meters"])


@router.post("/meters/import", response_model=ImportOut)
def import_meters(
    session: SessionDep,
    context: ContextDep,
    actor: Admin,
    body: Annotated[bytes, Body(media_type="text/csv")],
) -> ImportOut:
    """CSV with a header row; see ``registry.import_meters_csv`` for the columns."""
    try:
        text = body.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise BadRequest("the CSV is not UTF-8") from exc
    report = registry.import_meters_csv(session, text, actor=actor.name)
    session.commit()
    context.coordinator.kick()
    return ImportOut(
        created=report.created,
        updated=report.updated,
        concentrators_created=report.concentrators_created,
        errors=report.errors,
        protection_pending=report.protection_pending,
    )


@router.get("/meters", response_model=list[MeterOut])
def list_meters(
    session: SessionDep,
    _actor: Viewer,
    concentrator_id: str | None = None,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 1000,
    offset: Offset = 0,
) -> list[MeterOut]:
    rows = registry.list_meters(
        session, concentrator_id=concentrator_id, limit=limit, offset=offset
    )
    return [MeterOut.model_validate(row) for row in rows]


@router.get("/meters/{meter_id}", response_model=MeterOut)
def show_meter(meter_id: str, session: SessionDep, _actor: Viewer) -> MeterOut:
    return MeterOut.model_validate(registry.get_meter(session, meter_id))


@router.put("/meters/{meter_id}", response_model=MeterOut)
def put_meter(
    meter_id: str, body: MeterFields, session: SessionDep, context: ContextDep, actor: Admin
) -> MeterOut:
    if body.id != meter_id:
        raise BadRequest("the body's id differs from the path")
    row = registry.upsert_meter(session, body, actor=actor.name)
    session.commit()
    context.coordinator.kick()
    return _meter_out(session, row)


@router.patch("/meters/{meter_id}", response_model=MeterOut)
def change_meter(
    meter_id: str, body: MeterChange, session: SessionDep, context: ContextDep, actor: Admin
) -> MeterOut:
    row = registry.change_meter(session, meter_id, body, actor=actor.name)
    session.commit()
    context.coordinator.kick()
    return _meter_out(session, row)


def _meter_out(session: SessionDep, row: Meter) -> MeterOut:
    out = MeterOut.model_validate(row)
    out.protection_change_pending = protections.pending_for(session, row.id) is not None
    return out
