"""The meter's own record of what happened to it: every relay method invocation and
every association, with wall-clock UTC time (ms) and the invocation counter used; every
relay change no method caused (injected events, kind ``event``) and every read of the
disconnector control log (kind ``log_read``, one per block).

This is the simulator's ground truth: a whole-system test decides from it whether the
coordinator's record of an order matches what the relay did. Pure data, no I/O; the
control interface serves it as JSON (``GET /log``, ``GET /meters/<id>/log``).
"""

from __future__ import annotations

import itertools
import threading
from collections import deque
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any, Literal

# A meter's log is bounded so that a long-running simulator cannot grow without limit;
# ``dropped`` says how many of the oldest entries went, so a reader knows it is partial.
MAX_ENTRIES = 20_000

RelayMethod = Literal["remote_disconnect", "remote_reconnect"]
AssociationEvent = Literal["open", "close", "refused"]
# One counter for every meter of the process: ``gseq`` orders entries across meters (a
# test tells which of two meters on a line was served first without comparing clocks).
_GLOBAL = itertools.count(1)


def utc_ms(at: datetime | None = None) -> str:
    """ISO 8601 UTC with milliseconds and a Z: ``2026-12-01T21:30:00.123Z``."""
    at = at or datetime.now(UTC)
    return at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{at.microsecond // 1000:03d}Z"


@dataclass(frozen=True)
class RelayOp:
    """One invocation of a Disconnect control method and what it did to the relay."""

    seq: int
    at: str
    meter_id: str
    method: RelayMethod
    client: int
    invocation_counter: int | None  # the client's, from the ciphered ACTION request
    action_result: int  # 0 success; the refusal's action-result otherwise
    control_state_before: int
    control_state_after: int
    output_state_before: bool
    output_state_after: bool
    kind: str = "relay"
    gseq: int = 0

    @property
    def changed(self) -> bool:
        return self.control_state_before != self.control_state_after


@dataclass(frozen=True)
class AssociationOp:
    """An association opened (HLS pass 4 done, or a public one), refused, or closed."""

    seq: int
    at: str
    meter_id: str
    event: AssociationEvent
    client: int
    invocation_counter: int | None
    diagnostic: int | None = None  # the AARE diagnostic of a refusal
    kind: str = "association"
    gseq: int = 0


@dataclass(frozen=True)
class EventOp:
    """A relay change (or a fault) that no method caused: injected through the control
    interface (button, local trip, weld, ...), with the log row it wrote, if any."""

    seq: int
    at: str
    meter_id: str
    event: str
    code: int | None  # the disconnector log's event code written; None: no row
    log_index: int | None  # the row's position in the disconnector log
    control_state_before: int
    control_state_after: int
    output_state_before: bool
    output_state_after: bool
    kind: str = "event"
    gseq: int = 0


@dataclass(frozen=True)
class LogReadOp:
    """One GET of the disconnector control log's buffer: a normal one (``block`` 0, or
    the first block of a long answer) or a GET-Request-next (``block`` >= 2)."""

    seq: int
    at: str
    meter_id: str
    client: int
    block: int  # the block sent (0: answered whole)
    rows: int  # rows selected (for the first answer; 0 for later blocks)
    last: bool  # the last (or only) part of the answer
    kind: str = "log_read"
    gseq: int = 0


Entry = RelayOp | AssociationOp | EventOp | LogReadOp


class OperationLog:
    """Append-only, thread-safe log of one meter's relay operations and associations."""

    def __init__(self, meter_id: str, max_entries: int = MAX_ENTRIES) -> None:
        self.meter_id = meter_id
        self._entries: deque[Entry] = deque(maxlen=max_entries)
        self._seq = 0
        self.dropped = 0
        self._lock = threading.Lock()

    def _next(self) -> tuple[int, str]:
        self._seq += 1
        if len(self._entries) == self._entries.maxlen:
            self.dropped += 1
        return self._seq, utc_ms()

    def _add(self, op: Entry) -> Entry:
        self._entries.append(op)
        return op

    def event(
        self, event: str, *, code: int | None, log_index: int | None,
        before: tuple[int, bool], after: tuple[int, bool],
    ) -> Entry:
        with self._lock:
            seq, at = self._next()
            return self._add(EventOp(seq, at, self.meter_id, event, code, log_index,
                                     before[0], after[0], before[1], after[1],
                                     gseq=next(_GLOBAL)))

    def log_read(self, *, client: int, block: int, rows: int, last: bool) -> Entry:
        with self._lock:
            seq, at = self._next()
            return self._add(LogReadOp(seq, at, self.meter_id, client, block, rows, last,
                                       gseq=next(_GLOBAL)))

    def relay(
        self, method: RelayMethod, *, client: int, invocation_counter: int | None,
        action_result: int, before: tuple[int, bool], after: tuple[int, bool],
    ) -> RelayOp:
        with self._lock:
            seq, at = self._next()
            op = RelayOp(
                seq, at, self.meter_id, method, client, invocation_counter, action_result,
                before[0], after[0], before[1], after[1], gseq=next(_GLOBAL),
            )
            self._entries.append(op)
            return op

    def association(
        self, event: AssociationEvent, *, client: int, invocation_counter: int | None,
        diagnostic: int | None = None,
    ) -> AssociationOp:
        with self._lock:
            seq, at = self._next()
            op = AssociationOp(
                seq, at, self.meter_id, event, client, invocation_counter, diagnostic,
                gseq=next(_GLOBAL),
            )
            self._entries.append(op)
            return op

    def entries(self, since_seq: int = 0, kind: str | None = None) -> list[Entry]:
        with self._lock:
            return [
                e for e in self._entries
                if e.seq > since_seq and (kind is None or e.kind == kind)
            ]

    def as_json(self, since_seq: int = 0, kind: str | None = None) -> dict[str, Any]:
        return {
            "meter_id": self.meter_id,
            "dropped": self.dropped,
            "entries": [asdict(e) for e in self.entries(since_seq, kind)],
        }


__all__ = ["AssociationOp", "EventOp", "LogReadOp", "OperationLog", "RelayOp", "utc_ms"]
