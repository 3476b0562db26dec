"""The agent's only MQTT module: a paho-mqtt 2 client wrapped for the agent.

* MQTT v5, ``CallbackAPIVersion.VERSION2``, client id = user name = concentrator id
  (the broker ACL gives that user its own topic branch only).
* Persistent session: ``clean_start=False`` and a session expiry, so orders published
  while the concentrator is offline wait in the broker.
* ``manual_ack=True``: an incoming command is PUBACKed only after the handler has
  returned, i.e. after the order is verified and committed to SQLite. If the handler
  fails to store it, no PUBACK is sent and the broker sends it again after a reconnect.
* Receipts, results and refusal reports go through the SQLite outbox
  (``edge_agent.outbox``): the pump thread publishes due rows (QoS 1) and publishes each
  again with exponential backoff (``agent.resend_initial_s`` doubling up to
  ``agent.resend_max_s``), and at once after every reconnect, until the coordinator's
  signed ack removes it. The broker's PUBACK removes nothing: the broker may lose what
  it acknowledged (kill -9 before its autosave; a ``$share`` subscriber's queue after a
  restart), and the coordinator may fail to store it. A message may arrive several times
  (identical payload), never zero times.
* Reconnect with exponential backoff (paho's ``reconnect_delay_set``); with
  ``broker.failover_urls`` (a NATS cluster) each failed or lost connection moves
  the next attempt to the next node (``shared.failover``); last will
  "offline" and a retained status refreshed every ``agent.status_interval_s``.

paho callbacks run on paho's network thread; they only hand work to the pump thread
(a queue) or run the command handler, and never take a lock the pump holds while it
calls into paho (paho calls ``on_publish`` with its own mutex held).
"""

from __future__ import annotations

import logging
import queue
import ssl
import threading
import time
from collections.abc import Callable
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode as MqttReasonCode

from edge_agent.config import EdgeConfig
from edge_agent.errors import LinkError, StoreError
from edge_agent.logs import log
from edge_agent.store import Store
from shared import topics
from shared.contracts import ConcentratorStatus
from shared.failover import BrokerRotation

MAX_INFLIGHT = 50
INFLIGHT_STALE_S = 60.0


