"""The agent's local database (one SQLite file; ``Store.db`` gives it as sqlite-utils).

Tables:

``meters``      the concentrator's meter table, with the last relay state read and the
                DLMS invocation counter (``invocation_counter`` is the next value to use;
                ``counter_reserved`` is the high-water mark handed out to a session)
``orders``      the durable order queue and each order's lifecycle state and result
``outbox``      receipts, results and refusal reports until the coordinator's ack
                (``edge_agent.outbox``: re-sent with backoff, whatever the broker said)
``seen``        command ids already received (replay defence) until their deadline
``cancel_requests`` cancels that arrived while their order was running
``early_cancels`` cancels that arrived before their order (kept until the cancel's
                deadline): the order, if it comes, ends cancelled without running
``protected_meters`` the protect authority's list of this concentrator (Ley 21.304;
                ``edge_agent.protected``): disconnects of these meters are refused
``meta``        small facts: meter table generation, protected list version, link state

Every write runs in one ``BEGIN IMMEDIATE`` transaction under a lock, with
``synchronous=FULL``: what a method returned as stored survives kill -9 and a power cut.
State changes of orders go through :func:`edge_agent.lifecycle.next_state`.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from edge_agent import line_priority, outbox, protected
from edge_agent.errors import StoreError
from edge_agent.lifecycle import ACTIVE, Event, State, next_state
from edge_agent.outbox import OutboxKind
from shared.contracts import (
    Action,
    Attempt,
    CancelCommand,
    MeterEntry,
    MeterTableSync,
    OrderCommand,
    OrderReceipt,
    OrderResult,
    Outcome,
    ProtectedList,
    ReasonCode,
    RelayReading,
    decode,
    to_builtins,
    validate,
)
from shared.protect import Verdict

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meters (
    meter_id TEXT PRIMARY KEY,
    transport TEXT NOT NULL,
    line_id TEXT,
    hdlc_address INTEGER,
    host TEXT,
    port INTEGER,
    logical_server INTEGER NOT NULL DEFAULT 1,
    commissioned INTEGER NOT NULL DEFAULT 1,
    keys_ref TEXT,
    in_table INTEGER NOT NULL DEFAULT 1,
    reachable INTEGER,
    last_contact TEXT,
    output_state INTEGER,
    control_state INTEGER,
    control_mode INTEGER,
    invocation_counter INTEGER NOT NULL DEFAULT 0,
    counter_reserved INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS orders (
    order_id TEXT PRIMARY KEY,
    command_id TEXT NOT NULL,
    meter_id TEXT NOT NULL,
    action TEXT NOT NULL,
    priority INTEGER NOT NULL,
    deadline REAL NOT NULL,
    next_at REAL NOT NULL,
    state TEXT NOT NULL,
    command TEXT NOT NULL,
    received_at TEXT NOT NULL,
    started_at TEXT,
    attempts TEXT NOT NULL DEFAULT '[]',
    result TEXT
);
CREATE INDEX IF NOT EXISTS orders_active ON orders(state, priority DESC, next_at);
CREATE TABLE IF NOT EXISTS outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    order_id TEXT,
    payload BLOB NOT NULL,
    created_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS seen (
    command_id TEXT PRIMARY KEY,
    until REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS cancel_requests (
    order_id TEXT PRIMARY KEY,
    command_id TEXT NOT NULL,
    requested_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS early_cancels (
    order_id TEXT PRIMARY KEY,
    command_id TEXT NOT NULL,
    requested_at TEXT NOT NULL,
    until REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (
    key TEXT PRIMARY KEY,
    value TEXT
);
"""


def utcnow() -> datetime:
    return datetime.now(UTC)


def _migrate(conn: sqlite3.Connection) -> None:
    """Columns added since the first release, for databases created before them."""
    outbox.migrate(conn)
    protected.migrate(conn)
    have = {row[1] for row in conn.execute("PRAGMA table_info(meters)")}
    if "protected_customer" not in have:
        conn.execute("ALTER TABLE meters ADD COLUMN protected_customer INTEGER NOT NULL DEFAULT 0")


