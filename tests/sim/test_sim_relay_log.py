"""The simulator's disconnector control log (issue 16): rows on every relay change with
the standard codes, selective access by entry and by clock range, GET block transfer,
relay events injected while it runs, and all of it in the meter's operation log."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest

from firmware_sim.client import SimControl, SimControlError
from firmware_sim.fleet import DEMO_AUTH_KEY, DEMO_BLOCK_KEY, FleetSpec, MeterSpec
from firmware_sim.probe import ProbeClient
from firmware_sim.relay_log import (
    LIMITER_EXCEEDED,
    LIMITER_OK,
    LOCAL_DISCONNECTION,
    LOCAL_RECONNECTION,
    MANUAL_CONNECTION,
    MANUAL_DISCONNECTION,
    REMOTE_DISCONNECTION,
    SWITCH_FAILURE,
)
from firmware_sim.runner import RunningFleet, running_fleet
from shared.dlms import apdu as A
from shared.dlms import profile as P
from shared.dlms import security as S

SPECS = (
    MeterSpec("L1", control_mode=1, relay="ready_for_reconnection"),
    MeterSpec("L2", control_mode=2, max_pdu=128),
    MeterSpec("L3", control_mode=1),
)


@pytest.fixture(scope="module")
def fleet() -> Iterator[RunningFleet]:
    with running_fleet(FleetSpec(meters=SPECS)) as running:
        yield running


def read_log(fleet: RunningFleet, meter_id: str, selector: P.Selector | None) -> tuple[list[P.LogEntry], int]:
    """The public client reads the buffer; its entries and how many blocks it took."""
    with ProbeClient("127.0.0.1", fleet.tcp_port(meter_id)) as probe:
        probe.associate()
        transfer = P.GetTransfer(0xC5)
        event = transfer.receive(probe.request(P.build_get_request(0xC5, P.DISCONNECTOR_LOG, selector)))
        while isinstance(event, P.SendNext):
            event = transfer.receive(probe.request(event.request))
        first = selector.from_entry if isinstance(selector, P.EntrySelector) else 1
        return P.log_entries(event.value, first), event.blocks


def test_injected_events_write_the_standard_codes_and_the_op_log(fleet: RunningFleet) -> None:
    sim = SimControl(fleet.control_url)
    assert sim.press_button("L1")["codes"] == [MANUAL_CONNECTION]  # armed -> connected
    assert sim.press_button("L1")["codes"] == []  # already connected: nothing happens
    assert sim.inject("L1", "manual_disconnect")["codes"] == [MANUAL_DISCONNECTION]
    sim.press_button("L1")
    tripped = sim.inject("L1", "local_trip")
    assert tripped["codes"] == [LIMITER_EXCEEDED, LOCAL_DISCONNECTION]
    assert tripped["control_state"] == 2 and tripped["output_state"] is False
    assert sim.inject("L1", "limiter_ok")["codes"] == [LIMITER_OK]  # mode 1: waits for the button
    assert sim.inject("L2", "local_trip")["codes"] == [LIMITER_EXCEEDED, LOCAL_DISCONNECTION]
    closed = sim.inject("L2", "limiter_ok")  # mode 2 closes by itself
    assert closed["codes"] == [LIMITER_OK, LOCAL_RECONNECTION] and closed["control_state"] == 1
    with pytest.raises(SimControlError, match="unknown event"):
        sim.inject("L1", "explode")
    events = sim.log("L1", kind="event")["L1"]
    assert [(e["event"], e["code"]) for e in events] == [
        ("button", MANUAL_CONNECTION), ("button", None), ("manual_disconnect", MANUAL_DISCONNECTION),
        ("button", MANUAL_CONNECTION), ("local_trip", LOCAL_DISCONNECTION), ("limiter_ok", LIMITER_OK),
    ]
    assert events[0]["control_state_before"] == 2 and events[0]["control_state_after"] == 1
    entries, blocks = read_log(fleet, "L1", None)
    assert [e.code for e in entries] == [60, 59, 60, 64, 63, 65] and blocks == 0
    assert [e.index for e in entries] == [1, 2, 3, 4, 5, 6]


def test_selective_access_by_entry_and_by_clock_range(fleet: RunningFleet) -> None:
    meter = fleet.meter("L3")
    base = datetime(2026, 12, 1, 8, 0, tzinfo=UTC)
    for n in range(10):
        meter.relay_log.append(base + timedelta(minutes=n), 61 if n % 2 else 62)
    entries, _ = read_log(fleet, "L3", P.EntrySelector(4, 6))
    assert [(e.index, e.at.minute) for e in entries] == [(4, 3), (5, 4), (6, 5)]
    entries, _ = read_log(fleet, "L3", P.EntrySelector(9, 0))  # 0: up to the last
    assert [e.index for e in entries] == [9, 10]
    assert read_log(fleet, "L3", P.EntrySelector(11, 0))[0] == []  # nothing new
    entries, _ = read_log(fleet, "L3", P.clock_range(base + timedelta(minutes=2),
                                                       base + timedelta(minutes=4)))
    assert [e.at.minute for e in entries] == [2, 3, 4]


def test_a_long_log_comes_in_blocks_and_each_block_is_in_the_op_log(fleet: RunningFleet) -> None:
    meter = fleet.meter("L2")  # max_pdu 128: about five rows a block
    for _ in range(40):
        meter.write_log(REMOTE_DISCONNECTION)
    before = meter.oplog.entries(kind="log_read")
    entries, blocks = read_log(fleet, "L2", P.EntrySelector(1, 0))
    assert len(entries) == len(meter.relay_log.rows) and blocks > 5
    reads = [e for e in meter.oplog.entries(kind="log_read") if e not in before]
    assert [e.block for e in reads] == list(range(1, blocks + 1))  # type: ignore[union-attr]
    assert [e.last for e in reads] == [False] * (blocks - 1) + [True]  # type: ignore[union-attr]


def test_get_next_without_a_transfer_or_out_of_turn_is_refused(fleet: RunningFleet) -> None:
    with ProbeClient("127.0.0.1", fleet.tcp_port("L2")) as probe:
        probe.associate()
        answer = probe.request(P.build_get_next(0xC3, 1))
        assert answer[:4] == bytes((A.GET_RESPONSE, 2, 0xC3, 1))  # a last "block" ...
        assert answer[-2:] == bytes((1, P.DAR_NO_LONG_GET_IN_PROGRESS))  # ... that says why
        probe.request(P.build_get_request(0xC4, P.DISCONNECTOR_LOG, None))  # block 1 of many
        wrong = probe.request(P.build_get_next(0xC4, 5))
        assert wrong[-2:] == bytes((1, P.DAR_LONG_GET_ABORTED))
        # selective access on anything but the log's buffer is not offered
        energy = A.AttributeRef(3, bytes((1, 0, 1, 8, 0, 255)), 2)
        plain = probe.request(P.build_get_request(0xC5, energy, P.EntrySelector(1, 0)))
        assert A.parse_get_response(plain) == [A.DAR_OBJECT_UNAVAILABLE]


def _disconnect(fleet: RunningFleet, meter_id: str, ic: int) -> int:
    """remote_disconnect over the management association; the action-result."""
    keys = S.Keys(DEMO_BLOCK_KEY, DEMO_AUTH_KEY)
    with ProbeClient("127.0.0.1", fleet.tcp_port(meter_id), client=1, keys=keys, ic=ic) as probe:
        probe.associate()
        ref = A.AttributeRef(70, bytes((0, 0, 96, 3, 10, 255)), 1)
        answer = probe.request(A.build_action_request(0xC1, ref, A.axdr.int8(0)))
        return answer[3]


def test_weld_bypass_self_open_and_a_refused_method() -> None:
    with running_fleet(FleetSpec(meters=(MeterSpec("W", control_mode=2),
                                          MeterSpec("B", control_mode=2),
                                          MeterSpec("S", control_mode=2),
                                          MeterSpec("E", control_mode=2)))) as f:
        sim = SimControl(f.control_url)
        sim.inject("W", "weld")
        assert _disconnect(f, "W", 1) == 0
        welded = f.meter("W")
        assert welded.relay_log.rows[-1].code == REMOTE_DISCONNECTION  # the firmware did it
        start = welded.energy.energy_wh
        welded.advance(3600)
        state = sim.meter("W")
        assert state["control_state"] == 0 and state["output_state"] is True  # contacts shut
        assert state["energy_wh"] > start + 999  # current flows
        assert _disconnect(f, "B", 1) == 0
        sim.inject("B", "bypass")
        start = f.meter("B").energy.energy_wh
        f.meter("B").advance(3600)
        assert sim.meter("B")["energy_wh"] > start + 999
        sim.inject("B", "repair")
        start = f.meter("B").energy.energy_wh
        f.meter("B").advance(3600)
        assert sim.meter("B")["energy_wh"] == pytest.approx(start, abs=1)
        fell = sim.inject("S", "contacts_open")  # the firmware still says connected
        assert fell["codes"] == [] and fell["control_state"] == 1 and fell["output_state"] is False
        sim.inject("S", "repair")
        opened = sim.inject("S", "self_open")  # unexplained: open, and no row at all
        assert opened["codes"] == [] and opened["control_state"] == 0
        assert f.meter("S").relay_log.rows == []
        f.meter("S").disconnect.control_state = 1
        logged = sim.inject("S", "self_open", logged=True)
        assert logged["codes"] == [LOCAL_DISCONNECTION] and logged["control_state"] == 0
        f.set_fault("E", "relay_error")
        assert _disconnect(f, "E", 1) == A.AR_HARDWARE_FAULT
        assert [r.code for r in f.meter("E").relay_log.rows] == [SWITCH_FAILURE]
        kinds = [(e["event"], e["code"]) for e in sim.log("S", kind="event")["S"]]
        assert kinds == [("contacts_open", None), ("repair", None), ("self_open", None),
                         ("self_open", LOCAL_DISCONNECTION)]
