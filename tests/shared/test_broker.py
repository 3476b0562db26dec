"""Real messages through a real mosquitto running the configuration we ship."""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from shared import topics
from shared.broker import COORDINATOR_USER, MosquittoBroker


class Client:
    """A small blocking test client (MQTT 5)."""

    def __init__(self, broker: MosquittoBroker, user: str, password: str | None = None) -> None:
        self.messages: queue.Queue[mqtt.MQTTMessage] = queue.Queue()
        self.acks: dict[int, ReasonCode] = {}
        self._acked = threading.Condition()
        self._connected = threading.Event()
        self.connect_reason: ReasonCode | None = None
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"test-{user}-{time.monotonic_ns()}", protocol=mqtt.MQTTv5)
        self.client.username_pw_set(user, broker.password if password is None else password)
        self.client.on_connect = self._on_connect
        self.client.on_message = lambda _c, _u, msg: self.messages.put(msg)
        self.client.on_publish = self._on_publish
        self.client.on_subscribe = lambda *_args: None
        self.client.connect(broker.host, broker.port)
        self.client.loop_start()
        self._connected.wait(5)

    def _on_connect(self, _c: mqtt.Client, _u: object, _f: object, reason: ReasonCode, _p: Properties | None) -> None:
        self.connect_reason = reason
        self._connected.set()

    def _on_publish(self, _c: mqtt.Client, _u: object, mid: int, reason: ReasonCode, _p: Properties | None) -> None:
        with self._acked:
            self.acks[mid] = reason
            self._acked.notify_all()

    def subscribe(self, topic: str) -> None:
        _result, _mid = self.client.subscribe(topic, qos=1)
        time.sleep(0.2)  # SUBACK round trip on loopback

    def publish(self, topic: str, payload: bytes) -> ReasonCode:
        info = self.client.publish(topic, payload, qos=1)
        with self._acked:
            assert self._acked.wait_for(lambda: info.mid in self.acks, timeout=5), "no PUBACK"
            return self.acks[info.mid]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@contextmanager
def connected(broker: MosquittoBroker, user: str, password: str | None = None) -> Iterator[Client]:
    client = Client(broker, user, password)
    try:
        yield client
    finally:
        client.close()


def test_order_travels_from_coordinator_to_its_concentrator(broker: MosquittoBroker) -> None:
    with connected(broker, COORDINATOR_USER) as central, connected(broker, "conc-a") as agent:
        assert agent.connect_reason is not None and not agent.connect_reason.is_failure
        agent.subscribe(topics.commands("conc-a"))
        assert not central.publish(topics.commands("conc-a"), b"order-1").is_failure
        message = agent.messages.get(timeout=5)
        assert (message.topic, message.payload, message.qos) == (topics.commands("conc-a"), b"order-1", 1)


def test_anonymous_and_wrong_password_are_refused(broker: MosquittoBroker) -> None:
    with connected(broker, "conc-a", password="wrong") as intruder:
        assert intruder.connect_reason is not None and intruder.connect_reason.is_failure
    with connected(broker, "nobody-known") as stranger:
        assert stranger.connect_reason is not None and stranger.connect_reason.is_failure


def test_concentrator_cannot_read_another_concentrators_orders(broker: MosquittoBroker) -> None:
    with connected(broker, COORDINATOR_USER) as central, connected(broker, "conc-a") as spy, connected(broker, "conc-b") as owner:
        spy.subscribe(topics.commands("conc-b"))
        spy.subscribe("rcd/v1/#")
        owner.subscribe(topics.commands("conc-b"))
        central.publish(topics.commands("conc-b"), b"order-for-b")
        assert owner.messages.get(timeout=5).payload == b"order-for-b"
        with pytest.raises(queue.Empty):
            spy.messages.get(timeout=0.5)


def test_concentrator_cannot_publish_another_concentrators_results(broker: MosquittoBroker) -> None:
    with connected(broker, COORDINATOR_USER) as central, connected(broker, "conc-a") as forger:
        central.subscribe(topics.ALL_RESULTS)
        refused = forger.publish(topics.results("conc-b"), b"forged result for b")
        assert refused.value == 0x87  # MQTT 5: not authorized
        assert forger.publish(topics.results("conc-a"), b"own result").value == 0
        assert central.messages.get(timeout=5).payload == b"own result"
        with pytest.raises(queue.Empty):
            central.messages.get(timeout=0.5)


def test_concentrator_cannot_publish_orders_even_to_itself(broker: MosquittoBroker) -> None:
    with connected(broker, "conc-a") as agent:
        assert agent.publish(topics.commands("conc-a"), b"self-order").value == 0x87
        assert agent.publish(topics.commands("conc-b"), b"lateral").value == 0x87


