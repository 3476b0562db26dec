"""Fixtures: a running fleet with TCP and HDLC (pty) meters, and client session helpers."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager

import pytest

from firmware_sim.fleet import DEMO_AUTH_KEY, DEMO_BLOCK_KEY, FleetSpec, LineSpec, MeterSpec
from firmware_sim.runner import RunningFleet, running_fleet
from shared.dlms.client import MeterAddress, MeterKeys, MeterSession
from shared.dlms.transport import SerialTransport, TcpTransport, Transport

KEYS = MeterKeys(DEMO_BLOCK_KEY, DEMO_AUTH_KEY)
TIMEOUT = 1.0


def default_spec() -> FleetSpec:
    return FleetSpec(
        meters=(
            MeterSpec("T1", control_mode=1),
            MeterSpec("T2", control_mode=2),
            MeterSpec("T0", control_mode=0),
            MeterSpec("TNC", commissioned=False),
            MeterSpec("TK", block_key=bytes(range(16, 32)), auth_key=bytes(range(32, 48))),
            MeterSpec("H1", transport="hdlc", line_id="L1", hdlc_address=17, control_mode=1),
            MeterSpec("H2", transport="hdlc", line_id="L1", hdlc_address=18, control_mode=2),
            MeterSpec("H3", transport="hdlc", line_id="L1", hdlc_address=300),
        ),
        lines=(LineSpec("L1", seed=1),),
    )


@pytest.fixture
def fleet() -> Iterator[RunningFleet]:
    with running_fleet(default_spec()) as f:
        yield f


@pytest.fixture
def pty_line(fleet: RunningFleet) -> Iterator[SerialTransport]:
    """The agent's end of the HDLC line L1 (a pty slave opened with pyserial)."""
    with SerialTransport(fleet.serial_path("L1")) as t:
        yield t


SessionFactory = Callable[..., AbstractContextManager[MeterSession]]


def tcp_session(
    fleet: RunningFleet, meter_id: str, *, public: bool = False, keys: MeterKeys = KEYS,
    ic: int = 1, timeout: float = TIMEOUT,
) -> tuple[Transport, MeterSession]:
    t = TcpTransport("127.0.0.1", fleet.tcp_port(meter_id))
    s = MeterSession(
        t, MeterAddress("wrapper"), None if public else keys,
        client_address=16 if public else 1, invocation_counter=ic, timeout=timeout,
    )
    return t, s


def hdlc_session(
    line: Transport, address: int, *, public: bool = False, keys: MeterKeys = KEYS,
    ic: int = 1, timeout: float = TIMEOUT,
) -> MeterSession:
    return MeterSession(
        line, MeterAddress("hdlc", physical_server=address), None if public else keys,
        client_address=16 if public else 1, invocation_counter=ic, timeout=timeout,
    )
