"""REST callers cannot choose where results go nor the channel in the audit trail
(issue 12, item 2), on SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from central.app import create_app
from central.settings import Settings

ADMIN = {"Authorization": "Bearer dev-admin"}
OPERATOR = {"Authorization": "Bearer dev-operator"}
CSV = "meter_id,concentrator_id,line_id,hdlc_address\nm1,conc-a,l1,17\nm2,conc-a,l1,18\n"


@pytest.fixture
def client(database_url: str) -> Iterator[TestClient]:
    settings = Settings(environment="test", database_url=database_url, mqtt_enabled=False)
    with TestClient(create_app(settings)) as test_client:
        headers = {**ADMIN, "Content-Type": "text/csv"}
        assert test_client.post("/api/v1/meters/import", content=CSV, headers=headers).status_code == 200
        yield test_client


def order(**extra: object) -> dict[str, object]:
    return {"meter_id": "m1", "action": "connect", "reason": "payment_restored", **extra}


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("reply_address", "gopher://127.0.0.1:70/_x"),
        ("reply_address", "http://x@127.0.0.1:9/steal"),
        ("source", "soap"),
    ],
)
def test_a_rest_caller_naming_a_channel_field_is_refused_and_nothing_is_stored(
    client: TestClient, field: str, value: str
) -> None:
    for path, body in (
        ("/api/v1/orders", order(**{field: value})),
        ("/api/v1/orders/batch", {"orders": [order(), order(meter_id="m2", **{field: value})]}),
    ):
        response = client.post(path, json=body, headers=OPERATOR)
        assert response.status_code == 422, response.text
        (error,) = response.json()["detail"]
        assert field in error["msg"]
        assert "channel" in error["msg"]
    assert client.get("/api/v1/orders", headers=OPERATOR).json() == []


def test_the_audit_trail_shows_the_channel_the_request_came_in_through(
    client: TestClient,
) -> None:
    created = client.post("/api/v1/orders", json=order(), headers=OPERATOR)
    assert created.status_code == 201, created.text
    shown = client.get(f"/api/v1/orders/{created.json()['order']['id']}", headers=OPERATOR).json()
    assert shown["source"] == "rest"
    assert "via rest" in shown["events"][0]["detail"]
