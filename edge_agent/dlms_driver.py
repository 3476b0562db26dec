"""The real meter driver: shared.dlms MeterSession over a serial line or TCP.

Invocation counters: a block of counter values is reserved in SQLite (committed)
before the first session that uses it; sessions take values from memory until the
block runs low (``_Counters``). A crash only skips values: the counter never goes
backwards and never repeats.

Reads per order (the minimum exchange set): one GET-with-list before the switch
(relay state, energy, clock: a meter already in state is answered from it), the
method, one GET-with-list after it. control_mode and scaler_unit are read only when
the per-meter cache (``FactsCache``) has no valid entry.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime

from edge_agent.config import EdgeConfig
from edge_agent.errors import LineFault, MeterError
from edge_agent.logs import log
from edge_agent.meter_table import Meter
from edge_agent.store import Store
from shared.codes import ControlState, ReasonCode
from shared.contracts import EnergyReading, RelayReading, validate
from shared.dlms.client import MeterAddress, MeterKeys, MeterSession, Status, unit_name
from shared.dlms.errors import MalformedResponse, TransportError
from shared.dlms.transport import SerialTransport, TcpTransport, Transport
from shared.errors import ContractError


@dataclass(frozen=True)
class MeterFacts:
    """What a meter tells once and rarely changes: its control_mode and the scaler_unit
    of its energy register. Cached per meter (``FactsCache``) so that an order reads only
    what its decision needs."""

    control_mode: int
    scaler: int
    unit: int


# Control modes in which remote_reconnect closes the relay (Blue Book IC 70); in the
# others it arms the meter (ready_for_reconnection) and the customer closes it.
_RECONNECT_CLOSES = frozenset({2, 4})


class DlmsLink:
    """Adapts a MeterSession to the executor's MeterLink protocol.

    ``facts`` are the meter's cached control_mode and scaler_unit (None: read them with
    the first GET); ``keep`` is told what to cache afterwards (None: forget them, so the
    next order reads them again).
    """

    def __init__(
        self,
        session: MeterSession,
        facts: MeterFacts | None = None,
        keep: Callable[[MeterFacts | None], None] = lambda facts: None,
    ) -> None:
        self._s = session
        self._facts = facts
        self._keep = keep
        self._action: str | None = None

    def read_state(self) -> tuple[RelayReading, EnergyReading | None]:
        """The first GET-with-list: relay state, energy and clock, so that a meter already
        in state is answered from it. A cached control_mode 0 (no remote switching) is
        read again: refusing an order rests on the meter's word of today."""
        facts = self._facts
        st = self._s.read_status(
            mode=facts is None or facts.control_mode == 0, scaler=facts is None
        )
        return self._reading(st)

    def disconnect(self) -> None:
        self._invoke("disconnect", self._s.remote_disconnect)

    def reconnect(self) -> None:
        self._invoke("reconnect", self._s.remote_reconnect)

    def _invoke(self, action: str, method: Callable[[], None]) -> None:
        self._action = action
        try:
            method()
        except BaseException:
            self._forget()  # a refused method may mean a mode we do not know: read again
            raise

    def read_back(self) -> tuple[RelayReading, EnergyReading | None]:
        """After the method: relay state, energy and clock (control_mode from the cache).
        A state the cached mode does not explain is a surprise: control_mode is read
        again at once, so the result tells the meter's mode of now, and recached."""
        facts = self._facts
        st = self._s.read_status(mode=facts is None, scaler=facts is None)
        relay, energy = self._reading(st)
        if self._action == "reconnect" and st.control_mode is None and self._surprise(relay):
            mode = self._s.read_status(mode=True, scaler=False)
            relay, energy = self._reading(mode)
        elif self._action == "disconnect" and relay.control_state is not ControlState.DISCONNECTED:
            self._forget()
        return relay, energy

    def _surprise(self, relay: RelayReading) -> bool:
        if relay.control_state is ControlState.CONNECTED:
            return relay.control_mode not in _RECONNECT_CLOSES
        if relay.control_state is ControlState.READY_FOR_RECONNECTION:
            return relay.control_mode in _RECONNECT_CLOSES
        self._forget()  # did not switch: read everything again on the next attempt
        return False

    def _forget(self) -> None:
        self._facts = None
        self._keep(None)

    def _reading(self, st: Status) -> tuple[RelayReading, EnergyReading | None]:
        cached = self._facts
        mode = st.control_mode if st.control_mode is not None else cached.control_mode if cached else 0
        if st.scaler is not None and st.unit is not None:
            scaler, unit = st.scaler, st.unit
        else:
            assert cached is not None
            scaler, unit = cached.scaler, cached.unit
        relay = _relay(st.output_state, st.control_state, mode)
        facts = MeterFacts(mode, scaler, unit)
        if facts != cached:
            self._facts = facts
            self._keep(facts)
        return relay, _energy(st.energy_raw * (10.0**scaler), unit_name(unit), st.meter_clock)


