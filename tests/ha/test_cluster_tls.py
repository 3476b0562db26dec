"""The shipped TLS listener of the NATS cluster (deploy/nats/tls-mqtt.conf) with
generated certificates: an agent is known by its certificate's CN and confined to
its own branch; a client without a certificate from our CA gets nowhere."""

from __future__ import annotations

import queue
import ssl
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.reasoncodes import ReasonCode

from shared import topics
from shared.nats_broker import NatsCluster
from tests.ha.certs import TestCA

pytestmark = pytest.mark.ha


@pytest.fixture
def tls_cluster(tmp_path: Path) -> Iterator[tuple[NatsCluster, TestCA]]:
    ca = TestCA(tmp_path / "pki")
    cert, key = ca.issue("nats-node", server=True)
    with NatsCluster(
        work_dir=tmp_path / "nats", tls=(ca.ca_file, cert, key),
        tls_users=("coordinator", "DC-A", "DC-B"),
    ) as running:
        yield running, ca


class TlsClient:
    def __init__(
        self, address: tuple[str, int], ca: TestCA, name: str | None, issuer: TestCA | None = None,
        *, refused: bool = False,
    ) -> None:
        """Trusts ``ca`` for the server; presents a certificate for ``name`` issued by
        ``issuer`` (default ``ca``), or none. A client expected to be ``refused`` stops
        waiting once the broker refused it or closed the link (the wait for the others
        rides out a reconnect)."""
        self.messages: queue.Queue[mqtt.MQTTMessage] = queue.Queue()
        self.granted: queue.Queue[list[ReasonCode]] = queue.Queue()
        self.accepted = threading.Event()
        # the broker said no, or closed the link: waiting longer would change nothing
        self.ended = threading.Event()
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=f"tls-{name}-{time.monotonic_ns()}",
            protocol=mqtt.MQTTv311,
        )
        cert = key = None
        if name is not None:
            cert, key = (issuer or ca).issue(name)
        self.client.tls_set(
            ca_certs=str(ca.ca_file), certfile=str(cert) if cert else None,
            keyfile=str(key) if key else None, tls_version=ssl.PROTOCOL_TLS_CLIENT,
        )
        self.client.on_connect = (
            lambda _c, _u, _f, rc, _p: self.ended.set() if rc.is_failure else self.accepted.set()
        )
        self.client.on_disconnect = lambda *_args: self.ended.set()
        self.client.on_connect_fail = lambda *_args: self.ended.set()
        self.client.on_message = lambda _c, _u, msg: self.messages.put(msg)
        self.client.on_subscribe = lambda _c, _u, _m, codes, _p: self.granted.put(codes)
        try:
            self.client.connect(*address)
        except (OSError, ssl.SSLError):
            self.ended.set()
            return
        self.client.loop_start()
        deadline = time.monotonic() + 10
        while not self.accepted.is_set() and time.monotonic() < deadline:
            if refused and self.ended.is_set():
                break
            time.sleep(0.02)

    def publish(self, topic: str, payload: bytes) -> None:
        self.client.publish(topic, payload, qos=1).wait_for_publish(10)

    def subscribe(self, topic: str) -> bool:
        self.client.subscribe(topic, qos=1)
        return not self.granted.get(timeout=10)[0].is_failure

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def test_agents_known_by_their_certificate_and_confined_to_their_branch(
    tls_cluster: tuple[NatsCluster, TestCA],
) -> None:
    cluster, ca = tls_cluster
    agent_a = TlsClient(cluster.mqtt_addresses[0], ca, "DC-A")
    central = TlsClient(cluster.mqtt_addresses[1], ca, "coordinator")
    try:
        assert agent_a.accepted.is_set() and central.accepted.is_set()
        assert agent_a.subscribe(topics.commands("DC-A"))
        assert not agent_a.subscribe(topics.commands("DC-B"))
        assert not agent_a.subscribe(topics.ALL_RESULTS)
        assert central.subscribe(topics.ALL_RESULTS)
        central.publish(topics.commands("DC-A"), b"order")
        assert agent_a.messages.get(timeout=10).payload == b"order"
        agent_a.publish(topics.results("DC-B"), b"forged")
        agent_a.publish(topics.results("DC-A"), b"genuine")
        got = central.messages.get(timeout=10)
        assert (got.topic, got.payload) == (topics.results("DC-A"), b"genuine")
        with pytest.raises(queue.Empty):
            central.messages.get(timeout=1)
    finally:
        agent_a.close()
        central.close()


def test_no_certificate_or_an_unknown_one_gets_nowhere(
    tls_cluster: tuple[NatsCluster, TestCA], tmp_path: Path,
) -> None:
    cluster, ca = tls_cluster
    anonymous = TlsClient(cluster.mqtt_addresses[0], ca, None, refused=True)
    stranger = TlsClient(cluster.mqtt_addresses[0], ca, "DC-UNKNOWN", refused=True)
    other_ca = TestCA(tmp_path / "other")
    forged = TlsClient(cluster.mqtt_addresses[0], ca, "DC-A", issuer=other_ca, refused=True)
    try:
        assert not anonymous.accepted.is_set()
        assert not stranger.accepted.is_set()
        assert not forged.accepted.is_set()
    finally:
        for client in (anonymous, stranger, forged):
            client.close()
