"""Issue 11, the agent's rules: results and receipts stay in the outbox until the
coordinator's ack (the broker's PUBACK removes nothing); a copy of a held order is
answered with what is stored; an unverifiable message ends no order and is reported
with a digest only; the relay method is not invoked with less time left than its
measured transit on the line; a disconnect of a meter the table flags protected is
refused at the last check."""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from edge_agent.agent import EdgeAgent
from edge_agent.executor import Executor, TransitEstimator
from edge_agent.lifecycle import State
from edge_agent.meter_table import Meter
from edge_agent.store import Store
from shared import topics
from shared.codes import Action, ControlState, Outcome, ReasonCode
from shared.contracts import AckedMessage, MessageAck, OrderResult, RefusalReport, decode, replace
from shared.message_kinds import parse_agent_message
from shared.signing import CommandSigner, generate_keypair, load_private_key

from .fakes import FakeDriver, FakeLink, FakeMeter, order, tcp_entry, two_meter_store
from .helpers import make_config, make_signer

KEY = "tcp:127.0.0.1:4059"


@pytest.fixture
def store(sqlite_path: Path) -> Iterator[Store]:
    with two_meter_store(sqlite_path) as s:
        yield s


def kinds(store: Store) -> list[tuple[str, str]]:
    out = []
    for _, payload, _ in store.outbox_pending(now=float("inf")):
        message = parse_agent_message(payload)
        out.append((message.kind, getattr(message, "order_id", getattr(message, "refusal_id", ""))))
    return out


def run(store: Store, executor: Executor, order_id: str) -> OrderResult:
    claimed = store.claim_next(datetime.now(UTC) + timedelta(hours=1))
    assert claimed is not None and claimed.order_id == order_id
    executor.run_attempt(claimed, store.meter(claimed.command.meter_id))
    row = store.db.execute("SELECT result FROM orders WHERE order_id = ?", [order_id]).fetchone()
    return decode(OrderResult, row[0])


# -- 2. the outbox keeps everything until the coordinator's ack -------------------------
def test_result_and_receipt_stay_in_the_outbox_until_the_coordinators_ack(store: Store) -> None:
    store.store_order(order("o1", "m1"), datetime.now(UTC))
    result = run(store, Executor(store, FakeDriver({"m1": FakeMeter()})), "o1")
    assert result.outcome is Outcome.DISCONNECTED
    assert kinds(store) == [("receipt", "o1"), ("result", "o1")]
    # published (PUBACK or not): not due again until its backoff, and still kept
    now = time.time()
    store.outbox_sent([(outbox_id, now + 10) for outbox_id, _, _ in store.outbox_pending(now=now)])
    assert store.outbox_pending(now=now + 9) == [] and store.outbox_depth() == 2
    assert [sends for _, _, sends in store.outbox_pending(now=now + 10)] == [1, 1]
    # a reconnect makes all of it due at once
    assert store.outbox_due_now() == 2 and len(store.outbox_pending(now=now)) == 2
    # the ack of the receipt drops the receipt; the ack of the result drops the rest
    assert store.outbox_acknowledge("receipt", "o1") == 1
    assert kinds(store) == [("result", "o1")]
    assert store.outbox_acknowledge("result", "o2") == 0  # another order's ack: nothing
    assert store.outbox_acknowledge("result", "o1") == 1 and store.outbox_depth() == 0
    assert store.outbox_acknowledge("result", "o1") == 0  # a copy of the ack: nothing


def test_a_result_ack_also_drops_the_receipt_it_supersedes(store: Store) -> None:
    store.store_order(order("o1", "m1"), datetime.now(UTC))
    run(store, Executor(store, FakeDriver({"m1": FakeMeter()})), "o1")
    assert store.outbox_acknowledge("result", "o1") == 2 and store.outbox_depth() == 0


def test_an_outbox_of_an_older_agent_is_migrated_with_its_kinds(sqlite_path: Path) -> None:
    import sqlite3

    conn = sqlite3.connect(sqlite_path)
    conn.execute("CREATE TABLE outbox (id INTEGER PRIMARY KEY AUTOINCREMENT, order_id TEXT, "
                 "payload BLOB NOT NULL, created_at TEXT NOT NULL)")
    conn.execute("INSERT INTO outbox(order_id, payload, created_at) VALUES ('o9', ?, 'x')",
                 (b'{"kind":"result","order_id":"o9"}',))
    conn.commit()
    conn.close()
    with Store(sqlite_path) as store:
        assert store.outbox_acknowledge("result", "o9") == 1


