from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from edge_agent.attempt_protocol import classify
from edge_agent.executor import Executor
from edge_agent.lifecycle import State
from edge_agent.store import Store
from shared.codes import Action, ControlState, Outcome, ReasonCode
from shared.contracts import OrderResult, decode
from shared.dlms.errors import TransportError

from .fakes import FakeDriver, FakeMeter, order, tcp_entry


@pytest.fixture
def store(sqlite_path: Path) -> Store:
    s = Store(sqlite_path)
    s.import_meters([tcp_entry(f"m{i}", port=5000 + i) for i in range(5)])
    s.import_meters([tcp_entry("raw", commissioned=False)])
    return s


def run_to_end(store: Store, driver: FakeDriver, order_id: str, limit: int = 30) -> OrderResult:
    ex = Executor(store, driver)
    for _ in range(limit):
        state = store.order_state(order_id)
        if state in (State.SUCCEEDED, State.FAILED, State.EXPIRED, State.CANCELLED):
            break
        claimed = store.claim_next(datetime.now(UTC) + timedelta(hours=1))
        if claimed is not None:
            ex.run_attempt(claimed, store.meter(claimed.command.meter_id))
    rows = store.db.execute("SELECT result FROM orders WHERE order_id = ?", [order_id]).fetchall()
    return decode(OrderResult, rows[0][0])


def submit(store: Store, *args: object, **kw: object) -> str:
    cmd = order(*args, **kw)  # type: ignore[arg-type]
    store.store_order(cmd, datetime.now(UTC))
    return cmd.order_id


def test_disconnect(store: Store) -> None:
    driver = FakeDriver({"m1": FakeMeter(ControlState.CONNECTED)})
    r = run_to_end(store, driver, submit(store, "o1", "m1"))
    assert r.outcome is Outcome.DISCONNECTED and not r.already_in_state
    assert r.relay is not None and r.relay.output_state is False
    assert r.energy is not None and r.energy.value == 1234.5
    assert len(r.attempts) == 1 and r.attempts[0].error is None
    assert store.outbox_depth() == 2  # the receipt and the result


def test_switch_with_an_unusable_energy_register_still_succeeds(store: Store) -> None:
    """The relay read back as wanted is the outcome; the missing reading is said, not
    turned into a failure and a field visit for a switch that happened."""
    meter = FakeMeter(ControlState.CONNECTED, fault="energy_unusable")
    r = run_to_end(store, FakeDriver({"m1": meter}), submit(store, "o1", "m1"))
    assert r.outcome is Outcome.DISCONNECTED and r.energy is None
    assert "no usable energy reading" in r.detail
    assert meter.switches == 1 and len(r.attempts) == 1


@pytest.mark.parametrize(("mode", "outcome"), [(2, Outcome.CONNECTED), (1, Outcome.ARMED),
                                               (4, Outcome.CONNECTED), (6, Outcome.ARMED)])
def test_reconnect_by_mode(store: Store, mode: int, outcome: Outcome) -> None:
    driver = FakeDriver({"m1": FakeMeter(ControlState.DISCONNECTED, control_mode=mode)})
    r = run_to_end(store, driver, submit(store, "o1", "m1", Action.CONNECT))
    assert r.outcome is outcome


def test_already_in_state_does_not_switch(store: Store) -> None:
    meter = FakeMeter(ControlState.DISCONNECTED)
    r = run_to_end(store, FakeDriver({"m1": meter}), submit(store, "o1", "m1"))
    assert r.outcome is Outcome.DISCONNECTED and r.already_in_state
    assert meter.switches == 0


def test_mode_zero_forbids_reconnect(store: Store) -> None:
    meter = FakeMeter(ControlState.DISCONNECTED, control_mode=0)
    r = run_to_end(store, FakeDriver({"m1": meter}), submit(store, "o1", "m1", Action.CONNECT))
    assert r.outcome is Outcome.FAILED and r.reason is ReasonCode.CONTROL_MODE_FORBIDS
    assert len(r.attempts) == 1


def test_mode_zero_forbids_disconnect_without_trying_the_method(store: Store) -> None:
    meter = FakeMeter(ControlState.CONNECTED, control_mode=0)
    r = run_to_end(store, FakeDriver({"m1": meter}), submit(store, "o1", "m1", Action.DISCONNECT))
    assert r.outcome is Outcome.FAILED and r.reason is ReasonCode.CONTROL_MODE_FORBIDS
    assert len(r.attempts) == 1 and meter.switches == 0


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
def test_faults(store: Store, fault: str, reason: ReasonCode, attempts: int) -> None:
    meter = FakeMeter(fault=fault)
    r = run_to_end(store, FakeDriver({"m1": meter}), submit(store, "o1", "m1", attempts=3))
    assert r.outcome is Outcome.FAILED and r.reason is reason
    assert len(r.attempts) == attempts == meter.sessions
    assert all(a.error is reason for a in r.attempts)


