"""Issue 16 end to end through the real broker (shipped ACL), coordinator, agent and
simulator over HDLC on a pty with the PLC model: a reconnect on a mode 1 meter ends
``armed``; the customer presses the button; the agent's log read reports the meter's
row 60 and the relay connected; the coordinator ends the order connected. Relays that
open by themselves on three meters of the concentrator become one incident; energy after
a confirmed disconnect (a bypass) raises the tamper alarm within an audit cycle."""

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
from .test_delivery_broker import ADMIN, OPERATOR, concentrator, import_meter, start_app, state

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
    line = LineSpec("l1", latency_s=0.02, bit_rate=9600)
    database = f"sqlite:///{tmp_path / 'rcd.sqlite3'}"
    with running_fleet(FleetSpec(meters=(meter,), lines=(line,))) as fleet, \
            start_app(database, broker, keypair) as client:
        import_meter(client, concentrator, "q0")  # line l1, HDLC address 17
        pub = tmp_path / "coordinator.pub"
        pub.write_bytes(keypair[1])
        data: dict[str, Any] = config_dict(tmp_path, pub, concentrator, broker_url=broker.url,
                                           lines={"l1": fleet.serial_path("l1")})
        data["executor"]["dlms_timeout_s"] = 2.0
        data["audit"] = {"cycle_s": 3600, "log_poll_s": 1, "max_airtime_share": 0.5,
                         "idle_poll_s": 0.05}
        agent = EdgeAgent(parse_config(data, environ={}))
        agent.start()
        try:
            order = client.post("/api/v1/orders", headers=OPERATOR, json={
                "meter_id": "q0", "action": "connect", "reason": "payment_restored"}).json()["order"]
            assert wait_until(lambda: state(client, order["id"]) == "completed_armed", timeout=30)
            assert fleet.inject("q0", "button")["codes"] == [MANUAL_CONNECTION]
            assert wait_until(lambda: state(client, order["id"]) == "completed_connected",
                              timeout=30), state(client, order["id"])
            history = client.get("/api/v1/meters/q0/relay-history", headers=OPERATOR).json()
            assert history["relay_state"] == "connected"
            kinds = {(e["kind"], e["code"]) for e in history["events"]}
            assert ("log", MANUAL_CONNECTION) in kinds  # the meter's own row, from its log
            press = [e for e in history["events"] if e["kind"] == "button_press"]
            assert [e["order_id"] for e in press] == [order["id"]]
            # the coordinator acknowledged every report: nothing waits in the outbox
            assert wait_until(lambda: not agent.store._query(
                "SELECT 1 FROM outbox WHERE kind = 'relay_report'"), timeout=10)
        finally:
            agent.stop()


def test_relays_that_open_by_themselves_make_one_incident_and_a_bypass_a_tamper_alarm(
    broker: MosquittoBroker, keypair: tuple[bytes, bytes], concentrator: str, tmp_path: Path
) -> None:
    meters = tuple(MeterSpec(f"s{n}", "hdlc", line_id="l1", hdlc_address=17 + n, control_mode=2)
                   for n in range(4))
    with system(broker, keypair, concentrator, tmp_path, meters,
                {"cycle_s": 4, "log_poll_s": 2, "max_airtime_share": 0.9}) as (fleet, client, _):
        # the coordinator learns every relay from the agent's first reads
        assert wait_until(lambda: all(history(client, m.meter_id)["relay_state"] == "connected"
                                      for m in meters), timeout=30)
        order = client.post("/api/v1/orders", headers=OPERATOR, json={
            "meter_id": "s3", "action": "disconnect", "reason": "non_payment"}).json()["order"]
        assert wait_until(lambda: state(client, order["id"]) == "completed_disconnected",
                          timeout=30), state(client, order["id"])
        for n in range(3):
            assert fleet.inject(f"s{n}", "self_open")["codes"] == []  # no log row at all
        fleet.inject("s3", "bypass")
        fleet.meter("s3").advance(3600)  # an hour of load through the bypass: 1 kWh

        def one_incident() -> list[dict[str, Any]]:
            found: list[dict[str, Any]] = client.get(
                "/api/v1/incidents", headers=OPERATOR).json()
            return [i for i in found if i["meters"] == 3]

        assert wait_until(lambda: bool(one_incident()), timeout=30)
        detail = client.get(f"/api/v1/incidents/{one_incident()[0]['id']}",
                            headers=OPERATOR).json()
        assert sorted(detail["meter_ids"]) == ["s0", "s1", "s2"]

        def tamper() -> list[dict[str, Any]]:
            found: list[dict[str, Any]] = client.get(
                "/api/v1/relay-alarms", headers=OPERATOR).json()
            return [a for a in found if a["meter_id"] == "s3"]

        assert wait_until(lambda: bool(tamper()), timeout=30)
        assert tamper()[0]["kind"] == "tamper_bypass" and tamper()[0]["work_order_id"]