def test_only_the_protect_account_writes_protected_lists_and_each_agent_reads_its_own(
    broker: MosquittoBroker,
) -> None:
    """Issue 17: the ACL's `rcd-protect` account publishes the signed lists; an agent reads
    only its own and can neither wipe nor replace it; the protect account has no other topic."""
    broker.add_user("rcd-protect")
    with connected(broker, "rcd-protect") as protect, connected(broker, "conc-a") as agent, \
            connected(broker, "conc-b") as other:
        agent.subscribe(topics.protected_list("conc-a"))
        other.subscribe(topics.protected_list("conc-a"))
        assert protect.publish(topics.protected_list("conc-a"), b"signed list").value == 0
        assert agent.messages.get(timeout=5).payload == b"signed list"
        assert agent.publish(topics.protected_list("conc-a"), b"").value == 0x87
        assert other.publish(topics.protected_list("conc-a"), b"forged").value == 0x87
        with pytest.raises(queue.Empty):
            other.messages.get(timeout=0.5)
        assert protect.publish(topics.commands("conc-a"), b"order").value == 0x87
        assert protect.publish(topics.meter_table("conc-a"), b"table").value == 0x87


def test_coordinator_replicas_share_results(broker: MosquittoBroker) -> None:
    group = topics.shared_subscription("central", topics.ALL_RESULTS)
    broker.add_coordinator("rcd-central-2")  # one account per replica
    with connected(broker, COORDINATOR_USER) as one, connected(broker, "rcd-central-2") as two, connected(broker, "conc-c") as agent:
        one.subscribe(group)
        two.subscribe(group)
        for n in range(20):
            agent.publish(topics.results("conc-c"), f"r{n}".encode())
        received: list[bytes] = []
        deadline = time.monotonic() + 5
        while len(received) < 20 and time.monotonic() < deadline:
            for client in (one, two):
                try:
                    received.append(client.messages.get(timeout=0.05).payload)
                except queue.Empty:
                    pass
        assert sorted(received) == sorted(f"r{n}".encode() for n in range(20))  # each exactly once


def test_queued_orders_beyond_mosquittos_default_limit_are_all_kept(broker: MosquittoBroker) -> None:
    """An offline agent with a persistent session gets all 3,000 orders (default cap: 1,000)."""
    broker.add_user("conc-queue")
    offline = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="agent-conc-queue", protocol=mqtt.MQTTv5)
    offline.username_pw_set("conc-queue", broker.password)
    props = Properties(mqtt.PacketTypes.CONNECT)
    props.SessionExpiryInterval = 3600
    offline.connect(broker.host, broker.port, clean_start=False, properties=props)
    offline.loop_start()
    time.sleep(0.3)
    offline.subscribe(topics.commands("conc-queue"), qos=1)
    time.sleep(0.3)
    offline.disconnect()
    offline.loop_stop()

    with connected(broker, COORDINATOR_USER) as central:
        for n in range(3000):
            central.client.publish(topics.commands("conc-queue"), str(n).encode(), qos=1)
        central.publish(topics.commands("conc-queue"), b"last")

    received: queue.Queue[bytes] = queue.Queue()
    back = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="agent-conc-queue", protocol=mqtt.MQTTv5)
    back.username_pw_set("conc-queue", broker.password)
    back.on_message = lambda _c, _u, msg: received.put(msg.payload)
    back.connect(broker.host, broker.port, clean_start=False, properties=props)
    back.loop_start()
    try:
        payloads = set()
        deadline = time.monotonic() + 20
        while len(payloads) < 3001 and time.monotonic() < deadline:
            try:
                payloads.add(received.get(timeout=0.5))
            except queue.Empty:
                pass
        assert len(payloads) == 3001
    finally:
        back.disconnect()
        back.loop_stop()


def test_embedded_broker_for_machines_without_mosquitto() -> None:
    from shared.broker import EmbeddedBroker

    with EmbeddedBroker() as embedded:
        received: queue.Queue[bytes] = queue.Queue()
        subscriber = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="emb-sub", protocol=mqtt.MQTTv311)
        subscriber.on_message = lambda _c, _u, msg: received.put(msg.payload)
        subscribed = threading.Event()
        subscriber.on_subscribe = lambda *_args: subscribed.set()
        subscriber.connect(embedded.host, embedded.port)
        subscriber.loop_start()
        publisher = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="emb-pub", protocol=mqtt.MQTTv311)
        publisher.connect(embedded.host, embedded.port)
        publisher.loop_start()
        try:
            subscriber.subscribe(topics.results("conc-a"), qos=1)
            assert subscribed.wait(5)
            publisher.publish(topics.results("conc-a"), b"result", qos=1).wait_for_publish(5)
            assert received.get(timeout=5) == b"result"
        finally:
            for client in (subscriber, publisher):
                client.disconnect()
                client.loop_stop()
