"""The agent's store and executor rules for the protected list (issue 17)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from edge_agent.executor import Executor
from edge_agent.lifecycle import State
from edge_agent.meter_table import Meter
from edge_agent.store import Store
from shared.codes import Action, ControlState, Outcome, ReasonCode
from shared.contracts import OrderResult, decode
from shared.protect import make_list

from .fakes import FakeDriver, FakeLink, FakeMeter, order, tcp_entry
from .helpers import wait_for


@pytest.fixture
def store(sqlite_path: Path) -> Iterator[Store]:
    s = Store(sqlite_path)
    s.import_meters([tcp_entry(f"m{i}", port=5000 + i) for i in range(1, 4)])
    yield s
    s.close()


def result_of(store: Store, order_id: str) -> OrderResult:
    rows = store.db.execute("SELECT result FROM orders WHERE order_id = ?", [order_id]).fetchall()
    return decode(OrderResult, rows[0][0])


def outbox_kinds(store: Store) -> list[str]:
    return [r[0] for r in store.db.execute("SELECT kind FROM outbox ORDER BY id").fetchall()]


def test_lists_replace_only_upwards_and_removal_needs_a_newer_list(store: Store) -> None:
    assert store.protected_version() is None
    assert store.apply_protected_list(make_list("conc-a", 2, ["m1"])) == "apply"
    assert store.apply_protected_list(make_list("conc-a", 2, ["m1"])) == "same"  # retained copy
    assert store.apply_protected_list(make_list("conc-a", 1, [])) == "stale"
    assert store.apply_protected_list(make_list("conc-a", 2, [])) == "stale"
    assert store.is_protected("m1") and store.protected_version() == 2
    assert store.apply_protected_list(make_list("conc-a", 3, ["m2"])) == "apply"
    assert not store.is_protected("m1") and store.is_protected("m2")


def test_a_signed_disconnect_of_a_listed_meter_ends_refused_as_it_is_stored(store: Store) -> None:
    store.apply_protected_list(make_list("conc-a", 1, ["m1"]))
    now = datetime.now(UTC)
    assert store.store_order(order("o1", "m1"), now) == "protected"
    assert store.order_state("o1") is State.FAILED
    result = result_of(store, "o1")
    assert result.outcome is Outcome.FAILED and result.reason is ReasonCode.PROTECTED_CUSTOMER_EDGE
    assert result.attempts == []
    assert outbox_kinds(store) == ["receipt", "result"]
    assert store.claim_next(now + timedelta(seconds=1)) is None
    # a copy of it is answered with what is stored, never run
    assert store.store_order(order("o1", "m1"), now) in ("duplicate", "resent")
    assert store.order_state("o1") is State.FAILED


def test_a_reconnect_of_a_listed_meter_runs(store: Store) -> None:
    store.apply_protected_list(make_list("conc-a", 1, ["m1"]))
    meter = FakeMeter(ControlState.DISCONNECTED)
    assert store.store_order(order("o1", "m1", Action.CONNECT), datetime.now(UTC)) == "stored"
    ex = Executor(store, FakeDriver({"m1": meter}), require_protected_list=True)
    claimed = store.claim_next(datetime.now(UTC))
    assert claimed is not None
    ex.run_attempt(claimed, store.meter("m1"))
    assert result_of(store, "o1").outcome is Outcome.CONNECTED


def test_a_list_arriving_after_the_order_stops_it_before_the_session(store: Store) -> None:
    meter = FakeMeter(ControlState.CONNECTED)
    store.store_order(order("o1", "m1"), datetime.now(UTC))
    refused: list[str] = []
    ex = Executor(store, FakeDriver({"m1": meter}), on_protected=lambda o: refused.append(o.order_id))
    store.apply_protected_list(make_list("conc-a", 1, ["m1"]))
    claimed = store.claim_next(datetime.now(UTC))
    assert claimed is not None
    ex.run_attempt(claimed, store.meter("m1"))
    assert result_of(store, "o1").reason is ReasonCode.PROTECTED_CUSTOMER_EDGE
    assert meter.sessions == 0 and meter.control_state is ControlState.CONNECTED
    assert refused == ["o1"]


class ListArrivesDuringSession(FakeDriver):
    """The list arrives while the association opens (a slow PLC line)."""

    def __init__(self, store: Store, meter: FakeMeter) -> None:
        super().__init__({"m1": meter})
        self.store = store

    @contextmanager
    def session(self, meter: Meter) -> Iterator[FakeLink]:
        with super().session(meter) as link:
            self.store.apply_protected_list(make_list("conc-a", 1, ["m1"]))
            yield link


def test_the_last_check_before_the_method_reads_the_list(store: Store) -> None:
    meter = FakeMeter(ControlState.CONNECTED)
    store.store_order(order("o1", "m1"), datetime.now(UTC))
    ex = Executor(store, ListArrivesDuringSession(store, meter))
    claimed = store.claim_next(datetime.now(UTC))
    assert claimed is not None
    ex.run_attempt(claimed, store.meter("m1"))
    result = result_of(store, "o1")
    assert result.outcome is Outcome.FAILED and result.reason is ReasonCode.PROTECTED_CUSTOMER_EDGE
    assert len(result.attempts) == 1  # associated and read, never switched, not retried
    assert meter.sessions == 1 and meter.switches == 0
    assert meter.control_state is ControlState.CONNECTED


def test_without_a_list_disconnects_wait_and_reconnects_go(store: Store) -> None:
    meters = {"m1": FakeMeter(ControlState.CONNECTED), "m2": FakeMeter(ControlState.DISCONNECTED),
              "m3": FakeMeter(ControlState.CONNECTED)}
    now = datetime.now(UTC)
    store.store_order(order("held", "m1", deadline_s=60), now)
    store.store_order(order("short", "m3", deadline_s=0.6), now)
    store.store_order(order("reconnect", "m2", Action.CONNECT), now)
    ex = Executor(store, FakeDriver(meters), require_protected_list=True, idle_poll_s=0.05)
    ex.start()
    try:
        wait_for(lambda: store.order_state("reconnect") is State.SUCCEEDED, what="reconnect")
        wait_for(lambda: store.order_state("short") is State.EXPIRED, what="held one expiring")
        assert store.order_state("held") is State.QUEUED
        assert meters["m1"].sessions == 0 and meters["m3"].sessions == 0
        assert result_of(store, "short").reason is ReasonCode.EXPIRED
        store.apply_protected_list(make_list("conc-a", 1, []))
        ex.wake()
        wait_for(lambda: store.order_state("held") is State.SUCCEEDED, what="disconnect")
    finally:
        ex.stop()
    assert meters["m1"].control_state is ControlState.DISCONNECTED
