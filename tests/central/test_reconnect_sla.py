"""The reconnection SLA clock (issue 17, item 3) with a fixed clock, on SQLite and
PostgreSQL: warnings at the configured fractions on the order's timeline, a field work
order proposed the crew's travel time before the SLA end when the remote path fails
(kept if the order fails, cancelled if it connects remotely), the at-risk listing."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import timedelta

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session

from central.app import create_app
from central.models import Concentrator, Order, WorkOrder
from central.services import orders, reconnect_sla, results, workorders
from central.settings import Settings
from shared.codes import ControlState, Outcome
from shared.contracts import RelayReading

from .conftest import WORKDAY, add_meters
from .test_api import TOKENS_SETTING, auth
from .test_orders import result_for
from .test_safety_review import create, req

Meters = Callable[..., list[str]]
HOUR = timedelta(hours=1)


def _reconnect(session: Session, settings: Settings, meter: str = "m0") -> Order:
    item = create(
        session, settings, [req(meter, "connect", deadline=WORKDAY + 30 * HOUR)]
    ).items[0]
    return orders.get_order(session, item.order_id or "")


def _offline(session: Session, concentrator: str = "conc-a") -> None:
    conc = session.get(Concentrator, concentrator)
    assert conc is not None
    conc.online, conc.status_at = False, WORKDAY
    session.commit()


def _lines(session: Session, order_id: str, event: str) -> list[str]:
    session.expire_all()
    return [e.detail for e in orders.get_order(session, order_id).events if e.event == event]


def test_warnings_at_each_fraction_once_on_the_timeline(
    settings: Settings, session: Session, meters: Meters
) -> None:
    meters(1)
    order = _reconnect(session, settings)
    assert order.sla_due_at == WORKDAY + 24 * HOUR  # visible on the order from the start
    assert reconnect_sla.sweep(session, settings, now=WORKDAY + 11 * HOUR) == 0
    assert reconnect_sla.sweep(session, settings, now=WORKDAY + 12 * HOUR) == 1
    assert reconnect_sla.sweep(session, settings, now=WORKDAY + 13 * HOUR) == 0  # once
    assert reconnect_sla.sweep(session, settings, now=WORKDAY + 20 * HOUR) == 1
    lines = _lines(session, order.id, "sla_warning")
    assert len(lines) == 2
    assert lines[0].startswith("reconnection SLA 50% used") and "12.0 h left" in lines[0]
    assert lines[1].startswith("reconnection SLA 80% used")
    assert orders.get_order(session, order.id).sla_warned == 0.8
    # a disconnect has no SLA clock
    meters(1, prefix="d")
    disconnect = create(session, settings, [req("d0")]).items[0].order_id or ""
    assert orders.get_order(session, disconnect).sla_due_at is None


def test_work_order_proposed_the_lead_time_before_the_end_when_the_path_fails(
    settings: Settings, session: Session, meters: Meters
) -> None:
    settings.reconnect_sla_field_lead_s = 6 * 3600
    meters(2)
    failing = _reconnect(session, settings, "m0")
    _offline(session)
    # before the lead time: only warnings
    reconnect_sla.sweep(session, settings, now=WORKDAY + 17 * HOUR)
    assert workorders.work_order_for(session, failing.id) is None
    reconnect_sla.sweep(session, settings, now=WORKDAY + 18 * HOUR)
    work_order = workorders.work_order_for(session, failing.id)
    assert work_order is not None and work_order.status == "open"
    assert work_order.reason == "reconnect_sla_at_risk"
    assert "concentrator conc-a is offline" in work_order.detail and "6.0 h left" in work_order.detail
    assert _lines(session, failing.id, "work_order_proposed")
    # the order still runs remotely; a second sweep proposes nothing more
    assert orders.get_order(session, failing.id).state == "validated"
    reconnect_sla.sweep(session, settings, now=WORKDAY + 19 * HOUR)
    assert session.query(WorkOrder).count() == 1


def test_no_work_order_while_the_remote_path_works(
    settings: Settings, session: Session, meters: Meters
) -> None:
    meters(1)
    conc_online = _reconnect(session, settings)
    conc = session.get(Concentrator, "conc-a")
    assert conc is not None
    conc.online, conc.status_at = True, WORKDAY
    session.commit()
    reconnect_sla.sweep(session, settings, now=WORKDAY + 23 * HOUR)
    assert workorders.work_order_for(session, conc_online.id) is None
    assert len(_lines(session, conc_online.id, "sla_warning")) == 1  # 80 % at once


def test_proposed_work_order_cancelled_when_the_reconnect_succeeds_remotely(
    settings: Settings, session: Session, meters: Meters
) -> None:
    meters(2)
    done = _reconnect(session, settings, "m0")
    lost = _reconnect(session, settings, "m1")
    _offline(session)
    reconnect_sla.sweep(session, settings, now=WORKDAY + 21 * HOUR)
    for order in (done, lost):
        order.state = "dispatched"  # the concentrator came back and took them
    session.commit()
    relay = RelayReading(output_state=True, control_state=ControlState.CONNECTED, control_mode=1)
    results.apply_result(session, result_for(done.id, "m0", Outcome.CONNECTED, relay=relay))
    results.apply_result(
        session, result_for(lost.id, "m1", Outcome.FAILED, reason="meter_not_responding")
    )
    session.commit()
    kept = workorders.work_order_for(session, lost.id)
    cancelled = workorders.work_order_for(session, done.id)
    assert kept is not None and kept.status == "open"
    assert cancelled is not None and cancelled.status == "cancelled"
    assert _lines(session, lost.id, "work_order_kept")
    assert reconnect_sla.at_risk(session, settings, now=WORKDAY + 22 * HOUR) == []


def test_at_risk_lists_the_most_urgent_first(
    settings: Settings, session: Session, meters: Meters
) -> None:
    meters(3)
    early = _reconnect(session, settings, "m0")
    create(
        session,
        settings,
        [req("m1", "connect", deadline=WORKDAY + 40 * HOUR)],
        now=WORKDAY + 5 * HOUR,
    )
    create(session, settings, [req("m2", "connect")], now=WORKDAY + 20 * HOUR)  # young
    risky = reconnect_sla.at_risk(session, settings, now=WORKDAY + 25 * HOUR)
    assert [c.meter_id for c in risky] == ["m0", "m1"]
    assert risky[0].order_id == early.id and risky[0].breached and not risky[1].breached
    assert reconnect_sla.summary(session, settings, now=WORKDAY + 25 * HOUR)["breached"] == 1


@pytest.fixture
def api(settings: Settings) -> Iterator[TestClient]:
    with_tokens = Settings.model_validate(
        {**settings.model_dump(), "api_tokens": TOKENS_SETTING}
    )
    with TestClient(create_app(with_tokens)) as client:
        yield client


def test_rest_listing_and_dashboard_tile(
    api: TestClient, settings: Settings, session: Session
) -> None:
    add_meters(session, 1)
    create(session, settings, [req("m0", "connect", deadline=WORKDAY + 30 * HOUR)], now=WORKDAY)
    _offline(session)  # remote path failing: at risk whatever the time
    answer = api.get("/api/v1/reconnects/sla-at-risk", headers=auth("viewer")).json()
    assert answer["summary"]["at_risk"] == 1 and answer["summary"]["remote_failing"] == 1
    assert answer["orders"][0]["meter_id"] == "m0"
    assert "offline" in answer["orders"][0]["remote_path_failing"]
    stats = api.get("/dashboard/api/stats", headers=auth("viewer")).json()
    assert stats["reconnect_sla"]["at_risk"] == 1
    metrics = api.get("/metrics", headers=auth("viewer")).text
    assert 'rcd_reconnect_sla_at_risk{kind="at_risk"} 1.0' in metrics
