"""Issues 6 and 13, must show: clients that were never given our WSDL (zeep and
suds, built from the standard-shaped files in tests/soap/standard/) create, cancel
and get; PARTIAL with one Error naming the unknown meter; the results reach Legacy
as standard CreatedEndDeviceEvents (the meter in Assets); the same MessageID again
creates nothing new; every reply validates against the standard schemas."""

from __future__ import annotations

import zeep

from central.soap.notifier import LegacyNotifier
from shared.codes import Outcome, ReasonCode
from tests.soap.conftest import OPERATOR, AppServer, Coordinator, LegacyServer, fast_soap_settings
from tests.soap.standard_clients import (
    assert_standard,
    control,
    errors_of,
    execute_client,
    get_client,
    header,
    payload,
    special,
    states_of,
    suds_client,
)

MSG = "{http://iec.ch/TC57/2011/schema/message}"
EDE = "{http://iec.ch/TC57/2011/EndDeviceEvents#}"


def test_partial_reply_then_results_reach_legacy(
    coordinator: Coordinator, legacy: LegacyServer
) -> None:
    with AppServer(coordinator, fast_soap_settings(legacy_endpoint=legacy.url)) as server:
        client = execute_client(server)
        request = {
            "Header": header("msg-0001", ReplyAddress=legacy.url, AsyncReplyFlag=True),
            "Request": special(),
            "Payload": payload(
                control(["MTR-001", "MTR-UNKNOWN", "MTR-002"], "3.31.0.23", "LEG-42", "nonPayment")
            ),
        }
        reply = client.call("CreateEndDeviceControls", **request)
        assert reply.Reply.Result == "PARTIAL"
        [error] = errors_of(reply)
        assert "MTR-UNKNOWN" in error.reason and "unknown meter" in error.reason
        assert error.code == "2.4" and error.level == "FATAL"
        assert error.ID._value_1 == "MTR-UNKNOWN"
        assert reply.Header.CorrelationID == "corr-msg-0001"
        assert reply.Header.Verb == "reply"
        accepted = {
            c.EndDevices[0].mRID: c.mRID for c in reply.Payload.EndDeviceControls.EndDeviceControl
        }
        assert set(accepted) == {"MTR-001", "MTR-002"}
        for returned in reply.Payload.EndDeviceControls.EndDeviceControl:
            assert returned.EndDeviceControlType.ref == "3.31.0.23"
            assert returned.issuerTrackingID == "LEG-42"
            assert returned.EndDevices[0].Names[0].NameType.name == "MeterNumber"

        # The same MessageID again: the same Reply, nothing new.
        before = len(coordinator.orders())
        again = client.call("CreateEndDeviceControls", **request)
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
        message = assert_standard(root)
        head = message.find("{http://iec.ch/TC57/2011/EndDeviceEventsMessage}Header")
        assert head is not None
        assert head.findtext(f"{MSG}Verb") == "created"
        assert head.findtext(f"{MSG}Noun") == "EndDeviceEvents"
        assert head.findtext(f"{MSG}CorrelationID") == "corr-msg-0001"
        event = message.find(f".//{EDE}EndDeviceEvent")
        assert event is not None
        meter = event.findtext(f"{EDE}Assets/{EDE}mRID")
        assert event.findtext(f"{EDE}Assets/{EDE}Names/{EDE}name") == meter
        details = {
            d.findtext(f"{EDE}name"): d.findtext(f"{EDE}value")
            for d in event.findall(f"{EDE}EndDeviceEventDetails")
        }
        by_meter[meter] = (event.find(f"{EDE}EndDeviceEventType").get("ref"), details, event)
    assert by_meter["MTR-001"][0] == "3.31.0.68"
    assert by_meter["MTR-001"][1]["energyReading"] == "1234.5"
    assert by_meter["MTR-001"][2].findtext(f"{EDE}status/{EDE}value") == "disconnected"
    assert by_meter["MTR-002"][0] == "3.31.0.84"
    assert by_meter["MTR-002"][1]["fieldWorkOrder"].startswith("WO-")
    assert "meter_not_responding" in by_meter["MTR-002"][2].findtext(f"{EDE}reason")
    assert "meter_not_responding" in by_meter["MTR-002"][2].findtext(f"{EDE}status/{EDE}reason")
    assert by_meter["MTR-001"][2].findtext(f"{EDE}issuerTrackingID") == "LEG-42"
    states = {o.meter_id: o.state for o in coordinator.orders()}
    assert states["MTR-001"] == "reported" and states["MTR-002"] == "reported"
    # refused in the synchronous Reply; closed as reported without a second message
    assert states["MTR-UNKNOWN"] == "reported"


