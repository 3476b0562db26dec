"""The whole agent against the real mosquitto (shipped config + ACL), fake meters."""

from __future__ import annotations

import base64
import hashlib
import json
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from edge_agent.agent import EdgeAgent
from edge_agent.config import EdgeConfig
from shared import topics
from shared.broker import MosquittoBroker
from shared.codes import Action, ControlState, Outcome, ReasonCode
from shared.contracts import CancelCommand, ConcentratorStatus, MeterTableSync, decode, replace
from shared.signing import CommandSigner, generate_keypair, load_private_key

from .fakes import FakeDriver, FakeMeter, order, tcp_entry
from .helpers import Coordinator, make_config, make_signer, wait_for


def new_cid() -> str:
    return f"conc-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def env(broker: MosquittoBroker, tmp_path: Path) -> Iterator[tuple[EdgeConfig, CommandSigner, Coordinator]]:
    cid = new_cid()
    broker.add_user(cid)
    signer, pub = make_signer(tmp_path)
    config = make_config(tmp_path, pub, cid, broker_url=broker.url)
    coord = Coordinator(broker, cid, f"coord-{cid}", signer)
    try:
        yield config, signer, coord
    finally:
        coord.close()


class _Started:
    def __init__(self, agent: EdgeAgent) -> None:
        self.agent = agent

    def __enter__(self) -> EdgeAgent:
        self.agent.start()
        wait_for(lambda: self.agent.link.subscribed, what="agent subscribed")
        return self.agent

    def __exit__(self, *exc: object) -> None:
        self.agent.stop()


def agent_with(config: EdgeConfig, meters: dict[str, FakeMeter]) -> _Started:
    agent = EdgeAgent(config, driver=FakeDriver(meters))
    agent.store.import_meters([tcp_entry(m) for m in meters])
    return _Started(agent)


def test_order_result_and_status(env: tuple[EdgeConfig, CommandSigner, Coordinator]) -> None:
    config, signer, coord = env
    cid = config.agent.concentrator_id
    with agent_with(config, {"m1": FakeMeter(ControlState.CONNECTED)}) as agent:
        cmd = order("o1", "m1", concentrator_id=cid)
        coord.publish(signer.sign(cmd))
        r = coord.result("o1")
        assert r.outcome is Outcome.DISCONNECTED and r.concentrator_id == cid
        # the receipt (step 5) went out first, through the same outbox
        receipt = wait_for(lambda: coord.receipts_by_order().get("o1"), what="receipt")[0]
        assert (receipt.command_id, receipt.meter_id, receipt.concentrator_id) == (cmd.command_id, "m1", cid)
        assert receipt.queue_depth == 1 and r.received_at == receipt.received_at
        # same order again (new command id): a copy; the stored result goes out again (its
        # ack, which also dropped the receipt, came first on the same connection)
        coord.publish(signer.sign(replace(cmd, command_id="again")))
        wait_for(lambda: len(coord.by_order()["o1"]) == 2, what="resent result")
        assert coord.raw.count(coord.raw[0]) == 2  # identical payload
        assert len(coord.receipts) == 1  # the receipt was acknowledged: not sent again
        assert agent.store.counts_by_state() == {"succeeded": 1}
        wait_for(lambda: agent.store.outbox_depth() == 0, what="outbox emptied on the acks")

        def online() -> bool:
            return any(decode(ConcentratorStatus, s).online for s in coord.status)
        wait_for(online, what="online status")
    last = decode(ConcentratorStatus, wait_for(lambda: coord.status[-1:], what="s")[0])
    wait_for(lambda: not decode(ConcentratorStatus, coord.status[-1]).online,
             what="offline status on stop")
    assert last.concentrator_id == cid


def _envelope(signer: CommandSigner, body: str, signature: str | None) -> bytes:
    return json.dumps({"schema_version": 1, "key_id": signer.key_id if signature else "",
                       "body": body, "signature": signature or ""}).encode()


