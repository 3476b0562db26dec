"""Coordinator throughput: orders/s from intake (REST batch route, or SOAP
``CreateEndDeviceControls`` as Legacy sends it) until every order is validated,
stored, signed, published with QoS 1 and acknowledged by mosquitto, next to the raw
paho -> mosquitto QoS 1 publish rate measured in the same run; on SQLite and on
PostgreSQL, with and without a history of finished orders in the database.

    .venv/bin/python bench/bench_central.py [--db sqlite,postgres] [--via rest,soap]
        [--history 0,200000] [--orders 20000] [--batch 1000] [--quick] [--replicas N]

Goals (issues 5 and 14): >= 2,000 orders/s and a ratio >= 0.3 on a 2-core machine, on
PostgreSQL, SOAP included.

What is switched off, and why: the rate limits (in-flight cap per concentrator,
disconnects per minute) and the second-person approval threshold are lifted, since they
exist to slow a batch down and would measure themselves; the background sweep runs
every hour, so what is measured is the intake's own dispatch (REST: in the request;
SOAP: the dispatcher woken by the request); no agent is connected (the broker
acknowledges and drops the commands), so the figure is the coordinator's own cost.
Everything else is on: validation, signing, the outbox, timeline events, PUBACK waits.
The history (finished orders with three timeline events each, on the same meters) is
bulk-inserted after the coordinator has migrated its database. The raw rate is measured
before and after every run; each run's ratio is to the mean of its two neighbours.

``--replicas N`` runs the production shape of more than one coordinator: N ``rcd central
run`` processes on the same database and broker, each with its own port and its own broker
account (``rcd-central-<n>``, which the broker makes its client id), the same share group;
the first one migrates the database before the others start. The requests go round-robin
over the replicas, as a load balancer would send them; every replica's dispatcher claims
from the same table (an advisory lock and SKIP LOCKED), so a replica may publish orders
another one accepted. Printed per replica: its CPU, the orders it published (its
``rcd_commands_published_total``) and their rate, and orders per CPU-second.
"""

from __future__ import annotations

import argparse
import base64
import itertools
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion
from sqlalchemy import Engine, create_engine, text

from shared import topics
from shared.broker import COORDINATOR_USER, MosquittoBroker, free_port
from shared.signing import generate_keypair

ROOT = Path(__file__).resolve().parent.parent
CONCENTRATORS = 100
TOKEN = {"Authorization": "Bearer dev-operator"}
ADMIN = {"Authorization": "Bearer dev-admin"}
POSTGRES_ADMIN = os.environ.get("RCD_BENCH_POSTGRES", "postgresql://postgres@127.0.0.1:5432/postgres")
RAW_CHUNK = 50_000  # paho's message ids wrap at 65,535: publish and wait in chunks below it


def raw_publish_rate(broker: MosquittoBroker, count: int, payload: bytes) -> float:
    """QoS 1 publishes with PUBACK, from one paho client, as fast as it goes."""
    client = paho.Client(CallbackAPIVersion.VERSION2, client_id="bench-raw", protocol=paho.MQTTv5)
    client.username_pw_set(COORDINATOR_USER, broker.password)
    # the same window as the coordinator's link: the broker's Receive Maximum
    client.max_inflight_messages_set(100)
    client.max_queued_messages_set(0)
    client.connect(broker.host, broker.port)
    client.loop_start()
    try:
        time.sleep(0.3)
        started = time.perf_counter()
        for first in range(0, count, RAW_CHUNK):
            infos = [
                client.publish(topics.commands(f"bc{n % CONCENTRATORS}"), payload, qos=1)
                for n in range(first, min(first + RAW_CHUNK, count))
            ]
            for info in infos:
                info.wait_for_publish(60)
            assert all(i.is_published() for i in infos)
        elapsed = time.perf_counter() - started
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


def _postgres_cpu() -> float:
    """CPU time of every postgres process of the machine (the server may serve others)."""
    total = 0.0
    for comm in Path("/proc").glob("[0-9]*/comm"):
        try:
            if comm.read_text().strip() == "postgres":
                total += _cpu_seconds(int(comm.parent.name))
        except (OSError, ValueError):
            continue
    return total


