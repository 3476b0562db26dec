"""The relay audit: what each meter's relay really did, read at the lowest priority.

Three reasons to read a meter (``RelayReport.trigger``), one read each time:

* ``after_order``: right after every order on the meter (its ``order_id`` named), so a
  button press or a trip soon after a reconnect is seen at once;
* ``audit``: every meter once per ``audit.cycle_s``, spread over the cycle (each meter
  has its own slot from a hash of its id), always reported;
* ``log_poll``: the log of every meter at least every ``audit.log_poll_s``; reported
  only when it has new entries or the relay reads otherwise than at the last read (a
  relay that opened without a log row is seen within the poll, not only the cycle).

A read is one association and at most two GETs: a GET-with-list of output_state,
control_state, control_mode, energy (value, scaler_unit), clock and the disconnector
log's entries_in_use and profile_entries; then, if the log grew, the new entries with
selective access by entry (``last + 1 ..``, at most 50 a read, block transfer as the
meter needs), or by clock range once the log is full (:func:`observe`). The report goes
into the outbox and the last entry read moves on in one transaction
(:mod:`edge_agent.relay_store`); the coordinator's ack drops it like a result.

Never in an order's way: the audit borrows a line only while nothing runs on it and no
order waits for it (:meth:`Executor.borrow_line`), and asks before every request frame
whether an order now waits for the line; if so it leaves at once, without even the
closing DISC (:meth:`MeterSession.abandon`): the order waits at most for the exchange in
progress. Airtime: each read's time on the line is measured; after a read of ``d``
seconds the line gets no audit for ``d * (1 - share) / share`` seconds, so the audit's
share of every line stays under ``audit.max_airtime_share`` (shown per line, over the
last ``audit.airtime_window_s``, in ``rcd edge status``).
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

from edge_agent.config import AuditSettings
from edge_agent.executor import AGENT_VERSION, Executor
from edge_agent.logs import log
from edge_agent.meter_table import Meter
from edge_agent.relay_store import AuditRow, RelayStore
from edge_agent.store import OrderRow, Store
from shared.codes import ControlState
from shared.contracts import (
    EnergyReading,
    OrderResult,
    RelayLogEntry,
    RelayReading,
    RelayReport,
    RelayTrigger,
    validate,
)
from shared.dlms import profile as P
from shared.dlms.errors import MalformedResponse, Preempted
from shared.errors import ContractError

LOG_OBIS = "0.0.99.98.2.255"
STATE_ITEMS = [
    ("0.0.96.3.10.255", 70, 2), ("0.0.96.3.10.255", 70, 3), ("0.0.96.3.10.255", 70, 4),
    ("1.0.1.8.0.255", 3, 2), ("1.0.1.8.0.255", 3, 3), ("0.0.1.0.0.255", 8, 2),
    (LOG_OBIS, 7, 7), (LOG_OBIS, 7, 8),
]
_END_OF_TIME = datetime(9999, 12, 31, tzinfo=UTC)
# Log entries per read (the contract allows 200 a report): a read the audit gives up to
# an order loses what it had read, so reads stay short and each one moves the index on.
MAX_ENTRIES = 50
UNITS = {27: "W", 30: "Wh", 32: "varh"}
_PRIORITY: dict[str, int] = {"after_order": 0, "audit": 1, "log_poll": 2}


class AuditLink(Protocol):
    """An open association (``shared.dlms.client.MeterSession`` in production)."""

    def read_values(self, items: list[tuple[str, int, int]]) -> list[Any]: ...

    def read_selective(self, obis: str, class_id: int, attribute: int, access: bytes) -> Any: ...


Sessions = Callable[[Meter, Callable[[], bool]], AbstractContextManager[AuditLink]]


@dataclass(frozen=True)
class Observation:
    relay: RelayReading
    energy: EnergyReading | None
    events: list[RelayLogEntry]
    log_index: int  # the last entry read (unchanged when none are new)
    # (scaler, unit) of the energy register as read, None when unusable: with
    # relay.control_mode, what the driver caches so that the next order need not read them
    scaler_unit: tuple[int, int] | None = None


def observe(link: AuditLink, last_index: int, last_at: datetime | None = None) -> Observation:
    """The read itself: relay state, energy, clock, log size; then the new log entries.

    ``last_index`` counts the rows reported since the meter's log began. While the log
    has room, a row's position in the buffer is that count, and new rows are read by
    entry. Once it is full, the oldest rows go and positions shift: new rows are then the
    ones logged after ``last_at`` (read by clock range), numbered on from ``last_index``.
    """
    v = link.read_values(STATE_ITEMS)
    if len(v) != len(STATE_ITEMS):
        raise MalformedResponse(f"expected {len(STATE_ITEMS)} values, got {len(v)}")
    relay = _relay(v[0], v[1], v[2])
    energy = _energy(v[3], v[4], v[5])
    scaler_unit = _scaler_unit(v[4]) if energy is not None else None
    in_use, capacity = _count(v[6]), _count(v[7])
    if in_use >= capacity > 0 and last_at is not None and last_index:
        rows = link.read_selective(LOG_OBIS, 7, 2, P.encode_access(
            P.clock_range(last_at, _END_OF_TIME)))
        newer = [e for e in P.log_entries(rows, 1) if e.at > last_at]
        events = [RelayLogEntry(index=last_index + n, at=e.at, code=e.code)
                  for n, e in enumerate(newer, start=1)]
        return Observation(relay, energy, events, events[-1].index if events else last_index,
                           scaler_unit)
    if in_use < last_index:  # the meter's log restarted (replaced, cleared): from the top
        last_index = 0
    events = []
    if in_use > last_index:
        to_entry = min(in_use, last_index + MAX_ENTRIES)
        rows = link.read_selective(LOG_OBIS, 7, 2, P.encode_access(
            P.EntrySelector(last_index + 1, to_entry)))
        entries = P.log_entries(rows, last_index + 1)
        events = [RelayLogEntry(index=e.index, at=e.at, code=e.code) for e in entries]
        if events:
            last_index = events[-1].index
    return Observation(relay, energy, events, last_index, scaler_unit)


def _scaler_unit(value: Any) -> tuple[int, int] | None:
    try:
        scaler, unit = value
        if isinstance(scaler, bool) or isinstance(unit, bool):
            return None
        return int(scaler), int(unit)
    except (ValueError, TypeError):
        return None


def _count(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise MalformedResponse(f"entries_in_use: expected a count, got {value!r}")
    return int(value)


def _relay(output: Any, control: Any, mode: Any) -> RelayReading:
    try:
        if not isinstance(output, bool):
            raise TypeError(f"output_state {output!r}")
        return validate(RelayReading, {"output_state": bool(output),
                                       "control_state": ControlState(int(control)),
                                       "control_mode": int(mode)})
    except (ValueError, TypeError, ContractError) as exc:
        raise MalformedResponse(f"disconnect control values out of range: {exc}") from exc


def _energy(raw: Any, scaler_unit: Any, clock: Any) -> EnergyReading | None:
    """The energy reading, or None when the meter's values are unusable (the relay
    state stands on its own)."""
    try:
        scaler, unit = scaler_unit
        moment = clock.value if hasattr(clock, "value") else (
            P.parse_cosem_datetime(bytes(clock)) if isinstance(clock, bytes | bytearray) else None)
        aware = isinstance(moment, datetime) and moment.utcoffset() is not None
        return validate(EnergyReading, {
            "value": float(raw) * 10.0 ** int(scaler), "unit": UNITS.get(int(unit), str(unit)),
            "meter_clock": moment if aware else None, "read_at": datetime.now(UTC)})
    except (ValueError, TypeError, ContractError, OverflowError):
        return None


@dataclass
class Airtime:
    """One line's audit airtime: busy periods in the window, and when it may go again."""

    share: float
    window_s: float
    busy: deque[tuple[float, float]] = field(default_factory=deque)
    next_at: float = 0.0

    def record(self, start: float, end: float) -> None:
        self.busy.append((start, end))
        self.next_at = end + (end - start) * (1 - self.share) / self.share

    def measured(self, now: float) -> tuple[float, float]:
        """(share of the last window the audit used, seconds busy in it)."""
        since = now - self.window_s
        while self.busy and self.busy[0][1] < since:
            self.busy.popleft()
        used = sum(end - max(start, since) for start, end in self.busy)
        return used / self.window_s, used