def test_refusals_reported_and_agent_keeps_going(env: tuple[EdgeConfig, CommandSigner, Coordinator]) -> None:
    config, signer, coord = env
    cid = config.agent.concentrator_id
    meter = FakeMeter(ControlState.CONNECTED)
    with agent_with(config, {"m1": meter}) as agent:
        unsigned = order("o-unsigned", "m1", concentrator_id=cid)
        coord.publish(_envelope(signer, unsigned.to_json().decode(), None))

        forger = CommandSigner(load_private_key(generate_keypair()[0]))
        forged = json.loads(forger.sign(order("o-forged", "m1", concentrator_id=cid)))
        forged["key_id"] = signer.key_id  # claims the coordinator's key
        coord.publish(json.dumps(forged).encode())

        tampered = json.loads(signer.sign(order("o-tampered", "m1", concentrator_id=cid)))
        tampered["body"] = tampered["body"].replace('"disconnect"', '"connect"')
        coord.publish(json.dumps(tampered).encode())

        old = datetime.now(UTC) - timedelta(hours=2)
        coord.publish(signer.sign(order("o-expired", "m1", concentrator_id=cid, issued_at=old)))

        ok = order("o-ok", "m1", concentrator_id=cid)
        coord.publish(signer.sign(ok))
        assert coord.result("o-ok").outcome is Outcome.DISCONNECTED
        coord.publish(signer.sign(ok))  # the very same signed command again: a replay

        for junk in (b"", b"not json", b"{}", b"[1,2]", b'{"schema_version":1,"body":"{}"}',
                     base64.b64encode(b"\x00" * 64), signer.sign(order("o-x", "m1", concentrator_id="conc-other"))):
            coord.publish(junk)

        # Issue 11: refusals end no order. Each is a refusal report with the reason and the
        # payload's digest, nothing read from the message; no result for a refused order.
        wait_for(lambda: len(coord.refusals) == 11, what="refusal reports")
        reasons = sorted(r.reason.value for r in coord.refusals)
        assert reasons == sorted(
            [ReasonCode.UNSIGNED_COMMAND.value, ReasonCode.BAD_SIGNATURE.value,
             ReasonCode.BAD_SIGNATURE.value, ReasonCode.EXPIRED.value,
             ReasonCode.UNSIGNED_COMMAND.value, ReasonCode.WRONG_CONCENTRATOR.value]
            + [ReasonCode.MALFORMED_COMMAND.value] * 5
        ), reasons
        unsigned_digest = hashlib.sha256(_envelope(signer, unsigned.to_json().decode(), None)).hexdigest()
        assert unsigned_digest in {r.payload_sha256 for r in coord.refusals}
        assert all("o-" not in r.to_json().decode().replace(r.detail, "") for r in coord.refusals)
        assert set(coord.by_order()) == {"o-ok"}
        # the replay of the genuine command is answered with the stored result, not refused
        wait_for(lambda: len(coord.by_order()["o-ok"]) == 2, what="stored result again")
        assert {r.outcome for r in coord.by_order()["o-ok"]} == {Outcome.DISCONNECTED}
        assert meter.switches == 1  # only the genuine order touched the relay
        wait_for(lambda: agent.store.outbox_depth() == 0, what="refusals acknowledged")

        # still alive and working
        coord.publish(signer.sign(order("o-after", "m1", Action.CONNECT, concentrator_id=cid)))
        assert coord.result("o-after").outcome is Outcome.CONNECTED
        # refused commands are never stored, so only stored orders got a receipt
        assert sorted(coord.receipts_by_order()) == ["o-after", "o-ok"]
        assert [len(v) for v in coord.receipts_by_order().values()] == [1, 1]


