"""A disconnect campaign through the whole system, every part its own OS process:
mosquitto (shipped configuration and ACL), the coordinator (``rcd central run``, SQLite),
one edge agent per line (``python -m edge_agent run``), and the simulator (``rcd sim``)
with N HDLC lines on ptys under the PLC channel model (20 ms per frame, 9.6 kbit/s), M
meters per line. One REST batch of N x M disconnects; the time from the request until
the last order has ended, next to the channel bound: the lines work in parallel and
each carries one frame at a time, so no campaign can end before its busiest line has
carried its frames. The bound is computed twice from the simulator's own airtime
accounting (``/lines``: frames, bytes, channel seconds per line):

* for the exchanges actually made (what the line carried);
* for the minimum exchange set: per disconnect 7 exchanges, 14 frames, 796 bytes (the
  sequence ``tests/edge/test_exchange_trace.py`` checks on real bytes), at the line's
  latency and bit rate. The n-th meter of a line has HDLC address 17 + n; from address
  128 on (lines of more than 111 meters) the meter's address takes 4 bytes instead of
  2 in every frame, 28 bytes more per order (also checked there), so a line of 500
  meters needs 817.8 bytes per order on average at the least.

    .venv/bin/python bench/bench_campaign.py [--lines 20] [--meters 50] [--shipped-limits]
                                             [--audited]

``--audited`` is the fleet in service: the relay audit reads every meter once per cycle,
and each read also leaves the meter's control_mode and scaler_unit in the agent's cache.
The agents' audit cycle is shortened (and its airtime share raised) so that every meter
has been read once before the campaign starts; the bench waits for every meter's audit
report at the coordinator, prints how long that took, then starts the campaign clock.
Without it every meter is new to its agent, as on the day a concentrator is installed,
and each order also reads those two attributes (about 30 B and 25 ms on the channel).

What is switched off, and why: the fleet-wide disconnect rate limit (600/min shipped)
and the approval threshold are lifted, since the figure is the system's overhead over
the channel, not the limit (``--shipped-limits`` keeps them and shows the limit as the
bound, with the coordinator's own estimate printed before the campaign starts). The
in-flight cap per concentrator stays as shipped (50). Prints the figures, the edge agents'
CPU seconds during the campaign (per order) and the load average: the machine is shared,
and every process here competes for its cores.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.machine import CpuTimes  # noqa: E402
from shared.broker import MosquittoBroker, free_port  # noqa: E402
from shared.dlms import hdlc  # noqa: E402
from shared.signing import generate_keypair  # noqa: E402
from tests.edge.helpers import config_dict, dump_toml  # noqa: E402

LATENCY_S = 0.020
BIT_RATE = 9600
MIN_FRAMES = 14  # per disconnect: SNRM, AARQ, HLS pass 3, GET, ACTION, GET, DISC, each way
MIN_BYTES = 796  # for HDLC address 17, as tests/edge/test_exchange_trace.py measures
FIRST_ADDRESS = 17  # the n-th meter of a line has HDLC address 17 + n
LOGICAL_SERVER = 1
ADMIN = {"Authorization": "Bearer dev-admin"}
OPERATOR = {"Authorization": "Bearer dev-operator"}
FINISHED = ("completed_disconnected", "completed_connected", "completed_armed", "failed",
            "expired", "cancelled")


def start_simulator(work: Path, lines: range, meters: int, trace: str | None = None
                    ) -> tuple[subprocess.Popen[str], dict[str, Any]]:
    fleet = work / f"fleet-{lines.start:02d}.toml"
    with fleet.open("w") as f:
        for line in lines:
            f.write(f'[[line]]\nline_id = "L{line:02d}"\nlatency_s = {LATENCY_S}\n'
                    f"bit_rate = {BIT_RATE}\nseed = {line}\n\n")
            for n in range(meters):
                f.write(f'[[meter]]\nmeter_id = "M{line:02d}-{n:03d}"\ntransport = "hdlc"\n'
                        f'line_id = "L{line:02d}"\nhdlc_address = {FIRST_ADDRESS + n}\n'
                        'relay = "connected"\ncontrol_mode = 2\n\n')
    sim = subprocess.Popen([sys.executable, "-m", "shared.cli", "sim", "--fleet", str(fleet),
                            "--json"], stdout=subprocess.PIPE, text=True, cwd=ROOT,
                           env={**os.environ, **({"RCD_SIM_TRACE": trace} if trace else {})})
    assert sim.stdout is not None
    return sim, json.loads(sim.stdout.readline())


def start_simulators(work: Path, lines: int, meters: int, per_line: bool,
                     trace: str | None) -> tuple[list[subprocess.Popen[str]], list[dict[str, Any]]]:
    """One simulator for all lines, or one per line: meters on different lines are
    different devices, which one Python process would make take turns on one GIL."""
    groups = [range(n, n + 1) for n in range(lines)] if per_line else [range(lines)]
    started = [start_simulator(work, group, meters, trace) for group in groups]
    return [proc for proc, _ in started], [table for _, table in started]


def minimum_order_bytes(address: int) -> int:
    """The minimum exchange set's bytes for the meter at this HDLC address: every frame
    carries the meter's address once (the destination of a request, the source of an
    answer); a physical address above 127 takes the 4-byte form instead of 2 bytes."""
    extra = (len(hdlc.server_address(LOGICAL_SERVER, address))
             - len(hdlc.server_address(LOGICAL_SERVER, FIRST_ADDRESS)))
    return MIN_BYTES + MIN_FRAMES * extra


def minimum_line_s(meters: int) -> tuple[float, float]:
    """(seconds, bytes per order) a line of ``meters`` disconnects needs at the least."""
    sizes = [minimum_order_bytes(FIRST_ADDRESS + n) for n in range(meters)]
    seconds = meters * MIN_FRAMES * LATENCY_S + 8 * sum(sizes) / BIT_RATE
    return seconds, sum(sizes) / meters


def line_counters(tables: list[dict[str, Any]]) -> dict[str, Any]:
    """Each line's frames, bytes and channel time, from every simulator."""
    counters: dict[str, Any] = {}
    for table in tables:
        counters |= httpx.get(f"{table['control_url']}/lines").json()
    return counters


