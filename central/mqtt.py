"""The one paho-mqtt adapter of the coordinator.

MQTT v5, ``CallbackAPIVersion.VERSION2``, QoS 1 everywhere. Publishing commands
waits for the broker's PUBACK of every message (``publish_many``); acks to agents
(``publish_nowait``, from paho's thread) do not wait: a lost one costs a re-send by the
agent, acknowledged again. Results are consumed through a shared subscription
(``$share/<group>/rcd/v1/c/+/result``) so replicas split them, or a plain one
(``mqtt_results_subscription = "plain"``: every replica gets every result; handling is
idempotent), with a persistent session (clean_start False) so that results published
while the coordinator is down wait at the broker.

Every message is PUBACKed once its handler returned, also when the handler failed
(database down): the broker redelivers an unacknowledged message only on reconnect,
and unacknowledged ones fill the client's in-flight window until nothing else comes.
Handlers run on one thread of their own, in arrival order, not on paho's network thread:
a burst of receipts (a database commit and a signed ack each) would otherwise stop that
thread from reading the PUBACKs of commands being published and from sending the next
ones, and the lines would wait for their orders. The thread takes what has arrived
together (at most ``BATCH_MAX``; the broker sends no more than our Receive Maximum
unacknowledged): with an ``on_results`` handler the result-topic messages between two
status messages go to it as one list, which the coordinator applies in one
transaction. What makes a result safe is the application's ack: the agent keeps it and sends it
again until the coordinator's :class:`shared.contracts.MessageAck`, sent only after the
database commit. Status messages (retained) use a plain subscription: every replica
sees them. On a NATS cluster (``broker_kind="nats"``, MQTT 3.1.1) results come from
JetStream instead (``central.jetstream``) and this link only publishes and follows
status. With several broker nodes (``mqtt_brokers``) a lost or refused connection is
retried on the next node (``shared.failover``). paho errors are mapped to :class:`central.errors.DispatchError`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import ssl
import threading
import time
from collections.abc import Callable, Sequence

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from central.errors import BrokerRefused, DispatchError
from central.services.dispatch import Outgoing
from central.settings import Settings
from shared import topics
from shared.failover import BrokerRotation

log = logging.getLogger(__name__)

# handler(topic, payload) -> True when the message may be acknowledged
Handler = Callable[[str, bytes], bool]
# batch_handler([(topic, payload), ...]): messages that arrived together, in arrival order
BatchHandler = Callable[[list[tuple[str, bytes]]], None]
BATCH_MAX = 200
SESSION_EXPIRY_S = 7 * 24 * 3600
SHORT_SESSION_S = 5.0  # a connection dropped sooner counts towards the warning below
SHORT_SESSIONS_TO_WARN = 3


class MqttLink:
    def __init__(
        self,
        settings: Settings,
        *,
        on_result: Handler | None = None,
        on_status: Handler | None = None,
        client_id: str | None = None,
        on_results: BatchHandler | None = None,
    ) -> None:
        self._settings = settings
        self._on_result = on_result
        self._on_results = on_results  # used instead of on_result when given
        self._on_status = on_status
        self._connected = threading.Event()
        self._v5 = settings.mqtt_protocol == "5"
        self._rotation = BrokerRotation(settings.broker_addresses())
        # MQTT 3.1.1 asks for a persistent session with clean_session=False; MQTT 5
        # with clean_start at connect (clean_session must stay None there).
        # named in the log: several replicas' warnings land in one place
        self._client_id = client_id or settings.mqtt_client_id or settings.mqtt_username
        self._client = paho.Client(
            CallbackAPIVersion.VERSION2,
            client_id=self._client_id,
            protocol=paho.MQTTv5 if self._v5 else paho.MQTTv311,
            clean_session=None if self._v5 else False,
            manual_ack=True,
        )
        self._client.username_pw_set(settings.mqtt_username, settings.mqtt_password)
        self._refused: str | None = None  # the broker's CONNACK reason, when it refused us
        self._connected_once = False
        self._set_tls(settings)
        # The in-flight window must not exceed the broker's Receive Maximum (checked in
        # ``_handle_connect``; mosquitto sends its max_inflight_messages, 100 as shipped).
        # Wider breaks the protocol, and paho pays for it: on each PUBACK it walks the
        # in-flight messages to find the next queued one (``_update_inflight``); a 1,000
        # window was slower than 100 (measured: raw QoS 1 rate 2,080/s against 3,683/s).
        # paho cannot change the window on an open connection, hence a setting.
        self._client.max_inflight_messages_set(settings.mqtt_inflight_window)
        self._client.max_queued_messages_set(0)
        self._client.on_connect = self._handle_connect
        self._client.on_disconnect = self._handle_disconnect
        self._client.on_connect_fail = self._handle_connect_fail
        self._client.on_message = self._handle_message
        self._started = False
        # messages for the handler thread, with the connection they came on (see _work)
        self._inbox: queue.Queue[tuple[int, paho.MQTTMessage] | None] = queue.Queue()
        self._generation = 0  # connections so far
        self._connected_at = 0.0  # monotonic time of the last CONNACK
        self._short_sessions = 0  # connections in a row that dropped soon after opening
        self._worker: threading.Thread | None = None

    def _set_tls(self, settings: Settings) -> None:
        if settings.mqtt_tls_ca is None and settings.mqtt_tls_cert is None:
            return
        if (settings.mqtt_tls_cert is None) != (settings.mqtt_tls_key is None):
            raise BrokerRefused("RCD_MQTT_TLS_CERT and RCD_MQTT_TLS_KEY go together")
        for name, path in (
            ("RCD_MQTT_TLS_CA", settings.mqtt_tls_ca),
            ("RCD_MQTT_TLS_CERT", settings.mqtt_tls_cert),
            ("RCD_MQTT_TLS_KEY", settings.mqtt_tls_key),
        ):
            if path is not None and not os.access(path, os.R_OK):
                raise BrokerRefused(f"{name} {path}: no such file, or not readable by this user")
        try:
            self._client.tls_set(
                ca_certs=str(settings.mqtt_tls_ca) if settings.mqtt_tls_ca else None,
                certfile=str(settings.mqtt_tls_cert) if settings.mqtt_tls_cert else None,
                keyfile=str(settings.mqtt_tls_key) if settings.mqtt_tls_key else None,
                tls_version=ssl.PROTOCOL_TLS_CLIENT,
            )
        except (ssl.SSLError, OSError, ValueError) as exc:
            raise BrokerRefused(
                f"MQTT TLS settings (RCD_MQTT_TLS_CA, _CERT, _KEY): {exc}"
            ) from exc

    # -- lifecycle -------------------------------------------------------------
    def start(self, timeout: float = 10.0) -> MqttLink:
        host, port = self._rotation.current
        try:
            # connect_async: a node that is down now is skipped by the reconnect loop
            if self._v5:
                properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
                properties.SessionExpiryInterval = SESSION_EXPIRY_S
                self._client.connect_async(
                    host, port, keepalive=30, clean_start=False, properties=properties
                )
            else:
                self._client.connect_async(host, port, keepalive=30)
        except (OSError, ValueError) as exc:
            raise DispatchError(f"cannot reach MQTT broker {host}:{port}: {exc}") from exc
        self._client.reconnect_delay_set(min_delay=1, max_delay=5 if self._rotation.several else 120)
        self._worker = threading.Thread(target=self._work, name="rcd-mqtt-handlers", daemon=True)
        self._worker.start()
        self._client.loop_start()
        self._started = True
        deadline = time.monotonic() + timeout
        while not self._connected.wait(0.05) and self._refused is None:
            if time.monotonic() > deadline:
                self.close()
                nodes = ", ".join(f"{h}:{p}" for h, p in self._settings.broker_addresses())
                raise DispatchError(
                    f"cannot reach MQTT broker {nodes}: no connection within {timeout:.0f}s "
                    "(down, or its TLS refused ours?)"
                )
        if self._refused is not None:
            self.close()
            raise BrokerRefused(
                f"MQTT broker {host}:{port} refused user {self._settings.mqtt_username!r}: "
                f"{self._refused} (check RCD_MQTT_USERNAME, RCD_MQTT_PASSWORD and the "
                "broker's password file)"
            )
        return self

    def close(self) -> None:
        if not self._started:
            return
        self._started = False
        try:
            self._client.disconnect()
        finally:
            self._client.loop_stop()
            self._inbox.put(None)  # after what is queued: those are handled first
            if self._worker is not None:
                self._worker.join(timeout=10)

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    # -- callbacks (paho's network thread) ------------------------------------
    def _handle_connect(
        self,
        client: paho.Client,
        _userdata: object,
        _flags: object,
        reason: ReasonCode,
        props: object,
    ) -> None:
        if reason.is_failure:
            # At start-up the caller says it in one line (BrokerRefused); later, log it.
            if self._connected_once:
                log.error("MQTT connection refused: %s", reason)
            self._refused = str(reason)
            return
        allowed = getattr(props, "ReceiveMaximum", None) if self._v5 else None
        if isinstance(allowed, int) and allowed < self._settings.mqtt_inflight_window:
            log.warning(
                "the broker's Receive Maximum is %d, below RCD_MQTT_INFLIGHT_WINDOW=%d: "
                "set the window to it", allowed, self._settings.mqtt_inflight_window,
            )
        subscriptions = []
        wants_results = self._on_result is not None or self._on_results is not None
        if wants_results and self._settings.broker_kind != "nats":
            shared = self._v5 and self._settings.mqtt_results_subscription == "shared"
            results_filter = (
                topics.shared_subscription(self._settings.mqtt_share_group, topics.ALL_RESULTS)
                if shared
                else topics.ALL_RESULTS
            )
            subscriptions.append((results_filter, 1))
        if self._on_status is not None:
            subscriptions.append((topics.ALL_STATUS, 1))
        if subscriptions:
            client.subscribe(subscriptions)
        self._refused = None
        self._connected_once = True
        self._connected_at = time.monotonic()
        self._generation += 1
        self._connected.set()

    def _handle_disconnect(
        self,
        _client: paho.Client,
        _userdata: object,
        _flags: object,
        reason: ReasonCode,
        _props: object,
    ) -> None:
        self._connected.clear()
        if reason.is_failure and self._connected_once:  # a refused start-up says it itself
            log.warning("MQTT disconnected (client %s): %s (paho reconnects)", self._client_id, reason)
            self._note_short_session()
            self._next_node()

    def _note_short_session(self) -> None:
        """Name the likely cause when connections keep dropping soon after they open.

        The shipped mosquitto makes each account its client id: two replicas on one
        account take the session from each other about once a second (paho reconnects
        both), each losing the PUBACKs in flight. Seen as a plain dropped connection.
        """
        if time.monotonic() - self._connected_at > SHORT_SESSION_S:
            self._short_sessions = 0
            return
        self._short_sessions += 1
        if self._short_sessions == SHORT_SESSIONS_TO_WARN:
            log.error(
                "MQTT: %d connections in a row dropped within %.0f s of opening: is another "
                "client connected with account %r? The broker makes the account the client "
                "id: give every coordinator replica its own (RCD_MQTT_USERNAME)",
                self._short_sessions, SHORT_SESSION_S, self._settings.mqtt_username,
            )

    def _handle_connect_fail(self, _client: paho.Client, _userdata: object) -> None:
        self._next_node()

    def _next_node(self) -> None:
        if self._rotation.several:
            host, port = self._rotation.advance(self._client)
            log.warning("MQTT: next attempt on broker node %s:%d", host, port)

    def _handle_message(
        self, _client: paho.Client, _userdata: object, message: paho.MQTTMessage
    ) -> None:
        # The broker sends at most our Receive Maximum of unacknowledged messages: that
        # bounds the inbox.
        self._inbox.put((self._generation, message))

    def _work(self) -> None:
        """The handler thread: what has arrived is handled together (``_handle``), then
        each message is PUBACKed, in arrival order."""
        while (item := self._inbox.get()) is not None:
            items = [item]
            stopping = False
            while len(items) < BATCH_MAX:
                try:
                    following = self._inbox.get_nowait()
                except queue.Empty:
                    break
                if following is None:
                    stopping = True
                    break
                items.append(following)
            self._handle([message for _, message in items])
            for generation, message in items:
                # A message id belongs to the connection it came on: after a reconnect the
                # broker delivers unacknowledged ones again, and this one's id may name
                # another.
                if message.qos > 0 and generation == self._generation:
                    self._client.ack(message.mid, message.qos)
            if stopping:
                return

    def _handle(self, messages: list[paho.MQTTMessage]) -> None:
        """Statuses one by one; the result-topic messages between them as one batch."""
        results: list[tuple[str, bytes]] = []
        for message in messages:
            if message.topic.endswith("/status"):
                self._handle_results(results)
                results = []
                self._run(self._on_status, message.topic, bytes(message.payload))
            else:
                results.append((message.topic, bytes(message.payload)))
        self._handle_results(results)

    def _handle_results(self, batch: list[tuple[str, bytes]]) -> None:
        if not batch:
            return
        if self._on_results is None:
            for topic, payload in batch:
                self._run(self._on_result, topic, payload)
            return
        try:
            self._on_results(batch)
        except Exception:  # never let a handler end this thread
            log.exception("handler failed for %d result message(s); the agents send them "
                          "again", len(batch))

    @staticmethod
    def _run(handler: Handler | None, topic: str, payload: bytes) -> None:
        if handler is None:
            return
        try:
            handler(topic, payload)
        except Exception:  # never let a handler end this thread
            # not stored, so not acknowledged to the agent: it sends the message again
            log.exception("handler failed for %s; the agent sends it again", topic)

    # -- publishing ---------------------------------------------------------------
    def publish_nowait(self, message: Outgoing) -> bool:
        """Queue one QoS 1 message without waiting for its PUBACK (safe on paho's
        thread); False if paho refused it at once (e.g. not connected)."""
        info = self._client.publish(
            message.topic, message.payload, qos=topics.QOS, retain=message.retain
        )
        return info.rc == MQTTErrorCode.MQTT_ERR_SUCCESS

    def publish_many(self, messages: Sequence[Outgoing]) -> None:
        """Publish all with QoS 1, then wait until the broker acknowledged each."""
        if not self._connected.is_set():
            raise DispatchError("not connected to the MQTT broker")
        infos = []
        for message in messages:
            info = self._client.publish(
                message.topic, message.payload, qos=topics.QOS, retain=message.retain
            )
            if info.rc not in (MQTTErrorCode.MQTT_ERR_SUCCESS, MQTTErrorCode.MQTT_ERR_NO_CONN):
                raise DispatchError(
                    f"publish to {message.topic} failed: {paho.error_string(info.rc)}"
                )
            infos.append(info)
        deadline = time.monotonic() + self._settings.mqtt_puback_timeout_s
        # The broker acknowledges one connection's QoS 1 messages in order: wait for the
        # last one first (one sleep instead of one wake-up per message), then check
        # every one of them (already set: no waiting) - each PUBACK is still required.
        if infos:
            with contextlib.suppress(RuntimeError, ValueError):  # re-raised below
                infos[-1].wait_for_publish(self._settings.mqtt_puback_timeout_s)
        for info in infos:
            remaining = deadline - time.monotonic()
            try:
                info.wait_for_publish(max(remaining, 0.001))
            except (RuntimeError, ValueError) as exc:
                raise DispatchError(f"publish failed: {exc}") from exc
            if not info.is_published():
                raise DispatchError(
                    f"no PUBACK within {self._settings.mqtt_puback_timeout_s}s "
                    f"({sum(1 for i in infos if not i.is_published())} of {len(infos)} pending)"
                )