def _backends_cpu(db: Database) -> float:
    """CPU time of the PostgreSQL backends connected to the run's database (the
    coordinators' pools: they live through the run)."""
    if db.kind != "postgres":
        return 0.0
    with db.engine.connect() as conn:
        pids = conn.execute(text(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
            "AND pid <> pg_backend_pid()")).scalars().all()
    return sum(_cpu_seconds(int(pid)) for pid in pids)


def _others_cpu(broker: MosquittoBroker, db: Database) -> dict[str, float]:
    """CPU seconds so far of what shares the cores with the coordinators."""
    return {
        "postgres backends of the run": _backends_cpu(db),
        "every postgres process": _postgres_cpu(),
        "mosquitto": _cpu_seconds(broker.pid) if broker.pid else float("nan"),
        "bench": time.process_time(),  # this process: the SOAP clients, the polling
    }


@dataclass
class Run:
    db: str
    via: str
    history: int
    rate: float = 0.0
    published: int = 0
    cpu_share: float = 0.0
    batch_ms: float = 0.0
    intake_s: float = 0.0  # until the last request was answered
    elapsed_s: float = 0.0  # until every order was published
    raw: float = 0.0
    load: float = 0.0
    replicas: list[Replica] = field(default_factory=list)
    others_cpu: dict[str, float] = field(default_factory=dict)


@dataclass
class Replica:
    """One coordinator process of a run, and what it did in the timed part."""

    name: str
    port: int
    server: subprocess.Popen[bytes]
    cpu_s: float = 0.0
    published: int = 0
    counters: dict[str, float] = field(default_factory=dict)


class Database:
    """A fresh database for one run: a SQLite file, or a PostgreSQL database dropped after."""

    def __init__(self, kind: str, work: Path) -> None:
        self.kind = kind
        self.name = ""
        if kind == "sqlite":
            self.url = f"sqlite:///{work / 'bench.sqlite3'}"
        else:
            import psycopg

            self.name = f"rcd_bench_{uuid.uuid4().hex[:10]}"
            with psycopg.connect(POSTGRES_ADMIN, autocommit=True) as conn:
                conn.execute(f'CREATE DATABASE "{self.name}"')
            base = POSTGRES_ADMIN.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://")
            self.url = f"{base}/{self.name}"
        self.engine: Engine = create_engine(self.url)

    def close(self) -> None:
        self.engine.dispose()
        if self.name:
            import psycopg

            with psycopg.connect(POSTGRES_ADMIN, autocommit=True) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')


def seed_history(db: Database, count: int, meters: int) -> float:
    """``count`` finished orders (three events each) on the bench's meters, bulk-inserted."""
    from sqlalchemy.orm import Session

    from central import bulk
    from central.models import Order, OrderEvent

    if count <= 0:
        return 0.0
    started = time.perf_counter()
    at = datetime.now(UTC) - timedelta(days=30)
    orders_table: Any = Order.__table__
    events_table: Any = OrderEvent.__table__
    with Session(db.engine) as session:
        for first in range(0, count, 20_000):
            rows = []
            events = []
            for n in range(first, min(first + 20_000, count)):
                oid = f"h{n:08d}"
                rows.append({
                    "id": oid, "meter_id": f"bm{n % meters}", "concentrator_id": f"bc{n % CONCENTRATORS}",
                    "action": "disconnect", "reason": "losses", "special": True, "priority": 5,
                    "state": "completed_disconnected", "created_by": "bench", "created_at": at,
                    "updated_at": at, "deadline": at, "dispatched_at": at, "published_at": at,
                    "finished_at": at, "command_id": "c" + oid, "attempts": 1,
                    "energy_value": 1.0, "energy_unit": "Wh",
                })
                for step, (event, to) in enumerate(
                    (("receive", "received"), ("dispatch", "dispatched"),
                     ("complete_disconnected", "completed_disconnected")), start=2,
                ):
                    events.append({"order_id": oid, "at": at, "step": step, "actor": "bench",
                                   "event": event, "from_state": None, "to_state": to,
                                   "detail": "history"})
            bulk.insert_rows(session, orders_table, rows)
            bulk.insert_rows(session, events_table, events)
            session.commit()
    if db.kind == "postgres":
        with db.engine.connect() as conn:
            conn.execute(text("ANALYZE"))
            conn.commit()
    return time.perf_counter() - started


