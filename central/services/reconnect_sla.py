"""The reconnection SLA clock (issue 17, item 3): a customer's supply is back within
``reconnect_sla_s`` (24 h by Chilean rule) of the reconnect order.

Every reconnect (connect or arm) gets ``sla_due_at`` when it is accepted. The sweep
(:func:`sweep`, run by the coordinator's background pass, any clock given) then

* writes a ``sla_warning`` line on the order's timeline when the order passes each of
  ``reconnect_sla_warn_at`` (fractions of the SLA) still unfinished, once each
  (``sla_warned`` keeps the largest one warned);
* proposes a field work order (``workorders.propose``) once the time left is no more
  than ``reconnect_sla_field_lead_s`` (the crew's travel time) while the remote path is
  failing: the concentrator is offline, the command went ``reconnect_sla_failing_sends``
  times without the agent's receipt, or the order cannot be sent at all (no
  concentrator). The remote attempt goes on: if it succeeds first, the work order is
  cancelled (``lifecycle.on_order_finished``).

"At risk" (:func:`at_risk`, for the dashboard tile, the REST listing, ``rcd ops sla`` and
the metrics): an unfinished reconnect past its first warning, or whose remote path is
failing; ``breached`` once its SLA end passed.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from central import metrics
from central.models import Concentrator, Order, WorkOrder
from central.services import workorders
from central.services.lifecycle import PROPOSED_WHILE_RUNNING, SYSTEM, note, utcnow
from central.services.reconnect_lane import RECONNECT_ACTIONS, is_reconnect
from central.settings import Settings
from central.state import ACTIVE_STATES, OrderState

_ACTIVE = [s.value for s in ACTIVE_STATES]
WORK_ORDER_REASON = PROPOSED_WHILE_RUNNING


def due_at(action: str, accepted: datetime, settings: Settings) -> datetime | None:
    """When a new order's SLA ends: reconnects only."""
    if not is_reconnect(action):
        return None
    return accepted + timedelta(seconds=settings.reconnect_sla_s)


@dataclass(frozen=True)
class Clock:
    """One reconnect's SLA as of ``now``."""

    order_id: str
    meter_id: str
    concentrator_id: str | None
    state: str
    created_at: datetime
    due_at: datetime
    used: float  # fraction of the SLA gone
    failing: str | None  # why the remote path is failing, if it is
    work_order_id: int | None

    @property
    def breached(self) -> bool:
        return self.used >= 1.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "order_id": self.order_id,
            "meter_id": self.meter_id,
            "concentrator_id": self.concentrator_id,
            "state": self.state,
            "created_at": self.created_at.isoformat(),
            "sla_due_at": self.due_at.isoformat(),
            "sla_used": round(self.used, 3),
            "breached": self.breached,
            "remote_path_failing": self.failing,
            "work_order_id": self.work_order_id,
        }


def _failing(order: Order, conc: Concentrator | None, settings: Settings) -> str | None:
    if order.concentrator_id is None or conc is None:
        return "the meter has no concentrator: the order cannot be sent"
    if conc.status_at is not None and not conc.online:
        return f"concentrator {conc.id} is offline (status of {conc.status_at.isoformat()})"
    if (
        order.state == OrderState.DISPATCHED.value
        and order.sends >= settings.reconnect_sla_failing_sends
    ):
        return f"sent {order.sends} times without the agent's receipt"
    return None


def _clocks(session: Session, settings: Settings, now: datetime) -> list[tuple[Order, Clock]]:
    orders = list(
        session.scalars(
            select(Order).where(
                Order.action.in_(sorted(RECONNECT_ACTIONS)), Order.state.in_(_ACTIVE)
            )
        )
    )
    if not orders:
        return []
    concs = {
        c.id: c
        for c in session.scalars(
            select(Concentrator).where(
                Concentrator.id.in_(sorted({o.concentrator_id for o in orders if o.concentrator_id}))
            )
        )
    }
    work: dict[str, int] = {}
    for order_id, work_order_id in session.execute(
        select(WorkOrder.order_id, WorkOrder.id).where(
            WorkOrder.order_id.in_([o.id for o in orders])
        )
    ):
        if order_id is not None:  # work orders of relay alarms have no order
            work[order_id] = work_order_id
    span = timedelta(seconds=settings.reconnect_sla_s)
    out = []
    for order in orders:
        due = order.sla_due_at or order.created_at + span
        total = max((due - order.created_at).total_seconds(), 1.0)
        used = (now - order.created_at).total_seconds() / total
        conc = concs.get(order.concentrator_id) if order.concentrator_id else None
        clock = Clock(
            order.id, order.meter_id, order.concentrator_id, order.state, order.created_at,
            due, used, _failing(order, conc, settings), work.get(order.id),
        )  # fmt: skip
        out.append((order, clock))
    return out