def _energy(value: float, unit: str, clock: datetime | None) -> EnergyReading | None:
    try:
        return validate(EnergyReading, {
            "value": value,
            "unit": unit[:16],
            # a clock without a zone (deviation "not specified") tells no instant:
            # left out rather than failing a read-back whose relay state stands
            "meter_clock": clock if _aware(clock) else None,
            "read_at": datetime.now(UTC),
        })
    except (ValueError, TypeError, ContractError) as exc:
        # The relay state stands on its own: an unusable energy register (NaN,
        # infinite, unit too long) must not turn a switch that happened into a
        # failure and a field visit. The result goes without a reading and says so.
        log("meter.energy_unusable", logging.WARNING, value=repr(value),
            unit=unit[:32], detail=str(exc)[:200])
        return None


def _aware(moment: datetime | None) -> bool:
    return moment is not None and moment.utcoffset() is not None


def _relay(output_state: bool, control_state: int, control_mode: int) -> RelayReading:
    """A RelayReading from the meter's values; anything out of range is a bad answer.

    A control_state outside 0..2 (or a control_mode outside the standard's range) is
    garbage from the meter (``invalid_meter_response``, retried), never an internal
    error and never a state to report.
    """
    try:
        return validate(RelayReading, {
            "output_state": output_state,
            "control_state": ControlState(control_state),
            "control_mode": control_mode,
        })
    except (ValueError, TypeError, ContractError) as exc:
        raise MalformedResponse(
            f"disconnect control values out of range: control_state={control_state!r}, "
            f"control_mode={control_mode!r}, output_state={output_state!r}"
        ) from exc


