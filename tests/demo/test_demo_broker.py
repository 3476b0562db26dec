"""The demo's broker gives every account its own password (issue 12, item 7)."""

from __future__ import annotations

import threading

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from ops.demo_broker import start_broker
from shared.broker import COORDINATOR_USER


def login(host: str, port: int, user: str, password: str) -> bool:
    """True when the broker accepts ``user`` with ``password`` (a real CONNECT)."""
    answered = threading.Event()
    accepted: list[bool] = []

    def on_connect(_c: object, _u: object, _f: object, reason: object, _p: object) -> None:
        accepted.append(not getattr(reason, "is_failure", True))
        answered.set()

    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=user, protocol=mqtt.MQTTv5)
    client.username_pw_set(user, password)
    client.on_connect = on_connect
    client.connect(host, port)
    client.loop_start()
    try:
        assert answered.wait(5), "no CONNACK"
        return accepted[0]
    finally:
        client.disconnect()
        client.loop_stop()


def test_each_account_has_its_own_password_and_none_opens_another() -> None:
    with start_broker("mosquitto", ["DC01", "DC02"]) as (host, port, passwords, _text):
        assert set(passwords) == {COORDINATOR_USER, "DC01", "DC02"}
        assert len(set(passwords.values())) == 3
        assert login(host, port, "DC01", passwords["DC01"])
        assert login(host, port, COORDINATOR_USER, passwords[COORDINATOR_USER])
        # a concentrator's own password opens neither the coordinator nor a peer
        assert not login(host, port, COORDINATOR_USER, passwords["DC01"])
        assert not login(host, port, "DC02", passwords["DC01"])