def sweep(session: Session, settings: Settings, *, now: datetime | None = None) -> int:
    """Warnings and field work orders due now (see the module's docstring); commits.
    Returns how many timeline lines or work orders it wrote."""
    now = now or utcnow()
    written = 0
    for order, clock in _clocks(session, settings, now):
        if order.sla_due_at is None:  # accepted before the SLA clock existed
            order.sla_due_at = clock.due_at
        written += _warn(session, order, clock, settings, now)
        lead = timedelta(seconds=settings.reconnect_sla_field_lead_s)
        if clock.work_order_id is None and clock.failing and now >= clock.due_at - lead:
            left = clock.due_at - now
            work_order = workorders.propose(
                session,
                order,
                WORK_ORDER_REASON,
                f"reconnection SLA ends {clock.due_at.isoformat()} "
                f"({_hours(left)} left) and the remote path is failing: {clock.failing}",
                now=now,
            )
            if work_order is not None:
                metrics.RECONNECT_SLA.labels(kind="work_order").inc()
                written += 1
    session.commit()
    return written


def _warn(session: Session, order: Order, clock: Clock, settings: Settings, now: datetime) -> int:
    passed = [f for f in settings.reconnect_sla_warn_at if clock.used >= f]
    if not passed or max(passed) <= (order.sla_warned or 0.0):
        return 0
    order.sla_warned = max(passed)
    metrics.RECONNECT_SLA.labels(kind="warning").inc()
    why = f"; remote path failing: {clock.failing}" if clock.failing else ""
    note(
        session,
        order,
        "sla_warning",
        SYSTEM,
        f"reconnection SLA {round(order.sla_warned * 100)}% used, still {clock.state}: "
        f"ends {clock.due_at.isoformat()} ({_hours(clock.due_at - now)} left){why}",
        step=8,
        at=now,
    )
    return 1


def _hours(left: timedelta) -> str:
    return f"{max(left.total_seconds(), 0.0) / 3600:.1f} h"


def at_risk(session: Session, settings: Settings, *, now: datetime | None = None) -> list[Clock]:
    """Unfinished reconnects past their first warning or whose remote path is failing,
    the most urgent first. Reads only."""
    now = now or utcnow()
    first = min(settings.reconnect_sla_warn_at, default=1.0)
    risky = [c for _, c in _clocks(session, settings, now) if c.used >= first or c.failing]
    return sorted(risky, key=lambda c: c.due_at)


def summary(session: Session, settings: Settings, *, now: datetime | None = None) -> dict[str, int]:
    """Counts for the dashboard tile and the metrics."""
    risky = at_risk(session, settings, now=now)
    return {
        "at_risk": len(risky),
        "breached": sum(1 for c in risky if c.breached),
        "remote_failing": sum(1 for c in risky if c.failing),
        "work_orders": sum(1 for c in risky if c.work_order_id is not None),
    }


class SlaCollector(Collector):
    """``rcd_reconnect_sla_at_risk{kind=...}`` at scrape time (kinds as :func:`summary`)."""

    def __init__(self, factory: sessionmaker[Session], settings: Settings) -> None:
        self._factory = factory
        self._settings = settings

    def collect(self) -> Iterator[GaugeMetricFamily]:
        gauge = GaugeMetricFamily(
            "rcd_reconnect_sla_at_risk",
            "Unfinished reconnects whose SLA is at risk (at_risk), of them breached, with "
            "the remote path failing, and with a field work order proposed",
            labels=["kind"],
        )
        with self._factory() as session:
            for kind, count in summary(session, self._settings).items():
                gauge.add_metric([kind], count)
        yield gauge