class FactsCache:
    """control_mode and scaler_unit per meter, and when they must be read again.

    Invalidation rule: an entry holds for the meter-table entry it was read under (any
    change of the meter's table entry, or a new table, drops it), for at most
    ``max_age_s`` (the audit cycle: a mode changed on site is noticed within it), and
    until a surprise the cached mode does not explain (a reconnect that closes the relay
    when the cached mode only arms it, or the reverse; a refused method; a relay that did
    not switch). A cached mode 0 is never trusted for a refusal: it is read again.
    """

    def __init__(self, max_age_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.max_age_s = max_age_s
        self._clock = clock
        self._entries: dict[str, tuple[Meter, int, float, MeterFacts]] = {}
        self._lock = threading.Lock()

    def get(self, meter: Meter, table_version: int) -> MeterFacts | None:
        with self._lock:
            entry = self._entries.get(meter.meter_id)
            if entry is None:
                return None
            read_for, version, read_at, facts = entry
            if read_for != meter or version != table_version or (
                self._clock() - read_at > self.max_age_s
            ):
                del self._entries[meter.meter_id]
                return None
            return facts

    def put(self, meter: Meter, table_version: int, facts: MeterFacts | None) -> None:
        with self._lock:
            if facts is None:
                self._entries.pop(meter.meter_id, None)
            else:
                self._entries[meter.meter_id] = (meter, table_version, self._clock(), facts)


class _Counters:
    """Invocation counters handed out from blocks reserved (committed) in the store.

    A block of values is reserved in SQLite before its first session; sessions then take
    values from memory, with no commit on the line's critical path. A new block is
    reserved when fewer than ``margin`` values are left (a session uses about six). After
    a crash the next block starts above everything reserved before: values are skipped,
    never reused, and never go backwards.
    """

    def __init__(self, store: Store, block: int) -> None:
        self._store = store
        self._block = block
        self._margin = min(64, block // 2)
        self._next: dict[str, tuple[int, int]] = {}  # meter -> (next value, block end)
        self._lock = threading.Lock()

    def take(self, meter_id: str) -> int:
        with self._lock:
            value, end = self._next.get(meter_id, (0, 0))
            if end - value < self._margin:
                value = self._store.reserve_counter(meter_id, self._block)
                end = value + self._block
                self._next[meter_id] = (value, end)
            return value

    def used(self, meter_id: str, next_value: int) -> None:
        with self._lock:
            _, end = self._next.get(meter_id, (0, 0))
            self._next[meter_id] = (next_value, end)
            if next_value > end:  # past the reservation: record it now
                self._store.commit_counter(meter_id, next_value)
                self._next.pop(meter_id)


class DlmsDriver:
    def __init__(self, store: Store, config: EdgeConfig) -> None:
        self._store = store
        self._config = config
        self._counters = _Counters(store, config.executor.counter_block)
        self.facts = FactsCache(config.executor.meter_facts_max_age_s)

    def _keys(self, meter: Meter) -> MeterKeys:
        name = meter.keys_ref or "default"
        keys = self._config.keys.get(name)
        if keys is None:
            raise MeterError(
                ReasonCode.AUTHENTICATION_FAILED,
                f"no keys named {name!r} in this agent's configuration (keys.{name})",
            )
        return MeterKeys(
            block_key=bytes.fromhex(keys.block_key),
            auth_key=bytes.fromhex(keys.auth_key),
            system_title=keys.system_title.encode()[:8],
        )

    def _open(self, meter: Meter) -> tuple[Transport, MeterAddress]:
        timeout = self._config.executor.dlms_timeout_s
        if meter.transport == "hdlc":
            line = self._config.lines.get(meter.line_id or "")
            if line is None:
                raise MeterError(
                    ReasonCode.CONCENTRATOR_SERIAL_FAULT,
                    f"meter {meter.meter_id} is on line {meter.line_id!r}, "
                    "which this agent's configuration does not define",
                )
            try:
                transport: Transport = SerialTransport(
                    line.port,
                    baudrate=line.baudrate,
                    bytesize=line.bytesize,
                    parity=line.parity,
                    stopbits=line.stopbits,
                )
            except TransportError as exc:
                raise LineFault(f"serial line {meter.line_id} ({line.port}): {exc}") from exc
            address = MeterAddress("hdlc", meter.logical_server, meter.hdlc_address)
        else:
            try:
                transport = TcpTransport(meter.host or "", meter.port or 0, connect_timeout=timeout)
            except TransportError as exc:
                raise MeterError(ReasonCode.METER_UNREACHABLE, str(exc)) from exc
            address = MeterAddress("wrapper", meter.logical_server)
        return transport, address

    def learned(self, meter: Meter, table_version: int, control_mode: int,
                scaler_unit: tuple[int, int]) -> None:
        """What another read of the meter (the relay audit's) found: cached as an order's
        own read would be, under the same invalidation rule."""
        scaler, unit = scaler_unit
        self.facts.put(meter, table_version, MeterFacts(control_mode, scaler, unit))

    @contextmanager
    def session(self, meter: Meter) -> Iterator[DlmsLink]:
        version = self._store.table_version
        facts = self.facts.get(meter, version)
        with self.raw_session(meter) as opened:
            yield DlmsLink(opened, facts, lambda new: self.facts.put(meter, version, new))

    @contextmanager
    def raw_session(
        self, meter: Meter, preempt: Callable[[], bool] | None = None
    ) -> Iterator[MeterSession]:
        """An open association with the invocation counters handled; ``preempt`` is the
        relay audit's question before every request (True: give the line up)."""
        keys = self._keys(meter)
        transport, address = self._open(meter)
        try:
            start = self._counters.take(meter.meter_id)
            session = MeterSession(
                transport,
                address,
                keys,
                client_address=self._config.executor.client_address,
                invocation_counter=start,
                timeout=self._config.executor.dlms_timeout_s,
            )
            session.preempt = preempt
            try:
                with session as opened:
                    yield opened
            finally:
                self._counters.used(meter.meter_id, session.invocation_counter)
        finally:
            transport.close()
