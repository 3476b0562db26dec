"""The agent's outbox: receipts, results and refusal reports until the coordinator's ack.

The broker is a transport, never the only copy: a row leaves the outbox only when a
signed :class:`shared.contracts.MessageAck` from the coordinator names it (the
coordinator sends one after its database commit), never on the broker's PUBACK. Until
then the link publishes it again with exponential backoff (``next_at``, ``sends``),
whatever the broker said, and at once after every reconnect.

Each row has a ``kind`` (``receipt``, ``result``, ``refusal``) and a ``key``: the order
id of a receipt or result (column ``order_id``), the refusal id of a refusal. An ack of
a result also drops the order's receipt, which the result supersedes.

Functions take an open connection: the store calls them inside its own transactions
(an order's result and its outbox row are written together).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Final

from shared.contracts import AckedKind

# What the outbox holds is exactly what the coordinator's ack can name.
OutboxKind = AckedKind

# Added to the outbox of agent databases created before issue 11 (rows there were
# deleted on PUBACK): the kind is read from the payload.
_COLUMNS: Final = (
    ("kind", "TEXT"),
    ("next_at", "REAL NOT NULL DEFAULT 0"),
    ("sends", "INTEGER NOT NULL DEFAULT 0"),
)
# A flood of forged messages must not fill the concentrator's disk with refusals.
MAX_REFUSALS: Final = 1000


def migrate(conn: sqlite3.Connection) -> None:
    """Add the ack-era columns to an older outbox (idempotent)."""
    have = {row[1] for row in conn.execute("PRAGMA table_info(outbox)")}
    for name, declaration in _COLUMNS:
        if name not in have:
            conn.execute(f"ALTER TABLE outbox ADD COLUMN {name} {declaration}")
    conn.execute(
        "UPDATE outbox SET kind = json_extract(CAST(payload AS TEXT), '$.kind') "
        "WHERE kind IS NULL"
    )


def add(conn: sqlite3.Connection, key: str | None, kind: OutboxKind, payload: bytes) -> None:
    conn.execute(
        "INSERT INTO outbox(order_id, kind, payload, created_at, next_at, sends) "
        "VALUES (?, ?, ?, ?, 0, 0)",
        (key, kind, payload, datetime.now(UTC).isoformat()),
    )


def pending(
    conn: sqlite3.Connection, now: float, exclude: Iterable[int] = (), limit: int = 100
) -> list[tuple[int, bytes, int]]:
    """Rows due to be (re)sent: ``(id, payload, sends so far)``, oldest first."""
    skip = set(exclude)
    rows = conn.execute(
        "SELECT id, payload, sends FROM outbox WHERE next_at <= ? ORDER BY id LIMIT ?",
        (now, limit + len(skip)),
    ).fetchall()
    return [(int(r[0]), bytes(r[1]), int(r[2])) for r in rows if int(r[0]) not in skip][:limit]


def sent(conn: sqlite3.Connection, rows: Iterable[tuple[int, float]]) -> None:
    """Rows ``(id, next_at)`` were published: one more sending, due again at ``next_at``."""
    conn.executemany(
        "UPDATE outbox SET sends = sends + 1, next_at = ? WHERE id = ?",
        [(next_at, outbox_id) for outbox_id, next_at in rows],
    )


def due_now(conn: sqlite3.Connection, key: str | None = None) -> int:
    """Make rows (all, or those of one order/refusal) due at once; how many there are."""
    if key is None:
        return conn.execute("UPDATE outbox SET next_at = 0").rowcount
    return conn.execute("UPDATE outbox SET next_at = 0 WHERE order_id = ?", (key,)).rowcount


def acknowledge(conn: sqlite3.Connection, kind: OutboxKind, key: str) -> int:
    """Drop what the coordinator acknowledged; how many rows went (0 for a copy)."""
    kinds: tuple[str, ...] = ("receipt", "result") if kind == "result" else (kind,)
    marks = ",".join("?" * len(kinds))
    return conn.execute(
        f"DELETE FROM outbox WHERE order_id = ? AND kind IN ({marks})", (key, *kinds)
    ).rowcount


def has_refusal(conn: sqlite3.Connection, digest: str) -> bool:
    """A refusal of a payload with this digest still waits (a flood of copies: one report)."""
    row = conn.execute(
        "SELECT 1 FROM outbox WHERE kind = 'refusal' "
        "AND json_extract(CAST(payload AS TEXT), '$.payload_sha256') = ? LIMIT 1",
        (digest,),
    ).fetchone()
    return row is not None


def refusal_count(conn: sqlite3.Connection) -> int:
    return int(conn.execute("SELECT count(*) FROM outbox WHERE kind = 'refusal'").fetchone()[0])
