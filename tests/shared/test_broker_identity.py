"""Client-id takeover through a real mosquitto running the shipped configuration.

One concentrator's credentials must not let it close another client's
connection or wipe its persistent session by claiming that client's id
(issue 12, item 1): the broker ties each client id to its account.
"""

from __future__ import annotations

import queue
import threading
import time
import uuid

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from shared import topics
from shared.broker import COORDINATOR_USER, MosquittoBroker


class Session:
    """A persistent-session MQTT 5 client that records disconnects and messages."""

    def __init__(
        self, broker: MosquittoBroker, user: str, client_id: str, *, clean_start: bool = False
    ) -> None:
        self.messages: queue.Queue[mqtt.MQTTMessage] = queue.Queue()
        self.disconnects: list[ReasonCode] = []
        self.connected = threading.Event()
        self.session_present: bool | None = None
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5
        )
        self.client.username_pw_set(user, broker.password)
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = lambda _c, _u, _f, reason, _p: self.disconnects.append(reason)
        self.client.on_message = lambda _c, _u, msg: self.messages.put(msg)
        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        props.SessionExpiryInterval = 600
        self.client.connect(broker.host, broker.port, clean_start=clean_start, properties=props)
        self.client.loop_start()
        assert self.connected.wait(5), f"{user} could not connect"

    def _on_connect(self, _c: object, _u: object, flags: object, reason: ReasonCode, _p: object) -> None:
        self.session_present = bool(getattr(flags, "session_present", False))
        if not reason.is_failure:
            self.connected.set()

    def subscribe(self, topic: str) -> None:
        self.client.subscribe(topic, qos=1)
        time.sleep(0.2)

    def publish(self, topic: str, payload: bytes) -> None:
        self.client.publish(topic, payload, qos=1).wait_for_publish(5)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def fleet(broker: MosquittoBroker) -> tuple[str, str]:
    attacker, victim = (f"dc-{uuid.uuid4().hex[:6]}" for _ in range(2))
    broker.add_user(attacker)
    broker.add_user(victim)
    return attacker, victim


def attack(broker: MosquittoBroker, attacker: str, claimed_id: str) -> None:
    """Log in with the attacker's own credentials but the victim's client id, clean start."""
    intruder = Session(broker, attacker, claimed_id, clean_start=True)
    time.sleep(0.5)
    intruder.close()


def test_a_concentrator_cannot_disconnect_another_by_claiming_its_client_id(
    broker: MosquittoBroker, fleet: tuple[str, str]
) -> None:
    attacker, victim = fleet
    agent = Session(broker, victim, victim)
    coordinator_name = f"rcd-central-t{uuid.uuid4().hex[:6]}"
    broker.add_coordinator(coordinator_name)
    central = Session(broker, coordinator_name, coordinator_name)
    try:
        agent.subscribe(topics.commands(victim))
        attack(broker, attacker, victim)
        assert agent.disconnects == [], "the victim's connection was closed"
        central.publish(topics.commands(victim), b"order after the attack")
        assert agent.messages.get(timeout=5).payload == b"order after the attack"
    finally:
        agent.close()
        central.close()


def test_a_concentrator_cannot_disconnect_the_coordinator(
    broker: MosquittoBroker, fleet: tuple[str, str]
) -> None:
    attacker, victim = fleet
    coordinator_name = f"rcd-central-t{uuid.uuid4().hex[:6]}"
    broker.add_coordinator(coordinator_name)
    central = Session(broker, coordinator_name, coordinator_name)
    agent = Session(broker, victim, victim)
    try:
        central.subscribe(topics.results(victim))
        for claimed in (coordinator_name, COORDINATOR_USER, "rcd-central-1"):
            attack(broker, attacker, claimed)
        assert central.disconnects == [], "the coordinator's connection was closed"
        agent.publish(topics.results(victim), b"result after the attack")
        assert central.messages.get(timeout=5).payload == b"result after the attack"
    finally:
        central.close()
        agent.close()


def test_a_foreign_clean_start_does_not_wipe_an_offline_session(
    broker: MosquittoBroker, fleet: tuple[str, str]
) -> None:
    """The coordinator is offline; results wait in its session, whatever DC-01 does."""
    attacker, victim = fleet
    coordinator_name = f"rcd-central-t{uuid.uuid4().hex[:6]}"
    broker.add_coordinator(coordinator_name)
    central = Session(broker, coordinator_name, coordinator_name)
    central.subscribe(topics.results(victim))
    central.close()
    agent = Session(broker, victim, victim)
    try:
        agent.publish(topics.results(victim), b"result while the coordinator is away")
        attack(broker, attacker, coordinator_name)
        back = Session(broker, coordinator_name, coordinator_name)
        try:
            assert back.session_present is True
            assert back.messages.get(timeout=5).payload == b"result while the coordinator is away"
        finally:
            back.close()
    finally:
        agent.close()


def test_the_client_id_a_client_sends_is_replaced_by_its_account(
    broker: MosquittoBroker, fleet: tuple[str, str]
) -> None:
    """The attacker's own session under the claimed id is its own, not the victim's:
    a command queued for the victim never reaches a client claiming the victim's id."""
    attacker, victim = fleet
    agent = Session(broker, victim, victim)
    agent.subscribe(topics.commands(victim))
    agent.close()
    central = Session(broker, COORDINATOR_USER, COORDINATOR_USER, clean_start=True)
    intruder: Session | None = None
    try:
        central.publish(topics.commands(victim), b"queued for the victim")
        intruder = Session(broker, attacker, victim)
        with pytest.raises(queue.Empty):
            intruder.messages.get(timeout=1)
        intruder.close()
        intruder = None
        back = Session(broker, victim, victim)
        try:
            assert back.messages.get(timeout=5).payload == b"queued for the victim"
        finally:
            back.close()
    finally:
        central.close()
        if intruder is not None:
            intruder.close()
