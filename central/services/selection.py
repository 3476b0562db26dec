"""Which validated orders one claim may send now, within every limit: in-flight caps
per concentrator (reconnects in their own lane, claimed first), the fleet-wide
disconnects per minute, approvals, holds, protected customers, the day rules, and one
order in flight per meter. On PostgreSQL the replicas take their claims one at a time
under an advisory lock (held until the claim's first commit) and lock the rows they
select (SKIP LOCKED)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import exists, func, select, text
from sqlalchemy.orm import Session

from central import metrics
from central.db import one_of
from central.models import Concentrator, Meter, Order
from central.services import holds, reconnect_lane, validation
from central.services.commands import weekend_allowed
from central.settings import Settings
from central.state import IN_FLIGHT_STATES, OrderState
from shared.codes import Action, OrderReason

IN_FLIGHT = [s.value for s in IN_FLIGHT_STATES]

_READY_COLUMNS = (
    Order.id,
    Order.meter_id,
    Order.concentrator_id,
    Order.action,
    Order.reason,
    Order.priority,
    Order.deadline,
    Order.not_before,
    Order.updated_at,
    Order.special,
    Order.approved_by,
    Order.created_at,
)


_CLAIM_LOCK_KEY = 0x52434402
_LOCKED_AT = "rcd_claim_locked_at"  # session.info: when this transaction took the claim lock
CLAIM_SIZE = 5000  # orders signed and committed per claim; a pass claims until none is left
# A pass's first claim is small: a batch's first commands then leave after a hundred
# signatures rather than the whole batch's (the ids are random, so a hundred reach nearly
# every concentrator of the batch), and its lines start while the rest is being claimed.
FIRST_CLAIM_SIZE = 100
_PAGE = 5000  # candidates read per query while selecting one claim


def select_ready(
    session: Session, settings: Settings, now: datetime, limit: int | None = None
) -> list[Any]:
    """Validated orders that may go now, within every limit (rows of ``_READY_COLUMNS``),
    at most ``limit``. Locks them on PostgreSQL (SKIP LOCKED) so that replicas do not pick
    the same ones.

    Candidates are read in pages, best first; each page leaves out what can no longer go
    (concentrators at their in-flight cap, disconnects once the minute's budget is spent),
    so orders that wait behind a capped concentrator never hide ready ones behind them.
    """
    if session.get_bind().dialect.name == "postgresql":
        # One claim at a time across replicas: SKIP LOCKED alone lets a second replica take
        # the next candidates while the first one's dispatches are uncommitted, and both
        # would spend the same fleet-wide disconnect budget and in-flight caps (released
        # when the claim's transaction ends).
        asked = time.perf_counter()
        session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _CLAIM_LOCK_KEY})
        session.info[_LOCKED_AT] = time.perf_counter()
        metrics.CLAIM_LOCK.labels(phase="wait").observe(session.info[_LOCKED_AT] - asked)
    limit = CLAIM_SIZE if limit is None else limit
    waiting = select(Order.id).where(Order.state == OrderState.VALIDATED.value).limit(1)
    if session.execute(waiting).first() is None:
        return []  # the usual pass: nothing waits, so no limit needs reading
    limits = _Limits.read(session, settings, now)
    ready: list[Any] = []
    for reconnects in (True, False):  # reconnects are claimed first
        after: Any = None
        while len(ready) < limit:
            # Core rows, not the ORM's: plain columns need none of its per-row work
            # (nothing is pending here to flush; the claim's own transaction)
            page = list(session.connection().execute(
                _candidates(session, limits, after, _PAGE, reconnects)
            ))
            if not page:
                break
            after = page[-1]
            limits.mark_busy(session, page)
            for order in page:
                if len(ready) < limit and limits.admit(order):
                    ready.append(order)
            if len(page) < _PAGE:
                break
    return ready


@dataclass
class _Limits:
    """What bounds one claim: in-flight per concentrator, busy meters, the disconnect
    budget of the minute, and the day rules for disconnects."""

    settings: Settings
    now: datetime
    inflight: dict[str, int]
    busy_meters: set[str]
    disconnect_budget: int
    working_day: bool
    moratorium: bool
    holds: holds.HoldRules  # issue 17: disconnects that wait (offline, declared, supply off)
    reconnects: reconnect_lane.ReconnectLane

    @classmethod
    def read(cls, session: Session, settings: Settings, now: datetime) -> _Limits:
        inflight, reconnects = reconnect_lane.read_inflight(session, settings)
        recent_disconnects = (
            session.scalar(
                select(func.count()).where(
                    Order.action == Action.DISCONNECT.value,
                    Order.dispatched_at >= now - timedelta(seconds=60),
                )
            )
            or 0
        )
        # The working-day and moratorium rules hold on the day the relay is switched, not
        # only on the day the order was accepted: a disconnect accepted on Friday that waits
        # (not_before, rate limit, approval) past midnight into a Saturday or a holiday in
        # America/Santiago is held until a working day (unless special).
        today = validation.local_day(now, settings.timezone)
        return cls(
            settings=settings,
            now=now,
            inflight=inflight,
            busy_meters=set(),
            disconnect_budget=settings.disconnects_per_minute - recent_disconnects,
            working_day=validation.is_working_day(today, settings.holiday_country),
            moratorium=validation.in_moratorium(today, settings),
            holds=holds.HoldRules.read(session, settings, now),
            reconnects=reconnects,
        )

    def full(self) -> list[str]:
        cap = self.settings.max_inflight_per_concentrator
        return [conc for conc, count in self.inflight.items() if count >= cap]

    def mark_busy(self, session: Session, page: list[Any]) -> None:
        """Meters of ``page`` with an order in flight."""
        wanted = sorted({o.meter_id for o in page} - self.busy_meters)
        for start in range(0, len(wanted), 500):
            busy, superseded = reconnect_lane.split_busy(
                session.execute(
                    select(
                        Order.meter_id, Order.action, Order.superseded_by, Order.cancel_sent_at
                    ).where(
                        Order.state.in_(IN_FLIGHT),
                        one_of(session, Order.meter_id, wanted[start : start + 500]),
                    )
                )
            )
            self.busy_meters.update(busy)
            self.reconnects.superseded.update(superseded)

    def admit(self, order: Any) -> bool:
        conc = order.concentrator_id
        if conc is None:
            return False
        if reconnect_lane.is_reconnect(order.action):
            return self.reconnects.admit(conc, order.meter_id, self.busy_meters)
        if order.meter_id in self.busy_meters:
            return False
        if self.inflight.get(conc, 0) >= self.settings.max_inflight_per_concentrator:
            return False
        if order.action == Action.DISCONNECT.value:
            if not self.working_day and not weekend_allowed(order):
                return False
            if self.moratorium and order.reason == OrderReason.NON_PAYMENT.value:
                return False
            if self.disconnect_budget <= 0:
                return False
            self.disconnect_budget -= 1
        self.inflight[conc] = self.inflight.get(conc, 0) + 1
        self.busy_meters.add(order.meter_id)
        return True


def _candidates(
    session: Session, limits: _Limits, after: Any, size: int, reconnects: bool = False
) -> Any:
    """The next page of validated, approved, sendable orders of one lane (reconnects, or
    the rest) after the row ``after`` (priority first, then age), leaving out what
    ``limits`` already rules out."""
    approved = (Order.needs_approval.is_(False)) | (Order.approved_by.is_not(None))
    # Ley 21.304, checked again at dispatch: a meter flagged protected after its
    # disconnect was accepted is never sent one (``stop_protected_disconnects`` ends it)
    protected = exists().where(Meter.id == Order.meter_id, Meter.protected_customer.is_(True))
    not_protected = (Order.action != Action.DISCONNECT.value) | ~protected
    # Validation refuses a decommissioned concentrator; an order that followed its meter
    # there (``registry.follow_meter_move``), or whose concentrator was decommissioned
    # after it was accepted, waits as for an unlinked meter: that agent's meter table is
    # no longer kept, so it is never sent a command.
    in_service = exists().where(
        Concentrator.id == Order.concentrator_id, Concentrator.decommissioned.is_(False)
    )
    query = select(*_READY_COLUMNS).where(
        Order.state == OrderState.VALIDATED.value,
        Order.deadline > limits.now,  # past it: the sweep ends it expired, never sent
        approved,
        not_protected,
        in_service,
        reconnect_lane.lane_filter(reconnects),
    )
    query = query.where(~limits.holds.waiting())  # issue 17: held disconnects wait
    full = limits.reconnects.full() if reconnects else limits.full()
    if full:
        query = query.where(Order.concentrator_id.not_in(full))
    if limits.disconnect_budget <= 0 or not limits.working_day:
        # no disconnect can go (special ones may on a non-working day, if budget is left)
        no_disconnect = Order.action != Action.DISCONNECT.value
        query = query.where(
            no_disconnect if limits.disconnect_budget <= 0 else no_disconnect | Order.special
        )
    if limits.moratorium:
        query = query.where(
            (Order.action != Action.DISCONNECT.value)
            | (Order.reason != OrderReason.NON_PAYMENT.value)
        )
    if after is not None:
        query = query.where(
            (Order.priority < after.priority)
            | (
                (Order.priority == after.priority)
                & (
                    (Order.created_at > after.created_at)
                    | ((Order.created_at == after.created_at) & (Order.id > after.id))
                )
            )
        )
    query = query.order_by(Order.priority.desc(), Order.created_at, Order.id).limit(size)
    if session.get_bind().dialect.name == "postgresql":
        query = query.with_for_update(skip_locked=True)
    return query


def claim_committed(session: Session) -> None:
    """The claim's transaction ended: the replicas' claim lock is free again."""
    locked_at = session.info.pop(_LOCKED_AT, None)
    if locked_at is not None:
        metrics.CLAIM_LOCK.labels(phase="held").observe(time.perf_counter() - locked_at)


