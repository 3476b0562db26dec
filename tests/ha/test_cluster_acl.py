"""The shipped NATS configuration (deploy/nats/, shared/nats_config.py) on a real
three-node cluster: each concentrator confined to its own branch, as the mosquitto
ACL does; a message published on one node reaches a subscriber on another."""

from __future__ import annotations

import queue

import pytest

from shared import topics
from shared.nats_broker import NatsCluster
from shared.nats_config import concentrator_permissions, mqtt_subject, mqtt_topic
from tests.ha.mqtt_client import Client

pytestmark = pytest.mark.ha


def test_subjects_follow_the_nats_mqtt_mapping() -> None:
    assert mqtt_subject("rcd/v1/c/DC.01/result") == "rcd.v1.c.DC//01.result"
    assert mqtt_topic("rcd.v1.c.DC//01.result") == "rcd/v1/c/DC.01/result"
    allowed = concentrator_permissions("DC.01")["publish"]
    assert allowed == {"allow": ["rcd.v1.c.DC//01.result", "rcd.v1.c.DC//01.status"]}


def test_a_concentrator_cannot_read_another_ones_orders_nor_speak_for_it(
    cluster: NatsCluster,
) -> None:
    one, two, three = cluster.mqtt_addresses
    agent_a = Client(one, "DC-A", client_id="DC-A")
    central = Client(two, "coordinator", client_id="central-test")
    agent_b = Client(three, "DC-B", client_id="DC-B")
    try:
        assert agent_a.connect_reason is not None and not agent_a.connect_reason.is_failure
        # its own orders: granted; another concentrator's: refused (SUBACK 0x80)
        assert not agent_a.subscribe(topics.commands("DC-A"))[0].is_failure
        assert agent_a.subscribe(topics.commands("DC-B"))[0].is_failure
        assert agent_a.subscribe(topics.meter_table("DC-B"))[0].is_failure
        assert agent_a.subscribe(topics.ALL_RESULTS)[0].is_failure
        assert not agent_b.subscribe(topics.commands("DC-B"))[0].is_failure
        assert not central.subscribe(topics.ALL_RESULTS)[0].is_failure

        central.publish(topics.commands("DC-A"), b"order-for-A")
        central.publish(topics.commands("DC-B"), b"order-for-B")
        got_a = agent_a.messages.get(timeout=10)
        assert (got_a.topic, got_a.payload) == (topics.commands("DC-A"), b"order-for-A")
        got_b = agent_b.messages.get(timeout=10)
        assert (got_b.topic, got_b.payload) == (topics.commands("DC-B"), b"order-for-B")
        with pytest.raises(queue.Empty):
            agent_a.messages.get(timeout=1)  # B's order never reached A

        # A publishes a result in B's name: the broker drops it; its own arrives
        agent_a.publish(topics.results("DC-B"), b"forged")
        agent_a.publish(topics.results("DC-A"), b"genuine")
        got = central.messages.get(timeout=10)
        assert (got.topic, got.payload) == (topics.results("DC-A"), b"genuine")
        with pytest.raises(queue.Empty):
            central.messages.get(timeout=1)
    finally:
        for client in (agent_a, central, agent_b):
            client.close()


def test_wrong_password_is_refused(cluster: NatsCluster) -> None:
    intruder = Client(cluster.mqtt_addresses[0], "DC-A", password="wrong")
    try:
        assert intruder.connect_reason is None or intruder.connect_reason.is_failure
    finally:
        intruder.close()
