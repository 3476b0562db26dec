"""The simulator's operation log: every relay method and association, timed, with the
invocation counter, readable over the control interface (issue 11)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from firmware_sim.client import SimControl, SimControlError, parse_at
from firmware_sim.oplog import OperationLog, utc_ms
from firmware_sim.runner import RunningFleet
from shared.dlms.client import MeterKeys
from shared.dlms.errors import ActionRefused, AssociationRefused
from shared.dlms.transport import SerialTransport
from tests.sim.conftest import hdlc_session, tcp_session


def test_utc_ms_has_milliseconds_and_z() -> None:
    at = datetime(2026, 12, 1, 21, 30, 5, 123456, tzinfo=UTC)
    assert utc_ms(at) == "2026-12-01T21:30:05.123Z"
    assert parse_at(utc_ms(at)) == at.replace(microsecond=123000)


def test_log_is_bounded_and_says_what_it_dropped() -> None:
    log = OperationLog("X", max_entries=3)
    for n in range(5):
        log.association("open", client=1, invocation_counter=n)
    body = log.as_json()
    assert body["dropped"] == 2
    assert [e["invocation_counter"] for e in body["entries"]] == [2, 3, 4]
    assert [e.seq for e in log.entries(since_seq=4)] == [5]


def test_relay_ops_over_tcp_record_method_effect_and_counter(fleet: RunningFleet) -> None:
    before = datetime.now(UTC) - timedelta(milliseconds=5)
    t, s = tcp_session(fleet, "T1", ic=40)
    with t, s:
        s.remote_disconnect()
        s.remote_reconnect()  # control mode 1: arms only
    after = datetime.now(UTC) + timedelta(milliseconds=5)
    ops = SimControl(fleet.control_url).relay_ops("T1")["T1"]
    assert [o["method"] for o in ops] == ["remote_disconnect", "remote_reconnect"]
    first, second = ops
    assert (first["control_state_before"], first["control_state_after"]) == (1, 0)
    assert (first["output_state_before"], first["output_state_after"]) == (True, False)
    assert (second["control_state_before"], second["control_state_after"]) == (0, 2)
    assert first["action_result"] == second["action_result"] == 0
    assert first["client"] == 1
    # the counters are the ones the client used for the two ACTION requests, increasing
    assert 40 < first["invocation_counter"] < second["invocation_counter"]
    assert second["invocation_counter"] <= fleet.meter("T1").last_client_ic[1]
    for op in ops:
        assert before <= parse_at(op["at"]) <= after


def test_refused_method_is_logged_with_no_effect(fleet: RunningFleet) -> None:
    t, s = tcp_session(fleet, "T0")  # control mode 0 refuses both methods
    with t, s, pytest.raises(ActionRefused):
        s.remote_disconnect()
    (op,) = SimControl(fleet.control_url).relay_ops("T0")["T0"]
    assert op["action_result"] != 0
    assert op["control_state_before"] == op["control_state_after"] == 1


def test_associations_open_close_and_refusal(fleet: RunningFleet) -> None:
    t, s = tcp_session(fleet, "T2", ic=7)
    with t, s:
        s.read_disconnect_state()
    with pytest.raises(AssociationRefused):
        t2, s2 = tcp_session(fleet, "T2", keys=MeterKeys(bytes(16), bytes(16)))
        with t2, s2:
            pass
    entries = SimControl(fleet.control_url).log("T2", kind="association")["T2"]
    events = [e["event"] for e in entries]
    assert events[:2] == ["open", "close"]
    assert events[-1] == "refused"
    assert entries[0]["invocation_counter"] == 7
    assert entries[0]["client"] == 1
    assert entries[-1]["diagnostic"] is not None


def test_replayed_counter_refusal_is_logged(fleet: RunningFleet) -> None:
    t, s = tcp_session(fleet, "T2", ic=100)
    with t, s:
        pass
    with pytest.raises(AssociationRefused):
        t2, s2 = tcp_session(fleet, "T2", ic=100)
        with t2, s2:
            pass
    last = SimControl(fleet.control_url).log("T2", kind="association")["T2"][-1]
    assert (last["event"], last["invocation_counter"]) == ("refused", 100)


def test_hdlc_meter_logs_only_its_own_ops(fleet: RunningFleet, pty_line: SerialTransport) -> None:
    with hdlc_session(pty_line, 18) as s:
        s.remote_disconnect()
    sim = SimControl(fleet.control_url)
    everything = sim.relay_ops()
    assert [o["method"] for o in everything["H2"]] == ["remote_disconnect"]
    assert everything["H1"] == [] and everything["T1"] == []
    assocs = sim.log("H2", kind="association")["H2"]
    assert [a["event"] for a in assocs] == ["open", "close"]  # DISC closes it
    since = everything["H2"][-1]["seq"]
    assert [a["event"] for a in sim.log("H2", since=since)["H2"]] == ["close"]


def test_control_interface_refuses_bad_queries(fleet: RunningFleet) -> None:
    sim = SimControl(fleet.control_url)
    with pytest.raises(SimControlError, match="400"):
        sim.log("T1", kind="nonsense")
    with pytest.raises(SimControlError, match="404"):
        sim.log("NO-SUCH-METER")
    with pytest.raises(SimControlError, match="400"):
        sim._call("GET", "/log?since=x")
