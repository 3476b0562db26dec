"""How many request/response exchanges per second one simulator process sustains.

Starts ``rcd sim --fleet`` in its own process with N TCP meters and N HDLC lines (a pty
each, one meter per line) and zero channel latency, then drives it from client
*processes* (so the clients do not share the simulator's GIL): GET of control_state, one
request outstanding per connection or line. Over TCP the lightweight probe client, for
the public (plain) and the management (HLS-GMAC, AES-GCM ciphered both ways)
association; over HDLC the agent's own client (gurux, HLS-GMAC) on the pty, as the agent
talks to a PLC modem. Goal (TCP): >= 2,000/s. The load average is printed with the
figures: the machine is shared.

Then the agent's CPU per order and per exchange (``--agent-orders``, 0 skips it): one
client process runs the agent's client (``shared.dlms.client.MeterSession``, gurux,
HLS-GMAC) against one more pty line, each order as the agent makes it (SNRM, AARQ, HLS
pass 3/4, GET-with-list of the status, the ACTION, the read-back GET-with-list, DISC),
and reports its own CPU seconds (``time.process_time``), alternately with gurux's own
Python AES-GCM and with the OpenSSL one the agent installs (shared.dlms.gurux_gcm).

    .venv/bin/python bench/bench_sim.py [--meters 8] [--clients 8] [--seconds 3]
                                        [--agent-orders 200]
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


def _agent_cpu_client(path: str, address: int, orders: int, python_aes: bool, ic: int,
                      out: mp.Queue) -> None:  # type: ignore[type-arg]
    from shared.dlms import gurux_gcm
    from shared.dlms.client import MeterAddress, MeterKeys, MeterSession
    from shared.dlms.transport import SerialTransport

    if python_aes:
        gurux_gcm.uninstall()
    sent = 0

    class Counting(SerialTransport):
        def send(self, data: bytes) -> None:
            nonlocal sent
            sent += 1
            super().send(data)

    transport = Counting(path)
    keys = MeterKeys(DEMO_BLOCK_KEY, DEMO_AUTH_KEY, b"BENCHCPU")

    def one_order(i: int) -> None:
        nonlocal ic
        with MeterSession(transport, MeterAddress("hdlc", 1, address), keys,
                          invocation_counter=ic) as session:
            session.read_status(mode=True, scaler=True)
            if i % 2 == 0:
                session.remote_disconnect()
            else:
                session.remote_reconnect()
            session.read_back()
            ic = session.invocation_counter

    try:
        one_order(1)  # warm up: first association, caches
        sent = 0
        cpu0, t0 = time.process_time(), time.perf_counter()
        for i in range(orders):
            one_order(i)
        out.put((time.process_time() - cpu0, time.perf_counter() - t0, sent, ic))
    finally:
        transport.close()


def agent_cpu(path: str, address: int, orders: int) -> None:
    """CPU of the agent's client per order and per exchange, gurux's Python AES against
    OpenSSL's, twice each, alternating (the load moves under both alike)."""
    print(f"agent client CPU, {orders} orders per run on one pty line (zero latency, HLS-GMAC, "
          "AES-GCM both ways):")
    # the invocation counter goes on from run to run (the meter refuses one it has seen)
    ic = int(time.time() * 1000) & 0x3FFFFFFF
    for python_aes in (True, False, True, False):
        q: mp.Queue = mp.Queue()  # type: ignore[type-arg]
        p = mp.Process(target=_agent_cpu_client, args=(path, address, orders, python_aes, ic, q))
        p.start()
        while p.is_alive() and q.empty():
            p.join(0.5)
        if q.empty():
            raise SystemExit(f"the agent-client process failed (exit code {p.exitcode})")
        cpu, wall, sent, ic = q.get()
        p.join()
        kind = "gurux Python AES-GCM" if python_aes else "OpenSSL AES-GCM (shipped)"
        print(f"  {kind:27s} {1000 * cpu / orders:7.2f} ms CPU/order  "
              f"{1000 * cpu / sent:6.3f} ms CPU/exchange  ({sent / orders:.1f} exchanges/order, "
              f"{orders / wall:6.1f} orders/s)   load average "
              f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}")


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
    ap.add_argument("--agent-orders", type=int, default=200,
                    help="orders per run of the agent-client CPU figure (0: skip it)")
    args = ap.parse_args()
    with tempfile.NamedTemporaryFile("w", suffix=".toml", delete=False) as f:
        for i in range(args.meters):
            f.write(f'[[meter]]\nmeter_id = "B{i:03d}"\ntransport = "tcp"\n\n')
        for i in range(args.meters):
            f.write(f'[[line]]\nline_id = "L{i:03d}"\n\n[[meter]]\nmeter_id = "H{i:03d}"\n'
                    f'transport = "hdlc"\nline_id = "L{i:03d}"\nhdlc_address = 17\n\n')
        f.write('[[line]]\nline_id = "LCPU"\n\n[[meter]]\nmeter_id = "HCPU"\n'
                'transport = "hdlc"\nline_id = "LCPU"\nhdlc_address = 17\ncontrol_mode = 2\n\n')
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
                 if m["transport"] == "hdlc" and m["meter_id"] != "HCPU"]
        cpu_line = next((m["serial_path"], m["hdlc_address"]) for m in table["meters"]
                        if m["meter_id"] == "HCPU")
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
        if args.agent_orders > 0:
            agent_cpu(*cpu_line, args.agent_orders)
    finally:
        sim.send_signal(signal.SIGTERM)
        sim.wait(timeout=10)
        os.unlink(fleet_file)
    return 0


if __name__ == "__main__":
    sys.exit(main())