def soap_body(meters: list[str], n: int) -> bytes:
    devices = "".join(
        f"<edc:EndDevices><edc:Names><edc:name>{m}</edc:name></edc:Names></edc:EndDevices>"
        for m in meters
    )
    return (
        '<soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/" '
        'xmlns:m="http://iec.ch/TC57/2011/EndDeviceControlsMessage" '
        'xmlns:msg="http://iec.ch/TC57/2011/schema/message" '
        'xmlns:edc="http://iec.ch/TC57/2011/EndDeviceControls#">'
        "<soapenv:Header/><soapenv:Body><m:CreateEndDeviceControls>"
        "<m:Header><msg:Verb>create</msg:Verb><msg:Noun>EndDeviceControls</msg:Noun>"
        f"<msg:Source>LEGACY</msg:Source><msg:MessageID>bench-{uuid.uuid4().hex}-{n}</msg:MessageID>"
        "</m:Header><m:Request><msg:Option><msg:name>special</msg:name><msg:value>true</msg:value>"
        "</msg:Option></m:Request><m:Payload><edc:EndDeviceControls><edc:EndDeviceControl>"
        f"<edc:issuerID>LEGACY</edc:issuerID><edc:issuerTrackingID>B-{n}</edc:issuerTrackingID>"
        '<edc:reason>losses</edc:reason><edc:EndDeviceControlType ref="3.31.0.23"/>'
        f"{devices}</edc:EndDeviceControl></edc:EndDeviceControls></m:Payload>"
        "</m:CreateEndDeviceControls></soapenv:Body></soapenv:Envelope>"
    ).encode()


_SOAP_OK = re.compile(rb"<(\w+:)?Result>OK</")
SOAP_AUTH = {
    "Authorization": "Basic " + base64.b64encode(b"dev-operator:dev-operator").decode(),
    "Content-Type": "text/xml; charset=utf-8",
}


def _unpublished(db: Database) -> bool:
    """Is an order still waiting for its PUBACK? An EXISTS stops at the first such row,
    where a count read the whole table every time; still a scan of the orders once most
    are published (8 ms at 20,000), so it is asked every 250 ms (:data:`POLL_S`), and
    the end of a run is read from the orders themselves (:func:`_last_published`)."""
    with db.engine.connect() as conn:
        return bool(conn.execute(text(
            "SELECT EXISTS (SELECT 1 FROM orders WHERE state = 'validated' "
            "OR (state = 'dispatched' AND published_at IS NULL))"
        )).scalar_one())  # SQLite answers 1, PostgreSQL True


# Polled every 50 ms, the EXISTS above took 0.46 s of PostgreSQL's CPU in a run's last
# 2-3 s, from the cores the coordinators measured share.
POLL_S = 0.25


def _last_published(db: Database) -> datetime:
    """When the coordinators recorded the last PUBACK of the run's orders (they stamp
    ``published_at`` once the broker acknowledged), whatever the polling interval."""
    from sqlalchemy import func, select

    from central.models import Order

    with db.engine.connect() as conn:  # the ORM's column type reads SQLite's text too
        last = conn.execute(
            select(func.max(Order.published_at, type_=Order.published_at.type))
            .where(Order.created_by != "bench")
        ).scalar_one()
    if last is None:
        raise SystemExit("no order of the run was published")
    return last


def replica_account(n: int) -> str:
    """The broker account of the n-th replica (from 0): rcd-central-1, -2, ..."""
    return f"rcd-central-{n + 1}"


def _start_replicas(
    count: int, env: dict[str, str], work: Path
) -> list[Replica]:
    """``rcd central run`` ``count`` times, as production runs replicas: each its own port
    and broker account (the client id), the same database, broker and share group. The
    first migrates the database; the others start once it is ready."""
    replicas: list[Replica] = []
    try:
        for n in range(count):
            port = free_port()
            own = {**env, "RCD_MQTT_USERNAME": replica_account(n), "RCD_MQTT_SHARE_GROUP": "central"}
            log = open(work / f"central-{n + 1}.log", "ab")
            server = subprocess.Popen(
                [sys.executable, "-m", "shared.cli", "central", "run", "--port", str(port),
                 "--log-level", "warning"],
                env=own, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
            )
            log.close()
            replicas.append(Replica(replica_account(n), port, server))
            if n == 0:
                _wait_ready(replicas[0])
        for replica in replicas[1:]:
            _wait_ready(replica)
    except BaseException:
        _stop_replicas(replicas, work)
        raise
    return replicas


