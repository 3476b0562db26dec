"""An order that expired in flight tells the technician where to go (SQLite and
PostgreSQL): the concentrator's SIM or modem when its last status said so, otherwise
the meter (reason ``expired``), with the concentrator named when it is offline."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta

import pytest
from sqlalchemy.orm import Session

from central.services import dispatch, orders, registry, results, workorders
from central.services.registry import MeterChange
from central.settings import Settings
from shared.codes import ModemState, Outcome, ReasonCode, SimState
from shared.contracts import ConcentratorStatus
from shared.signing import CommandSigner

from .conftest import OPERATOR, WORKDAY, RecordingPublisher
from .test_orders import create_one, req, result_for

Meters = Callable[..., list[str]]


@pytest.mark.parametrize(
    ("online", "modem", "sim", "reason", "named"),
    [
        (True, ModemState.OK, SimState.OK, "expired", None),
        (False, ModemState.OK, SimState.OK, "expired", "conc-a is offline"),
        (True, ModemState.DOWN, SimState.OK, "concentrator_modem_fault", "modem down"),
        (False, ModemState.DEGRADED, SimState.ABSENT, "concentrator_sim_fault", "SIM absent"),
        (True, ModemState.OK, SimState.ERROR, "concentrator_sim_fault", "SIM error"),
    ],
)
def test_in_flight_expiry_names_the_concentrator_fault(
    session: Session,
    settings: Settings,
    meters: Meters,
    publisher: RecordingPublisher,
    signer: CommandSigner,
    online: bool,
    modem: ModemState,
    sim: SimState,
    reason: str,
    named: str | None,
) -> None:
    meters(1)
    order_id = create_one(session, settings, req("m0", "connect", "payment_restored")).order_id
    assert order_id is not None
    assert dispatch.dispatch_ready(session, publisher, signer, settings, now=WORKDAY) == 1
    status = ConcentratorStatus(
        concentrator_id="conc-a", online=online, at=WORKDAY, modem=modem, sim=sim
    )
    assert results.apply_status(session, status)
    session.commit()

    assert dispatch.sweep_expired(session, now=WORKDAY + timedelta(days=3)) == 1
    order = orders.get_order(session, order_id)
    assert order.state == "expired" and order.result_reason == reason
    [work] = workorders.list_work_orders(session, meter_id="m0")
    assert work.reason == reason and work.concentrator_id == "conc-a"
    assert "never reached the agent" in work.detail
    if named is not None:
        assert named in work.detail
    else:
        assert "conc-a" not in work.detail


def test_expiry_before_dispatch_is_not_blamed_on_the_concentrator(
    session: Session, settings: Settings, meters: Meters
) -> None:
    meters(1)
    order_id = create_one(session, settings, req("m0", "connect", "payment_restored")).order_id
    assert order_id is not None
    status = ConcentratorStatus(
        concentrator_id="conc-a", online=False, at=WORKDAY, sim=SimState.ABSENT
    )
    results.apply_status(session, status)
    session.commit()
    dispatch.sweep_expired(session, now=WORKDAY + timedelta(days=3))
    [work] = workorders.list_work_orders(session, meter_id="m0")
    assert work.reason == "expired" and work.detail == "deadline passed before dispatch"


def test_protected_customers_disconnect_that_expires_in_flight_gets_no_disconnect_work_order(
    session: Session,
    settings: Settings,
    meters: Meters,
    publisher: RecordingPublisher,
    signer: CommandSigner,
) -> None:
    """Ley 21.304: the meter was flagged protected while its disconnect was in flight; the
    agent never answered the order nor its cancel. A field work order to disconnect would
    have a crew do what the law forbids: none is created, the timeline says why."""
    meters(1)
    order_id = create_one(session, settings, req("m0")).order_id
    assert order_id is not None
    assert dispatch.dispatch_ready(session, publisher, signer, settings, now=WORKDAY) == 1
    registry.change_meter(session, "m0", MeterChange(protected_customer=True))
    session.commit()
    assert orders.get_order(session, order_id).cancel_requested

    assert dispatch.sweep_expired(session, now=WORKDAY + timedelta(days=3)) == 1
    order = orders.get_order(session, order_id)
    assert order.state == "expired"
    assert workorders.list_work_orders(session, meter_id="m0") == []
    [line] = [e for e in order.events if e.event == "no_work_order"]
    assert "21.304" in line.detail
    # Legacy is still told (step 9)
    assert [n.order_id for n in orders.pending_notifications(session, now=WORKDAY + timedelta(days=3))] == [order_id]


def test_disconnect_superseded_in_flight_that_expires_gets_no_work_order(
    session: Session,
    settings: Settings,
    meters: Meters,
    publisher: RecordingPublisher,
    signer: CommandSigner,
) -> None:
    """The customer paid while the disconnect was on its way: the reconnect supersedes
    it. If the disconnect then expires unanswered, no crew is sent to finish it."""
    meters(1)
    cut = create_one(session, settings, req("m0")).order_id
    assert dispatch.dispatch_ready(session, publisher, signer, settings, now=WORKDAY) == 1
    restore = create_one(session, settings, req("m0", "connect", "payment_restored")).order_id
    assert cut is not None and restore is not None
    assert orders.get_order(session, cut).cancel_requested

    dispatch.sweep_expired(session, now=WORKDAY + timedelta(days=3))
    session.expire_all()
    order = orders.get_order(session, cut)
    assert order.state == "expired"
    assert [w for w in workorders.list_work_orders(session) if w.order_id == cut] == []
    [line] = [e for e in order.events if e.event == "no_work_order"]
    assert f"superseded by order {restore}" in line.detail and line.step == 10


def test_order_cancelled_in_flight_that_fails_gets_no_work_order(
    session: Session,
    settings: Settings,
    meters: Meters,
    publisher: RecordingPublisher,
    signer: CommandSigner,
) -> None:
    meters(1)
    order_id = create_one(session, settings, req("m0", "connect", "payment_restored")).order_id
    assert order_id is not None
    dispatch.dispatch_ready(session, publisher, signer, settings, now=WORKDAY)
    orders.cancel_order(session, order_id, OPERATOR)
    session.commit()
    failed = result_for(
        order_id, "m0", Outcome.FAILED, reason=ReasonCode.METER_NOT_RESPONDING
    )
    assert results.apply_result(session, failed) == "applied"
    session.commit()
    session.expire_all()
    order = orders.get_order(session, order_id)
    assert order.state == "failed"
    assert workorders.list_work_orders(session, meter_id="m0") == []
    assert [e.event for e in order.events][-1] == "no_work_order"


def test_disconnect_the_agent_refused_as_protected_gets_no_work_order(
    session: Session,
    settings: Settings,
    meters: Meters,
    publisher: RecordingPublisher,
    signer: CommandSigner,
) -> None:
    """Issue 17: the coordinator's registry says nothing (its database may be the
    compromised part), but the agent holds the protect authority's list and refused the
    disconnect: the order ends failed with that reason, Legacy is told, no crew is sent."""
    meters(1)
    order_id = create_one(session, settings, req("m0")).order_id
    assert order_id is not None
    assert dispatch.dispatch_ready(session, publisher, signer, settings, now=WORKDAY) == 1
    refused = result_for(order_id, "m0", Outcome.FAILED, attempts=[],
                         reason=ReasonCode.PROTECTED_CUSTOMER_EDGE, detail="on the list")
    assert results.apply_result(session, refused, now=WORKDAY + timedelta(minutes=1)) == "applied"
    session.commit()
    order = orders.get_order(session, order_id)
    assert order.state == "failed" and order.result_reason == "protected_customer_edge"
    assert workorders.list_work_orders(session, meter_id="m0") == []
    [line] = [e for e in order.events if e.event == "no_work_order"]
    assert "protect authority" in line.detail
    pending = orders.pending_notifications(session, now=WORKDAY + timedelta(minutes=2))
    assert [n.order_id for n in pending] == [order_id]
