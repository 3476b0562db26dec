"""The relay audit's part of the agent's SQLite file (table ``relay_audit``).

One row per meter: the last disconnector log entry reported (``log_index``, its
meter-clock ``log_at``), when its relay was last audited and its log last read, the relay
as last read (``relay``: a log poll that finds it changed reports it), and an order whose
after-order log read is still due. A report goes into the outbox in the
same transaction that moves ``log_index`` on, so an entry is never lost and never
reported twice (a crash before the commit reads it again). The measured airtime share of
each line is kept in ``meta`` (``audit_airtime:<line>``) for ``rcd edge status``.
"""

from __future__ import annotations

import json
import sqlite3
import time
from dataclasses import dataclass
from typing import Any

from edge_agent import outbox
from edge_agent.errors import StoreError
from edge_agent.store import Store

SCHEMA = """
CREATE TABLE IF NOT EXISTS relay_audit (
    meter_id TEXT PRIMARY KEY,
    log_index INTEGER NOT NULL DEFAULT 0,
    log_at TEXT,
    audited_at REAL,
    log_read_at REAL,
    after_order TEXT,
    after_order_at REAL,
    failures INTEGER NOT NULL DEFAULT 0,
    relay TEXT
);
"""


@dataclass(frozen=True)
class AuditRow:
    meter_id: str
    log_index: int = 0
    log_at: str | None = None
    audited_at: float | None = None
    log_read_at: float | None = None
    after_order: str | None = None
    after_order_at: float | None = None
    failures: int = 0
    relay: str | None = None  # "control_state/output_state" of the last read


class RelayStore:
    """Reads and writes ``relay_audit`` through the agent's :class:`Store`."""

    def __init__(self, store: Store) -> None:
        self.store = store
        with store.transaction() as conn:
            conn.execute(SCHEMA.strip().rstrip(";"))

    def rows(self) -> dict[str, AuditRow]:
        return {r["meter_id"]: AuditRow(**r) for r in self.store._query(
            "SELECT * FROM relay_audit")}

    def row(self, meter_id: str) -> AuditRow:
        found = self.store._query("SELECT * FROM relay_audit WHERE meter_id = ?", (meter_id,))
        return AuditRow(**found[0]) if found else AuditRow(meter_id)

    def after_order(self, meter_id: str, order_id: str, at: float) -> None:
        """An order ended on the meter: its log is read next (the newest order wins).
        Lazy (store_file): lost at a power cut, the log is read at the next poll instead."""
        with self.store.transaction(durable=False) as conn:
            _ensure(conn, meter_id)
            conn.execute("UPDATE relay_audit SET after_order = ?, after_order_at = ? "
                         "WHERE meter_id = ?", (order_id, at, meter_id))

    def reported(self, meter_id: str, *, payload: bytes | None, report_id: str,
                 log_index: int, log_at: str | None, audited: bool, at: float,
                 order_id: str | None, relay: str | None = None) -> None:
        """One read done: its report (if any) into the outbox and the row moved on, in
        one transaction. The after-order mark is cleared only for the order read."""
        with self.store.transaction() as conn:
            _ensure(conn, meter_id)
            if payload is not None:
                try:
                    outbox.add(conn, report_id, "relay_report", payload)
                except sqlite3.Error as exc:
                    raise StoreError(f"outbox: {exc}") from exc
            conn.execute(
                "UPDATE relay_audit SET log_index = ?, log_at = coalesce(?, log_at), "
                "log_read_at = ?, failures = 0, relay = coalesce(?, relay), "
                "audited_at = CASE WHEN ? THEN ? ELSE audited_at END, "
                "after_order = CASE WHEN after_order = ? THEN NULL ELSE after_order END "
                "WHERE meter_id = ?",
                (log_index, log_at, at, relay, audited, at, order_id, meter_id),
            )

    def failed(self, meter_id: str, at: float) -> None:
        """A read that did not reach the meter: counted; a due audit stays due (and the
        meter out of the coverage) until one succeeds, the auditor's backoff spaces the
        tries; the after-order read is dropped (the next read sees what it would have)."""
        with self.store.transaction() as conn:
            _ensure(conn, meter_id)
            conn.execute(
                "UPDATE relay_audit SET failures = failures + 1, log_read_at = ?, "
                "after_order = NULL WHERE meter_id = ?", (at, meter_id))

    def meter_ids(self) -> list[str]:
        return [r["meter_id"] for r in self.store._query(
            "SELECT meter_id FROM meters WHERE in_table = 1 ORDER BY meter_id")]

    def waiting_meters(self, now: float, hold_disconnects: bool = False) -> set[str]:
        """Meters with an order ready to run (queued or waiting, due): the audit gives
        their line up. Disconnects held for want of a protected list do not count (they
        cannot run; counting them would stop the audit on that line)."""
        held = "AND action != 'disconnect' " if hold_disconnects else ""
        return {r["meter_id"] for r in self.store._query(
            "SELECT DISTINCT meter_id FROM orders WHERE state IN ('queued', 'waiting') "
            f"AND next_at <= ? {held}", (now,))}

    def save_airtime(self, line_key: str, share: float, busy_s: float, window_s: float) -> None:
        figures = {"share": round(share, 4), "busy_s": round(busy_s, 3), "window_s": window_s,
                   "at": time.time()}  # a figure for `rcd edge status`: lazy (store_file)
        self.store.set_meta(f"audit_airtime:{line_key}", json.dumps(figures), durable=False)


