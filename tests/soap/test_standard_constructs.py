"""Issue 13 item 3: each construct a standard request may carry, one test each.
Every request here is first checked against the tests' standard-shaped schemas
(so it is a standard request), then sent; it is either accepted or answered with a
coded Reply Error, never a Fault. Every reply is checked against them too."""

from __future__ import annotations

import base64
import gzip
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from lxml import etree

from central.models import Order
from central.soap.router import install
from tests.soap.conftest import Coordinator, fast_soap_settings
from tests.soap.helpers import (
    MSG,
    basic,
    cancel,
    control,
    create,
    envelope,
    get,
    header,
    reply_of,
    special,
    states_of,
)
from tests.soap.standard_clients import assert_standard

LATER = datetime.now(UTC).replace(microsecond=0) + timedelta(days=2)


def make_client(coordinator: Coordinator, **settings: object) -> TestClient:
    app = FastAPI()
    install(app, coordinator.settings, coordinator.sessions, fast_soap_settings(**settings))
    return TestClient(app)


@pytest.fixture
def client(coordinator: Coordinator) -> Iterator[TestClient]:
    with make_client(coordinator) as test_client:
        yield test_client


def send(
    client: TestClient, body: str, path: str = "/soap/ExecuteEndDeviceControls"
) -> tuple[str, list[dict[str, str]], etree._Element]:
    assert_standard(body.encode())  # a standard request
    response = client.post(path, content=body, headers=basic())
    assert response.status_code == 200, response.text  # never a Fault
    assert_standard(response.content)  # a standard reply
    return reply_of(response.content)


def order_of(coordinator: Coordinator, meter: str) -> Order:
    [order] = [o for o in coordinator.orders() if o.meter_id == meter]
    return order


def device(inner: str) -> str:
    return f"<edc:EndDevices>{inner}</edc:EndDevices>"


def named(name: str, name_type: str | None) -> str:
    kind = f"<edc:NameType><edc:name>{name_type}</edc:name></edc:NameType>" if name_type else ""
    return f"<edc:Names><edc:name>{name}</edc:name>{kind}</edc:Names>"


# --------------------------------------------------------------------------- meters


def test_meter_by_mrid(client: TestClient, coordinator: Coordinator) -> None:
    body = create(control([], devices=device("<edc:mRID>MTR-001</edc:mRID>")))
    assert send(client, body)[0] == "OK"
    assert order_of(coordinator, "MTR-001").state == "validated"


def test_meter_by_name_of_the_configured_name_type(
    client: TestClient, coordinator: Coordinator
) -> None:
    # a name of another NameType is not the meter number; the MeterNumber one is
    inner = named("CUST-77", "CustomerAccount") + named("MTR-002", "MeterNumber")
    assert send(client, create(control([], devices=device(inner))))[0] == "OK"
    assert [o.meter_id for o in coordinator.orders()] == ["MTR-002"]
    # only names of other types: a coded Error, not a guess
    result, errors, _ = send(client, create(control([], devices=device(named("X", "Other")))))
    assert result == "FAILED" and errors[0]["code"] == "2.11"
    assert "NameType 'MeterNumber'" in errors[0]["details"]


def test_the_name_type_is_configurable(coordinator: Coordinator) -> None:
    with make_client(coordinator, meter_name_type="NumeroMedidor") as client:
        inner = named("MTR-001", "MeterNumber") + named("MTR-003", "NumeroMedidor")
        result, _, message = send(client, create(control([], devices=device(inner))))
    assert result == "OK"
    assert [o.meter_id for o in coordinator.orders()] == ["MTR-003"]
    edc = "{http://iec.ch/TC57/2011/EndDeviceControls#}"
    # what we send names the meter with the configured NameType
    assert message.findtext(f".//{edc}EndDevices/{edc}Names/{edc}NameType/{edc}name") == (
        "NumeroMedidor"
    )


