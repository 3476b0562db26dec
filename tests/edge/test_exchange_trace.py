"""The DLMS exchanges of one order on an HDLC line are the minimum set (issue 14).

Real bytes: the agent's driver and executor talk HDLC over a pty to the simulator, whose
meter records what it was asked (``SimulatedMeter.trace``) and counts frames and bytes
in both directions. A disconnect of a connected meter is SNRM/UA, AARQ/AARE, HLS pass
3/4, one GET-with-list, the method, one GET-with-list, DISC/UA: seven exchanges,
fourteen frames. No RLRQ (the DISC releases the association with the link); control_mode
and scaler_unit are read once per meter, not per order; a meter already in state costs
one GET. A meter the relay audit has read needs neither on its first order.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest

from edge_agent.config import AuditSettings
from edge_agent.dlms_driver import DlmsDriver
from edge_agent.executor import Executor
from edge_agent.relay_audit import RelayAuditor
from edge_agent.store import Store
from firmware_sim.fleet import FleetSpec, LineSpec, MeterSpec
from firmware_sim.meter import SimulatedMeter
from firmware_sim.runner import RunningFleet, running_fleet
from shared.codes import Action, Outcome
from shared.contracts import MeterEntry, OrderResult, decode

from .fakes import order
from .helpers import make_config, make_signer

ASSOCIATE = ["SNRM", "AARQ", "ACTION 15/1"]
STATE_READ = "GET 70/2 70/3 3/2 8/2"  # output_state, control_state, energy, clock
FIRST_READ = "GET 70/2 70/3 70/4 3/2 3/3 8/2"  # ... and control_mode, scaler_unit
MAX_BYTES = 798  # the minimum exchange set of the issue, both directions


@pytest.fixture(scope="module")
def fleet() -> Iterator[RunningFleet]:
    meters = (
        MeterSpec("H1", "hdlc", line_id="plc1", hdlc_address=17, control_mode=2,
                  relay="connected"),
        MeterSpec("H2", "hdlc", line_id="plc1", hdlc_address=18, control_mode=1,
                  relay="disconnected"),
        MeterSpec("H3", "hdlc", line_id="plc1", hdlc_address=19, control_mode=2,
                  relay="connected"),
        # a line of hundreds of meters: addresses above 127 take the 4-byte form
        MeterSpec("H4", "hdlc", line_id="plc1", hdlc_address=20, control_mode=2,
                  relay="connected"),
        MeterSpec("H5", "hdlc", line_id="plc1", hdlc_address=300, control_mode=2,
                  relay="connected"),
    )
    with running_fleet(FleetSpec(meters=meters, lines=(LineSpec("plc1"),))) as running:
        yield running


@pytest.fixture(scope="module")
def agent(
    fleet: RunningFleet, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Store, Executor, DlmsDriver]]:
    tmp = tmp_path_factory.mktemp("trace")
    _, pub = make_signer(tmp)
    config = make_config(tmp, pub, "conc-trace", lines={"plc1": fleet.serial_path("plc1")})
    store = Store(config.database_path)
    store.import_meters(
        MeterEntry(meter_id=m.meter_id, transport="hdlc", line_id="plc1",
                   hdlc_address=m.spec.hdlc_address, keys_ref="default")
        for m in fleet.meters()
    )
    driver = DlmsDriver(store, config)
    try:
        yield store, Executor(store, driver), driver
    finally:
        store.close()


def run(store: Store, ex: Executor, meter: SimulatedMeter, action: Action
        ) -> tuple[OrderResult, list[str], int, int]:
    """One order; its result, the meter's trace, frames and bytes on the line."""
    meter.trace.clear()
    frames = meter.counters.frames_rx + meter.counters.frames_tx
    size = meter.counters.bytes_rx + meter.counters.bytes_tx
    cmd = order(f"o-{meter.meter_id}-{datetime.now().timestamp()}", meter.meter_id, action)
    store.store_order(cmd, datetime.now(UTC))
    claimed = store.claim_next(datetime.now(UTC) + timedelta(hours=1))
    assert claimed is not None
    ex.run_attempt(claimed, store.meter(meter.meter_id))
    row = store.db.execute("SELECT result FROM orders WHERE order_id=?", [cmd.order_id]).fetchone()
    assert row is not None and row[0], "the order did not end in one attempt"
    return (
        decode(OrderResult, row[0]),
        list(meter.trace),
        meter.counters.frames_rx + meter.counters.frames_tx - frames,
        meter.counters.bytes_rx + meter.counters.bytes_tx - size,
    )


