"""The executor: runs queued orders on meters, one attempt at a time, and ends them.

Per attempt (issue 4, step 4): check the meter table (present, commissioned),
open an association through a :class:`MeterDriver`, read the disconnect control,
report "already in state" without switching, otherwise switch and read back
relay, energy and clock in one request (that protocol, and the classification of
failures into the contract's reason codes, is :mod:`edge_agent.attempt_protocol`);
only ``RETRYABLE_REASONS`` are retried, with the order's RetryPolicy (exponential
backoff with jitter), until the attempts or the deadline run out. An order is never
started after its deadline, and the relay method is not invoked when the time left is
shorter than the method's expected round trip on that line (:class:`TransitEstimator`,
measured per line): the order ends ``expired`` without touching the meter. Right
before the method, a disconnect is also refused when a cancel for the order, or the
meter's protected flag (Ley 21.304) in the meter table, has arrived, and when the meter
is on the protect authority's list (``protected_customer_edge``, whoever signed the
order). With ``require_protected_list`` and no list held yet, disconnects stay queued
(they expire at their deadline) while reconnects and arms run.

Scheduling: one scheduler thread claims ready orders (highest priority first)
whose line has a free slot, and hands them to a worker pool. A serial (PLC/RS-485)
line runs ``lines.<id>.concurrency`` exchanges at a time (one on PLC); TCP meters
run one exchange each, at most ``executor.tcp_concurrency`` together.
"""

from __future__ import annotations

import logging
import random
import threading
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta

from edge_agent.attempt_protocol import AttemptResult, MeterDriver, classify, switch
from edge_agent.errors import LineFault, TransitionRefused
from edge_agent.lifecycle import Event
from edge_agent.logs import log
from edge_agent.meter_table import Meter
from edge_agent.store import PROTECTED_EDGE, OrderRow, Store
from shared.codes import RETRYABLE_REASONS, Action, Outcome, ReasonCode
from shared.contracts import Attempt, EnergyReading, OrderResult, RelayReading
from shared.dlms.errors import TransportError

AGENT_VERSION = "0.1.0"
# A TCP meter's first method transit estimate (serial lines: LineSettings).
DEFAULT_TRANSIT_S = 0.5
PROTECTED = ("cancelled: the meter table flags the meter as a registered electro-dependent "
             "patient's supply (Ley 21.304)")


class TransitEstimator:
    """The expected round trip of a relay method per line: the largest of the last
    ``window`` measured ones (a slow PLC exchange is what a deadline must allow for),
    or the line's configured first estimate until one is measured. Pure logic."""

    def __init__(self, initial: dict[str, float], default_s: float, window: int = 8) -> None:
        self._initial = dict(initial)
        self._default = default_s
        self._window = window
        self._samples: dict[str, deque[float]] = {}
        self._lock = threading.Lock()

    def record(self, line_key: str, seconds: float) -> None:
        with self._lock:
            self._samples.setdefault(line_key, deque(maxlen=self._window)).append(seconds)

    def expected(self, line_key: str) -> float:
        with self._lock:
            samples = self._samples.get(line_key)
            if samples:
                return max(samples)
        return self._initial.get(line_key, self._default)


def utcnow() -> datetime:
    return datetime.now(UTC)