def _stop_replicas(replicas: list[Replica], work: Path) -> None:
    for replica in replicas:
        replica.server.terminate()
    for replica in replicas:
        replica.server.wait(timeout=30)
        text_value = (work / f"{replica.name.replace('rcd-', '')}.log").read_text(errors="replace")
        if "ERROR" in text_value or "Traceback" in text_value:
            print(f"  {replica.name} logged errors:\n" + text_value[-2000:], flush=True)


_COUNTERS = {
    "published": re.compile(r'^rcd_commands_published_total\{kind="order"\} (\S+)$', re.M),
    "lock_wait_s": re.compile(r'^rcd_claim_lock_seconds_sum\{phase="wait"\} (\S+)$', re.M),
    "lock_held_s": re.compile(r'^rcd_claim_lock_seconds_sum\{phase="held"\} (\S+)$', re.M),
    "claims": re.compile(r'^rcd_claim_lock_seconds_count\{phase="held"\} (\S+)$', re.M),
}


def _counters(replica: Replica) -> dict[str, float]:
    """This replica's own counters: orders its dispatcher published, and the time its
    claims waited for the replicas' claim lock and held it."""
    answer = httpx.get(f"{_url(replica)}/metrics", headers=TOKEN, timeout=30)
    answer.raise_for_status()
    found = {name: pattern.search(answer.text) for name, pattern in _COUNTERS.items()}
    return {name: float(m.group(1)) if m else 0.0 for name, m in found.items()}


def central_rate(broker: MosquittoBroker, run: Run, args: argparse.Namespace, work: Path) -> None:
    """The coordinators run as their own processes (``rcd central run``), as in production."""
    private_pem, _ = generate_keypair()
    key_path = work / "coordinator.key"
    key_path.write_bytes(private_pem)
    db = Database(run.db, work)
    env = {
        **os.environ,
        "RCD_ENVIRONMENT": "test",
        "RCD_DATABASE_URL": db.url,
        "RCD_MQTT_HOST": broker.host,
        "RCD_MQTT_PORT": str(broker.port),
        "RCD_MQTT_PASSWORD": broker.password,
        "RCD_SIGNING_KEY_PATH": str(key_path),
        "RCD_MAX_INFLIGHT_PER_CONCENTRATOR": "1000000",
        "RCD_DISCONNECTS_PER_MINUTE": "10000000",
        "RCD_APPROVAL_THRESHOLD": "10000000",
        "RCD_ANOMALY__ENABLED": "false",  # one source's 20,000 would be quarantined (issue 17)
        "RCD_SWEEP_INTERVAL_S": "3600",
        "RCD_SOAP_NOTIFIER_ENABLED": "false",
    }
    replicas = _start_replicas(args.replicas, env, work)
    run.replicas = replicas
    try:
        with httpx.Client(base_url=_url(replicas[0]), timeout=300) as http:
            _prepare(http, db, run, args.orders)
        _timed(replicas, db, run, args, broker)
    finally:
        _stop_replicas(replicas, work)
        db.close()


def _url(replica: Replica) -> str:
    return f"http://127.0.0.1:{replica.port}"


def _prepare(http: httpx.Client, db: Database, run: Run, orders: int) -> None:
    """The meter registry (its tables pushed to the agents), and the history."""
    csv = "meter_id,concentrator_id,line_id,hdlc_address\n" + "".join(
        f"bm{n},bc{n % CONCENTRATORS},l1,{16 + n // CONCENTRATORS % 4000}\n"
        for n in range(orders)
    )
    answer = http.post(
        "/api/v1/meters/import", content=csv, headers={**ADMIN, "Content-Type": "text/csv"}
    )
    answer.raise_for_status()
    _wait_tables_pushed(http)  # the signed meter tables go out first
    seeded = seed_history(db, run.history, orders)
    if run.history:
        print(f"  seeded {run.history:,} finished orders in {seeded:.1f} s", flush=True)