def test_disconnect_is_the_minimum_exchange_sequence(
    fleet: RunningFleet, agent: tuple[Store, Executor, DlmsDriver]
) -> None:
    store, ex, _ = agent
    h1 = fleet.meter("H1")
    # the first order for a meter also reads control_mode and scaler_unit; H1 is
    # connected, so a connect order is already in state: one GET, and the energy with it
    result, trace, frames, _ = run(store, ex, h1, Action.CONNECT)
    assert result.outcome is Outcome.CONNECTED and result.already_in_state
    assert result.energy is not None and result.relay is not None
    assert result.relay.control_mode == 2
    assert trace == [*ASSOCIATE, FIRST_READ, "DISC"]
    assert frames == 10
    # the disconnect: seven exchanges, fourteen frames, within the byte budget
    result, trace, frames, size = run(store, ex, h1, Action.DISCONNECT)
    assert result.outcome is Outcome.DISCONNECTED and not result.already_in_state
    assert result.energy is not None and result.energy.unit == "Wh"
    assert result.relay is not None and result.relay.control_mode == 2
    assert trace == [*ASSOCIATE, STATE_READ, "ACTION 70/1", STATE_READ, "DISC"]
    assert frames == 14
    assert size <= MAX_BYTES, size
    # already in state with the facts cached: one GET-with-list of four attributes
    result, trace, frames, _ = run(store, ex, h1, Action.DISCONNECT)
    assert result.outcome is Outcome.DISCONNECTED and result.already_in_state
    assert result.energy is not None
    assert trace == [*ASSOCIATE, STATE_READ, "DISC"]
    assert frames == 10


def test_a_meter_above_address_127_costs_two_bytes_more_per_frame_and_nothing_else(
    fleet: RunningFleet, agent: tuple[Store, Executor, DlmsDriver]
) -> None:
    # what bench_campaign's minimum-exchange bound assumes for a line of 500 meters
    store, ex, _ = agent
    sizes = {}
    for name in ("H4", "H5"):
        meter = fleet.meter(name)
        run(store, ex, meter, Action.CONNECT)  # already in state; caches the facts
        result, trace, frames, size = run(store, ex, meter, Action.DISCONNECT)
        assert result.outcome is Outcome.DISCONNECTED and not result.already_in_state
        assert trace == [*ASSOCIATE, STATE_READ, "ACTION 70/1", STATE_READ, "DISC"]
        assert frames == 14
        sizes[name] = size
    assert sizes["H4"] <= MAX_BYTES
    assert sizes["H5"] - sizes["H4"] == 14 * 2, sizes


def test_a_mode_the_cache_does_not_explain_is_read_again(
    fleet: RunningFleet, agent: tuple[Store, Executor, DlmsDriver]
) -> None:
    store, ex, _ = agent
    h2 = fleet.meter("H2")
    result, _, _, _ = run(store, ex, h2, Action.DISCONNECT)  # caches control_mode 1
    assert result.already_in_state and result.relay is not None
    assert result.relay.control_mode == 1
    # changed on site: in mode 2 a reconnect closes the relay instead of arming it
    with h2.lock:
        h2.disconnect.control_mode = 2
    result, trace, _, _ = run(store, ex, h2, Action.CONNECT)
    assert result.outcome is Outcome.CONNECTED
    assert result.relay is not None and result.relay.control_mode == 2
    assert trace[-2:] == ["GET 70/2 70/3 70/4 3/2 8/2", "DISC"]  # read again at once
    # and cached: the next order reads the four attributes only
    result, trace, _, _ = run(store, ex, h2, Action.CONNECT)
    assert result.already_in_state and trace == [*ASSOCIATE, STATE_READ, "DISC"]


def test_a_meter_table_change_drops_the_cached_facts(
    fleet: RunningFleet, agent: tuple[Store, Executor, DlmsDriver]
) -> None:
    store, ex, _ = agent
    h1 = fleet.meter("H1")
    run(store, ex, h1, Action.DISCONNECT)
    store.import_meters([MeterEntry(meter_id="H1", transport="hdlc", line_id="plc1",
                                    hdlc_address=17, keys_ref="default")])
    _, trace, _, _ = run(store, ex, h1, Action.DISCONNECT)
    assert trace == [*ASSOCIATE, FIRST_READ, "DISC"]


def test_a_meter_the_relay_audit_read_needs_no_extra_read_on_its_first_order(
    fleet: RunningFleet, agent: tuple[Store, Executor, DlmsDriver]
) -> None:
    store, ex, driver = agent
    h3 = fleet.meter("H3")
    now = [1e9]
    auditor = RelayAuditor(store, ex, driver.raw_session, AuditSettings(after_order=False),
                           "conc-trace", readable=lambda meter: meter.meter_id == "H3",
                           learned=driver.learned, clock=lambda: now[0],
                           monotonic=lambda: now[0])
    now[0] += 2 * 86400  # H3's audit is due
    h3.trace.clear()
    assert auditor.run_once() and auditor.reads["done"] == 1
    assert h3.trace[3].startswith("GET 70/2 70/3 70/4 3/2 3/3 8/2")  # the audit's own read
    # the order reads the state only: control_mode and scaler_unit came from the audit
    result, trace, frames, _ = run(store, ex, h3, Action.DISCONNECT)
    assert result.outcome is Outcome.DISCONNECTED and not result.already_in_state
    assert result.relay is not None and result.relay.control_mode == 2
    assert result.energy is not None and result.energy.unit == "Wh"
    assert trace == [*ASSOCIATE, STATE_READ, "ACTION 70/1", STATE_READ, "DISC"]
    assert frames == 14
    # facts read under a meter table that has changed since are not used
    now[0] += 2 * 86400
    assert auditor.run_once() and auditor.reads["done"] == 2
    store.import_meters([MeterEntry(meter_id="H3", transport="hdlc", line_id="plc1",
                                    hdlc_address=19, keys_ref="default")])
    _, trace, _, _ = run(store, ex, h3, Action.CONNECT)
    assert trace[3] == FIRST_READ
