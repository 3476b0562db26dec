"""What the gateway writes is valid against its own schemas and against the
standard-shaped ones of the tests; result codes per outcome."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from lxml import etree

from central.soap import cim, cim_write
from central.soap.service_port import (
    ControlAction,
    ItemOutcome,
    OrderEnded,
    OrderView,
    Outcome,
    Refusal,
)
from tests.soap.standard_clients import assert_standard

SOAP = "{http://schemas.xmlsoap.org/soap/envelope/}"


def body_child(xml: bytes) -> etree._Element:
    root = etree.fromstring(xml)
    body = root.find(f"{SOAP}Body")
    assert body is not None
    return etree.fromstring(etree.tostring(body[0]))


@pytest.mark.parametrize(
    ("outcome", "action", "code"),
    [
        (Outcome.DISCONNECTED, ControlAction.DISCONNECT, "3.31.0.68"),
        (Outcome.CONNECTED, ControlAction.CONNECT, "3.31.0.42"),
        (Outcome.ARMED, ControlAction.ARM, "3.31.0.11"),
        (Outcome.FAILED, ControlAction.DISCONNECT, "3.31.0.84"),
        (Outcome.FAILED, ControlAction.CONNECT, "3.31.0.67"),
        (Outcome.FAILED, ControlAction.ARM, "3.31.0.67"),
        (Outcome.EXPIRED, ControlAction.DISCONNECT, "3.31.0.64"),
        (Outcome.CANCELLED, ControlAction.CONNECT, "3.31.0.10"),
    ],
)
def test_result_event_code_and_schema(outcome: Outcome, action: ControlAction, code: str) -> None:
    ended = OrderEnded(
        order_id="o-1",
        meter_id="MTR-1",
        action=action,
        outcome=outcome,
        ended_at=datetime(2026, 11, 26, 12, 0, tzinfo=UTC),
        energy_value=12.5,
        energy_unit="kWh",
        failure_reason=None if outcome in (Outcome.CONNECTED,) else "meter_not_responding",
        work_order_ref="WO-7",
        issuer_tracking_id="T-1",
    )
    message_id = cim_write.result_message_id(ended)
    assert message_id == cim_write.result_message_id(ended)  # stable
    xml = cim_write.build_event(
        ended, correlation_id="c-1", source="ami-rcd", message_id=message_id
    )
    element = body_child(xml)
    cim.validate(element)
    assert_standard(xml)
    ede = "{http://iec.ch/TC57/2011/EndDeviceEvents#}"
    assert element.find(f".//{ede}EndDeviceEventType").get("ref") == code  # type: ignore[union-attr]


def test_replies_are_valid_against_the_schema() -> None:
    outcomes = [
        ItemOutcome(meter_id="MTR-1", order_id="o-1", state="validated"),
        ItemOutcome(meter_id="MTR-2", refusal=Refusal.UNKNOWN_METER, detail="not registered"),
        ItemOutcome(meter_id="MTR-3", order_id="o-3", existing=True, state="dispatched"),
    ]
    for operation in ("create", "cancel", "change", "get"):
        xml = cim_write.build_reply(
            operation=operation, outcomes=outcomes, source="ami-rcd", correlation_id="c"
        )
        cim.validate(body_child(xml))
        assert_standard(xml)
    view = OrderView(
        order_id="o-1",
        meter_id="MTR-1",
        action=ControlAction.ARM,
        state="completed_armed",
        reason="payment_restored",
        issuer_id="LEGACY",
        issuer_tracking_id="T-1",
        updated_at=datetime.now(UTC),
        detail="x" * 400,
    )
    xml = cim_write.build_reply(
        operation="get", outcomes=[], source="s", correlation_id=None, views=[view], result="OK"
    )
    cim.validate(body_child(xml))
    assert_standard(xml)
    assert cim_write.result_of(outcomes) == "PARTIAL"
    assert cim_write.result_of(outcomes[:1]) == "OK"
    assert cim_write.result_of(outcomes[1:2]) == "FAILED"


@pytest.mark.parametrize("service", sorted(cim.WSDL_FILES))
def test_no_type_is_defined_twice_in_one_wsdl(service: str) -> None:
    """One Java package can be generated from each served WSDL: every global type
    and element name of the schemas it pulls in is unique (issue 13)."""
    xs = "{http://www.w3.org/2001/XMLSchema}"
    seen: dict[str, str] = {}
    duplicates: list[str] = []
    todo = [cim.WSDL_FILES[service]]
    done: set[str] = set()
    while todo:
        name = todo.pop()
        if name in done:
            continue
        done.add(name)
        tree = etree.parse(str(cim.SCHEMA_DIR / name))
        todo.extend(i.get("schemaLocation") for i in tree.iter(f"{xs}import", f"{xs}include"))
        for kind in ("complexType", "simpleType"):
            for node in tree.getroot().iter(f"{xs}{kind}"):
                type_name = node.get("name")
                if type_name is None:
                    continue  # anonymous
                if type_name in seen:
                    duplicates.append(f"{type_name} ({seen[type_name]}, {name})")
                seen[type_name] = name
    assert len(done) >= 3
    assert duplicates == []


HOSTILE = "MTR-<1> & \"quoted\" 'single' é \u20ac \U0001f50c"


def hostile_reply(operation: str) -> bytes:
    deadline = datetime(2026, 12, 3, 18, 0, tzinfo=UTC)
    outcomes = [
        ItemOutcome(meter_id=HOSTILE, order_id="o-1", state="validated"),
        ItemOutcome(meter_id="MTR-2", order_id="o-2", state="dispatched", existing=True),
        ItemOutcome(meter_id="MTR-<3>", refusal=Refusal.UNKNOWN_METER, detail="a & b <c>"),
        ItemOutcome(meter_id=None, order_id="o-&", refusal=Refusal.ORDER_NOT_FOUND),
    ]
    views = [
        OrderView(order_id="o-1", meter_id=HOSTILE, action=ControlAction.DISCONNECT,
                  state="validated", reason="non_payment", issuer_id="LEG&ACY",
                  issuer_tracking_id='T-"1"', not_before=deadline, deadline=deadline),
        OrderView(order_id="o-9", meter_id="MTR-9", action=ControlAction.ARM,
                  state="failed", detail="bad \x01 byte <here>"),
    ]
    return cim_write.build_reply(
        operation=operation, outcomes=outcomes if operation != "get" else [],
        source="ami-rcd & co", correlation_id="c<1>", views=views,
        info=[("2.4", "no order matches & so on", "no_match")] if operation == "get" else ())


@pytest.mark.parametrize("operation", ["create", "get"])
def test_the_reply_written_as_text_is_what_lxml_writes_and_reads_back(operation: str) -> None:
    xml = hostile_reply(operation)
    root = etree.fromstring(xml)
    # what lxml writes for the tree it read is byte for byte what the gateway wrote
    assert etree.tostring(root, xml_declaration=True, encoding="UTF-8") == xml
    cim.validate(body_child(xml))
    assert_standard(xml)
    edc = "{http://iec.ch/TC57/2011/EndDeviceControls#}"
    msg = "{http://iec.ch/TC57/2011/schema/message}"
    controls = root.findall(f".//{edc}EndDeviceControl")
    assert [c.findtext(f"{edc}EndDevices/{edc}mRID") for c in controls] == [HOSTILE, "MTR-9"]
    assert controls[0].findtext(f"{edc}issuerTrackingID") == 'T-"1"'
    assert root.findtext(f".//{msg}CorrelationID") == "c<1>"
    details = [e.findtext(f"{msg}details") for e in root.iter(f"{msg}Error")]
    # a character XML cannot carry is replaced, and the message stays readable
    assert "bad \ufffd byte <here>" in details
    if operation == "create":
        assert "unknown_meter: a & b <c>" in details
        assert [i.text for i in root.findall(f".//{{*}}Reply/{msg}ID")] == ["o-1", "o-2"]
