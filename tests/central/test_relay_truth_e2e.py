"""Issue 16 end to end through the real broker (shipped ACL), coordinator, agent and
simulator over HDLC on a pty with the PLC model: a reconnect on a mode 1 meter ends
``armed``; the customer presses the button; the agent's log read reports the meter's
row 60 and the relay connected; the coordinator ends the order connected."""

from __future__ import annotations

from pathlib import Path

import pytest

from firmware_sim.fleet import MeterSpec
from firmware_sim.relay_log import MANUAL_CONNECTION
from shared.broker import MosquittoBroker

from .agent import wait_until
from .relay_system import history, system
from .test_delivery_broker import OPERATOR, concentrator, state

__all__ = ["concentrator"]  # the fixture, shared with the delivery tests

pytestmark = pytest.mark.slow


def test_the_button_on_an_armed_meter_ends_its_order_connected(
    broker: MosquittoBroker, keypair: tuple[bytes, bytes], concentrator: str, tmp_path: Path
) -> None:
    meter = MeterSpec("q0", "hdlc", line_id="l1", hdlc_address=17, control_mode=1,
                      relay="disconnected")
    with system(broker, keypair, tmp_path, {concentrator: (meter,)},
                {"cycle_s": 3600, "log_poll_s": 1}) as (fleet, client, agents):
        agent = agents[concentrator]
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