def test_meter_by_serial_number(client: TestClient, coordinator: Coordinator) -> None:
    body = create(control([], devices=device("<edc:serialNumber>MTR-004</edc:serialNumber>")))
    assert send(client, body)[0] == "OK"
    assert order_of(coordinator, "MTR-004").state == "validated"


def test_groups_without_end_devices_get_a_coded_error(client: TestClient) -> None:
    groups = "<edc:EndDeviceGroups><edc:mRID>G-1</edc:mRID></edc:EndDeviceGroups>"
    result, errors, _ = send(client, create(control([], devices=groups)))
    assert result == "FAILED" and errors[0]["code"] == "2.11"


# --------------------------------------------------------------------------- timing


def timing(inner: str) -> str:
    return f"<edc:primaryDeviceTiming>{inner}</edc:primaryDeviceTiming>"


def interval(start: datetime | None, end: datetime | None) -> str:
    parts = (f"<edc:end>{end.isoformat()}</edc:end>" if end else "") + (
        f"<edc:start>{start.isoformat()}</edc:start>" if start else ""
    )
    return f"<edc:interval>{parts}</edc:interval>"


def test_primary_device_timing_interval_is_not_before_and_deadline(
    client: TestClient, coordinator: Coordinator
) -> None:
    end = LATER + timedelta(hours=4)
    body = create(control(["MTR-001"], timing=timing(interval(LATER, end))))
    result, _, message = send(client, body)
    assert result == "OK"
    order = order_of(coordinator, "MTR-001")
    assert order.not_before == LATER and order.deadline == end
    edc = "{http://iec.ch/TC57/2011/EndDeviceControls#}"
    assert message.findtext(f".//{edc}primaryDeviceTiming/{edc}interval/{edc}start")


def test_primary_device_timing_duration_gives_the_deadline(
    client: TestClient, coordinator: Coordinator
) -> None:
    body = create(
        control(
            ["MTR-001"], timing=timing("<edc:duration>90</edc:duration>" + interval(LATER, None))
        )
    )
    assert send(client, body)[0] == "OK"
    assert order_of(coordinator, "MTR-001").deadline == LATER + timedelta(minutes=90)


def test_randomisation_spreads_the_start_over_the_first_half(
    client: TestClient, coordinator: Coordinator
) -> None:
    end = LATER + timedelta(hours=2)
    spread = timing("<edc:randomisation>start</edc:randomisation>" + interval(LATER, end))
    meters = ["MTR-001", "MTR-002", "MTR-003", "MTR-004"]
    assert send(client, create(control(meters, timing=spread), message_id="rnd-1"))[0] == "OK"
    starts = [order_of(coordinator, m).not_before for m in meters]
    assert all(s is not None and LATER <= s <= LATER + timedelta(hours=1) for s in starts)
    assert len(set(starts)) > 1  # not all at the same instant
    assert all(order_of(coordinator, m).deadline == end for m in meters)


@pytest.mark.parametrize("duration", ["INF", "NaN", "1e38", "-30"])
def test_a_duration_we_cannot_use_is_a_coded_error(client: TestClient, duration: str) -> None:
    body = create(
        control(
            ["MTR-001"],
            timing=timing(f"<edc:duration>{duration}</edc:duration>" + interval(LATER, None)),
        )
    )
    result, errors, _ = send(client, body)
    assert result == "FAILED" and errors[0]["code"] == "2.11"


def test_interval_end_before_start_is_a_coded_error(client: TestClient) -> None:
    body = create(control(["MTR-001"], timing=timing(interval(LATER, LATER - timedelta(hours=1)))))
    result, errors, _ = send(client, body)
    assert result == "FAILED" and errors[0]["code"] == "2.11"


# --------------------------------------------------------------------------- header


