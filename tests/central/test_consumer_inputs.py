"""Agent messages that JSON parses but the contract cannot carry are dropped (acknowledged),
not left unacknowledged to come back after every reconnect, and change nothing."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from sqlalchemy.orm import Session, sessionmaker

from central.coordinator import Coordinator
from central.services import orders
from central.settings import Settings
from shared import topics
from shared.contracts import EnergyReading, OrderReceipt, OrderResult, Outcome

from .conftest import OPERATOR, WORKDAY, add_meters


def _order(settings: Settings, factory: sessionmaker[Session]) -> str:
    with factory() as session:
        add_meters(session, 1)
        item = orders.create_orders(
            session,
            [orders.OrderRequest(meter_id="m0", action="connect", reason="payment_restored")],
            OPERATOR,
            settings,
            now=WORKDAY,
        ).items[0]
        session.commit()
    assert item.order_id is not None
    return item.order_id


@pytest.mark.parametrize("literal", [b"NaN", b"Infinity", b"1e400"])
def test_result_with_a_non_finite_energy_is_dropped(
    settings: Settings, factory: sessionmaker[Session], literal: bytes
) -> None:
    order_id = _order(settings, factory)
    now = datetime.now(UTC)
    result = OrderResult(
        order_id=order_id, meter_id="m0", concentrator_id="conc-a", outcome=Outcome.CONNECTED,
        energy=EnergyReading(value=1.5, unit="Wh", read_at=now), finished_at=now,
    )
    payload = result.to_json().replace(b'"value":1.5', b'"value":' + literal)
    coordinator = Coordinator(settings, factory)
    assert coordinator.handle_result(topics.results("conc-a"), payload) is True
    with factory() as session:
        order = orders.get_order(session, order_id)
        assert order.state == "validated" and order.result_json is None


def test_message_with_a_number_over_the_digit_limit_is_dropped(
    settings: Settings, factory: sessionmaker[Session]
) -> None:
    order_id = _order(settings, factory)
    receipt = OrderReceipt(order_id=order_id, command_id="cmd-1", meter_id="m0",
                           concentrator_id="conc-a", received_at=datetime.now(UTC), queue_depth=1)
    payload = receipt.to_json().replace(b'"queue_depth":1', b'"queue_depth":' + b"1" * 5000)
    coordinator = Coordinator(settings, factory)
    assert coordinator.handle_result(topics.results("conc-a"), payload) is True
    with factory() as session:
        order = orders.get_order(session, order_id)
        assert order.state == "validated" and order.result_json is None