def _send(own: httpx.Client, via: str, chunk: list[int]) -> float:
    """One request of ``chunk``'s meters on the client ``own`` (one replica's); its
    latency."""
    t0 = time.perf_counter()
    if via == "rest":
        body = {"orders": [{"meter_id": f"bm{n}", "action": "disconnect",
                            "reason": "losses", "special": True} for n in chunk]}
        answer = own.post("/api/v1/orders/batch", json=body, headers=TOKEN)
        answer.raise_for_status()
        if answer.json()["refused"]:
            raise SystemExit(f"refused orders: {answer.text[:300]}")
    else:
        answer = own.post("/soap/cim", content=soap_body(
            [f"bm{n}" for n in chunk], chunk[0]), headers=SOAP_AUTH)
        if answer.status_code != 200 or not _SOAP_OK.search(answer.content):
            raise SystemExit(f"SOAP refused: {answer.text[:500]}")
    return time.perf_counter() - t0


def _timed(
    replicas: list[Replica], db: Database, run: Run, args: argparse.Namespace,
    broker: MosquittoBroker,
) -> None:
    """Send every order (requests round-robin over the replicas, as a load balancer would),
    then wait until every one is published."""
    # Each client keeps one HTTP client per replica for the run, as Legacy's SOAP stack
    # keeps its session: a new httpx.Client per request cost the bench 28 ms of CPU each
    # (the TLS context it loads even for plain HTTP), 0.6 s per run on the cores the
    # coordinators measured share.
    with ExitStack() as stack:
        sessions = [
            [stack.enter_context(httpx.Client(base_url=_url(r), timeout=300)) for r in replicas]
            for _ in range(args.clients)
        ]
        _run_clients(replicas, db, run, args, broker, sessions)


def _run_clients(
    replicas: list[Replica], db: Database, run: Run, args: argparse.Namespace,
    broker: MosquittoBroker, sessions: list[list[httpx.Client]],
) -> None:
    """The timed part: each client sends its chunks on its own HTTP clients (``sessions``,
    one per replica), then the wait for the last PUBACK."""
    orders = args.orders
    chunks = [list(range(s, min(s + args.batch, orders))) for s in range(0, orders, args.batch)]
    turn = itertools.count()  # next(): atomic under the GIL, so the clients share it
    per_batch: list[float] = []

    def client(own: list[httpx.Client], mine: list[list[int]]) -> None:
        for chunk in mine:
            per_batch.append(_send(own[next(turn) % len(replicas)], run.via, chunk))

    spies = _start_py_spy(replicas, run, args)
    counters_before = [_counters(r) for r in replicas]
    cpu_before = [_cpu_seconds(r.server.pid) for r in replicas]
    others_before = _others_cpu(broker, db)
    started = time.perf_counter()
    started_at = datetime.now(UTC)
    with ThreadPoolExecutor(args.clients) as pool:
        for future in [pool.submit(client, sessions[k], chunks[k:: args.clients])
                       for k in range(args.clients)]:
            future.result()
    run.intake_s = time.perf_counter() - started
    while _unpublished(db) and time.perf_counter() - started < 600:
        time.sleep(POLL_S)
    # the CPU figures below are taken now: at most POLL_S of idle time later
    elapsed = max(run.intake_s, (_last_published(db) - started_at).total_seconds())
    for replica, before in zip(replicas, cpu_before, strict=True):
        replica.cpu_s = _cpu_seconds(replica.server.pid) - before
    run.others_cpu = {k: v - others_before[k] for k, v in _others_cpu(broker, db).items()}
    for spy in spies:
        spy.send_signal(signal.SIGINT)
        spy.wait(timeout=30)
    for replica, before_counts in zip(replicas, counters_before, strict=True):
        after = _counters(replica)
        replica.counters = {name: after[name] - before_counts[name] for name in after}
        replica.published = int(replica.counters["published"])
    run.cpu_share = sum(r.cpu_s for r in replicas) / elapsed
    run.rate = orders / elapsed
    run.elapsed_s = elapsed
    run.batch_ms = statistics.median(per_batch) * 1000
    with db.engine.connect() as conn:
        run.published = int(conn.execute(text(
            "SELECT count(*) FROM orders WHERE published_at IS NOT NULL "
            "AND created_by <> 'bench'")).scalar_one())