def test_cancel_and_meter_table(env: tuple[EdgeConfig, CommandSigner, Coordinator]) -> None:
    config, signer, coord = env
    cid = config.agent.concentrator_id
    meter = FakeMeter()
    with agent_with(config, {"m1": meter}) as agent:
        now = datetime.now(UTC)
        later = replace(order("o-later", "m1", concentrator_id=cid),
                        not_before=now + timedelta(seconds=30))
        coord.publish(signer.sign(later))
        coord.publish(signer.sign(CancelCommand(command_id="c1", order_id="o-later", concentrator_id=cid,
                                                issued_at=now, deadline=now + timedelta(minutes=1))))
        r = coord.result("o-later")
        assert (r.outcome, r.reason) == (Outcome.CANCELLED, ReasonCode.CANCELLED)
        assert meter.sessions == 0

        table = MeterTableSync(command_id="t1", concentrator_id=cid, generation=7, issued_at=now,
                               deadline=now + timedelta(days=30),
                               meters=[tcp_entry("m1"), tcp_entry("m2"), tcp_entry("m3")])
        coord.publish(signer.sign(table), topic=topics.meter_table(cid), retain=True)
        wait_for(lambda: agent.store.meter_count() == 3, what="meter table applied")
        assert agent.status(True).meter_table_generation == 7


def test_cancel_that_overtakes_its_order(env: tuple[EdgeConfig, CommandSigner, Coordinator]) -> None:
    """The cancel arrives first (a republished order, another coordinator replica): the
    order that follows is never executed and is reported cancelled."""
    config, signer, coord = env
    cid = config.agent.concentrator_id
    meter = FakeMeter(ControlState.CONNECTED)
    with agent_with(config, {"m1": meter}) as agent:
        now = datetime.now(UTC)
        coord.publish(signer.sign(CancelCommand(command_id="c-early", order_id="o-late",
                                                concentrator_id=cid, issued_at=now,
                                                deadline=now + timedelta(minutes=5))))
        wait_for(lambda: agent.store.early_cancel("o-late") == "c-early", what="cancel kept")
        coord.publish(signer.sign(order("o-late", "m1", concentrator_id=cid)))
        r = coord.result("o-late")
        assert (r.outcome, r.reason) == (Outcome.CANCELLED, ReasonCode.CANCELLED)
        assert "c-early" in r.detail
        assert "o-late" in coord.receipts_by_order()
        assert meter.sessions == 0 and meter.switches == 0


def test_results_wait_for_broker(broker_factory: Callable[..., MosquittoBroker], tmp_path: Path) -> None:
    cid = new_cid()
    broker = broker_factory(users=(cid,))
    signer, pub = make_signer(tmp_path)
    config = make_config(tmp_path, pub, cid, broker_url=broker.url)
    coord = Coordinator(broker, cid, f"coord-{cid}", signer)
    try:
        with agent_with(config, {f"m{i}": FakeMeter() for i in range(5)}) as agent:
            wait_for(lambda: agent.link.connected, what="agent connected")
            start = datetime.now(UTC) + timedelta(seconds=1.5)
            for i in range(5):
                cmd = replace(order(f"o{i}", f"m{i}", concentrator_id=cid), not_before=start)
                coord.publish(signer.sign(cmd))
            wait_for(lambda: agent.store.queue_depth() == 5, what="orders stored")
            wait_for(lambda: len(coord.receipts) == 5, what="receipts before the broker stops")
            wait_for(lambda: agent.store.outbox_depth() == 0, what="receipts acknowledged")
            broker.stop()
            wait_for(lambda: agent.store.counts_by_state().get("succeeded") == 5, timeout=15,
                     what="orders executed while the broker is down")
            assert agent.store.outbox_depth() == 5
            assert coord.results == []
            broker.start()
            wait_for(lambda: len(coord.by_order()) == 5, timeout=20, what="results after broker return")
            wait_for(lambda: agent.store.outbox_depth() == 0, what="outbox drained")
    finally:
        coord.close()


def test_starts_while_broker_down(broker_factory: Callable[..., MosquittoBroker], tmp_path: Path) -> None:
    cid = new_cid()
    broker = broker_factory(users=(cid,))
    broker.stop()
    _, pub = make_signer(tmp_path)
    config = make_config(tmp_path, pub, cid, broker_url=broker.url)
    agent = EdgeAgent(config, driver=FakeDriver())
    agent.start()
    try:
        import time

        time.sleep(1.2)  # a few failed connection attempts
        assert not agent.link.connected
        broker.start()
        wait_for(lambda: agent.link.subscribed, timeout=15, what="connected after broker start")
    finally:
        agent.stop()
