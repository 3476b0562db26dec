"""The REST API: OpenAPI served, every route checks its role, the main flows."""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError

from central.app import create_app
from central.services import validation
from central.settings import Settings

ROLES = ["viewer", "operator", "approver", "admin"]
TOKENS = {role: f"tok-{role}" for role in ROLES}
TOKENS_SETTING = {tok: {"name": f"{role}-person", "role": role} for role, tok in TOKENS.items()}
PUBLIC = {("GET", "/health"), ("GET", "/ready")}

# The lowest role each route accepts.
REQUIRED = {
    ("POST", "/api/v1/orders/batch"): "operator",
    ("POST", "/api/v1/orders/estimate"): "viewer",
    ("POST", "/api/v1/orders"): "operator",
    ("GET", "/api/v1/orders"): "viewer",
    ("GET", "/api/v1/orders/{order_id}"): "viewer",
    ("POST", "/api/v1/orders/{order_id}/cancel"): "operator",
    ("POST", "/api/v1/orders/{order_id}/approve"): "approver",
    ("POST", "/api/v1/batches/{batch_id}/approve"): "approver",
    ("POST", "/api/v1/meters/import"): "admin",
    ("GET", "/api/v1/meters"): "viewer",
    ("GET", "/api/v1/meters/{meter_id}"): "viewer",
    ("PUT", "/api/v1/meters/{meter_id}"): "admin",
    ("PATCH", "/api/v1/meters/{meter_id}"): "admin",
    ("GET", "/api/v1/concentrators"): "viewer",
    ("GET", "/api/v1/concentrators/{concentrator_id}"): "viewer",
    ("PATCH", "/api/v1/concentrators/{concentrator_id}"): "admin",
    ("GET", "/api/v1/work-orders"): "viewer",
    ("GET", "/api/v1/work-orders/export"): "viewer",
    ("GET", "/api/v1/work-orders/{work_order_id}"): "viewer",
    ("POST", "/api/v1/work-orders/{work_order_id}/close"): "operator",
    ("GET", "/api/v1/rejected-messages"): "operator",
    ("GET", "/api/v1/protection-changes"): "operator",
    ("POST", "/api/v1/protection-changes/{change_id}/approve"): "approver",
    ("GET", "/metrics"): "viewer",
    ("GET", "/api/v1/meters/{meter_id}/relay-history"): "viewer",
    ("GET", "/api/v1/relay-alarms"): "viewer",
    ("POST", "/api/v1/relay-alarms/{alarm_id}/ack"): "operator",
    ("POST", "/api/v1/relay-alarms/{alarm_id}/close"): "operator",
    ("GET", "/api/v1/incidents"): "viewer",
    ("GET", "/api/v1/incidents/{incident_id}"): "viewer",
    ("POST", "/api/v1/incidents/{incident_id}/ack"): "operator",
    ("POST", "/api/v1/incidents/{incident_id}/close"): "operator",
    ("POST", "/api/v1/incidents/{incident_id}/restore"): "operator",
}

CSV = (
    "meter_id,concentrator_id,line_id,hdlc_address,protected_customer\n"
    "m1,conc-a,l1,17,no\nm2,conc-a,l1,18,no\nm3,conc-a,l1,19,yes\n"
)


@pytest.fixture
def sqlite_settings(sqlite_url: str) -> Settings:
    return Settings(
        environment="test",
        database_url=sqlite_url,
        mqtt_enabled=False,
        api_tokens=TOKENS_SETTING,  # type: ignore[arg-type]
        approval_threshold=2,
    )


@pytest.fixture
def client(sqlite_settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(sqlite_settings)) as test_client:
        yield test_client


