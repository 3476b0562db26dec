"""The agent's copy of its protected list (Ley 21.304), on the store's connection.

The list comes from the protect authority, not the coordinator (:mod:`shared.protect`):
``protected_meters`` holds its meters, ``meta`` its version and digest. Functions here
run inside the caller's transaction (like :mod:`edge_agent.outbox`).
"""

from __future__ import annotations

import sqlite3

from shared.contracts import ProtectedList
from shared.protect import Verdict, judge, meters_digest

SCHEMA = "CREATE TABLE IF NOT EXISTS protected_meters (meter_id TEXT PRIMARY KEY);"
_VERSION = "protected_version"
_DIGEST = "protected_digest"


def migrate(conn: sqlite3.Connection) -> None:
    conn.executescript(SCHEMA)


def _meta(conn: sqlite3.Connection, key: str) -> str | None:
    row = conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
    return None if row is None else str(row[0])


def held_version(conn: sqlite3.Connection) -> int | None:
    value = _meta(conn, _VERSION)
    return None if value is None else int(value)


def apply(conn: sqlite3.Connection, plist: ProtectedList) -> Verdict:
    """Replace the held list with ``plist`` if :func:`shared.protect.judge` says so."""
    verdict = judge(held_version(conn), _meta(conn, _DIGEST), plist)
    if verdict != "apply":
        return verdict
    conn.execute("DELETE FROM protected_meters")
    conn.executemany("INSERT OR IGNORE INTO protected_meters(meter_id) VALUES (?)",
                     [(m,) for m in plist.meters])
    conn.executemany("INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)",
                     [(_VERSION, str(plist.version)), (_DIGEST, meters_digest(plist.meters))])
    return verdict


def is_protected(conn: sqlite3.Connection, meter_id: str) -> bool:
    return conn.execute("SELECT 1 FROM protected_meters WHERE meter_id = ?",
                        (meter_id,)).fetchone() is not None
