"""Numbers the database cannot hold are refused with 422, not a 500 (issue 12, item 4),
on SQLite (where they raised OverflowError) and PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from central.app import create_app
from central.settings import Settings

ADMIN = {"Authorization": "Bearer dev-admin"}
HUGE = "868833672876317546119168"


@pytest.fixture
def client(database_url: str) -> Iterator[TestClient]:
    settings = Settings(environment="test", database_url=database_url, mqtt_enabled=False)
    with TestClient(create_app(settings)) as test_client:
        yield test_client


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", f"/api/v1/orders?offset={HUGE}"),
        ("GET", f"/api/v1/work-orders?offset={HUGE}"),
        ("GET", f"/api/v1/rejected-messages?offset={HUGE}"),
        ("GET", f"/api/v1/meters?offset={HUGE}"),
        ("GET", f"/api/v1/protection-changes?offset={HUGE}"),
        ("GET", f"/api/v1/work-orders/{HUGE}"),
        ("POST", f"/api/v1/work-orders/{HUGE}/close"),
        ("GET", "/api/v1/work-orders/2147483648"),
        ("POST", f"/api/v1/protection-changes/{HUGE}/approve"),
    ],
)
def test_a_number_too_large_for_the_database_is_a_422_naming_it(
    client: TestClient, method: str, path: str
) -> None:
    response = client.request(method, path, headers=ADMIN, json={"outcome": "other"})
    assert response.status_code == 422, response.text
    (error,) = response.json()["detail"]
    assert error["loc"][-1] in ("offset", "work_order_id", "change_id")


def test_the_largest_number_it_holds_is_a_plain_answer(client: TestClient) -> None:
    assert client.get("/api/v1/orders?offset=2147483647", headers=ADMIN).json() == []
    assert client.get("/api/v1/work-orders/2147483647", headers=ADMIN).status_code == 404
