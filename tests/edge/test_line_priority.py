"""Reconnects never wait at the agent (issue 17, item 3): they go before every queued
disconnect, whatever the coordinator's priority, and a reconnect stops the meter's
disconnects at the agent itself (queued: cancelled at once; running: before the method)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

from edge_agent import line_priority
from edge_agent.executor import Executor
from edge_agent.lifecycle import State
from edge_agent.meter_table import Meter
from edge_agent.store import Store
from shared.codes import Action, ControlState, Outcome, ReasonCode
from shared.contracts import OrderResult
from shared.message_kinds import parse_agent_message

from .fakes import FakeDriver, FakeLink, FakeMeter, order, tcp_entry


def test_rank_puts_reconnects_first_and_audits_last() -> None:
    assert line_priority.rank("connect") == line_priority.rank("arm") == 0
    assert line_priority.goes_before("arm", "disconnect")
    assert line_priority.goes_before("disconnect", "audit")
    assert not line_priority.goes_before("disconnect", "connect")


def _results(store: Store) -> dict[str, OrderResult]:
    found = [parse_agent_message(p) for _, p, _ in store.outbox_pending(limit=1000)]
    return {m.order_id: m for m in found if isinstance(m, OrderResult)}


def test_a_reconnect_overtakes_disconnects_already_queued(sqlite_path: Path) -> None:
    now = datetime.now(UTC)
    with Store(sqlite_path) as store:
        store.import_meters([tcp_entry(f"m{n}", port=4000 + n) for n in range(5)])
        for n in range(4):  # a disconnect given the highest priority still waits
            store.store_order(order(f"d{n}", f"m{n}", priority=9), now)
        store.store_order(order("r4", "m4", Action.CONNECT, priority=1), now)
        store.store_order(order("a3", "m3", Action.ARM, priority=1), now)
        first = store.claim_next(now + timedelta(seconds=1))
        second = store.claim_next(now + timedelta(seconds=1))
        third = store.claim_next(now + timedelta(seconds=1))
        assert first is not None and first.order_id == "r4"
        assert second is not None and second.order_id == "a3"
        assert third is not None and third.command.action is Action.DISCONNECT


def test_a_reconnect_cancels_the_meters_queued_and_waiting_disconnects(sqlite_path: Path) -> None:
    now = datetime.now(UTC)
    with Store(sqlite_path) as store:
        store.import_meters([tcp_entry("m1"), tcp_entry("m2", port=4001)])
        store.store_order(order("d1", "m1"), now)
        store.store_order(order("d2", "m2"), now)
        running = store.claim_next(now)
        assert running is not None and running.order_id == "d1"
        store.reschedule("d1", [], now + timedelta(seconds=30))  # waiting for its retry
        store.store_order(order("c1", "m1", Action.CONNECT), now)
        assert store.order_state("d1") is State.CANCELLED
        assert store.order_state("d2") is State.QUEUED  # another meter: untouched
        result = _results(store)["d1"]
        assert result.outcome is Outcome.CANCELLED and result.reason is ReasonCode.CANCELLED
        assert "superseded by connect order c1 at the agent" in result.detail


def test_a_reconnect_asks_a_running_disconnect_to_stop_before_the_method(
    sqlite_path: Path,
) -> None:
    now = datetime.now(UTC)
    with Store(sqlite_path) as store:
        store.import_meters([tcp_entry("m1")])
        store.store_order(order("d1", "m1"), now)
        assert store.claim_next(now) is not None
        reconnect = order("c1", "m1", Action.CONNECT)
        store.store_order(reconnect, now)
        # the executor reads this between attempts and right before the relay method
        assert store.cancel_requested("d1") == (
            f"{reconnect.command_id} (superseded by connect order c1 at the agent)")
        assert store.order_state("d1") is State.RUNNING
        assert store.order_state("c1") is State.QUEUED


class ReconnectArrivesDriver(FakeDriver):
    """The customer pays while the disconnect's association is being opened: the
    reconnect is stored (network thread) before the relay method."""

    def __init__(self, meter: FakeMeter, store: Store) -> None:
        super().__init__({"m1": meter})
        self._store = store
        self.sent = False

    @contextmanager
    def session(self, meter: Meter) -> Iterator[FakeLink]:
        if not self.sent:
            self.sent = True
            self._store.store_order(order("c1", "m1", Action.CONNECT), datetime.now(UTC))
        with super().session(meter) as link:
            yield link


def test_a_running_disconnect_stops_before_the_method_and_the_reconnect_runs(
    sqlite_path: Path,
) -> None:
    meter = FakeMeter(ControlState.CONNECTED)
    with Store(sqlite_path) as store:
        store.import_meters([tcp_entry("m1")])
        store.store_order(order("d1", "m1"), datetime.now(UTC))
        ex = Executor(store, ReconnectArrivesDriver(meter, store))
        later = datetime.now(UTC) + timedelta(seconds=1)
        for expected in ("d1", "c1"):
            claimed = store.claim_next(later)
            assert claimed is not None and claimed.order_id == expected
            ex.run_attempt(claimed, store.meter("m1"))
        cut, back = _results(store)["d1"], _results(store)["c1"]
        assert (cut.outcome, cut.reason) == (Outcome.CANCELLED, ReasonCode.CANCELLED)
        assert "superseded by connect order c1 at the agent) before the method" in cut.detail
        assert cut.detail.endswith("relay not switched")
        assert back.outcome is Outcome.CONNECTED and back.already_in_state
        assert meter.switches == 0 and meter.control_state is ControlState.CONNECTED
