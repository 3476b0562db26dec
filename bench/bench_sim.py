"""How many request/response exchanges per second one simulator process sustains.

Starts ``rcd sim --fleet`` in its own process with N TCP meters and N HDLC lines (a pty
each, one meter per line) and zero channel latency, then drives it from client
*processes* (so the clients do not share the simulator's GIL): GET of control_state, one
request outstanding per connection or line. Over TCP the lightweight probe client, for
the public (plain) and the management (HLS-GMAC, AES-GCM ciphered both ways)
association; over HDLC the agent's own client (gurux, HLS-GMAC) on the pty, as the agent
talks to a PLC modem. Goal (TCP): >= 2,000/s. The load average is printed with the
figures: the machine is shared.

    .venv/bin/python bench/bench_sim.py [--meters 8] [--clients 8] [--seconds 3]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import signal
import subprocess
import sys
import tempfile
import time

from firmware_sim.fleet import DEMO_AUTH_KEY, DEMO_BLOCK_KEY
from firmware_sim.probe import ProbeClient
from shared.dlms import apdu as A
from shared.dlms import security as S

CONTROL_STATE = A.AttributeRef(70, bytes((0, 0, 96, 3, 10, 255)), 3)


def _client(port: int, secured: bool, seconds: float, start: float, out: mp.Queue) -> None:  # type: ignore[type-arg]
    keys = S.Keys(DEMO_BLOCK_KEY, DEMO_AUTH_KEY) if secured else None
    with ProbeClient(
        "127.0.0.1", port, client=1 if secured else 16, keys=keys,
        ic=int(time.time() * 1000) & 0x3FFFFFFF,
    ) as c:
        c.associate()
        while time.time() < start:
            time.sleep(0.001)
        n = 0
        end = start + seconds
        while time.time() < end:
            if c.get(CONTROL_STATE) != A.axdr.enum(1):
                raise SystemExit("bad answer")
            n += 1
        out.put(n)


def _hdlc_client(path: str, address: int, seconds: float, start: float, out: mp.Queue) -> None:  # type: ignore[type-arg]
    from shared.dlms.client import DISCONNECT_CONTROL_OBIS, MeterAddress, MeterKeys, MeterSession
    from shared.dlms.transport import SerialTransport

    transport = SerialTransport(path)
    keys = MeterKeys(DEMO_BLOCK_KEY, DEMO_AUTH_KEY, b"BENCHCLI")
    try:
        with MeterSession(transport, MeterAddress("hdlc", 1, address), keys,
                          invocation_counter=int(time.time() * 1000) & 0x3FFFFFFF) as session:
            while time.time() < start:
                time.sleep(0.001)
            n = 0
            end = start + seconds
            while time.time() < end:
                if session.read(DISCONNECT_CONTROL_OBIS, 70, 3) != 1:
                    raise SystemExit("bad answer")
                n += 1
        out.put(n)
    finally:
        transport.close()


def run_hdlc(lines: list[tuple[str, int]], seconds: float) -> float:
    q: mp.Queue = mp.Queue()  # type: ignore[type-arg]
    start = time.time() + 2.0
    procs = [mp.Process(target=_hdlc_client, args=(path, address, seconds, start, q))
             for path, address in lines]
    for p in procs:
        p.start()
    total = sum(q.get(timeout=seconds + 30) for _ in procs)
    for p in procs:
        p.join()
    return total / seconds


def run(ports: list[int], clients: int, secured: bool, seconds: float) -> float:
    q: mp.Queue = mp.Queue()  # type: ignore[type-arg]
    start = time.time() + 1.0
    procs = [
        mp.Process(target=_client, args=(ports[i % len(ports)], secured, seconds, start, q))
        for i in range(clients)
    ]
    for p in procs:
        p.start()
    total = sum(q.get(timeout=seconds + 30) for _ in procs)
    for p in procs:
        p.join()
    return total / seconds


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--meters", type=int, default=8)
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--seconds", type=float, default=3.0)
    args = ap.parse_args()
    with tempfile.NamedTemporaryFile("w", suffix=".toml", delete=False) as f:
        for i in range(args.meters):
            f.write(f'[[meter]]\nmeter_id = "B{i:03d}"\ntransport = "tcp"\n\n')
        for i in range(args.meters):
            f.write(f'[[line]]\nline_id = "L{i:03d}"\n\n[[meter]]\nmeter_id = "H{i:03d}"\n'
                    f'transport = "hdlc"\nline_id = "L{i:03d}"\nhdlc_address = 17\n\n')
        fleet_file = f.name
    rcd = os.path.join(os.path.dirname(sys.executable), "rcd")
    sim = subprocess.Popen(
        [rcd, "sim", "--fleet", fleet_file, "--json"], stdout=subprocess.PIPE, text=True
    )
    try:
        assert sim.stdout is not None
        table = json.loads(sim.stdout.readline())
        ports = [m["tcp_port"] for m in table["meters"] if m["transport"] == "tcp"]
        lines = [(m["serial_path"], m["hdlc_address"]) for m in table["meters"]
                 if m["transport"] == "hdlc"]
        print(f"simulator pid {sim.pid}: {len(ports)} TCP meters, {len(lines)} HDLC lines "
              f"(pty), zero channel latency, {args.clients} TCP client processes, "
              f"{args.seconds:.0f} s per run, cpus={os.cpu_count()}")
        for secured in (False, True):
            rate = run(ports, args.clients, secured, args.seconds)
            kind = "TCP management (HLS-GMAC, AES-GCM)" if secured else "TCP public (plain)"
            print(f"{kind:36s} {rate:10,.0f} exchanges/s   load average {os.getloadavg()[0]:.2f}")
        rate = run_hdlc(lines, args.seconds)
        print(f"{'HDLC on pty, management (HLS-GMAC)':36s} {rate:10,.0f} exchanges/s   "
              f"load average {os.getloadavg()[0]:.2f}")
    finally:
        sim.send_signal(signal.SIGTERM)
        sim.wait(timeout=10)
        os.unlink(fleet_file)
    return 0


if __name__ == "__main__":
    sys.exit(main())
