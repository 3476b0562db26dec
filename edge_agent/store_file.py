"""The agent's SQLite file itself: opening it, transactions, queries, ``meta`` and ``seen``.

:class:`StoreFile` is the plumbing every table's methods share: one connection in WAL
mode with ``synchronous=FULL``, a lock, ``BEGIN IMMEDIATE`` transactions, sqlite3 errors
raised as :class:`StoreError`, plus the two small tables any command touches (``meta``,
and ``seen`` for replay defence). The tables' methods build on it:
:class:`edge_agent.meter_table.MeterTable`, then :class:`edge_agent.store.Store`.

Durable and lazy commits: a transaction is durable on return (the WAL is fsynced) unless
it is opened with ``durable=False``. A lazy commit survives kill -9 (it is in the OS's
cache) but may be lost at a power cut; the next durable commit makes it durable with
everything before it. SQLite's WAL recovers a prefix of the commits (each frame's
checksum chains to the previous ones), so a power cut never keeps a durable commit and
loses an earlier lazy one. Lazy is only for writes whose loss costs a repeat and nothing
else: the outbox's resend bookkeeping and acks (the row is sent again, the coordinator
acks the copy), a claim (the order is queued again, as after any crash, and its next
attempt reads the relay first), bookkeeping of the relay audit.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any, Self

from edge_agent.errors import StoreError


class StoreFile:
    """Thread-safe access to one SQLite file; ``setup`` creates and migrates its tables."""

    def __init__(self, path: str | Path, setup: Callable[[sqlite3.Connection], None]) -> None:
        self.path = Path(path)
        self._lock = threading.RLock()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            conn = self._connect()
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")
            setup(conn)
        except (sqlite3.Error, OSError) as exc:
            raise StoreError(f"cannot open the agent database {self.path}: {exc}") from exc
        self._conn = conn
        self._db: Any = None

    @property
    def db(self) -> Any:
        """The same file as a ``sqlite_utils.Database`` (tools, tests, exports), on a
        connection of its own: it sees what the agent committed.

        Not the agent's connection: sqlite-utils 4 commits after a statement that it sees
        open a transaction, and on a shared connection that can be the executor's
        transaction begun on another thread meanwhile (a test's read of a result failed
        with "cannot commit - no transaction is active"; a COMMIT could as well have cut
        the executor's transaction in two). Imported on first use: sqlite-utils costs a
        few MB the running agent does not need.
        """
        with self._lock:
            if self._db is None:
                import sqlite_utils

                self._db = sqlite_utils.Database(self._connect())
            return self._db

    def _connect(self) -> sqlite3.Connection:
        """A connection to the file, usable from any thread, whose transactions are begun
        and ended explicitly, with a 30 s busy wait."""
        return sqlite3.connect(
            str(self.path), check_same_thread=False, isolation_level=None, timeout=30
        )

    def close(self) -> None:
        with self._lock:
            self._conn.close()
            if self._db is not None:
                self._db.close()
                self._db = None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- plumbing -------------------------------------------------------------
    @contextmanager
    def transaction(self, *, durable: bool = True) -> Iterator[sqlite3.Connection]:
        """``BEGIN IMMEDIATE`` .. ``COMMIT`` under the lock; ``durable=False``: a lazy
        commit (module docstring), no fsync on the caller's path."""
        with self._lock:
            try:
                if not durable:
                    self._conn.execute("PRAGMA synchronous=NORMAL")
                self._conn.execute("BEGIN IMMEDIATE")
            except sqlite3.Error as exc:
                self._restore_sync(durable)
                raise StoreError(f"cannot begin a transaction: {exc}") from exc
            try:
                try:
                    yield self._conn
                except BaseException:
                    self._conn.execute("ROLLBACK")
                    raise
                try:
                    self._conn.execute("COMMIT")
                except sqlite3.Error as exc:
                    self._conn.execute("ROLLBACK")
                    raise StoreError(f"cannot commit: {exc}") from exc
            finally:
                self._restore_sync(durable)

    def _restore_sync(self, durable: bool) -> None:
        if not durable:  # every other transaction on this connection stays durable
            self._conn.execute("PRAGMA synchronous=FULL")

    def _query(self, sql: str, params: Iterable[Any] = ()) -> list[dict[str, Any]]:
        with self._lock:
            try:
                cursor = self._conn.execute(sql, tuple(params))
                cols = [c[0] for c in cursor.description or ()]
                return [dict(zip(cols, row, strict=True)) for row in cursor.fetchall()]
            except sqlite3.Error as exc:
                raise StoreError(f"query failed: {exc}") from exc

    def _exec(self, conn: sqlite3.Connection, sql: str, params: Iterable[Any] = ()) -> int:
        try:
            return conn.execute(sql, tuple(params)).rowcount
        except sqlite3.Error as exc:
            raise StoreError(f"write failed: {exc}") from exc

    # -- meta -----------------------------------------------------------------
    def get_meta(self, key: str) -> str | None:
        rows = self._query("SELECT value FROM meta WHERE key = ?", (key,))
        return rows[0]["value"] if rows else None

    def set_meta(self, key: str, value: str, *, durable: bool = True) -> None:
        with self.transaction(durable=durable) as conn:
            self._exec(conn, "INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)", (key, value))

    # -- replay defence (shared.signing.SeenCommands) ---------------------------
    def seen(self, command_id: str) -> bool:
        return bool(self._query("SELECT 1 FROM seen WHERE command_id = ?", (command_id,)))

    def remember(self, command_id: str, until: datetime) -> None:
        with self.transaction() as conn:
            self._remember(conn, command_id, until)

    def _remember(self, conn: sqlite3.Connection, command_id: str, until: datetime) -> None:
        self._exec(
            conn,
            "INSERT OR REPLACE INTO seen(command_id, until) VALUES (?, ?)",
            (command_id, until.timestamp()),
        )

    def forget_seen_before(self, moment: datetime) -> int:
        """Forget command ids, and cancels whose order never came, past their deadline."""
        with self.transaction() as conn:
            self._exec(conn, "DELETE FROM early_cancels WHERE until < ?", (moment.timestamp(),))
            return self._exec(conn, "DELETE FROM seen WHERE until < ?", (moment.timestamp(),))