def slot(meter_id: str, period: float) -> float:
    """The meter's offset within a period: spread evenly by a hash of its id."""
    digest = int.from_bytes(hashlib.sha256(meter_id.encode()).digest()[:4], "big")
    return period * digest / 2**32


def _times(row: AuditRow, settings: AuditSettings, started: float) -> tuple[float, float]:
    """When the meter's next audit and next log poll fall due."""
    first_audit = started + slot(row.meter_id, settings.cycle_s)
    audit_at = row.audited_at + settings.cycle_s if row.audited_at is not None else first_audit
    first_poll = started + slot(row.meter_id, settings.log_poll_s)
    poll_at = row.log_read_at + settings.log_poll_s if row.log_read_at is not None else first_poll
    return audit_at, poll_at


def due_job(row: AuditRow, settings: AuditSettings, started: float,
            now: float) -> tuple[RelayTrigger, str | None, float] | None:
    """What the meter is due for now, if anything (the most urgent first), and since when:
    among reads of one kind the longest overdue goes first, so that on a line with more
    to read than its airtime allows every meter still gets its turn."""
    if settings.after_order and row.after_order is not None:
        return "after_order", row.after_order, row.after_order_at or 0.0
    audit_at, poll_at = _times(row, settings, started)
    if now >= audit_at:
        return "audit", None, audit_at
    if now >= poll_at:
        return "log_poll", None, poll_at
    return None


