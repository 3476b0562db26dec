"""Results from a NATS cluster: a durable JetStream consumer the replicas share.

On NATS (``RCD_BROKER_KIND=nats``) the agents still publish their receipts and
results with MQTT QoS 1; the NATS server turns ``rcd/v1/c/<id>/result`` into the
subject ``rcd.v1.c.<id>.result``, which the stream ``RCD_RESULTS`` (three
replicas) keeps. Every coordinator replica pulls from one durable consumer
(``RCD_NATS_DURABLE``, the same on every replica), so each message goes to one
replica at a time; it is acknowledged only after the handler committed it. A
message whose handler failed is handed out again after ``nats_retry_s`` (NAK
with delay), one whose replica died after the consumer's ack wait, to another
replica. This replaces MQTT shared subscriptions, which NATS does not have.

nats-py is asyncio; the consumer runs its own event loop in a thread, and the
(synchronous) handler in that thread's executor. nats-py errors are mapped to
:class:`central.errors.DispatchError` at start.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import threading
from collections.abc import Callable
from typing import Any

from central.errors import DispatchError
from central.settings import Settings
from shared.nats_config import RESULTS_STREAM, RESULTS_SUBJECT, mqtt_topic

log = logging.getLogger(__name__)

Handler = Callable[[str, bytes], bool]
STREAM_MAX_AGE_S = 14 * 24 * 3600  # as long as a mosquitto session is kept
FETCH_BATCH = 100


class JetStreamResults:
    def __init__(self, settings: Settings, on_result: Handler) -> None:
        if not settings.nats_urls:
            raise DispatchError("RCD_NATS_URLS is empty: the NATS consumer needs the cluster's addresses")
        self._settings = settings
        self._on_result = on_result
        self._loop = asyncio.new_event_loop()
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._stopping: asyncio.Event | None = None
        self.connected = False

    # -- lifecycle -------------------------------------------------------------
    def start(self, timeout: float = 30.0) -> JetStreamResults:
        self._thread = threading.Thread(target=self._run, name="rcd-jetstream", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout):
            self.close()
            raise DispatchError(f"NATS consumer did not start within {timeout}s")
        if self._error is not None:
            self.close()
            raise DispatchError(f"NATS consumer: {self._error}") from self._error
        return self

    def close(self) -> None:
        stopping = self._stopping
        if stopping is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(stopping.set)
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_until_complete(self._main())
        except BaseException as exc:  # reported to start(); logged if after it
            if not self._ready.is_set():
                self._error = exc
            else:
                log.exception("NATS consumer stopped")
        finally:
            self._ready.set()
            self._loop.close()

    # -- the consumer ------------------------------------------------------------
    async def _main(self) -> None:
        import nats
        from nats.js import api

        settings = self._settings
        self._stopping = asyncio.Event()

        async def up() -> None:
            self.connected = True
            log.info("NATS connection restored")

        async def down() -> None:
            self.connected = False
            if self._stopping is not None and self._stopping.is_set():
                return
            log.warning("NATS connection lost; reconnecting to the other nodes")

        connection = await nats.connect(
            servers=list(settings.nats_urls),
            user=settings.mqtt_username,
            password=settings.mqtt_password,
            name=settings.mqtt_client_id,
            max_reconnect_attempts=-1,
            reconnect_time_wait=0.5,
            reconnected_cb=up,
            disconnected_cb=down,
            tls=self._tls_context(),
        )
        try:
            js = connection.jetstream()
            await self._ensure_stream(js, api)
            subscription = await js.pull_subscribe(
                RESULTS_SUBJECT,
                durable=settings.nats_durable,
                stream=RESULTS_STREAM,
                config=api.ConsumerConfig(
                    ack_wait=settings.nats_ack_wait_s,
                    max_ack_pending=10_000,
                    num_replicas=settings.nats_replicas,
                ),
            )
            self.connected = True
            self._ready.set()
            while not self._stopping.is_set():
                try:
                    await self._fetch_once(subscription, connection)
                except Exception:  # whatever it was, results must keep coming
                    log.exception("NATS consumer pass failed; going on")
                    await asyncio.sleep(1.0)
        finally:
            self.connected = False
            await connection.close()

    def _tls_context(self) -> ssl.SSLContext | None:
        if self._settings.mqtt_tls_ca is None:
            return None
        return ssl.create_default_context(cafile=str(self._settings.mqtt_tls_ca))

    async def _ensure_stream(self, js, api) -> None:  # type: ignore[no-untyped-def]
        from nats.js.errors import NotFoundError

        try:
            await js.stream_info(RESULTS_STREAM)
            return
        except NotFoundError:
            pass
        await js.add_stream(
            api.StreamConfig(
                name=RESULTS_STREAM,
                subjects=[RESULTS_SUBJECT],
                storage=api.StorageType.FILE,
                num_replicas=self._settings.nats_replicas,
                max_age=STREAM_MAX_AGE_S,
                retention=api.RetentionPolicy.LIMITS,
            )
        )
        log.info("created JetStream stream %s (%d replicas)", RESULTS_STREAM, self._settings.nats_replicas)

    async def _fetch_once(self, subscription, connection) -> None:  # type: ignore[no-untyped-def]
        import nats.errors

        try:
            messages = await subscription.fetch(FETCH_BATCH, timeout=1.0)
        except (TimeoutError, nats.errors.TimeoutError):
            return
        except nats.errors.Error as exc:  # a node lost mid-fetch: the client reconnects
            log.warning("NATS fetch failed: %s", exc)
            await asyncio.sleep(0.5)
            return
        loop = asyncio.get_running_loop()
        # the handler (database) runs off the event loop, one batch per executor call
        outcomes = await loop.run_in_executor(None, self._handle_batch, messages)
        try:
            for message, ok in zip(messages, outcomes, strict=True):
                if ok:
                    await message.ack()
                else:
                    await message.nak(delay=self._settings.nats_retry_s)
            await connection.flush(timeout=5)
        except (TimeoutError, nats.errors.Error) as exc:
            # an ack that did not arrive: redelivered after the ack wait, handled as a duplicate
            log.warning("acknowledgements not confirmed: %s", exc)

    def _handle_batch(self, messages: list[Any]) -> list[bool]:
        outcomes = []
        for message in messages:
            topic = mqtt_topic(message.subject)
            try:
                outcomes.append(self._on_result(topic, message.data))
            except Exception:
                log.exception("handler failed for %s", topic)
                outcomes.append(False)
        return outcomes
