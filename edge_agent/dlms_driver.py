"""The real meter driver: shared.dlms MeterSession over a serial line or TCP.

Invocation counters: before a session opens, a block of counter values is
reserved in SQLite (committed); the session starts at the first value of the
block; when it ends, the next unused value is written back. A crash between
the two only skips values: the counter never goes backwards and never repeats.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime

from edge_agent.config import EdgeConfig
from edge_agent.errors import LineFault, MeterError
from edge_agent.logs import log
from edge_agent.store import Meter, Store
from shared.contracts import ControlState, EnergyReading, ReasonCode, RelayReading, validate
from shared.dlms.client import MeterAddress, MeterKeys, MeterSession
from shared.dlms.errors import MalformedResponse, TransportError
from shared.dlms.transport import SerialTransport, TcpTransport, Transport
from shared.errors import ContractError


class DlmsLink:
    """Adapts a MeterSession to the executor's MeterLink protocol."""

    def __init__(self, session: MeterSession) -> None:
        self._s = session

    def read_state(self) -> RelayReading:
        st = self._s.read_disconnect_state()
        return _relay(st.output_state, st.control_state, st.control_mode)

    def disconnect(self) -> None:
        self._s.remote_disconnect()

    def reconnect(self) -> None:
        self._s.remote_reconnect()

    def read_back(self) -> tuple[RelayReading, EnergyReading | None]:
        rb = self._s.read_back()
        relay = _relay(rb.output_state, rb.control_state, rb.control_mode)
        try:
            energy = validate(EnergyReading, {
                "value": rb.energy_value,
                "unit": rb.energy_unit[:16],
                # a clock without a zone (deviation "not specified") tells no instant:
                # left out rather than failing a read-back whose relay state stands
                "meter_clock": rb.meter_clock if _aware(rb.meter_clock) else None,
                "read_at": datetime.now(UTC),
            })
        except (ValueError, TypeError, ContractError) as exc:
            # The relay state stands on its own: an unusable energy register (NaN,
            # infinite, unit too long) must not turn a switch that happened into a
            # failure and a field visit. The result goes without a reading and says so.
            log("meter.energy_unusable", logging.WARNING, value=repr(rb.energy_value),
                unit=rb.energy_unit[:32], detail=str(exc)[:200])
            return relay, None
        return relay, energy


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


class DlmsDriver:
    def __init__(self, store: Store, config: EdgeConfig) -> None:
        self._store = store
        self._config = config

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

    @contextmanager
    def session(self, meter: Meter) -> Iterator[DlmsLink]:
        keys = self._keys(meter)
        transport, address = self._open(meter)
        try:
            start = self._store.reserve_counter(meter.meter_id, self._config.executor.counter_block)
            session = MeterSession(
                transport,
                address,
                keys,
                client_address=self._config.executor.client_address,
                invocation_counter=start,
                timeout=self._config.executor.dlms_timeout_s,
            )
            try:
                with session as opened:
                    yield DlmsLink(opened)
            finally:
                self._store.commit_counter(meter.meter_id, session.invocation_counter)
        finally:
            transport.close()
