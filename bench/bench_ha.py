"""The three-node NATS cluster next to single-node mosquitto, in one run.

    .venv/bin/python bench/bench_ha.py [--results 5000] [--agents 30] [--skip-campaign]

1. Ingest: ``--agents`` MQTT clients (one per concentrator, each its own user)
   publish ``--results`` result-sized messages with QoS 1, and the coordinator's
   own consumer takes them: on mosquitto ``central.mqtt.MqttLink`` (MQTT 5, shared
   subscription, manual ack), on NATS ``central.jetstream.JetStreamResults`` (the
   durable JetStream consumer, ack after the handler). The handler only counts, so
   the figure is broker + consumer. Agents on NATS are spread over the three nodes.
2. Dispatch ("orders per replica"): ``bench_central.central_rate`` as it is, one
   ``rcd central run`` on SQLite taking ``--orders`` through the REST batch route,
   signing and publishing each with QoS 1 until the broker's PUBACK, to 100
   concentrators; on NATS through the cluster's first node (the same process,
   configured for NATS through its environment).
3. Sessions (concentrators per broker node): ``--sessions`` agents log in with a
   persistent session and subscribe to their commands and meter table (QoS 1), as
   ``rcd edge run`` does, spread over the nodes; seconds until every SUBACK, and
   the memory (RSS) each node holds for them. On NATS every QoS 1 subscription is a
   JetStream consumer replicated on three nodes, the cost that sizes a node.
4. A small campaign: the whole system, every part its own process
   (``tests.fault.system`` on mosquitto, ``tests.ha.system`` on NATS with two
   coordinator replicas), one wave of orders on every meter through SOAP, seconds
   until every order is reported to Legacy. Needs PostgreSQL (as the tests do).

Prints each figure, the ratio NATS/mosquitto and the load average.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from central.settings import Settings  # noqa: E402
from shared import topics  # noqa: E402
from shared.broker import MosquittoBroker  # noqa: E402
from shared.nats_broker import NatsCluster  # noqa: E402

PAYLOAD = b"r" * 900  # about one OrderResult with two attempts and an energy reading


class Counter:
    def __init__(self, expected: int) -> None:
        self.expected = expected
        self.count = 0
        self._lock = threading.Lock()
        self.done = threading.Event()

    def __call__(self, _topic: str, _payload: bytes) -> bool:
        with self._lock:
            self.count += 1
            if self.count >= self.expected:
                self.done.set()
        return True


def publish_from_agents(
    addresses: list[tuple[str, int]], agents: list[str], password: str, total: int, v5: bool
) -> float:
    """Every agent publishes its share with QoS 1; seconds until every PUBACK."""
    clients = []
    for n, agent in enumerate(agents):
        client = paho.Client(
            CallbackAPIVersion.VERSION2, client_id=agent,
            protocol=paho.MQTTv5 if v5 else paho.MQTTv311,
        )
        client.username_pw_set(agent, password)
        client.max_inflight_messages_set(100)
        client.max_queued_messages_set(0)
        client.connect(*addresses[n % len(addresses)])
        client.loop_start()
        clients.append(client)
    time.sleep(1.0)
    started = time.perf_counter()
    infos = [
        clients[n % len(agents)].publish(topics.results(agents[n % len(agents)]), PAYLOAD, qos=1)
        for n in range(total)
    ]
    for info in infos:
        info.wait_for_publish(120)
    elapsed = time.perf_counter() - started
    for client in clients:
        client.disconnect()
        client.loop_stop()
    assert all(i.is_published() for i in infos), "not every result was acknowledged"
    return elapsed


def ingest(kind: str, total: int, agents: list[str]) -> tuple[float, float]:
    """(publish rate, end-to-end rate until the consumer handled every one) per second."""
    from central.jetstream import JetStreamResults
    from central.mqtt import MqttLink

    counter = Counter(total)
    password = "bench-secret"
    with tempfile.TemporaryDirectory(prefix=f"rcd-bench-{kind}-") as tmp:
        if kind == "mosquitto":
            broker = MosquittoBroker(users=agents, password=password, work_dir=Path(tmp)).start()
            addresses = [(broker.host, broker.port)]
            settings = Settings(
                environment="test", mqtt_host=broker.host, mqtt_port=broker.port,
                mqtt_password=password, mqtt_client_id="bench-central",
            )
            consumer: Callable[[], object] = MqttLink(settings, on_result=counter).start().close
            stop: Callable[[], None] = broker.close
        else:
            cluster = NatsCluster(users=agents, password=password, work_dir=Path(tmp)).start()
            addresses = cluster.mqtt_addresses
            settings = Settings(
                environment="test", broker_kind="nats", mqtt_protocol="3.1.1",
                mqtt_password=password, nats_urls=cluster.nats_urls,
                mqtt_brokers=[f"{h}:{p}" for h, p in addresses],
            )
            consumer = JetStreamResults(settings, counter).start().close
            stop = cluster.close
        try:
            started = time.perf_counter()
            publish_s = publish_from_agents(addresses, agents, password, total, kind == "mosquitto")
            if not counter.done.wait(120):
                raise SystemExit(f"{kind}: the consumer got {counter.count} of {total}")
            end_to_end_s = time.perf_counter() - started - 1.0  # less the agents' connect pause
        finally:
            consumer()
            stop()
    return total / publish_s, total / end_to_end_s


def dispatch(kind: str, orders: int) -> float:
    """Orders/s one coordinator takes, signs and gets acknowledged by the broker."""
    from types import SimpleNamespace

    import bench_central

    users = [f"bc{n}" for n in range(bench_central.CONCENTRATORS)]
    with tempfile.TemporaryDirectory(prefix=f"rcd-bench-dispatch-{kind}-") as tmp:
        work = Path(tmp)
        if kind == "mosquitto":
            (work / "broker").mkdir()
            with MosquittoBroker(users=users, work_dir=work / "broker") as broker:
                rate, _, acked, _ = bench_central.central_rate(broker, orders, 500, 2, work)
        else:
            with NatsCluster(users=users, work_dir=work / "nats") as cluster:
                node = cluster.nodes[0]
                first = SimpleNamespace(host=node.host, port=node.mqtt_port, password=cluster.password)
                saved = dict(os.environ)
                os.environ.update(
                    RCD_BROKER_KIND="nats", RCD_MQTT_PROTOCOL="3.1.1",
                    RCD_NATS_URLS=json.dumps(cluster.nats_urls),
                    RCD_MQTT_BROKERS=json.dumps([f"{h}:{p}" for h, p in cluster.mqtt_addresses]),
                )
                try:
                    rate, _, acked, _ = bench_central.central_rate(first, orders, 500, 2, work)
                finally:
                    os.environ.clear()
                    os.environ.update(saved)
    if acked != orders:
        raise SystemExit(f"{kind}: the broker acknowledged {acked} of {orders} orders")
    return rate


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def sessions(kind: str, count: int) -> tuple[float, list[float]]:
    """(sessions/s until every SUBACK, MB of RSS per broker process they added)."""
    agents = [f"DC-{n:05d}" for n in range(count)]
    subscribed = threading.Semaphore(0)
    with tempfile.TemporaryDirectory(prefix=f"rcd-bench-sessions-{kind}-") as tmp:
        if kind == "mosquitto":
            broker = MosquittoBroker(users=agents, password="p", work_dir=Path(tmp)).start()
            addresses = [(broker.host, broker.port)]
            pids = [broker.pid] if broker.pid is not None else []
            stop: Callable[[], None] = broker.close
        else:
            cluster = NatsCluster(users=agents, password="p", work_dir=Path(tmp)).start()
            addresses = cluster.mqtt_addresses
            pids = [n.process.pid for n in cluster.nodes if n.process]
            stop = cluster.close
        before = [_rss_mb(pid) for pid in pids]
        clients = []
        try:
            started = time.perf_counter()
            for n, agent in enumerate(agents):
                client = paho.Client(
                    CallbackAPIVersion.VERSION2, client_id=agent, clean_session=False,
                    protocol=paho.MQTTv311,
                )
                client.username_pw_set(agent, "p")
                client.on_connect = partial(_subscribe_own, agent)
                client.on_subscribe = lambda *_args: subscribed.release()
                client.connect_async(*addresses[n % len(addresses)])
                client.loop_start()
                clients.append(client)
            for _ in agents:
                if not subscribed.acquire(timeout=600):
                    raise SystemExit(f"{kind}: not every session subscribed within 600 s")
            elapsed = time.perf_counter() - started
            added = [_rss_mb(pid) - b for pid, b in zip(pids, before, strict=True)]
        finally:
            for client in clients:
                client.loop_stop()
            stop()
    return count / elapsed, added


def _subscribe_own(agent: str, client: paho.Client, *_args: object) -> None:
    client.subscribe([(topics.commands(agent), 1), (topics.meter_table(agent), 1)])


def campaign(kind: str, tmp: Path) -> tuple[int, float]:
    """(orders, seconds until all reported to Legacy) for one wave on every meter."""
    from tests.conftest import POSTGRES_ADMIN_URL
    from tests.fault.driver import Run
    from tests.fault.system import System
    from tests.ha.system import HaSystem

    kind_of_system = System if kind == "mosquitto" else HaSystem
    with kind_of_system(tmp / kind, POSTGRES_ADMIN_URL) as system:
        run = Run(system, f"bench-{kind}")
        run.pick(per_concentrator=1000)
        started = time.perf_counter()
        run.submit(batch=50, deadline_s=120)
        run.settle(180, quiet_s=0.5)
        elapsed = time.perf_counter() - started
        verdict = run.verdict()
        if not verdict.ok:
            raise SystemExit(f"{kind}: " + "; ".join(verdict.problems[:10]))
        return verdict.orders, elapsed


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--results", type=int, default=5000)
    parser.add_argument("--agents", type=int, default=30)
    parser.add_argument("--orders", type=int, default=5000, help="for the dispatch figure")
    parser.add_argument("--sessions", type=int, default=300, help="agents for the session figure")
    parser.add_argument("--skip-campaign", action="store_true")
    args = parser.parse_args()
    agents = [f"DC-{n:04d}" for n in range(args.agents)]
    load_before = os.getloadavg()
    figures: dict[str, tuple[float, float]] = {}
    for kind in ("mosquitto", "nats"):
        figures[kind] = ingest(kind, args.results, agents)
        publish, end_to_end = figures[kind]
        print(
            f"ingest {kind:9}: {args.results} results from {args.agents} agents, "
            f"QoS 1 publish+PUBACK {publish:,.0f}/s, handled by the coordinator's consumer "
            f"{end_to_end:,.0f}/s"
        )
    print(
        f"ingest ratio nats/mosquitto: publish {figures['nats'][0] / figures['mosquitto'][0]:.2f}, "
        f"end to end {figures['nats'][1] / figures['mosquitto'][1]:.2f}"
    )
    rates = {kind: dispatch(kind, args.orders) for kind in ("mosquitto", "nats")}
    for kind, rate in rates.items():
        print(
            f"dispatch {kind:9}: {args.orders} orders through one coordinator (REST batch, "
            f"SQLite, signed, QoS 1 PUBACK) {rate:,.0f} orders/s"
        )
    print(f"dispatch ratio nats/mosquitto: {rates['nats'] / rates['mosquitto']:.2f}")
    for kind in ("mosquitto", "nats"):
        rate, added = sessions(kind, args.sessions)
        print(
            f"sessions {kind:9}: {args.sessions} agents, persistent session + 2 QoS 1 "
            f"subscriptions each: {rate:,.1f} sessions/s; RSS added per broker process "
            + ", ".join(f"{mb:.0f} MB" for mb in added)
            + f" ({sum(added) / len(added) / args.sessions * 1024:.0f} kB per session per process)"
        )
    if not args.skip_campaign:
        with tempfile.TemporaryDirectory(prefix="rcd-bench-campaign-") as tmp:
            waves = {kind: campaign(kind, Path(tmp)) for kind in ("mosquitto", "nats")}
        for kind, (orders, seconds) in waves.items():
            replicas = "two coordinator replicas" if kind == "nats" else "one coordinator"
            print(
                f"campaign {kind:9}: {orders} orders over SOAP on 3 concentrators (PLC 9.6 kbit/s), "
                f"{replicas}, all reported to Legacy in {seconds:.1f} s ({orders / seconds:.1f} orders/s)"
            )
        ratio = waves["mosquitto"][1] / waves["nats"][1]
        print(f"campaign ratio nats/mosquitto (orders/s): {ratio:.2f}")
    load_after = os.getloadavg()
    print(
        f"load average {load_before[0]:.2f} at start, {load_after[0]:.2f} at the end "
        f"({os.cpu_count()} cores)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
