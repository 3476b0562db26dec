"""The agent's SQLite file: durable and lazy commits (``edge_agent.store_file``).

A durable commit is fsynced before it returns; a lazy one (``durable=False``) is not,
but it is a commit all the same: another connection sees it, a process killed with
SIGKILL right after it keeps it, and the connection goes back to ``synchronous=FULL``
for whatever comes next, also when the lazy transaction fails. Which writes are lazy
is part of the contract: an order's receipt and its outcome are durable; the outbox's
bookkeeping, acks and claims are lazy.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from edge_agent.errors import StoreError
from edge_agent.executor import Executor
from edge_agent.store import Store

from .fakes import FakeDriver, FakeMeter, order, two_meter_store

FULL, NORMAL = 2, 1  # PRAGMA synchronous values


@pytest.fixture
def store(sqlite_path: Path) -> Iterator[Store]:
    with two_meter_store(sqlite_path) as s:
        yield s


def synchronous(store: Store) -> int:
    return int(store._conn.execute("PRAGMA synchronous").fetchone()[0])


def commits_seen(store: Store) -> list[int]:
    """The synchronous level in force at each COMMIT the store runs."""
    levels: list[int] = []

    def trace(statement: str) -> None:
        if statement == "COMMIT":
            levels.append(synchronous(store))

    store._conn.set_trace_callback(trace)
    return levels


def test_a_lazy_commit_is_a_commit_and_the_connection_returns_to_full(store: Store) -> None:
    assert synchronous(store) == FULL
    with store.transaction(durable=False) as conn:
        conn.execute("INSERT INTO meta(key, value) VALUES ('k', 'lazy')")
        assert synchronous(store) == NORMAL
    assert synchronous(store) == FULL
    other = sqlite3.connect(store.path)
    try:
        assert other.execute("SELECT value FROM meta WHERE key = 'k'").fetchone() == ("lazy",)
    finally:
        other.close()


def test_a_failed_lazy_transaction_rolls_back_and_returns_to_full(store: Store) -> None:
    with pytest.raises(RuntimeError), store.transaction(durable=False) as conn:
        conn.execute("INSERT INTO meta(key, value) VALUES ('k', 'gone')")
        raise RuntimeError("the caller's own failure")
    assert synchronous(store) == FULL
    assert store.get_meta("k") is None
    store.set_meta("k", "kept")  # the next transaction works, durably
    assert store.get_meta("k") == "kept" and synchronous(store) == FULL


def test_a_lazy_transaction_that_cannot_begin_names_the_problem_and_returns_to_full(
        store: Store, sqlite_path: Path) -> None:
    holder = sqlite3.connect(sqlite_path, isolation_level=None, timeout=0)
    holder.execute("BEGIN IMMEDIATE")  # another writer holds the file
    store._conn.execute("PRAGMA busy_timeout = 50")
    try:
        with pytest.raises(StoreError, match="cannot begin a transaction"), \
                store.transaction(durable=False):
            pass
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert synchronous(store) == FULL


def test_receipts_and_outcomes_are_durable_bookkeeping_and_claims_lazy(store: Store) -> None:
    levels = commits_seen(store)
    store.store_order(order("o1", "m1"), datetime.now(UTC))
    assert levels == [FULL]  # the receipt is sent once this returns
    claimed = store.claim_next(datetime.now(UTC) + timedelta(hours=1))
    assert claimed is not None and levels[1:] == [NORMAL]
    Executor(store, FakeDriver({"m1": FakeMeter()})).run_attempt(claimed, store.meter("m1"))
    assert levels[2:] == [FULL]  # the outcome and its result row
    rows = store.outbox_pending(now=float("inf"))
    store.outbox_sent([(outbox_id, 0.0) for outbox_id, _, _ in rows])
    assert store.outbox_acknowledge_all([("receipt", "o1"), ("result", "o1")]) == 2
    assert levels[3:] == [NORMAL, NORMAL]
    assert synchronous(store) == FULL and store.outbox_depth() == 0


def test_one_ack_naming_many_messages_is_one_transaction(store: Store) -> None:
    for n, meter in enumerate(("m1", "m2")):
        store.store_order(order(f"o{n}", meter), datetime.now(UTC))
    levels = commits_seen(store)
    dropped = store.outbox_acknowledge_all(
        [("receipt", "o0"), ("receipt", "o1"), ("receipt", "o-unknown")])
    assert dropped == 2 and levels == [NORMAL] and store.outbox_depth() == 0


_LAZY_THEN_KILLED = textwrap.dedent("""
    import os, signal, sys
    from edge_agent.store import Store
    store = Store(sys.argv[1])
    with store.transaction(durable=False) as conn:
        conn.execute("INSERT INTO meta(key, value) VALUES ('lazy', 'written')")
    os.kill(os.getpid(), signal.SIGKILL)
""")


def test_a_lazy_commit_survives_the_process_being_killed(sqlite_path: Path) -> None:
    root = Path(__file__).resolve().parents[2]
    proc = subprocess.run([sys.executable, "-c", _LAZY_THEN_KILLED, str(sqlite_path)],
                          cwd=root, env={**os.environ, "PYTHONPATH": str(root)}, timeout=60)
    assert proc.returncode == -signal.SIGKILL
    with Store(sqlite_path) as store:
        assert store.get_meta("lazy") == "written"
