"""When a staging of disconnects waits for a second person (role approver).

No single operator may let more than ``approval_threshold`` relays open within
one ``approval_window_s``. Three ways to try, three counts:

- one batch over the threshold;
- many small batches (or single orders, REST or SOAP) accepted within one window:
  counted by acceptance time (``Batch.created_at``);
- batches accepted far apart but all staged to switch at the same moment
  (``not_before``): counted by the time each relay may first switch,
  ``max(not_before, accepted_at)``. Every window that holds one of the new
  disconnects is checked: if any would hold more than the threshold, the batch
  is held.

Disconnects a second person approved, and refused ones, count nowhere.

And one protection lifted: the ``special`` flag lets a disconnect switch on a
weekend or holiday. A batch whose special disconnects would switch on such a
day is held for a second person too, with an alarm; the dispatcher lets a
special disconnect go on a non-working day only once a second person approved
it (otherwise it waits for a working day, as without the flag).
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Sequence
from datetime import datetime, timedelta
from itertools import accumulate

from sqlalchemy import and_, func, or_, select, text
from sqlalchemy.orm import Session

from central.models import Batch, Order
from central.services import validation
from central.services.protections import raise_alarm
from central.settings import Settings
from central.state import OrderState
from shared.codes import Action

# Serialises the rolling-window counts between concurrent creators on PostgreSQL
# (SQLite callers already hold the database's write lock): two requests must not
# both see room.
_APPROVAL_LOCK_KEY = 0x52434401


def hold_reason(
    session: Session,
    settings: Settings,
    now: datetime,
    batch_id: str,
    disconnects: Sequence[tuple[datetime, bool]],
) -> str | None:
    """Why the batch's accepted disconnects, each (first switching time, special), must
    wait for a second person, or None."""
    switch_times = [at for at, _special in disconnects]
    count, threshold = len(switch_times), settings.approval_threshold
    if count == 0:
        return None
    if count > threshold:
        return (
            f"batch {batch_id} holds {count} disconnects, over the "
            f"threshold of {threshold}: a second person must approve"
        )
    off_days = sorted(
        {
            validation.local_day(at, settings.timezone)
            for at, special in disconnects
            if special and not _working_day(at, settings)
        }
    )
    if off_days:
        detail = (
            f"batch {batch_id}: disconnects flagged special would switch on "
            f"{', '.join(d.isoformat() for d in off_days)}, not a working day: the "
            "weekend rule is lifted only with a second person's approval"
        )
        raise_alarm("special_disconnects_held", detail)
        return detail
    window = settings.approval_window_s
    if window <= 0:
        return None
    if session.get_bind().dialect.name == "postgresql":
        session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _APPROVAL_LOCK_KEY})
    recent = _accepted_since(session, now - timedelta(seconds=window))
    if count + recent > threshold:
        return (
            f"batch {batch_id} holds {count} disconnects; with the "
            f"{recent} accepted without approval in the last "
            f"{window} s that is over the threshold of "
            f"{threshold}: a second person must approve"
        )
    busiest, start = _busiest_switching_window(
        session, timedelta(seconds=window), switch_times, threshold
    )
    if busiest > threshold:
        return (
            f"batch {batch_id} holds {count} disconnects; with those staged without "
            f"approval, {busiest} relays may switch within the {window} s from "
            f"{start.isoformat()}, over the threshold of {threshold}: "
            "a second person must approve"
        )
    return None


def _working_day(at: datetime, settings: Settings) -> bool:
    day = validation.local_day(at, settings.timezone)
    return validation.is_working_day(day, settings.holiday_country)


def switch_time(accepted_at: datetime, not_before: datetime | None) -> datetime:
    """When a relay may first switch: its not_before or its acceptance, the later."""
    return not_before if not_before is not None and not_before > accepted_at else accepted_at


def _accepted_since(session: Session, since: datetime) -> int:
    total = session.scalar(
        select(func.coalesce(func.sum(Batch.disconnects), 0)).where(
            Batch.created_at >= since, Batch.needs_approval.is_(False)
        )
    )
    return int(total or 0)


def _busiest_switching_window(
    session: Session, window: timedelta, new: Sequence[datetime], threshold: int
) -> tuple[int, datetime]:
    """The most disconnects (staged ones without approval plus ``new``) whose switching
    times fall in one half-open window ``[a, a + window)`` that holds a new one; or,
    when even all the staged ones near the new ones stay within ``threshold``, that
    count (an upper bound), without reading them one by one."""
    low, high = min(new) - window, max(new) + window
    near = (
        Order.action == Action.DISCONNECT.value,
        Order.needs_approval.is_(False),
        Order.state != OrderState.REJECTED.value,
        # the switching time lies in [low, high] only if one of them does
        or_(
            and_(Order.created_at >= low, Order.created_at <= high),
            and_(Order.not_before >= low, Order.not_before <= high),
        ),
    )
    bound = len(new) + int(session.scalar(select(func.count()).where(*near)) or 0)
    if bound <= threshold:  # no window can hold more than all of them
        return bound, new[0]
    rows = session.execute(select(Order.created_at, Order.not_before).where(*near))
    staged = [switch_time(accepted, not_before) for accepted, not_before in rows]
    events = sorted([(t, 0) for t in staged if low <= t <= high] + [(t, 1) for t in new])
    times = [t for t, _ in events]
    new_before = [0, *accumulate(flag for _, flag in events)]  # new ones before index i
    best, best_start = 0, new[0]
    for i, start in enumerate(times):
        end = bisect_left(times, start + window)
        if new_before[end] - new_before[i] and end - i > best:
            best, best_start = end - i, start
    return best, best_start
