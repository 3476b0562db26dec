"""What the relay audit costs an order (issue 16): the added latency of an order on a PLC
line under audit, p50/p95, next to the same line without audit, and the audit's measured
share of the line's airtime against its bound.

    .venv/bin/python bench/bench_audit.py [--orders 20] [--meters 8] [--share 0.3] [--quick]

Real parts: a private mosquitto with our configuration, the agent (in this process, so
its auditor's airtime figures can be read), the simulator on one HDLC line over a pty with
the PLC channel model (20 ms a frame, 9.6 kbit/s), real DLMS with HLS-GMAC. Every meter
starts with a history of 60 log rows (its first read is a block transfer). Orders go one
at a time at random moments (0.5 to 3 s apart), so they land in the middle of audit reads;
latency is from publishing the signed order to the stand-in coordinator receiving its
result. Phase 1 runs with ``audit.enabled = false``, phase 2 with the audit on (short
cycle and log poll so that it never stops; after-order reads on). Printed figures, never
asserted; the load average with them.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from edge_agent.agent import EdgeAgent  # noqa: E402
from edge_agent.config import parse_config  # noqa: E402
from firmware_sim.fleet import FleetSpec, LineSpec, MeterSpec  # noqa: E402
from firmware_sim.relay_log import REMOTE_CONNECTION  # noqa: E402
from firmware_sim.runner import RunningFleet, running_fleet  # noqa: E402
from shared.broker import MosquittoBroker  # noqa: E402
from shared.codes import Action  # noqa: E402
from shared.contracts import MeterEntry  # noqa: E402
from tests.edge.fakes import order  # noqa: E402
from tests.edge.helpers import Coordinator, config_dict, make_signer, wait_for  # noqa: E402

SWITCHED_OFF = (
    "protect.require_list (no protect authority in the bench: disconnects run without a "
    "protected list); phase 1: the whole relay audit (audit.enabled = false)"
)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def phase(broker: MosquittoBroker, fleet: RunningFleet, meters: list[str], n_orders: int,
          audit: bool, share: float, rng: random.Random) -> tuple[list[float], dict[str, Any]]:
    work = Path(tempfile.mkdtemp(prefix="bench-audit-"))
    cid = f"conc-ba-{uuid.uuid4().hex[:6]}"
    broker.add_user(cid)
    signer, pub = make_signer(work)
    data = config_dict(work, pub, cid, broker_url=broker.url,
                       lines={"plc1": fleet.serial_path("plc1")})
    data["agent"]["log_level"] = "warning"
    data["executor"].update(dlms_timeout_s=3.0, idle_poll_s=0.2)
    data["audit"] = {"enabled": audit, "cycle_s": 5, "log_poll_s": 3,
                     "max_airtime_share": share, "airtime_window_s": 3600, "idle_poll_s": 0.05}
    agent = EdgeAgent(parse_config(data, environ={}))
    agent.store.import_meters(
        MeterEntry(meter_id=m, transport="hdlc", line_id="plc1", hdlc_address=0x20 + n,
                   keys_ref="default") for n, m in enumerate(meters))
    for m in meters:  # the simulator remembers counters across agents
        seen = fleet.meter(m).last_client_ic
        agent.store.commit_counter(m, max(seen.values(), default=-1) + 1)
    coord = Coordinator(broker, cid, f"coord-{cid}", signer)
    latencies: list[float] = []
    agent.start()
    try:
        wait_for(lambda: agent.link.subscribed, what="agent subscribed")
        time.sleep(2.0 if audit else 0.2)  # the audit under way before the first order
        started = time.monotonic()
        for n in range(n_orders):
            time.sleep(rng.uniform(0.5, 3.0))
            meter = meters[n % len(meters)]
            action = Action.DISCONNECT if (n // len(meters)) % 2 == 0 else Action.CONNECT
            oid = f"o-{cid}-{n}"
            sent = time.monotonic()
            coord.publish(signer.sign(order(oid, meter, action, concentrator_id=cid,
                                            deadline_s=120)))
            coord.result(oid, timeout=60)
            latencies.append(time.monotonic() - sent)
        elapsed = time.monotonic() - started
        figures: dict[str, Any] = {"elapsed_s": elapsed}
        if agent.auditor is not None:
            air = agent.auditor.airtime("line:plc1")
            since = time.monotonic() - elapsed
            busy = sum(end - max(start, since) for start, end in air.busy if end > since)
            figures.update(share=busy / elapsed, reads=dict(agent.auditor.reads),
                           reports=len(coord.relay_reports))
    finally:
        agent.stop()
        coord.close()
    return latencies, figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--orders", type=int, default=20)
    parser.add_argument("--meters", type=int, default=8)
    parser.add_argument("--share", type=float, default=0.3, help="audit.max_airtime_share")
    parser.add_argument("--quick", action="store_true", help="6 orders on 4 meters")
    args = parser.parse_args()
    if args.quick:
        args.orders, args.meters = 6, 4
    meters = [f"BA{n:02d}" for n in range(args.meters)]
    specs = tuple(MeterSpec(m, "hdlc", line_id="plc1", hdlc_address=0x20 + n, control_mode=2,
                            max_pdu=256) for n, m in enumerate(meters))
    line = LineSpec("plc1", latency_s=0.02, bit_rate=9600)
    print(f"relay audit bench: {args.orders} orders on {args.meters} meters of one PLC line "
          f"(20 ms a frame, 9.6 kbit/s), audit bound {args.share:.0%} of the line")
    print(f"switched off: {SWITCHED_OFF}")
    with MosquittoBroker() as broker, running_fleet(FleetSpec(meters=specs, lines=(line,))) as fleet:
        for m in meters:
            for _ in range(60):
                fleet.meter(m).write_log(REMOTE_CONNECTION)
        base, _ = phase(broker, fleet, meters, args.orders, False, args.share, random.Random(1))
        under, figures = phase(broker, fleet, meters, args.orders, True, args.share,
                               random.Random(1))
    b50, b95 = percentile(base, 0.5), percentile(base, 0.95)
    u50, u95 = percentile(under, 0.5), percentile(under, 0.95)
    print(f"order latency without audit: p50 {b50:.3f} s  p95 {b95:.3f} s  "
          f"(mean {statistics.mean(base):.3f} s)")
    print(f"order latency under audit:   p50 {u50:.3f} s  p95 {u95:.3f} s  "
          f"(mean {statistics.mean(under):.3f} s)")
    print(f"added by the audit:          p50 {u50 - b50:+.3f} s  p95 {u95 - b95:+.3f} s")
    print(f"audit airtime share of the line: {figures.get('share', 0):.1%} (bound "
          f"{args.share:.0%}: {'within' if figures.get('share', 0) <= args.share else 'OVER'}) "
          f"over {figures['elapsed_s']:.1f} s; reads {figures.get('reads')}, "
          f"reports {figures.get('reports')}")
    print(f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
