"""Issue 17: a SOAP caller over its anomaly limit gets its disconnects accepted (OK)
and quarantined; when a second person deletes the quarantine, Legacy is told through
its notifier with a coded refusal (the synchronous reply had accepted them)."""

from __future__ import annotations

import time

import httpx
import pytest

from central.db import session_scope
from central.models import Quarantine
from central.services import quarantine, validation
from central.services.lifecycle import Actor
from central.settings import AnomalySettings, ScopeLimits
from central.soap.notifier import LegacyNotifier
from tests.soap.conftest import AppServer, Coordinator, LegacyServer, fast_soap_settings
from tests.soap.helpers import MSG, basic, control, create, reply_of

EDE = "{http://iec.ch/TC57/2011/EndDeviceEvents#}"
METERS = ["MTR-001", "MTR-002", "MTR-003"]


def test_a_deleted_quarantine_tells_legacy(
    coordinator: Coordinator, legacy: LegacyServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the real clock runs here: ordinary disconnects need a working day
    monkeypatch.setattr(validation, "is_working_day", lambda day, country="CL": True)
    anomaly = AnomalySettings(limits=ScopeLimits(source=2), baseline_weeks=0)
    coordinator.settings = coordinator.settings.model_copy(update={"anomaly": anomaly})
    with AppServer(coordinator, fast_soap_settings(legacy_endpoint=legacy.url)) as server:
        body = create(control(METERS, "3.31.0.23", "nonPayment", "LEG-Q"), message_id="q-1")
        body = body.replace(
            "<msg:MessageID>", f"<msg:ReplyAddress>{legacy.url}</msg:ReplyAddress><msg:MessageID>"
        )
        response = httpx.post(server.endpoint, content=body, headers=basic(), timeout=10)
        assert reply_of(response.content)[0] == "OK"  # accepted: quarantined, not refused
    assert {o.state for o in coordinator.orders()} == {"quarantined"}
    with session_scope(coordinator.sessions) as session:
        row = session.query(Quarantine).one()
        assert (row.scope_kind, row.scope_value) == ("source", "soap:legacy")
        quarantine.delete(session, row.id, Actor("arturo", "approver"), note_text="not ours")
    with LegacyNotifier(coordinator.sessions, fast_soap_settings(legacy_endpoint=legacy.url)):
        events = legacy.wait_for(len(METERS))
        deadline = time.monotonic() + 10  # acknowledged by Legacy: reported
        while {o.state for o in coordinator.orders()} != {"reported"}:
            assert time.monotonic() < deadline, [o.state for o in coordinator.orders()]
            time.sleep(0.05)
    told = {}
    for message in events:
        event = message.find(f".//{EDE}EndDeviceEvent")
        assert event is not None
        details = {
            d.findtext(f"{EDE}name"): d.findtext(f"{EDE}value")
            for d in event.findall(f"{EDE}EndDeviceEventDetails")
        }
        told[event.findtext(f"{EDE}Assets/{EDE}mRID")] = (
            event.find(f"{EDE}EndDeviceEventType").get("ref"),  # type: ignore[union-attr]
            details["outcome"],
            details["failureReason"],
        )
        assert message.findtext(f".//{MSG}Verb") == "created"
    assert set(told) == set(METERS)
    for code, outcome, reason in told.values():
        assert code == "3.31.0.84" and outcome == "rejected"
        assert reason.startswith("quarantine_deleted: deleted from quarantine") and "arturo" in reason
    assert {o.final_state for o in coordinator.orders()} == {"rejected"}
