"""Refused agent messages are kept, not only logged (SQLite and PostgreSQL): the broker
has them acknowledged, so the coordinator's row is their only copy."""

from __future__ import annotations

from datetime import UTC, datetime

from fastapi.testclient import TestClient
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from central.app import create_app
from central.coordinator import Coordinator
from central.models import RejectedMessage
from central.services import orders, rejected
from central.settings import Settings
from shared import topics
from shared.codes import Outcome
from shared.contracts import ConcentratorStatus, OrderResult

from .conftest import add_connect_order


def _rows(factory: sessionmaker[Session]) -> list[RejectedMessage]:
    with factory() as session:
        return list(session.scalars(select(RejectedMessage).order_by(RejectedMessage.id)))


def test_malformed_result_is_kept_and_shown_on_its_order(
    settings: Settings, factory: sessionmaker[Session]
) -> None:
    order_id = add_connect_order(settings, factory)
    payload = (
        b'{"kind":"result","order_id":"' + order_id.encode() + b'","meter_id":"m0",'
        b'"concentrator_id":"conc-a","outcome":"exploded","finished_at":"2026-11-26T15:00:00Z"}'
    )
    coordinator = Coordinator(settings, factory)
    assert coordinator.handle_result(topics.results("conc-a"), payload) is True  # acknowledged

    [row] = _rows(factory)
    assert (row.topic, row.concentrator_id, row.order_id) == (
        topics.results("conc-a"),
        "conc-a",
        order_id,
    )
    assert "outcome" in row.reason and row.payload == payload and row.size == len(payload)
    with factory() as session:
        order = orders.get_order(session, order_id)
        assert order.state == "validated" and order.result_json is None  # nothing applied
        [line] = [e for e in order.events if e.event == "rejected_message"]
        assert line.actor == "agent:conc-a" and "outcome" in line.detail and line.step == 8


def test_result_on_another_concentrators_topic_is_kept_but_not_on_the_order(
    settings: Settings, factory: sessionmaker[Session]
) -> None:
    """conc-b publishing about conc-a's order: refused, kept, and conc-b cannot write
    into that order's timeline."""
    order_id = add_connect_order(settings, factory)
    now = datetime.now(UTC)
    result = OrderResult(
        order_id=order_id,
        meter_id="m0",
        concentrator_id="conc-a",
        outcome=Outcome.CONNECTED,
        finished_at=now,
    )
    coordinator = Coordinator(settings, factory)
    assert coordinator.handle_result(topics.results("conc-b"), result.to_json()) is True
    [row] = _rows(factory)
    assert row.concentrator_id == "conc-b" and row.order_id == order_id
    assert "names concentrator conc-a" in row.reason
    with factory() as session:
        order = orders.get_order(session, order_id)
        assert order.state == "validated"
        assert [e for e in order.events if e.event == "rejected_message"] == []


def test_garbage_and_oversized_payloads_are_kept_cut(
    settings: Settings, factory: sessionmaker[Session]
) -> None:
    coordinator = Coordinator(settings, factory)
    coordinator.handle_result(topics.results("conc-a"), b"\xff\x00 not json")
    huge = b'{"kind":"result","detail":"' + b"x" * 200_000 + b'"}'
    coordinator.handle_result(topics.results("conc-a"), huge)
    status = ConcentratorStatus(concentrator_id="conc-a", online=True, at=datetime.now(UTC))
    coordinator.handle_status(topics.status("conc-z"), status.to_json())
    first, second, third = _rows(factory)
    assert "JSON" in first.reason and first.order_id is None and first.payload == b"\xff\x00 not json"
    assert second.size == len(huge) and len(second.payload) == rejected.KEEP_BYTES
    assert "limit" in second.reason or "large" in second.reason
    assert third.concentrator_id == "conc-z" and "status names concentrator conc-a" in third.reason


def test_rejected_messages_listed_for_operators(
    settings: Settings, factory: sessionmaker[Session]
) -> None:
    order_id = add_connect_order(settings, factory)
    coordinator = Coordinator(settings, factory)
    coordinator.handle_result(topics.results("conc-a"), b'{"kind":"result","order_id":"' + order_id.encode() + b'"}')
    coordinator.handle_result(topics.results("conc-b"), b"[1,2")
    app = create_app(settings)  # the test environment's dev-<role> tokens
    with TestClient(app) as client:
        listed = client.get(
            "/api/v1/rejected-messages", headers={"Authorization": "Bearer dev-operator"}
        ).json()
        assert [r["concentrator_id"] for r in listed] == ["conc-b", "conc-a"]  # newest first
        assert listed[1]["order_id"] == order_id and order_id in listed[1]["payload_text"]
        one = client.get(
            "/api/v1/rejected-messages",
            params={"order_id": order_id},
            headers={"Authorization": "Bearer dev-operator"},
        ).json()
        assert len(one) == 1
        denied = client.get(
            "/api/v1/rejected-messages", headers={"Authorization": "Bearer dev-viewer"}
        )
        assert denied.status_code == 403


def test_message_naming_an_order_id_with_a_nul_character_is_kept(
    settings: Settings, factory: sessionmaker[Session]
) -> None:
    """PostgreSQL text cannot hold NUL: an order id read from a refused payload that holds
    one must not make the row unwritable (the message would be redelivered for ever and
    never kept). The id is not kept; the payload (bytes) keeps everything."""
    payload = b'{"kind":"result","order_id":"ab\\u0000cd","meter_id":"m0"}'
    coordinator = Coordinator(settings, factory)
    assert coordinator.handle_result(topics.results("conc-a"), payload) is True
    [row] = _rows(factory)
    assert row.order_id is None and row.payload == payload and "order_id" in row.reason