def _start_py_spy(
    replicas: list[Replica], run: Run, args: argparse.Namespace
) -> list[subprocess.Popen[bytes]]:
    """A sampling profile of every coordinator during the timed part (``--py-spy``)."""
    if not args.py_spy:
        return []
    spies = []
    for n, replica in enumerate(replicas):
        suffix = f".{run.via}-{run.db}-{run.history}" + (f"-r{n + 1}" if len(replicas) > 1 else "")
        out = Path(args.py_spy).with_suffix(suffix + ".txt")
        spies.append(subprocess.Popen(
            [args.py_spy_bin, "record", "--pid", str(replica.server.pid), "--format", "raw",
             "--rate", "250", "--nonblocking", "--output", str(out), *args.py_spy_flags],
            stdout=subprocess.DEVNULL))
    time.sleep(1.0)
    return spies



def _wait_tables_pushed(http: httpx.Client) -> None:
    for _ in range(600):
        rows = http.get("/api/v1/concentrators", headers=TOKEN).json()
        if len(rows) == CONCENTRATORS and all(
            r["table_pushed_generation"] == r["table_generation"] for r in rows
        ):
            return
        time.sleep(0.1)
    raise SystemExit("meter tables were not pushed")


def _wait_ready(replica: Replica) -> None:
    for _ in range(300):
        if replica.server.poll() is not None:
            raise SystemExit(f"{replica.name} exited at start")
        try:
            if httpx.get(f"{_url(replica)}/ready", timeout=5).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise SystemExit(f"{replica.name} did not become ready")


SWITCHED_OFF = (
    "switched off: the in-flight cap per concentrator, the disconnects-per-minute limit and "
    "the approval threshold (they exist to slow a batch), the anomaly quarantine (one "
    "source's 20,000 orders would be held), the background sweep (every hour: the intake's "
    "own dispatch is measured), the Legacy notifier, the agents (the broker acknowledges "
    "and drops the commands: the coordinator's own cost)"
)


def _add_replica_account(broker: MosquittoBroker, account: str) -> None:
    """A replica's broker account: the shipped ACL has blocks for the first three."""
    shipped = (ROOT / "deploy" / "mosquitto" / "acl").read_text()
    if f"\nuser {account}\n" in shipped:
        broker.add_user(account)
    else:
        broker.add_coordinator(account)


def _print_replicas(run: Run) -> None:
    """What each coordinator process did: its CPU, what its dispatcher published."""
    if not run.elapsed_s:
        return
    for replica in run.replicas:
        per_cpu = replica.published / replica.cpu_s if replica.cpu_s > 0 else float("nan")
        print(f"    {replica.name}: CPU {replica.cpu_s:.1f} s ({replica.cpu_s / run.elapsed_s:.0%} "
              f"of one core), published {replica.published:,} orders "
              f"({replica.published / run.elapsed_s:,.0f}/s, {per_cpu:,.0f} per CPU-s); "
              f"{replica.counters['claims']:.0f} claims, which waited "
              f"{replica.counters['lock_wait_s']:.2f} s for the claim lock and held it "
              f"{replica.counters['lock_held_s']:.2f} s", flush=True)
    print("    others: " + ", ".join(f"{k} {v:.1f} s" for k, v in run.others_cpu.items())
          + f" of CPU in {run.elapsed_s:.1f} s",
          flush=True)


