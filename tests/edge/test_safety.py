"""Safety-critical paths of the executor, store and verifier (review 2026-11-26)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from edge_agent.dlms_driver import DlmsLink
from edge_agent.executor import Executor
from edge_agent.lifecycle import State
from edge_agent.meter_table import Meter
from edge_agent.store import Store
from shared.codes import Action, ControlState, Outcome, ReasonCode
from shared.contracts import (
    CancelCommand,
    EnergyReading,
    MeterEntry,
    OrderResult,
    RelayReading,
    decode,
    replace,
)
from shared.dlms.client import Status
from shared.dlms.errors import MalformedResponse

from .fakes import FakeDriver, FakeLink, FakeMeter, order, tcp_entry


@pytest.fixture
def store(sqlite_path: Path) -> Iterator[Store]:
    s = Store(sqlite_path)
    s.import_meters([tcp_entry(f"m{i}", port=5000 + i) for i in range(3)])
    yield s
    s.close()


def result_of(store: Store, order_id: str) -> OrderResult:
    rows = store.db.execute("SELECT result FROM orders WHERE order_id = ?", [order_id]).fetchall()
    return decode(OrderResult, rows[0][0])


def later() -> datetime:
    return datetime.now(UTC) + timedelta(hours=1)


# -- the deadline is checked right before the method -------------------------------------
class SlowDriver(FakeDriver):
    """Opening the association takes so long (slow PLC, HDLC retries) that the deadline passes."""

    def __init__(self, meter: FakeMeter, clock: list[datetime], delay: timedelta) -> None:
        super().__init__({"m1": meter})
        self._clock, self._delay = clock, delay

    @contextmanager
    def session(self, meter: Meter) -> Iterator[FakeLink]:
        with super().session(meter) as link:
            self._clock[0] += self._delay
            yield link


def test_deadline_passing_during_association_never_switches(store: Store) -> None:
    now = [datetime.now(UTC)]
    meter = FakeMeter(ControlState.CONNECTED)
    cmd = order("o1", "m1", deadline_s=30, issued_at=now[0])
    store.store_order(cmd, now[0])
    ex = Executor(store, SlowDriver(meter, now, timedelta(seconds=45)), clock=lambda: now[0])
    claimed = store.claim_next(now[0])
    assert claimed is not None
    ex.run_attempt(claimed, store.meter("m1"))
    r = result_of(store, "o1")
    assert meter.sessions == 1 and meter.switches == 0  # associated, read, but never switched
    assert meter.control_state is ControlState.CONNECTED
    assert r.outcome is Outcome.EXPIRED and r.reason is ReasonCode.EXPIRED
    assert store.order_state("o1") is State.EXPIRED


# -- a cancel between two attempts stops the order ----------------------------------------
def test_cancel_while_waiting_for_retry_stops_next_attempt(store: Store) -> None:
    meter = FakeMeter(fault="no_answer")
    driver = FakeDriver({"m1": meter})
    now = datetime.now(UTC)
    store.store_order(order("o1", "m1", attempts=5, backoff=0.01), now)
    ex = Executor(store, driver)
    claimed = store.claim_next(later())
    assert claimed is not None
    ex.run_attempt(claimed, store.meter("m1"))
    assert store.order_state("o1") is State.WAITING
    meter.fault = None  # the meter would answer now: a second attempt would disconnect
    cancel = CancelCommand(command_id="c-o1", order_id="o1", concentrator_id="conc-a",
                           issued_at=now, deadline=now + timedelta(minutes=1))
    res = store.cancel(cancel, datetime.now(UTC))
    assert res is not None and res.outcome is Outcome.CANCELLED
    assert len(res.attempts) == 1  # the failed attempt is in the report
    assert store.claim_next(later()) is None
    assert store.order_state("o1") is State.CANCELLED
    assert meter.sessions == 1 and meter.switches == 0
    assert meter.control_state is ControlState.CONNECTED


# -- a meter's answer must confirm the state ----------------------------------------------
class InconsistentFirstLink(FakeLink):
    """The one read of a meter already in state says disconnected, but output_state says
    the relay is closed (garbage / wrong frame)."""

    def read_state(self) -> tuple[RelayReading, EnergyReading | None]:
        relay, energy = super().read_state()
        return replace(relay, output_state=True), energy


class InconsistentLink(FakeLink):
    """Every read: output_state says the relay is closed, whatever control_state says."""

    def _with_energy(self) -> tuple[RelayReading, EnergyReading | None]:
        relay, energy = super()._with_energy()
        return replace(relay, output_state=True), energy


@dataclass
class LinkDriver(FakeDriver):
    link_type: type[FakeLink] = FakeLink

    @contextmanager
    def session(self, meter: Meter) -> Iterator[FakeLink]:
        m = self.meters.setdefault(meter.meter_id, FakeMeter())
        m.sessions += 1
        yield self.link_type(m)


@pytest.mark.parametrize(("link", "start"), [(InconsistentFirstLink, ControlState.DISCONNECTED),
                                             (InconsistentLink, ControlState.CONNECTED)])
def test_unconfirmed_read_back_is_never_success(store: Store, link: type[FakeLink],
                                                start: ControlState) -> None:
    meter = FakeMeter(start)
    driver = LinkDriver({"m1": meter}, link_type=link)
    store.store_order(order("o1", "m1", attempts=2), datetime.now(UTC))
    ex = Executor(store, driver)
    for _ in range(5):
        claimed = store.claim_next(later())
        if claimed is not None:
            ex.run_attempt(claimed, store.meter("m1"))
    r = result_of(store, "o1")
    assert r.outcome is Outcome.FAILED, r
    assert r.reason in (ReasonCode.INVALID_METER_RESPONSE, ReasonCode.RELAY_DID_NOT_SWITCH)
    assert len(r.attempts) == 2  # retried: the next answer may be a good one


class GarbageSession:
    def read_status(self, *, mode: bool, scaler: bool) -> Status:
        return Status(True, 7, 2, 0.0, 0, 30, None)


def test_out_of_range_control_state_is_invalid_meter_response() -> None:
    link = DlmsLink(GarbageSession())  # type: ignore[arg-type]
    with pytest.raises(MalformedResponse):
        link.read_state()


# -- one exchange per meter, even on a serial line that allows several -----------------
class CountingDriver(FakeDriver):
    def __init__(self) -> None:
        super().__init__()
        self.active: dict[str, int] = {}
        self.max_active: dict[str, int] = {}
        self._lock = threading.Lock()

    @contextmanager
    def session(self, meter: Meter) -> Iterator[FakeLink]:
        with self._lock:
            n = self.active.get(meter.meter_id, 0) + 1
            self.active[meter.meter_id] = n
            self.max_active[meter.meter_id] = max(n, self.max_active.get(meter.meter_id, 0))
        try:
            time.sleep(0.1)
            with super().session(meter) as link:
                yield link
        finally:
            with self._lock:
                self.active[meter.meter_id] -= 1


def test_serial_line_never_runs_two_sessions_on_one_meter(store: Store) -> None:
    store.import_meters([MeterEntry(meter_id="p1", transport="hdlc", line_id="plc1",
                                    hdlc_address=17, commissioned=True, keys_ref="default")])
    now = datetime.now(UTC)
    store.store_order(order("o1", "p1", Action.DISCONNECT), now)
    store.store_order(order("o2", "p1", Action.CONNECT), now)
    driver = CountingDriver()
    ex = Executor(store, driver, line_concurrency={"plc1": 2}, idle_poll_s=0.02)
    ex.start()
    try:
        end = time.monotonic() + 10
        while store.queue_depth() and time.monotonic() < end:
            time.sleep(0.02)
    finally:
        ex.stop()
    assert store.queue_depth() == 0
    assert driver.max_active == {"p1": 1}


# -- payloads that would crash a parser ---------------------------------------------------
def test_deeply_nested_payload_is_refused_not_crashing() -> None:
    # The agent no longer reads ids out of a refused body (issue 11); what it parses is
    # the envelope, which refuses deep nesting as a malformed message.
    from shared.errors import ContractError
    from shared.signing import (
        CommandVerifier,
        MemorySeenCommands,
        generate_keypair,
        load_private_key,
    )

    key = load_private_key(generate_keypair()[0]).public_key()
    verifier = CommandVerifier(key, "c1", MemorySeenCommands())
    with pytest.raises(ContractError):
        verifier.verify(b"[" * 100_000)


# -- the scheduler does not spin while a line is busy --------------------------------------
class SlowSessions(FakeDriver):
    @contextmanager
    def session(self, meter: Meter) -> Iterator[FakeLink]:
        time.sleep(0.5)
        with super().session(meter) as link:
            yield link


def test_scheduler_waits_instead_of_spinning_while_lines_are_busy(store: Store) -> None:
    now = datetime.now(UTC)
    for i in range(3):
        store.store_order(order(f"o{i}", f"m{i}"), now)
    calls = [0]
    real_claim = store.claim_next

    def counting_claim(*args: object, **kw: object) -> object:
        calls[0] += 1
        return real_claim(*args, **kw)  # type: ignore[arg-type]

    store.claim_next = counting_claim  # type: ignore[method-assign]
    ex = Executor(store, SlowSessions(), tcp_concurrency=1, idle_poll_s=1.0)
    ex.start()
    try:
        end = time.monotonic() + 10
        while store.queue_depth() and time.monotonic() < end:
            time.sleep(0.02)
    finally:
        ex.stop()
    assert store.queue_depth() == 0
    # three orders one after the other on one slot: a handful of claims, not a busy loop
    assert calls[0] < 30, calls[0]


def test_scheduler_survives_an_unexpected_error(store: Store) -> None:
    store.store_order(order("o1", "m1"), datetime.now(UTC))
    real_claim = store.claim_next
    failures = [2]

    def flaky_claim(*args: object, **kw: object) -> object:
        if failures[0]:
            failures[0] -= 1
            raise RuntimeError("transient fault (e.g. a row the contracts refuse)")
        return real_claim(*args, **kw)  # type: ignore[arg-type]

    store.claim_next = flaky_claim  # type: ignore[method-assign]
    ex = Executor(store, FakeDriver({"m1": FakeMeter()}), idle_poll_s=0.05)
    ex.start()
    try:
        end = time.monotonic() + 5
        while store.queue_depth() and time.monotonic() < end:
            time.sleep(0.02)
    finally:
        ex.stop()
    assert store.order_state("o1") is State.SUCCEEDED


def test_attempt_that_breaks_down_after_switching_is_requeued_not_stuck(store: Store) -> None:
    from edge_agent.errors import StoreError

    now = [datetime.now(UTC)]
    meter = FakeMeter(ControlState.CONNECTED)
    store.store_order(order("o1", "m1", deadline_s=600), now[0])
    real_finish = store.finish
    failures = [1]

    def flaky_finish(*args: object, **kw: object) -> None:
        if failures[0]:
            failures[0] -= 1
            raise StoreError("cannot commit: disk I/O error")
        real_finish(*args, **kw)  # type: ignore[arg-type]

    store.finish = flaky_finish  # type: ignore[method-assign]
    ex = Executor(store, FakeDriver({"m1": meter}), clock=lambda: now[0])
    claimed = store.claim_next(now[0])
    assert claimed is not None
    m1 = store.meter("m1")
    assert m1 is not None
    ex._inflight[m1.line_key] = 1  # as _claim_all does
    ex._run_guarded(claimed, m1, m1.line_key, "m1")
    assert store.order_state("o1") is State.QUEUED  # not stuck in running
    now[0] += timedelta(seconds=10)
    claimed = store.claim_next(now[0])
    assert claimed is not None
    ex.run_attempt(claimed, store.meter("m1"))
    r = result_of(store, "o1")
    assert r.outcome is Outcome.DISCONNECTED and r.already_in_state
    assert meter.switches == 1  # switched once, never toggled twice


# -- a cancel that arrives while an attempt is in flight ---------------------------------
class CancellingDriver(FakeDriver):
    """The cancel arrives (network thread) while the association is being opened."""

    def __init__(self, meter: FakeMeter, store: Store) -> None:
        super().__init__({"m1": meter})
        self._store = store

    @contextmanager
    def session(self, meter: Meter) -> Iterator[FakeLink]:
        now = datetime.now(UTC)
        self._store.cancel(CancelCommand(command_id="c-o1", order_id="o1", concentrator_id="conc-a",
                                         issued_at=now, deadline=now + timedelta(minutes=1)), now)
        with super().session(meter) as link:
            yield link


@pytest.mark.parametrize("fault", [None, "no_answer"])
def test_cancel_during_running_attempt_stops_before_switch_or_retry(store: Store,
                                                                     fault: str | None) -> None:
    meter = FakeMeter(ControlState.CONNECTED, fault=fault)
    store.store_order(order("o1", "m1", attempts=5), datetime.now(UTC))
    ex = Executor(store, CancellingDriver(meter, store))
    for _ in range(5):
        claimed = store.claim_next(later())
        if claimed is not None:
            meter.fault = fault if meter.sessions == 0 else None  # a retry would succeed
            ex.run_attempt(claimed, store.meter("m1"))
    r = result_of(store, "o1")
    assert r.outcome is Outcome.CANCELLED and r.reason is ReasonCode.CANCELLED
    assert store.order_state("o1") is State.CANCELLED
    assert meter.sessions == 1 and meter.switches == 0
    assert meter.control_state is ControlState.CONNECTED


def test_failed_link_start_leaves_no_executor_thread(tmp_path: Path) -> None:
    from edge_agent.agent import EdgeAgent
    from edge_agent.errors import LinkError

    from .helpers import make_config, make_signer

    _, pub = make_signer(tmp_path)
    agent = EdgeAgent(make_config(tmp_path, pub, "conc-a"), driver=FakeDriver())

    def refuse() -> None:
        raise LinkError("cannot connect")

    agent.link.start = refuse  # type: ignore[method-assign]
    with pytest.raises(LinkError):
        agent.start()
    agent.stop()
    names = [t.name for t in threading.enumerate() if t.is_alive()]
    assert not [n for n in names if n.startswith(("rcd-scheduler", "rcd-exec"))], names


# -- replay defence: the seen ids outlive every window in which a replay could pass ---------
def test_seen_ids_are_pruned_only_after_deadline_plus_max_skew(store: Store, tmp_path: Path) -> None:
    from shared.errors import CommandExpired, CommandReplayed
    from shared.signing import CommandVerifier, load_public_key

    from .helpers import make_signer

    signer, pub = make_signer(tmp_path)
    issued = datetime.now(UTC)
    cmd = order("o1", "m1", deadline_s=60, issued_at=issued)
    store.store_order(cmd, issued)
    skew = timedelta(hours=1)  # the largest agent.clock_skew_s the configuration accepts
    for after in (timedelta(0), skew - timedelta(seconds=1), skew + timedelta(seconds=1),
                  timedelta(days=1, seconds=1), timedelta(days=3)):
        now = cmd.deadline + after
        ex = Executor(store, FakeDriver(), clock=lambda now=now: now)  # type: ignore[misc]
        ex._expire_due()  # prunes the seen table (first call of a fresh executor)
        verifier = CommandVerifier(load_public_key(pub.read_bytes()), "conc-a", store,
                                   clock=lambda now=now: now, clock_skew=skew)  # type: ignore[misc]
        with pytest.raises(CommandReplayed if after <= skew else CommandExpired):
            verifier.verify(signer.sign(cmd))  # never accepted
        if after <= skew:
            assert store.seen(cmd.command_id)
    assert not store.seen(cmd.command_id)  # pruned in the end: the table does not grow forever


def test_meter_table_for_another_concentrator_or_older_generation_is_refused(
        store: Store, tmp_path: Path) -> None:
    from shared.contracts import MeterTableSync
    from shared.errors import WrongRecipient
    from shared.signing import CommandVerifier, load_public_key

    from .helpers import make_signer

    signer, pub = make_signer(tmp_path)
    now = datetime.now(UTC)
    verifier = CommandVerifier(load_public_key(pub.read_bytes()), "conc-a", store)

    def table(cid: str, gen: int, meters: list[MeterEntry]) -> MeterTableSync:
        return MeterTableSync(command_id=f"t-{cid}-{gen}", concentrator_id=cid, generation=gen,
                              issued_at=now, deadline=now + timedelta(days=1), meters=meters)

    with pytest.raises(WrongRecipient):
        verifier.verify(signer.sign(table("conc-b", 99, [])))
    assert store.apply_meter_table(table("conc-a", 5, [tcp_entry("m1")]))
    assert not store.apply_meter_table(table("conc-a", 4, [tcp_entry("x1")]))  # older
    assert not store.apply_meter_table(table("conc-a", 5, [tcp_entry("x1")]))  # same
    assert store.meter("m1") is not None and store.meter("x1") is None
    assert store.meter("m2") is None  # left the table with generation 5
