"""Reconnects never wait (issue 17): reconnect latency during a disconnect campaign, next
to the same reconnects on an idle fleet.

The whole system as separate OS processes, started by ``bench_campaign``'s own code:
mosquitto, the coordinator (``rcd central run``, SQLite), one edge agent per concentrator
and the simulator with one HDLC line per concentrator under the PLC channel model
(20 ms per frame, 9.6 kbit/s). Default: 4 concentrators x 500 meters = a 2,000-meter
campaign.

1. ``--reconnects`` meters per line are disconnected (set-up), then reconnected one
   at a time on an idle fleet: the idle latencies.
2. They are disconnected again (set-up); the campaign (one REST batch of disconnects of
   every other meter) starts; once every line is busy, the same meters are reconnected
   one every ``--every`` seconds, as single REST orders: the latencies under load.

Latency: the order's acceptance to its result at the coordinator (``finished_at -
created_at`` in its database), i.e. REST, dispatch, broker, the agent's queue, the DLMS
session on the line, the result back. Goal: p95 under load <= p95 idle + one DLMS
session on the line (a reconnect may arrive just after a disconnect's session started;
the agent does not break a session in progress). The session time is measured: the
simulator's channel seconds of the campaign divided by the orders it carried.

    .venv/bin/python bench/bench_reconnect.py [--lines 4] [--meters 500] [--reconnects 5]

What is switched off, and why: as in ``bench_campaign``, the fleet-wide disconnect rate
limit and the approval threshold are lifted (a 2,000-disconnect batch would wait for a
second person; the figure is the reconnect path, not those limits). The agents run
without a protected list (``require_list`` off in the test configuration). Everything
else (in-flight caps, the reconnect lane, retries) is as shipped. Prints the figures
and the load average: the machine is shared.
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import statistics
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.bench_campaign import (  # noqa: E402
    ADMIN,
    OPERATOR,
    start_agent,
    start_coordinator,
    start_simulator,
    stop,
    wait,
)
from shared.broker import MosquittoBroker  # noqa: E402

DONE = ("completed_disconnected", "completed_connected", "completed_armed", "failed", "expired",
        "cancelled", "reported")


def meter(line: int, n: int) -> str:
    return f"M{line:02d}-{n:03d}"  # bench_campaign's names


class Run:
    def __init__(self, http: httpx.Client, database: Path) -> None:
        self.http = http
        self.database = database

    def order(self, meter_id: str, action: str) -> str:
        reason = "losses" if action == "disconnect" else "payment_restored"
        body = {"meter_id": meter_id, "action": action, "reason": reason,
                "special": action == "disconnect"}
        answer = self.http.post("/api/v1/orders", json=body, headers=OPERATOR)
        answer.raise_for_status()
        item = answer.json()["item"]
        if not item["accepted"]:
            raise SystemExit(f"{action} of {meter_id} refused: {item}")
        return str(item["order_id"])

    def rows(self, ids: list[str]) -> list[tuple[str, str, str | None]]:
        marks = ",".join("?" * len(ids))
        with sqlite3.connect(f"file:{self.database}?mode=ro", uri=True) as db:
            return list(db.execute(
                f"SELECT state, created_at, finished_at FROM orders WHERE id IN ({marks})", ids))

    def wait_done(self, ids: list[str], timeout: float, what: str) -> None:
        wait(lambda: all(state in DONE for state, _, _ in self.rows(ids)), timeout, what)

    def latencies(self, ids: list[str]) -> list[float]:
        out = []
        for _state, created, finished in self.rows(ids):
            assert finished is not None
            out.append((datetime.fromisoformat(finished)
                        - datetime.fromisoformat(created)).total_seconds())
        return out

    def steps(self, ids: list[str]) -> dict[str, float]:
        """Mean seconds from acceptance to dispatch, dispatch to the agent's receipt at
        the coordinator, and dispatch to the result (from the orders' timelines)."""
        marks = ",".join("?" * len(ids))
        with sqlite3.connect(f"file:{self.database}?mode=ro", uri=True) as db:
            rows = list(db.execute(
                f"SELECT o.id, e.event, e.at, o.created_at, o.finished_at FROM order_events e "
                f"JOIN orders o ON o.id = e.order_id WHERE o.id IN ({marks}) "
                "AND e.event IN ('dispatch', 'deliver')", ids))
        at: dict[str, dict[str, datetime]] = {}
        for oid, event, when, created, finished in rows:
            at.setdefault(oid, {"created": datetime.fromisoformat(created),
                                "finished": datetime.fromisoformat(finished)})
            at[oid][event] = datetime.fromisoformat(when)

        def mean(a: str, b: str) -> float:
            spans = [(t[b] - t[a]).total_seconds() for t in at.values() if a in t and b in t]
            return statistics.fmean(spans) if spans else float("nan")

        return {"accepted->dispatched": mean("created", "dispatch"),
                "dispatched->receipt": mean("dispatch", "deliver"),
                "dispatched->result": mean("dispatch", "finished")}

    def outcomes(self, ids: list[str]) -> dict[str, int]:
        counts: dict[str, int] = {}
        with sqlite3.connect(f"file:{self.database}?mode=ro", uri=True) as db:
            marks = ",".join("?" * len(ids))
            for (state,) in db.execute(
                    f"SELECT coalesce(final_state, state) FROM orders WHERE id IN ({marks})", ids):
                counts[state] = counts.get(state, 0) + 1
        return counts


def p(values: list[float], q: float) -> float:
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[round(q * 100) - 1]


def measure(args: argparse.Namespace) -> dict[str, Any]:
    procs: list[Any] = []
    lines, total = args.lines, args.lines * args.meters
    chosen = [meter(line, args.meters - 1 - k) for k in range(args.reconnects)
              for line in range(lines)]
    campaign = [meter(line, n) for n in range(args.meters - args.reconnects)
                for line in range(lines)]
    with tempfile.TemporaryDirectory(prefix="rcd-reconnect-") as tmp, MosquittoBroker() as broker:
        work = Path(tmp)
        try:
            sim, table = start_simulator(work, lines, args.meters)
            procs.append(sim)
            paths = {m["line_id"]: m["serial_path"] for m in table["meters"]}
            server, base, database, pub = start_coordinator(work, broker, False)
            procs.append(server)
            for n, line in enumerate(sorted(paths)):
                procs.append(start_agent(work, broker, pub, f"DC{n:02d}", line, paths[line]))
            with httpx.Client(base_url=base, timeout=120) as http:
                run = Run(http, database)
                wait(lambda: http.get("/ready").status_code == 200, 60, "the coordinator")
                csv = "meter_id,concentrator_id,line_id,hdlc_address\n" + "".join(
                    f"{meter(line, n)},DC{line:02d},L{line:02d},{17 + n}\n"
                    for line in range(lines) for n in range(args.meters))
                http.post("/api/v1/meters/import", content=csv,
                          headers={**ADMIN, "Content-Type": "text/csv"}).raise_for_status()

                def tables_in() -> bool:
                    rows = http.get("/api/v1/concentrators", headers=OPERATOR).json()
                    return len(rows) == lines and all(
                        c["online"] and c["agent_table_generation"] == c["table_generation"]
                        for c in rows)

                wait(tables_in, 180, "every agent online with its meter table")
                setup = [run.order(m, "disconnect") for m in chosen]
                run.wait_done(setup, 300, "the set-up disconnects")
                idle = []
                for m in chosen:  # one at a time: nothing else on the line
                    idle.append(run.order(m, "connect"))
                    run.wait_done(idle[-1:], 120, f"the idle reconnect of {m}")
                setup = [run.order(m, "disconnect") for m in chosen]
                run.wait_done(setup, 300, "the second set-up disconnects")

                before = httpx.get(f"{table['control_url']}/lines").json()
                body = {"orders": [{"meter_id": m, "action": "disconnect", "reason": "losses",
                                    "special": True} for m in campaign]}
                started = time.perf_counter()
                answer = http.post("/api/v1/orders/batch", json=body, headers=OPERATOR)
                answer.raise_for_status()
                batch_id = answer.json()["batch_id"]
                time.sleep(args.warmup)  # every line busy, every agent queue filled
                loaded = []
                for m in chosen:
                    loaded.append(run.order(m, "connect"))
                    time.sleep(args.every)
                reconnects_sent = time.perf_counter() - started
                run.wait_done(loaded, 600, "the reconnects during the campaign")
                with sqlite3.connect(f"file:{database}?mode=ro", uri=True) as db:
                    campaign_ids = [row[0] for row in db.execute(
                        "SELECT id FROM orders WHERE batch_id = ?", (batch_id,))]
                run.wait_done(campaign_ids, args.timeout, "the campaign")
                elapsed = time.perf_counter() - started
                after = httpx.get(f"{table['control_url']}/lines").json()
                carried = len(campaign_ids) + len(loaded)
                channel = sum(after[ln]["channel_time_s"] - before[ln]["channel_time_s"]
                              for ln in after)
                return {
                    "total": total, "campaign": len(campaign_ids), "elapsed": elapsed,
                    "reconnects_sent_by": reconnects_sent,
                    "idle": run.latencies(idle), "loaded": run.latencies(loaded),
                    "steps": {"idle": run.steps(idle), "loaded": run.steps(loaded)},
                    "session_s": channel / carried,
                    "outcomes": run.outcomes(campaign_ids + loaded),
                }
        finally:
            for proc in reversed(procs):
                stop(proc)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lines", type=int, default=4, help="concentrators, one PLC line each")
    parser.add_argument("--meters", type=int, default=500, help="meters per line")
    parser.add_argument("--reconnects", type=int, default=5, help="reconnected meters per line")
    parser.add_argument("--every", type=float, default=2.0, help="seconds between reconnects")
    parser.add_argument("--warmup", type=float, default=10.0,
                        help="seconds of campaign before the first reconnect")
    parser.add_argument("--timeout", type=float, default=7200)
    args = parser.parse_args()
    if args.reconnects >= args.meters:
        parser.error("--reconnects must be fewer than --meters")
    load_start = os.getloadavg()
    r = measure(args)
    idle, loaded = sorted(r["idle"]), sorted(r["loaded"])
    goal = p(idle, 0.95) + r["session_s"]
    print(f"\n{args.lines} concentrators x {args.meters} meters = {r['total']} meters, PLC model "
          "20 ms/frame + 9600 bit/s; disconnect rate limit and approval lifted")
    print(f"campaign: {r['campaign']} disconnects in {r['elapsed']:.1f} s; "
          f"{len(loaded)} reconnects injected from {args.warmup:.0f} s to "
          f"{r['reconnects_sent_by']:.0f} s into it; outcomes {r['outcomes']}")
    print(f"one DLMS session on the line (measured, channel s per order): {r['session_s']:.3f} s")
    print(f"{'':24}{'n':>4}{'p50 s':>9}{'p95 s':>9}{'max s':>9}")
    for name, values in (("reconnects, idle fleet", idle), ("during the campaign", loaded)):
        print(f"{name:24}{len(values):4d}{p(values, 0.5):9.3f}{p(values, 0.95):9.3f}"
              f"{max(values):9.3f}")
    for name, steps in r["steps"].items():
        print(f"  mean steps, {name}: " + ", ".join(f"{k} {v:.3f} s" for k, v in steps.items()))
    verdict = "met" if p(loaded, 0.95) <= goal else "NOT met"
    print(f"goal: campaign p95 <= idle p95 + one session = {goal:.3f} s: {verdict}")
    print(f"load average {load_start[0]:.2f} at start, {os.getloadavg()[0]:.2f} at the end "
          f"({os.cpu_count()} cores, shared with other work)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
