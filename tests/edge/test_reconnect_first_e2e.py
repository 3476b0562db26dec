"""Issue 17, item 3, through the real broker, the agent (real DLMS driver) and the
simulator on a PLC pty: a reconnect goes before the disconnects already waiting in the
agent's queue, and a reconnect for a meter with a queued disconnect cancels it at the
agent. Judged by the meters' own op logs, not by timings."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from edge_agent.agent import EdgeAgent
from edge_agent.lifecycle import State
from firmware_sim.fleet import FleetSpec, LineSpec, MeterSpec
from firmware_sim.oplog import RelayOp
from firmware_sim.runner import RunningFleet, running_fleet
from shared.broker import MosquittoBroker
from shared.codes import Action, Outcome, ReasonCode
from shared.contracts import MeterEntry
from shared.signing import CommandSigner

from .fakes import order
from .helpers import Coordinator, make_config, make_signer, wait_for

DISCONNECTS = ("Q1", "Q2", "Q3")
SPECS = (
    *(MeterSpec(m, "hdlc", line_id="plc1", hdlc_address=0x40 + n, control_mode=2,
                relay="connected") for n, m in enumerate(DISCONNECTS)),
    MeterSpec("PAID", "hdlc", line_id="plc1", hdlc_address=0x48, control_mode=2,
              relay="disconnected"),  # its customer paid: a reconnect
    MeterSpec("SAVED", "hdlc", line_id="plc1", hdlc_address=0x49, control_mode=2,
              relay="connected"),  # a disconnect queued, then its customer paid
)


@pytest.fixture(scope="module")
def fleet() -> Iterator[RunningFleet]:
    with running_fleet(FleetSpec(meters=SPECS, lines=(LineSpec("plc1"),))) as running:
        yield running


@dataclass
class Rig:
    agent: EdgeAgent
    signer: CommandSigner
    coord: Coordinator
    cid: str
    fleet: RunningFleet

    def send(self, oid: str, meter: str, action: Action, **kw: object) -> None:
        self.coord.publish(self.signer.sign(
            order(oid, meter, action, concentrator_id=self.cid, **kw)))  # type: ignore[arg-type]

    def relay_ops(self, meter_id: str) -> list[RelayOp]:
        return [e for e in self.fleet.meter(meter_id).oplog.entries(kind="relay")
                if isinstance(e, RelayOp)]


@pytest.fixture
def rig(broker: MosquittoBroker, fleet: RunningFleet, tmp_path: Path) -> Iterator[Rig]:
    cid = f"conc-rc-{uuid.uuid4().hex[:6]}"
    broker.add_user(cid)
    signer, pub = make_signer(tmp_path)
    config = make_config(tmp_path, pub, cid, broker_url=broker.url,
                         lines={"plc1": fleet.serial_path("plc1")})
    agent = EdgeAgent(config)
    agent.store.import_meters([
        MeterEntry(meter_id=m.meter_id, transport="hdlc", line_id="plc1",
                   hdlc_address=m.hdlc_address, keys_ref="default") for m in SPECS])
    for m in SPECS:
        seen = fleet.meter(m.meter_id).last_client_ic
        agent.store.commit_counter(m.meter_id, max(seen.values(), default=-1) + 1)
    coord = Coordinator(broker, cid, f"coord-{cid}", signer)
    # The link first, the executor later: the orders wait in the agent's queue as they
    # would behind a busy line, without depending on how long an exchange takes.
    agent.link.start()
    try:
        wait_for(lambda: agent.link.subscribed, what="agent subscribed")
        yield Rig(agent, signer, coord, cid, fleet)
    finally:
        agent.link.stop()
        agent.executor.stop()
        agent.store.close()
        coord.close()


def test_a_reconnect_overtakes_the_queued_disconnects(rig: Rig) -> None:
    for n, meter in enumerate(DISCONNECTS):
        rig.send(f"cut-{n}", meter, Action.DISCONNECT, priority=9)
    rig.send("cut-saved", "SAVED", Action.DISCONNECT, priority=9)
    rig.send("paid", "PAID", Action.CONNECT, priority=1)
    rig.send("saved", "SAVED", Action.CONNECT, priority=1)
    wait_for(lambda: len(rig.coord.receipts_by_order()) == 6, what="all six stored at the agent")
    # the reconnect of SAVED cancelled its queued disconnect at once, before anything ran
    cancelled = rig.coord.result("cut-saved", timeout=10)
    assert (cancelled.outcome, cancelled.reason) == (Outcome.CANCELLED, ReasonCode.CANCELLED)
    assert "superseded by connect order saved at the agent" in cancelled.detail
    assert rig.agent.store.order_state("cut-0") is State.QUEUED

    rig.agent.executor.start()
    assert rig.coord.result("paid", timeout=20).outcome is Outcome.CONNECTED
    saved = rig.coord.result("saved", timeout=20)
    assert saved.outcome is Outcome.CONNECTED and saved.already_in_state
    for n in range(len(DISCONNECTS)):
        assert rig.coord.result(f"cut-{n}", timeout=30).outcome is Outcome.DISCONNECTED

    # the meters' own record: the reconnect switched before any queued disconnect did
    reconnect = rig.relay_ops("PAID")
    assert [op.method for op in reconnect] == ["remote_reconnect"]
    cuts = [op for meter in DISCONNECTS for op in rig.relay_ops(meter)]
    assert [op.method for op in cuts] == ["remote_disconnect"] * len(DISCONNECTS)
    assert all(reconnect[0].at < op.at for op in cuts), (reconnect, cuts)
    # and the meter whose disconnect was superseded was never switched at all
    assert rig.relay_ops("SAVED") == []
    assert rig.fleet.meter("SAVED").disconnect.control_state == 1
