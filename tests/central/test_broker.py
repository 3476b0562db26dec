"""The happy path through a real mosquitto (shipped config and ACL) with a test agent,
on SQLite and PostgreSQL: signed dispatch, results twice, failure -> work order,
cancel sent to the agent, meter table pushed, concentrator status."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from central.app import create_app
from central.settings import Settings
from shared.broker import MosquittoBroker

from .agent import TestAgent, wait_until

ADMIN = {"Authorization": "Bearer dev-admin"}
OPERATOR = {"Authorization": "Bearer dev-operator"}


@pytest.fixture
def concentrator(broker: MosquittoBroker) -> str:
    name = f"conc-{uuid.uuid4().hex[:8]}"
    broker.add_user(name)
    return name


@pytest.fixture
def app_client(
    database_url: str, broker: MosquittoBroker, keypair: tuple[bytes, bytes]
) -> Iterator[TestClient]:
    tag = uuid.uuid4().hex[:8]
    broker.add_coordinator(f"central-{tag}")  # one account per replica: its client id
    settings = Settings(
        environment="test",
        database_url=database_url,
        mqtt_host=broker.host,
        mqtt_port=broker.port,
        mqtt_password=broker.password,
        mqtt_username=f"central-{tag}",
        mqtt_share_group=f"g{tag}",
        signing_key_pem=keypair[0].decode(),
        sweep_interval_s=0.2,
        expiry_grace_s=0.5,
    )
    with TestClient(create_app(settings)) as client:
        yield client


def states(client: TestClient, ids: list[str]) -> list[str]:
    return [client.get(f"/api/v1/orders/{i}", headers=OPERATOR).json()["state"] for i in ids]


def test_orders_through_broker_and_agent(
    app_client: TestClient, concentrator: str, broker: MosquittoBroker, public_key
) -> None:  # type: ignore[no-untyped-def]
    csv = "meter_id,concentrator_id,line_id,hdlc_address\n" + "".join(
        f"{m},{concentrator},l1,{17 + n}\n" for n, m in enumerate(["m0", "m1", "bad2", "slow3"])
    )
    assert (
        app_client.post(
            "/api/v1/meters/import", content=csv, headers={**ADMIN, "Content-Type": "text/csv"}
        ).json()["created"]
        == 4
    )
    agent = TestAgent(broker.host, broker.port, concentrator, public_key)
    try:
        # the meter table arrives signed (retained), and the status is recorded
        assert wait_until(lambda: len(agent.tables) >= 1)
        assert {m.meter_id for m in agent.tables[-1].meters} == {"m0", "m1", "bad2", "slow3"}
        agent.publish_status(online=True, queue_depth=3)
        assert wait_until(
            lambda: app_client.get(
                f"/api/v1/concentrators/{concentrator}", headers=OPERATOR
            ).json()["online"]
        )
        agent.answer = True
        body = {
            "orders": [
                {"meter_id": "m0", "action": "disconnect", "reason": "losses", "special": True},
                {"meter_id": "m1", "action": "connect", "reason": "payment_restored"},
                {"meter_id": "bad2", "action": "disconnect", "reason": "losses", "special": True},
            ]
        }
        batch = app_client.post("/api/v1/orders/batch", json=body, headers=OPERATOR).json()
        assert batch["accepted"] == 3, batch
        ids = [item["order_id"] for item in batch["items"]]
        # By the answer every order that may go is claimed: by the request itself, or by
        # the background pass (every 0.2 s here) when it got there first; "dispatched"
        # counts only the request's own. A weekend holds the special disconnects.
        may_go = 1 if batch["needs_approval"] else 3
        assert batch["dispatched"] <= may_go, batch
        assert sum(s != "validated" for s in states(app_client, ids)) == may_go, batch
        if batch["needs_approval"]:
            approver = {"Authorization": "Bearer dev-approver"}
            url = f"/api/v1/batches/{batch['batch_id']}/approve"
            assert app_client.post(url, headers=approver).status_code == 200
        assert wait_until(
            lambda: (
                states(app_client, ids)
                == ["completed_disconnected", "completed_connected", "failed"]
            )
        ), states(app_client, ids)
        # every result was published twice: the second changed nothing
        order = app_client.get(f"/api/v1/orders/{ids[0]}", headers=OPERATOR).json()
        assert [e["event"] for e in order["events"]] == [
            "receive",
            "validate",
            "dispatch",
            "deliver",
            "attempt",
            "complete_disconnected",
        ]
        assert [e["step"] for e in order["events"]] == [2, 3, 4, 5, 6, 8]
        # step 5 came from the agent's receipt, step 6 from the attempt in its result
        assert "queue depth 1" in order["events"][3]["detail"]
        assert order["events"][4]["detail"] == "attempt 1: ok"
        assert order["energy_value"] == 42.5 and order["published_at"] is not None
        assert (
            app_client.get("/api/v1/meters/m0", headers=OPERATOR).json()["relay_state"]
            == "disconnected"
        )
        work = app_client.get("/api/v1/work-orders", headers=OPERATOR).json()
        assert [(w["order_id"], w["reason"]) for w in work] == [(ids[2], "meter_not_responding")]
        assert len(agent.orders) == 3 and agent.rejected == []
        # cancel of an in-flight order goes to the agent, whose answer ends it
        agent.answer = False
        slow = app_client.post(
            "/api/v1/orders",
            json={"meter_id": "slow3", "action": "connect", "reason": "payment_restored"},
            headers=OPERATOR,
        ).json()["order"]
        assert slow["state"] in ("dispatched", "delivered")  # the receipt may be in already
        # the receipt may come in while the cancel is decided: the cancel still stands
        cancel = app_client.post(f"/api/v1/orders/{slow['id']}/cancel", headers=OPERATOR)
        assert cancel.status_code == 200 and cancel.json()["cancel_requested"], cancel.text
        assert wait_until(lambda: len(agent.cancels) == 1)
        from shared.codes import Outcome, ReasonCode

        agent.answer_order(agent.orders[-1], Outcome.CANCELLED, ReasonCode.CANCELLED)
        assert wait_until(lambda: states(app_client, [slow["id"]]) == ["cancelled"])
    finally:
        agent.close()


def test_no_answer_expires_into_a_work_order(
    app_client: TestClient, concentrator: str, broker: MosquittoBroker, public_key
) -> None:  # type: ignore[no-untyped-def]
    from datetime import UTC, datetime, timedelta

    csv = f"meter_id,concentrator_id,line_id,hdlc_address\nq0,{concentrator},l1,17\n"
    app_client.post(
        "/api/v1/meters/import", content=csv, headers={**ADMIN, "Content-Type": "text/csv"}
    )
    agent = TestAgent(broker.host, broker.port, concentrator, public_key, answer=False)
    try:
        deadline = (datetime.now(UTC) + timedelta(seconds=1)).isoformat()
        order = app_client.post(
            "/api/v1/orders",
            json={
                "meter_id": "q0",
                "action": "connect",
                "reason": "payment_restored",
                "deadline": deadline,
            },
            headers=OPERATOR,
        ).json()["order"]
        assert order["state"] in ("dispatched", "delivered")  # the receipt may be in already
        assert wait_until(lambda: len(agent.orders) == 1)
        assert wait_until(lambda: states(app_client, [order["id"]]) == ["expired"], timeout=10)
        work = app_client.get(
            "/api/v1/work-orders", params={"meter_id": "q0"}, headers=OPERATOR
        ).json()
        assert [(w["order_id"], w["reason"]) for w in work] == [(order["id"], "expired")]
        events = app_client.get(f"/api/v1/orders/{order['id']}", headers=OPERATOR).json()["events"]
        assert [e["step"] for e in events][-2:] == [8, 10]
    finally:
        agent.close()


def link_settings(broker: MosquittoBroker, account: str, **kw: object) -> Settings:
    """Settings of a bare MQTT link on ``account`` (no database, no app)."""
    return Settings(
        environment="test",
        mqtt_host=broker.host,
        mqtt_port=broker.port,
        mqtt_password=broker.password,
        mqtt_username=account,
        **kw,  # type: ignore[arg-type]
    )


def test_mqtt_311_link_publishes_and_consumes(broker: MosquittoBroker, concentrator: str) -> None:
    """The demo's embedded broker speaks only MQTT 3.1.1: the link works there too."""
    import threading

    from central.mqtt import MqttLink
    from central.services.dispatch import Outgoing
    from shared import topics

    got = threading.Event()
    account = f"central311-{uuid.uuid4().hex[:6]}"
    broker.add_coordinator(account)
    settings = link_settings(broker, account, mqtt_protocol="3.1.1")
    link = MqttLink(settings, on_result=lambda _t, _p: got.set() or True).start()
    try:
        link.publish_many([Outgoing(topics.results(concentrator), b"{}")])
        assert got.wait(5)
    finally:
        link.close()


