"""Who goes first on a line (issue 17: reconnects never wait).

A customer who paid must not wait behind a disconnect campaign queued at the
concentrator: reconnects (connect and arm) go before every disconnect, and
disconnects before background work (the relay audit of issue 16 is the lowest
priority on the line). Within one rank the coordinator's priority, then arrival order.

:func:`rank` is the one rule; :data:`ORDER_SQL` is the same rule for the queue in the
store (``Store.claim_next``), so orders already waiting are overtaken too. Work that is
not an order (an audit read) asks :func:`rank` with its own kind, e.g. ``"audit"``.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable
from datetime import datetime
from typing import Any, Final

from edge_agent.lifecycle import State
from shared.codes import Action
from shared.contracts import Attempt, OrderCommand, decode, validate

# ``Store._end_cancelled``: ends one order cancelled, result in the outbox
EndCancelled = Callable[..., object]

RECONNECT: Final = 0
DISCONNECT: Final = 1
BACKGROUND: Final = 2  # audits and anything else that is not an order

_RANK: Final[dict[str, int]] = {
    Action.CONNECT.value: RECONNECT,
    Action.ARM.value: RECONNECT,
    Action.DISCONNECT.value: DISCONNECT,
}
RECONNECT_ACTIONS: Final = frozenset(k for k, v in _RANK.items() if v == RECONNECT)


def rank(kind: str) -> int:
    """Lower goes first: ``connect``/``arm`` 0, ``disconnect`` 1, anything else 2."""
    return _RANK.get(kind, BACKGROUND)


def goes_before(kind: str, other: str) -> bool:
    return rank(kind) < rank(other)


# The ``orders`` table's ``action`` column ranked as :func:`rank` does (ascending).
ORDER_SQL: Final = (
    "CASE action "
    + " ".join(f"WHEN '{kind}' THEN {value}" for kind, value in sorted(_RANK.items()))
    + f" ELSE {BACKGROUND} END"
)


def disconnects_to_supersede(conn: sqlite3.Connection, meter_id: str) -> list[dict[str, Any]]:
    """The meter's disconnects a reconnect stops: queued, waiting for a retry, or
    running (those are stopped by the executor before the relay method)."""
    cursor = conn.execute(
        "SELECT order_id, state, command, received_at, started_at, attempts FROM orders "
        "WHERE meter_id = ? AND action = ? AND state IN (?, ?, ?)",
        (meter_id, Action.DISCONNECT.value, State.QUEUED.value, State.WAITING.value,
         State.RUNNING.value),
    )
    cols = [c[0] for c in cursor.description]
    return [dict(zip(cols, row, strict=True)) for row in cursor.fetchall()]


def supersede_disconnects(conn: sqlite3.Connection, cmd: OrderCommand, now: datetime,
                          end_cancelled: EndCancelled) -> int:
    """A reconnect stops the meter's disconnects here too (the coordinator's cancel may
    come later, or be lost): a queued or waiting one ends cancelled at once, a running
    one is stopped by the executor before the relay method (``cancel_requests``); if it
    had already switched, the reconnect runs after it (one exchange per meter).
    Runs in the transaction that stores the reconnect. Returns how many it stopped."""
    why = f"superseded by {cmd.action.value} order {cmd.order_id} at the agent"
    rows = disconnects_to_supersede(conn, cmd.meter_id)
    for row in rows:
        if row["state"] == State.RUNNING.value:
            conn.execute(
                "INSERT OR IGNORE INTO cancel_requests(order_id, command_id, requested_at) "
                "VALUES (?, ?, ?)",  # the executor names it: "cancelled by command ..."
                (row["order_id"], f"{cmd.command_id} ({why})", now.isoformat()))
            continue
        started = row["started_at"]
        end_cancelled(
            conn, decode(OrderCommand, row["command"]), row["state"],
            f"{why}: cancelled before switching",
            attempts=[validate(Attempt, a) for a in json.loads(row["attempts"])][-50:],
            received_at=datetime.fromisoformat(row["received_at"]),
            started_at=datetime.fromisoformat(started) if started else None,
            finished_at=now,
        )
    return len(rows)
