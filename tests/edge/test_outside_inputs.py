"""What reaches the agent from outside (the meter, the modem daemon) goes through the
contract, and a bad value costs only itself."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from edge_agent.dlms_driver import DlmsLink
from shared.contracts import OrderResult, Outcome, decode
from shared.dlms.client import ReadBack
from shared.dlms.errors import MalformedResponse


class _ReadBackSession:
    def __init__(self, energy_value: float) -> None:
        self._energy = energy_value

    def read_back(self) -> ReadBack:
        return ReadBack(output_state=False, control_state=0, control_mode=1,
                        energy_value=self._energy, energy_unit="Wh",
                        meter_clock=datetime(2026, 11, 26, 10, 0, tzinfo=UTC))


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_meter_energy_that_json_cannot_carry_is_invalid_meter_response(value: float) -> None:
    # A float register can hold NaN, and a huge value times 10**scaler overflows to
    # inf. Accepted, it went on the wire as "value": null and the coordinator refused
    # the whole result: the switch that happened was never reported.
    link = DlmsLink(_ReadBackSession(value))  # type: ignore[arg-type]
    with pytest.raises(MalformedResponse, match="energy reading out of range"):
        link.read_back()


def test_meter_energy_that_is_finite_reaches_the_coordinator() -> None:
    relay, energy = DlmsLink(_ReadBackSession(12345.6)).read_back()  # type: ignore[arg-type]
    result = OrderResult(order_id="o1", meter_id="m1", concentrator_id="conc-a",
                         outcome=Outcome.DISCONNECTED, relay=relay, energy=energy,
                         finished_at=datetime.now(UTC))
    assert decode(OrderResult, result.to_json()).energy == energy