def _csv(text_value: str) -> list[str]:
    return [part.strip() for part in text_value.split(",") if part.strip()]


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--orders", type=int, default=20_000)
    parser.add_argument("--batch", type=int, default=1000, help="orders per request")
    parser.add_argument("--clients", type=int, default=2, help="concurrent clients")
    parser.add_argument("--db", default="sqlite,postgres")
    parser.add_argument("--via", default="rest,soap")
    parser.add_argument("--history", default="0,200000", help="finished orders seeded first")
    parser.add_argument("--quick", action="store_true",
                        help="5,000 orders and a history of 20,000: a short burst")
    parser.add_argument("--replicas", type=int, default=1,
                        help="coordinator processes on the same database and broker")
    parser.add_argument("--py-spy", metavar="FILE", help="write py-spy raw profiles (FILE.*.txt)")
    parser.add_argument("--py-spy-bin", default="py-spy")
    parser.add_argument("--gil", dest="py_spy_flags", action="append_const", const="--gil",
                        default=[], help="py-spy: count only the thread holding the GIL")
    parser.add_argument("--idle", dest="py_spy_flags", action="append_const", const="--idle",
                        help="py-spy: also count waiting threads")
    args = parser.parse_args()
    if args.quick:
        args.orders = min(args.orders, 5000)
        args.history = ",".join(str(min(int(h), 20_000)) for h in _csv(args.history))
    runs = [Run(db, via, int(h)) for db in _csv(args.db) for h in _csv(args.history)
            for via in _csv(args.via)]
    users = [f"bc{n}" for n in range(CONCENTRATORS)]
    sample = b"x" * 720  # a payload of the size of a real signed order command
    load_start = os.getloadavg()
    failed = False
    broker = MosquittoBroker(users=users)
    for n in range(1, args.replicas):
        _add_replica_account(broker, replica_account(n))
    with tempfile.TemporaryDirectory(prefix="rcd-bench-") as tmp, broker:
        raws = [raw_publish_rate(broker, args.orders, sample)]
        for number, run in enumerate(runs):
            work = Path(tmp) / f"run{number}"
            work.mkdir()
            print(f"run {number + 1}/{len(runs)}: {run.via} on {run.db}, history {run.history:,}",
                  flush=True)
            central_rate(broker, run, args, work)
            raws.append(raw_publish_rate(broker, args.orders, sample))
            run.raw = (raws[-1] + raws[-2]) / 2
            run.load = os.getloadavg()[0]
            ok = run.published == args.orders
            failed |= not ok
            print(
                f"  {run.rate:,.0f} orders/s until every order was published "
                f"({run.published} of {args.orders} acknowledged by the broker), ratio to raw "
                f"{run.rate / run.raw:.2f} (raw {run.raw:,.0f}/s), coordinator CPU "
                f"{run.cpu_share:.0%} of one core, request latency median {run.batch_ms:.0f} ms, "
                f"last answer at {run.intake_s:.1f} s, last PUBACK at {run.elapsed_s:.1f} s, "
                f"load average {run.load:.2f}", flush=True,
            )
            _print_replicas(run)
    print(
        f"\n{args.orders:,} orders per run in requests of {args.batch} from {args.clients} "
        f"clients, {CONCENTRATORS} concentrators; load average {load_start[0]:.2f} at start, "
        f"{os.getloadavg()[0]:.2f} at the end ({os.cpu_count()} cores)"
    )
    print("raw paho->mosquitto QoS1 publish+PUBACK: " + ", ".join(f"{r:,.0f}" for r in raws) + "/s")
    # orders per CPU-second of the coordinator: what it costs, whatever share of the cores
    # a loaded machine left it (the rate alone falls with the load)
    print(f"{'via':<5} {'db':<9} {'history':>8} {'replicas':>8} {'orders/s':>9} {'x raw':>6} "
          f"{'per CPU-s':>9} {'CPU us/order':>12} {'load':>5}")
    for run in runs:
        per_cpu = run.rate / run.cpu_share if run.cpu_share > 0 else float("nan")
        print(f"{run.via:<5} {run.db:<9} {run.history:>8,} {len(run.replicas):>8} "
              f"{run.rate:>9,.0f} {run.rate / run.raw:>6.2f} {per_cpu:>9,.0f} "
              f"{1e6 / per_cpu:>12,.0f} {run.load:>5.2f}")
    print(SWITCHED_OFF)
    goal = all(r.rate >= 2000 and r.rate / r.raw >= 0.3 for r in runs)
    print(f"goal (>= 2,000 orders/s and >= 0.3 x raw in every run): {'met' if goal else 'NOT met'}")
    return 1 if failed or not goal else 0


if __name__ == "__main__":
    sys.exit(main())
