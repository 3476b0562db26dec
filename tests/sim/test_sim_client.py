"""Must-show of issue 3: the gurux client (via MeterSession) against the simulator."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from firmware_sim.runner import RunningFleet
from shared.dlms.client import MeterKeys
from shared.dlms.errors import (
    AccessDenied,
    ActionRefused,
    AssociationRefused,
    MalformedResponse,
    MeterUnreachable,
    NoResponse,
)
from shared.dlms.transport import SerialTransport
from tests.sim.conftest import KEYS, hdlc_session, tcp_session

DC = "0.0.96.3.10.255"


# ------------------------------------------------------------------ TCP wrapper


def test_public_client_reads_one_by_one_and_with_list(fleet: RunningFleet) -> None:
    t, s = tcp_session(fleet, "T1", public=True)
    with t, s:
        assert s.read(DC, 70, 2) is True
        assert s.read(DC, 70, 3) == 1
        assert s.read(DC, 70, 4) == 1
        assert s.read("1.0.1.8.0.255", 3, 2) == 1234  # raw value, scaler 1 (tens of Wh)
        st = s.read_disconnect_state()
        assert (st.output_state, st.control_state, st.control_mode) == (True, 1, 1)
        rb = s.read_back()
    assert rb.energy_unit == "Wh"
    assert rb.energy_value == pytest.approx(12340.0)
    assert rb.meter_clock is not None
    assert abs(rb.meter_clock - datetime.now(UTC)) < timedelta(seconds=5)


def test_management_mode1_reconnect_ends_armed_then_button(fleet: RunningFleet) -> None:
    t, s = tcp_session(fleet, "T1", ic=10)
    with t, s:
        s.remote_disconnect()
        st = s.read_disconnect_state()
        assert (st.output_state, st.control_state) == (False, 0)
        s.remote_reconnect()
        rb = s.read_back()
        assert (rb.output_state, rb.control_state, rb.control_mode) == (False, 2, 1)
        assert s.invocation_counter > 10
    assert fleet.press_button("T1") is True
    assert fleet.meter("T1").disconnect.control_state == 1


def test_management_mode2_reconnect_ends_connected(fleet: RunningFleet) -> None:
    t, s = tcp_session(fleet, "T2")
    with t, s:
        s.remote_disconnect()
        s.remote_reconnect()
        rb = s.read_back()
    assert (rb.output_state, rb.control_state, rb.control_mode) == (True, 1, 2)


def test_energy_grows_only_while_relay_closed(fleet: RunningFleet) -> None:
    meter = fleet.meter("T2")
    t, s = tcp_session(fleet, "T2")
    with t, s:
        e0 = s.read_back().energy_value
        meter.advance(3600)  # one simulated hour at 1000 W
        e1 = s.read_back().energy_value
        assert e1 - e0 == pytest.approx(1000, abs=10)
        s.remote_disconnect()
        meter.advance(3600)
        e2 = s.read_back().energy_value
        assert e2 - e1 == pytest.approx(0, abs=10)


def test_mode0_refuses_methods(fleet: RunningFleet) -> None:
    t, s = tcp_session(fleet, "T0")
    with t, s:
        with pytest.raises(ActionRefused) as err:
            s.remote_disconnect()
        assert err.value.result == 250
        assert s.read_disconnect_state().control_state == 1


def test_wrong_key_is_refused(fleet: RunningFleet) -> None:
    wrong = MeterKeys(bytes(16), bytes(16))
    t, s = tcp_session(fleet, "T1", keys=wrong)
    with t, pytest.raises(AssociationRefused) as err:
        s.__enter__()
    assert err.value.reason == "authentication_failure"


def test_per_meter_keys(fleet: RunningFleet) -> None:
    t, s = tcp_session(fleet, "TK")  # demo keys: refused
    with t, pytest.raises(AssociationRefused):
        s.__enter__()
    own = MeterKeys(bytes(range(16, 32)), bytes(range(32, 48)))
    t, s = tcp_session(fleet, "TK", keys=own)
    with t, s:
        assert s.read_disconnect_state().control_state == 1


def test_replayed_invocation_counter_is_refused(fleet: RunningFleet) -> None:
    t, s = tcp_session(fleet, "T1", ic=100)
    with t, s:
        s.read_disconnect_state()
        next_ic = s.invocation_counter
    t, s = tcp_session(fleet, "T1", ic=100)  # the agent lost its counter: replay
    with t, pytest.raises(AssociationRefused) as err:
        s.__enter__()
    assert err.value.diagnostic == 13
    t, s = tcp_session(fleet, "T1", ic=next_ic)
    with t, s:
        s.read_disconnect_state()


def test_method_on_public_association_is_denied(fleet: RunningFleet) -> None:
    t, s = tcp_session(fleet, "T1", public=True)
    with t, s:
        with pytest.raises(AccessDenied):
            s.remote_disconnect()
        assert s.read_disconnect_state().control_state == 1


def test_not_commissioned_and_unknown_client(fleet: RunningFleet) -> None:
    t, s = tcp_session(fleet, "TNC")
    with t, pytest.raises(AssociationRefused) as err:
        s.__enter__()
    assert err.value.reason == "not_provisioned"
    fleet.set_fault("T1", "not_commissioned")
    t, s = tcp_session(fleet, "T1")
    with t, pytest.raises(AssociationRefused) as err:
        s.__enter__()
    assert err.value.reason == "not_provisioned"
    fleet.set_fault("T1", None)
    from shared.dlms.client import MeterAddress, MeterSession
    from shared.dlms.transport import TcpTransport

    with TcpTransport("127.0.0.1", fleet.tcp_port("T1")) as t2:
        s2 = MeterSession(t2, MeterAddress("wrapper"), KEYS, client_address=2, timeout=1)
        with pytest.raises(AssociationRefused) as err:
            s2.__enter__()
    assert err.value.reason == "unknown_client"


# ------------------------------------------------------------------ faults


def test_fault_relay_error_and_relay_stuck(fleet: RunningFleet) -> None:
    fleet.set_fault("T1", "relay_error")
    t, s = tcp_session(fleet, "T1")
    with t, s:
        with pytest.raises(ActionRefused) as err:
            s.remote_disconnect()
        assert err.value.result == 1  # hardware-fault
        fleet.set_fault("T1", "relay_stuck")
        s.remote_disconnect()  # accepted ...
        assert s.read_disconnect_state().control_state == 1  # ... but nothing moved


@pytest.mark.parametrize("fault", ["no_answer", "unreachable"])
def test_fault_silence_is_no_response(fleet: RunningFleet, fault: str) -> None:
    fleet.set_fault("T1", fault)
    t, s = tcp_session(fleet, "T1", timeout=0.2)
    with t, pytest.raises(NoResponse):
        s.__enter__()
    rx = fleet.meter("T1").counters.frames_rx
    assert (rx > 0) == (fault == "no_answer")


def test_fault_garbage_is_malformed(fleet: RunningFleet) -> None:
    fleet.set_fault("T1", "garbage")
    t, s = tcp_session(fleet, "T1")
    with t, pytest.raises(MalformedResponse):
        s.__enter__()


def test_fault_late_answer_times_out_then_recovers(fleet: RunningFleet) -> None:
    meter = fleet.meter("T1")
    meter.late_answer_s = 0.4
    t, s = tcp_session(fleet, "T1", public=True, timeout=0.1)
    with t:
        with s:
            fleet.set_fault("T1", "late_answer")
            with pytest.raises(NoResponse):
                s.read(DC, 70, 3)
    fleet.set_fault("T1", None)
    t, s = tcp_session(fleet, "T1", public=True, timeout=1.0)
    with t, s:
        assert s.read(DC, 70, 3) == 1


def test_fault_change_while_running_through_http(fleet: RunningFleet) -> None:
    import json
    import urllib.request

    def post(path: str, body: dict[str, object]) -> dict[str, object]:
        req = urllib.request.Request(
            fleet.control_url + path, data=json.dumps(body).encode(), method="POST",
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(req, timeout=5) as r:
            out: dict[str, object] = json.loads(r.read())
            return out

    assert post("/meters/T1/fault", {"fault": "relay_error"})["faults"] == ["relay_error"]
    t, s = tcp_session(fleet, "T1")
    with t, s, pytest.raises(ActionRefused):
        s.remote_disconnect()
    post("/meters/T1/fault", {"fault": None})
    t, s = tcp_session(fleet, "T1", ic=1000)
    with t, s:
        s.remote_disconnect()
        s.remote_reconnect()
    assert post("/meters/T1/button", {})["control_state"] == 1
    with urllib.request.urlopen(fleet.control_url + "/meters/T1", timeout=5) as r:
        state = json.loads(r.read())
    assert state["counters"]["frames_rx"] > 0


# ------------------------------------------------------------------ HDLC on a pty


def test_hdlc_two_meters_one_line(fleet: RunningFleet, pty_line: SerialTransport) -> None:
    with hdlc_session(pty_line, 17, public=True) as s:
        assert s.read(DC, 70, 4) == 1
        assert s.read_back().control_state == 1
    with hdlc_session(pty_line, 18) as s:
        s.remote_disconnect()
        s.remote_reconnect()
        rb = s.read_back()
        assert (rb.control_state, rb.control_mode) == (1, 2)
    with hdlc_session(pty_line, 17, ic=5) as s:
        s.remote_disconnect()
        s.remote_reconnect()
        assert s.read_disconnect_state().control_state == 2
    with hdlc_session(pty_line, 300) as s:  # 4-byte HDLC server address
        assert s.read_disconnect_state().control_state == 1
    line = fleet.line_counters("L1")
    assert line["frames"] > 10 and line["bytes"] > 300


def test_hdlc_refusals(fleet: RunningFleet, pty_line: SerialTransport) -> None:
    with pytest.raises(AssociationRefused):
        hdlc_session(pty_line, 17, keys=MeterKeys(bytes(16), bytes(16))).__enter__()
    with hdlc_session(pty_line, 17, public=True) as s, pytest.raises(AccessDenied):
        s.remote_disconnect()
    with hdlc_session(pty_line, 17, ic=50):
        pass
    with pytest.raises(AssociationRefused):
        hdlc_session(pty_line, 17, ic=50).__enter__()


@pytest.mark.parametrize("fault", ["no_answer", "unreachable", "late_answer"])
def test_hdlc_silent_faults(
    fleet: RunningFleet, pty_line: SerialTransport, fault: str
) -> None:
    fleet.meter("H1").late_answer_s = 0.3
    fleet.set_fault("H1", fault)
    with pytest.raises(NoResponse) as err:
        hdlc_session(pty_line, 17, timeout=0.15).__enter__()
    # Only a meter nothing reaches is unreachable; a hung meter still answers SNRM.
    assert isinstance(err.value, MeterUnreachable) == (fault in ("unreachable", "late_answer"))
    fleet.set_fault("H1", None)
    # the other meter on the line is unaffected (stale late frames are dropped by address)
    with hdlc_session(pty_line, 18, public=True, timeout=1.0) as s:
        assert s.read(DC, 70, 3) == 1


def test_hdlc_garbage(fleet: RunningFleet, pty_line: SerialTransport) -> None:
    fleet.set_fault("H1", "garbage")
    with pytest.raises(MalformedResponse):
        hdlc_session(pty_line, 17).__enter__()


def test_hdlc_relay_faults(fleet: RunningFleet, pty_line: SerialTransport) -> None:
    fleet.set_fault("H1", "relay_error")
    with hdlc_session(pty_line, 17) as s:
        with pytest.raises(ActionRefused):
            s.remote_disconnect()
        fleet.set_fault("H1", "relay_stuck")
        s.remote_disconnect()
        assert s.read_disconnect_state().output_state is True
    fleet.set_fault("H1", "not_commissioned")
    with pytest.raises(AssociationRefused) as err:
        hdlc_session(pty_line, 17, ic=100).__enter__()
    assert err.value.reason == "not_provisioned"


def test_hdlc_retry_after_late_answer_on_same_meter(
    fleet: RunningFleet, pty_line: SerialTransport
) -> None:
    """The agent's retry right after a timeout must not be confused by the stale answer."""
    fleet.meter("H1").late_answer_s = 0.3
    with hdlc_session(pty_line, 17, public=True, timeout=1.0) as s:
        fleet.set_fault("H1", "late_answer")
        with pytest.raises(NoResponse):
            s._timeout = 0.1
            s.read(DC, 70, 3)
    fleet.set_fault("H1", None)
    with hdlc_session(pty_line, 17, public=True, timeout=1.0) as s:
        assert s.read(DC, 70, 3) == 1


def test_public_client_with_keys_is_refused_as_mechanism(fleet: RunningFleet) -> None:
    from shared.dlms.client import MeterAddress, MeterSession
    from shared.dlms.transport import TcpTransport

    with TcpTransport("127.0.0.1", fleet.tcp_port("T1")) as t:
        s = MeterSession(t, MeterAddress("wrapper"), KEYS, client_address=16, timeout=1)
        with pytest.raises(AssociationRefused) as err:
            s.__enter__()
    assert err.value.reason == "mechanism_not_recognised"