def airtime_shares(store: Store) -> dict[str, float]:
    """The audit's last measured airtime share per line, for the status message."""
    rows = store._query("SELECT key, value FROM meta WHERE key LIKE 'audit_airtime:%'")
    shares: dict[str, float] = {}
    for row in rows:
        try:
            share = float(json.loads(row["value"])["share"])
        except (ValueError, TypeError, KeyError):
            continue  # a damaged row is left out, never the whole status
        shares[str(row["key"]).removeprefix("audit_airtime:")] = min(max(share, 0.0), 1.0)
    return dict(sorted(shares.items())[:64])


def _ensure(conn: sqlite3.Connection, meter_id: str) -> None:
    conn.execute("INSERT OR IGNORE INTO relay_audit(meter_id) VALUES (?)", (meter_id,))


def audit_summary(store: Store, cycle_s: float, now: float | None = None) -> dict[str, Any]:
    """Per line: meters, how many were audited within the last cycle (coverage), the
    audit's measured airtime share; for ``rcd edge status`` (reads the file only)."""
    now = time.time() if now is None else now
    with store.transaction() as conn:
        conn.execute(SCHEMA.strip().rstrip(";"))
        rows = conn.execute(
            "SELECT CASE WHEN m.transport = 'hdlc' THEN 'line:' || m.line_id "
            "ELSE 'tcp:' || m.host || ':' || m.port END AS line, count(*) AS meters, "
            "sum(CASE WHEN a.audited_at >= ? THEN 1 ELSE 0 END) AS audited, "
            "sum(coalesce(a.failures, 0) > 0) AS failing "
            "FROM meters m LEFT JOIN relay_audit a ON a.meter_id = m.meter_id "
            "WHERE m.in_table = 1 GROUP BY line ORDER BY line", (now - cycle_s,)).fetchall()
        meta = dict(conn.execute(
            "SELECT key, value FROM meta WHERE key LIKE 'audit_airtime:%'").fetchall())
    lines: dict[str, Any] = {}
    for line, meters, audited, failing in rows:
        airtime = json.loads(meta.get(f"audit_airtime:{line}", "null") or "null")
        lines[line] = {"meters": meters, "audited_last_cycle": audited or 0,
                       "coverage": round((audited or 0) / meters, 3) if meters else 0.0,
                       "failing": failing or 0,
                       "airtime_share": airtime["share"] if airtime else None}
    return lines
