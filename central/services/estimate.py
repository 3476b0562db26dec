"""How long a campaign will take, stated before it starts (issue 14).

A batch ends no sooner than its slowest bound allows:

* the fleet-wide disconnect rate: ``n`` disconnects at ``r`` per minute take ``n / r``
  minutes (the limit alone, whatever the lines could do);
* each concentrator's lines: its orders, one exchange at a time, each taking the
  measured time of recent orders there (the sum of their attempts' durations, which
  is airtime plus the agent's own work), or an assumed time where none was measured;
* the in-flight cap per concentrator bounds how many orders wait at the agent, not its
  pace while the agent works one order at a time; it binds only when it is below one.

The estimate is the largest bound, named, so an operator reads "about 17 min at
600/min (the disconnect rate limit)" before approving. Approval waits, retries and
backoff are not in it: it is the time of a campaign that goes as planned.
"""

from __future__ import annotations

import math
import statistics
import time
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from central.models import Meter, Order
from central.services.lifecycle import utcnow
from central.settings import Settings
from shared.codes import Action

RECENT_ORDERS = 200  # finished orders per concentrator that tell its measured time


@dataclass(frozen=True)
class Estimate:
    seconds: float
    bound: str  # what sets the duration
    orders: int
    disconnects: int
    text: str

    def as_dict(self) -> dict[str, Any]:
        return {
            "seconds": round(self.seconds, 1),
            "bound": self.bound,
            "orders": self.orders,
            "disconnects": self.disconnects,
            "text": self.text,
        }


def estimate(
    orders: Iterable[tuple[str | None, str]],
    *,
    disconnects_per_minute: int,
    order_seconds: Mapping[str, float],
    assumed_order_s: float,
) -> Estimate:
    """``orders``: (concentrator id, action) of each order; ``order_seconds``: measured
    seconds per order on a concentrator (missing: ``assumed_order_s``)."""
    per_concentrator: Counter[str] = Counter()
    disconnects = total = 0
    for concentrator, action in orders:
        total += 1
        disconnects += action == Action.DISCONNECT.value
        if concentrator is not None:
            per_concentrator[concentrator] += 1
    rate_s = 60.0 * disconnects / disconnects_per_minute if disconnects else 0.0
    line_s, slowest, measured = 0.0, "", True
    for concentrator, count in per_concentrator.items():
        each = order_seconds.get(concentrator)
        seconds = count * (each if each is not None else assumed_order_s)
        if seconds > line_s:
            line_s, slowest, measured = seconds, concentrator, each is not None
    if total == 0:
        return Estimate(0.0, "nothing to do", 0, 0, "nothing to do")
    if rate_s >= line_s:
        bound = "the disconnect rate limit"
        text = f"about {_duration(rate_s)} at {disconnects_per_minute}/min ({bound})"
        return Estimate(rate_s, bound, total, disconnects, text)
    count = per_concentrator[slowest]
    each_s = line_s / count
    how = "measured" if measured else "assumed, none measured yet"
    bound = f"the lines of concentrator {slowest}"
    text = (
        f"about {_duration(line_s)} ({bound}: {count} orders at {each_s:.2f} s each, {how})"
    )
    return Estimate(line_s, bound, total, disconnects, text)


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{max(1, math.ceil(seconds))} s"
    if seconds < 90 * 60:
        return f"{round(seconds / 60)} min"
    return f"{seconds / 3600:.1f} h"


def measured_order_seconds(session: Session, concentrators: Iterable[str]) -> dict[str, float]:
    """Median time per order on each concentrator over its recent finished orders (those
    dispatched in the last day, at most ``RECENT_ORDERS`` each): the sum of each order's
    attempt durations, as its agent reported them. One query (on the ``dispatched_at``
    index), kept for a minute: a batch's answer carries the estimate too."""
    wanted = sorted(set(concentrators))
    key = (str(session.get_bind().engine.url), tuple(wanted))
    now = time.monotonic()
    cached = _CACHE.get(key)
    if cached is not None and cached[0] > now:
        return cached[1]
    since = utcnow() - timedelta(days=1)
    samples: dict[str, list[float]] = {}
    for start in range(0, len(wanted), 500):
        rows = session.execute(
            select(Order.concentrator_id, Order.result_json)
            .where(
                Order.dispatched_at >= since,
                Order.finished_at.is_not(None),
                Order.concentrator_id.in_(wanted[start : start + 500]),
            )
            .order_by(Order.dispatched_at.desc())
            .limit(RECENT_ORDERS * 50)
        )
        for concentrator, result in rows:
            mine = samples.setdefault(concentrator, [])
            if len(mine) < RECENT_ORDERS and (seconds := _attempts_seconds(result)) is not None:
                mine.append(seconds)
    found = {c: statistics.median(times) for c, times in samples.items() if times}
    if len(_CACHE) > 1000:
        _CACHE.clear()
    _CACHE[key] = (now + CACHE_S, found)
    return found


CACHE_S = 60.0
_CACHE: dict[tuple[str, tuple[str, ...]], tuple[float, dict[str, float]]] = {}


def _attempts_seconds(result: Any) -> float | None:
    if not isinstance(result, dict):
        return None
    total = 0.0
    for attempt in result.get("attempts") or ():
        try:
            started = datetime.fromisoformat(attempt["started_at"])
            finished = datetime.fromisoformat(attempt["finished_at"])
        except (KeyError, TypeError, ValueError):
            return None
        total += max(0.0, (finished - started).total_seconds())
    return total or None


def estimate_requests(
    session: Session, settings: Settings, requests: Iterable[tuple[str, str]]
) -> Estimate:
    """The estimate for (meter id, action) requests, from the registry and the measured
    times of their concentrators."""
    wanted = list(requests)
    ids = sorted({meter for meter, _ in wanted})
    where: dict[str, str | None] = {}
    for start in range(0, len(ids), 500):
        for meter_id, concentrator_id in session.execute(
            select(Meter.id, Meter.concentrator_id).where(Meter.id.in_(ids[start : start + 500]))
        ):
            where[meter_id] = concentrator_id
    orders = [(where.get(meter), action) for meter, action in wanted if meter in where]
    measured = measured_order_seconds(session, [c for c, _ in orders if c is not None])
    return estimate(
        orders,
        disconnects_per_minute=settings.disconnects_per_minute,
        order_seconds=measured,
        assumed_order_s=settings.campaign_assumed_order_s,
    )
