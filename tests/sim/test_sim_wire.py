"""The simulator at the byte level: services gurux never sends, errors, segmentation, CLI."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from firmware_sim.fleet import DEMO_AUTH_KEY, DEMO_BLOCK_KEY, FleetSpec, MeterSpec, load_fleet
from firmware_sim.probe import ProbeClient
from firmware_sim.runner import RunningFleet, running_fleet
from shared.dlms import apdu as A
from shared.dlms import axdr
from shared.dlms import security as S
from shared.dlms.transport import SerialTransport
from tests.sim.conftest import hdlc_session

KEYS = S.Keys(DEMO_BLOCK_KEY, DEMO_AUTH_KEY)
DC = bytes((0, 0, 96, 3, 10, 255))
CONTROL_STATE = A.AttributeRef(70, DC, 3)
CONTROL_MODE = A.AttributeRef(70, DC, 4)


def probe(fleet: RunningFleet, meter: str = "T1", **kw: object) -> ProbeClient:
    return ProbeClient("127.0.0.1", fleet.tcp_port(meter), timeout=2.0, **kw)  # type: ignore[arg-type]


def test_request_before_association_and_unknown_services(fleet: RunningFleet) -> None:
    with probe(fleet) as c:
        assert c.exchange(A.build_get_request(0xC1, CONTROL_STATE)) == A.build_exception_response(1, 1)
        c.associate()
        assert c.exchange(bytes((0xC2, 0x01))) == A.build_exception_response(2, 2)  # not supported
        # GET-Request-next with no long GET in progress: the standard refusal (issue 16)
        assert c.exchange(b"\xc0\x02\xc1\x00\x00\x00\x01") == bytes.fromhex("c402c1010000000101" "10")
        assert c.get(A.AttributeRef(70, bytes((0, 0, 96, 3, 11, 255)), 2)) == A.DAR_OBJECT_UNDEFINED
        assert c.get(A.AttributeRef(70, DC, 9)) == A.DAR_OBJECT_UNAVAILABLE
        assert c.get(A.AttributeRef(1, bytes((0, 0, 43, 1, 0, 255)), 2)) == axdr.uint32(0)
        # SET and ACTION are refused on the public association
        assert c.exchange(A.build_set_request(0xC1, CONTROL_MODE, axdr.enum(2)))[-1] == 3
        assert c.exchange(A.build_action_request(0xC1, A.AttributeRef(70, DC, 1), axdr.int8(0)))[3] == 3
        assert c.exchange(b"\x01\x02garbage") == A.build_exception_response(2, 2)
        assert c.exchange(A.build_rlrq()) == A.build_rlre()
        assert c.exchange(A.build_get_request(0xC1, CONTROL_STATE)) == A.build_exception_response(1, 1)


def test_management_set_with_list_and_invocation_counter(fleet: RunningFleet) -> None:
    with probe(fleet, client=1, keys=KEYS, ic=40) as c:
        c.associate()
        assert c.request(A.build_set_request(0xC1, CONTROL_MODE, axdr.enum(2))) == (
            A.build_set_response(0xC1, 0)
        )
        assert c.request(A.build_set_request(0xC2, CONTROL_MODE, axdr.enum(9)))[-1] == 12
        resp = c.request(A.build_get_request_with_list(0xC3, [CONTROL_MODE, CONTROL_STATE]))
        assert A.parse_get_response(resp) == [axdr.enum(2), axdr.enum(1)]
        # a replayed frame (same invocation counter) is refused mid-association
        c.ic -= 1
        assert c.exchange(c.protect(A.build_get_request(0xC4, CONTROL_STATE))) == (
            A.build_exception_response(1, 6)
        )
        # a plain APDU on the ciphered association is not served
        assert c.exchange(A.build_get_request(0xC5, CONTROL_STATE)) == A.build_exception_response(1, 1)
        # tampered ciphertext: decipher error, no crash
        bad = bytearray(c.protect(A.build_get_request(0xC6, CONTROL_STATE)))
        bad[-1] ^= 1
        assert c.exchange(bytes(bad)) == A.build_exception_response(1, 5)
        assert A.parse_get_response(c.request(A.build_get_request(0xC7, CONTROL_STATE))) == [
            axdr.enum(1)
        ]
    with probe(fleet) as pub:
        pub.associate()
        assert pub.get(A.AttributeRef(1, bytes((0, 0, 43, 1, 0, 255)), 2)) == axdr.uint32(c.ic)


def test_garbage_from_the_client_does_not_kill_the_meter(fleet: RunningFleet) -> None:
    with socket.create_connection(("127.0.0.1", fleet.tcp_port("T1")), timeout=2) as s:
        s.sendall(b"\xff" * 50)
    with probe(fleet) as c:
        c.associate()
        assert c.get(CONTROL_STATE) == axdr.enum(1)
    with probe(fleet) as c:
        assert c.exchange(b"\x60\x05\xa1\x03")[0] == A.EXCEPTION_RESPONSE  # truncated AARQ
        bad_init = A.build_aarq(A.Aarq(user_information=b"\x01"))
        assert c.exchange(bad_init)[0] == A.EXCEPTION_RESPONSE
        c.associate()


def test_hdlc_segmented_answers_with_small_max_info(
    fleet: RunningFleet, pty_line: SerialTransport
) -> None:
    s = hdlc_session(pty_line, 17, ic=7)
    s._client.hdlcSettings.maxInfoRX = 32  # force the meter to segment every answer
    with s:
        rb = s.read_back()
        assert rb.control_state == 1 and rb.energy_unit == "Wh"
    counters = fleet.meter("H1").counters
    assert counters.frames_tx > counters.apdus  # more frames than APDUs: segmented


def test_channel_model_is_reproducible_and_counts_time() -> None:
    import threading

    from firmware_sim.channel import Channel
    from firmware_sim.fleet import LineSpec

    spec = LineSpec("plc", latency_s=0.01, bit_rate=4800, loss=0.3, seed=7)
    done = threading.Event()
    done.set()  # the channel sleeps with stop.wait(): a set event makes the test instant
    runs = []
    for _ in range(2):
        ch = Channel(spec, done)
        pattern = [ch.transmit(60, reachability=0.9)[0] for _ in range(200)]
        runs.append((pattern, ch.counters.as_dict()))
    assert runs[0] == runs[1]
    pattern, counters = runs[0]
    assert 40 < pattern.count(False) < 120
    assert counters["lost_frames"] == pattern.count(False)
    assert counters["channel_time_s"] == pytest.approx(200 * (0.01 + 8 * 60 / 4800))
    assert Channel(spec, done).frame_time(600) == pytest.approx(1.01)


def test_lossy_line_and_unreachable_meter_are_no_response() -> None:
    from firmware_sim.fleet import LineSpec
    from shared.dlms.errors import NoResponse

    spec = FleetSpec(
        meters=(
            MeterSpec("P", transport="hdlc", line_id="plc", hdlc_address=20),
            MeterSpec("Q", transport="hdlc", line_id="dead", hdlc_address=21),
            MeterSpec("R", transport="hdlc", line_id="plc", hdlc_address=22, reachability=0.0),
        ),
        lines=(LineSpec("plc", latency_s=0.001, seed=1), LineSpec("dead", loss=1.0)),
    )
    with running_fleet(spec) as fleet:
        with SerialTransport(fleet.serial_path("plc")) as line:
            with hdlc_session(line, 20, public=True) as s:
                assert s.read_disconnect_state().control_state == 1
            with pytest.raises(NoResponse):
                hdlc_session(line, 22, public=True, timeout=0.2).__enter__()
        with SerialTransport(fleet.serial_path("dead")) as line:
            with pytest.raises(NoResponse):
                hdlc_session(line, 21, public=True, timeout=0.2).__enter__()
        assert fleet.line_counters("plc")["channel_time_s"] >= 0.001
        assert fleet.line_counters("dead")["lost_frames"] >= 1


def test_load_fleet_toml(tmp_path: Path) -> None:
    p = tmp_path / "fleet.toml"
    p.write_text(
        '[[line]]\nline_id = "plc-1"\nlatency_s = 0.02\nbit_rate = 4800\nloss = 0.01\nseed = 4\n\n'
        '[[meter]]\nmeter_id = "M1"\ntransport = "hdlc"\nline_id = "plc-1"\nhdlc_address = 17\n'
        'control_mode = 2\nrelay = "disconnected"\n\n'
        '[[meter]]\nmeter_id = "M2"\ntcp_port = 0\nfaults = ["relay_stuck"]\n'
        'block_key = "00112233445566778899AABBCCDDEEFF"\ncommissioned = false\n'
    )
    spec = load_fleet(p)
    assert spec.lines[0].bit_rate == 4800
    assert spec.meters[0].relay == "disconnected" and spec.meters[0].control_mode == 2
    assert spec.meters[1].faults == ("relay_stuck",) and not spec.meters[1].commissioned
    assert spec.meters[1].block_key == bytes.fromhex("00112233445566778899AABBCCDDEEFF")
    with pytest.raises(ValueError):
        MeterSpec("X", transport="hdlc")


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_rcd_sim_cli_starts_and_stops_cleanly(sig: signal.Signals) -> None:
    rcd = os.path.join(os.path.dirname(sys.executable), "rcd")
    proc = subprocess.Popen(
        [rcd, "sim", "--tcp-port", "0"], stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline()
        assert first.startswith("meter SIM0001: tcp 127.0.0.1:")
        port = int(first.rsplit(":", 1)[1])
        assert proc.stdout.readline().startswith("control http://127.0.0.1:")
        with ProbeClient("127.0.0.1", port, client=1, keys=KEYS) as c:
            c.associate()
            assert c.get(CONTROL_STATE) == axdr.enum(1)
        proc.send_signal(sig)
        assert proc.wait(timeout=10) == 0
        assert "simulator stopped" in proc.stdout.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_read_back_is_one_get_with_list_and_threads_are_joined() -> None:
    import threading

    from tests.sim.conftest import tcp_session

    with running_fleet(FleetSpec(meters=(MeterSpec("T1"),))) as fleet:
        t, s = tcp_session(fleet, "T1")
        with t, s:
            before = fleet.meter("T1").counters.apdus
            s.read_back()
            assert fleet.meter("T1").counters.apdus == before + 1
    names = {th.name for th in threading.enumerate() if th.is_alive()}
    assert not {n for n in names if n.startswith(("tcp-", "hdlc-", "sim-control"))}


def test_no_answer_leaves_before_its_frames_have_had_their_time_on_the_line() -> None:
    import time

    from firmware_sim.fleet import LineSpec

    # the meter works while the request is on the channel, but its answer never comes
    # back sooner than the request's and the answer's frame times together
    spec = FleetSpec(
        meters=(MeterSpec("S", transport="hdlc", line_id="slow", hdlc_address=23),),
        lines=(LineSpec("slow", latency_s=0.05, bit_rate=9600, seed=2),),
    )
    with running_fleet(spec) as fleet, SerialTransport(fleet.serial_path("slow")) as line:
        began = time.monotonic()
        with hdlc_session(line, 23, public=True) as s:
            assert s.read_disconnect_state().control_state == 1
        elapsed = time.monotonic() - began
        counters = fleet.line_counters("slow")
    assert counters["frames"] >= 6  # SNRM, AARQ, GET and their answers at least
    assert elapsed >= counters["channel_time_s"] >= counters["frames"] * 0.05
