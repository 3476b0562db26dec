"""Issue 17 must-show, through a real mosquitto (shipped config and ACL), the
coordinator's app and a fake agent, on SQLite and PostgreSQL: a burst of disconnects
from one REST operator at 5x the configured limit is quarantined and never published
(an observer on the concentrator's command topic sees nothing for them), released by
an approver (not the placer), then published and executed."""

from __future__ import annotations

import queue
import time
import uuid
from collections.abc import Iterator
from typing import Any

import paho.mqtt.client as paho
import pytest
from fastapi.testclient import TestClient
from paho.mqtt.enums import CallbackAPIVersion

from central.services import validation
from central.settings import AnomalySettings, ScopeLimits
from shared import topics
from shared.broker import MosquittoBroker
from shared.contracts import OrderCommand
from shared.message_kinds import parse_command
from shared.signing import open_envelope

from .agent import TestAgent, wait_until
from .test_delivery_broker import start_app

ADMIN = {"Authorization": "Bearer dev-admin"}
OPERATOR = {"Authorization": "Bearer dev-operator"}
APPROVER = {"Authorization": "Bearer dev-approver"}
LIMIT = 5
OBSERVER = "rcd-central-2"  # a replica account: it may read the whole tree


class Observer:
    """Every command the broker delivers on one concentrator's command topic."""

    def __init__(self, broker: MosquittoBroker, concentrator: str) -> None:
        self.seen: queue.Queue[bytes] = queue.Queue()
        subscribed = queue.Queue[int]()
        self.client = paho.Client(CallbackAPIVersion.VERSION2, client_id=OBSERVER, protocol=paho.MQTTv5)
        self.client.username_pw_set(OBSERVER, broker.password)
        self.client.on_connect = lambda c, *_a: c.subscribe(topics.commands(concentrator), qos=1)
        self.client.on_subscribe = lambda *_a: subscribed.put(1)
        self.client.on_message = lambda _c, _u, m: self.seen.put(bytes(m.payload))
        self.client.connect(broker.host, broker.port)
        self.client.loop_start()
        subscribed.get(timeout=10)

    def order_ids(self) -> list[str]:
        found = []
        while True:
            try:
                payload = self.seen.get_nowait()
            except queue.Empty:
                return found
            command = parse_command(open_envelope(payload).body)
            if isinstance(command, OrderCommand):
                found.append(command.order_id)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


@pytest.fixture
def concentrator(broker: MosquittoBroker) -> str:
    name = f"conc-{uuid.uuid4().hex[:8]}"
    broker.add_user(name)
    broker.add_user(OBSERVER)
    return name


@pytest.fixture
def working_day(monkeypatch: pytest.MonkeyPatch) -> None:
    """Ordinary disconnects are refused on Chilean non-working days; this test is not
    about the calendar (the real clock runs here)."""
    monkeypatch.setattr(validation, "is_working_day", lambda day, country="CL": True)


@pytest.fixture
def observer(broker: MosquittoBroker, concentrator: str) -> Iterator[Observer]:
    watching = Observer(broker, concentrator)
    try:
        yield watching
    finally:
        watching.close()


def state_of(client: TestClient, order_id: str) -> str:
    return str(client.get(f"/api/v1/orders/{order_id}", headers=OPERATOR).json()["state"])


def test_a_burst_is_quarantined_unpublished_then_released_and_executed(
    database_url: str,
    broker: MosquittoBroker,
    keypair: tuple[bytes, bytes],
    public_key: Any,
    concentrator: str,
    observer: Observer,
    working_day: None,
) -> None:
    anomaly = AnomalySettings(limits=ScopeLimits(source=LIMIT), baseline_weeks=0)
    meters = [f"b{n:02d}" for n in range(5 * LIMIT)]
    with start_app(database_url, broker, keypair, anomaly=anomaly, approval_threshold=1000) as client:
        csv = "meter_id,concentrator_id,line_id,hdlc_address\n" + "".join(
            f"{m},{concentrator},l1,{16 + n}\n" for n, m in enumerate(meters)
        )
        imported = client.post(
            "/api/v1/meters/import", content=csv, headers={**ADMIN, "Content-Type": "text/csv"}
        )
        assert imported.json()["created"] == len(meters)
        agent = TestAgent(broker.host, broker.port, concentrator, public_key)
        try:
            body = {
                "orders": [
                    {"meter_id": m, "action": "disconnect", "reason": "non_payment"} for m in meters
                ]
            }
            items = client.post("/api/v1/orders/batch", json=body, headers=OPERATOR).json()["items"]
            ids = [i["order_id"] for i in items]
            assert {i["state"] for i in items} == {"quarantined"}
            time.sleep(1.0)  # five dispatch passes (every 0.2 s)
            assert observer.order_ids() == [] and agent.orders == []
            [open_one] = client.get(
                "/api/v1/quarantines", params={"state": "open"}, headers=OPERATOR
            ).json()
            assert open_one["held"] == len(meters) and open_one["placed_by"] == ["dev-operator"]
            assert open_one["scope_kind"] == "source" and open_one["threshold"] == LIMIT
            tiles = client.get("/dashboard/api/stats", headers=OPERATOR).json()
            assert tiles["quarantined"] == len(meters) and tiles["quarantines_open"] == 1
            assert "rcd_quarantines_open 1.0" in client.get("/metrics", headers=OPERATOR).text

            release = f"/api/v1/quarantines/{open_one['id']}/release"
            assert client.post(release, headers=OPERATOR).status_code == 403  # role
            released = client.post(release, json={"note": "planned"}, headers=APPROVER)
            assert released.status_code == 200 and released.json()["state"] == "released"
            assert wait_until(
                lambda: {state_of(client, i) for i in ids} == {"completed_disconnected"},
                timeout=20,
            )
            assert sorted(observer.order_ids()) == sorted(ids)  # each one published
            events = [
                e["event"]
                for e in client.get(f"/api/v1/orders/{ids[0]}", headers=OPERATOR).json()["events"]
            ]
            assert events[:5] == ["receive", "validate", "quarantine", "release", "dispatch"]
            assert "complete_disconnected" in events
        finally:
            agent.close()
