"""Anomaly detection: disconnects over a scope's limits are quarantined (issue 17).

Every batch of accepted disconnects is counted, before it is stored, in five kinds of
scope: its source (the authenticated caller: ``created_by``, a REST operator or
``soap:<name>``), its meter's concentrator, comuna and region (registry fields) and the
whole fleet. For each scope the new batch touches:

    counted   = disconnects of that scope accepted in the last ``window_s`` (at most
                now), never quarantined and not refused, plus the batch's own
    baseline  = mean, over the last ``baseline_weeks`` weeks, of the disconnects of that
                scope accepted in the same window one, two, ... weeks earlier (same
                weekday and hour); refused and deleted ones do not count, released
                ones do
    threshold = min(limit, max(floor, ceil(factor x baseline)))   (limit alone when
                ``baseline_weeks`` is 0)

``counted > threshold``: the batch's disconnects in that scope are quarantined (state
``quarantined``: never signed, published nor claimed), an alarm is raised, and they
join the scope's open quarantine or open one. Quarantined disconnects count in no
later window (the first ``threshold`` of the window still do, so once a scope is at
its threshold every further disconnect in it is quarantined until the window moves).
Reconnects and arms are never counted nor quarantined. Decisions: quarantine.py.
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Final, Protocol, cast

from sqlalchemy import Table, func, select, text, update
from sqlalchemy.orm import Session

from central import bulk, metrics
from central.models import Meter, Order, Quarantine
from central.services.ids import new_id
from central.services.protections import raise_alarm
from central.settings import AnomalySettings, Settings
from central.state import Event, OrderState
from shared.codes import Action

log = logging.getLogger(__name__)

SCOPE_KINDS: Final = ("source", "concentrator", "comuna", "region", "fleet")
FLEET: Final = "all"
OPEN: Final = "open"
_LOCK_KEY: Final = 0x52434417  # serialises the counts between creators on PostgreSQL
_CHUNK: Final = 500

Scope = tuple[str, str]  # (kind, value)


class PendingDisconnect(Protocol):
    """What the detector reads of an order being created (intake._Pending)."""

    id: str
    meter_id: str
    state: str
    row: dict[str, Any]


Advance = Callable[[Any, Event, str, str], None]


@dataclass(frozen=True)
class Trip:
    scope: Scope
    counted: int
    threshold: int
    limit: int
    baseline: float | None

    def describe(self, window_s: int) -> str:
        kind, value = self.scope
        where = "fleet-wide" if kind == "fleet" else f"for {kind} {value}"
        base = (
            ""
            if self.baseline is None
            else f"; mean of the same weekday and hour {self.baseline:.1f}"
        )
        return (
            f"anomaly: {self.counted} disconnects {where} in the last {window_s} s, over "
            f"the threshold of {self.threshold} (limit {self.limit}{base}): quarantined "
            "until a second person releases or deletes them"
        )


def threshold_for(cfg: AnomalySettings, kind: str, baseline: float | None) -> tuple[int, int]:
    """(threshold, configured limit) of a scope kind for a baseline (None: no baseline)."""
    limit = int(getattr(cfg.limits, kind))
    if baseline is None:
        return limit, limit
    floor = int(getattr(cfg.baseline_floor, kind))
    return min(limit, max(floor, math.ceil(cfg.baseline_factor * baseline))), limit


def screen(
    session: Session,
    settings: Settings,
    now: datetime,
    disconnects: Sequence[PendingDisconnect],
    advance: Advance,
) -> dict[str, str]:
    """Quarantine those of ``disconnects`` (accepted, not yet written) that take a scope
    over its threshold: moves each by ``advance`` and sets its ``quarantine_id``.
    Returns {order id: quarantine id}. Writes the quarantine rows (flushed)."""
    cfg = settings.anomaly
    # a disconnect superseded in its own batch (a reconnect after it) is no longer waiting
    disconnects = [d for d in disconnects if d.state == OrderState.VALIDATED.value]
    if not cfg.enabled or not disconnects:
        return {}
    if session.get_bind().dialect.name == "postgresql":
        session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _LOCK_KEY})
    places = _places(session, {d.meter_id for d in disconnects})
    scopes_of = {d.id: _scopes(d.row, places.get(d.meter_id)) for d in disconnects}
    new = Counter(scope for scopes in scopes_of.values() for scope in scopes)
    window = timedelta(seconds=cfg.window_s)
    prior = _counts(session, now - window, now, live_only=True)
    baselines = _baselines(session, cfg, now, window) if cfg.baseline_weeks else None
    trips: dict[Scope, Trip] = {}
    for scope, count in new.items():
        base = None if baselines is None else baselines.get(scope, 0.0)
        threshold, limit = threshold_for(cfg, scope[0], base)
        total = prior.get(scope, 0) + count
        if total > threshold:
            trips[scope] = Trip(scope, total, threshold, limit, base)
    if not trips:
        return {}
    held: dict[str, str] = {}
    joined: Counter[str] = Counter()
    opened: dict[str, dict[str, Any]] = {}
    ids: dict[Scope, str] = {}
    for pending in disconnects:
        tripped = [s for s in scopes_of[pending.id] if s in trips]
        if not tripped:
            continue
        scope = tripped[0]
        trip = trips[scope]
        if scope not in ids:
            ids[scope] = _open_for(session, trip, cfg.window_s, now, opened)
        quarantine_id = ids[scope]
        joined[quarantine_id] += 1
        pending.row["quarantine_id"] = quarantine_id
        detail = f"{trip.describe(cfg.window_s)} (quarantine {quarantine_id})"
        advance(pending, Event.QUARANTINE, "central", detail)
        held[pending.id] = quarantine_id
    # written with Core statements, before the orders that refer to them, without
    # flushing the caller's pending ORM changes
    for quarantine_id, count in joined.items():
        if quarantine_id in opened:
            opened[quarantine_id]["orders"] = count
        else:
            session.execute(
                update(Quarantine)
                .where(Quarantine.id == quarantine_id)
                .values(orders=Quarantine.orders + count)
            )
    bulk.insert_rows(session, cast(Table, Quarantine.__table__), list(opened.values()))
    metrics.QUARANTINE.labels(event="quarantined").inc(len(held))
    return held


def _open_for(
    session: Session, trip: Trip, window_s: int, now: datetime, opened: dict[str, dict[str, Any]]
) -> str:
    """The scope's open quarantine (later disconnects join it), or a new one (alarm)."""
    kind, value = trip.scope
    found = session.scalar(
        select(Quarantine.id).where(
            Quarantine.state == OPEN, Quarantine.scope_kind == kind, Quarantine.scope_value == value
        )
    )
    if found is not None:
        return str(found)
    row: dict[str, Any] = {
        "id": new_id(),
        "scope_kind": kind,
        "scope_value": value,
        "state": OPEN,
        "opened_at": now,
        "window_s": window_s,
        "counted": trip.counted,
        "threshold": trip.threshold,
        "configured_limit": trip.limit,
        "baseline": trip.baseline,
        "orders": 0,
        "detail": trip.describe(window_s),
        "decided_by": None,
        "decided_at": None,
        "decision_note": None,
    }
    opened[row["id"]] = row
    raise_alarm("anomaly_quarantine", f"quarantine {row['id']}: {row['detail']}")
    return str(row["id"])


