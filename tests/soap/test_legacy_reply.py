"""Issue 13 item 5: Legacy's acknowledgement is its Reply/Result. A Result FAILED
(with an Error) is not delivery: the order is not marked reported, the answer is on
its timeline, the result is sent again as the notifier retries, and the OK that
follows ends delivery. After the configured attempts the row is given up and raised.
Legacy's side is driven through the standard ReceiveEndDeviceEvents WSDL (zeep)."""

from __future__ import annotations

import time

import httpx
import zeep
from lxml import etree
from sqlalchemy import select

from central.dashboard.stats import collect
from central.db import session_scope
from central.models import LegacyNotification, OrderEvent
from central.soap.notifier import LegacyNotifier
from shared.codes import Outcome
from tests.soap.conftest import AppServer, Coordinator, LegacyServer, fast_soap_settings
from tests.soap.helpers import MSG, basic, control, create, reply_of
from tests.soap.standard_clients import RECEIVE_BINDING, STANDARD, assert_standard


def legacy_side() -> zeep.Client:
    return zeep.Client(str(STANDARD / "ReceiveEndDeviceEvents.wsdl"))


def test_standard_receiver_reads_our_result_event(
    coordinator: Coordinator, legacy: LegacyServer
) -> None:
    """A receiver generated from the standard WSDL finds the meter in Assets."""
    order_id = created_order(coordinator, legacy)
    coordinator.finish(order_id, Outcome.CONNECTED, energy=3.5)
    with LegacyNotifier(coordinator.sessions, fast_soap_settings(legacy_endpoint=legacy.url)):
        [body] = legacy.wait_for_posts(1, 15)
    assert_standard(body)
    operation = legacy_side().wsdl.bindings[RECEIVE_BINDING]._operations["CreatedEndDeviceEvents"]
    message = operation.input.deserialize(etree.fromstring(body))
    event = message.Payload.EndDeviceEvents.EndDeviceEvent[0]
    assert event.Assets.mRID == "MTR-001"
    assert event.Assets.Names[0].name == "MTR-001"
    assert event.EndDeviceEventType.ref == "3.31.0.42"
    assert event.status.value == "connected"
    assert {d.name: d.value for d in event.EndDeviceEventDetails}["orderId"] == order_id


def created_order(coordinator: Coordinator, legacy: LegacyServer) -> str:
    with AppServer(coordinator, fast_soap_settings(legacy_endpoint=legacy.url)) as server:
        body = create(control(["MTR-001"]), message_id="lr-1").replace(
            "<msg:MessageID>", f"<msg:ReplyAddress>{legacy.url}</msg:ReplyAddress><msg:MessageID>"
        )
        response = httpx.post(server.endpoint, content=body, headers=basic(), timeout=10)
        assert reply_of(response.content)[0] == "OK"
    [order] = coordinator.orders()
    return order.id


def timeline(coordinator: Coordinator, order_id: str) -> list[OrderEvent]:
    with session_scope(coordinator.sessions) as session:
        return list(
            session.scalars(
                select(OrderEvent).where(OrderEvent.order_id == order_id).order_by(OrderEvent.id)
            )
        )


def test_failed_reply_is_not_delivery_then_ok_is(
    coordinator: Coordinator, legacy: LegacyServer
) -> None:
    order_id = created_order(coordinator, legacy)
    coordinator.finish(order_id, Outcome.CONNECTED, energy=7.0)
    legacy.refuse(2, "FAILED")
    notifier = LegacyNotifier(coordinator.sessions, fast_soap_settings(legacy_endpoint=legacy.url))
    notifier.run_once()  # answered FAILED
    [order] = coordinator.orders()
    assert order.state == "completed_connected"  # not reported
    with session_scope(coordinator.sessions) as session:
        [row] = session.scalars(select(LegacyNotification))
        assert row.delivered_at is None and row.attempts == 1
        assert "Result FAILED" in (row.last_error or "") and "5.1" in (row.last_error or "")
    refused = [e for e in timeline(coordinator, order_id) if e.event == "legacy_refused"]
    assert len(refused) == 1 and "Result FAILED" in refused[0].detail
    with notifier:  # retried by itself (backoff), FAILED once more, then OK
        deadline = time.monotonic() + 15
        while coordinator.orders()[0].state != "reported" and time.monotonic() < deadline:
            time.sleep(0.05)
    assert coordinator.orders()[0].state == "reported"
    assert legacy.refused == 2 and len(legacy.received) == 3
    # the same result each time, with the same MessageID (Legacy can drop copies)
    ids = {etree.fromstring(body).findtext(f".//{MSG}MessageID") for body in legacy.received}
    assert len(ids) == 1
    assert len([e for e in timeline(coordinator, order_id) if e.event == "legacy_refused"]) == 2


def test_given_up_after_the_configured_attempts_and_raised(
    coordinator: Coordinator, legacy: LegacyServer
) -> None:
    order_id = created_order(coordinator, legacy)
    coordinator.finish(order_id, Outcome.CONNECTED, energy=7.0)
    legacy.refuse(10, "PARTIAL")
    settings = fast_soap_settings(
        legacy_endpoint=legacy.url, max_attempts=3, retry_initial_s=0.01, retry_max_s=0.02
    )
    with LegacyNotifier(coordinator.sessions, settings):
        deadline = time.monotonic() + 15
        while legacy.refused < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.3)  # would have retried again by now
    assert legacy.refused == 3
    assert coordinator.orders()[0].state == "completed_connected"
    events = [e.event for e in timeline(coordinator, order_id)]
    assert events.count("legacy_refused") == 2 and events[-1] == "legacy_gave_up"
    with session_scope(coordinator.sessions) as session:
        assert collect(session).legacy_given_up == 1
