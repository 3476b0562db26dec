"""Issue 16 end to end through the real broker (shipped ACL), coordinator, agent and
simulator over HDLC on a pty with the PLC model: a reconnect on a mode 1 meter ends
``armed``; the customer presses the button; the agent's log read reports the meter's
row 60 and the relay connected; the coordinator ends the order connected."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from edge_agent.agent import EdgeAgent
from edge_agent.config import parse_config
from firmware_sim.fleet import FleetSpec, LineSpec, MeterSpec
from firmware_sim.relay_log import MANUAL_CONNECTION
from firmware_sim.runner import RunningFleet, running_fleet
from shared.broker import MosquittoBroker

from ..edge.helpers import config_dict
from .agent import wait_until
from .test_delivery_broker import ADMIN, OPERATOR, concentrator, start_app, state

__all__ = ["concentrator"]  # the fixture, shared with the delivery tests

pytestmark = pytest.mark.slow


@contextmanager
def system(broker: MosquittoBroker, keypair: tuple[bytes, bytes], cid: str, tmp_path: Path,
           meters: tuple[MeterSpec, ...], audit: dict[str, Any]
           ) -> Iterator[tuple[RunningFleet, TestClient, EdgeAgent]]:
    """Simulator on one PLC line, the coordinator (SQLite) with the meters imported, and the
    concentrator's agent with ``audit`` settings, all running."""
    line = LineSpec("l1", latency_s=0.02, bit_rate=9600)
    database = f"sqlite:///{tmp_path / 'rcd.sqlite3'}"
    with running_fleet(FleetSpec(meters=meters, lines=(line,))) as fleet, \
            start_app(database, broker, keypair) as client:
        for m in meters:
            csv = f"meter_id,concentrator_id,line_id,hdlc_address\n{m.meter_id},{cid},l1,{m.hdlc_address}\n"
            client.post("/api/v1/meters/import", content=csv,
                        headers={**ADMIN, "Content-Type": "text/csv"}).raise_for_status()
        pub = tmp_path / "coordinator.pub"
        pub.write_bytes(keypair[1])
        data: dict[str, Any] = config_dict(tmp_path, pub, cid, broker_url=broker.url,
                                           lines={"l1": fleet.serial_path("l1")})
        data["executor"]["dlms_timeout_s"] = 2.0
        data["audit"] = {"max_airtime_share": 0.5, "idle_poll_s": 0.05, **audit}
        agent = EdgeAgent(parse_config(data, environ={}))
        agent.start()
        try:
            yield fleet, client, agent
        finally:
            agent.stop()


def history(client: TestClient, meter_id: str) -> dict[str, Any]:
    found: dict[str, Any] = client.get(f"/api/v1/meters/{meter_id}/relay-history",
                                       headers=OPERATOR).json()
    return found


def test_the_button_on_an_armed_meter_ends_its_order_connected(
    broker: MosquittoBroker, keypair: tuple[bytes, bytes], concentrator: str, tmp_path: Path
) -> None:
    meter = MeterSpec("q0", "hdlc", line_id="l1", hdlc_address=17, control_mode=1,
                      relay="disconnected")
    with system(broker, keypair, concentrator, tmp_path, (meter,),
                {"cycle_s": 3600, "log_poll_s": 1}) as (fleet, client, agent):
        order = client.post("/api/v1/orders", headers=OPERATOR, json={
            "meter_id": "q0", "action": "connect", "reason": "payment_restored"}).json()["order"]
        assert wait_until(lambda: state(client, order["id"]) == "completed_armed", timeout=30)
        assert fleet.inject("q0", "button")["codes"] == [MANUAL_CONNECTION]
        assert wait_until(lambda: state(client, order["id"]) == "completed_connected",
                          timeout=30), state(client, order["id"])
        seen = history(client, "q0")
        assert seen["relay_state"] == "connected"
        kinds = {(e["kind"], e["code"]) for e in seen["events"]}
        assert ("log", MANUAL_CONNECTION) in kinds  # the meter's own row, from its log
        press = [e for e in seen["events"] if e["kind"] == "button_press"]
        assert [e["order_id"] for e in press] == [order["id"]]
        # the coordinator acknowledged every report: nothing waits in the outbox
        assert wait_until(lambda: not agent.store._query(
            "SELECT 1 FROM outbox WHERE kind = 'relay_report'"), timeout=10)
