"""The concentrator's meter table (table ``meters``) and each meter's invocation counter.

The coordinator sends the table (:class:`shared.contracts.MeterTableSync`); a meter that
leaves it keeps its row, flagged out of the table, so its DLMS invocation counter never
goes backwards if it comes back. The same row holds the last contact and relay state
read. :class:`MeterTable` adds these methods to the agent's :class:`StoreFile`;
:class:`edge_agent.store.Store` builds on it.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from edge_agent.errors import StoreError
from edge_agent.store_file import StoreFile
from shared.contracts import MeterEntry, MeterTableSync, RelayReading

SCHEMA = """
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
"""


def migrate(conn: sqlite3.Connection) -> None:
    """Columns added since the first release, for databases created before them."""
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


class MeterTable(StoreFile):
    """The meter table's methods of the agent's store."""

    table_version = 0  # bumped on every meter-table change (drops cached meter facts)

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
                (int(reachable), int(reachable), datetime.now(UTC).isoformat(), meter_id),
            )
        else:
            self._exec(
                conn,
                "UPDATE meters SET reachable = 1, last_contact = ?, output_state = ?, "
                "control_state = ?, control_mode = ? WHERE meter_id = ?",
                (
                    datetime.now(UTC).isoformat(),
                    None if relay.output_state is None else int(relay.output_state),
                    int(relay.control_state),
                    relay.control_mode,
                    meter_id,
                ),
            )

    # -- invocation counters --------------------------------------------------
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
