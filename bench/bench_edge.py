"""Edge agent figures: resident memory and idle CPU with 1,000 meters in its table, before
its first order and again after a batch (the goal, < 40 MB, is checked on the second: the
agent in service), and orders per second against zero-latency simulated meters.

    .venv/bin/python bench/bench_edge.py [--meters 1000] [--idle-s 10] [--idle-runs 3]
                                         [--batch 40] [--idle-only] [--orders 400]
                                         [--sim-meters 8]

The agent runs as it is deployed, as ``python -m edge_agent run`` (what the systemd unit
starts) in its own process with the unit's ``MALLOC_ARENA_MAX=2``, against a private
mosquitto with our shipped configuration; the simulated meters (real DLMS over TCP,
HLS-GMAC) and the stand-in coordinator run in this process. Before that, a fresh
interpreter imports what the agent imports, group by group, and prints the resident memory
after each group: where the idle figure comes from (docs/edge_agent.md, "Memory").
Figures are printed.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from edge_agent.store import Store  # noqa: E402
from firmware_sim.fleet import FleetSpec, MeterSpec  # noqa: E402
from firmware_sim.runner import running_fleet  # noqa: E402
from shared.broker import MosquittoBroker  # noqa: E402
from shared.codes import Action  # noqa: E402
from shared.contracts import ConcentratorStatus, MeterEntry, decode  # noqa: E402
from tests.edge.fakes import order  # noqa: E402
from tests.edge.helpers import Coordinator, config_dict, dump_toml, make_signer, wait_for  # noqa: E402

TICKS = os.sysconf("SC_CLK_TCK")
BENCH_LOGS = "warning"


def proc_status_mb(pid: int, key: str) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{key}:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def rss_mb(pid: int) -> float:
    return proc_status_mb(pid, "VmRSS")


def threads(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Threads:"):
            return int(line.split()[1])
    return -1


# What the agent's resident memory is made of: a fresh interpreter imports, in the agent's
# own order, one group at a time and prints its VmRSS after each (MALLOC_ARENA_MAX=2).
IMPORT_STEPS: tuple[tuple[str, str], ...] = (
    ("interpreter + site", ""),
    ("stdlib the agent uses", "import argparse, csv, json, logging, queue, signal, sqlite3, "
                              "threading, tomllib, concurrent.futures, urllib.parse, pathlib"),
    ("ssl (paho imports it; system libssl/libcrypto)", "import ssl"),
    ("msgspec (+ typing_extensions, inspect, decimal, uuid)", "import msgspec"),
    ("shared.contracts (the message Structs)", "import shared.contracts"),
    ("edge_agent.config (the configuration Structs)", "import edge_agent.config"),
    ("shared.signing (Ed25519 through the system libcrypto, ctypes)", "import shared.signing"),
    ("paho-mqtt (+ urllib.request, http.client, socks)", "import paho.mqtt.client"),
    ("rest of edge_agent (store, executor, mqtt_link, agent, cli)",
     "import edge_agent.agent, edge_agent.__main__"),
    ("DLMS stack at the first exchange (gurux-dlms, shared.dlms.client)",
     "import edge_agent.dlms_driver"),
)

_IMPORT_PROBE = """
import sys
sys.path.insert(0, {root!r})
def rss():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
for stmt in sys.argv[1:]:
    exec(stmt)
    print(rss(), len(sys.modules), flush=True)