# -- 1. a copy of a held order is answered with what is stored ------------------------------
@pytest.fixture
def agent(tmp_path: Path) -> Iterator[tuple[EdgeAgent, CommandSigner]]:
    signer, pub = make_signer(tmp_path)
    config = make_config(tmp_path, pub, "conc-a")
    edge = EdgeAgent(config, driver=FakeDriver({"m1": FakeMeter()}))
    edge.store.import_meters([tcp_entry("m1")])
    try:
        yield edge, signer
    finally:
        edge.stop()  # never started: closes the store


def test_the_same_signed_command_again_is_answered_with_the_stored_receipt(
    agent: tuple[EdgeAgent, CommandSigner],
) -> None:
    edge, signer = agent
    signed = signer.sign(order("o1", "m1"))
    edge.handle_message(topics.commands("conc-a"), signed)
    assert kinds(edge.store) == [("receipt", "o1")]
    edge.store.outbox_acknowledge("receipt", "o1")  # the coordinator stored it...
    # ...and still sends the command again (its receipt was acked after a crash, say):
    edge.handle_message(topics.commands("conc-a"), signed)
    assert kinds(edge.store) == [("receipt", "o1")]  # answered, not refused
    assert edge.store.queue_depth() == 1 and edge.store.order_state("o1") is State.QUEUED


def test_a_replay_of_an_ended_order_gets_its_stored_result_not_a_refusal(
    agent: tuple[EdgeAgent, CommandSigner],
) -> None:
    edge, signer = agent
    signed = signer.sign(order("o1", "m1"))
    edge.handle_message(topics.commands("conc-a"), signed)
    run(edge.store, edge.executor, "o1")
    edge.store.outbox_acknowledge("result", "o1")
    edge.handle_message(topics.commands("conc-a"), signed)  # byte-identical replay
    assert kinds(edge.store) == [("result", "o1")]
    (_, payload, _), = edge.store.outbox_pending(now=float("inf"))
    assert decode(OrderResult, payload).outcome is Outcome.DISCONNECTED
    assert edge.executor.executed == 1


# -- 4. an unverifiable message ends no order ---------------------------------------------
def test_a_forged_copy_of_a_held_order_is_reported_and_the_order_goes_on(
    agent: tuple[EdgeAgent, CommandSigner],
) -> None:
    edge, signer = agent
    edge.handle_message(topics.commands("conc-a"), signer.sign(order("o1", "m1")))
    forger = CommandSigner(load_private_key(generate_keypair()[0]))
    forged = json.loads(forger.sign(order("o1", "m1", Action.CONNECT)))
    forged["key_id"] = signer.key_id
    payload = json.dumps(forged).encode()
    for _ in range(3):  # a flood of one forgery: one report
        edge.handle_message(topics.commands("conc-a"), payload)
    unsigned = json.dumps({"schema_version": 1, "key_id": "", "signature": "",
                           "body": order("o2", "m1").to_json().decode()}).encode()
    edge.handle_message(topics.commands("conc-a"), unsigned)
    reports = [parse_agent_message(p) for _, p, _ in edge.store.outbox_pending(now=float("inf"))]
    refusals = [r for r in reports if isinstance(r, RefusalReport)]
    assert [(r.reason, r.payload_sha256) for r in refusals] == [
        (ReasonCode.BAD_SIGNATURE, hashlib.sha256(payload).hexdigest()),
        (ReasonCode.UNSIGNED_COMMAND, hashlib.sha256(unsigned).hexdigest()),
    ]
    assert not any(isinstance(r, OrderResult) for r in reports)  # no order ended
    assert edge.store.order_state("o1") is State.QUEUED and edge.store.order_state("o2") is None
    # the coordinator's ack of a refusal drops it
    now = datetime.now(UTC)
    ack = MessageAck(command_id="a1", concentrator_id="conc-a", issued_at=now,
                     deadline=now + timedelta(hours=1),
                     acks=[AckedMessage(kind="refusal", id=refusals[0].refusal_id)])
    edge.handle_message(topics.commands("conc-a"), signer.sign(ack))
    assert [k for k, _ in kinds(edge.store)] == ["receipt", "refusal"]


def test_an_ack_not_signed_by_the_coordinator_drops_nothing(
    agent: tuple[EdgeAgent, CommandSigner],
) -> None:
    edge, signer = agent
    edge.handle_message(topics.commands("conc-a"), signer.sign(order("o1", "m1")))
    forger = CommandSigner(load_private_key(generate_keypair()[0]))
    now = datetime.now(UTC)
    ack = MessageAck(command_id="a1", concentrator_id="conc-a", issued_at=now,
                     deadline=now + timedelta(hours=1), acks=[AckedMessage(kind="receipt", id="o1")])
    edge.handle_message(topics.commands("conc-a"), forger.sign(ack))
    assert [k for k, _ in kinds(edge.store)] == ["receipt", "refusal"]