def start_coordinator(work: Path, broker: MosquittoBroker, shipped: bool
                      ) -> tuple[subprocess.Popen[bytes], str, Path, Path]:
    private, public = generate_keypair()
    (work / "coordinator.key").write_bytes(private)
    (work / "coordinator.pub").write_bytes(public)
    port = free_port()
    database = work / "central.sqlite3"
    env = {**os.environ, "RCD_ENVIRONMENT": "test", "RCD_DATABASE_URL": f"sqlite:///{database}",
           "RCD_MQTT_HOST": broker.host, "RCD_MQTT_PORT": str(broker.port),
           "RCD_MQTT_PASSWORD": broker.password, "RCD_MQTT_CLIENT_ID": "bench-campaign",
           "RCD_SIGNING_KEY_PATH": str(work / "coordinator.key"),
           "RCD_SWEEP_INTERVAL_S": "1", "RCD_SOAP_NOTIFIER_ENABLED": "false",
           # one operator's campaign of thousands is what the anomaly detector quarantines
           # (issue 17); the bench measures the channel, not the second person
           "RCD_ANOMALY__ENABLED": "false"}
    if not shipped:
        env |= {"RCD_DISCONNECTS_PER_MINUTE": "10000000", "RCD_APPROVAL_THRESHOLD": "10000000"}
    server = subprocess.Popen([sys.executable, "-m", "shared.cli", "central", "run", "--port",
                               str(port), "--log-level", "warning"], env=env, cwd=ROOT)
    return server, f"http://127.0.0.1:{port}", database, work / "coordinator.pub"


def start_agent(work: Path, broker: MosquittoBroker, pub: Path, cid: str, line: str,
                path: str, audit_cycle_s: float | None = None) -> subprocess.Popen[bytes]:
    home = work / cid
    home.mkdir()
    broker.add_user(cid)
    conf = config_dict(home, pub, cid, broker_url=broker.url, lines={line: path})
    conf["lines"][line]["baudrate"] = BIT_RATE
    conf["agent"].update(status_interval_s=2, log_level="warning")
    conf["executor"].update(dlms_timeout_s=5.0, idle_poll_s=1.0, counter_block=1000)
    if audit_cycle_s is not None:  # every meter read once within the cycle, before the start
        conf["audit"] = {"cycle_s": audit_cycle_s, "log_poll_s": audit_cycle_s,
                         "max_airtime_share": 0.9}
    (home / "edge.toml").write_text(dump_toml(conf))
    with (home / "agent.log").open("ab") as log:
        return subprocess.Popen([sys.executable, "-m", "edge_agent", "run", "--config",
                                 str(home / "edge.toml")], stdout=log, stderr=subprocess.STDOUT,
                                cwd=ROOT, env={**os.environ, "MALLOC_ARENA_MAX": "2"})


def audit_cycle(args: argparse.Namespace) -> float:
    """An audit cycle the lines can carry: about 0.7 s of channel per read, at most
    90 % of each line, so that every meter has its slot before the campaign."""
    return max(30.0, 0.8 * args.meters)