def next_due(row: AuditRow, settings: AuditSettings, started: float) -> float:
    """The moment the meter's next read falls due (the audit thread sleeps until the
    first of them: with 1,000 meters and a day's cycle it wakes about every 90 s)."""
    if settings.after_order and row.after_order is not None:
        return row.after_order_at or 0.0
    return min(_times(row, settings, started))


class RelayAuditor:
    """The audit thread: picks the most urgent due read on a free line, runs it."""

    def __init__(self, store: Store, executor: Executor, sessions: Sessions,
                 settings: AuditSettings, concentrator_id: str, *,
                 on_report: Callable[[], None] = lambda: None,
                 hold_disconnects: Callable[[], bool] = lambda: False,
                 readable: Callable[[Meter], bool] = lambda meter: True,
                 learned: Callable[[Meter, int, int, tuple[int, int]], None] = (
                     lambda meter, version, mode, scaler_unit: None),
                 clock: Callable[[], float] = time.time,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        self.rows = RelayStore(store)
        self._store = store
        self._executor = executor
        self._sessions = sessions
        self.settings = settings
        self._cid = concentrator_id
        self._on_report = on_report
        self._hold = hold_disconnects
        self._readable = readable  # False: a meter on a line without a port here
        self._learned = learned  # (meter, table version, control_mode, (scaler, unit))
        self._clock = clock  # wall clock: the schedule, kept in the table
        self._mono = monotonic  # airtime: measured and bounded on the monotonic clock
        self._started = clock()
        self._airtime: dict[str, Airtime] = {}
        self._not_before: dict[str, float] = {}
        self._meters: tuple[int, dict[str, Meter | None]] = (-1, {})
        self._sleep = settings.idle_poll_s
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.reads = {"done": 0, "preempted": 0, "failed": 0}

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="rcd-audit", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def wake(self) -> None:
        """Look for due reads now (the meter table changed)."""
        self._wake.set()

    def order_ended(self, order: OrderRow, result: OrderResult) -> None:
        """Executor hook: read the meter's log after an order that reached it."""
        if self.settings.after_order and result.attempts:
            self.rows.after_order(order.command.meter_id, order.order_id, self._clock())
            self._wake.set()

    def airtime(self, line_key: str) -> Airtime:
        if line_key not in self._airtime:
            self._airtime[line_key] = Airtime(self.settings.max_airtime_share,
                                              self.settings.airtime_window_s)
        return self._airtime[line_key]

    # -- the loop ---------------------------------------------------------------
    def _loop(self) -> None:
        while not self._stop.is_set():
            self._wake.clear()
            try:
                ran = self.run_once()
            except Exception:  # the audit must never take the agent down
                log("audit.error", logging.ERROR, exc_info=True)
                ran = False
            if not ran:
                self._wake.wait(self._sleep)

    def _meter_table(self) -> dict[str, Meter | None]:
        """The meters, read again only when the meter table changed."""
        version = self._store.table_version
        if self._meters[0] != version:
            self._meters = (version, {mid: self._store.meter(mid) for mid in self.rows.meter_ids()})
        return self._meters[1]

    def run_once(self) -> bool:
        """Run the most urgent due read whose line is free; False when none could run
        (then ``_sleep`` is how long until the next one falls due, at most a minute)."""
        now, mono = self._clock(), self._mono()
        meters = self._meter_table()
        waiting = {m.line_key for mid in self.rows.waiting_meters(now, self._hold())
                   if (m := meters.get(mid)) is not None}
        lines = self._lines(meters)
        free = {line for line in lines if line not in waiting and self._executor.line_idle(line)}
        if not free:
            # every line runs or waits for orders (a campaign): look again soon, without
            # going through every meter's schedule (14 ms with 500 meters, twice a second)
            self._sleep = self.settings.idle_poll_s
            return False
        rows = self.rows.rows()
        jobs: list[tuple[int, float, Meter, RelayTrigger, str | None]] = []
        wait = 60.0 if len(free) == len(lines) else self.settings.idle_poll_s
        for mid, meter in meters.items():
            if (meter is None or meter.line_key not in free or not meter.commissioned
                    or not self._readable(meter)):
                continue
            row = rows.get(mid) or AuditRow(mid)
            rest = max(self._not_before.get(mid, 0.0) - now,
                       self.airtime(meter.line_key).next_at - mono)
            job = due_job(row, self.settings, self._started, now)
            if job is None or rest > 0:
                wait = min(wait, max(rest, next_due(row, self.settings, self._started) - now))
                continue
            jobs.append((_PRIORITY[job[0]], job[2], meter, job[0], job[1]))
        self._sleep = min(max(wait, self.settings.idle_poll_s), 60.0)
        for _, _, meter, trigger, order_id in sorted(jobs, key=lambda j: (j[0], j[1])):
            if self._executor.borrow_line(meter):
                try:
                    self._read(meter, trigger, order_id, rows.get(meter.meter_id))
                finally:
                    self._executor.give_back_line(meter)
                return True
        if jobs:  # due, but their lines are busy with orders: look again soon
            self._sleep = self.settings.idle_poll_s
        return False

    def _lines(self, meters: dict[str, Meter | None]) -> set[str]:
        """The lines of the meters the audit reads."""
        return {m.line_key for m in meters.values()
                if m is not None and m.commissioned and self._readable(m)}

    def _order_waiting(self, line_key: str) -> bool:
        now = self._clock()
        meters = self._meter_table()  # asked before every frame: no query per meter
        for mid in self.rows.waiting_meters(now, self._hold()):
            meter = meters.get(mid)
            if meter is not None and meter.line_key == line_key:
                return True
        return False

    def _read(self, meter: Meter, trigger: RelayTrigger, order_id: str | None,
              row: AuditRow | None) -> None:
        line = meter.line_key
        last = row.log_index if row is not None else 0
        last_at = datetime.fromisoformat(row.log_at) if row is not None and row.log_at else None
        version = self._meters[0]  # the table ``meter`` was read from
        began = self._mono()
        at = self._clock()
        try:
            with self._sessions(meter, lambda: self._stop.is_set() or self._order_waiting(line)
                                ) as link:
                seen = observe(link, last, last_at)
        except Preempted:
            self.reads["preempted"] += 1
            log("audit.preempted", meter=meter.meter_id, trigger=trigger, line=line)
            return
        except Exception as exc:
            self.reads["failed"] += 1
            # a meter that does not answer is tried again later and later (60 s doubling,
            # at most the log poll), never in a loop that would hold the line
            failures = row.failures if row is not None else 0
            self._not_before[meter.meter_id] = at + min(
                self.settings.log_poll_s, 60.0 * 2 ** min(failures, 10))
            self.rows.failed(meter.meter_id, at)
            log("audit.failed", logging.WARNING, meter=meter.meter_id, trigger=trigger,
                error=f"{type(exc).__name__}: {str(exc)[:200]}")
            return
        finally:
            self._measured(line, began, self._mono())
        self.reads["done"] += 1
        if seen.scaler_unit is not None and seen.relay.control_mode is not None:
            self._learned(meter, version, seen.relay.control_mode, seen.scaler_unit)
        self._report(meter, trigger, order_id, seen, at, row.relay if row is not None else None)

    def _measured(self, line: str, began: float, ended: float) -> None:
        budget = self.airtime(line)
        budget.record(began, ended)
        share, busy = budget.measured(ended)
        self.rows.save_airtime(line, share, busy, budget.window_s)

    def _report(self, meter: Meter, trigger: RelayTrigger, order_id: str | None,
                seen: Observation, at: float, last_relay: str | None) -> None:
        relay = f"{int(seen.relay.control_state)}/{int(bool(seen.relay.output_state))}"
        send = trigger != "log_poll" or bool(seen.events) or relay != last_relay
        report_id = "rr" + uuid.uuid4().hex
        payload = None
        if send:
            payload = RelayReport(
                report_id=report_id, concentrator_id=self._cid, meter_id=meter.meter_id,
                trigger=trigger, order_id=order_id, observed_at=datetime.fromtimestamp(at, UTC),
                events=seen.events, relay=seen.relay, energy=seen.energy,
                agent_version=AGENT_VERSION,
            ).to_json()
        log_at = seen.events[-1].at.isoformat() if seen.events else None
        self.rows.reported(meter.meter_id, payload=payload, report_id=report_id,
                           log_index=seen.log_index, log_at=log_at,
                           audited=trigger == "audit", at=at, order_id=order_id, relay=relay)
        log("audit.read", meter=meter.meter_id, trigger=trigger, order=order_id,
            events=len(seen.events), control_state=seen.relay.control_state.name.lower(),
            output_state=seen.relay.output_state, reported=send)
        if send:
            self._on_report()
