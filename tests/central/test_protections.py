"""Removing a protection takes a second person and leaves an alarm and an audit record
(issue 12, item 8), through the REST API on SQLite and PostgreSQL."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from datetime import timedelta

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session

from central.app import create_app
from central.services import dispatch, orders
from central.services.orders import OrderRequest
from central.settings import Settings
from shared.signing import CommandSigner

from .conftest import APPROVER, OPERATOR, SATURDAY, WORKDAY, RecordingPublisher

TOKENS = {
    "tok-admin-ana": {"name": "ana", "role": "admin"},
    "tok-admin-bea": {"name": "bea", "role": "admin"},
    "tok-approver-ana": {"name": "ana", "role": "approver"},
    "tok-approver-caro": {"name": "caro", "role": "approver"},
    "tok-operator-olga": {"name": "olga", "role": "operator"},
}
ANA = {"Authorization": "Bearer tok-admin-ana"}
ANA_APPROVER = {"Authorization": "Bearer tok-approver-ana"}
BEA = {"Authorization": "Bearer tok-admin-bea"}
CARO = {"Authorization": "Bearer tok-approver-caro"}
OLGA = {"Authorization": "Bearer tok-operator-olga"}
CSV = "meter_id,concentrator_id,line_id,hdlc_address,protected_customer\nm1,conc-a,l1,17,yes\n"


@pytest.fixture
def client(database_url: str) -> Iterator[TestClient]:
    settings = Settings(
        environment="test",
        database_url=database_url,
        mqtt_enabled=False,
        api_tokens=TOKENS,  # type: ignore[arg-type]
    )
    with TestClient(create_app(settings)) as test_client:
        headers = {**ANA, "Content-Type": "text/csv"}
        assert test_client.post("/api/v1/meters/import", content=CSV, headers=headers).status_code == 200
        yield test_client


def protected(client: TestClient) -> bool:
    flag: bool = client.get("/api/v1/meters/m1", headers=OLGA).json()["protected_customer"]
    return flag


def pending(client: TestClient) -> list[dict[str, object]]:
    rows: list[dict[str, object]] = client.get(
        "/api/v1/protection-changes?state=pending", headers=OLGA
    ).json()
    return rows


@pytest.mark.parametrize("how", ["patch", "put", "import"])
def test_one_admin_cannot_clear_the_flag_alone(
    client: TestClient, how: str, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.ERROR, logger="central.alarm"):
        if how == "patch":
            response = client.patch(
                "/api/v1/meters/m1", json={"protected_customer": False}, headers=ANA
            )
            assert response.json()["protection_change_pending"] is True
        elif how == "put":
            body = {"id": "m1", "concentrator_id": "conc-a", "line_id": "l1", "hdlc_address": 17}
            response = client.put("/api/v1/meters/m1", json=body, headers=ANA)
            assert response.json()["protection_change_pending"] is True
        else:
            csv = CSV.replace(",yes", ",no")
            response = client.post(
                "/api/v1/meters/import",
                content=csv,
                headers={**ANA, "Content-Type": "text/csv"},
            )
            assert response.json()["protection_pending"] == ["m1"]
        assert response.status_code == 200, response.text
    assert protected(client)  # still protected
    (change,) = pending(client)
    assert (change["meter_id"], change["requested_by"]) == ("m1", "ana")
    assert any("m1" in r.getMessage() and "ALARM" in r.getMessage() for r in caplog.records)
    # a disconnect is still refused (Ley 21.304)
    order = {"meter_id": "m1", "action": "disconnect", "reason": "non_payment", "special": True}
    refused = client.post("/api/v1/orders", json=order, headers=OLGA).json()
    assert refused["item"]["code"] == "protected_customer"


def test_a_second_person_clears_it_and_it_is_on_record(
    client: TestClient, caplog: pytest.LogCaptureFixture
) -> None:
    client.patch("/api/v1/meters/m1", json={"protected_customer": False}, headers=ANA)
    # asking twice makes no second request
    client.patch("/api/v1/meters/m1", json={"protected_customer": False}, headers=BEA)
    (change,) = pending(client)
    url = f"/api/v1/protection-changes/{change['id']}/approve"
    # the requester, even with the approver role, cannot approve; nor can an operator
    assert client.post(url, headers=ANA_APPROVER).status_code == 403
    assert client.post(url, headers=OLGA).status_code == 403
    assert protected(client)
    with caplog.at_level(logging.ERROR, logger="central.alarm"):
        approved = client.post(url, headers=CARO)
    assert approved.status_code == 200, approved.text
    assert (approved.json()["state"], approved.json()["decided_by"]) == ("approved", "caro")
    assert not protected(client)
    assert any("cleared" in r.getMessage() and "caro" in r.getMessage() for r in caplog.records)
    assert client.post(url, headers=CARO).status_code == 409  # decided once
    history = client.get("/api/v1/protection-changes", headers=OLGA).json()
    assert [(h["requested_by"], h["decided_by"]) for h in history] == [("ana", "caro")]
    metrics = client.get("/metrics", headers=OLGA).text
    assert 'rcd_protection_alarms_total{kind="protection_removed"}' in metrics


def test_setting_the_flag_needs_nobody(client: TestClient) -> None:
    client.post(
        "/api/v1/meters/import",
        content=CSV.replace("m1,", "m2,").replace(",17,", ",18,").replace(",yes", ",no"),
        headers={**ANA, "Content-Type": "text/csv"},
    )
    response = client.patch("/api/v1/meters/m2", json={"protected_customer": True}, headers=ANA)
    assert response.json()["protected_customer"] is True
    assert pending(client) == []


# -- the special flag (weekend rule) on disconnects -----------------------------------------


def test_special_disconnects_on_a_weekend_wait_for_a_second_person(
    session: Session,
    settings: Settings,
    meters: Callable[..., list[str]],
    publisher: RecordingPublisher,
    signer: CommandSigner,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """One operator flagging disconnects special on a Saturday does not lift the weekend
    rule alone: the batch is held, an alarm is raised, the timeline says why; once a
    second person approves, they go that same Saturday."""
    ids = meters(2)
    requests = [
        OrderRequest.model_validate(
            {"meter_id": m, "action": "disconnect", "reason": "non_payment", "special": True}
        )
        for m in ids
    ]
    with caplog.at_level(logging.ERROR, logger="central.alarm"):
        outcome = orders.create_orders(session, requests, OPERATOR, settings, now=SATURDAY)
        session.commit()
    assert outcome.needs_approval
    assert any("special" in r.getMessage() for r in caplog.records)
    events = orders.get_order(session, outcome.items[0].order_id or "").events
    assert any(e.event == "approval_required" and "special" in e.detail for e in events)
    later = SATURDAY + timedelta(minutes=5)
    assert dispatch.dispatch_ready(session, publisher, signer, settings, now=later) == 0
    orders.approve_batch(session, outcome.batch_id or "", APPROVER)
    session.commit()
    assert dispatch.dispatch_ready(session, publisher, signer, settings, now=later) == 2


def test_special_disconnects_on_a_working_day_are_not_held(
    session: Session, settings: Settings, meters: Callable[..., list[str]]
) -> None:
    request = OrderRequest.model_validate(
        {"meter_id": meters(1)[0], "action": "disconnect", "reason": "non_payment", "special": True}
    )
    outcome = orders.create_orders(session, [request], OPERATOR, settings, now=WORKDAY)
    assert not outcome.needs_approval