"""


def bench_imports() -> None:
    """RSS after each import group, in a fresh interpreter each time the script runs."""
    probe = _IMPORT_PROBE.format(root=str(ROOT))
    out = subprocess.run(
        [sys.executable, "-c", probe, *(stmt or "pass" for _, stmt in IMPORT_STEPS)],
        check=True, capture_output=True, text=True, cwd=ROOT,
        env={**os.environ, "MALLOC_ARENA_MAX": "2"},
    ).stdout.split("\n")
    print("resident memory by import (fresh interpreter, agent's import order):")
    prev = 0.0
    for (label, _), line in zip(IMPORT_STEPS, out, strict=False):
        rss, modules = float(line.split()[0]), int(line.split()[1])
        print(f"  {rss - prev:+6.1f} MB = {rss:5.1f} MB  {modules:4d} modules  {label}")
        prev = rss


def cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime + stime


def spawn(cfg: Path, log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "edge_agent", "run", "--config", str(cfg)],
            stdout=out, stderr=subprocess.STDOUT, cwd=ROOT,
            env={**os.environ, "MALLOC_ARENA_MAX": "2"},  # as in deploy/systemd/rcd-edge.service
        )


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


def setup(work: Path, broker: MosquittoBroker, cid: str, meters: list[MeterEntry],
          tcp_concurrency: int) -> tuple[Path, object]:
    broker.add_user(cid)
    signer, pub = make_signer(work)
    conf = config_dict(work, pub, cid, broker_url=broker.url)
    conf["agent"]["status_interval_s"] = 60
    conf["agent"]["log_level"] = "warning"
    conf["executor"].update(tcp_concurrency=tcp_concurrency, dlms_timeout_s=5.0, idle_poll_s=1.0,
                            counter_block=1000)
    cfg = work / "edge.toml"
    cfg.write_text(dump_toml(conf))
    with Store(work / "data" / "agent.sqlite3") as store:
        store.import_meters(meters)
    return cfg, signer


def _report_rss(label: str, pid: int) -> float:
    rss = rss_mb(pid)
    print(f"  {label:<26}{rss:8.1f} MB   (anonymous {proc_status_mb(pid, 'RssAnon'):.1f} MB: "
          f"heap, stacks; file-backed {proc_status_mb(pid, 'RssFile'):.1f} MB: interpreter, "
          f".so libraries), {threads(pid)} threads")
    return rss


def bench_idle(broker: MosquittoBroker, n_meters: int, idle_s: float, batch: int,
               run: int = 0) -> tuple[float, float]:
    """Idle RSS with ``n_meters`` in the table, before the first order and again after a
    batch of ``batch`` orders on the simulated meters among them (real DLMS over TCP): the
    first exchange loads the DLMS stack (gurux), which stays. The goal is on the second."""
    work = Path(tempfile.mkdtemp(prefix="rcd-bench-idle-"))
    cid = f"bench-idle{run}"
    specs = tuple(MeterSpec(f"S{i}", "tcp", control_mode=2) for i in range(4))
    with running_fleet(FleetSpec(meters=specs)) as fleet:
        meters = [MeterEntry(meter_id=s.meter_id, transport="tcp", host="127.0.0.1",
                             port=fleet.tcp_port(s.meter_id), keys_ref="default") for s in specs]
        meters += [MeterEntry(meter_id=f"M{i:05d}", transport="hdlc", line_id="plc1",
                              hdlc_address=16 + i, keys_ref="default")
                   for i in range(n_meters - len(specs))]
        cfg, signer = setup(work, broker, cid, meters, 4)
        coord = Coordinator(broker, cid, f"{cid}-coord")
        proc = spawn(cfg, work / "agent.log")
        try:
            wait_for(lambda: any(decode(ConcentratorStatus, s).online for s in coord.status),
                     timeout=20, what="agent online")
            time.sleep(1.0)  # let start-up settle
            cpu0, t0 = cpu_s(proc.pid), time.monotonic()
            time.sleep(idle_s)
            cpu1, t1 = cpu_s(proc.pid), time.monotonic()
            status = decode(ConcentratorStatus, coord.status[-1])
            print(f"idle agent (run {run + 1}), {status.meter_count} meters in table:")
            before = _report_rss("RSS before any order", proc.pid)
            print(f"  idle CPU over {t1 - t0:4.1f} s     {100 * (cpu1 - cpu0) / (t1 - t0):8.2f} %")
            for i in range(batch):
                action = Action.DISCONNECT if (i // len(specs)) % 2 == 0 else Action.CONNECT
                coord.client.publish(f"rcd/v1/c/{cid}/cmd", signer.sign(  # type: ignore[attr-defined]
                    order(f"i{run}-{i:04d}", f"S{i % len(specs)}", action, concentrator_id=cid,
                          deadline_s=600)), qos=1)
            wait_for(lambda: len(coord.by_order()) >= batch, timeout=300, what="the batch")
            time.sleep(idle_s)  # idle again
            after = _report_rss(f"RSS after {batch} orders", proc.pid)
            print(f"  goal < 40 MB in service (after orders): {'met' if after < 40 else 'NOT met'}")
            return before, after
        finally:
            stop(proc)
            coord.close()


def bench_throughput(broker: MosquittoBroker, n_orders: int, n_sim: int) -> None:
    work = Path(tempfile.mkdtemp(prefix="rcd-bench-run-"))
    cid = "bench-run"
    specs = tuple(MeterSpec(f"S{i}", "tcp", control_mode=2) for i in range(n_sim))
    with running_fleet(FleetSpec(meters=specs)) as fleet:
        meters = [MeterEntry(meter_id=s.meter_id, transport="tcp", host="127.0.0.1",
                             port=fleet.tcp_port(s.meter_id), keys_ref="default") for s in specs]
        cfg, signer = setup(work, broker, cid, meters, n_sim)
        coord = Coordinator(broker, cid, "bench-run-coord", signer)  # acks, as central does
        proc = spawn(cfg, work / "agent.log")
        try:
            wait_for(lambda: any(decode(ConcentratorStatus, s).online
                                 for s in coord.status), timeout=20, what="agent online")
            commands = [
                signer.sign(order(f"b{i:05d}", f"S{i % n_sim}",  # type: ignore[attr-defined]
                                  Action.DISCONNECT if (i // n_sim) % 2 == 0 else Action.CONNECT,
                                  concentrator_id=cid, deadline_s=600))
                for i in range(n_orders)
            ]
            t0, cpu0 = time.monotonic(), cpu_s(proc.pid)
            for payload in commands:
                coord.client.publish(f"rcd/v1/c/{cid}/cmd", payload, qos=1)
            wait_for(lambda: len(coord.by_order()) >= n_orders, timeout=600, what="all results")
            elapsed = time.monotonic() - t0
            agent_cpu = cpu_s(proc.pid) - cpu0
            outcomes: dict[str, int] = {}
            for results in coord.by_order().values():
                outcomes[results[0].outcome.value] = outcomes.get(results[0].outcome.value, 0) + 1
            print(f"throughput, {n_orders} orders on {n_sim} zero-latency TCP meters "
                  f"(HLS-GMAC, switch + read-back each):")
            print(f"  elapsed                   {elapsed:8.2f} s")
            print(f"  orders per second         {n_orders / elapsed:8.1f}")
            print(f"  agent CPU during batch    {100 * agent_cpu / elapsed:8.1f} % of one core "
                  "(the simulator shares this process's interpreter)")
            print(f"  outcomes                  {outcomes}")
            print(f"  agent RSS after the batch {rss_mb(proc.pid):8.1f} MB")
        finally:
            stop(proc)
            coord.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--meters", type=int, default=1000)
    parser.add_argument("--idle-s", type=float, default=10.0)
    parser.add_argument("--orders", type=int, default=400)
    parser.add_argument("--sim-meters", type=int, default=8)
    parser.add_argument("--idle-runs", type=int, default=3,
                        help="start the idle agent this many times (RSS varies a little)")
    parser.add_argument("--batch", type=int, default=40,
                        help="orders between the two idle measurements")
    parser.add_argument("--idle-only", action="store_true", help="skip the throughput part")
    args = parser.parse_args()
    bench_imports()
    with MosquittoBroker() as broker:
        runs = [bench_idle(broker, args.meters, args.idle_s, args.batch, run)
                for run in range(args.idle_runs)]
        after = [a for _, a in runs]
        print(f"idle RSS over {len(runs)} run(s): before orders mean "
              f"{sum(b for b, _ in runs) / len(runs):.1f} MB; after orders min {min(after):.1f}, "
              f"max {max(after):.1f}, mean {sum(after) / len(after):.1f} MB (goal < 40 MB: "
              f"{'met' if max(after) < 40 else 'NOT met'}); load average "
              f"{os.getloadavg()[0]:.2f}")
        if not args.idle_only:
            bench_throughput(broker, args.orders, args.sim_meters)


if __name__ == "__main__":
    main()
