"""create / cancel / get mapped onto the coordinator's service functions: every
refusal with its code and a reason naming the meter, duplicates, replays."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from central.services import validation
from central.soap.auth import TokenAuthenticator
from central.soap.config import SoapSettings
from central.soap.gateway import SoapGateway
from central.soap.router import install, router
from central.soap.service_port import (
    CancelRequest,
    ControlRequest,
    ItemOutcome,
    OrderQuery,
    OrderView,
    Principal,
)
from central.soap.store import MessageLog
from tests.soap.conftest import OPERATOR, Coordinator, fast_soap_settings
from tests.soap.helpers import (
    EDC,
    EDCM,
    MSG,
    basic,
    cancel,
    control,
    create,
    fault_of,
    get_by_tracking,
    reply_of,
    special,
    states_of,
)


@pytest.fixture
def client(coordinator: Coordinator) -> Iterator[TestClient]:
    app = FastAPI()
    install(
        app,
        coordinator.settings,
        coordinator.sessions,
        fast_soap_settings(reply_address_prefixes=("https://legacy.example/",)),
    )
    with TestClient(app) as test_client:
        yield test_client


def send(client: TestClient, body: str) -> tuple[str, list[dict[str, str]], object]:
    response = client.post("/soap/cim", content=body, headers=basic())
    assert response.status_code == 200, response.text
    return reply_of(response.content)


def test_each_refusal_has_its_code_and_names_the_meter(
    client: TestClient, coordinator: Coordinator
) -> None:
    body = create(
        control(["MTR-PROT", "MTR-NEW", "MTR-GHOST"], code="3.31.0.23", reason="nonPayment")
        + control(["MTR-001"], code="3.31.0.99", tracking="T-2")
        + control(["MTR-002"], reason="because", tracking="T-3")
        + control(["MTR-003", "MTR-003"], tracking="T-4"),
        options=special(),
    )
    result, errors, _ = send(client, body)
    assert result == "PARTIAL"
    by_meter = {e["ID"]: e for e in errors}
    expected = {
        "MTR-PROT": ("3.4", "protected customer"),
        "MTR-NEW": ("3.1", "not commissioned"),
        "MTR-GHOST": ("2.4", "unknown meter"),
        "MTR-001": ("2.13", "unsupported control code"),
        "MTR-002": ("2.14", "unsupported reason"),
        "MTR-003": ("3.5", "duplicate"),
    }
    assert set(by_meter) == set(expected)
    for meter, (code, words) in expected.items():
        assert by_meter[meter]["code"] == code, by_meter[meter]
        assert meter in by_meter[meter]["reason"] and words in by_meter[meter]["reason"]
        assert by_meter[meter]["level"] == "FATAL"
    # only what passed the gateway's own checks reached the coordinator
    assert sorted(o.meter_id for o in coordinator.orders()) == [
        "MTR-003",
        "MTR-GHOST",
        "MTR-NEW",
        "MTR-PROT",
    ]


def test_not_a_working_day(client: TestClient, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(validation, "is_working_day", lambda day, country="CL": False)
    result, errors, _ = send(client, create(control(["MTR-001"], "3.31.0.23", "nonPayment")))
    assert result == "FAILED"
    assert errors[0]["code"] == "3.6" and "not a working day" in errors[0]["reason"]
    result, _, _ = send(
        client, create(control(["MTR-001"], "3.31.0.23", "nonPayment"), options=special())
    )
    assert result == "OK"


def test_duplicate_request_returns_the_existing_order(
    client: TestClient, coordinator: Coordinator
) -> None:
    _, _, first = send(client, create(control(["MTR-001"]), message_id="a-1"))
    result, errors, second = send(client, create(control(["MTR-001"]), message_id="a-2"))
    assert result == "OK" and errors == []
    ids = [
        m.findtext(f"{EDCM}Payload/{EDC}EndDeviceControls/{EDC}EndDeviceControl/{EDC}mRID")
        for m in (first, second)
    ]  # type: ignore[attr-defined]
    assert ids[0] == ids[1]
    informed = [
        e.findtext(f"{MSG}details") or ""
        for e in second.iter(f"{MSG}Error")  # type: ignore[attr-defined]
        if e.findtext(f"{MSG}level") == "INFORM"
    ]
    assert any("existing order" in text for text in informed)
    assert len(coordinator.orders()) == 1
    # a disconnect while that connect is active: refused as a duplicate, naming it
    result, errors, _ = send(
        client, create(control(["MTR-001"], "3.31.0.23", "nonPayment"), options=special())
    )
    assert result == "FAILED" and errors[0]["code"] == "3.5"
    assert "active connect order" in errors[0]["details"]


def test_cancel_and_get_by_issuer_tracking_id(client: TestClient) -> None:
    send(client, create(control(["MTR-001", "MTR-002"], tracking="T-9")))
    result, _, message = send(client, get_by_tracking("T-9"))
    assert result == "OK"
    assert sorted(states_of(message).values()) == ["validated", "validated"]  # type: ignore[arg-type]

    result, errors, _ = send(client, cancel("T-9", message_id="c-1"))
    assert result == "OK", errors
    result, _, message = send(client, get_by_tracking("T-9"))
    assert sorted(states_of(message).values()) == ["cancelled", "cancelled"]  # type: ignore[arg-type]

    # the same cancel MessageID: the same reply; a new cancel: nothing left to cancel
    again = client.post("/soap/cim", content=cancel("T-9", message_id="c-1"), headers=basic())
    first = client.post("/soap/cim", content=cancel("T-9", message_id="c-1"), headers=basic())
    assert again.content == first.content
    result, errors, _ = send(client, cancel("T-9", message_id="c-2"))
    assert result == "FAILED" and {e["code"] for e in errors} == {"3.8"}
    result, errors, _ = send(client, cancel("T-nothing"))
    assert result == "FAILED" and errors[0]["code"] == "2.4"
    result, errors, message = send(client, get_by_tracking("T-nothing"))
    assert result == "OK" and errors == []
    assert message.findtext(f".//{MSG}Error/{MSG}code") == "2.4"  # type: ignore[attr-defined]


def test_message_id_reused_for_another_operation(client: TestClient) -> None:
    send(client, create(control(["MTR-001"]), message_id="same"))
    response = client.post("/soap/cim", content=cancel("T-1", message_id="same"), headers=basic())
    assert response.status_code == 500
    assert fault_of(response.content)[2] == "message_id_reused"


def test_reply_address_must_be_a_configured_endpoint(client: TestClient) -> None:
    body = create(control(["MTR-001"])).replace(
        "<msg:Source>LEGACY</msg:Source>",
        "<msg:Source>LEGACY</msg:Source><msg:ReplyAddress>http://169.254.169.254/x"
        "</msg:ReplyAddress>",
    )
    response = client.post("/soap/cim", content=body, headers=basic())
    _code, text, problem, _ = fault_of(response.content)
    assert problem == "reply_address" and "169.254.169.254" in text


class BrokenPort:
    """A coordinator that fails once, then works."""

    def __init__(self) -> None:
        self.calls = 0

    def create(self, requests: Sequence[ControlRequest], actor: Principal) -> list[ItemOutcome]:
        self.calls += 1
        if self.calls == 1:
            raise RuntimeError("database went away")
        return [ItemOutcome(meter_id=r.meter_id, order_id=f"o-{r.meter_id}") for r in requests]

    def cancel(self, requests: Sequence[CancelRequest], actor: Principal) -> list[ItemOutcome]:
        return []

    def query(self, query: OrderQuery, actor: Principal) -> list[OrderView]:
        return []


def test_internal_error_is_a_server_fault_and_the_message_can_be_retried(
    coordinator: Coordinator,
) -> None:
    port = BrokenPort()
    app = FastAPI()
    app.include_router(router)
    app.state.soap_gateway = SoapGateway(
        port,
        TokenAuthenticator({OPERATOR[1]: (OPERATOR[0], "operator")}),
        MessageLog(coordinator.engine),
        SoapSettings(),
    )
    with TestClient(app) as test_client:
        body = create(control(["MTR-001"]), message_id="retry-me")
        response = test_client.post("/soap/cim", content=body, headers=basic())
        assert response.status_code == 500
        code, text, problem, _ = fault_of(response.content)
        assert code == "soapenv:Server" and problem == "internal"
        assert "database went away" not in text  # no internals leak
        response = test_client.post("/soap/cim", content=body, headers=basic())
        assert response.status_code == 200
        assert reply_of(response.content)[0] == "OK"


def test_a_claim_left_by_a_dead_request_is_taken_over(
    coordinator: Coordinator,
) -> None:
    """The process died after creating the orders but before storing the reply: the
    retry with the same MessageID runs again and finds the same orders."""
    app = FastAPI()
    gateway = install(
        app, coordinator.settings, coordinator.sessions, fast_soap_settings(stale_claim_s=0.1)
    )
    with TestClient(app) as test_client:
        body = create(control(["MTR-001", "MTR-002"]), message_id="dies-midway")
        first = test_client.post("/soap/cim", content=body, headers=basic())
        assert reply_of(first.content)[0] == "OK"
        # forget the stored reply, as if the process died before writing it
        from sqlalchemy import update

        from central.soap.store import soap_messages

        with coordinator.engine.begin() as conn:
            conn.execute(update(soap_messages).values(reply_xml=None, received_ts=0.0))
        again = test_client.post("/soap/cim", content=body, headers=basic())
        assert reply_of(again.content)[0] == "OK"
        assert len(coordinator.orders()) == 2
        stored = gateway.message_log.reply("dies-midway")
        assert stored is not None and stored[1] == again.content


def test_values_the_coordinator_cannot_take_are_refused_per_meter(
    client: TestClient, coordinator: Coordinator
) -> None:
    long_issuer = "I" * 250  # the schema allows 256, the coordinator stores 200
    too_high = "<msg:Option><msg:name>priority</msg:name><msg:value>99</msg:value></msg:Option>"
    result, errors, _ = send(client, create(control(["MTR-001"]), options=too_high))
    assert result == "FAILED" and "priority 99" in errors[0]["details"]
    assert errors[0]["code"] == "2.11" and errors[0]["ID"] == "MTR-001"
    body = create(
        control(["MTR-002"], tracking="T-long").replace(
            "<edc:issuerID>LEGACY</edc:issuerID>", f"<edc:issuerID>{long_issuer}</edc:issuerID>"
        )
        + control(
            ["MTR-003"],
            tracking="T-late",
            timing="<edc:primaryDeviceTiming><edc:interval><edc:end>2026-11-26T10:00:00Z</edc:end>"
            "<edc:start>2026-11-26T12:00:00Z</edc:start></edc:interval></edc:primaryDeviceTiming>",
        )
        + control(["MTR-004"], tracking="T-ok")
    )
    result, errors, _ = send(client, body)
    assert result == "PARTIAL"
    by_meter = {e["ID"]: e for e in errors}
    assert set(by_meter) == {"MTR-002", "MTR-003"}
    assert "issuer_id" in by_meter["MTR-002"]["details"]
    assert "end is not after its start" in by_meter["MTR-003"]["details"]
    assert all(e["code"] == "2.11" for e in errors)
    assert [o.meter_id for o in coordinator.orders()] == ["MTR-004"]
