"""The agent's local database (one SQLite file; ``Store.db`` gives it as sqlite-utils).

Tables:

``meters``      the concentrator's meter table, with the last relay state read and the
                DLMS invocation counter (``invocation_counter`` is the next value to use;
                ``counter_reserved`` is the high-water mark handed out to a session;
                ``edge_agent.meter_table``)
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
``synchronous=FULL`` (``edge_agent.store_file``): what a method returned as stored
survives kill -9 and a power cut. The exceptions commit lazily (they survive kill -9;
at a power cut they may be lost, which costs a repeat only): the outbox's resend
bookkeeping and acks, :meth:`Store.claim_next`, and the relay audit's marks
(``edge_agent.relay_store``). This module holds the orders, their cancels and the
store's side of the outbox and the protected list. State changes of orders go through
:func:`edge_agent.lifecycle.next_state`.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

from edge_agent import line_priority, meter_table, outbox, protected
from edge_agent.errors import StoreError
from edge_agent.lifecycle import ACTIVE, Event, State, next_state
from edge_agent.meter_table import MeterTable
from edge_agent.outbox import OutboxKind
from shared.codes import Action, Outcome, ReasonCode
from shared.contracts import (
    Attempt,
    CancelCommand,
    OrderCommand,
    OrderReceipt,
    OrderResult,
    ProtectedList,
    decode,
    to_builtins,
    validate,
)
from shared.protect import Verdict

_SCHEMA = """
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


def _create(conn: sqlite3.Connection) -> None:
    conn.executescript(meter_table.SCHEMA + _SCHEMA)
    # Columns added since the first release, for databases created before them.
    outbox.migrate(conn)
    protected.migrate(conn)
    meter_table.migrate(conn)


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


class Store(MeterTable):
    """Thread-safe access to the agent's SQLite file: orders, cancels, outbox, protected list.

    Transactions, ``meta`` and ``seen`` come from :class:`StoreFile`, the meter table's
    methods from :class:`MeterTable`.
    """

    def __init__(self, path: str | Path) -> None:
        super().__init__(path, _create)

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
        # lazy: a claim lost at a power cut leaves the order queued, as recover_running
        # would have, and the outcome's durable commit flushes it first anyway
        with self.transaction(durable=False) as conn:
            cursor = conn.execute(
                f"SELECT * FROM orders WHERE state IN (?, ?) AND next_at <= ? {held}"
                f"ORDER BY {line_priority.ORDER_SQL}, priority DESC, rowid ASC LIMIT 1000",
                (State.QUEUED.value, State.WAITING.value, now.timestamp()),
            )
            cols = [c[0] for c in cursor.description]
            meter_at = cols.index("meter_id")
            for raw in cursor.fetchall():
                if blocked(raw[meter_at]):
                    continue
                r = dict(zip(cols, raw, strict=True))
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

    # The outbox's bookkeeping commits lazily (store_file): lost at a power cut, a row is
    # only sent again, and the coordinator acks the copy again.
    def outbox_sent(self, rows: Iterable[tuple[int, float]]) -> None:
        """Rows ``(id, next_at)`` were published (one transaction for a pump round)."""
        with self.transaction(durable=False) as conn, _mapped():
            outbox.sent(conn, rows)

    def outbox_due_now(self) -> int:
        with self.transaction(durable=False) as conn, _mapped():
            return outbox.due_now(conn)

    def outbox_acknowledge(self, kind: OutboxKind, key: str) -> int:
        return self.outbox_acknowledge_all([(kind, key)])

    def outbox_acknowledge_all(self, acks: Iterable[tuple[OutboxKind, str]]) -> int:
        """Drop every ``(kind, key)`` one ack names, in one transaction; rows dropped."""
        with self.transaction(durable=False) as conn, _mapped():
            return sum(outbox.acknowledge(conn, kind, key) for kind, key in acks)

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