def test_two_links_on_one_account_are_named_as_the_cause_of_their_drops(
    broker: MosquittoBroker, caplog: pytest.LogCaptureFixture
) -> None:
    """The shipped broker makes the account the client id: two replicas sharing one take
    the session from each other; the coordinator says so instead of only reconnecting."""
    from central.mqtt import MqttLink

    account = f"central-shared-{uuid.uuid4().hex[:6]}"
    broker.add_coordinator(account)
    links = []
    try:
        for replica in ("a", "b"):
            # the broker overrides the client id with the account
            settings = link_settings(broker, account, mqtt_client_id=f"{account}-{replica}")
            links.append(MqttLink(settings, on_status=lambda _t, _p: True).start())
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and "another client connected with account" not in caplog.text:
            time.sleep(0.2)
    finally:
        for link in links:
            link.close()
    assert f"another client connected with account {account!r}" in caplog.text
    assert "RCD_MQTT_USERNAME" in caplog.text


def test_a_table_that_cannot_be_sent_holds_back_nothing_else(
    app_client: TestClient, concentrator: str, broker: MosquittoBroker, public_key
) -> None:  # type: ignore[no-untyped-def]
    """One thing the background pass cannot do does not stop the rest: a concentrator
    whose meter table cannot be sent (more meters than one table carries) still lets the
    other concentrators get their tables, and orders and cancels still go out."""
    crowded = f"crowded-{uuid.uuid4().hex[:6]}"
    rows = "".join(f"c{n},{crowded},l{n // 4000},{16 + n % 4000}\n" for n in range(5001))
    rows += f"m0,{concentrator},l1,17\nm1,{concentrator},l1,18\n"
    imported = app_client.post(
        "/api/v1/meters/import",
        content="meter_id,concentrator_id,line_id,hdlc_address\n" + rows,
        headers={**ADMIN, "Content-Type": "text/csv"},
    ).json()
    assert imported["created"] == 5003 and imported["errors"] == []
    agent = TestAgent(broker.host, broker.port, concentrator, public_key, answer=False)
    # Each background pass builds the crowded table again (5,001 meters) and holds the
    # dispatch lock meanwhile: on a loaded machine a pass takes seconds, and the table,
    # the order and the cancel each wait for one or two of them.
    slow = 30.0
    try:
        # conc's table arrives although the crowded one (5,001 > 5,000) is refused each pass
        assert wait_until(lambda: len(agent.tables) >= 1, slow)
        assert {m.meter_id for m in agent.tables[-1].meters} == {"m0", "m1"}
        crowded_row = app_client.get(f"/api/v1/concentrators/{crowded}", headers=OPERATOR).json()
        assert crowded_row["table_pushed_generation"] < crowded_row["table_generation"]
        # orders still go out, and so does a cancel requested by the operator
        order = app_client.post(
            "/api/v1/orders",
            json={"meter_id": "m0", "action": "connect", "reason": "payment_restored"},
            headers=OPERATOR,
        ).json()["order"]
        assert wait_until(lambda: len(agent.orders) == 1, slow)
        cancel = app_client.post(f"/api/v1/orders/{order['id']}/cancel", headers=OPERATOR)
        assert cancel.status_code == 200, cancel.text  # the receipt may come in meanwhile
        assert wait_until(lambda: len(agent.cancels) == 1, slow)
        from shared.codes import Outcome, ReasonCode

        agent.answer_order(agent.orders[-1], Outcome.CANCELLED, ReasonCode.CANCELLED)
        assert wait_until(lambda: states(app_client, [order["id"]]) == ["cancelled"], slow)
    finally:
        agent.close()
