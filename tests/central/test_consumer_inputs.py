"""Agent messages that JSON parses but the contract cannot carry are refused and
acknowledged, not left unacknowledged to come back after every reconnect; they change no
order (each is kept in ``rejected_messages``, see test_rejected_messages.py)."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest
from sqlalchemy.orm import Session, sessionmaker

from central.coordinator import Coordinator
from central.models import Concentrator
from central.services import orders
from central.settings import Settings
from shared import topics
from shared.codes import Outcome
from shared.contracts import ConcentratorStatus, EnergyReading, OrderReceipt, OrderResult

from .conftest import add_connect_order


@pytest.mark.parametrize("literal", [b"NaN", b"Infinity", b"1e400"])
def test_result_with_a_non_finite_energy_is_dropped(
    settings: Settings, factory: sessionmaker[Session], literal: bytes
) -> None:
    order_id = add_connect_order(settings, factory)
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
    order_id = add_connect_order(settings, factory)
    receipt = OrderReceipt(order_id=order_id, command_id="cmd-1", meter_id="m0",
                           concentrator_id="conc-a", received_at=datetime.now(UTC), queue_depth=1)
    payload = receipt.to_json().replace(b'"queue_depth":1', b'"queue_depth":' + b"1" * 5000)
    coordinator = Coordinator(settings, factory)
    assert coordinator.handle_result(topics.results("conc-a"), payload) is True
    with factory() as session:
        order = orders.get_order(session, order_id)
        assert order.state == "validated" and order.result_json is None


@pytest.mark.parametrize("field", ["queue_depth", "outbox_depth", "meter_count", "meter_table_generation"])
@pytest.mark.parametrize("value", [2**31, 2**64])
def test_status_with_a_count_the_database_cannot_hold_is_dropped(
    settings: Settings, factory: sessionmaker[Session], field: str, value: int
) -> None:
    # PostgreSQL's INTEGER ends at 2**31 - 1, SQLite's at 2**63 - 1: the status
    # (retained on the broker) made the handler raise, unacknowledged, on every
    # reconnect.
    add_connect_order(settings, factory)
    status = ConcentratorStatus(concentrator_id="conc-a", online=True, at=datetime.now(UTC))
    payload = json.dumps(json.loads(status.to_json()) | {field: value}).encode()
    coordinator = Coordinator(settings, factory)
    assert coordinator.handle_status(topics.status("conc-a"), payload) is True
    with factory() as session:
        conc = session.get(Concentrator, "conc-a")
        assert conc is not None and not conc.online


@pytest.mark.parametrize("moment", ["9999-12-31T23:59:59-01:00", "0001-01-01T00:00:00+01:00"])
def test_status_with_a_timestamp_outside_utc_is_dropped(
    settings: Settings, factory: sessionmaker[Session], moment: str
) -> None:
    add_connect_order(settings, factory)
    status = ConcentratorStatus(concentrator_id="conc-a", online=True, at=datetime.now(UTC))
    payload = json.dumps(json.loads(status.to_json()) | {"at": moment}).encode()
    coordinator = Coordinator(settings, factory)
    assert coordinator.handle_status(topics.status("conc-a"), payload) is True
    with factory() as session:
        conc = session.get(Concentrator, "conc-a")
        assert conc is not None and not conc.online
