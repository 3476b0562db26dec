"""Incidents (issue 16): unexplained relay openings grouped into one thing to act on.

A firmware fault or a bad night on one concentrator opens many relays at once; a
person needs one incident listing the meters, not hundreds of lines. An opening with
no order behind it (``relay_events`` kind ``unexplained_open``) joins the open
incident of its concentrator (or, failing that, of its firmware version) when it
lies within ``relay_incident_window_s`` of that incident's latest opening. Otherwise,
once ``relay_incident_min_meters`` meters of one concentrator (or one firmware) have
opened unexplained within the window, a new incident is opened with all of them.

An operator acknowledges and closes it. ``restore`` proposes connect orders for the
meters the incident cut (those still recorded disconnected) through
``orders.create_orders``, held for a second person (``orders.approve_batch``) like
any batch that waits: nobody alone switches a whole concentrator back.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from central.errors import BadRequest, Conflict, NotFound
from central.models import Meter, Order, RelayEvent, RelayIncident
from central.services import alarms
from central.services.lifecycle import Actor
from central.settings import Settings

UNEXPLAINED_OPEN = "unexplained_open"
ACTIVE = ("open", "acknowledged")


def note_unexplained_opening(
    session: Session, event: RelayEvent, meter: Meter, settings: Settings, now: datetime
) -> RelayIncident | None:
    """Group one unexplained opening (already flushed); returns its incident, if any."""
    window = timedelta(seconds=settings.relay_incident_window_s)
    groups = [("concentrator", meter.concentrator_id), ("firmware", meter.firmware_version)]
    for kind, key in groups:
        if not key:
            continue
        incident = session.scalars(
            select(RelayIncident)
            .where(
                RelayIncident.group_kind == kind,
                RelayIncident.group_key == key,
                RelayIncident.status.in_(ACTIVE),
                RelayIncident.last_event_at >= event.at - window,
                RelayIncident.first_event_at <= event.at + window,
            )
            .order_by(RelayIncident.id.desc())
        ).first()
        if incident is not None:
            _attach(session, incident, [event])
            return incident
    for kind, key in groups:
        if not key:
            continue
        column = (
            RelayEvent.concentrator_id if kind == "concentrator" else RelayEvent.firmware_version
        )
        loose = list(
            session.scalars(
                select(RelayEvent).where(
                    RelayEvent.kind == UNEXPLAINED_OPEN,
                    RelayEvent.incident_id.is_(None),
                    column == key,
                    RelayEvent.at >= event.at - window,
                    RelayEvent.at <= event.at + window,
                )
            )
        )
        if len({e.meter_id for e in loose}) >= settings.relay_incident_min_meters:
            incident = RelayIncident(
                group_kind=kind,
                group_key=key,
                status="open",
                opened_at=now,
                first_event_at=min(e.at for e in loose),
                last_event_at=max(e.at for e in loose),
                meters=0,
                notes="",
            )
            session.add(incident)
            session.flush()
            _attach(session, incident, loose)
            return incident
    return None


def _attach(session: Session, incident: RelayIncident, events: list[RelayEvent]) -> None:
    for event in events:
        event.incident_id = incident.id
        incident.first_event_at = min(incident.first_event_at, event.at)
        incident.last_event_at = max(incident.last_event_at, event.at)
    session.flush()
    incident.meters = len(meters_of(session, incident.id))


def meters_of(session: Session, incident_id: int) -> list[str]:
    return sorted(
        set(
            session.scalars(
                select(RelayEvent.meter_id).where(RelayEvent.incident_id == incident_id)
            )
        )
    )


def get_incident(session: Session, incident_id: int) -> RelayIncident:
    incident = session.get(RelayIncident, incident_id)
    if incident is None:
        raise NotFound(f"incident {incident_id} does not exist")
    return incident


def list_incidents(
    session: Session, *, status: str | None = None, limit: int = 200
) -> list[RelayIncident]:
    query = select(RelayIncident)
    if status == "active":
        query = query.where(RelayIncident.status.in_(ACTIVE))
    elif status:
        query = query.where(RelayIncident.status == status)
    return list(session.scalars(query.order_by(RelayIncident.id.desc()).limit(limit)))


def events_of(session: Session, incident_id: int) -> list[RelayEvent]:
    return list(
        session.scalars(
            select(RelayEvent)
            .where(RelayEvent.incident_id == incident_id)
            .order_by(RelayEvent.at, RelayEvent.id)
        )
    )


def acknowledge(
    session: Session, incident_id: int, actor: Actor, *, now: datetime | None = None
) -> RelayIncident:
    incident = get_incident(session, incident_id)
    alarms.acknowledge_row(incident, f"incident {incident_id}", actor, now)
    session.flush()
    return incident


def close(
    session: Session,
    incident_id: int,
    actor: Actor,
    notes: str = "",
    *,
    now: datetime | None = None,
) -> RelayIncident:
    incident = get_incident(session, incident_id)
    alarms.close_row(incident, f"incident {incident_id}", actor, now)
    if notes:
        incident.notes = notes
    session.flush()
    return incident


def to_restore(session: Session, incident_id: int) -> list[str]:
    """The meters this incident cut whose supply is still recorded off."""
    ids = meters_of(session, incident_id)
    if not ids:
        return []
    rows = session.scalars(
        # armed too: a local disconnection leaves the control ready_for_reconnection
        select(Meter.id).where(Meter.id.in_(ids), Meter.relay_state.in_(("disconnected", "armed")))
    )
    return sorted(rows)


def restore(
    session: Session,
    incident_id: int,
    actor: Actor,
    settings: Settings,
    *,
    now: datetime | None = None,
) -> tuple[RelayIncident, dict[str, str]]:
    """Propose connect orders for the meters the incident cut, held for approval;
    returns the incident and meter id -> order id. Does not commit."""
    incident = get_incident(session, incident_id)
    if incident.status == "closed":
        raise Conflict(f"incident {incident_id} is closed")
    if incident.restore_batch_id is not None:
        raise Conflict(
            f"incident {incident_id} already has a restore (batch {incident.restore_batch_id})"
        )
    meters = to_restore(session, incident_id)
    if not meters:
        raise BadRequest(f"incident {incident_id} has no meter left disconnected to restore")
    placed = alarms.propose_connects(
        session,
        meters,
        settings,
        f"restore of incident {incident_id} asked by {actor.name}: a second person approves",
        actor=actor,
        now=now,
    )
    if placed:
        batch_ids = set(
            session.scalars(select(Order.batch_id).where(Order.id.in_(list(placed.values()))))
        )
        incident.restore_batch_id = next(iter(batch_ids), None)
        incident.restore_requested_by = actor.name
    session.flush()
    return incident, placed
