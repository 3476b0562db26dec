"""Fault classification per meter on one shared HDLC line (issue 12, item 5).

Several meters answer on one PLC line (a pty of the firmware simulator). A meter's
failure reason must come from its own exchanges: one answering garbage is
``invalid_meter_response``, one whose application is silent (its communication
module still answers SNRM) is ``meter_not_responding``, one nothing reaches is
``meter_unreachable`` (docs/edge_agent.md), whatever the others on the line do and
in whatever order they are tried.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from edge_agent.dlms_driver import DlmsDriver
from edge_agent.executor import Executor
from edge_agent.store import Store
from firmware_sim.fleet import FleetSpec, LineSpec, MeterSpec
from firmware_sim.runner import RunningFleet, running_fleet
from shared.codes import Action, Outcome, ReasonCode
from shared.contracts import MeterEntry

from .helpers import make_config, make_signer
from .test_dlms_sim import run

LINE = "plc-mixed"
METERS = (
    MeterSpec("GARBAGE", "hdlc", line_id=LINE, hdlc_address=21, control_mode=2,
              relay="connected", faults=("garbage",)),
    MeterSpec("SILENT", "hdlc", line_id=LINE, hdlc_address=22, control_mode=2,
              relay="connected", faults=("no_answer",)),
    MeterSpec("GONE", "hdlc", line_id=LINE, hdlc_address=23, control_mode=2,
              relay="connected", faults=("unreachable",)),
    MeterSpec("FINE", "hdlc", line_id=LINE, hdlc_address=24, control_mode=2, relay="connected"),
)
EXPECTED = {
    "GARBAGE": ReasonCode.INVALID_METER_RESPONSE,
    "SILENT": ReasonCode.METER_NOT_RESPONDING,
    "GONE": ReasonCode.METER_UNREACHABLE,
}


@pytest.fixture(scope="module")
def line(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Store, Executor]]:
    # the PLC channel of the demo: 20 ms per frame, 9.6 kbit/s
    spec = FleetSpec(meters=METERS, lines=(LineSpec(LINE, latency_s=0.02, bit_rate=9600),))
    with running_fleet(spec) as fleet:
        yield _agent(fleet, tmp_path_factory)


def _agent(
    fleet: RunningFleet, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Store, Executor]:
    tmp_path = tmp_path_factory.mktemp("agent-mixed")
    _, pub = make_signer(tmp_path)
    config = make_config(tmp_path, pub, "conc-mixed", lines={LINE: fleet.serial_path(LINE)})
    store = Store(config.database_path)
    store.import_meters([
        MeterEntry(meter_id=m.meter_id, transport="hdlc", line_id=LINE,
                   hdlc_address=m.hdlc_address, keys_ref="default")
        for m in METERS
    ])
    return store, Executor(store, DlmsDriver(store, config), line_concurrency={LINE: 1})


@pytest.mark.parametrize(
    "order_of_meters",
    [("GARBAGE", "SILENT", "GONE", "FINE"), ("SILENT", "GARBAGE", "FINE", "GONE"),
     ("GONE", "GARBAGE", "SILENT", "FINE")],
)
def test_each_meter_gets_the_reason_of_its_own_fault(
    line: tuple[Store, Executor], order_of_meters: tuple[str, ...]
) -> None:
    store, ex = line
    reasons = {}
    for meter in order_of_meters:
        result = run(store, ex, meter, Action.DISCONNECT, attempts=2)
        if meter == "FINE":
            assert result.outcome in (Outcome.DISCONNECTED, Outcome.CONNECTED), result
            run(store, ex, meter, Action.CONNECT)  # leave it as found
            continue
        assert result.outcome is Outcome.FAILED, result
        reasons[meter] = result.reason
        # every attempt of that order has the meter's own reason
        assert {a.error for a in result.attempts} == {EXPECTED[meter]}, (meter, result.attempts)
    assert reasons == EXPECTED
