"""Issue 17, item 1, through the real broker (shipped ACL), agent and simulator: a
compromised coordinator cannot cut a supply on the protect authority's list."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from edge_agent.agent import EdgeAgent
from edge_agent.lifecycle import State
from firmware_sim.fleet import FleetSpec, LineSpec, MeterSpec
from firmware_sim.runner import RunningFleet, running_fleet
from shared import topics
from shared.broker import MosquittoBroker
from shared.codes import Action, Outcome, ReasonCode
from shared.contracts import MeterEntry
from shared.protect import ProtectSigner, make_list
from shared.protect_cli import PROTECT_USER, push
from shared.signing import CommandSigner, generate_keypair, load_private_key

from .fakes import order
from .helpers import Coordinator, make_config, make_protect_signer, make_signer, wait_for

SPECS = (
    MeterSpec("PT", "tcp", control_mode=2, relay="connected"),  # protected, TCP
    MeterSpec("PH", "hdlc", line_id="plc1", hdlc_address=0x31, control_mode=2,
              relay="connected"),  # protected, PLC
    MeterSpec("UW", "tcp", control_mode=2, relay="connected"),  # a disconnect that waits
    MeterSpec("UX", "tcp", control_mode=2, relay="connected"),  # one that expires waiting
    MeterSpec("UR", "tcp", control_mode=2, relay="disconnected"),  # a reconnect
)


@pytest.fixture(scope="module")
def fleet() -> Iterator[RunningFleet]:
    with running_fleet(FleetSpec(meters=SPECS, lines=(LineSpec("plc1"),))) as running:
        yield running


@dataclass
class Rig:
    agent: EdgeAgent
    signer: CommandSigner  # the coordinator's key, in the attacker's hands
    protect: ProtectSigner
    coord: Coordinator
    cid: str
    broker: MosquittoBroker
    fleet: RunningFleet

    def send(self, oid: str, meter: str, action: Action, **kw: object) -> None:
        self.coord.publish(self.signer.sign(
            order(oid, meter, action, concentrator_id=self.cid, **kw)))  # type: ignore[arg-type]

    def push_list(self, version: int, meters: list[str], signer: ProtectSigner | None = None) -> None:
        """What `rcd protect push` does, as the broker's protect account."""
        plist = make_list(self.cid, version, meters)
        push((signer or self.protect).sign(plist), host=self.broker.host, port=self.broker.port,
             username=PROTECT_USER, password=self.broker.password)

    def relay_ops(self, meter_id: str) -> list[object]:
        return list(self.fleet.meter(meter_id).oplog.entries(kind="relay"))

    def refusals(self, reason: ReasonCode) -> list[object]:
        return [r for r in self.coord.refusals if r.reason is reason]


@pytest.fixture
def rig(broker: MosquittoBroker, fleet: RunningFleet, tmp_path: Path) -> Iterator[Rig]:
    cid = f"conc-prot-{uuid.uuid4().hex[:6]}"
    broker.add_user(cid)
    broker.add_user(PROTECT_USER)
    signer, pub = make_signer(tmp_path)
    protect, protect_pub = make_protect_signer(tmp_path)
    config = make_config(tmp_path, pub, cid, broker_url=broker.url,
                         lines={"plc1": fleet.serial_path("plc1")}, protect_pub=protect_pub)
    assert config.protect.require_list
    agent = EdgeAgent(config)
    entries = []
    for m in SPECS:  # the coordinator's table flags nobody: its database is compromised too
        if m.transport == "tcp":
            entries.append(MeterEntry(meter_id=m.meter_id, transport="tcp", host="127.0.0.1",
                                      port=fleet.tcp_port(m.meter_id), keys_ref="default"))
        else:
            entries.append(MeterEntry(meter_id=m.meter_id, transport="hdlc", line_id="plc1",
                                      hdlc_address=m.hdlc_address, keys_ref="default"))
    agent.store.import_meters(entries)
    for m in SPECS:
        seen = fleet.meter(m.meter_id).last_client_ic
        agent.store.commit_counter(m.meter_id, max(seen.values(), default=-1) + 1)
    coord = Coordinator(broker, cid, f"coord-{cid}", signer)
    agent.start()
    try:
        wait_for(lambda: agent.link.subscribed, what="agent subscribed")
        yield Rig(agent, signer, protect, coord, cid, broker, fleet)
    finally:
        agent.stop()
        coord.close()