def test_zeep_with_ws_security_digest_cancels_by_order_and_gets_by_meter(
    coordinator: Coordinator,
) -> None:
    from zeep.wsse.username import UsernameToken

    with AppServer(coordinator, fast_soap_settings()) as server:
        # a fresh token (new Nonce and Created) for every call, as a real client does
        def token() -> UsernameToken:
            return UsernameToken(OPERATOR[0], OPERATOR[1], use_digest=True)

        client = execute_client(server, user=None, wsse=token())
        created = client.call(
            "CreateEndDeviceControls",
            Header=header("wsse-1"),
            Payload=payload(control(["MTR-003"], "3.31.0.5", "ARM-1")),
        )
        assert created.Reply.Result == "OK"
        order_id = created.Payload.EndDeviceControls.EndDeviceControl[0].mRID
        client = execute_client(server, user=None, wsse=token())
        cancelled = client.call(
            "CancelEndDeviceControls",
            Header=header("wsse-2", verb="cancel"),
            Payload=payload({"mRID": order_id, "EndDeviceControlType": {}}),
        )
        assert cancelled.Reply.Result == "OK"
        assert cancelled.Header.CorrelationID == "corr-wsse-2"
        getter = get_client(server, user=None, wsse=token())
        found = getter.call(
            "GetEndDeviceControls",
            Header=header("wsse-3", verb="get"),
            Request={"GetEndDeviceControls": {"EndDevice": [{"Names": [{"name": "MTR-003"}]}]}},
        )
        returned = found.Payload.EndDeviceControls.EndDeviceControl[0]
        assert returned.mRID == order_id
        assert states_of(found)[order_id] == "cancelled"
        assert returned.EndDeviceControlType.ref == "3.31.0.5"
        assert returned.issuerTrackingID == "ARM-1"


def test_suds_client_from_standard_wsdl_creates_cancels_and_gets(coordinator: Coordinator) -> None:
    with AppServer(coordinator, fast_soap_settings()) as server:
        execute = suds_client(
            server, "ExecuteEndDeviceControls.wsdl", "/soap/ExecuteEndDeviceControls"
        )
        factory = execute.factory
        head = factory.create("{http://iec.ch/TC57/2011/schema/message}HeaderType")
        head.Verb, head.Noun, head.MessageID = "create", "EndDeviceControls", "suds-1"
        body = factory.create(
            "{http://iec.ch/TC57/2011/EndDeviceControlsMessage}EndDeviceControlsPayloadType"
        )
        edc = factory.create("{http://iec.ch/TC57/2011/EndDeviceControls#}EndDeviceControl")
        edc.issuerTrackingID = "SUDS-1"
        edc.reason = "paymentReceived"
        edc.EndDeviceControlType._ref = "3.31.0.18"
        end_device = factory.create("{http://iec.ch/TC57/2011/EndDeviceControls#}EndDevice")
        end_device.mRID = "MTR-004"
        edc.EndDevices = [end_device]
        body.EndDeviceControls.EndDeviceControl = [edc]
        reply = execute.service.CreateEndDeviceControls(Header=head, Payload=body)
        assert_standard(str(execute.last_received()).encode())
        assert reply.Reply.Result == "OK"
        order_id = reply.Payload.EndDeviceControls.EndDeviceControl[0].mRID

        head.Verb, head.MessageID = "get", "suds-2"
        getter = suds_client(server, "GetEndDeviceControls.wsdl", "/soap/GetEndDeviceControls")
        request = getter.factory.create(
            "{http://iec.ch/TC57/2011/GetEndDeviceControlsMessage}GetEndDeviceControlsRequestType"
        )
        query = getter.factory.create(
            "{http://iec.ch/TC57/2011/GetEndDeviceControls#}GetEndDeviceControls"
        )
        wanted = getter.factory.create(
            "{http://iec.ch/TC57/2011/GetEndDeviceControls#}EndDeviceControl"
        )
        wanted.mRID = order_id
        query.EndDeviceControl = [wanted]
        request.GetEndDeviceControls = query
        found = getter.service.GetEndDeviceControls(Header=head, Request=request)
        assert_standard(str(getter.last_received()).encode())
        assert found.Payload.EndDeviceControls.EndDeviceControl[0].mRID == order_id

        head.Verb, head.MessageID = "cancel", "suds-3"
        edc = factory.create("{http://iec.ch/TC57/2011/EndDeviceControls#}EndDeviceControl")
        edc.mRID = order_id
        body.EndDeviceControls.EndDeviceControl = [edc]
        cancelled = execute.service.CancelEndDeviceControls(Header=head, Payload=body)
        assert_standard(str(execute.last_received()).encode())
        assert cancelled.Reply.Result == "OK"
    assert {o.id: o.state for o in coordinator.orders()}[order_id] == "cancelled"


def test_demo_style_client_from_the_served_wsdl(coordinator: Coordinator) -> None:
    """Our own served WSDL also builds a working client (as the demo uses it)."""
    import requests
    from requests.auth import HTTPBasicAuth
    from zeep.transports import Transport

    with AppServer(coordinator, fast_soap_settings()) as server:
        session = requests.Session()
        session.auth = HTTPBasicAuth(*OPERATOR)
        client = zeep.Client(
            f"{server.base}/soap/ExecuteEndDeviceControls?wsdl",
            transport=Transport(session=session, timeout=10),
        )
        reply = client.service.CreateEndDeviceControls(
            Header=header("served-1"), Payload=payload(control(["MTR-001"]))
        )
        assert reply.Reply.Result == "OK"
