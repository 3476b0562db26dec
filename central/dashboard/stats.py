"""The one aggregate the dashboard needs that the REST API does not give.

The REST list of orders is paged (newest first, at most 1,000); each order there
keeps its outcome once reported (``final_state``). The dashboard's tiles count *all* orders,
and its charts need, for the most recent ended orders, the final state (from the
Legacy outbox row written in the same transaction as that state) with the times
to place them and measure their latency.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Final

from pydantic import BaseModel
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from central.models import (
    LEGACY_GIVEN_UP,
    Concentrator,
    LegacyNotification,
    Order,
    RelayAlarm,
    RelayIncident,
    WorkOrder,
)
from central.services import alarms, incidents, rejected
from central.services.lifecycle import utcnow
from central.state import ACTIVE_STATES, OrderState

RECENT_LIMIT: Final = 1000
SUCCESS: Final = frozenset(
    {OrderState.COMPLETED_CONNECTED, OrderState.COMPLETED_DISCONNECTED, OrderState.COMPLETED_ARMED}
)
NEEDS_FIELD: Final = frozenset({OrderState.FAILED, OrderState.EXPIRED})


class EndedOrder(BaseModel):
    id: str
    final_state: str
    action: str
    created_at: datetime
    dispatched_at: datetime | None
    finished_at: datetime


class SecurityEvent(BaseModel):
    """A message an agent could not verify and reported (``services.rejected``)."""

    id: int
    received_at: datetime
    concentrator_id: str | None
    reason: str
    alarm: bool  # bad or missing signature: the concentrator's configuration alarm


class RelayAlarmView(BaseModel):
    id: int
    meter_id: str
    concentrator_id: str | None
    kind: str
    severity: str
    status: str
    raised_at: datetime
    detail: str
    work_order_id: int | None
    order_id: str | None


class IncidentView(BaseModel):
    id: int
    group_kind: str
    group_key: str
    status: str
    first_event_at: datetime
    last_event_at: datetime
    meters: int
    restore_batch_id: str | None


class DashboardStats(BaseModel):
    generated_at: datetime
    orders_total: int
    orders_by_state: dict[str, int]
    final_states: dict[str, int]  # every ended order, reported ones by how they ended
    active: int
    succeeded: int
    failed: int  # failed or expired: a field visit
    rejected: int
    concentrators_total: int
    concentrators_online: int
    work_orders_open: int
    # results whose delivery to Legacy was given up (not acknowledged after the
    # configured attempts): someone has to tell Legacy by hand
    legacy_given_up: int = 0
    recent: list[EndedOrder]  # newest first, at most RECENT_LIMIT
    security_events: list[SecurityEvent] = []  # newest first, the last SECURITY_LIMIT
    # concentrator id -> the last signature alarm it raised in the last day (its
    # configuration is wrong, or someone forges commands on its topic)
    concentrator_alarms: dict[str, str] = {}
    # issue 16: relay alarms not closed (urgent first: a protected customer seen
    # disconnected without an order) and incidents not closed, with their counts
    relay_alarms_active: int = 0
    relay_alarms_urgent: int = 0
    incidents_active: int = 0
    relay_alarms: list[RelayAlarmView] = []
    incidents: list[IncidentView] = []


def collect(session: Session, *, limit: int = RECENT_LIMIT) -> DashboardStats:
    by_state = {
        str(state): int(count)
        for state, count in session.execute(select(Order.state, func.count()).group_by(Order.state))
    }
    final_states: dict[str, int] = {
        str(state): int(count)
        for state, count in session.execute(
            select(LegacyNotification.final_state, func.count()).group_by(
                LegacyNotification.final_state
            )
        )
    }
    rows = session.execute(
        select(
            Order.id,
            LegacyNotification.final_state,
            Order.action,
            Order.created_at,
            Order.dispatched_at,
            Order.finished_at,
        )
        .join(LegacyNotification, LegacyNotification.order_id == Order.id)
        .where(Order.finished_at.is_not(None))
        .order_by(Order.finished_at.desc())
        .limit(limit)
    )
    recent = [
        EndedOrder(
            id=order_id,
            final_state=final_state,
            action=action,
            created_at=created_at,
            dispatched_at=dispatched_at,
            finished_at=finished_at or created_at,
        )
        for order_id, final_state, action, created_at, dispatched_at, finished_at in rows
    ]
    online = session.scalar(select(func.count()).where(Concentrator.online)) or 0
    total_conc = session.scalar(select(func.count(Concentrator.id))) or 0
    open_wo = session.scalar(select(func.count()).where(WorkOrder.status == "open")) or 0
    given_up = (
        session.scalar(
            select(func.count()).where(
                LegacyNotification.delivered_at.is_(None),
                LegacyNotification.last_error.startswith(LEGACY_GIVEN_UP),
            )
        )
        or 0
    )
    return DashboardStats(
        generated_at=utcnow(),
        orders_total=sum(by_state.values()),
        orders_by_state=by_state,
        final_states=final_states,
        active=sum(n for s, n in by_state.items() if s in ACTIVE_STATES),
        succeeded=sum(n for s, n in final_states.items() if s in SUCCESS),
        failed=sum(n for s, n in final_states.items() if s in NEEDS_FIELD),
        rejected=final_states.get(OrderState.REJECTED, 0),
        concentrators_total=int(total_conc),
        concentrators_online=int(online),
        work_orders_open=int(open_wo),
        legacy_given_up=int(given_up),
        recent=recent,
        **_security(session),
        **_relay(session),
    )


SECURITY_LIMIT: Final = 20


def _security(session: Session) -> dict[str, Any]:
    events = rejected.security_events(session, limit=SECURITY_LIMIT)
    alarms = rejected.signature_alarms(session)
    return {
        "security_events": [
            SecurityEvent(
                id=row.id,
                received_at=row.received_at,
                concentrator_id=row.concentrator_id,
                reason=row.reason[len(rejected.REFUSAL_PREFIX) :][:300],
                alarm=rejected.key_alarm(row),
            )
            for row in events
        ],
        "concentrator_alarms": alarms,
    }


RELAY_LIMIT: Final = 20


def _relay(session: Session) -> dict[str, Any]:
    active = alarms.list_alarms(session, status="active", limit=RELAY_LIMIT)
    by_severity = dict(
        session.execute(
            select(RelayAlarm.severity, func.count())
            .where(RelayAlarm.status.in_(alarms.OPEN_STATUSES))
            .group_by(RelayAlarm.severity)
        ).all()
    )
    open_incidents = incidents.list_incidents(session, status="active", limit=RELAY_LIMIT)
    return {
        "relay_alarms_active": int(sum(by_severity.values())),
        "relay_alarms_urgent": int(by_severity.get("urgent", 0)),
        "incidents_active": int(
            session.scalar(select(func.count()).where(RelayIncident.status.in_(incidents.ACTIVE)))
            or 0
        ),
        "relay_alarms": [RelayAlarmView.model_validate(a, from_attributes=True) for a in active],
        "incidents": [IncidentView.model_validate(i, from_attributes=True) for i in open_incidents],
    }
