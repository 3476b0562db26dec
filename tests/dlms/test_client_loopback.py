"""MeterSession over the in-memory LoopbackTransport (no port opened) and error mapping."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest

from firmware_sim.fleet import DEMO_AUTH_KEY, DEMO_BLOCK_KEY, MeterSpec
from firmware_sim.meter import SimulatedMeter
from shared.dlms import axdr
from shared.dlms.client import MeterAddress, MeterKeys, MeterSession, parse_cosem_datetime
from shared.dlms.errors import (
    AccessDenied,
    ActionRefused,
    DataAccessError,
    DlmsError,
    MalformedResponse,
    NoResponse,
    TransportError,
)
from shared.dlms.transport import LoopbackTransport, SerialTransport, TcpTransport

from .loopback import served_meter, wrapped

KEYS = MeterKeys(DEMO_BLOCK_KEY, DEMO_AUTH_KEY)


@pytest.fixture
def loop_meter() -> Iterator[tuple[LoopbackTransport, SimulatedMeter]]:
    """A SimulatedMeter answering wrapper PDUs on the far end of a loopback pair."""
    meter = SimulatedMeter(MeterSpec("LB", control_mode=2))

    def frame(source: int, answer: bytes) -> bytes:
        return b"\x00\x07garbage!" if "garbage" in meter.faults else wrapped(source, answer)

    with served_meter(meter, frame) as near:
        yield near, meter


def test_loopback_management_session(loop_meter: tuple[LoopbackTransport, SimulatedMeter]) -> None:
    near, meter = loop_meter
    with MeterSession(near, MeterAddress("wrapper"), KEYS, invocation_counter=3, timeout=2) as s:
        s.remote_disconnect()
        assert s.read_disconnect_state().control_state == 0
        s.remote_reconnect()
        rb = s.read_back()
        assert (rb.output_state, rb.control_state, rb.control_mode) == (True, 1, 2)
        assert s.read("0.0.43.1.0.255", 1, 2) == s.invocation_counter
        with pytest.raises(DataAccessError) as err:
            s.read("0.0.96.3.99.255", 70, 2)
        assert err.value.result == 4
    assert meter.counters.associations == 1


@pytest.mark.parametrize(
    ("attribute", "wrong"),
    [(2, axdr.uint8(1)), (3, axdr.boolean(True)), (3, axdr.octets(b"\x01"))],
    ids=["output_state as an integer", "control_state as a boolean", "control_state as bytes"],
)
def test_disconnect_values_of_the_wrong_type_are_a_malformed_answer(
    loop_meter: tuple[LoopbackTransport, SimulatedMeter],
    monkeypatch: pytest.MonkeyPatch,
    attribute: int,
    wrong: axdr.Data,
) -> None:
    """A meter that answers output_state 1 (not the boolean) or a state that is no enum
    gives garbage, not a relay state: "connected" is never inferred from a truthy value."""
    near, meter = loop_meter
    honest = meter._get

    def lying(ref):  # type: ignore[no-untyped-def]
        if ref.class_id == 70 and ref.index == attribute:
            return wrong
        return honest(ref)

    monkeypatch.setattr(meter, "_get", lying)
    with MeterSession(near, MeterAddress("wrapper"), KEYS, timeout=2) as s:
        with pytest.raises(MalformedResponse, match=r"output_state|control_state"):
            s.read_disconnect_state()
        with pytest.raises(MalformedResponse, match=r"output_state|control_state"):
            s.read_back()


def test_loopback_errors(loop_meter: tuple[LoopbackTransport, SimulatedMeter]) -> None:
    near, meter = loop_meter
    with MeterSession(near, MeterAddress("wrapper"), None, client_address=16, timeout=2) as s:
        with pytest.raises(AccessDenied) as err:
            s.remote_reconnect()
        assert isinstance(err.value, ActionRefused)  # AccessDenied is also an ActionRefused
    meter.set_fault("garbage")
    with pytest.raises(MalformedResponse):
        MeterSession(near, MeterAddress("wrapper"), KEYS, timeout=2).__enter__()


def test_no_response_on_silent_loopback() -> None:
    near, _far = LoopbackTransport.pair()
    with pytest.raises(NoResponse):
        MeterSession(near, MeterAddress("wrapper"), KEYS, timeout=0.05).__enter__()


def test_transport_errors_are_mapped() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(TransportError) as err:
        TcpTransport("127.0.0.1", port, connect_timeout=1)
    assert isinstance(err.value.__cause__, OSError)
    with pytest.raises(TransportError):
        SerialTransport("/dev/nonexistent-rcd-port")
    a, b = LoopbackTransport.pair()
    b.close()
    with pytest.raises(TransportError):
        a.send(b"x")
    assert issubclass(TransportError, DlmsError)


def test_parse_cosem_datetime() -> None:
    dt = parse_cosem_datetime(bytes.fromhex("07EA0B1A040A1E00FF800000"))
    assert dt is not None and (dt.year, dt.month, dt.day, dt.hour, dt.minute) == (2026, 11, 26, 10, 30)
    assert parse_cosem_datetime(b"\xff" * 12) is None