def test_full_standard_header_is_accepted(client: TestClient) -> None:
    now = datetime.now(UTC).isoformat()
    head = header(
        "create",
        "full-1",
        extra="<msg:Revision>2</msg:Revision>"
        f"<msg:ReplayDetection><msg:Nonce>n-full-1</msg:Nonce><msg:Created>{now}</msg:Created>"
        "</msg:ReplayDetection><msg:Context>PRODUCTION</msg:Context>"
        f"<msg:Timestamp>{now}</msg:Timestamp>",
        after="<msg:CorrelationID>corr-full</msg:CorrelationID><msg:Comment>hello</msg:Comment>"
        "<msg:Property><msg:Name>routing</msg:Name></msg:Property>"
        '<x:Trace xmlns:x="urn:example:legacy-extension">abc</x:Trace>',
    ).replace(
        "<msg:Source>LEGACY</msg:Source>",
        "<msg:Source>LEGACY</msg:Source><msg:AsyncReplyFlag>false</msg:AsyncReplyFlag>"
        "<msg:AckRequired>true</msg:AckRequired>"
        "<msg:User><msg:UserID>op7</msg:UserID><msg:Organization>Dist</msg:Organization></msg:User>",
    )
    result, _, message = send(client, create(control(["MTR-001"]), head=head))
    assert result == "OK"
    assert message.findtext(f".//{MSG}CorrelationID") == "corr-full"


def replayed(nonce: str, created: datetime, message_id: str) -> str:
    head = header(
        "create",
        message_id,
        extra=f"<msg:ReplayDetection><msg:Nonce>{nonce}</msg:Nonce>"
        f"<msg:Created>{created.isoformat()}</msg:Created></msg:ReplayDetection>",
    )
    return create(control(["MTR-001"]), head=head)


def test_replay_detection_refuses_a_replay_within_the_window(
    client: TestClient, coordinator: Coordinator
) -> None:
    now = datetime.now(UTC)
    assert send(client, replayed("nonce-A", now, "rd-1"))[0] == "OK"
    # the captured message sent again (even with a new MessageID): refused, coded
    result, errors, _ = send(client, replayed("nonce-A", now, "rd-2"))
    assert result == "FAILED" and errors[0]["code"] == "6.1"
    assert "already used" in errors[0]["details"]
    # Created outside the window: refused
    result, errors, _ = send(client, replayed("nonce-B", now - timedelta(hours=1), "rd-3"))
    assert result == "FAILED" and errors[0]["code"] == "6.1"
    assert "older than the replay window" in errors[0]["details"]
    assert len(coordinator.orders()) == 1


# --------------------------------------------------------------------------- request, payload


def test_priority_and_weekend_flag_as_request_options(
    client: TestClient, coordinator: Coordinator
) -> None:
    options = (
        special() + "<msg:Option><msg:name>priority</msg:name><msg:value>2</msg:value></msg:Option>"
    )
    assert send(client, create(control(["MTR-001"]), options=options))[0] == "OK"
    order = order_of(coordinator, "MTR-001")
    assert order.priority == 2 and order.special


def test_priority_as_header_property(client: TestClient, coordinator: Coordinator) -> None:
    head = header(
        "create",
        "prop-1",
        after="<msg:Property><msg:Name>priority</msg:Name><msg:Value>3</msg:Value></msg:Property>",
    )
    assert send(client, create(control(["MTR-001"]), head=head))[0] == "OK"
    assert order_of(coordinator, "MTR-001").priority == 3


def test_request_extension_is_ignored(client: TestClient) -> None:
    options = '<x:Hint xmlns:x="urn:example:legacy-extension">fast</x:Hint>'
    assert send(client, create(control(["MTR-001"]), options=options))[0] == "OK"


def test_payload_format_xml_accepted_other_formats_refused(client: TestClient) -> None:
    ok = create(control(["MTR-001"]), after_payload="<m:Format>XML</m:Format>")
    assert send(client, ok)[0] == "OK"
    pdf = create(control(["MTR-002"]), after_payload="<m:Format>PDF</m:Format>")
    result, errors, _ = send(client, pdf)
    assert result == "FAILED" and errors[0]["code"] == "2.12" and "PDF" in errors[0]["details"]


