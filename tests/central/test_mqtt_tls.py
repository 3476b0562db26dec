"""The coordinator on the shipped TLS listener (client certificates), issue 12 item 9.

Certificates are made here with ``cryptography``: a CA, the broker's, one for
the coordinator (CN = its account) and one per concentrator. mosquitto runs the
shipped mosquitto.conf plus tls-listener.conf, which requires a certificate
and takes the account (and, with use_username_as_clientid, the client id)
from its CN.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import ssl
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from paho.mqtt.enums import CallbackAPIVersion

from central.errors import BrokerRefused, DispatchError
from central.mqtt import MqttLink
from central.services.dispatch import Outgoing
from central.settings import Settings
from shared import topics
from shared.broker import COORDINATOR_USER, MosquittoBroker

Key = ec.EllipticCurvePrivateKey


def _cert(
    subject: str, key: Key, issuer: tuple[str, Key] | None, *, ca: bool = False, ip: bool = False
) -> x509.Certificate:
    now = dt.datetime.now(dt.UTC)
    issuer_name, issuer_key = issuer if issuer is not None else (subject, key)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
        .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer_name)]))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if ip:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
    return builder.sign(issuer_key, hashes.SHA256())


def _write(directory: Path, stem: str, cert: x509.Certificate, key: Key) -> None:
    (directory / f"{stem}.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (directory / f"{stem}.key").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("pki")
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = _cert("rcd-test-ca", ca_key, None, ca=True)
    (directory / "ca.crt").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    broker_key = ec.generate_private_key(ec.SECP256R1())
    _write(directory, "broker", _cert("127.0.0.1", broker_key, ("rcd-test-ca", ca_key), ip=True), broker_key)
    for name in (COORDINATOR_USER, "DC-01", "DC-02"):
        key = ec.generate_private_key(ec.SECP256R1())
        _write(directory, name, _cert(name, key, ("rcd-test-ca", ca_key)), key)
    return directory


@pytest.fixture(scope="module")
def tls_broker(pki: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[MosquittoBroker]:
    work = tmp_path_factory.mktemp("mosquitto-tls")
    with MosquittoBroker(users=("DC-01", "DC-02"), work_dir=work, tls_dir=pki) as broker:
        yield broker


def _settings(broker: MosquittoBroker, pki: Path, *, with_cert: bool) -> Settings:
    assert broker.tls_port is not None
    certificate = {
        "mqtt_tls_cert": pki / f"{COORDINATOR_USER}.crt",
        "mqtt_tls_key": pki / f"{COORDINATOR_USER}.key",
    }
    return Settings(
        environment="test",
        mqtt_host="127.0.0.1",
        mqtt_port=broker.tls_port,
        mqtt_tls_ca=pki / "ca.crt",
        mqtt_password="not-used-on-the-tls-listener",
        **(certificate if with_cert else {}),  # type: ignore[arg-type]
    )


class CertClient:
    """A concentrator on the TLS listener with its certificate; records disconnects."""

    def __init__(self, broker: MosquittoBroker, pki: Path, cert: str, client_id: str) -> None:
        assert broker.tls_port is not None
        self.connected = threading.Event()
        self.disconnects: list[object] = []
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
        self.client.tls_set(
            ca_certs=str(pki / "ca.crt"),
            certfile=str(pki / f"{cert}.crt"),
            keyfile=str(pki / f"{cert}.key"),
            tls_version=ssl.PROTOCOL_TLS_CLIENT,
        )
        self.client.on_connect = lambda *_a: self.connected.set()
        self.client.on_disconnect = lambda _c, _u, _f, reason, _p: self.disconnects.append(reason)
        self.client.connect("127.0.0.1", broker.tls_port)
        self.client.loop_start()
        assert self.connected.wait(5), f"{cert} could not connect over TLS"

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def test_the_coordinator_connects_with_its_client_certificate_and_gets_results(
    tls_broker: MosquittoBroker, pki: Path
) -> None:
    got: list[bytes] = []
    arrived = threading.Event()

    def on_result(_topic: str, payload: bytes) -> bool:
        got.append(payload)
        arrived.set()
        return True

    link = MqttLink(_settings(tls_broker, pki, with_cert=True), on_result=on_result).start()
    agent = CertClient(tls_broker, pki, "DC-01", "DC-01")
    try:
        time.sleep(0.3)  # the shared subscription's SUBACK
        agent.client.publish(topics.results("DC-01"), b"result over TLS", qos=1).wait_for_publish(5)
        assert arrived.wait(5)
        assert got == [b"result over TLS"]
        # the coordinator publishes to the agent's branch as its CN's account
        link.publish_many([Outgoing(topics.commands("DC-01"), b"order over TLS")])
    finally:
        agent.close()
        link.close()


def test_without_a_client_certificate_the_listener_refuses_the_coordinator(
    tls_broker: MosquittoBroker, pki: Path
) -> None:
    with pytest.raises(DispatchError):
        MqttLink(_settings(tls_broker, pki, with_cert=False)).start(timeout=3)


def test_a_half_configured_certificate_is_refused_with_a_clear_error(
    tls_broker: MosquittoBroker, pki: Path
) -> None:
    settings = _settings(tls_broker, pki, with_cert=True).model_copy(update={"mqtt_tls_key": None})
    with pytest.raises(BrokerRefused, match="RCD_MQTT_TLS_KEY"):
        MqttLink(settings)


def test_on_the_tls_listener_a_certificate_holds_only_its_own_client_id(
    tls_broker: MosquittoBroker, pki: Path
) -> None:
    victim = CertClient(tls_broker, pki, "DC-02", "DC-02")
    try:
        intruder = CertClient(tls_broker, pki, "DC-01", "DC-02")
        time.sleep(0.5)
        intruder.close()
        assert victim.disconnects == []
    finally:
        victim.close()