def test_compromised_coordinator_cannot_cut_a_protected_supply(rig: Rig) -> None:
    rig.push_list(1, ["PT", "PH"])
    wait_for(lambda: rig.agent.store.protected_version() == 1, what="list v1 held")
    # the attacker holds the coordinator's signing key: a perfectly signed disconnect
    rig.send("evil-tcp", "PT", Action.DISCONNECT)
    rig.send("evil-plc", "PH", Action.DISCONNECT)
    for oid in ("evil-tcp", "evil-plc"):
        r = rig.coord.result(oid, timeout=20)
        assert (r.outcome, r.reason) == (Outcome.FAILED, ReasonCode.PROTECTED_CUSTOMER_EDGE), r
        assert r.attempts == []
    wait_for(lambda: len(rig.refusals(ReasonCode.PROTECTED_CUSTOMER_EDGE)) == 2,
             what="two security events")
    for meter in ("PT", "PH"):
        assert rig.fleet.meter(meter).disconnect.control_state == 1  # still connected
        assert rig.relay_ops(meter) == []  # the simulator never saw a relay method

    # it signs a list without them with the coordinator's key and publishes it (a replica
    # account may write the topic): refused and reported, the old list stays
    coordinator_as_protect = ProtectSigner(rig.signer._key)
    rig.coord.publish(coordinator_as_protect.sign(make_list(rig.cid, 50, [])),
                      topic=topics.protected_list(rig.cid), retain=True)
    wrong = wait_for(lambda: [r for r in rig.refusals(ReasonCode.BAD_SIGNATURE)
                              if r.topic_leaf == "protected"], what="forged list refused")
    assert "not the protect authority's" in wrong[0].detail
    assert rig.agent.store.protected_version() == 1 and rig.agent.store.is_protected("PT")
    rig.send("evil-again", "PT", Action.DISCONNECT)
    assert rig.coord.result("evil-again").reason is ReasonCode.PROTECTED_CUSTOMER_EDGE
    assert rig.fleet.meter("PT").disconnect.control_state == 1 and rig.relay_ops("PT") == []


def test_wrong_key_and_stale_lists_are_refused_and_removal_needs_the_protect_key(rig: Rig) -> None:
    rig.push_list(2, ["PT"])
    wait_for(lambda: rig.agent.store.protected_version() == 2, what="list v2 held")
    stranger = ProtectSigner(load_private_key(generate_keypair()[0]))
    rig.push_list(3, [], signer=stranger)  # a list signed by the wrong key
    wait_for(lambda: [r for r in rig.refusals(ReasonCode.BAD_SIGNATURE)
                      if r.topic_leaf == "protected"], what="wrong-key list refused")
    rig.push_list(1, [])  # genuine, but older than the one held (a replayed old list)
    wait_for(lambda: rig.refusals(ReasonCode.STALE_PROTECTED_LIST), what="stale list refused")
    rig.push_list(2, [])  # same version, other content
    wait_for(lambda: len(rig.refusals(ReasonCode.STALE_PROTECTED_LIST)) == 2,
             what="same-version list refused")
    assert all(r.topic_leaf == "protected" for r in rig.refusals(ReasonCode.STALE_PROTECTED_LIST))
    assert rig.agent.store.protected_version() == 2 and rig.agent.store.is_protected("PT")
    rig.send("still", "PT", Action.DISCONNECT)
    assert rig.coord.result("still").reason is ReasonCode.PROTECTED_CUSTOMER_EDGE
    assert rig.relay_ops("PT") == []
    # the second authority removes the meter: a newer list under the protect key
    rig.push_list(3, [])
    wait_for(lambda: rig.agent.store.protected_version() == 3, what="list v3 held")
    rig.send("allowed", "PT", Action.DISCONNECT)
    assert rig.coord.result("allowed", timeout=20).outcome is Outcome.DISCONNECTED
    assert rig.fleet.meter("PT").disconnect.control_state == 0
    assert [op.method for op in rig.relay_ops("PT")] == ["remote_disconnect"]  # type: ignore[attr-defined]
    rig.send("restore", "PT", Action.CONNECT)  # the module's fleet is shared
    assert rig.coord.result("restore", timeout=20).outcome is Outcome.CONNECTED


def test_without_a_list_disconnects_wait_and_reconnects_execute(rig: Rig) -> None:
    rig.send("wait", "UW", Action.DISCONNECT, deadline_s=60)
    rig.send("lapse", "UX", Action.DISCONNECT, deadline_s=3)
    rig.send("paid", "UR", Action.CONNECT)
    assert rig.coord.result("paid", timeout=20).outcome is Outcome.CONNECTED
    assert rig.fleet.meter("UR").disconnect.control_state == 1
    lapsed = rig.coord.result("lapse", timeout=20)
    assert (lapsed.outcome, lapsed.reason) == (Outcome.EXPIRED, ReasonCode.EXPIRED)
    wait_for(lambda: "wait" in rig.coord.receipts_by_order(), what="receipt of the held one")
    time.sleep(0.5)
    assert rig.agent.store.order_state("wait") is State.QUEUED and "wait" not in rig.coord.by_order()
    assert rig.relay_ops("UW") == [] and rig.relay_ops("UX") == []
    rig.push_list(1, ["PT", "PH"])  # the list arrives: the held disconnect goes
    assert rig.coord.result("wait", timeout=20).outcome is Outcome.DISCONNECTED
    assert rig.fleet.meter("UW").disconnect.control_state == 0
    for oid, meter in (("back-w", "UW"), ("back-r", "UR")):  # leave the shared fleet as found
        rig.send(oid, meter, Action.CONNECT if meter == "UW" else Action.DISCONNECT)
        assert rig.coord.result(oid, timeout=20).outcome in (Outcome.CONNECTED, Outcome.DISCONNECTED)