def wait_for_audit(database: Path, total: int, cycle_s: float) -> None:
    """Until the coordinator holds an audit report of every meter."""
    began = time.perf_counter()

    def audited() -> bool:
        with sqlite3.connect(f"file:{database}?mode=ro", uri=True) as db:
            seen = db.execute("SELECT count(DISTINCT meter_id) FROM relay_reports "
                              "WHERE trigger = 'audit'").fetchone()[0]
        return bool(seen >= total)

    wait(audited, 3 * cycle_s + 120, "an audit report of every meter")
    print(f"relay audit: every meter read once in {time.perf_counter() - began:.1f} s "
          f"(cycle {cycle_s:.0f} s); the campaign starts now", flush=True)


def last_end(database: Path) -> datetime:
    """When the coordinator recorded its last order's final state (order_events.at)."""
    marks = ",".join("?" * len(FINISHED))
    with sqlite3.connect(f"file:{database}?mode=ro", uri=True) as db:
        (at,) = db.execute(f"SELECT max(at) FROM order_events WHERE to_state IN ({marks})",
                           FINISHED).fetchone()
    return datetime.fromisoformat(at).replace(tzinfo=UTC)  # SQLite keeps UTC, naive


def cpu_s(pids: list[int]) -> float:
    """utime + stime of these processes, in seconds."""
    total = 0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


def wait(check: Any, timeout: float, what: str) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            if check():
                return
        except (httpx.HTTPError, sqlite3.Error):
            pass
        time.sleep(0.2)
    raise SystemExit(f"timed out waiting for {what}")