def _scopes(row: dict[str, Any], place: tuple[str | None, str | None] | None) -> list[Scope]:
    """The scopes of one disconnect, narrowest first (the one its quarantine is named by)."""
    scopes: list[Scope] = [("source", str(row["created_by"]))]
    if row.get("concentrator_id"):
        scopes.append(("concentrator", str(row["concentrator_id"])))
    comuna, region = place or (None, None)
    if comuna:
        scopes.append(("comuna", comuna))
    if region:
        scopes.append(("region", region))
    scopes.append(("fleet", FLEET))
    return scopes


def _places(session: Session, meter_ids: Iterable[str]) -> dict[str, tuple[str | None, str | None]]:
    wanted = sorted(meter_ids)
    found: dict[str, tuple[str | None, str | None]] = {}
    for start in range(0, len(wanted), _CHUNK):
        for meter_id, comuna, region in session.execute(
            select(Meter.id, Meter.comuna, Meter.region).where(
                Meter.id.in_(wanted[start : start + _CHUNK])
            )
        ):
            found[meter_id] = (comuna, region)
    return found


def _counts(session: Session, start: datetime, end: datetime, *, live_only: bool) -> Counter[Scope]:
    """Disconnects accepted in ``(start, end]`` per scope (refused ones never count;
    ``live_only``: quarantined ones, released or not, neither)."""
    query = (
        select(Order.created_by, Order.concentrator_id, Meter.comuna, Meter.region, func.count())
        .select_from(Order)
        .outerjoin(Meter, Meter.id == Order.meter_id)
        .where(
            Order.action == Action.DISCONNECT.value,
            Order.created_at > start,
            Order.created_at <= end,
            Order.refusal_code.is_(None),
        )
        .group_by(Order.created_by, Order.concentrator_id, Meter.comuna, Meter.region)
    )
    if live_only:
        # coalesce, not IS NULL: SQLite would read every order through the
        # quarantine_id index (NULL for nearly all) instead of the window's created_at
        query = query.where(func.coalesce(Order.quarantine_id, "") == "")
    counts: Counter[Scope] = Counter()
    for source, concentrator, comuna, region, count in session.execute(query):
        row = {"created_by": source, "concentrator_id": concentrator}
        for scope in _scopes(row, (comuna, region)):
            counts[scope] += count
    return counts


def _baselines(
    session: Session, cfg: AnomalySettings, now: datetime, window: timedelta
) -> dict[Scope, float]:
    """Mean count per scope of the same window 1..N weeks back (same weekday and hour)."""
    total: Counter[Scope] = Counter()
    for weeks in range(1, cfg.baseline_weeks + 1):
        end = now - timedelta(weeks=weeks)
        total.update(_counts(session, end - window, end, live_only=False))
    return {scope: count / cfg.baseline_weeks for scope, count in total.items()}


def baseline_of(
    session: Session, settings: Settings, scope: Scope, *, now: datetime
) -> dict[str, float | int | None]:
    """What the rule says of one scope now (for the CLI and the REST API)."""
    cfg = settings.anomaly
    window = timedelta(seconds=cfg.window_s)
    counted = _counts(session, now - window, now, live_only=True).get(scope, 0)
    base = _baselines(session, cfg, now, window).get(scope, 0.0) if cfg.baseline_weeks else None
    threshold, limit = threshold_for(cfg, scope[0], base)
    return {"counted": counted, "baseline": base, "threshold": threshold, "limit": limit}