class MqttLink:
    def __init__(
        self,
        config: EdgeConfig,
        store: Store,
        on_command: Callable[[str, bytes], None],
        status: Callable[[bool], ConcentratorStatus],
    ) -> None:
        self._config = config
        self._store = store
        self._on_command = on_command
        self._status = status
        cid = config.agent.concentrator_id
        self._cid = cid
        self._inflight: dict[int, tuple[int, float]] = {}  # mid -> (outbox id, sent at)
        self._acks: queue.SimpleQueue[tuple[int, bool, str]] = queue.SimpleQueue()
        self._wake = threading.Event()
        self._resend_all = threading.Event()
        self._stop = threading.Event()
        self._connected = threading.Event()
        self._subscribed = threading.Event()
        self._pump: threading.Thread | None = None
        self.published = 0
        # MQTT 5 in the field; 3.1.1 only for the demo's embedded broker, where a
        # persistent session is asked for with clean_session=False instead.
        self._v5 = config.broker.protocol == "5"
        self._client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=cid,
            protocol=mqtt.MQTTv5 if self._v5 else mqtt.MQTTv311,
            clean_session=None if self._v5 else False,
            manual_ack=True,
            reconnect_on_failure=True,
        )
        self._client.username_pw_set(config.username, config.password())
        broker = config.broker
        self._rotation = BrokerRotation(broker.addresses)
        if broker.tls:
            try:
                self._client.tls_set(
                    ca_certs=str(broker.ca_file) if broker.ca_file else None,
                    certfile=str(broker.cert_file) if broker.cert_file else None,
                    keyfile=str(broker.key_file) if broker.key_file else None,
                    tls_version=ssl.PROTOCOL_TLS_CLIENT,
                )
            except (ssl.SSLError, OSError, ValueError) as exc:
                raise LinkError(f"broker TLS settings: {exc}") from exc
        self._client.will_set(topics.status(cid), status(False).to_json(), qos=topics.QOS, retain=True)
        self._client.reconnect_delay_set(
            min_delay=max(1, round(broker.reconnect_min_s)),
            max_delay=max(1, round(broker.reconnect_max_s)),
        )
        self._client.on_connect = self._on_connect
        self._client.on_disconnect = self._on_disconnect
        self._client.on_message = self._on_message
        self._client.on_publish = self._on_publish
        self._client.on_subscribe = self._on_subscribe
        self._client.on_connect_fail = self._on_connect_fail

    # -- lifecycle ------------------------------------------------------------
    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    @property
    def subscribed(self) -> bool:
        """Connected and the broker confirmed the command subscriptions."""
        return self._connected.is_set() and self._subscribed.is_set()

    def start(self) -> None:
        broker = self._config.broker
        host, port = self._rotation.current
        try:
            if self._v5:
                props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
                props.SessionExpiryInterval = broker.session_expiry_s
                self._client.connect_async(
                    host, port, keepalive=broker.keepalive_s,
                    clean_start=False, properties=props,
                )
            else:
                self._client.connect_async(host, port, keepalive=broker.keepalive_s)
        except (OSError, ValueError) as exc:
            raise LinkError(f"cannot connect to {broker.url}: {exc}") from exc
        self._client.loop_start()
        self._pump = threading.Thread(target=self._pump_loop, name="rcd-outbox", daemon=True)
        self._pump.start()
        log("link.starting", broker=broker.url, client_id=self._cid)

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        self._wake.set()
        if self._pump is not None:
            self._pump.join(timeout)
        if self.connected:
            try:
                info = self._client.publish(
                    topics.status(self._cid), self._status(False).to_json(),
                    qos=topics.QOS, retain=True,
                )
                info.wait_for_publish(min(timeout, 2.0))
            except (RuntimeError, ValueError, OSError):
                log("link.offline_status_not_sent", logging.WARNING)
        self._client.disconnect()
        self._client.loop_stop()
        self._connected.clear()

    def wake(self) -> None:
        self._wake.set()

    # -- paho callbacks (network thread) ----------------------------------------
    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: mqtt.ConnectFlags,
                    reason_code: MqttReasonCode, properties: Properties | None) -> None:
        if reason_code.is_failure:
            log("link.refused", logging.ERROR, reason=str(reason_code))
            return
        log("link.up", session_present=flags.session_present)
        # what waits for the coordinator's ack goes again now: the broker may have lost it
        self._resend_all.set()
        client.subscribe([(topics.commands(self._cid), topics.QOS),
                          (topics.meter_table(self._cid), topics.QOS),
                          (topics.protected_list(self._cid), topics.QOS)])
        self._connected.set()
        self._note_link("connected")
        self._wake.set()

    def _on_subscribe(self, client: mqtt.Client, userdata: Any, mid: int,
                      reason_codes: list[MqttReasonCode], properties: Properties | None) -> None:
        bad = [str(rc) for rc in reason_codes if rc.is_failure]
        if bad:
            log("link.subscribe_refused", logging.ERROR, reasons=",".join(bad))
        else:
            self._subscribed.set()

    def _on_disconnect(self, client: mqtt.Client, userdata: Any, flags: mqtt.DisconnectFlags,
                       reason_code: MqttReasonCode, properties: Properties | None) -> None:
        was = self._connected.is_set()
        self._connected.clear()
        self._subscribed.clear()
        if was:
            level = logging.INFO if self._stop.is_set() else logging.WARNING
            log("link.down", level, reason=str(reason_code))
            self._note_link("disconnected")
        if not self._stop.is_set():
            self._next_node()

    def _on_connect_fail(self, client: mqtt.Client, userdata: Any) -> None:
        self._next_node()

    def _next_node(self) -> None:
        if self._rotation.several:
            host, port = self._rotation.advance(self._client)
            log("link.failover", logging.WARNING, next=f"{host}:{port}")

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        try:
            self._on_command(msg.topic, bytes(msg.payload))
        except StoreError:
            # Not stored: no PUBACK, the broker redelivers after the next reconnect.
            log("command.not_stored", logging.ERROR, exc_info=True, topic=msg.topic)
            return
        except Exception:
            log("command.handler_failed", logging.ERROR, exc_info=True, topic=msg.topic)
        client.ack(msg.mid, msg.qos)

    def _on_publish(self, client: mqtt.Client, userdata: Any, mid: int,
                    reason_code: MqttReasonCode, properties: Properties | None) -> None:
        self._acks.put((mid, not reason_code.is_failure, str(reason_code)))
        self._wake.set()

    # -- pump thread ----------------------------------------------------------
    def _note_link(self, state: str) -> None:
        try:
            self._store.set_meta("link", f"{state} since {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())}")
        except StoreError:
            log("link.state_not_saved", logging.WARNING)

    def _pump_loop(self) -> None:
        interval = self._config.agent.status_interval_s
        next_status = 0.0
        while not self._stop.is_set():
            try:
                self._settle_acks()
                if self.connected:
                    if self._resend_all.is_set():
                        self._resend_all.clear()
                        self._store.outbox_due_now()
                        next_status = 0.0  # tell the coordinator at once: it re-sends then
                    if time.monotonic() >= next_status:
                        self._publish_status()
                        next_status = time.monotonic() + interval
                    self._publish_pending()
            except (StoreError, LinkError):
                log("outbox.error", logging.ERROR, exc_info=True)
            self._wake.wait(min(0.5, interval))
            self._wake.clear()
        self._settle_acks()

    def _settle_acks(self) -> None:
        while True:
            try:
                mid, ok, why = self._acks.get_nowait()
            except queue.Empty:
                return
            entry = self._inflight.pop(mid, None)
            if entry is None:
                continue  # status message, or a stale one already re-sent
            if ok:
                log("result.published", logging.DEBUG, outbox_id=entry[0],
                    note="broker acknowledged; kept until the coordinator's ack")
            else:
                log("result.refused_by_broker", logging.ERROR, outbox_id=entry[0], reason=why)

    def _publish_status(self) -> None:
        info = self._client.publish(topics.status(self._cid), self._status(True).to_json(),
                                    qos=topics.QOS, retain=True)
        if info.rc not in (MQTTErrorCode.MQTT_ERR_SUCCESS, MQTTErrorCode.MQTT_ERR_NO_CONN):
            log("status.not_sent", logging.WARNING, rc=str(info.rc))

    def _publish_pending(self) -> None:
        now = time.monotonic()
        for mid, (_, sent) in list(self._inflight.items()):
            if now - sent > INFLIGHT_STALE_S:
                del self._inflight[mid]  # published again below; the coordinator dedups
        room = MAX_INFLIGHT - len(self._inflight)
        if room <= 0:
            return
        busy = {oid for oid, _ in self._inflight.values()}
        done: list[tuple[int, float]] = []
        try:
            for outbox_id, payload, sends in self._store.outbox_pending(exclude=busy, limit=room):
                info = self._client.publish(topics.results(self._cid), payload, qos=topics.QOS)
                if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
                    log("result.publish_deferred", level=logging.DEBUG, rc=str(info.rc))
                    if info.rc == MQTTErrorCode.MQTT_ERR_NO_CONN:
                        # paho keeps QoS 1 messages queued and sends them on reconnect
                        self._inflight[info.mid] = (outbox_id, now)
                    return
                self._inflight[info.mid] = (outbox_id, now)
                done.append((outbox_id, time.time() + self.resend_delay(sends + 1)))
                self.published += 1
        finally:
            if done:  # one write for the round, not one fsync per message
                self._store.outbox_sent(done)

    def resend_delay(self, sends: int) -> float:
        """Seconds before a row is sent again after its ``sends``-th sending."""
        agent = self._config.agent
        return float(min(agent.resend_max_s, agent.resend_initial_s * 2.0 ** max(0, sends - 1)))
