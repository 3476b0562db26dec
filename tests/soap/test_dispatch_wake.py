"""SOAP intake dispatches as REST does (issue 14): orders Legacy sends are published to
their concentrator at once, not at the next background sweep. The sweep interval here
is ten minutes, so an order that waited for it would never reach the agent in time."""

from __future__ import annotations

import uuid
from pathlib import Path

from central.app import create_app
from shared.broker import MosquittoBroker
from shared.signing import generate_keypair, load_public_key
from tests.central.agent import TestAgent, wait_until
from tests.soap.conftest import CONCENTRATOR, AppServer, fast_soap_settings, open_coordinator
from tests.soap.standard_clients import control, execute_client, header, payload


def test_soap_orders_are_published_without_waiting_for_the_sweep(
    tmp_path: Path, broker: MosquittoBroker
) -> None:
    private, public = generate_keypair()
    broker.add_user(CONCENTRATOR)
    coordinator = open_coordinator(tmp_path / "central.sqlite3")
    tag = uuid.uuid4().hex[:8]
    settings = coordinator.settings.model_copy(
        update={
            "mqtt_enabled": True,
            "mqtt_host": broker.host,
            "mqtt_port": broker.port,
            "mqtt_password": broker.password,
            "mqtt_client_id": f"central-{tag}",
            "mqtt_share_group": f"g{tag}",
            "signing_key_pem": private.decode(),
            "sweep_interval_s": 600.0,
        }
    )
    agent = TestAgent(broker.host, broker.port, CONCENTRATOR, load_public_key(public))
    try:
        app = create_app(settings)
        with AppServer(None, fast_soap_settings(notifier_enabled=False), app=app) as server:
            client = execute_client(server)
            reply = client.call(
                "CreateEndDeviceControls",
                Header=header(f"wake-{tag}"),
                Payload=payload(
                    control(["MTR-001", "MTR-002"], "3.31.0.18", "W-9", "paymentReceived")
                ),
            )
            assert reply.Reply.Result == "OK"
            assert wait_until(lambda: len(agent.orders) == 2, timeout=15), agent.orders
            assert {o.meter_id for o in agent.orders} == {"MTR-001", "MTR-002"}
    finally:
        agent.close()
        coordinator.close()
