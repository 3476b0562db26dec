"""The campaign estimate (issue 14): the time a batch takes from the rate limits and
the lines' measured times, stated before it starts."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from fastapi.testclient import TestClient
from sqlalchemy.orm import Session

from central.app import create_app
from central.models import Order
from central.services.estimate import estimate, estimate_requests
from central.settings import Settings

Meters = Callable[..., list[str]]


def test_the_disconnect_rate_limit_sets_a_large_campaign() -> None:
    # 10,000 disconnects on 20 lines of 500 meters, 0.5 s per order on each line:
    # the lines would take 250 s, the shipped 600/min limit takes 16.7 minutes
    orders = [(f"dc{n % 20}", "disconnect") for n in range(10_000)]
    found = estimate(orders, disconnects_per_minute=600,
                     order_seconds={f"dc{n}": 0.5 for n in range(20)}, assumed_order_s=1.0)
    assert found.text == "about 17 min at 600/min (the disconnect rate limit)"
    assert round(found.seconds) == 1000 and found.disconnects == 10_000


def test_the_slowest_line_sets_a_campaign_of_reconnects() -> None:
    orders = [("dc1", "connect")] * 300 + [("dc2", "connect")] * 100
    found = estimate(orders, disconnects_per_minute=600, order_seconds={"dc1": 0.8, "dc2": 2.0},
                     assumed_order_s=1.0)
    assert found.seconds == 300 * 0.8  # dc1: 240 s; dc2: 200 s
    assert found.text == (
        "about 4 min (the lines of concentrator dc1: 300 orders at 0.80 s each, measured)"
    )
    unmeasured = estimate([("dc9", "connect")] * 10, disconnects_per_minute=600,
                          order_seconds={}, assumed_order_s=1.5)
    assert unmeasured.seconds == 15 and "assumed, none measured yet" in unmeasured.text


def test_measured_times_come_from_the_attempts_agents_reported(
    settings: Settings, session: Session, meters: Meters
) -> None:
    meters(3, concentrator="conc-a")
    now = datetime.now(UTC)
    for n in range(5):  # finished orders: two attempts of 0.4 s and 0.2 s each
        start = now - timedelta(minutes=n + 1)
        attempts = [
            {"number": k + 1, "started_at": (start + timedelta(seconds=k)).isoformat(),
             "finished_at": (start + timedelta(seconds=k + d)).isoformat()}
            for k, d in enumerate((0.4, 0.2))
        ]
        session.add(Order(id=f"done{n}", meter_id="m0", concentrator_id="conc-a",
                          action="connect", reason="payment_restored", state="completed_connected",
                          created_by="t", dispatched_at=start, finished_at=start,
                          result_json={"attempts": attempts}))
    session.commit()
    found = estimate_requests(session, settings, [("m1", "connect"), ("m2", "connect"),
                                                  ("unknown", "connect")])
    assert found.orders == 2  # an unknown meter is refused, not waited for
    assert abs(found.seconds - 2 * 0.6) < 1e-6
    assert "conc-a: 2 orders at 0.60 s each, measured" in found.text


def test_rest_states_the_estimate_before_and_with_the_batch(settings: Settings,
                                                            meters: Meters) -> None:
    meters(4, concentrator="conc-a")
    settings.disconnects_per_minute = 2
    body = {"orders": [{"meter_id": f"m{n}", "action": "disconnect", "reason": "losses",
                        "special": True} for n in range(4)]}
    headers = {"Authorization": "Bearer dev-operator"}
    with TestClient(create_app(settings)) as client:
        before = client.post("/api/v1/orders/estimate", json=body, headers=headers)
        assert before.status_code == 200, before.text
        assert before.json()["text"] == "about 2 min at 2/min (the disconnect rate limit)"
        assert client.get("/api/v1/orders", headers=headers).json() == []  # nothing created
        batch = client.post("/api/v1/orders/batch", json=body, headers=headers).json()
        assert batch["estimate"]["seconds"] == 120.0
