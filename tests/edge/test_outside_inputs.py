"""What reaches the agent from outside (the meter, the modem daemon) goes through the
contract, and a bad value costs only itself."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from edge_agent.agent import EdgeAgent
from edge_agent.config import parse_config
from edge_agent.dlms_driver import DlmsLink
from shared.codes import ModemState, Outcome, SimState
from shared.contracts import ConcentratorStatus, OrderResult, decode
from shared.dlms.client import Status

from .fakes import FakeDriver, tcp_entry
from .helpers import config_dict, make_signer


class _ReadBackSession:
    def __init__(
        self, energy_value: float, clock: datetime = datetime(2026, 11, 26, 10, 0, tzinfo=UTC)
    ) -> None:
        self._energy = energy_value
        self._clock = clock

    def read_status(self, *, mode: bool, scaler: bool) -> Status:
        return Status(output_state=False, control_state=0, control_mode=1 if mode else None,
                      energy_raw=self._energy, scaler=0 if scaler else None,
                      unit=30 if scaler else None, meter_clock=self._clock)


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_meter_energy_that_json_cannot_carry_leaves_the_relay_reading_standing(
    value: float,
) -> None:
    # A float register can hold NaN, and a huge value times 10**scaler overflows to
    # inf. Sent as "value": null, the coordinator would refuse the whole result, and
    # failing the attempt would turn a switch that happened into a field visit: the
    # read-back keeps its relay state and goes without an energy reading.
    relay, energy = DlmsLink(_ReadBackSession(value)).read_back()  # type: ignore[arg-type]
    assert energy is None
    assert relay.control_state == 0 and relay.output_state is False


def test_meter_energy_that_is_finite_reaches_the_coordinator() -> None:
    relay, energy = DlmsLink(_ReadBackSession(12345.6)).read_back()  # type: ignore[arg-type]
    result = OrderResult(order_id="o1", meter_id="m1", concentrator_id="conc-a",
                         outcome=Outcome.DISCONNECTED, relay=relay, energy=energy,
                         finished_at=datetime.now(UTC))
    assert decode(OrderResult, result.to_json()).energy == energy


def test_meter_clock_without_offset_does_not_fail_a_switch_that_happened() -> None:
    # A clock whose deviation is "not specified" can come back without a zone. The clock
    # is only informational: the read-back (relay state, energy) still stands, without it.
    naive = DlmsLink(_ReadBackSession(12345.6, datetime(2026, 11, 26, 7, 0)))  # type: ignore[arg-type]
    relay, energy = naive.read_back()
    assert relay.control_state == 0 and energy is not None
    assert energy.value == 12345.6 and energy.meter_clock is None


# -- the modem daemon's status file ------------------------------------------------------
def _agent_with_modem_file(tmp_path: Path, content: str) -> EdgeAgent:
    _, pub = make_signer(tmp_path)
    data = config_dict(tmp_path, pub, "conc-a")
    modem_file = tmp_path / "modem.json"
    modem_file.write_text(content)
    data["agent"]["modem_status_file"] = str(modem_file)
    agent = EdgeAgent(parse_config(data, environ={}), driver=FakeDriver())
    agent.store.import_meters([tcp_entry("m1", 5001), tcp_entry("m2", 5002)])
    agent.store.set_meta("meter_generation", "4")
    return agent


@pytest.mark.parametrize(
    ("content", "modem", "sim", "signal"),
    [
        ('{"modem": "down", "sim": "ok", "signal_dbm": -71}', ModemState.DOWN, SimState.OK, -71),
        # pydantic took -71.0 as -71; msgspec refused it, and with it the whole status
        ('{"modem": "degraded", "sim": "error", "signal_dbm": -71.0}', ModemState.DEGRADED, SimState.ERROR, -71),
        ('{"modem": "down", "sim": "absent", "signal_dbm": 5}', ModemState.DOWN, SimState.ABSENT, None),
        ('{"modem": "down", "sim": "ok", "signal_dbm": true}', ModemState.DOWN, SimState.OK, None),
        ('{"modem": "down", "sim": "ok", "signal_dbm": "strong"}', ModemState.DOWN, SimState.OK, None),
        ('{"modem": "down", "sim": "ok", "signal_dbm": NaN}', ModemState.DOWN, SimState.OK, None),
        ('{"modem": "DOWN", "sim": "ok"}', ModemState.UNKNOWN, SimState.OK, None),
        ('{"modem": "down", "sim": 3}', ModemState.DOWN, SimState.UNKNOWN, None),
        ('["down"]', ModemState.UNKNOWN, SimState.UNKNOWN, None),
        ("not json", ModemState.UNKNOWN, SimState.UNKNOWN, None),
        # a file far larger than any status (a runaway writer): not read as one
        ('{"modem": "down", "pad": "' + 'x' * 70_000 + '"}', ModemState.UNKNOWN, SimState.UNKNOWN, None),
    ],
)
def test_a_bad_value_in_the_modem_file_costs_only_that_value(
    tmp_path: Path, content: str, modem: ModemState, sim: SimState, signal: int | None
) -> None:
    # The file is written by another program; the agent's own figures (queue, meters,
    # table generation) must not be reset to zero because one of its values is odd.
    agent = _agent_with_modem_file(tmp_path, content)
    try:
        status = agent.status(online=True)
    finally:
        agent.stop()
    assert (status.modem, status.sim, status.signal_dbm) == (modem, sim, signal)
    assert status.meter_count == 2
    assert status.meter_table_generation == 4
    decode(ConcentratorStatus, status.to_json())  # and the coordinator takes it
