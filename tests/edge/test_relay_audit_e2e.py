"""Issue 16, the edge half, through the real broker, agent and simulator over HDLC on a
pty with the PLC model: the relay audit reports what the meter's own disconnector log
says, gives the line up to an order between two exchanges, and its reports stay in the
outbox until the coordinator acknowledges them. Decided by the simulator's operation log
(its global ``gseq`` orders entries across meters), never by timings."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from edge_agent.agent import EdgeAgent
from edge_agent.config import parse_config
from firmware_sim.fleet import FleetSpec, LineSpec, MeterSpec
from firmware_sim.relay_log import MANUAL_CONNECTION, REMOTE_CONNECTION
from firmware_sim.runner import RunningFleet, running_fleet
from shared.broker import MosquittoBroker
from shared.codes import Action, ControlState, Outcome
from shared.contracts import MeterEntry, RelayReport
from shared.signing import CommandSigner

from .fakes import order
from .helpers import Coordinator, config_dict, make_signer, wait_for

pytestmark = pytest.mark.slow

HISTORY = 120  # rows already in A's log: its first read takes many blocks
SPECS = (
    # a meter with a long history and a small PDU: reading its log is a long transfer
    MeterSpec("RA", "hdlc", line_id="plc1", hdlc_address=0x21, control_mode=2, max_pdu=128),
    MeterSpec("RB", "hdlc", line_id="plc1", hdlc_address=0x22, control_mode=1,
              relay="ready_for_reconnection"),  # armed: Legacy was told "armed"
    MeterSpec("RC", "hdlc", line_id="plc1", hdlc_address=0x23, control_mode=2),
)


@pytest.fixture
def fleet() -> Iterator[RunningFleet]:
    line = LineSpec("plc1", latency_s=0.02, bit_rate=9600)  # the PLC channel model
    with running_fleet(FleetSpec(meters=SPECS, lines=(line,))) as running:
        for _ in range(HISTORY):
            running.meter("RA").write_log(REMOTE_CONNECTION)
        yield running


@dataclass
class Rig:
    agent: EdgeAgent
    coord: Coordinator
    signer: CommandSigner
    cid: str
    fleet: RunningFleet

    def reports(self, meter_id: str) -> list[RelayReport]:
        return [r for r in list(self.coord.relay_reports) if r.meter_id == meter_id]

    def log(self, kind: str | None = None) -> list[Any]:
        entries = [e for m in self.fleet.meters() for e in m.oplog.entries(kind=kind)]
        return sorted(entries, key=lambda e: e.gseq)


@pytest.fixture
def rig(broker: MosquittoBroker, fleet: RunningFleet, tmp_path: Path) -> Iterator[Rig]:
    cid = f"conc-audit-{uuid.uuid4().hex[:6]}"
    broker.add_user(cid)
    signer, pub = make_signer(tmp_path)
    data = config_dict(tmp_path, pub, cid, broker_url=broker.url,
                       lines={"plc1": fleet.serial_path("plc1")})
    data["agent"]["resend_initial_s"] = 0.5
    data["agent"]["resend_max_s"] = 0.5
    data["executor"]["dlms_timeout_s"] = 2.0
    data["audit"] = {"cycle_s": 4, "log_poll_s": 2, "max_airtime_share": 0.9,
                     "idle_poll_s": 0.05}
    agent = EdgeAgent(parse_config(data, environ={}))
    agent.store.import_meters(
        MeterEntry(meter_id=m.meter_id, transport="hdlc", line_id="plc1",
                   hdlc_address=m.hdlc_address, keys_ref="default") for m in SPECS)
    coord = Coordinator(broker, cid, f"coord-{cid}", signer)
    agent.start()
    try:
        wait_for(lambda: agent.link.subscribed, what="agent subscribed")
        yield Rig(agent, coord, signer, cid, fleet)
    finally:
        agent.stop()
        coord.close()


def test_button_on_an_armed_meter_is_reported_and_kept_until_acked(rig: Rig) -> None:
    rig.coord.ack_relay_reports = False
    pressed = rig.fleet.inject("RB", "button")
    assert pressed["codes"] == [MANUAL_CONNECTION] and pressed["control_state"] == 1

    def seen() -> list[RelayReport]:
        return [r for r in rig.reports("RB") if any(e.code == MANUAL_CONNECTION for e in r.events)]

    report = wait_for(seen, timeout=20, what="a report of RB's button press")[0]
    assert report.relay is not None and report.relay.control_state is ControlState.CONNECTED
    assert report.relay.output_state is True
    assert [(e.index, e.code) for e in report.events] == [(pressed["log_index"], MANUAL_CONNECTION)]
    assert report.trigger in ("audit", "log_poll")
    # unacknowledged, it stays in the outbox and comes again, same report id
    wait_for(lambda: sum(r.report_id == report.report_id for r in rig.reports("RB")) >= 2,
             what="the report sent again")
    rows = rig.agent.store._query("SELECT kind FROM outbox WHERE order_id = ?", (report.report_id,))
    assert [r["kind"] for r in rows] == ["relay_report"]
    rig.coord.ack("relay_report", report.report_id)
    wait_for(lambda: not rig.agent.store._query(
        "SELECT 1 FROM outbox WHERE order_id = ?", (report.report_id,)), what="dropped on the ack")
    # the entry was reported once: later reads start after it
    assert rig.agent.auditor is not None
    assert rig.agent.auditor.rows.row("RB").log_index == pressed["log_index"]


def test_an_order_waits_at_most_one_exchange_for_the_audit(rig: Rig) -> None:
    # RA's long log is being read in blocks (GET-Request-next after GET-Request-next)
    wait_for(lambda: [e for e in rig.log("log_read") if e.meter_id == "RA" and e.block >= 2],
             timeout=20, what="RA's log transfer under way")
    mark = max(e.gseq for e in rig.log())
    rig.coord.publish(rig.signer.sign(order("o-rc", "RC", Action.DISCONNECT,
                                            concentrator_id=rig.cid)))
    result = rig.coord.result("o-rc", timeout=20)
    assert result.outcome is Outcome.DISCONNECTED
    opened = next(e for e in rig.log("association")
                  if e.meter_id == "RC" and e.event == "open" and e.gseq > mark)
    between = [e for e in rig.log("log_read") if e.meter_id == "RA" and mark < e.gseq < opened.gseq]
    # the block in flight when the order came, perhaps one more request already on the
    # wire; never the rest of the transfer (which is tens of blocks)
    assert len(between) <= 2, between
    assert not any(e.last for e in between)
    # the audit read RC's log after the order, naming it
    after = wait_for(lambda: [r for r in rig.reports("RC") if r.trigger == "after_order"],
                     timeout=20, what="the after-order report")[0]
    assert after.order_id == "o-rc"
    assert after.relay is not None and after.relay.control_state is ControlState.DISCONNECTED
    assert [e.code for e in after.events][-1] == 61  # remote disconnection, the meter's word
    # and RA's log is read to its end later, from where the reported entries end
    def indexes() -> list[int]:
        return [e.index for r in rig.reports("RA") for e in r.events]

    wait_for(lambda: len(indexes()) >= HISTORY, timeout=30, what="RA's log reported")
    assert indexes() == list(range(1, HISTORY + 1))