def stop(proc: subprocess.Popen[Any]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lines", type=int, default=20)
    parser.add_argument("--meters", type=int, default=50, help="meters per line")
    parser.add_argument("--shipped-limits", action="store_true")
    parser.add_argument("--audited", action="store_true",
                        help="the relay audit reads every meter once before the campaign")
    parser.add_argument("--simulators", choices=("one", "per-line"), default="one",
                        help="one simulator process for every line, or one per line")
    parser.add_argument("--keep", metavar="DIR",
                        help="work in DIR and keep it (the agents' logs and stores, the "
                             "coordinator's database)")
    parser.add_argument("--timeout", type=float, default=3600)
    parser.add_argument("--trace", metavar="DIR",
                        help="the simulator writes each line's frame times here "
                             "(read them with bench/line_gaps.py)")
    args = parser.parse_args()
    load_start = os.getloadavg()
    procs: list[subprocess.Popen[Any]] = []
    total = args.lines * args.meters
    with (tempfile.TemporaryDirectory(prefix="rcd-campaign-") as tmp, MosquittoBroker() as broker):
        work = Path(args.keep or tmp)
        work.mkdir(parents=True, exist_ok=True)
        try:
            sims, tables = start_simulators(work, args.lines, args.meters,
                                            args.simulators == "per-line", args.trace)
            procs.extend(sims)
            paths = {m["line_id"]: m["serial_path"] for t in tables for m in t["meters"]}
            server, base, database, pub = start_coordinator(work, broker, args.shipped_limits)
            procs.append(server)
            agents: list[int] = []
            for n, line in enumerate(sorted(paths)):
                procs.append(start_agent(work, broker, pub, f"DC{n:02d}", line, paths[line],
                                         audit_cycle(args) if args.audited else None))
                agents.append(procs[-1].pid)
            with httpx.Client(base_url=base, timeout=120) as http:
                wait(lambda: http.get("/ready").status_code == 200, 60, "the coordinator")
                csv = "meter_id,concentrator_id,line_id,hdlc_address\n" + "".join(
                    f"M{line:02d}-{n:03d},DC{line:02d},L{line:02d},{17 + n}\n"
                    for line in range(args.lines) for n in range(args.meters))
                http.post("/api/v1/meters/import", content=csv,
                          headers={**ADMIN, "Content-Type": "text/csv"}).raise_for_status()
                def tables_in() -> bool:
                    rows = http.get("/api/v1/concentrators", headers=OPERATOR).json()
                    return len(rows) == args.lines and all(
                        c["online"] and c["agent_table_generation"] == c["table_generation"]
                        for c in rows)

                wait(tables_in, 180, "every agent online with its meter table")
                if args.audited:
                    wait_for_audit(database, total, audit_cycle(args))
                before = line_counters(tables)
                body = {"orders": [{"meter_id": f"M{line:02d}-{n:03d}", "action": "disconnect",
                                    "reason": "losses", "special": True}
                                   for n in range(args.meters) for line in range(args.lines)]}
                planned = http.post("/api/v1/orders/estimate", json=body, headers=OPERATOR).json()
                print(f"coordinator's estimate before the start: {planned['text']}", flush=True)
                started = time.perf_counter()
                started_at = datetime.now(UTC)
                started_mono = time.monotonic()  # the simulator's trace clock
                agents_cpu = cpu_s(agents)
                coordinator_cpu = cpu_s([server.pid])
                machine = CpuTimes.now()
                answer = http.post("/api/v1/orders/batch", json=body, headers=OPERATOR)
                answer.raise_for_status()
                print(f"batch accepted and dispatched in {time.perf_counter() - started:.2f} s",
                      flush=True)
                if answer.json()["refused"]:
                    raise SystemExit(f"refused: {answer.text[:300]}")

                def finished() -> bool:
                    with sqlite3.connect(f"file:{database}?mode=ro", uri=True) as db:
                        marks = ",".join("?" * len(FINISHED))
                        done = db.execute(f"SELECT count(*) FROM orders WHERE state IN ({marks})",
                                          FINISHED).fetchone()[0]
                    return bool(done >= total)

                wait(finished, args.timeout, "every order to end")
                # The end is when the coordinator recorded the last order's end (its
                # timeline), not when this loop next looked: the poll's 0.2 s are not
                # the system's.
                elapsed = (last_end(database) - started_at).total_seconds()
                if args.trace:  # the campaign's ends on the simulator's clock (monotonic)
                    Path(args.trace, "campaign.times").write_text(
                        f"{started_mono} {started_mono + elapsed}\n")
                machine_use = CpuTimes.now().since(machine)
                agents_cpu = cpu_s(agents) - agents_cpu
                coordinator_cpu = cpu_s([server.pid]) - coordinator_cpu
                after = line_counters(tables)
                with sqlite3.connect(f"file:{database}?mode=ro", uri=True) as db:
                    outcomes = dict(db.execute("SELECT state, count(*) FROM orders GROUP BY state"))
                    attempts, sends = db.execute(
                        "SELECT sum(attempts), sum(sends) FROM orders").fetchone()
                    reads = dict(db.execute("SELECT trigger, count(*) FROM relay_reports "
                                            "GROUP BY trigger"))
        finally:
            for proc in reversed(procs):
                stop(proc)
    report(args, elapsed, before, after, outcomes, load_start)
    print(f"DLMS attempts {attempts} and command sends {sends} for {total} orders; "
          f"relay audit reports at the coordinator by trigger: {reads}")
    print(f"edge agents' CPU during the campaign   {agents_cpu:8.2f} s   "
          f"({1000 * agents_cpu / total:.1f} ms per order, {len(agents)} agent processes)")
    print(f"coordinator's CPU during the campaign  {coordinator_cpu:8.2f} s   "
          f"({1000 * coordinator_cpu / total:.1f} ms per order)")
    print(f"the machine during the campaign: {machine_use}")
    return 0


def report(args: argparse.Namespace, elapsed: float, before: dict[str, Any],
           after: dict[str, Any], outcomes: dict[str, int], load_start: tuple[float, ...]) -> None:
    lines = sorted(after)
    made = {ln: after[ln]["channel_time_s"] - before[ln]["channel_time_s"] for ln in lines}
    frames = sum(after[ln]["frames"] - before[ln]["frames"] for ln in lines)
    size = sum(after[ln]["bytes"] - before[ln]["bytes"] for ln in lines)
    minimum, order_bytes = minimum_line_s(args.meters)  # every line carries M disconnects
    bound = max(made.values())
    total = args.lines * args.meters
    print(f"\n{args.lines} lines x {args.meters} meters = {total} disconnects, PLC model "
          f"{LATENCY_S * 1000:.0f} ms/frame + {BIT_RATE} bit/s; "
          f"{'shipped limits' if args.shipped_limits else 'disconnect rate limit lifted'}; "
          f"{'every meter audited before' if args.audited else 'every meter new to its agent'}")
    print(f"outcomes: {outcomes}")
    print(f"campaign time (request to last order ended)  {elapsed:8.1f} s")
    print(f"channel bound, exchanges made (busiest line)  {bound:8.1f} s   "
          f"ratio {elapsed / bound:.3f}   ({frames / total:.1f} frames, {size / total:.0f} B "
          "per order)")
    print(f"channel bound, minimum exchange set          {minimum:8.1f} s   "
          f"ratio {elapsed / minimum:.3f}   ({MIN_FRAMES} frames, {order_bytes:.0f} B per order, "
          f"{minimum / args.meters:.3f} s; {MIN_BYTES} B at addresses below 128)")
    print(f"goal <= 1.05 x the minimum-exchange bound: "
          f"{'met' if elapsed <= 1.05 * minimum else 'NOT met'}")
    print(f"load average {load_start[0]:.2f} at start, {os.getloadavg()[0]:.2f} at the end "
          f"({os.cpu_count()} cores, shared with other work)")


if __name__ == "__main__":
    sys.exit(main())
