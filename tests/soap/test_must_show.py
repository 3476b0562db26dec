"""Issue 6, must show: a zeep client built only from the served WSDL; PARTIAL with
one Error naming the unknown meter; the two results arrive at Legacy with the right
event codes and CorrelationID; the same MessageID again creates nothing new."""

from __future__ import annotations

import requests
import zeep
from requests.auth import HTTPBasicAuth
from zeep.transports import Transport

from central.soap.notifier import LegacyNotifier
from shared.contracts import Outcome, ReasonCode
from tests.soap.conftest import OPERATOR, AppServer, Coordinator, LegacyServer, fast_soap_settings

MSG = "{http://iec.ch/TC57/2011/schema/message}"
EDE = "{http://iec.ch/TC57/2011/EndDeviceEvents#}"


def zeep_client(server: AppServer, user: tuple[str, str] = OPERATOR) -> zeep.Client:
    session = requests.Session()
    session.auth = HTTPBasicAuth(*user)
    return zeep.Client(f"{server.endpoint}?wsdl", transport=Transport(session=session, timeout=10))


def header(message_id: str, reply_address: str | None = None, verb: str = "create") -> dict:
    values = {
        "Verb": verb,
        "Noun": "EndDeviceControls",
        "Source": "LEGACY",
        "AsyncReplyFlag": True,
        "MessageID": message_id,
        "CorrelationID": f"corr-{message_id}",
    }
    if reply_address:
        values["ReplyAddress"] = reply_address
    return values


def create_payload(meters: list[str], code: str, tracking: str, reason: str) -> dict:
    return {
        "EndDeviceControls": {
            "EndDeviceControl": [
                {
                    "issuerID": "LEGACY",
                    "issuerTrackingID": tracking,
                    "reason": reason,
                    "EndDeviceControlType": {"ref": code},
                    "EndDevices": [{"Names": [{"name": meter}]} for meter in meters],
                }
            ]
        }
    }


def test_partial_reply_then_results_reach_legacy(
    coordinator: Coordinator, legacy: LegacyServer
) -> None:
    with AppServer(coordinator, fast_soap_settings(legacy_endpoint=legacy.url)) as server:
        client = zeep_client(server)
        reply = client.service.CreateEndDeviceControls(
            Header=header("msg-0001", legacy.url),
            Request={"Option": [{"name": "special", "value": "true"}]},
            Payload=create_payload(
                ["MTR-001", "MTR-UNKNOWN", "MTR-002"], "3.31.0.23", "LEG-42", "nonPayment"
            ),
        )
        assert reply.Reply.Result == "PARTIAL"
        assert len(reply.Reply.Error) == 1
        error = reply.Reply.Error[0]
        assert "MTR-UNKNOWN" in error.reason and "unknown meter" in error.reason
        assert error.code == "2.4" and error.level == "FATAL"
        assert error.ID._value_1 == "MTR-UNKNOWN"
        assert reply.Header.CorrelationID == "corr-msg-0001"
        assert reply.Header.Verb == "reply"
        accepted = {
            c.EndDevices[0].Names[0].name: c.mRID
            for c in reply.Payload.EndDeviceControls.EndDeviceControl
        }
        assert set(accepted) == {"MTR-001", "MTR-002"}

        # The same MessageID again: the same Reply, nothing new.
        before = len(coordinator.orders())
        again = client.service.CreateEndDeviceControls(
            Header=header("msg-0001", legacy.url),
            Request={"Option": [{"name": "special", "value": "true"}]},
            Payload=create_payload(
                ["MTR-001", "MTR-UNKNOWN", "MTR-002"], "3.31.0.23", "LEG-42", "nonPayment"
            ),
        )
        assert again.Header.MessageID == reply.Header.MessageID
        assert again.Reply.Result == "PARTIAL"
        assert len(coordinator.orders()) == before

        # Steps 4-8 happen elsewhere; here the agent's results are applied directly.
        coordinator.finish(accepted["MTR-001"], Outcome.DISCONNECTED, energy=1234.5)
        coordinator.finish(
            accepted["MTR-002"], Outcome.FAILED, reason=ReasonCode.METER_NOT_RESPONDING
        )
        notifier = LegacyNotifier(coordinator.sessions, server.gateway.settings)
        notifier.start()
        try:
            events = legacy.wait_for(2)
        finally:
            notifier.stop()
    assert len(events) == 2
    by_meter = {}
    for root in events:
        head = root.find(".//{http://iec.ch/TC57/2011/EndDeviceEventsMessage}Header")
        assert head is not None
        assert head.findtext(f"{MSG}Verb") == "created"
        assert head.findtext(f"{MSG}Noun") == "EndDeviceEvents"
        assert head.findtext(f"{MSG}CorrelationID") == "corr-msg-0001"
        event = root.find(f".//{EDE}EndDeviceEvent")
        assert event is not None
        meter = event.findtext(f"{EDE}EndDevice/{EDE}Names/{EDE}name")
        details = {
            d.findtext(f"{EDE}name"): d.findtext(f"{EDE}value")
            for d in event.findall(f"{EDE}EndDeviceEventDetails")
        }
        by_meter[meter] = (event.find(f"{EDE}EndDeviceEventType").get("ref"), details, event)
    assert by_meter["MTR-001"][0] == "3.31.0.68"
    assert by_meter["MTR-001"][1]["energyReading"] == "1234.5"
    assert by_meter["MTR-002"][0] == "3.31.0.84"
    assert by_meter["MTR-002"][1]["fieldWorkOrder"].startswith("WO-")
    assert "meter_not_responding" in by_meter["MTR-002"][2].findtext(f"{EDE}reason")
    assert by_meter["MTR-001"][2].findtext(f"{EDE}issuerTrackingID") == "LEG-42"
    states = {o.meter_id: o.state for o in coordinator.orders()}
    assert states["MTR-001"] == "reported" and states["MTR-002"] == "reported"
    # refused in the synchronous Reply; closed as reported without a second message
    assert states["MTR-UNKNOWN"] == "reported"


def test_zeep_with_ws_security_cancels_by_order_and_gets_by_meter(
    coordinator: Coordinator,
) -> None:
    from zeep.wsse.username import UsernameToken

    with AppServer(coordinator, fast_soap_settings()) as server:
        client = zeep.Client(
            f"{server.endpoint}?wsdl", wsse=UsernameToken(OPERATOR[0], OPERATOR[1])
        )
        created = client.service.CreateEndDeviceControls(
            Header=header("wsse-1"),
            Payload=create_payload(["MTR-003"], "3.31.0.5", "ARM-1", "paymentReceived"),
        )
        assert created.Reply.Result == "OK"
        order_id = created.Payload.EndDeviceControls.EndDeviceControl[0].mRID
        cancelled = client.service.CancelEndDeviceControls(
            Header=header("wsse-2", verb="cancel"),
            Payload={"EndDeviceControls": {"EndDeviceControl": [{"mRID": order_id}]}},
        )
        assert cancelled.Reply.Result == "OK"
        assert cancelled.Header.CorrelationID == "corr-wsse-2"
        found = client.service.GetEndDeviceControls(
            Header=header("wsse-3", verb="get"),
            Request={"GetEndDeviceControls": {"EndDevice": [{"Names": [{"name": "MTR-003"}]}]}},
        )
        control = found.Payload.EndDeviceControls.EndDeviceControl[0]
        assert control.mRID == order_id
        assert control.status.value == "cancelled"
        assert control.EndDeviceControlType.ref == "3.31.0.5"
        assert control.issuerTrackingID == "ARM-1"
