"""A fake meter driver for unit tests of the executor's logic (no DLMS bytes)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

from edge_agent.meter_table import Meter
from edge_agent.store import Store
from shared.codes import Action, ControlState, OrderReason
from shared.contracts import EnergyReading, MeterEntry, OrderCommand, RelayReading, RetryPolicy
from shared.dlms.errors import ActionRefused, AssociationRefused, MalformedResponse, NoResponse


@dataclass
class FakeMeter:
    control_state: ControlState = ControlState.CONNECTED
    control_mode: int = 2
    # no_answer, garbage, relay_stuck, relay_error, not_commissioned, energy_unusable
    fault: str | None = None
    sessions: int = 0
    switches: int = 0


class FakeLink:
    def __init__(self, meter: FakeMeter) -> None:
        self.m = meter

    def _reading(self) -> RelayReading:
        return RelayReading(
            output_state=self.m.control_state is ControlState.CONNECTED,
            control_state=self.m.control_state,
            control_mode=self.m.control_mode,
        )

    def read_state(self) -> tuple[RelayReading, EnergyReading | None]:
        if self.m.fault == "garbage":
            raise MalformedResponse("bad FCS")
        return self._with_energy()

    def disconnect(self) -> None:
        self.m.switches += 1
        if self.m.fault == "relay_error":
            raise ActionRefused(3)
        if self.m.fault != "relay_stuck":
            self.m.control_state = ControlState.DISCONNECTED

    def reconnect(self) -> None:
        self.m.switches += 1
        if self.m.fault == "relay_error":
            raise ActionRefused(3)
        if self.m.fault == "relay_stuck":
            return
        if self.m.control_mode in (2, 4):
            self.m.control_state = ControlState.CONNECTED
        else:
            self.m.control_state = ControlState.READY_FOR_RECONNECTION

    def read_back(self) -> tuple[RelayReading, EnergyReading | None]:
        return self._with_energy()

    def _with_energy(self) -> tuple[RelayReading, EnergyReading | None]:
        now = datetime.now(UTC)
        if self.m.fault == "energy_unusable":  # as DlmsLink answers a NaN register
            return self._reading(), None
        return self._reading(), EnergyReading(value=1234.5, unit="Wh", meter_clock=now, read_at=now)


@dataclass
class FakeDriver:
    meters: dict[str, FakeMeter] = field(default_factory=dict)

    @contextmanager
    def session(self, meter: Meter) -> Iterator[FakeLink]:
        m = self.meters.setdefault(meter.meter_id, FakeMeter())
        m.sessions += 1
        if m.fault == "no_answer":
            raise NoResponse("no answer within 0.1 s")
        if m.fault == "not_commissioned":
            raise AssociationRefused(2)
        yield FakeLink(m)


def tcp_entry(meter_id: str, port: int = 4059, commissioned: bool = True) -> MeterEntry:
    return MeterEntry(meter_id=meter_id, transport="tcp", host="127.0.0.1", port=port,
                      commissioned=commissioned, keys_ref="default")


def order(
    order_id: str,
    meter_id: str,
    action: Action = Action.DISCONNECT,
    *,
    concentrator_id: str = "conc-a",
    priority: int = 5,
    deadline_s: float = 60.0,
    attempts: int = 3,
    backoff: float = 0.01,
    issued_at: datetime | None = None,
) -> OrderCommand:
    issued = issued_at or datetime.now(UTC)
    return OrderCommand(
        command_id=f"cmd-{order_id}", order_id=order_id, meter_id=meter_id,
        concentrator_id=concentrator_id, action=action, reason=OrderReason.NON_PAYMENT,
        priority=priority, issued_at=issued, deadline=issued + timedelta(seconds=deadline_s),
        retry=RetryPolicy(max_attempts=attempts, backoff_initial_s=backoff, backoff_max_s=backoff * 4,
                          jitter=0.2),
    )


@contextmanager
def two_meter_store(path: Path) -> Iterator[Store]:
    """An agent store whose table holds two TCP meters, m1 and m2."""
    store = Store(path)
    store.import_meters([tcp_entry("m1"), tcp_entry("m2", port=4060)])
    try:
        yield store
    finally:
        store.close()
