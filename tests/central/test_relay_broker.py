"""Issue 16 through a real mosquitto (shipped ACL), on SQLite and PostgreSQL: a fake agent
publishes relay reports on its result topic as the real agent does; the coordinator
stores each in one transaction and then acks it by ``report_id`` (copies included); the
customer's button on an armed meter ends the order connected; a report about another
concentrator's meter is kept as rejected, changes nothing and is acked; a malformed one
is kept as rejected and not acked (there is no key to ack)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

import pytest

from shared import topics
from shared.broker import MosquittoBroker
from shared.codes import ControlState, Outcome, ReasonCode
from shared.contracts import OrderCommand, RelayLogEntry, RelayReading, RelayReport

from .agent import TestAgent, wait_until
from .test_delivery_broker import ADMIN, OPERATOR, import_meter, start_app, state


@pytest.fixture
def concentrator(broker: MosquittoBroker) -> str:
    name = f"conc-{uuid.uuid4().hex[:8]}"
    broker.add_user(name)
    return name


def armed(command: OrderCommand) -> tuple[Outcome, ReasonCode | None]:
    return Outcome.ARMED, None


def acked(agent: TestAgent, report_id: str) -> int:
    return sum(
        1
        for ack in agent.acks
        for item in ack.acks
        if item.kind == "relay_report" and item.id == report_id
    )


def test_relay_reports_over_the_broker_are_applied_then_acked(
    database_url: str,
    broker: MosquittoBroker,
    keypair: tuple[bytes, bytes],
    concentrator: str,
    public_key: Any,
) -> None:
    other = f"conc-{uuid.uuid4().hex[:8]}"
    with start_app(database_url, broker, keypair) as client:
        import_meter(client, concentrator, "q0")
        import_meter(client, other, "x0")
        agent = TestAgent(
            broker.host, broker.port, concentrator, public_key, script=armed, repeat=1
        )
        try:
            order = client.post(
                "/api/v1/orders",
                json={"meter_id": "q0", "action": "connect", "reason": "payment_restored"},
                headers=OPERATOR,
            ).json()["order"]
            assert wait_until(lambda: state(client, order["id"]) == "completed_armed")
            pressed = datetime.now(UTC)
            press = RelayReport(
                report_id="rep-press",
                concentrator_id=concentrator,
                meter_id="q0",
                trigger="log_poll",
                observed_at=pressed,
                events=[RelayLogEntry(index=1, at=pressed, code=60)],
                relay=RelayReading(control_state=ControlState.CONNECTED, control_mode=3),
            )
            results = topics.results(concentrator)
            for _ in range(2):  # a QoS 1 copy: applied once, acked each time
                agent.client.publish(results, press.to_json(), qos=1).wait_for_publish(5)
            # (each copy is acked; a broker may hand a copy over once more under load)
            assert wait_until(lambda: acked(agent, "rep-press") >= 2)
            assert state(client, order["id"]) == "completed_connected"
            detail = client.get(f"/api/v1/orders/{order['id']}", headers=OPERATOR).json()
            events = [e["event"] for e in detail.get("events") or detail.get("timeline") or []]
            assert events.count("customer_connected") == 1
            history = client.get("/api/v1/meters/q0/relay-history", headers=OPERATOR).json()
            assert (
                history["relay_state"] == "connected"
                and history["relay_state_source"] == "log_poll"
            )
            assert [e["kind"] for e in history["events"]].count("button_press") == 1

            # a forged one: another concentrator's meter, on this agent's own topic
            forged = RelayReport(
                report_id="rep-forged",
                concentrator_id=concentrator,
                meter_id="x0",
                trigger="audit",
                observed_at=pressed,
                relay=RelayReading(control_state=ControlState.DISCONNECTED),
            )
            agent.client.publish(results, forged.to_json(), qos=1).wait_for_publish(5)
            assert wait_until(lambda: acked(agent, "rep-forged") >= 1)
            agent.client.publish(results, b'{"kind": "relay_report", "report_id": 5}', qos=1)

            def kept() -> list[dict[str, Any]]:
                return list(
                    client.get(
                        "/api/v1/rejected-messages",
                        params={"concentrator_id": concentrator},
                        headers=ADMIN,
                    ).json()
                )

            # (QoS 1 is at least once: a copy handed over again is kept again)
            def reasons() -> str:
                return " | ".join(row["reason"] for row in kept())

            assert wait_until(lambda: "invalid RelayReport" in reasons()), reasons()
            assert "names a meter of another concentrator" in reasons()
            x0 = client.get("/api/v1/meters/x0/relay-history", headers=OPERATOR).json()
            assert x0["relay_state"] == "unknown" and x0["observations"] == []
            # the malformed one has no key: nothing else was acked
            ids = {i.id for a in agent.acks for i in a.acks if i.kind == "relay_report"}
            assert ids == {"rep-press", "rep-forged"}
        finally:
            agent.close()
