"""``rcd sim``: run one simulated meter on a TCP port, or a fleet from a TOML file."""

from __future__ import annotations

import argparse
import json
import signal
import threading
from types import FrameType
from typing import Any

from firmware_sim.fleet import FleetSpec, MeterSpec, load_fleet
from firmware_sim.runner import running_fleet


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser(
        "sim",
        help="simulated DLMS/COSEM meters",
        description=(
            "Run simulated smart meters speaking DLMS/COSEM (TCP wrapper or HDLC on a pty). "
            "Demo keys are INSECURE and public: block 000102030405060708090A0B0C0D0E0F, "
            "auth D0D1D2D3D4D5D6D7D8D9DADBDCDDDEDF, server logical address 1."
        ),
    )
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--tcp-port", type=int, help="one meter (demo keys) on this TCP port")
    src.add_argument("--fleet", help="fleet TOML file (see docs/firmware_sim.md)")
    p.add_argument("--meter-id", default="SIM0001", help="meter id for --tcp-port")
    p.add_argument("--control-port", type=int, default=0, help="HTTP control port (0 = free)")
    p.add_argument("--json", action="store_true", help="print the listen table as JSON")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    if args.fleet:
        spec = load_fleet(args.fleet)
        if args.control_port:
            spec = FleetSpec(spec.meters, spec.lines, args.control_port)
    else:
        spec = FleetSpec(
            meters=(MeterSpec(args.meter_id, tcp_port=args.tcp_port),),
            control_port=args.control_port,
        )
    stop = threading.Event()

    def _on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    old = {s: signal.signal(s, _on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        with running_fleet(spec) as fleet:
            table: dict[str, Any] = {"control_url": fleet.control_url, "meters": fleet.describe()}
            if args.json:
                print(json.dumps(table), flush=True)
            else:
                for m in table["meters"]:
                    where = (
                        f"tcp 127.0.0.1:{m['tcp_port']}" if m["transport"] == "tcp"
                        else f"hdlc {m['serial_path']} address {m['hdlc_address']}"
                    )
                    print(f"meter {m['meter_id']}: {where}", flush=True)
                print(f"control {fleet.control_url}", flush=True)
            stop.wait()
    finally:
        for s, h in old.items():
            signal.signal(s, h)
    print("simulator stopped", flush=True)
    return 0
