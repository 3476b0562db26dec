"""The shipped NATS configuration (deploy/nats/, shared/nats_config.py) on a real
three-node cluster: each concentrator confined to its own branch, as the mosquitto
ACL does; a message published on one node reaches a subscriber on another."""

from __future__ import annotations

import queue

import pytest

from shared import topics
from shared.nats_broker import NatsCluster
from shared.nats_config import (
    PROTECT_USER,
    concentrator_permissions,
    mqtt_subject,
    mqtt_topic,
)
from shared.protect import ProtectSigner, make_list
from shared.protect_cli import push
from shared.signing import generate_keypair, load_private_key
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


def test_only_the_protect_account_writes_protected_lists_and_agents_read_their_own(
    cluster: NatsCluster,
) -> None:
    """Issue 17 on NATS: ``rcd protect push`` as ``rcd-protect`` through one node; the
    agent reads its retained list on another; nobody else writes or reads it."""
    one, two, three = cluster.mqtt_addresses
    signed = ProtectSigner(load_private_key(generate_keypair()[0])).sign(
        make_list("DC-A", 1, ["M-1"]))
    assert push(signed, host=one[0], port=one[1], password="secret",
                protocol="3.1.1") == topics.protected_list("DC-A")
    protect = Client(one, PROTECT_USER, client_id="protect-test")
    agent_a = Client(two, "DC-A", client_id="DC-A")
    agent_b = Client(three, "DC-B", client_id="DC-B")
    central = Client(three, "coordinator", client_id="central-acl")
    try:
        assert protect.connect_reason is not None and not protect.connect_reason.is_failure
        protect.publish(topics.commands("DC-A"), b"forged-order")  # dropped
        assert protect.subscribe(topics.protected_list("DC-A"))[0].is_failure
        assert not central.subscribe(topics.commands("DC-A"))[0].is_failure
        # the agent subscribes later: the retained list, from another node
        assert not agent_a.subscribe(topics.protected_list("DC-A"))[0].is_failure
        got = agent_a.messages.get(timeout=10)
        assert (got.topic, got.payload, got.retain) == (topics.protected_list("DC-A"), signed, True)
        assert agent_b.subscribe(topics.protected_list("DC-A"))[0].is_failure
        # an agent cannot write a list, not even its own
        agent_a.publish(topics.protected_list("DC-A"), b"self-made")
        with pytest.raises(queue.Empty):
            agent_a.messages.get(timeout=1)
        with pytest.raises(queue.Empty):
            central.messages.get(timeout=1)  # the protect account's order never arrived
    finally:
        for client in (protect, agent_a, agent_b, central):
            client.close()