class Executor:
    """Claims orders from the store and runs them on a worker pool."""

    def __init__(
        self,
        store: Store,
        driver: MeterDriver,
        *,
        line_concurrency: dict[str, int] | None = None,
        tcp_concurrency: int = 4,
        idle_poll_s: float = 1.0,
        on_result: Callable[[], None] = lambda: None,
        clock: Callable[[], datetime] = utcnow,
        rng: Callable[[], float] = random.random,
        transit: TransitEstimator | None = None,
        require_protected_list: bool = False,
        on_protected: Callable[[OrderRow], None] = lambda order: None,
    ) -> None:
        self._store = store
        self._require_list = require_protected_list
        self._on_protected = on_protected
        self._driver = driver
        self._lines = dict(line_concurrency or {})
        self._tcp_max = tcp_concurrency
        self._idle = idle_poll_s
        self._on_result = on_result
        self._clock = clock
        self._rng = rng
        self.transit = transit or TransitEstimator({}, DEFAULT_TRANSIT_S)
        self._inflight: dict[str, int] = {}
        self._tcp_inflight = 0
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        # a line's worker may still report its order when the line's next order starts
        workers = 2 * sum(self._lines.values()) + tcp_concurrency + 1
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="rcd-exec")
        self.executed = 0  # attempts that reached a meter driver (for the bench)
        self._last_prune = 0.0
        # the meter table's entries as the scheduler last read them, valid while the
        # table's version stands (every import or sync bumps it)
        self._meters: dict[str, Meter | None] = {}
        self._meters_version = -1
        self._busy_meters: set[str] = set()
        # claimed orders whose line and meter are still taken: freed as soon as the
        # outcome is stored (_ended), before it is reported, or when the attempt returns
        self._held: dict[str, tuple[str, Meter | None, str]] = {}
        # the relay audit reads the meter's log after every order
        self.on_ended: Callable[[OrderRow, OrderResult], None] = lambda order, result: None

    # -- lifecycle ------------------------------------------------------------
    def start(self) -> None:
        recovered = self._store.recover_running()
        for order_id in recovered:
            log("order.recovered", order=order_id, note="was running when the agent stopped")
        self._thread = threading.Thread(target=self._loop, name="rcd-scheduler", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
        self._pool.shutdown(wait=True, cancel_futures=True)

    def wake(self) -> None:
        self._wake.set()

    # -- scheduling -----------------------------------------------------------
    def _line_key(self, meter: Meter | None, meter_id: str) -> str:
        return meter.line_key if meter is not None else f"missing:{meter_id}"

    def _meter(self, meter_id: str) -> Meter | None:
        version = self._store.table_version  # read before the entry: a change in between
        if version != self._meters_version:  # is seen at the next look
            self._meters, self._meters_version = {}, version
        if meter_id not in self._meters:
            self._meters[meter_id] = self._store.meter(meter_id)
        return self._meters[meter_id]

    def _blocked(self, meter_id: str) -> bool:
        meter = self._meter(meter_id)
        key = self._line_key(meter, meter_id)
        with self._lock:
            if meter is None:
                return False
            if meter_id in self._busy_meters:
                # One exchange per meter, whatever the line allows: two sessions on one
                # meter would race a disconnect against a reconnect and share counters.
                return True
            if meter.transport == "tcp":
                return self._tcp_inflight >= self._tcp_max or self._inflight.get(key, 0) >= 1
            return self._inflight.get(key, 0) >= self._lines.get(meter.line_id or "", 1)

    def _loop(self) -> None:
        while not self._stop.is_set():
            # Cleared before looking at the queue: a wake-up (new order, finished exchange)
            # that arrives while we look is not lost, the wait below returns at once.
            self._wake.clear()
            try:
                self._expire_due()
                claimed = self._claim_all()
                sleep = 0.0 if claimed else self._sleep_time()
            except Exception:  # the scheduler thread must outlive any one fault
                # A dead scheduler thread would leave the agent up, receiving orders,
                # and never executing one (no reconnect for a customer who paid).
                log("executor.error", logging.ERROR, exc_info=True)
                sleep = self._idle
            if sleep > 0:
                self._wake.wait(sleep)

    def _sleep_time(self) -> float:
        # Called when nothing could be claimed: orders already due are waiting for a busy
        # line, and a finishing exchange sets ``_wake``. Only orders due later (not_before,
        # retry backoff) shorten the wait; counting the blocked ones made this loop spin,
        # one write transaction after another, for as long as a line was busy.
        now = self._clock().timestamp()
        next_at = self._store.next_ready_at(after=now)
        if next_at is None:
            return self._idle
        return max(0.0, min(self._idle, next_at - now))

    def _claim_all(self) -> int:
        claimed = 0
        hold = self._require_list and self._store.protected_version() is None
        while not self._stop.is_set():
            order = self._store.claim_next(self._clock(), self._blocked, hold_disconnects=hold)
            if order is None:
                return claimed
            meter = self._meter(order.command.meter_id)
            key = self._line_key(meter, order.command.meter_id)
            with self._lock:
                self._inflight[key] = self._inflight.get(key, 0) + 1
                self._busy_meters.add(order.command.meter_id)
                if meter is not None and meter.transport == "tcp":
                    self._tcp_inflight += 1
                self._held[order.order_id] = (key, meter, order.command.meter_id)
            self._pool.submit(self._run_guarded, order, meter, key, order.command.meter_id)
            claimed += 1
        return claimed

    def borrow_line(self, meter: Meter) -> bool:
        """The relay audit takes a line only while nothing runs on it (relay_audit.py)."""
        with self._lock:
            if self._inflight.get(meter.line_key, 0) or meter.meter_id in self._busy_meters or (
                    meter.transport == "tcp" and self._tcp_inflight >= self._tcp_max):
                return False
            self._inflight[meter.line_key] = 1
            self._busy_meters.add(meter.meter_id)
            self._tcp_inflight += meter.transport == "tcp"
        return True

    def line_idle(self, line_key: str) -> bool:
        """Nothing runs on the line now (the relay audit's cheap first look)."""
        with self._lock:
            return not self._inflight.get(line_key, 0)

    def give_back_line(self, meter: Meter) -> None:  # wakes the scheduler
        self._release(meter.line_key, meter, meter.meter_id)

    def _release(self, key: str, meter: Meter | None, meter_id: str) -> None:
        with self._lock:
            self._inflight[key] -= 1
            self._busy_meters.discard(meter_id)
            if meter is not None and meter.transport == "tcp":
                self._tcp_inflight -= 1
        self._wake.set()

    def _free(self, order_id: str) -> None:
        """Give the order's line and meter back (once): the next order may start."""
        with self._lock:
            held = self._held.pop(order_id, None)
        if held is not None:
            self._release(*held)

    def _run_guarded(self, order: OrderRow, meter: Meter | None, key: str, meter_id: str) -> None:
        try:
            self.run_attempt(order, meter)
        except Exception:
            log("order.crashed", logging.ERROR, exc_info=True, order=order.order_id)
            # Left ``running``, the order would never end and never be reported (until a
            # restart). Back to the queue instead, like after a crash: the next attempt
            # reads the relay first, so a switch that did happen is reported as
            # already_in_state, never done twice.
            try:
                self._store.requeue(order.order_id, self._clock() + timedelta(seconds=5))
                log("order.recovered", order=order.order_id, note="attempt broke down; queued again")
            except Exception:
                log("order.stuck", logging.ERROR, exc_info=True, order=order.order_id)
        finally:
            self._free(order.order_id)

    def _expire_due(self) -> None:
        # Runs on the scheduler thread, the only one that claims orders: an order listed
        # here as queued/waiting cannot be claimed by a worker in between.
        now = self._clock()
        if now.timestamp() - self._last_prune > 3600:
            self._last_prune = now.timestamp()
            self._store.forget_seen_before(now - timedelta(days=1))
        for order in self._store.due_to_expire(now):
            last = order.attempts[-1] if order.attempts else None
            detail = "deadline passed before the order could run"
            if last is not None and last.error is not None:
                detail = f"deadline passed after {len(order.attempts)} attempts; last: {last.error.value}"
            result = self._result(order, Outcome.EXPIRED, ReasonCode.EXPIRED, detail, order.attempts)
            try:
                self._store.finish(order.order_id, Event.EXPIRE, result)
            except TransitionRefused:
                continue  # claimed by a worker meanwhile
            self._ended(order, result)

    # -- one attempt ------------------------------------------------------------
    def run_attempt(self, order: OrderRow, meter: Meter | None) -> None:
        """Run one attempt of a claimed (running) order, then end or reschedule it."""
        cmd = order.command
        now = self._clock()
        attempts = list(order.attempts)
        if now >= cmd.deadline:
            result = self._result(
                order, Outcome.EXPIRED, ReasonCode.EXPIRED,
                "deadline passed before the order could run", attempts,
            )
            self._store.finish(order.order_id, Event.EXPIRE, result)
            self._ended(order, result)
            return
        cancel = self._store.cancel_requested(order.order_id)
        if cancel is not None:  # requested during an attempt before the agent restarted
            self._end_cancelled(order, attempts, cancel)
            return
        if meter is None:
            self._fail(order, attempts, ReasonCode.NOT_IN_CONCENTRATOR_TABLE,
                       f"meter {cmd.meter_id} is not in this concentrator's table")
            return
        if not meter.commissioned:
            self._fail(order, attempts, ReasonCode.METER_NOT_COMMISSIONED,
                       f"meter {cmd.meter_id} is not commissioned in the meter table")
            return
        if cmd.action is Action.DISCONNECT and self._store.is_protected(cmd.meter_id):
            self._fail(order, attempts, ReasonCode.PROTECTED_CUSTOMER_EDGE, PROTECTED_EDGE)
            self._on_protected(order)
            return
        if cmd.action is Action.DISCONNECT and meter.protected_customer:
            self._end_cancelled(order, attempts, PROTECTED)
            return
        number = len(attempts) + 1
        log("attempt.start", order=order.order_id, meter=meter.meter_id, action=cmd.action.value,
            attempt=number, of=cmd.retry.max_attempts, line=meter.line_key)
        started = self._clock()
        try:
            self.executed += 1
            with self._driver.session(meter) as link:
                outcome = switch(
                    link, cmd.action,
                    lambda before: self._stop_before_switch(order, before, meter.line_key),
                    lambda seconds: self.transit.record(meter.line_key, seconds),
                )
        except Exception as exc:  # classified below; anything unexpected is internal_error
            reason, detail = classify(exc, meter)
            if isinstance(exc, LineFault | TransportError) and meter.transport == "hdlc":
                reason = ReasonCode.CONCENTRATOR_SERIAL_FAULT
            outcome = AttemptResult(reason=reason, detail=detail)
        finished = self._clock()
        attempts.append(Attempt(number=number, started_at=started, finished_at=finished,
                                error=outcome.reason, detail=outcome.detail[:500]))
        reachable = outcome.reason not in (ReasonCode.METER_NOT_RESPONDING,
                                           ReasonCode.METER_UNREACHABLE)
        contact = (meter.meter_id, reachable)  # stored with the outcome: one commit
        if outcome.outcome in (Outcome.EXPIRED, Outcome.CANCELLED):
            result = self._result(order, outcome.outcome, outcome.reason, outcome.detail,
                                  attempts, relay=outcome.relay)
            event = Event.EXPIRE if outcome.outcome is Outcome.EXPIRED else Event.CANCEL
            self._store.finish(order.order_id, event, result, contact=contact)
            self._ended(order, result)
            return
        if outcome.outcome is not None:
            detail = outcome.detail
            if outcome.energy is None and not detail:
                detail = "relay state confirmed; the meter gave no usable energy reading"
            result = self._result(order, outcome.outcome, None, detail, attempts,
                                  relay=outcome.relay, energy=outcome.energy,
                                  already=outcome.already)
            self._store.finish(order.order_id, Event.SUCCEED, result, contact=contact)
            self._ended(order, result)
            return
        self._store.record_contact(meter.meter_id, reachable=reachable, relay=outcome.relay)
        reason = outcome.reason or ReasonCode.INTERNAL_ERROR
        log("attempt.failed", logging.WARNING, order=order.order_id, meter=meter.meter_id,
            attempt=number, reason=reason.value, detail=outcome.detail)
        cancel = self._store.cancel_requested(order.order_id)
        if cancel is not None:
            self._end_cancelled(order, attempts, cancel, relay=outcome.relay)
            return
        if reason in RETRYABLE_REASONS and number < cmd.retry.max_attempts:
            delay = cmd.retry.delay_before(number + 1, self._rng())
            next_at = self._clock() + timedelta(seconds=float(delay))
            if next_at < cmd.deadline:
                self._store.reschedule(order.order_id, attempts, next_at)
                log("attempt.retry", order=order.order_id, next_attempt=number + 1,
                    in_s=round(float(delay), 3))
                return
            outcome.detail = f"deadline reached after {number} attempts: {outcome.detail}"
        self._fail(order, attempts, reason, outcome.detail, relay=outcome.relay,
                   energy=outcome.energy)

    def _stop_before_switch(self, order: OrderRow, before: RelayReading,
                            line_key: str) -> AttemptResult | None:
        """Last check before the relay method: time left against the method's expected
        transit on this line, a cancel that came meanwhile, and for a disconnect the
        meter's protected flag in the table as it is now."""
        left = (order.command.deadline - self._clock()).total_seconds()
        transit = self.transit.expected(line_key)
        if left <= transit:
            return AttemptResult(
                outcome=Outcome.EXPIRED, reason=ReasonCode.EXPIRED,
                detail=(f"{max(left, 0.0):.2f}s left before the deadline, the method takes "
                        f"about {transit:.2f}s on {line_key}: not invoked; relay not switched"),
                relay=before,
            )
        cancel = self._store.cancel_requested(order.order_id)
        if cancel is not None:
            return AttemptResult(
                outcome=Outcome.CANCELLED, reason=ReasonCode.CANCELLED,
                detail=f"cancelled by command {cancel} before the method; relay not switched",
                relay=before,
            )
        if order.command.action is Action.DISCONNECT and self._store.is_protected(
                order.command.meter_id):
            self._on_protected(order)
            return AttemptResult(
                reason=ReasonCode.PROTECTED_CUSTOMER_EDGE,
                detail=f"{PROTECTED_EDGE}; checked before the method, relay not switched",
                relay=before,
            )
        if order.command.action is Action.DISCONNECT:
            meter = self._store.meter(order.command.meter_id)
            if meter is not None and meter.protected_customer:
                return AttemptResult(
                    outcome=Outcome.CANCELLED, reason=ReasonCode.CANCELLED,
                    detail=f"{PROTECTED} before the method; relay not switched", relay=before,
                )
        return None

    def _end_cancelled(self, order: OrderRow, attempts: list[Attempt], command_id: str,
                       relay: RelayReading | None = None) -> None:
        why = command_id if command_id == PROTECTED else f"cancelled by command {command_id}"
        result = self._result(order, Outcome.CANCELLED, ReasonCode.CANCELLED, why, attempts,
                              relay=relay)
        self._store.finish(order.order_id, Event.CANCEL, result)
        self._ended(order, result)

    def _fail(self, order: OrderRow, attempts: list[Attempt], reason: ReasonCode, detail: str,
              relay: RelayReading | None = None, energy: EnergyReading | None = None) -> None:
        result = self._result(order, Outcome.FAILED, reason, detail, attempts,
                              relay=relay, energy=energy)
        self._store.finish(order.order_id, Event.FAIL, result)
        self._ended(order, result)

    def _result(self, order: OrderRow, outcome: Outcome, reason: ReasonCode | None, detail: str,
                attempts: list[Attempt], *, relay: RelayReading | None = None,
                energy: EnergyReading | None = None, already: bool = False) -> OrderResult:
        cmd = order.command
        return OrderResult(
            order_id=cmd.order_id, meter_id=cmd.meter_id, concentrator_id=cmd.concentrator_id,
            outcome=outcome, reason=reason, detail=detail[:1000], already_in_state=already,
            relay=relay, energy=energy, attempts=attempts[-50:], received_at=order.received_at,
            started_at=order.started_at, finished_at=self._clock(), agent_version=AGENT_VERSION,
        )

    def _ended(self, order: OrderRow, result: OrderResult) -> None:
        # The outcome is stored: the line goes to the next order before the result is
        # reported and before the relay audit notes its read, so neither the log line,
        # the publisher's wake-up nor the audit's commit holds the line idle.
        self._free(order.order_id)
        log("order.finished", order=order.order_id, meter=result.meter_id,
            outcome=result.outcome.value, reason=result.reason.value if result.reason else None,
            attempts=len(result.attempts), already_in_state=result.already_in_state or None)
        self._on_result()
        self.on_ended(order, result)
