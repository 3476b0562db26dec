"""Issue 11 through a real mosquitto (shipped config and ACL), on SQLite and PostgreSQL:
the coordinator sends the same signed command again until the agent's receipt and
never after its deadline; the real edge agent sends its result again until the
coordinator's ack, also when the coordinator could not store it the first time (the
broker had it PUBACKed: it never comes back from there), with a shared or a plain
results subscription."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.exc import OperationalError

from central.app import create_app
from central.services import results
from central.settings import Settings
from edge_agent.agent import EdgeAgent
from edge_agent.config import parse_config
from shared.broker import MosquittoBroker
from shared.codes import ControlState
from shared.contracts import OrderResult

from ..edge.fakes import FakeDriver, FakeMeter
from ..edge.helpers import config_dict, wait_for
from .agent import TestAgent, wait_until

ADMIN = {"Authorization": "Bearer dev-admin"}
OPERATOR = {"Authorization": "Bearer dev-operator"}


@pytest.fixture
def concentrator(broker: MosquittoBroker) -> str:
    name = f"conc-{uuid.uuid4().hex[:8]}"
    broker.add_user(name)
    return name


def start_app(database_url: str, broker: MosquittoBroker, keypair: tuple[bytes, bytes], **kw: Any) -> TestClient:
    tag = uuid.uuid4().hex[:8]
    # one account per replica, as deployed: the broker makes the account the client id,
    # and two replicas on one account take the session from each other every second
    broker.add_coordinator(f"central-{tag}")
    settings = Settings(
        environment="test",
        database_url=database_url,
        mqtt_host=broker.host,
        mqtt_port=broker.port,
        mqtt_username=f"central-{tag}",
        mqtt_password=broker.password,
        mqtt_client_id=f"central-{tag}",
        mqtt_share_group=f"g{tag}",
        signing_key_pem=keypair[0].decode(),
        sweep_interval_s=0.2,
        expiry_grace_s=0.5,
        **kw,
    )
    return TestClient(create_app(settings))


def import_meter(client: TestClient, concentrator: str, meter: str = "q0") -> None:
    csv = f"meter_id,concentrator_id,line_id,hdlc_address\n{meter},{concentrator},l1,17\n"
    response = client.post(
        "/api/v1/meters/import", content=csv, headers={**ADMIN, "Content-Type": "text/csv"}
    )
    assert response.json()["created"] == 1


def state(client: TestClient, order_id: str) -> str:
    return str(client.get(f"/api/v1/orders/{order_id}", headers=OPERATOR).json()["state"])


def test_the_command_is_sent_again_until_the_receipt_and_never_after_its_deadline(
    database_url: str, broker: MosquittoBroker, keypair: tuple[bytes, bytes], concentrator: str, public_key: Any
) -> None:
    with start_app(database_url, broker, keypair, republish_after_s=0.3, republish_max_s=0.3) as client:
        import_meter(client, concentrator, "q0")
        import_meter(client, concentrator, "q1")
        # an agent whose receipts never reach the coordinator (a broker that lost them)
        agent = TestAgent(broker.host, broker.port, concentrator, public_key, answer=False, receipts=False)
        try:
            soon = (datetime.now(UTC) + timedelta(seconds=2)).isoformat()
            short = client.post(
                "/api/v1/orders",
                json={"meter_id": "q1", "action": "connect", "reason": "payment_restored", "deadline": soon},
                headers=OPERATOR,
            ).json()["order"]
            order = client.post(
                "/api/v1/orders",
                json={"meter_id": "q0", "action": "connect", "reason": "payment_restored"},
                headers=OPERATOR,
            ).json()["order"]
            assert wait_until(lambda: len(agent.orders) == 2)
            first = {o.order_id: o for o in agent.orders}
            assert wait_until(lambda: sum(c.order_id == order["id"] for c in agent.copies) >= 2)
            # the very same command: same command id, same signed deadline
            for copy in agent.copies:
                assert copy == first[copy.order_id], (copy, first[copy.order_id])
            # the short one was sent again until its deadline, and not once after it
            def copies_of_short() -> int:
                return sum(c.order_id == short["id"] for c in agent.copies)

            deadline = first[short["id"]].deadline
            assert deadline == datetime.fromisoformat(soon)  # the order's own, signed
            assert wait_until(lambda: datetime.now(UTC) > deadline + timedelta(seconds=0.5))
            assert copies_of_short() >= 1
            after_deadline = copies_of_short()
            # the receipt stops the re-sending of the other
            agent.send_receipt(first[order["id"]])
            assert wait_until(lambda: state(client, order["id"]) == "delivered")
            before = len(agent.copies)
            assert not wait_until(lambda: len(agent.copies) > before + 1, timeout=1.5)
            assert copies_of_short() == after_deadline
            assert wait_until(lambda: state(client, short["id"]) == "expired", timeout=10)
            assert agent.rejected == []
        finally:
            agent.close()


def agent_config(tmp_path: Path, keypair: tuple[bytes, bytes], broker: MosquittoBroker, cid: str) -> Any:
    pub = tmp_path / "coordinator.pub"
    pub.write_bytes(keypair[1])
    data = config_dict(tmp_path, pub, cid, broker_url=broker.url)
    data["agent"].update({"resend_initial_s": 0.3, "resend_max_s": 0.6})
    return parse_config(data, environ={})


@pytest.mark.parametrize("subscription", ["shared", "plain"])
def test_the_agent_sends_its_result_again_until_the_coordinator_stored_and_acked_it(
    database_url: str,
    broker: MosquittoBroker,
    keypair: tuple[bytes, bytes],
    concentrator: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    subscription: str,
) -> None:
    real_apply: Callable[..., str] = results.apply_agent_message
    failures: list[int] = []
    edge: list[EdgeAgent] = []

    def database_down_once(session: Any, message: Any, **kw: Any) -> str:
        if isinstance(message, OrderResult) and not failures:
            failures.append(edge[0].store.outbox_depth())  # what the agent still holds
            raise OperationalError("UPDATE orders", {}, Exception("server closed the connection"))
        return real_apply(session, message, **kw)

    monkeypatch.setattr(results, "apply_agent_message", database_down_once)
    with start_app(database_url, broker, keypair, mqtt_results_subscription=subscription) as client:
        import_meter(client, concentrator, "q0")
        config = agent_config(tmp_path, keypair, broker, concentrator)
        agent = EdgeAgent(config, driver=FakeDriver({"q0": FakeMeter(ControlState.DISCONNECTED)}))
        edge.append(agent)
        with agent:
            wait_for(lambda: agent.store.meter_count() == 1, what="meter table from the coordinator")
            order = client.post(
                "/api/v1/orders",
                json={"meter_id": "q0", "action": "connect", "reason": "payment_restored"},
                headers=OPERATOR,
            ).json()["order"]
            assert wait_until(lambda: state(client, order["id"]) == "completed_connected", timeout=15), state(
                client, order["id"]
            )
            # the first copy failed to store and the broker had it acknowledged: only the
            # agent's re-sending brought it; the result was still in its outbox then
            assert failures and failures[0] >= 1
            wait_for(lambda: agent.store.outbox_depth() == 0, what="outbox emptied by the acks")
        body = client.get(f"/api/v1/orders/{order['id']}", headers=OPERATOR).json()
        events = [e["event"] for e in body["events"]]
        assert events.count("complete_connected") == 1 and events.count("attempt") == 1
        assert "deliver" in events


def test_two_replicas_each_with_every_result_record_it_once(
    database_url: str, broker: MosquittoBroker, keypair: tuple[bytes, bytes], concentrator: str, tmp_path: Path
) -> None:
    """Several coordinators, plain subscription: each gets every receipt and result and
    handles it idempotently; the order's timeline has each step once."""
    with start_app(database_url, broker, keypair, mqtt_results_subscription="plain") as first:
        import_meter(first, concentrator, "q0")
        with start_app(database_url, broker, keypair, mqtt_results_subscription="plain") as second:
            config = agent_config(tmp_path, keypair, broker, concentrator)
            agent = EdgeAgent(config, driver=FakeDriver({"q0": FakeMeter(ControlState.CONNECTED)}))
            with agent:
                wait_for(lambda: agent.store.meter_count() == 1, what="meter table")
                order = second.post(
                    "/api/v1/orders",
                    json={"meter_id": "q0", "action": "disconnect", "reason": "losses", "special": True},
                    headers=OPERATOR,
                ).json()["order"]
                assert wait_until(lambda: state(first, order["id"]) == "completed_disconnected", timeout=15)
                wait_for(lambda: agent.store.outbox_depth() == 0, what="outbox emptied by the acks")
            events = [e["event"] for e in first.get(f"/api/v1/orders/{order['id']}", headers=OPERATOR).json()["events"]]
            assert events.count("deliver") == 1 and events.count("complete_disconnected") == 1
            assert events.count("attempt") == 1