# -- 3. the deadline at the edge: expected transit per line ----------------------------------
def test_the_estimate_is_the_configured_one_until_measured_then_the_largest_recent() -> None:
    estimate = TransitEstimator({"line:plc1": 2.0}, 0.5, window=3)
    assert estimate.expected("line:plc1") == 2.0 and estimate.expected(KEY) == 0.5
    for seconds in (0.4, 1.1, 0.3):
        estimate.record("line:plc1", seconds)
    assert estimate.expected("line:plc1") == 1.1
    estimate.record("line:plc1", 0.2)  # 0.4 leaves the window, 1.1 is still in it
    assert estimate.expected("line:plc1") == 1.1
    estimate.record("line:plc1", 0.2)
    assert estimate.expected("line:plc1") == 0.3


def test_the_method_is_not_invoked_with_less_time_left_than_its_transit(store: Store) -> None:
    meter = FakeMeter(ControlState.CONNECTED)
    executor = Executor(store, FakeDriver({"m1": meter}),
                        transit=TransitEstimator({KEY: 30.0}, 0.5))
    store.store_order(order("o1", "m1", deadline_s=10), datetime.now(UTC))
    result = run(store, executor, "o1")
    assert (result.outcome, result.reason) == (Outcome.EXPIRED, ReasonCode.EXPIRED)
    assert "not invoked" in result.detail and KEY in result.detail
    assert meter.sessions == 1 and meter.switches == 0  # read, never switched


class SlowLink(FakeLink):
    def disconnect(self) -> None:
        time.sleep(0.2)
        super().disconnect()


class SlowDriver(FakeDriver):
    @contextmanager
    def session(self, meter: Meter) -> Iterator[FakeLink]:
        with super().session(meter) as link:
            yield SlowLink(link.m)


def test_the_measured_transit_of_the_line_is_what_counts_next(store: Store) -> None:
    executor = Executor(store, SlowDriver({"m1": FakeMeter(), "m2": FakeMeter()}))
    store.store_order(order("o1", "m1"), datetime.now(UTC))
    assert run(store, executor, "o1").outcome is Outcome.DISCONNECTED
    assert 0.2 <= executor.transit.expected(KEY) < 5
    assert executor.transit.expected("tcp:127.0.0.1:4060") == 0.5  # another line: its own


def test_line_configuration_gives_the_first_estimate(tmp_path: Path) -> None:
    _, pub = make_signer(tmp_path)
    config = make_config(tmp_path, pub, "conc-a", lines={"plc1": "/dev/null"})
    line = config.lines["plc1"]
    assert line.initial_transit_s() == pytest.approx(0.5 + 4 * 128 * 10 / 115200)
    assert replace(line, method_transit_s=3.0).initial_transit_s() == 3.0


# -- 6. the agent's last check refuses a disconnect of a protected meter ---------------------
def test_a_disconnect_of_a_meter_the_table_flags_protected_is_cancelled(store: Store) -> None:
    store.import_meters([replace(tcp_entry("m1"), protected_customer=True)])
    meter = FakeMeter(ControlState.CONNECTED)
    executor = Executor(store, FakeDriver({"m1": meter}))
    store.store_order(order("o1", "m1"), datetime.now(UTC))
    result = run(store, executor, "o1")
    assert (result.outcome, result.reason) == (Outcome.CANCELLED, ReasonCode.CANCELLED)
    assert "Ley 21.304" in result.detail and meter.sessions == 0 and meter.switches == 0
    # a reconnect of the same meter is never held back
    store.store_order(order("o2", "m1", Action.CONNECT), datetime.now(UTC))
    meter.control_state = ControlState.DISCONNECTED
    assert run(store, executor, "o2").outcome is Outcome.CONNECTED


def test_a_protected_flag_that_arrives_during_the_exchange_stops_the_method(store: Store) -> None:
    meter = FakeMeter(ControlState.CONNECTED)

    class FlagOnRead(FakeLink):
        def read_state(self):  # type: ignore[no-untyped-def]
            store.import_meters([replace(tcp_entry("m1"), protected_customer=True)])
            return super().read_state()

    class Driver(FakeDriver):
        @contextmanager
        def session(self, m: Meter) -> Iterator[FakeLink]:
            with super().session(m) as link:
                yield FlagOnRead(link.m)

    executor = Executor(store, Driver({"m1": meter}))
    store.store_order(order("o1", "m1"), datetime.now(UTC))
    result = run(store, executor, "o1")
    assert result.outcome is Outcome.CANCELLED and meter.switches == 0
    assert "before the method" in result.detail
