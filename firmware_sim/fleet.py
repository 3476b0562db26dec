"""Fleet description: meters, lines and their channel models; loadable from TOML.

Example fleet file::

    [[line]]
    line_id = "plc-1"
    latency_s = 0.02      # per frame
    bit_rate = 4800       # bit/s, 0 = unlimited
    loss = 0.01           # probability a frame is lost
    seed = 42

    [[meter]]
    meter_id = "M001"
    transport = "hdlc"
    line_id = "plc-1"
    hdlc_address = 17
    control_mode = 1
    relay = "connected"

    [[meter]]
    meter_id = "M100"
    transport = "tcp"
    tcp_port = 4059
    block_key = "000102030405060708090A0B0C0D0E0F"
    auth_key = "D0D1D2D3D4D5D6D7D8D9DADBDCDDDEDF"
    faults = ["relay_stuck"]
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from firmware_sim.cosem import STATE_NAMES

# INSECURE demo keys (published in the project docs); real meters get their own keys.
DEMO_BLOCK_KEY = bytes.fromhex("000102030405060708090A0B0C0D0E0F")
DEMO_AUTH_KEY = bytes.fromhex("D0D1D2D3D4D5D6D7D8D9DADBDCDDDEDF")
SERVER_LOGICAL_ADDRESS = 1


@dataclass(frozen=True)
class MeterSpec:
    meter_id: str
    transport: Literal["tcp", "hdlc"] = "tcp"
    line_id: str | None = None
    hdlc_address: int | None = None
    tcp_port: int = 0  # 0 = pick a free port
    block_key: bytes = DEMO_BLOCK_KEY
    auth_key: bytes = DEMO_AUTH_KEY
    control_mode: int = 1
    relay: Literal["connected", "disconnected", "ready_for_reconnection"] = "connected"
    commissioned: bool = True
    faults: tuple[str, ...] = ()
    energy_wh: float = 12_345.0
    load_w: float = 1000.0
    reachability: float = 1.0  # probability a frame to/from this meter gets through
    late_answer_s: float = 6.0  # delay used by the late_answer fault
    max_pdu: int = 1024  # the meter's largest APDU; a longer GET answer goes in blocks
    log_capacity: int = 500  # rows the disconnector control log keeps (oldest go first)

    def __post_init__(self) -> None:
        if self.transport not in ("tcp", "hdlc"):
            raise ValueError(f"{self.meter_id}: transport must be tcp or hdlc")
        if self.transport == "hdlc" and (self.line_id is None or self.hdlc_address is None):
            raise ValueError(f"{self.meter_id}: hdlc meters need line_id and hdlc_address")
        if self.hdlc_address is not None and not 0x10 <= self.hdlc_address <= 0x3FFD:
            raise ValueError(f"{self.meter_id}: hdlc_address must be 16..16381")
        if not 0 <= self.control_mode <= 6:
            raise ValueError(f"{self.meter_id}: control_mode must be 0..6")
        if self.relay not in STATE_NAMES:
            raise ValueError(f"{self.meter_id}: bad relay state {self.relay!r}")
        if not 64 <= self.max_pdu <= 0xFFFF:
            raise ValueError(f"{self.meter_id}: max_pdu must be 64..65535")
        if not 1 <= self.log_capacity <= 100_000:
            raise ValueError(f"{self.meter_id}: log_capacity must be 1..100000")
        if len(self.block_key) != 16 or len(self.auth_key) != 16:
            raise ValueError(f"{self.meter_id}: keys must be 16 bytes")


@dataclass(frozen=True)
class LineSpec:
    """A shared serial/PLC segment and its channel model."""

    line_id: str
    latency_s: float = 0.0  # fixed latency per frame
    bit_rate: int = 0  # bit/s on the channel; 0 = unlimited
    loss: float = 0.0  # probability that a frame is lost (each direction)
    seed: int = 0  # RNG seed: a run is reproducible


@dataclass(frozen=True)
class FleetSpec:
    meters: tuple[MeterSpec, ...] = ()
    lines: tuple[LineSpec, ...] = ()
    control_port: int = 0  # HTTP control interface on 127.0.0.1; 0 = free port

    def __post_init__(self) -> None:
        ids = [m.meter_id for m in self.meters]
        if len(set(ids)) != len(ids):
            raise ValueError("duplicate meter_id in fleet")
        line_ids = {ln.line_id for ln in self.lines}
        seen: set[tuple[str, int]] = set()
        for m in self.meters:
            if m.transport == "hdlc":
                assert m.line_id is not None and m.hdlc_address is not None
                key = (m.line_id, m.hdlc_address)
                if key in seen:
                    raise ValueError(f"two meters at HDLC address {key}")
                seen.add(key)
            if m.line_id is not None and m.line_id not in line_ids and m.transport == "tcp":
                raise ValueError(f"{m.meter_id}: unknown line {m.line_id}")

    def line_ids(self) -> list[str]:
        """Lines in use: declared ones plus any a HDLC meter names (ideal channel)."""
        out = [ln.line_id for ln in self.lines]
        for m in self.meters:
            if m.transport == "hdlc" and m.line_id not in out and m.line_id is not None:
                out.append(m.line_id)
        return out

    def line(self, line_id: str) -> LineSpec:
        for ln in self.lines:
            if ln.line_id == line_id:
                return ln
        return LineSpec(line_id)


def _key(value: Any, default: bytes) -> bytes:
    if value is None:
        return default
    return bytes.fromhex(str(value))


def meter_from_dict(d: dict[str, Any]) -> MeterSpec:
    d = dict(d)
    d["block_key"] = _key(d.get("block_key"), DEMO_BLOCK_KEY)
    d["auth_key"] = _key(d.get("auth_key"), DEMO_AUTH_KEY)
    d["faults"] = tuple(d.get("faults", ()))
    return MeterSpec(**d)


def fleet_from_dict(d: dict[str, Any]) -> FleetSpec:
    return FleetSpec(
        meters=tuple(meter_from_dict(m) for m in d.get("meter", ())),
        lines=tuple(LineSpec(**ln) for ln in d.get("line", ())),
        control_port=int(d.get("control_port", 0)),
    )


def load_fleet(path: str | Path) -> FleetSpec:
    """Read a fleet TOML file (see the module docstring)."""
    with open(path, "rb") as f:
        return fleet_from_dict(tomllib.load(f))


__all__ = ["FleetSpec", "LineSpec", "MeterSpec", "load_fleet"]