@dataclass(frozen=True)
class Meter:
    meter_id: str
    transport: str
    line_id: str | None
    hdlc_address: int | None
    host: str | None
    port: int | None
    logical_server: int
    commissioned: bool
    keys_ref: str | None
    protected_customer: bool = False  # Ley 21.304: never disconnected

    @property
    def line_key(self) -> str:
        """Exchanges on one key run one at a time (a serial line, or one TCP meter)."""
        if self.transport == "hdlc":
            return f"line:{self.line_id}"
        return f"tcp:{self.host}:{self.port}"


@dataclass(frozen=True)
class OrderRow:
    order_id: str
    state: State
    command: OrderCommand
    received_at: datetime
    started_at: datetime | None
    attempts: list[Attempt]


StoreOutcome = Literal["stored", "duplicate", "resent", "cancelled", "protected"]
PROTECTED_EDGE = ("refused: the meter is on this concentrator's protected list (Ley 21.304), "
                  "signed by the protect authority; no disconnect, whoever signed the order")


class Store:
    """Thread-safe access to the agent's SQLite file."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._lock = threading.RLock()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(
                str(self.path), check_same_thread=False, isolation_level=None, timeout=30
            )
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")
            conn.executescript(_SCHEMA)
            _migrate(conn)
        except (sqlite3.Error, OSError) as exc:
            raise StoreError(f"cannot open the agent database {self.path}: {exc}") from exc
        self._conn = conn
        self._db: Any = None

    @property
    def db(self) -> Any:
        """The same connection as a ``sqlite_utils.Database`` (tools, tests, exports).

        Imported on first use: sqlite-utils costs a few MB the running agent does not need.
        """
        if self._db is None:
            import sqlite_utils

            self._db = sqlite_utils.Database(self._conn)
        return self._db

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- plumbing -------------------------------------------------------------
    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            try:
                self._conn.execute("BEGIN IMMEDIATE")
            except sqlite3.Error as exc:
                raise StoreError(f"cannot begin a transaction: {exc}") from exc
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

    def set_meta(self, key: str, value: str) -> None:
        with self.transaction() as conn:
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

    # -- meter table ----------------------------------------------------------
    def _upsert_meter(self, conn: sqlite3.Connection, entry: MeterEntry) -> None:
        self._exec(
            conn,
            """INSERT INTO meters(meter_id, transport, line_id, hdlc_address, host, port,
                   logical_server, commissioned, keys_ref, protected_customer, in_table)
               VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 1)
               ON CONFLICT(meter_id) DO UPDATE SET transport=excluded.transport,
                   line_id=excluded.line_id, hdlc_address=excluded.hdlc_address,
                   host=excluded.host, port=excluded.port,
                   logical_server=excluded.logical_server,
                   commissioned=excluded.commissioned, keys_ref=excluded.keys_ref,
                   protected_customer=excluded.protected_customer, in_table=1""",
            (
                entry.meter_id,
                entry.transport,
                entry.line_id,
                entry.hdlc_address,
                entry.host,
                entry.port,
                entry.logical_server,
                int(entry.commissioned),
                entry.keys_ref,
                int(entry.protected_customer),
            ),
        )

    table_version = 0  # bumped on every meter-table change (drops cached meter facts)

    def import_meters(self, entries: Iterable[MeterEntry]) -> int:
        """Add or update meters (the counters of known meters are kept)."""
        count = 0
        with self.transaction() as conn:
            for entry in entries:
                self._upsert_meter(conn, entry)
                count += 1
        self.table_version += 1
        return count

    def apply_meter_table(self, sync: MeterTableSync) -> bool:
        """Replace the table if ``sync`` is newer; remembers its command id. False if stale."""
        with self.transaction() as conn:
            self._remember(conn, sync.command_id, sync.deadline)
            current = conn.execute("SELECT value FROM meta WHERE key='meter_generation'").fetchone()
            if current is not None and int(current[0]) >= sync.generation:
                return False
            # Meters that leave the table keep their row (and their invocation counter,
            # which must never go backwards if they come back), flagged out of table.
            self._exec(conn, "UPDATE meters SET in_table = 0")
            for entry in sync.meters:
                self._upsert_meter(conn, entry)
            self._exec(
                conn,
                "INSERT OR REPLACE INTO meta(key, value) VALUES ('meter_generation', ?)",
                (str(sync.generation),),
            )
        self.table_version += 1
        return True

    def meter(self, meter_id: str) -> Meter | None:
        rows = self._query("SELECT * FROM meters WHERE meter_id = ? AND in_table = 1", (meter_id,))
        if not rows:
            return None
        r = rows[0]
        return Meter(
            meter_id=r["meter_id"],
            transport=r["transport"],
            line_id=r["line_id"],
            hdlc_address=r["hdlc_address"],
            host=r["host"],
            port=r["port"],
            logical_server=r["logical_server"],
            commissioned=bool(r["commissioned"]),
            keys_ref=r["keys_ref"],
            protected_customer=bool(r["protected_customer"]),
        )

    def meter_row(self, meter_id: str) -> dict[str, Any] | None:
        rows = self._query("SELECT * FROM meters WHERE meter_id = ?", (meter_id,))
        return dict(rows[0]) if rows else None

    def meter_count(self) -> int:
        return int(self._query("SELECT count(*) AS n FROM meters WHERE in_table = 1")[0]["n"])

    def record_contact(
        self, meter_id: str, *, reachable: bool, relay: RelayReading | None = None
    ) -> None:
        with self.transaction() as conn:
            self._contact(conn, meter_id, reachable, relay)

    def _contact(self, conn: sqlite3.Connection, meter_id: str, reachable: bool,
                 relay: RelayReading | None) -> None:
        if relay is None:
            self._exec(
                conn,
                "UPDATE meters SET reachable = ?, last_contact = CASE WHEN ? THEN ? "
                "ELSE last_contact END WHERE meter_id = ?",
                (int(reachable), int(reachable), utcnow().isoformat(), meter_id),
            )
        else:
            self._exec(
                conn,
                "UPDATE meters SET reachable = 1, last_contact = ?, output_state = ?, "
                "control_state = ?, control_mode = ? WHERE meter_id = ?",
                (
                    utcnow().isoformat(),
                    None if relay.output_state is None else int(relay.output_state),
                    int(relay.control_state),
                    relay.control_mode,
                    meter_id,
                ),
            )

    # -- invocation counters ----------------------------------------------------
    def reserve_counter(self, meter_id: str, block: int) -> int:
        """First counter value a new session may use; [start, start+block) is reserved.

        The reservation is committed before the session opens, so after a crash the
        next session starts above everything the dead one could have used.
        """
        with self.transaction() as conn:
            row = conn.execute(
                "SELECT invocation_counter, counter_reserved FROM meters WHERE meter_id = ?",
                (meter_id,),
            ).fetchone()
            if row is None:
                raise StoreError(f"meter {meter_id!r} is not in the meter table")
            start = max(int(row[0]), int(row[1]))
            self._exec(
                conn,
                "UPDATE meters SET counter_reserved = ? WHERE meter_id = ?",
                (start + block, meter_id),
            )
        return start

    def commit_counter(self, meter_id: str, next_value: int) -> None:
        """The session ended; ``next_value`` is the first value not used."""
        with self.transaction() as conn:
            self._exec(
                conn,
                "UPDATE meters SET invocation_counter = max(invocation_counter, ?), "
                "counter_reserved = max(invocation_counter, ?) WHERE meter_id = ?",
                (next_value, next_value, meter_id),
            )

    # -- orders ---------------------------------------------------------------
    def store_order(self, cmd: OrderCommand, received_at: datetime) -> StoreOutcome:
        """Store a verified order and remember its command id, in one transaction.

        The same transaction puts an :class:`OrderReceipt` in the outbox, so the
        coordinator learns the order reached the concentrator (step 5) once it is on
        disk. A second order with a known order id is a copy (QoS 1, or the coordinator
        sending it again for want of a receipt): it is answered with what is stored
        (:meth:`_answer_copy`), never stored twice. An order whose cancel arrived first (e.g. the
        coordinator published the order again after the cancel) is stored already
        ended ``cancelled``: receipt and result go out, the meter is never touched.
        """
        with self.transaction() as conn:
            self._remember(conn, cmd.command_id, cmd.deadline)
            answered = self._answer_copy(conn, cmd.order_id)
            if answered is not None:
                return answered
            not_before = cmd.not_before.timestamp() if cmd.not_before else 0.0
            self._exec(
                conn,
                """INSERT INTO orders(order_id, command_id, meter_id, action, priority, deadline,
                       next_at, state, command, received_at)
                   VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)""",
                (
                    cmd.order_id,
                    cmd.command_id,
                    cmd.meter_id,
                    cmd.action.value,
                    cmd.priority,
                    cmd.deadline.timestamp(),
                    not_before,
                    State.QUEUED.value,
                    cmd.to_json().decode(),
                    received_at.isoformat(),
                ),
            )
            receipt = OrderReceipt(
                order_id=cmd.order_id,
                command_id=cmd.command_id,
                meter_id=cmd.meter_id,
                concentrator_id=cmd.concentrator_id,
                received_at=received_at,
                queue_depth=self._queue_depth(conn),
            )
            self._outbox_add(conn, cmd.order_id, receipt.to_json(), "receipt")
            early = conn.execute(
                "SELECT command_id FROM early_cancels WHERE order_id = ?", (cmd.order_id,)
            ).fetchone()
            if early is None:
                if cmd.action is Action.DISCONNECT and protected.is_protected(conn, cmd.meter_id):
                    self._end_protected(conn, cmd, received_at)
                    return "protected"
                if cmd.action.value in line_priority.RECONNECT_ACTIONS:
                    line_priority.supersede_disconnects(conn, cmd, received_at,
                                                        self._end_cancelled)
                return "stored"
            self._end_cancelled(
                conn,
                cmd,
                State.QUEUED,
                f"cancelled by command {early[0]}, which arrived before the order",
                received_at=received_at,
                finished_at=received_at,
            )
            self._exec(conn, "DELETE FROM early_cancels WHERE order_id = ?", (cmd.order_id,))
        return "cancelled"

    def _end_protected(self, conn: sqlite3.Connection, cmd: OrderCommand,
                       received_at: datetime) -> None:
        """A disconnect of a meter on the protected list ends refused as it is stored."""
        result = OrderResult(
            order_id=cmd.order_id, meter_id=cmd.meter_id, concentrator_id=cmd.concentrator_id,
            outcome=Outcome.FAILED, reason=ReasonCode.PROTECTED_CUSTOMER_EDGE,
            detail=PROTECTED_EDGE, received_at=received_at, finished_at=received_at,
        )
        ended = next_state(cmd.order_id, State.QUEUED, Event.FAIL)
        payload = result.to_json()
        self._exec(conn, "UPDATE orders SET state = ?, result = ? WHERE order_id = ?",
                   (ended.value, payload.decode(), cmd.order_id))
        self._outbox_add(conn, cmd.order_id, payload, "result")

    # -- protected list (edge_agent.protected) ----------------------------------
    def apply_protected_list(self, plist: ProtectedList) -> Verdict:
        with self.transaction() as conn:
            return protected.apply(conn, plist)

    def protected_version(self) -> int | None:
        with self._lock:
            return protected.held_version(self._conn)

    def is_protected(self, meter_id: str) -> bool:
        """On the protect authority's list (not the coordinator's meter table flag)."""
        with self._lock:
            return protected.is_protected(self._conn, meter_id)

    def _end_cancelled(
        self,
        conn: sqlite3.Connection,
        order: OrderCommand,
        state: str,
        detail: str,
        *,
        received_at: datetime,
        finished_at: datetime,
        started_at: datetime | None = None,
        attempts: list[Attempt] | None = None,
    ) -> OrderResult:
        """End ``order`` (in ``state``) cancelled: its result stored and in the outbox."""
        result = OrderResult(
            order_id=order.order_id,
            meter_id=order.meter_id,
            concentrator_id=order.concentrator_id,
            outcome=Outcome.CANCELLED,
            reason=ReasonCode.CANCELLED,
            detail=detail,
            attempts=attempts or [],
            received_at=received_at,
            started_at=started_at,
            finished_at=finished_at,
        )
        ended = next_state(order.order_id, state, Event.CANCEL)
        payload = result.to_json()
        self._exec(
            conn,
            "UPDATE orders SET state = ?, result = ? WHERE order_id = ?",
            (ended.value, payload.decode(), order.order_id),
        )
        self._outbox_add(conn, order.order_id, payload, "result")
        return result

    def _order(self, r: dict[str, Any]) -> OrderRow:
        return OrderRow(
            order_id=r["order_id"],
            state=State(r["state"]),
            command=decode(OrderCommand, r["command"]),
            received_at=datetime.fromisoformat(r["received_at"]),
            started_at=datetime.fromisoformat(r["started_at"]) if r["started_at"] else None,
            attempts=[validate(Attempt, a) for a in json.loads(r["attempts"])],
        )

    def order(self, order_id: str) -> OrderRow | None:
        rows = self._query("SELECT * FROM orders WHERE order_id = ?", (order_id,))
        return self._order(rows[0]) if rows else None

    def order_state(self, order_id: str) -> State | None:
        rows = self._query("SELECT state FROM orders WHERE order_id = ?", (order_id,))
        return State(rows[0]["state"]) if rows else None

    def claim_next(
        self, now: datetime, blocked: Callable[[str], bool] = lambda meter_id: False,
        *, hold_disconnects: bool = False,
    ) -> OrderRow | None:
        """Move the best ready order whose line is free to ``running`` and return it.

        Best: reconnects before disconnects (``line_priority``), then highest priority,
        then oldest; ``blocked(meter_id)`` says a line is full.
        ``hold_disconnects``: disconnects stay queued (no protected list held yet).
        """
        held = "AND action != 'disconnect' " if hold_disconnects else ""
        with self.transaction() as conn:
            cursor = conn.execute(
                f"SELECT * FROM orders WHERE state IN (?, ?) AND next_at <= ? {held}"
                f"ORDER BY {line_priority.ORDER_SQL}, priority DESC, rowid ASC LIMIT 1000",
                (State.QUEUED.value, State.WAITING.value, now.timestamp()),
            )
            cols = [c[0] for c in cursor.description]
            for raw in cursor.fetchall():
                r = dict(zip(cols, raw, strict=True))
                if blocked(r["meter_id"]):
                    continue
                state = next_state(r["order_id"], r["state"], Event.START)
                started = r["started_at"] or now.isoformat()
                self._exec(
                    conn,
                    "UPDATE orders SET state = ?, started_at = ? WHERE order_id = ?",
                    (state.value, started, r["order_id"]),
                )
                r["state"], r["started_at"] = state.value, started
                return self._order(r)
        return None

    def next_ready_at(self, after: float | None = None) -> float | None:
        """Earliest ``next_at`` of a queued/waiting order (only those later than ``after``)."""
        rows = self._query(
            "SELECT min(next_at) AS t FROM orders WHERE state IN (?, ?) AND next_at > ?",
            (State.QUEUED.value, State.WAITING.value, float("-inf") if after is None else after),
        )
        t = rows[0]["t"]
        return float(t) if t is not None else None

    def reschedule(self, order_id: str, attempts: list[Attempt], next_at: datetime) -> None:
        with self.transaction() as conn:
            state = self._transition(conn, order_id, Event.RETRY)
            self._exec(
                conn,
                "UPDATE orders SET state = ?, next_at = ?, attempts = ? WHERE order_id = ?",
                (state.value, next_at.timestamp(), _attempts_json(attempts), order_id),
            )

    def finish(self, order_id: str, event: Event, result: OrderResult, *,
               contact: tuple[str, bool] | None = None) -> None:
        """End an order and queue its result, in one transaction (exactly one result).

        ``contact``: (meter_id, reachable) of the attempt that just ended, recorded in the
        same transaction as :meth:`record_contact` would (one commit less per order).
        """
        payload = result.to_json()
        with self.transaction() as conn:
            if contact is not None:
                self._contact(conn, contact[0], contact[1], result.relay)
            state = self._transition(conn, order_id, event)
            self._exec(
                conn,
                "UPDATE orders SET state = ?, result = ?, attempts = ? WHERE order_id = ?",
                (state.value, payload.decode(), _attempts_json(result.attempts), order_id),
            )
            self._outbox_add(conn, order_id, payload, "result")

    def _transition(self, conn: sqlite3.Connection, order_id: str, event: Event) -> State:
        row = conn.execute("SELECT state FROM orders WHERE order_id = ?", (order_id,)).fetchone()
        if row is None:
            raise StoreError(f"order {order_id!r} is not in the queue")
        return next_state(order_id, row[0], event)

    def cancel(self, cmd: CancelCommand, now: datetime) -> OrderResult | None:
        """Cancel a queued or waiting order; None if it is unknown, running or ended.

        A waiting order (an attempt failed, the next one is scheduled) is between two
        exchanges: cancelling it stops the retries before the next attempt. A cancel
        for an order not received yet is remembered until the cancel's deadline
        (:meth:`early_cancel`), so that order ends cancelled if it arrives later.
        """
        with self.transaction() as conn:
            self._remember(conn, cmd.command_id, cmd.deadline)
            row = conn.execute(
                "SELECT state, command, received_at, started_at, attempts FROM orders "
                "WHERE order_id = ?",
                (cmd.order_id,),
            ).fetchone()
            if row is not None and State(row[0]) is State.RUNNING:
                # An exchange is in flight: the executor ends the order itself, before
                # the relay method or instead of the next retry (cancel_requested).
                self._exec(
                    conn,
                    "INSERT OR IGNORE INTO cancel_requests(order_id, command_id, requested_at) "
                    "VALUES (?, ?, ?)",
                    (cmd.order_id, cmd.command_id, now.isoformat()),
                )
                return None
            if row is None:
                self._exec(
                    conn,
                    "INSERT OR IGNORE INTO early_cancels(order_id, command_id, requested_at, "
                    "until) VALUES (?, ?, ?, ?)",
                    (cmd.order_id, cmd.command_id, now.isoformat(), cmd.deadline.timestamp()),
                )
                return None
            if State(row[0]) not in (State.QUEUED, State.WAITING):
                return None
            return self._end_cancelled(
                conn,
                decode(OrderCommand, row[1]),
                row[0],
                f"cancelled by command {cmd.command_id}",
                attempts=[validate(Attempt, a) for a in json.loads(row[4])][-50:],
                received_at=datetime.fromisoformat(row[2]),
                started_at=datetime.fromisoformat(row[3]) if row[3] else None,
                finished_at=now,
            )

    def early_cancel(self, order_id: str) -> str | None:
        """The command id of a cancel that arrived before this order, if one waits."""
        rows = self._query(
            "SELECT command_id FROM early_cancels WHERE order_id = ?", (order_id,)
        )
        return str(rows[0]["command_id"]) if rows else None

    def cancel_requested(self, order_id: str) -> str | None:
        """The command id of a cancel that arrived while this order was running, if any."""
        rows = self._query(
            "SELECT command_id FROM cancel_requests WHERE order_id = ?", (order_id,)
        )
        return str(rows[0]["command_id"]) if rows else None

    def due_to_expire(self, now: datetime) -> list[OrderRow]:
        rows = self._query(
            "SELECT * FROM orders WHERE state IN (?, ?) AND deadline <= ?",
            (State.QUEUED.value, State.WAITING.value, now.timestamp()),
        )
        return [self._order(r) for r in rows]

    def requeue(self, order_id: str, next_at: datetime) -> None:
        """A running order whose attempt broke down (not ended) goes back to the queue."""
        with self.transaction() as conn:
            state = self._transition(conn, order_id, Event.RECOVER)
            self._exec(
                conn,
                "UPDATE orders SET state = ?, next_at = ? WHERE order_id = ?",
                (state.value, next_at.timestamp(), order_id),
            )

    def recover_running(self) -> list[str]:
        """Orders left running by a dead agent go back to the queue (see lifecycle)."""
        ids = [r["order_id"] for r in self._query(
            "SELECT order_id FROM orders WHERE state = ?", (State.RUNNING.value,)
        )]
        with self.transaction() as conn:
            for order_id in ids:
                state = self._transition(conn, order_id, Event.RECOVER)
                self._exec(
                    conn, "UPDATE orders SET state = ? WHERE order_id = ?", (state.value, order_id)
                )
        return ids

    def counts_by_state(self) -> dict[str, int]:
        rows = self._query("SELECT state, count(*) AS n FROM orders GROUP BY state")
        return {r["state"]: int(r["n"]) for r in rows}

    def queue_depth(self) -> int:
        rows = self._query(_QUEUE_DEPTH_SQL, _ACTIVE_VALUES)
        return int(rows[0]["n"])

    def _queue_depth(self, conn: sqlite3.Connection) -> int:
        try:
            return int(conn.execute(_QUEUE_DEPTH_SQL, _ACTIVE_VALUES).fetchone()[0])
        except sqlite3.Error as exc:
            raise StoreError(f"query failed: {exc}") from exc

    # -- outbox (edge_agent.outbox) -------------------------------------------
    def _answer_copy(self, conn: sqlite3.Connection, order_id: str) -> StoreOutcome | None:
        """A copy of an order this agent holds: what it stored goes out again now (the
        waiting receipt/result, else the result, else a new receipt); None if unknown."""
        row = conn.execute(
            "SELECT command, received_at, result FROM orders WHERE order_id = ?", (order_id,)
        ).fetchone()
        if row is None:
            return None
        with _mapped():
            waiting = outbox.due_now(conn, order_id)
        if waiting:
            return "resent" if row[2] is not None else "duplicate"
        if row[2] is not None:
            self._outbox_add(conn, order_id, row[2].encode(), "result")
            return "resent"
        cmd = decode(OrderCommand, row[0])
        receipt = OrderReceipt(
            order_id=order_id,
            command_id=cmd.command_id,
            meter_id=cmd.meter_id,
            concentrator_id=cmd.concentrator_id,
            received_at=datetime.fromisoformat(row[1]),
            queue_depth=self._queue_depth(conn),
        )
        self._outbox_add(conn, order_id, receipt.to_json(), "receipt")
        return "duplicate"

    def answer_copy(self, order_id: str) -> StoreOutcome | None:
        """:meth:`_answer_copy` in its own transaction (a copy the verifier recognised)."""
        with self.transaction() as conn:
            return self._answer_copy(conn, order_id)

    def _outbox_add(
        self, conn: sqlite3.Connection, key: str | None, payload: bytes, kind: OutboxKind
    ) -> None:
        with _mapped():
            outbox.add(conn, key, kind, payload)

    def outbox_add(self, key: str | None, payload: bytes, kind: OutboxKind) -> None:
        with self.transaction() as conn:
            self._outbox_add(conn, key, payload, kind)

    def add_refusal(self, refusal_id: str, digest: str, payload: bytes) -> bool:
        """Queue a refusal report, unless one for the same payload waits or too many do."""
        with self.transaction() as conn, _mapped():
            if outbox.has_refusal(conn, digest) or outbox.refusal_count(conn) >= outbox.MAX_REFUSALS:
                return False
            outbox.add(conn, refusal_id, "refusal", payload)
        return True

    def outbox_pending(
        self, exclude: Iterable[int] = (), limit: int = 100, now: float | None = None
    ) -> list[tuple[int, bytes, int]]:
        """Rows due to be sent: ``(id, payload, sends so far)``."""
        with self._lock, _mapped():
            return outbox.pending(self._conn, time.time() if now is None else now, exclude, limit)

    def outbox_sent(self, rows: Iterable[tuple[int, float]]) -> None:
        """Rows ``(id, next_at)`` were published (one transaction for a pump round)."""
        with self.transaction() as conn, _mapped():
            outbox.sent(conn, rows)

    def outbox_due_now(self) -> int:
        with self.transaction() as conn, _mapped():
            return outbox.due_now(conn)

    def outbox_acknowledge(self, kind: OutboxKind, key: str) -> int:
        with self.transaction() as conn, _mapped():
            return outbox.acknowledge(conn, kind, key)

    def outbox_depth(self) -> int:
        return int(self._query("SELECT count(*) AS n FROM outbox")[0]["n"])


_ACTIVE_VALUES: tuple[str, ...] = tuple(s.value for s in ACTIVE)
_QUEUE_DEPTH_SQL = (
    f"SELECT count(*) AS n FROM orders WHERE state IN ({','.join('?' * len(_ACTIVE_VALUES))})"
)


@contextmanager
def _mapped() -> Iterator[None]:
    """sqlite3 errors of the outbox functions as :class:`StoreError`."""
    try:
        yield
    except sqlite3.Error as exc:
        raise StoreError(f"outbox: {exc}") from exc


def _attempts_json(attempts: list[Attempt]) -> str:
    return json.dumps([to_builtins(a) for a in attempts])


def epoch(moment: datetime) -> float:
    return moment.timestamp()


def monotonic() -> float:
    return time.monotonic()
