"""A small blocking MQTT 3.1.1 test client for the NATS cluster."""

from __future__ import annotations

import queue
import threading
import time

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode


class Client:
    def __init__(self, address: tuple[str, int], user: str, password: str = "secret",
                 client_id: str | None = None) -> None:
        self.messages: queue.Queue[mqtt.MQTTMessage] = queue.Queue()
        self.granted: queue.Queue[list[ReasonCode]] = queue.Queue()
        self.acks: dict[int, ReasonCode] = {}
        self._acked = threading.Condition()
        self._connected = threading.Event()
        self.connect_reason: ReasonCode | None = None
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id or f"test-{user}-{time.monotonic_ns()}",
            protocol=mqtt.MQTTv311,
            clean_session=False,
        )
        self.client.username_pw_set(user, password)
        self.client.on_connect = self._on_connect
        self.client.on_message = lambda _c, _u, msg: self.messages.put(msg)
        self.client.on_publish = self._on_publish
        self.client.on_subscribe = lambda _c, _u, _m, codes, _p: self.granted.put(codes)
        self.client.connect(*address)
        self.client.loop_start()
        self._connected.wait(10)

    def _on_connect(self, _c: mqtt.Client, _u: object, _f: object, reason: ReasonCode,
                    _p: Properties | None) -> None:
        self.connect_reason = reason
        self._connected.set()

    def _on_publish(self, _c: mqtt.Client, _u: object, mid: int, reason: ReasonCode,
                    _p: Properties | None) -> None:
        with self._acked:
            self.acks[mid] = reason
            self._acked.notify_all()

    def subscribe(self, topic: str) -> list[ReasonCode]:
        self.client.subscribe(topic, qos=1)
        return self.granted.get(timeout=10)

    def publish(self, topic: str, payload: bytes) -> None:
        info = self.client.publish(topic, payload, qos=1)
        with self._acked:
            assert self._acked.wait_for(lambda: info.mid in self.acks, timeout=10), "no PUBACK"

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()
