"""The executor with the real DLMS driver against the firmware simulator (TCP and HDLC pty)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from edge_agent.dlms_driver import DlmsDriver
from edge_agent.executor import Executor
from edge_agent.lifecycle import State
from edge_agent.store import Store
from firmware_sim.fleet import FleetSpec, LineSpec, MeterSpec
from firmware_sim.runner import RunningFleet, running_fleet
from shared.codes import Action, Outcome, ReasonCode
from shared.contracts import MeterEntry, OrderResult, decode

from .fakes import order
from .helpers import make_config, make_signer

METERS = (
    MeterSpec("T1", "tcp", control_mode=2, relay="connected"),
    MeterSpec("T2", "tcp", control_mode=1, relay="disconnected"),
    MeterSpec("T3", "tcp", control_mode=2, relay="disconnected"),
    MeterSpec("TF", "tcp", control_mode=2, relay="connected"),
    MeterSpec("H1", "hdlc", line_id="plc1", hdlc_address=17, control_mode=2, relay="connected"),
    MeterSpec("H2", "hdlc", line_id="plc1", hdlc_address=18, control_mode=1, relay="disconnected"),
)


@pytest.fixture(scope="module")
def fleet() -> Iterator[RunningFleet]:
    spec = FleetSpec(meters=METERS, lines=(LineSpec("plc1"),))
    with running_fleet(spec) as running:
        yield running


@pytest.fixture(scope="module")
def setup(fleet: RunningFleet, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Store, Executor]]:
    # One store for the module: the simulated meters remember the highest invocation
    # counter they saw, exactly like real ones, so the agent's counters must persist.
    tmp_path = tmp_path_factory.mktemp("agent")
    _, pub = make_signer(tmp_path)
    config = make_config(tmp_path, pub, "conc-sim", lines={"plc1": fleet.serial_path("plc1")})
    store = Store(config.database_path)
    entries = []
    for m in METERS:
        if m.transport == "tcp":
            entries.append(MeterEntry(meter_id=m.meter_id, transport="tcp", host="127.0.0.1",
                                      port=fleet.tcp_port(m.meter_id), keys_ref="default"))
        else:
            entries.append(MeterEntry(meter_id=m.meter_id, transport="hdlc", line_id=m.line_id,
                                      hdlc_address=m.hdlc_address, keys_ref="default"))
    store.import_meters(entries)
    ex = Executor(store, DlmsDriver(store, config), line_concurrency={"plc1": 1})
    try:
        yield store, ex
    finally:
        store.close()


def run(store: Store, ex: Executor, meter: str, action: Action, **kw: object) -> OrderResult:
    cmd = order(f"o-{meter}-{action.value}-{datetime.now().timestamp()}", meter, action, **kw)  # type: ignore[arg-type]
    store.store_order(cmd, datetime.now(UTC))
    for _ in range(10):
        claimed = store.claim_next(datetime.now(UTC) + timedelta(hours=1))
        if claimed is None:
            break
        ex.run_attempt(claimed, store.meter(claimed.command.meter_id))
    assert store.order_state(cmd.order_id) not in (State.QUEUED, State.WAITING, State.RUNNING)
    row = store.db.execute("SELECT result FROM orders WHERE order_id=?", [cmd.order_id]).fetchone()
    return decode(OrderResult, row[0])


@pytest.mark.parametrize("meter", ["T1", "H1"])
def test_disconnect_then_already(setup: tuple[Store, Executor], meter: str, fleet: RunningFleet) -> None:
    store, ex = setup
    r = run(store, ex, meter, Action.DISCONNECT)
    assert r.outcome is Outcome.DISCONNECTED and not r.already_in_state, r
    assert r.relay is not None and r.relay.output_state is False
    assert r.energy is not None and r.energy.unit == "Wh"
    r2 = run(store, ex, meter, Action.DISCONNECT)
    assert r2.outcome is Outcome.DISCONNECTED and r2.already_in_state
    # nothing switched, yet the reading still comes back for Legacy
    assert r2.energy is not None and r2.energy.value == pytest.approx(r.energy.value, abs=1)
    run(store, ex, meter, Action.CONNECT)  # leave it as found


def test_reconnect_mode2_connected_mode1_armed(setup: tuple[Store, Executor], fleet: RunningFleet) -> None:
    store, ex = setup
    assert run(store, ex, "T3", Action.CONNECT).outcome is Outcome.CONNECTED
    assert run(store, ex, "H2", Action.CONNECT).outcome is Outcome.ARMED
    assert fleet.press_button("H2")
    assert run(store, ex, "T2", Action.CONNECT).outcome is Outcome.ARMED


def test_counter_reserved_above_every_value_used_without_a_commit_per_session(
    setup: tuple[Store, Executor], fleet: RunningFleet
) -> None:
    store, ex = setup
    reserved: list[int] = []
    for _ in range(5):
        run(store, ex, "T1", Action.CONNECT)
        row = store.meter_row("T1")
        assert row is not None
        reserved.append(row["counter_reserved"])
        # what is on disk is above every counter the meter has seen: a crash (or a
        # restart) now starts above them, never reuses one
        assert max(fleet.meter("T1").last_client_ic.values()) < row["counter_reserved"]
    # sessions take their counters from a reserved block: no commit per session (a
    # block of 100 serves several sessions of about six values each)
    assert len(set(reserved)) <= 2, reserved
    assert reserved == sorted(reserved)


@pytest.mark.parametrize(
    ("fault", "reason", "attempts"),
    [
        ("no_answer", ReasonCode.METER_NOT_RESPONDING, 2),
        ("garbage", ReasonCode.INVALID_METER_RESPONSE, 2),
        # the simulator's "unreachable" is silence on the wire, like no_answer: the agent
        # cannot tell them apart (a refused TCP connection is tested below)
        ("unreachable", ReasonCode.METER_NOT_RESPONDING, 2),
        ("late_answer", ReasonCode.METER_NOT_RESPONDING, 2),
        ("relay_stuck", ReasonCode.RELAY_DID_NOT_SWITCH, 2),
        ("relay_error", ReasonCode.METHOD_REFUSED, 1),
        ("not_commissioned", ReasonCode.METER_NOT_COMMISSIONED, 1),
    ],
)
def test_faults_tcp(setup: tuple[Store, Executor], fleet: RunningFleet, fault: str,
                    reason: ReasonCode, attempts: int) -> None:
    store, ex = setup
    fleet.set_fault("TF", fault)
    try:
        r = run(store, ex, "TF", Action.DISCONNECT, attempts=2)
    finally:
        fleet.set_fault("TF", None)
    assert (r.outcome, r.reason, len(r.attempts)) == (Outcome.FAILED, reason, attempts), r.attempts


def test_unknown_serial_port_is_concentrator_fault(setup: tuple[Store, Executor], tmp_path: Path) -> None:
    store, _ = setup
    _, pub = make_signer(tmp_path)
    config = make_config(tmp_path, pub, "conc-sim", lines={"plc1": "/dev/does-not-exist"})
    ex = Executor(store, DlmsDriver(store, config))
    r = run(store, ex, "H1", Action.DISCONNECT, attempts=1)
    assert r.reason is ReasonCode.CONCENTRATOR_SERIAL_FAULT


def test_refused_tcp_is_unreachable(setup: tuple[Store, Executor]) -> None:
    from shared.broker import free_port

    store, ex = setup
    store.import_meters([MeterEntry(meter_id="GONE", transport="tcp", host="127.0.0.1",
                                    port=free_port(), keys_ref="default")])
    r = run(store, ex, "GONE", Action.DISCONNECT, attempts=2)
    assert (r.reason, len(r.attempts)) == (ReasonCode.METER_UNREACHABLE, 2)
