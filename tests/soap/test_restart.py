"""Nothing lost: the coordinator stopped between the acknowledgement and the
delivery still delivers every result after a restart, each once; a crash between
Legacy's acknowledgement and our commit re-sends with the same MessageID."""

from __future__ import annotations

import time

import httpx
from sqlalchemy import select

from central.db import session_scope
from central.models import LegacyNotification
from central.soap.notifier import Delivery, LegacyNotifier
from shared.codes import Outcome
from tests.soap.conftest import AppServer, LegacyServer, fast_soap_settings, open_coordinator
from tests.soap.helpers import MSG, basic, control, create, reply_of, special

EDEM = "{http://iec.ch/TC57/2011/EndDeviceEventsMessage}"


def message_ids(events: list) -> list[str]:
    return [e.findtext(f".//{EDEM}Header/{MSG}MessageID") for e in events]


def test_results_survive_a_coordinator_restart(database_url: str, legacy: LegacyServer) -> None:
    db = database_url
    settings = fast_soap_settings(legacy_endpoint=legacy.url)
    legacy.up = False  # Legacy is down while the first coordinator runs

    first = open_coordinator(db)
    try:
        with AppServer(first, settings) as server:
            body = create(
                control(["MTR-003", "MTR-004"], code="3.31.0.18", tracking="T-restart"),
                message_id="msg-restart-1",
                options=special(),
            ).replace(
                "<msg:MessageID>",
                f"<msg:ReplyAddress>{legacy.url}</msg:ReplyAddress><msg:MessageID>",
            )
            response = httpx.post(server.endpoint, content=body, headers=basic(), timeout=10)
            result, errors, _message = reply_of(response.content)
            assert result == "OK", errors
            orders = {o.meter_id: o.id for o in first.orders()}
            first.finish(orders["MTR-003"], Outcome.CONNECTED, energy=10.0)
            first.finish(orders["MTR-004"], Outcome.ARMED, energy=20.0)
            notifier = LegacyNotifier(first.sessions, settings)
            notifier.start()
            try:
                deadline = time.monotonic() + 10
                while time.monotonic() < deadline:  # at least one failed try each
                    with session_scope(first.sessions) as session:
                        rows = list(session.scalars(select(LegacyNotification)))
                    if len(rows) == 2 and all(r.attempts >= 1 for r in rows):
                        break
                    time.sleep(0.05)
            finally:
                notifier.stop()  # the coordinator stops
        assert legacy.received == []
        with session_scope(first.sessions) as session:
            rows = list(session.scalars(select(LegacyNotification)))
        assert all(r.delivered_at is None and r.attempts >= 1 for r in rows)
        assert all("503" in (r.last_error or "") for r in rows)
    finally:
        first.close()

    legacy.up = True
    second = open_coordinator(db)  # a new process on the same database
    try:
        with LegacyNotifier(second.sessions, settings):
            events = legacy.wait_for(2)
            time.sleep(0.5)  # nothing more may come
            events = legacy.events()
        assert len(events) == 2
        assert len(set(message_ids(events))) == 2
        codes = sorted(
            e.find(".//{http://iec.ch/TC57/2011/EndDeviceEvents#}EndDeviceEventType").get("ref")
            for e in events
        )
        assert codes == ["3.31.0.11", "3.31.0.42"]
        assert {e.findtext(f".//{EDEM}Header/{MSG}CorrelationID") for e in events} == {
            "msg-restart-1"
        }
        assert {o.state for o in second.orders()} == {"reported"}
    finally:
        second.close()


class CrashAfterAck(LegacyNotifier):
    """Dies once between Legacy's acknowledgement and recording it."""

    crashed = False

    def _close(self, delivery: Delivery, detail: str) -> None:
        if not self.crashed and delivery.body is not None:
            self.crashed = True
            raise RuntimeError("power cut")
        super()._close(delivery, detail)


def test_resend_after_crash_keeps_the_message_id(database_url: str, legacy: LegacyServer) -> None:
    settings = fast_soap_settings(claim_s=0.2, legacy_endpoint=legacy.url)
    coordinator = open_coordinator(database_url)
    try:
        with AppServer(coordinator, settings) as server:
            body = create(control(["MTR-001"]), message_id="msg-crash", options=special())
            response = httpx.post(server.endpoint, content=body, headers=basic(), timeout=10)
            assert reply_of(response.content)[0] == "OK"
        order = coordinator.orders()[0]
        coordinator.finish(order.id, Outcome.CONNECTED)
        notifier = CrashAfterAck(coordinator.sessions, settings)
        notifier.start()
        try:
            events = legacy.wait_for(2)
        finally:
            notifier.stop()
        assert len(events) == 2
        ids = message_ids(events)
        assert ids[0] == ids[1]  # Legacy can drop the duplicate
        assert coordinator.orders()[0].state == "reported"
    finally:
        coordinator.close()
