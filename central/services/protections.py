"""Removing a protection takes two people (issue 12, item 8).

Clearing a meter's protected-customer flag (Ley 21.304: an electro-dependent
patient's supply) by PUT, PATCH or CSV import does not clear it: it records a
pending :class:`ProtectionChange` and raises an alarm. The flag is cleared only
when a second person (role approver, not the requester) approves, which raises
the alarm again. Setting the flag needs nobody's approval: it only protects.
The alarm is a log record on ``central.alarm`` (level ERROR) and the
``rcd_protection_alarms_total`` counter, which operations alert on.
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Final

from sqlalchemy import select
from sqlalchemy.orm import Session

from central.db import stale_to_conflict
from central.errors import Conflict, NotFound, PermissionDenied
from central.metrics import PROTECTION_ALARMS
from central.models import Meter, ProtectionChange
from central.services.lifecycle import Actor, utcnow

alarm_log = logging.getLogger("central.alarm")

CLEAR_PROTECTED: Final = "clear_protected_customer"
PENDING: Final = "pending"
APPROVED: Final = "approved"
# Channels that prefix the caller's name: "soap:ana" and "ana" are the same person.
_CHANNEL_PREFIXES: Final = ("soap:",)


def person(name: str) -> str:
    """The person behind an actor name, whatever channel she used."""
    for prefix in _CHANNEL_PREFIXES:
        if name.startswith(prefix):
            return name[len(prefix) :]
    return name


def raise_alarm(kind: str, detail: str) -> None:
    PROTECTION_ALARMS.labels(kind=kind).inc()
    alarm_log.error("ALARM %s: %s", kind, detail)


def request_clear(
    session: Session, meter: Meter, requested_by: str, *, now: datetime | None = None
) -> ProtectionChange:
    """Record (once per meter while pending) a request to clear the flag; the flag
    stays set. Does not commit."""
    pending = pending_for(session, meter.id)
    if pending is not None:
        return pending
    change = ProtectionChange(
        meter_id=meter.id,
        change=CLEAR_PROTECTED,
        state=PENDING,
        requested_by=requested_by,
        requested_at=now or utcnow(),
    )
    session.add(change)
    session.flush()
    raise_alarm(
        "protection_removal_requested",
        f"{requested_by} asked to clear the protected-customer flag of meter {meter.id} "
        f"(change {change.id}); it stays set until a second person approves",
    )
    return change


def pending_for(session: Session, meter_id: str) -> ProtectionChange | None:
    return session.scalars(
        select(ProtectionChange).where(
            ProtectionChange.meter_id == meter_id, ProtectionChange.state == PENDING
        )
    ).first()


def approve(
    session: Session, change_id: int, actor: Actor, *, now: datetime | None = None
) -> ProtectionChange:
    """A second person (approver, not the requester) clears the flag. Does not commit."""
    if not actor.at_least("approver"):
        raise PermissionDenied(f"{actor.name} ({actor.role}) may not approve protection changes")
    change = session.get(ProtectionChange, change_id)
    if change is None:
        raise NotFound(f"protection change {change_id} does not exist")
    if change.state != PENDING:
        raise Conflict(f"protection change {change_id} is already {change.state}")
    if person(change.requested_by) == person(actor.name):
        raise PermissionDenied("the approver must be a different person from the requester")
    meter = session.get(Meter, change.meter_id)
    if meter is None:
        raise NotFound(f"meter {change.meter_id} does not exist")
    meter.protected_customer = False
    change.state = APPROVED
    change.decided_by = actor.name
    change.decided_at = now or utcnow()
    with stale_to_conflict(session, f"protection change {change_id} not approved"):
        session.flush()
    raise_alarm(
        "protection_removed",
        f"protected-customer flag of meter {meter.id} cleared: asked by "
        f"{change.requested_by}, approved by {actor.name} (change {change.id})",
    )
    return change


def list_changes(
    session: Session, *, state: str | None = None, limit: int = 1000, offset: int = 0
) -> list[ProtectionChange]:
    query = select(ProtectionChange)
    if state is not None:
        query = query.where(ProtectionChange.state == state)
    return list(
        session.scalars(query.order_by(ProtectionChange.id.desc()).limit(limit).offset(offset))
    )
