"""Coordinator throughput: orders/s through the REST batch route (validated,
stored in SQLite, signed, published with QoS 1 and acknowledged by mosquitto)
next to the raw paho -> mosquitto QoS 1 publish rate measured in the same run.

    .venv/bin/python bench/bench_central.py [--orders 20000] [--batch 1000] [--rounds 3]

Goal (issue 5): >= 2,000 orders/s and a ratio >= 0.3 on a 2-core machine.
Both runs use the shipped mosquitto configuration; the orders go to 100
concentrators with no agent connected (the broker acknowledges and drops them),
so the figure is the coordinator's own cost. The raw rate is measured before and
after every coordinator round; the figures compared are the median coordinator
round and the mean raw rate.
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from shared import topics
from shared.broker import COORDINATOR_USER, MosquittoBroker, free_port
from shared.signing import generate_keypair

ROOT = Path(__file__).resolve().parent.parent
CONCENTRATORS = 100
TOKEN = {"Authorization": "Bearer dev-operator"}
ADMIN = {"Authorization": "Bearer dev-admin"}


def raw_publish_rate(broker: MosquittoBroker, count: int, payload: bytes) -> float:
    """QoS 1 publishes with PUBACK, from one paho client, as fast as it goes."""
    client = paho.Client(CallbackAPIVersion.VERSION2, client_id="bench-raw", protocol=paho.MQTTv5)
    client.username_pw_set(COORDINATOR_USER, broker.password)
    client.max_inflight_messages_set(1000)
    client.max_queued_messages_set(0)
    client.connect(broker.host, broker.port)
    client.loop_start()
    try:
        time.sleep(0.3)
        started = time.perf_counter()
        infos = [
            client.publish(topics.commands(f"bc{n % CONCENTRATORS}"), payload, qos=1)
            for n in range(count)
        ]
        for info in infos:
            info.wait_for_publish(60)
        elapsed = time.perf_counter() - started
        assert all(i.is_published() for i in infos)
        return count / elapsed
    finally:
        client.disconnect()
        client.loop_stop()


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (all its threads), from /proc."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def central_rate(
    broker: MosquittoBroker, orders: int, batch: int, clients: int, work: Path
) -> tuple[float, list[float], int, float]:
    """The coordinator runs as its own process (``rcd central run``), as in production."""
    private_pem, _ = generate_keypair()
    key_path = work / "coordinator.key"
    key_path.write_bytes(private_pem)
    database = work / "bench.sqlite3"
    port = free_port()
    env = {
        **os.environ,
        "RCD_ENVIRONMENT": "test",
        "RCD_DATABASE_URL": f"sqlite:///{database}",
        "RCD_MQTT_HOST": broker.host,
        "RCD_MQTT_PORT": str(broker.port),
        "RCD_MQTT_PASSWORD": broker.password,
        "RCD_SIGNING_KEY_PATH": str(key_path),
        "RCD_MAX_INFLIGHT_PER_CONCENTRATOR": "1000000",
        "RCD_DISCONNECTS_PER_MINUTE": "10000000",
        "RCD_APPROVAL_THRESHOLD": "10000000",
        "RCD_SWEEP_INTERVAL_S": "3600",
    }
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "shared.cli",
            "central",
            "run",
            "--port",
            str(port),
            "--log-level",
            "warning",
        ],
        env=env,
        cwd=ROOT,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        with httpx.Client(base_url=base, timeout=120) as http:
            _wait_ready(http, server)
            csv = "meter_id,concentrator_id,line_id,hdlc_address\n" + "".join(
                f"bm{n},bc{n % CONCENTRATORS},l1,{16 + n // CONCENTRATORS % 4000}\n"
                for n in range(orders)
            )
            answer = http.post(
                "/api/v1/meters/import", content=csv, headers={**ADMIN, "Content-Type": "text/csv"}
            )
            answer.raise_for_status()
            _wait_tables_pushed(http)  # the signed meter tables go out first
            batches = [
                {
                    "orders": [
                        {
                            "meter_id": f"bm{n}",
                            "action": "disconnect",
                            "reason": "losses",
                            "special": True,
                        }
                        for n in range(start, min(start + batch, orders))
                    ]
                }
                for start in range(0, orders, batch)
            ]
            per_batch: list[float] = []

            def send(bodies: list[dict[str, object]]) -> None:
                with httpx.Client(base_url=base, timeout=120) as own:
                    for body in bodies:
                        t0 = time.perf_counter()
                        answer = own.post("/api/v1/orders/batch", json=body, headers=TOKEN)
                        answer.raise_for_status()
                        per_batch.append(time.perf_counter() - t0)
                        if answer.json()["refused"]:
                            raise SystemExit(f"refused orders in the bench: {answer.text[:300]}")

            cpu_before = _cpu_seconds(server.pid)
            started = time.perf_counter()
            with ThreadPoolExecutor(clients) as pool:
                for future in [pool.submit(send, batches[k::clients]) for k in range(clients)]:
                    future.result()
            elapsed = time.perf_counter() - started
            cpu_share = (_cpu_seconds(server.pid) - cpu_before) / elapsed
    finally:
        server.terminate()
        server.wait(timeout=30)
    # Every order must have been acknowledged by the broker by now (some may have
    # gone out in the background loop's pass rather than in the request's).
    with sqlite3.connect(database) as db:
        acked = db.execute("SELECT count(*) FROM orders WHERE published_at IS NOT NULL").fetchone()[
            0
        ]
    return orders / elapsed, per_batch, int(acked), cpu_share


def _wait_tables_pushed(http: httpx.Client) -> None:
    for _ in range(600):
        rows = http.get("/api/v1/concentrators", headers=TOKEN).json()
        if len(rows) == CONCENTRATORS and all(
            r["table_pushed_generation"] == r["table_generation"] for r in rows
        ):
            return
        time.sleep(0.1)
    raise SystemExit("meter tables were not pushed")


def _wait_ready(http: httpx.Client, server: subprocess.Popen[bytes]) -> None:
    for _ in range(200):
        if server.poll() is not None:
            raise SystemExit("the coordinator exited at start")
        try:
            if http.get("/ready").status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise SystemExit("the coordinator did not become ready")


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--orders", type=int, default=20_000)
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--clients", type=int, default=2, help="concurrent REST clients")
    parser.add_argument(
        "--rounds", type=int, default=3, help="coordinator runs, each on a fresh database"
    )
    args = parser.parse_args()
    users = [f"bc{n}" for n in range(CONCENTRATORS)]
    # Both rates fall with whatever else the machine is doing: say how busy it was.
    load_before = os.getloadavg()[0]
    rates: list[float] = []
    raws: list[float] = []
    with (
        tempfile.TemporaryDirectory(prefix="rcd-bench-") as tmp,
        MosquittoBroker(users=users) as broker,
    ):
        # a payload of the size of a real signed order command
        sample = b"x" * 720
        raws.append(raw_publish_rate(broker, args.orders, sample))
        for round_number in range(args.rounds):
            work = Path(tmp) / f"round{round_number}"
            work.mkdir()
            rate, per_batch, dispatched, cpu_share = central_rate(
                broker, args.orders, args.batch, args.clients, work
            )
            raws.append(raw_publish_rate(broker, args.orders, sample))
            rates.append(rate)
            print(
                f"round {round_number + 1}: {rate:,.0f} orders/s, acknowledged by the broker "
                f"{dispatched} of {args.orders}, coordinator CPU {cpu_share:.0%} of one core, "
                f"batch latency median {statistics.median(per_batch) * 1000:.0f} ms, "
                f"max {max(per_batch) * 1000:.0f} ms"
            )
            if dispatched != args.orders:
                print("  NOT every order was acknowledged by the broker")
                return 1
    rate = statistics.median(rates)
    raw_mean = statistics.mean(raws)
    ratio = rate / raw_mean
    print(
        f"orders: {args.orders} in batches of {args.batch} from {args.clients} concurrent "
        f"clients, {CONCENTRATORS} concentrators, SQLite, {args.rounds} round(s); "
        f"load average {load_before:.2f} at start, {os.getloadavg()[0]:.2f} at the end "
        f"({os.cpu_count()} cores)"
    )
    print(
        "raw paho->mosquitto QoS1 publish+PUBACK: "
        + ", ".join(f"{r:,.0f}" for r in raws)
        + f"/s (mean {raw_mean:,.0f})"
    )
    print(
        "coordinator REST batch -> validated, stored, signed, published, PUBACK: "
        f"median {rate:,.0f} orders/s (min {min(rates):,.0f}, max {max(rates):,.0f})"
    )
    print(f"ratio coordinator/raw: {ratio:.2f}")
    goal = rate >= 2000 and ratio >= 0.3
    print(f"goal (>= 2,000 orders/s, ratio >= 0.3): {'met' if goal else 'NOT met'}")
    return 0 if goal else 1


if __name__ == "__main__":
    sys.exit(main())
