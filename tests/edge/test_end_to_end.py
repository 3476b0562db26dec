"""The complete agent (real DLMS driver) between the real broker and the simulator,
over HDLC on a pty and over TCP: the Must-show list of issue 4."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from edge_agent.agent import EdgeAgent
from firmware_sim.fleet import FleetSpec, LineSpec, MeterSpec
from firmware_sim.runner import RunningFleet, running_fleet
from shared.broker import MosquittoBroker
from shared.codes import Action, Outcome, ReasonCode
from shared.contracts import MeterEntry
from shared.signing import CommandSigner

from .fakes import order
from .helpers import Coordinator, make_config, make_signer, wait_for

SPECS = (
    MeterSpec("TD", "tcp", control_mode=2, relay="connected"),
    MeterSpec("TM2", "tcp", control_mode=2, relay="disconnected"),
    MeterSpec("TM1", "tcp", control_mode=1, relay="disconnected"),
    MeterSpec("TX", "tcp", control_mode=2, relay="connected"),
    MeterSpec("HD", "hdlc", line_id="plc1", hdlc_address=0x21, control_mode=2, relay="connected"),
    MeterSpec("HM1", "hdlc", line_id="plc1", hdlc_address=0x22, control_mode=1, relay="disconnected"),
    MeterSpec("HX", "hdlc", line_id="plc1", hdlc_address=0x23, control_mode=2, relay="connected"),
)


@pytest.fixture(scope="module")
def fleet() -> Iterator[RunningFleet]:
    with running_fleet(FleetSpec(meters=SPECS, lines=(LineSpec("plc1"),))) as running:
        yield running


@pytest.fixture
def rig(broker: MosquittoBroker, fleet: RunningFleet, tmp_path: Path
        ) -> Iterator[tuple[EdgeAgent, CommandSigner, Coordinator, str]]:
    cid = f"conc-e2e-{uuid.uuid4().hex[:6]}"
    broker.add_user(cid)
    signer, pub = make_signer(tmp_path)
    config = make_config(tmp_path, pub, cid, broker_url=broker.url,
                         lines={"plc1": fleet.serial_path("plc1")})
    agent = EdgeAgent(config)
    entries = []
    for m in SPECS:
        if m.transport == "tcp":
            entries.append(MeterEntry(meter_id=m.meter_id, transport="tcp", host="127.0.0.1",
                                      port=fleet.tcp_port(m.meter_id), keys_ref="default"))
        else:
            entries.append(MeterEntry(meter_id=m.meter_id, transport="hdlc", line_id="plc1",
                                      hdlc_address=m.hdlc_address, keys_ref="default"))
    agent.store.import_meters(entries)
    # the simulated meters outlive this agent's database: start above the counters they saw
    for m in SPECS:
        seen = fleet.meter(m.meter_id).last_client_ic
        agent.store.commit_counter(m.meter_id, max(seen.values(), default=-1) + 1)
    coord = Coordinator(broker, cid, f"coord-{cid}", signer)
    agent.start()
    try:
        wait_for(lambda: agent.link.subscribed, what="agent subscribed")
        yield agent, signer, coord, cid
    finally:
        agent.stop()
        coord.close()


def send(rig: tuple[EdgeAgent, CommandSigner, Coordinator, str], oid: str, meter: str,
         action: Action, **kw: object) -> None:
    _, signer, coord, cid = rig
    coord.publish(signer.sign(order(oid, meter, action, concentrator_id=cid, **kw)))  # type: ignore[arg-type]


def test_switching_over_tcp_and_hdlc(rig: tuple[EdgeAgent, CommandSigner, Coordinator, str]) -> None:
    _, _, coord, _ = rig
    send(rig, "d-tcp", "TD", Action.DISCONNECT)
    send(rig, "d-hdlc", "HD", Action.DISCONNECT)
    send(rig, "r-mode2", "TM2", Action.CONNECT)
    send(rig, "r-mode1-tcp", "TM1", Action.CONNECT)
    send(rig, "r-mode1-hdlc", "HM1", Action.CONNECT)
    for oid in ("d-tcp", "d-hdlc"):
        r = coord.result(oid, timeout=20)
        assert r.outcome is Outcome.DISCONNECTED and not r.already_in_state, r
        assert r.relay is not None and r.relay.output_state is False
        assert r.energy is not None and r.energy.meter_clock is not None
    assert coord.result("r-mode2").outcome is Outcome.CONNECTED
    assert coord.result("r-mode1-tcp").outcome is Outcome.ARMED
    assert coord.result("r-mode1-hdlc").outcome is Outcome.ARMED
    send(rig, "again-hdlc", "HD", Action.DISCONNECT)
    r = coord.result("again-hdlc")
    assert r.outcome is Outcome.DISCONNECTED and r.already_in_state
    send(rig, "back-hdlc", "HD", Action.CONNECT)
    send(rig, "back-tcp", "TD", Action.CONNECT)
    assert coord.result("back-hdlc").outcome is Outcome.CONNECTED
    assert coord.result("back-tcp").outcome is Outcome.CONNECTED


@pytest.mark.parametrize(
    ("fault", "reason", "attempts"),
    [
        ("no_answer", ReasonCode.METER_NOT_RESPONDING, 3),
        ("garbage", ReasonCode.INVALID_METER_RESPONSE, 3),
        ("relay_stuck", ReasonCode.RELAY_DID_NOT_SWITCH, 3),
        ("relay_error", ReasonCode.METHOD_REFUSED, 1),
        ("not_commissioned", ReasonCode.METER_NOT_COMMISSIONED, 1),
    ],
)
@pytest.mark.parametrize("meter", ["TX", "HX"])
def test_fault_ends_with_its_reason(rig: tuple[EdgeAgent, CommandSigner, Coordinator, str],
                                    fleet: RunningFleet, meter: str, fault: str,
                                    reason: ReasonCode, attempts: int) -> None:
    _, _, coord, _ = rig
    fleet.set_fault(meter, fault)
    try:
        send(rig, f"f-{fault}", meter, Action.DISCONNECT, attempts=3, backoff=0.05)
        r = coord.result(f"f-{fault}", timeout=20)
    finally:
        fleet.set_fault(meter, None)
    assert (r.outcome, r.reason) == (Outcome.FAILED, reason), r
    assert [a.error for a in r.attempts] == [reason] * attempts


@pytest.mark.parametrize(
    ("meter", "reason"),
    [
        # HDLC: no UA to SNRM means no route to the meter; a hung meter still answers SNRM
        ("HX", ReasonCode.METER_UNREACHABLE),
        # TCP wrapper has no link layer: silence is all the agent sees
        ("TX", ReasonCode.METER_NOT_RESPONDING),
    ],
)
def test_unreachable_meter(rig: tuple[EdgeAgent, CommandSigner, Coordinator, str],
                           fleet: RunningFleet, meter: str, reason: ReasonCode) -> None:
    _, _, coord, _ = rig
    fleet.set_fault(meter, "unreachable")
    try:
        send(rig, "unreach", meter, Action.DISCONNECT, attempts=2, backoff=0.05)
        r = coord.result("unreach", timeout=20)
    finally:
        fleet.set_fault(meter, None)
    assert (r.outcome, r.reason, len(r.attempts)) == (Outcome.FAILED, reason, 2), r


def test_order_past_deadline_never_executed(rig: tuple[EdgeAgent, CommandSigner, Coordinator, str],
                                            fleet: RunningFleet) -> None:
    _, _, coord, _ = rig
    before = fleet.meter("TD").counters.associations
    issued = datetime.now(UTC) - timedelta(minutes=2)
    send(rig, "late", "TD", Action.DISCONNECT, issued_at=issued, deadline_s=60)  # 1 min ago
    r = coord.result("late")
    assert (r.outcome, r.reason) == (Outcome.EXPIRED, ReasonCode.EXPIRED)
    assert r.attempts == []
    assert fleet.meter("TD").counters.associations == before
