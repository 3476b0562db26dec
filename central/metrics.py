"""Prometheus metrics.

Process-wide instruments (latency per step, results, publishes) live in
``PROCESS_REGISTRY``; gauges that come from the database (orders by state,
concentrators online) are computed at scrape time by :class:`DatabaseCollector`,
registered per app.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from central.models import (
    Concentrator,
    Hold,
    Meter,
    Order,
    Quarantine,
    RelayAlarm,
    RelayIncident,
)

PROCESS_REGISTRY = CollectorRegistry()

STEP_LATENCY = Histogram(
    "rcd_order_step_latency_seconds",
    "Seconds from an order's previous transition to this one, by brief step and new state",
    ["step", "state"],
    buckets=(0.01, 0.05, 0.1, 0.5, 1, 5, 15, 60, 300, 900, 3600, 14400),
    registry=PROCESS_REGISTRY,
)
# Replicas serialise their claims with an advisory lock (services/dispatch.py): how long
# a claim waited for it, and how long it held it (until the claim committed).
CLAIM_LOCK = Histogram(
    "rcd_claim_lock_seconds",
    "Seconds a dispatch claim waited for the replicas' claim lock, and held it",
    ["phase"],
    buckets=(0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
    registry=PROCESS_REGISTRY,
)
RESULTS = Counter(
    "rcd_results_total", "Results consumed from agents", ["effect"], registry=PROCESS_REGISTRY
)
RECEIPTS = Counter(
    "rcd_receipts_total",
    "Delivery receipts consumed from agents",
    ["effect"],
    registry=PROCESS_REGISTRY,
)
REJECTED = Counter(
    "rcd_rejected_messages_total",
    "Agent messages refused (malformed, too large, wrong topic) and kept for audit",
    registry=PROCESS_REGISTRY,
)
AGENT_REFUSALS = Counter(
    "rcd_agent_refusals_total",
    "Messages an agent could not verify and reported (security events), by reason",
    ["reason"],
    registry=PROCESS_REGISTRY,
)
ACKS = Counter(
    "rcd_agent_message_acks_total",
    "Acknowledgements sent to agents for stored receipts, results and refusals",
    ["kind"],
    registry=PROCESS_REGISTRY,
)
PUBLISHED = Counter(
    "rcd_commands_published_total",
    "Commands acknowledged by the broker",
    ["kind"],
    registry=PROCESS_REGISTRY,
)
PROTECTION_ALARMS = Counter(
    "rcd_protection_alarms",
    "Requests to remove a protection (protected-customer flag, special disconnects) and "
    "removals approved by a second person: each one is an alarm",
    ["kind"],
    registry=PROCESS_REGISTRY,
)

QUARANTINE = Counter(
    "rcd_quarantine_orders",
    "Disconnects quarantined by the anomaly detector, released or deleted by a second person",
    ["event"],
    registry=PROCESS_REGISTRY,
)
HOLDS = Counter(
    "rcd_hold_orders",
    "Disconnects that started or stopped waiting for a hold, by event and reason",
    ["event", "reason"],
    registry=PROCESS_REGISTRY,
)
RELAY_REPORTS = Counter(
    "rcd_relay_reports_total",
    "Relay reports (log entries, audits) received from agents, by effect",
    ["effect"],
    registry=PROCESS_REGISTRY,
)
RELAY_DRIFT = Counter(
    "rcd_relay_drift_events_total",
    "Relay changes no order explains (drift), by the state the meter was seen in",
    ["to_state"],
    registry=PROCESS_REGISTRY,
)
RELAY_ALARMS = Counter(
    "rcd_relay_alarms_total",
    "Relay alarms raised (tamper, welded relay, drift to connected, protected customer cut)",
    ["kind"],
    registry=PROCESS_REGISTRY,
)
RECONNECT_SLA = Counter(
    "rcd_reconnect_sla",
    "Reconnection SLA clock: warnings written on timelines (kind=warning) and field work "
    "orders proposed because the remote path was failing (kind=work_order)",
    ["kind"],
    registry=PROCESS_REGISTRY,
)


class DatabaseCollector(Collector):
    def __init__(
        self, factory: sessionmaker[Session], audit_cycle_s: float = 86400.0
    ) -> None:
        self._factory = factory
        self._audit_cycle_s = audit_cycle_s

    def collect(self) -> Iterator[GaugeMetricFamily]:
        by_state = GaugeMetricFamily("rcd_orders", "Orders by state", labels=["state"])
        online = GaugeMetricFamily("rcd_concentrators_online", "Concentrators reporting online")
        known = GaugeMetricFamily("rcd_concentrators", "Concentrators registered")
        quarantines = GaugeMetricFamily(
            "rcd_quarantines_open", "Open quarantines (anomalies waiting for a second person)"
        )
        held = GaugeMetricFamily(
            "rcd_orders_held", "Validated disconnects held, by reason", labels=["reason"]
        )
        holds = GaugeMetricFamily("rcd_holds_active", "Declared holds in force")
        with self._factory() as session:
            for state, count in session.execute(
                select(Order.state, func.count()).group_by(Order.state)
            ):
                by_state.add_metric([state], count)
            online.add_metric(
                [], session.scalar(select(func.count()).where(Concentrator.online)) or 0
            )
            known.add_metric([], session.scalar(select(func.count(Concentrator.id))) or 0)
            _safety_gauges(session, quarantines, held, holds)
            coverage = audit_coverage(session, self._audit_cycle_s)
            active = session.execute(
                select(RelayAlarm.severity, func.count())
                .where(RelayAlarm.status != "closed")
                .group_by(RelayAlarm.severity)
            ).all()
            incidents = session.scalar(
                select(func.count()).where(RelayIncident.status != "closed")
            )
            airtime_rows = [
                (conc, line, float(share))
                for conc, shares in session.execute(
                    select(Concentrator.id, Concentrator.audit_airtime).where(
                        Concentrator.audit_airtime.is_not(None)
                    )
                )
                for line, share in sorted((shares or {}).items())
            ]
        audited = GaugeMetricFamily(
            "rcd_relay_audit_coverage_ratio",
            "Share of commissioned meters with an audit observation within the last audit cycle",
        )
        audited.add_metric([], coverage)
        alarms = GaugeMetricFamily(
            "rcd_relay_alarms_active", "Relay alarms not closed, by severity", labels=["severity"]
        )
        for severity, count in active:
            alarms.add_metric([severity], count)
        open_incidents = GaugeMetricFamily("rcd_relay_incidents_active", "Incidents not closed")
        open_incidents.add_metric([], incidents or 0)
        airtime = GaugeMetricFamily(
            "rcd_relay_audit_airtime_share",
            "The relay audit's measured share of a line's airtime, as its agent last reported",
            labels=["concentrator", "line"],
        )
        for concentrator, line, share in airtime_rows:
            airtime.add_metric([concentrator, line], share)
        yield by_state
        yield online
        yield known
        yield quarantines
        yield held
        yield holds
        yield audited
        yield alarms
        yield open_incidents
        yield airtime


def _safety_gauges(
    session: Session,
    quarantines: GaugeMetricFamily,
    held: GaugeMetricFamily,
    holds: GaugeMetricFamily,
) -> None:
    now = datetime.now(UTC)
    quarantines.add_metric(
        [], session.scalar(select(func.count()).where(Quarantine.state == "open")) or 0
    )
    for reason, count in session.execute(
        select(Order.hold_reason, func.count())
        .where(Order.state == "validated", Order.hold_reason.is_not(None))
        .group_by(Order.hold_reason)
    ):
        held.add_metric([str(reason)], count)
    holds.add_metric(
        [],
        session.scalar(
            select(func.count()).where(
                Hold.ended_at.is_(None), Hold.starts_at <= now, Hold.ends_at > now
            )
        )
        or 0,
    )


def audit_coverage(session: Session, cycle_s: float, now: datetime | None = None) -> float:
    """Commissioned meters audited within the last ``cycle_s``, as a share (1.0 if none)."""
    since = (now or datetime.now(UTC)) - timedelta(seconds=cycle_s)
    total = session.scalar(select(func.count()).where(Meter.commissioned)) or 0
    if not total:
        return 1.0
    audited = (
        session.scalar(
            select(func.count()).where(Meter.commissioned, Meter.audited_at >= since)
        )
        or 0
    )
    return audited / total


def render(app_registry: CollectorRegistry) -> bytes:
    return generate_latest(PROCESS_REGISTRY) + generate_latest(app_registry)