def test_not_in_table_and_not_commissioned(store: Store) -> None:
    driver = FakeDriver()
    r = run_to_end(store, driver, submit(store, "o1", "ghost"))
    assert r.reason is ReasonCode.NOT_IN_CONCENTRATOR_TABLE
    r = run_to_end(store, driver, submit(store, "o2", "raw"))
    assert r.reason is ReasonCode.METER_NOT_COMMISSIONED
    assert driver.meters == {}  # never contacted


def test_past_deadline_never_executed(store: Store) -> None:
    meter = FakeMeter()
    issued = datetime.now(UTC) - timedelta(minutes=10)
    oid = submit(store, "o1", "m1", issued_at=issued, deadline_s=60)
    r = run_to_end(store, FakeDriver({"m1": meter}), oid)
    assert r.outcome is Outcome.EXPIRED and r.reason is ReasonCode.EXPIRED
    assert meter.sessions == 0


def test_retry_stops_at_deadline(store: Store) -> None:
    meter = FakeMeter(fault="no_answer")
    oid = submit(store, "o1", "m1", attempts=10, backoff=30.0, deadline_s=20)
    r = run_to_end(store, FakeDriver({"m1": meter}), oid)
    assert r.outcome is Outcome.FAILED and r.reason is ReasonCode.METER_NOT_RESPONDING
    assert len(r.attempts) == 1 and "deadline" in r.detail


def test_classify_transport_by_line(store: Store) -> None:
    tcp = store.meter("m1")
    assert classify(TransportError("refused"), tcp)[0] is ReasonCode.METER_UNREACHABLE
    assert classify(ValueError("x"))[0] is ReasonCode.INTERNAL_ERROR


def test_scheduler_thread_runs_batch(store: Store) -> None:
    import time

    driver = FakeDriver({f"m{i}": FakeMeter() for i in range(5)})
    woke: list[int] = []
    ex = Executor(store, driver, tcp_concurrency=2, idle_poll_s=0.05, on_result=lambda: woke.append(1))
    for i in range(20):
        # one action per meter: a reconnect would supersede a queued disconnect of its meter
        submit(store, f"o{i}", f"m{i % 5}", Action.DISCONNECT if (i % 5) % 2 else Action.CONNECT)
    ex.start()
    try:
        deadline = time.monotonic() + 10
        while store.queue_depth() and time.monotonic() < deadline:
            time.sleep(0.02)
    finally:
        ex.stop()
    assert store.queue_depth() == 0
    assert store.counts_by_state() == {"succeeded": 20}
    assert len(woke) == 20


def test_line_is_free_once_the_outcome_is_stored_before_it_is_reported(store: Store) -> None:
    """The line goes to the next order as soon as the outcome (with the meter's contact)
    is committed: the result's report (on_result) and the relay audit's hook come after,
    so they never hold the line idle; nothing is reported before it is stored."""
    import threading

    driver = FakeDriver({"m1": FakeMeter(ControlState.CONNECTED)})
    seen: list[tuple[State | None, int, object, bool]] = []
    done = threading.Event()
    meter = store.meter("m1")
    assert meter is not None

    def on_result() -> None:
        row = store.meter_row("m1") or {}
        free = ex.borrow_line(meter)
        if free:
            ex.give_back_line(meter)
        seen.append((store.order_state("o1"), store.outbox_depth(), row.get("control_state"),
                     free))
        done.set()

    ex = Executor(store, driver, tcp_concurrency=1, idle_poll_s=0.05, on_result=on_result)
    submit(store, "o1", "m1")
    ex.start()
    try:
        assert done.wait(10)
    finally:
        ex.stop()
    state, depth, control_state, free = seen[0]
    assert state is State.SUCCEEDED and depth == 2  # receipt and result, already stored
    assert control_state == int(ControlState.DISCONNECTED)  # contact in the same commit
    assert free  # line and meter already given back when the result is reported


def test_a_meter_table_change_reaches_the_scheduler_at_its_next_look(store: Store) -> None:
    """The scheduler keeps the meters it has read while the table stands; an import
    (or a sync) changes the table's version and the next look reads the entry again."""
    import time

    driver = FakeDriver({"m0": FakeMeter(ControlState.CONNECTED)})
    ex = Executor(store, driver, tcp_concurrency=4, idle_poll_s=0.05)
    store.import_meters([tcp_entry("neighbour", port=5000)])  # m0's address, so its line
    other = store.meter("neighbour")
    assert other is not None and ex.borrow_line(other)  # busy (the relay audit, say)
    submit(store, "o1", "m0")
    ex.start()
    try:
        time.sleep(0.3)
        assert store.order_state("o1") is State.QUEUED  # waits for the busy line
        store.import_meters([tcp_entry("m0", port=5009)])  # the meter now on another line
        ex.wake()
        deadline = time.monotonic() + 10
        while store.order_state("o1") is not State.SUCCEEDED and time.monotonic() < deadline:
            time.sleep(0.02)
    finally:
        ex.give_back_line(other)
        ex.stop()
    assert store.order_state("o1") is State.SUCCEEDED