def auth(role: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {TOKENS[role]}"}


def test_openapi_is_served(client: TestClient) -> None:
    doc = client.get("/openapi.json").json()
    assert "/api/v1/orders/batch" in doc["paths"]
    assert "HTTPBearer" in doc["components"]["securitySchemes"]
    assert client.get("/docs").status_code == 200


def _our_routes(client: TestClient) -> set[tuple[str, str]]:
    """Every operation in the served OpenAPI document (other parts' routers excluded)."""
    doc = client.get("/openapi.json").json()
    return {
        (method.upper(), path)
        for path, operations in doc["paths"].items()
        if not path.startswith(("/dashboard", "/soap"))
        for method in operations
    }


def test_every_route_checks_its_role(client: TestClient) -> None:
    routes = _our_routes(client)
    assert routes - PUBLIC == set(REQUIRED), "REQUIRED must list every route"
    for (method, path), role in REQUIRED.items():
        url = re.sub(r"\{[^}]+\}", "x1", path)
        assert client.request(method, url).status_code == 401, (method, path)
        assert (
            client.request(method, url, headers={"Authorization": "Bearer wrong"}).status_code
            == 401
        )
        below = ROLES.index(role) - 1
        if below >= 0:
            answer = client.request(method, url, headers=auth(ROLES[below]))
            assert answer.status_code == 403, (method, path, answer.text)
        answer = client.request(method, url, headers=auth(role), json={})
        assert answer.status_code not in (401, 403), (method, path)
    for method, path in PUBLIC:
        assert client.request(method, path).status_code == 200


def test_flow_over_rest(client: TestClient) -> None:
    imported = client.post(
        "/api/v1/meters/import", content=CSV, headers={**auth("admin"), "Content-Type": "text/csv"}
    )
    assert imported.json()["created"] == 3, imported.text
    answer = client.post(
        "/api/v1/orders",
        json={"meter_id": "m3", "action": "disconnect", "reason": "non_payment", "special": True},
        headers=auth("operator"),
    )
    assert answer.status_code == 200 and answer.json()["item"]["code"] == "protected_customer"
    answer = client.post(
        "/api/v1/orders",
        json={"meter_id": "m1", "action": "connect", "reason": "payment_restored"},
        headers=auth("operator"),
    )
    assert answer.status_code == 201
    order_id = answer.json()["order"]["id"]
    shown = client.get(f"/api/v1/orders/{order_id}", headers=auth("viewer")).json()
    assert [e["step"] for e in shown["events"]] == [2, 3]
    assert (
        client.get("/api/v1/orders", params={"state": "validated"}, headers=auth("viewer")).json()[
            0
        ]["id"]
        == order_id
    )
    cancelled = client.post(
        f"/api/v1/orders/{order_id}/cancel",
        json={"detail": "customer called"},
        headers=auth("operator"),
    )
    assert cancelled.json()["state"] == "cancelled"
    assert (
        client.post(f"/api/v1/orders/{order_id}/cancel", headers=auth("operator")).status_code
        == 409
    )
    assert client.get("/api/v1/orders/nope", headers=auth("viewer")).status_code == 404
    # batch above the approval threshold (2 disconnects) -> approval by another person
    batch = client.post(
        "/api/v1/orders/batch",
        json={
            "orders": [
                {"meter_id": m, "action": "disconnect", "reason": "losses", "special": True}
                for m in ("m1", "m2", "m3")
            ]
        },
        headers=auth("approver"),
    ).json()
    assert (batch["accepted"], batch["refused"]) == (2, 1)
    # under the threshold: held only on a weekend or holiday, where the special flag
    # lifts the working-day rule only with a second person's approval (issue 12)
    today = validation.local_day(datetime.now(UTC), "America/Santiago")
    assert batch["needs_approval"] is not validation.is_working_day(today)
    batch = client.post(
        "/api/v1/orders/batch",
        json={
            "orders": [
                {
                    "meter_id": m,
                    "action": "disconnect",
                    "reason": "losses",
                    "special": True,
                    "idempotency_key": f"k-{m}",
                }
                for m in ("m1", "m2")
            ]
        },
        headers=auth("approver"),
    ).json()
    assert batch["items"][0]["duplicate"]
    metrics = client.get("/metrics", headers=auth("viewer")).text
    assert (
        'rcd_orders{state="validated"}' in metrics and "rcd_order_step_latency_seconds" in metrics
    )
    assert client.get("/api/v1/concentrators", headers=auth("viewer")).json()[0]["id"] == "conc-a"
    assert client.get("/api/v1/work-orders/export", headers=auth("viewer")).text.startswith(
        "id,order_id"
    )
    assert client.get("/ready").json()["database"] == "ok"


def test_approval_over_rest(client: TestClient) -> None:
    client.post(
        "/api/v1/meters/import", content=CSV, headers={**auth("admin"), "Content-Type": "text/csv"}
    )
    body = {
        "orders": [
            {"meter_id": m, "action": "disconnect", "reason": "losses", "special": True}
            for m in ("m1", "m2", "m1x")
        ]
    }
    client.post(
        "/api/v1/meters/import",
        content="meter_id,concentrator_id,line_id,hdlc_address\nm1x,conc-a,l1,20\n",
        headers={**auth("admin"), "Content-Type": "text/csv"},
    )
    batch = client.post("/api/v1/orders/batch", json=body, headers=auth("approver")).json()
    assert batch["needs_approval"] and batch["accepted"] == 3
    own = client.post(f"/api/v1/batches/{batch['batch_id']}/approve", headers=auth("approver"))
    assert own.status_code == 403
    other = client.post(f"/api/v1/batches/{batch['batch_id']}/approve", headers=auth("admin"))
    assert other.status_code == 200 and other.json()["approved_by"] == "admin-person"


def test_production_refuses_defaults(sqlite_url: str) -> None:
    with pytest.raises(ValueError, match="refusing to start in production"):
        Settings(environment="production", database_url=sqlite_url)
    with pytest.raises(ValueError, match="RCD_API_TOKENS"):
        Settings(
            environment="production",
            database_url=sqlite_url,
            secret_key="x" * 32,
            mqtt_enabled=False,
        )
    ok = Settings(
        environment="production",
        database_url=sqlite_url,
        secret_key="x" * 32,
        mqtt_enabled=False,
        api_tokens={"a-long-production-token-123": {"name": "ops", "role": "admin"}},  # type: ignore[dict-item]
    )
    assert ok.environment == "production"


def test_settings_from_environment(monkeypatch: pytest.MonkeyPatch, sqlite_url: str) -> None:
    monkeypatch.setenv("RCD_DATABASE_URL", sqlite_url)
    monkeypatch.setenv("RCD_MAX_INFLIGHT_PER_CONCENTRATOR", "7")
    monkeypatch.setenv("RCD_API_TOKENS", '{"t1": {"name": "n", "role": "viewer"}}')
    settings = Settings()
    assert (
        settings.max_inflight_per_concentrator == 7 and settings.api_tokens["t1"].role == "viewer"
    )


def test_retry_setting_the_agent_would_refuse_stops_start_up(
    monkeypatch: pytest.MonkeyPatch, sqlite_url: str
) -> None:
    """A backoff above the contract's bound would make every signed command invalid:
    the coordinator refuses to start, naming the setting, rather than failing dispatch."""
    monkeypatch.setenv("RCD_DATABASE_URL", sqlite_url)
    monkeypatch.setenv("RCD_RETRY", '{"disconnect": {"backoff_initial_s": 7200}}')
    with pytest.raises(ValidationError) as info:
        Settings()
    assert "backoff_initial_s" in str(info.value)


def test_meter_values_the_agent_could_not_use_are_refused_by_name(client: TestClient) -> None:
    """A concentrator id that is not a topic segment, or an address out of DLMS range,
    is refused when written, not left silently out of the concentrator's meter table."""
    csv = (
        "meter_id,concentrator_id,line_id,hdlc_address,port\n"
        "ok1,conc-a,l1,17,\n"
        "bad1,conc/a,l1,18,\n"
        "bad2,conc-a,l1,5,\n"
        "bad3,conc-a,l 1,19,\n"
        "bad4,conc-a,l1,20,70000\n"
    )
    answer = client.post(
        "/api/v1/meters/import", content=csv, headers={**auth("admin"), "Content-Type": "text/csv"}
    )
    report = answer.json()
    assert report["created"] == 1, report
    errors = report["errors"]
    assert [e.split(":")[0] for e in errors] == ["line 3", "line 4", "line 5", "line 6"]
    for error, field in zip(
        errors, ["concentrator_id", "hdlc_address", "line_id", "port"], strict=True
    ):
        assert field in error, error
    patched = client.patch(
        "/api/v1/meters/ok1", json={"concentrator_id": "conc+#"}, headers=auth("admin")
    )
    assert patched.status_code == 422 and "concentrator_id" in patched.text
    shown = client.get("/api/v1/meters/ok1", headers=auth("viewer")).json()
    assert shown["concentrator_id"] == "conc-a"
