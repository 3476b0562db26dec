"""Relay truth (issue 16): a meter's relay history, relay alarms, incidents and the
restore of what an incident cut (held for a second person)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from fastapi import APIRouter, Query
from pydantic import BaseModel, Field
from sqlalchemy import select

from central.api.deps import ContextDep, Operator, RowId, SessionDep, Viewer
from central.api.schemas import ORM, OrderOut, WorkOrderOut
from central.errors import NotFound
from central.models import Meter, Order, RelayEvent, RelayObservation, WorkOrder
from central.services import alarms, incidents
from central.services.inputs import Input

router = APIRouter(tags=["relay"])
Limit = Annotated[int, Query(ge=1, le=10_000)]


class ObservationOut(ORM):
    observed_at: datetime
    source: str
    relay_state: str
    output_state: bool | None
    control_mode: int | None
    energy_wh: float | None
    report_id: str | None
    order_id: str | None


class RelayEventOut(ORM):
    id: int
    meter_id: str
    at: datetime
    kind: str
    log_index: int | None
    code: int | None
    from_state: str | None
    to_state: str | None
    order_id: str | None
    incident_id: int | None
    detail: str


class AlarmOut(ORM):
    id: int
    meter_id: str
    concentrator_id: str | None
    kind: str
    severity: str
    status: str
    raised_at: datetime
    last_seen_at: datetime
    detail: str
    work_order_id: int | None
    order_id: str | None  # a reconnect proposed for it, waiting for approval
    acknowledged_by: str | None
    closed_by: str | None


class RelayHistoryOut(BaseModel):
    meter_id: str
    relay_state: str
    relay_state_at: datetime | None
    relay_state_source: str | None
    firmware_version: str | None
    audited_at: datetime | None
    protected_customer: bool
    orders: list[OrderOut]
    observations: list[ObservationOut]
    events: list[RelayEventOut]
    alarms: list[AlarmOut]
    work_orders: list[WorkOrderOut]


class IncidentOut(ORM):
    id: int
    group_kind: str
    group_key: str
    status: str
    opened_at: datetime
    first_event_at: datetime
    last_event_at: datetime
    meters: int
    acknowledged_by: str | None
    closed_by: str | None
    closed_at: datetime | None
    restore_batch_id: str | None
    restore_requested_by: str | None
    notes: str


class IncidentDetail(IncidentOut):
    meter_ids: list[str] = []
    to_restore: list[str] = []
    events: list[RelayEventOut] = []


class CloseIncidentIn(Input):
    notes: str = Field(default="", max_length=2000)


class RestoreOut(BaseModel):
    incident: IncidentOut
    batch_id: str | None
    needs_approval: bool
    orders: dict[str, str]  # meter id -> connect order id


@router.get("/meters/{meter_id}/relay-history", response_model=RelayHistoryOut)
def relay_history(
    meter_id: str, session: SessionDep, _actor: Viewer, limit: Limit = 200
) -> RelayHistoryOut:
    """Orders, observations, events (log entries, drift, button presses), alarms and
    work orders of one meter, newest first."""
    meter = session.get(Meter, meter_id)
    if meter is None:
        raise NotFound(f"meter {meter_id} is not registered")
    orders = session.scalars(
        select(Order)
        .where(Order.meter_id == meter_id)
        .order_by(Order.created_at.desc())
        .limit(limit)
    )
    observations = session.scalars(
        select(RelayObservation)
        .where(RelayObservation.meter_id == meter_id)
        .order_by(RelayObservation.observed_at.desc(), RelayObservation.id.desc())
        .limit(limit)
    )
    events = session.scalars(
        select(RelayEvent)
        .where(RelayEvent.meter_id == meter_id)
        .order_by(RelayEvent.at.desc(), RelayEvent.id.desc())
        .limit(limit)
    )
    work = session.scalars(
        select(WorkOrder).where(WorkOrder.meter_id == meter_id).order_by(WorkOrder.id.desc())
    )
    return RelayHistoryOut(
        meter_id=meter.id,
        relay_state=meter.relay_state,
        relay_state_at=meter.relay_state_at,
        relay_state_source=meter.relay_state_source,
        firmware_version=meter.firmware_version,
        audited_at=meter.audited_at,
        protected_customer=meter.protected_customer,
        orders=[OrderOut.model_validate(o) for o in orders],
        observations=[ObservationOut.model_validate(o) for o in observations],
        events=[RelayEventOut.model_validate(e) for e in events],
        alarms=[
            AlarmOut.model_validate(a)
            for a in alarms.list_alarms(session, meter_id=meter_id, limit=limit)
        ],
        work_orders=[WorkOrderOut.model_validate(w) for w in work],
    )


@router.get("/relay-alarms", response_model=list[AlarmOut])
def list_alarms(
    session: SessionDep,
    _actor: Viewer,
    status: Literal["active", "open", "acknowledged", "closed"] | None = "active",
    meter_id: str | None = None,
    limit: Limit = 500,
) -> list[AlarmOut]:
    """Relay alarms, urgent first (a protected customer seen disconnected), then newest."""
    rows = alarms.list_alarms(session, status=status, meter_id=meter_id, limit=limit)
    return [AlarmOut.model_validate(a) for a in rows]


@router.post("/relay-alarms/{alarm_id}/ack", response_model=AlarmOut)
def acknowledge_alarm(alarm_id: RowId, session: SessionDep, actor: Operator) -> AlarmOut:
    alarm = alarms.acknowledge(session, alarm_id, actor)
    session.commit()
    return AlarmOut.model_validate(alarm)


@router.post("/relay-alarms/{alarm_id}/close", response_model=AlarmOut)
def close_alarm(alarm_id: RowId, session: SessionDep, actor: Operator) -> AlarmOut:
    alarm = alarms.close(session, alarm_id, actor)
    session.commit()
    return AlarmOut.model_validate(alarm)


@router.get("/incidents", response_model=list[IncidentOut])
def list_incidents(
    session: SessionDep,
    _actor: Viewer,
    status: Literal["active", "open", "acknowledged", "closed"] | None = None,
    limit: Limit = 200,
) -> list[IncidentOut]:
    """Incidents, newest first (``active``: open or acknowledged)."""
    rows = incidents.list_incidents(session, status=status, limit=limit)
    return [IncidentOut.model_validate(i) for i in rows]


def _detail(session: SessionDep, incident_id: int) -> IncidentDetail:
    incident = incidents.get_incident(session, incident_id)
    detail = IncidentDetail.model_validate(incident)
    detail.meter_ids = incidents.meters_of(session, incident_id)
    detail.to_restore = incidents.to_restore(session, incident_id)
    detail.events = [
        RelayEventOut.model_validate(e) for e in incidents.events_of(session, incident_id)
    ]
    return detail


@router.get("/incidents/{incident_id}", response_model=IncidentDetail)
def show_incident(incident_id: RowId, session: SessionDep, _actor: Viewer) -> IncidentDetail:
    return _detail(session, incident_id)


@router.post("/incidents/{incident_id}/ack", response_model=IncidentDetail)
def acknowledge_incident(
    incident_id: RowId, session: SessionDep, actor: Operator
) -> IncidentDetail:
    incidents.acknowledge(session, incident_id, actor)
    session.commit()
    return _detail(session, incident_id)


@router.post("/incidents/{incident_id}/close", response_model=IncidentDetail)
def close_incident(
    incident_id: RowId, body: CloseIncidentIn, session: SessionDep, actor: Operator
) -> IncidentDetail:
    incidents.close(session, incident_id, actor, body.notes)
    session.commit()
    return _detail(session, incident_id)


@router.post("/incidents/{incident_id}/restore", response_model=RestoreOut)
def restore_incident(
    incident_id: RowId, session: SessionDep, actor: Operator, context: ContextDep
) -> RestoreOut:
    """Connect orders for the meters the incident cut, validated as any order and held
    until a second person approves the batch (``POST /batches/{batch_id}/approve``)."""
    incident, placed = incidents.restore(session, incident_id, actor, context.settings)
    session.commit()
    return RestoreOut(
        incident=IncidentOut.model_validate(incident),
        batch_id=incident.restore_batch_id,
        needs_approval=bool(placed),
        orders=placed,
    )