def test_payload_compressed_is_unpacked(client: TestClient, coordinator: Coordinator) -> None:
    inner = (
        '<edc:EndDeviceControls xmlns:edc="http://iec.ch/TC57/2011/EndDeviceControls#">'
        + control(["MTR-003"], tracking="Z-1")
        + "</edc:EndDeviceControls>"
    )
    packed = base64.b64encode(gzip.compress(inner.encode())).decode()
    body = create("", after_payload=f"<m:Compressed>{packed}</m:Compressed>")
    assert send(client, body)[0] == "OK"
    assert order_of(coordinator, "MTR-003").external_ref == "Z-1"
    broken = create("", after_payload="<m:Compressed>bm90IGd6aXA=</m:Compressed>")
    result, errors, _ = send(client, broken)
    assert result == "FAILED" and errors[0]["code"] == "2.12"


def test_operation_set_is_refused_with_a_coded_error(client: TestClient) -> None:
    body = create(
        control(["MTR-001"]),
        after_payload="<m:OperationSet><msg:enforceMsgSequence>true</msg:enforceMsgSequence>"
        "</m:OperationSet>",
    )
    result, errors, _ = send(client, body)
    assert result == "FAILED" and errors[0]["code"] == "2.12"


def test_pan_action_and_usage_points_are_accepted(client: TestClient) -> None:
    body = create(
        control(
            ["MTR-001"],
            after_reason="<edc:PanDisplay><edc:textMessage>hi</edc:textMessage></edc:PanDisplay>",
            timing="<edc:UsagePoints><edc:mRID>UP-1</edc:mRID></edc:UsagePoints>",
        )
    )
    assert send(client, body)[0] == "OK"


# --------------------------------------------------------------------------- operations


@pytest.mark.parametrize("operation", ["Change", "Close", "Delete"])
def test_unsupported_operations_answer_failed_with_a_coded_error(
    client: TestClient, coordinator: Coordinator, operation: str
) -> None:
    result, errors, message = send(client, create(control(["MTR-001"]), operation=operation))
    assert result == "FAILED" and errors[0]["code"] == "2.10"
    assert etree.QName(message).localname == "EndDeviceControlsResponseMessage"
    assert coordinator.orders() == []


def test_cancel_with_an_end_device_control_type_without_ref(
    client: TestClient, coordinator: Coordinator
) -> None:
    send(client, create(control(["MTR-001"], tracking="C-1")))
    result, _, message = send(client, cancel("C-1", message_id="cx-1"))
    assert result == "OK"
    assert set(states_of(message).values()) == {"cancelled"}


def test_cancel_and_get_by_request_id(client: TestClient, coordinator: Coordinator) -> None:
    _, _, created = send(client, create(control(["MTR-002"]), message_id="rid-1"))
    order_id = created.findtext(f".//{MSG}ID")
    assert order_id
    by_correlation = get('<g:ID idType="CorrelationID" kind="transaction">rid-1</g:ID>')
    result, _, found = send(client, by_correlation, "/soap/GetEndDeviceControls")
    assert result == "OK" and states_of(found) == {order_id: "validated"}
    body = envelope(
        f"<m:CancelEndDeviceControls>{header('cancel', 'rid-2')}"
        f'<m:Request><msg:ID kind="uuid" objectType="EndDeviceControl">{order_id}</msg:ID>'
        "</m:Request></m:CancelEndDeviceControls>"
    )
    assert send(client, body)[0] == "OK"
    by_id = get(f'<g:ID kind="uuid">{order_id}</g:ID>')
    assert states_of(send(client, by_id, "/soap/GetEndDeviceControls")[2]) == {
        order_id: "cancelled"
    }


def test_get_without_a_query_is_a_coded_error(client: TestClient) -> None:
    result, errors, _ = send(client, get(""), "/soap/GetEndDeviceControls")
    assert result == "FAILED" and errors[0]["code"] == "2.11"
