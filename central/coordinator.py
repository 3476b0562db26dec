"""The running coordinator: MQTT link, result/status consumers and the
background loop (meter tables, dispatch, cancels, republish, expiry sweep).

One per process; several processes may share one PostgreSQL (dispatch claims
rows with SKIP LOCKED; results are split by the shared subscription on an MQTT 5
broker, by one durable JetStream consumer on a NATS cluster, or each replica gets
them all with a plain one: every handler is idempotent).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import timedelta
from functools import partial

from sqlalchemy.orm import Session, sessionmaker

from central import metrics
from central.db import session_scope, sqlite_write_lock
from central.errors import CentralError, ConfigurationError, Conflict
from central.jetstream import JetStreamResults
from central.mqtt import MqttLink
from central.services import (
    dispatch,
    reconnect_sla,
    rejected,
    relay_state,
    results,
    selection,
    validation,
)
from central.services.dispatch import Outgoing
from central.services.lifecycle import utcnow
from central.settings import Settings
from shared import topics
from shared.contracts import (
    AckedMessage,
    AgentMessage,
    ConcentratorStatus,
    MessageAck,
    OrderReceipt,
    OrderResult,
    RefusalReport,
    RelayReport,
    decode,
)
from shared.errors import SharedError
from shared.message_kinds import parse_agent_message
from shared.signing import CommandSigner, generate_keypair, load_private_key, load_private_key_file

log = logging.getLogger(__name__)

# An ack is idempotent; its signed deadline only bounds how long a copy may linger.
ACK_LIFETIME = timedelta(days=1)
MAX_ACKS = 500  # per MessageAck (its contract's limit)
# a receipt or result with the topic and the bytes it came as (for a rejected-message row)
_Applicable = tuple[str, bytes, OrderReceipt | OrderResult]
# Receipts and results that apply to no order: kept as rejected messages, then acked.
_KEPT_AS_REJECTED = {
    "unknown_order": "for an order the coordinator does not know",
    "wrong_concentrator": "for an order of another concentrator or meter",
    "refused_outcome": (
        "outcome 'rejected' (an agent's refusal of a command it could not verify) ends no order"
    ),
}


def load_signer(settings: Settings) -> CommandSigner:
    if settings.signing_key_pem:
        return CommandSigner(load_private_key(settings.signing_key_pem.encode()))
    if settings.signing_key_path is not None:
        try:
            return CommandSigner(load_private_key_file(settings.signing_key_path))
        except (OSError, ValueError) as exc:
            raise ConfigurationError(
                f"cannot load signing key {settings.signing_key_path}: {exc}"
            ) from exc
    if settings.environment == "production":
        raise ConfigurationError("production needs RCD_SIGNING_KEY_PATH")
    signer = CommandSigner(load_private_key(generate_keypair()[0]))
    log.warning(
        "no signing key configured: using an ephemeral key %s (agents will refuse it)",
        signer.key_id,
    )
    return signer


class Coordinator:
    def __init__(self, settings: Settings, factory: sessionmaker[Session]) -> None:
        self.settings = settings
        self.factory = factory
        self.signer = load_signer(settings)
        self.link: MqttLink | None = None
        self.results_consumer: JetStreamResults | None = None
        self._dispatch_lock = threading.Lock()
        self._wake = threading.Event()
        # set by kick(): the next pass runs every step; wake_dispatch() asks for dispatch only
        self._full_pass = threading.Event()
        # set by everything that wakes the loop except slot_freed(): no settling
        self._urgent = threading.Event()
        self._dispatched_at = float("-inf")  # monotonic end of the last loop dispatch
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._sla_at = float("-inf")  # monotonic time of the last reconnect SLA sweep
        # publish earlier claims while the next is being claimed (``dispatch_now``)
        self._publisher = ThreadPoolExecutor(2, thread_name_prefix="rcd-publish")

    # -- lifecycle -------------------------------------------------------------
    def start(self) -> None:
        # The holiday calendar loads on its first question (0.14 s of CPU): here, not in
        # the first request Legacy sends (issue 14).
        today = validation.local_day(utcnow(), self.settings.timezone)
        validation.is_working_day(today, self.settings.holiday_country)
        if self.settings.mqtt_enabled:
            self.link = MqttLink(
                self.settings, on_results=self.handle_results, on_status=self.handle_status
            ).start()
            if self.settings.broker_kind == "nats":
                try:
                    self.results_consumer = JetStreamResults(
                        self.settings, self.handle_result
                    ).start()
                except CentralError:
                    self.link.close()
                    raise
        self._thread = threading.Thread(target=self._loop, name="rcd-central-loop", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._urgent.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        self._publisher.shutdown(wait=True)
        if self.results_consumer is not None:
            self.results_consumer.close()
        if self.link is not None:
            self.link.close()

    def kick(self) -> None:
        """Wake the background loop now for a whole pass (e.g. after an approval or a
        registry change)."""
        self._full_pass.set()
        self._urgent.set()
        self._wake.set()

    def wake_dispatch(self) -> None:
        """Wake the background loop for its dispatch step only, now: orders were
        accepted, or a relay report may have proposed a reconnect. The other steps
        (sweep, cancels, tables, republish) keep their interval: run on every result of
        a campaign they were most of the coordinator's work while it waited for
        nothing."""
        self._urgent.set()
        self._wake.set()

    def slot_freed(self) -> None:
        """A result freed an in-flight slot: dispatch, but no sooner than
        ``dispatch_settle_s`` after the previous dispatch, so that the results arriving
        meanwhile share its claim (see the setting)."""
        self._wake.set()

    @property
    def mqtt_connected(self) -> bool:
        return self.link is not None and self.link.connected

    # -- work ------------------------------------------------------------------------
    def dispatch_now(self) -> int:
        """One dispatch pass now (the API calls it after accepting orders).

        Claim after claim until nothing more is ready (no per-pass cap); the first one
        small, so that a batch's first commands leave early. A pass is a pipeline of
        two stages: this thread claims (the claim lock: selection, signing, the move to
        ``dispatched`` with the signed commands), a publisher thread sends a committed
        claim and waits for its PUBACKs while the next is claimed; each claim is
        published only after the one before it, so a concentrator still gets its
        commands in claim order. At most two claims wait behind the one being
        claimed."""
        link = self.link
        if link is None:
            return 0
        published = 0
        sending: deque[Future[int]] = deque()  # publish tasks of this pass, in claim order
        limit = selection.FIRST_CLAIM_SIZE  # then CLAIM_SIZE: see FIRST_CLAIM_SIZE
        with self.factory() as session:
            try:
                while True:
                    with self._dispatch_lock:  # claims are serialised; publishing overlaps
                        claim = dispatch.claim_ready(
                            session, self.signer, self.settings, limit=limit
                        )
                    limit = selection.CLAIM_SIZE
                    while len(sending) >= 2:  # the claim before the last one is on the wire
                        published += sending.popleft().result()
                    if claim.ids:
                        before = sending[-1] if sending else None
                        sending.append(self._publisher.submit(self._publish, link, claim, before))
                    if not claim.more:
                        while sending:
                            published += sending.popleft().result()
                        return published
            finally:
                self._abandon(sending)

    @staticmethod
    def _abandon(sending: deque[Future[int]]) -> None:
        """A claim failed while the ones before it were being signed or published: their
        outcome only matters to the log (unsigned or unacked commands are sent again)."""
        for pending in sending:
            if pending.cancel():
                continue
            error = pending.exception()
            if error is not None:
                log.warning("dispatch: publishing a claim failed: %s", error)

    def _publish(
        self, link: MqttLink, claim: dispatch.Claim, before: Future[int] | None
    ) -> int:
        """Publish a claim once the claim before it is on the wire. If that one failed,
        this one fails with it, unsent: both are sent again in order by republish. The
        orders the broker acknowledged."""
        if before is not None:
            before.result()
        with self.factory() as session:
            return dispatch.publish_claimed(session, link, claim)

    def run_once(self) -> None:
        """One background pass. Each step runs on its own: one that fails (logged) does
        not hold back the others, and cancels go first, since they stop a switch."""
        link = self.link
        steps: list[tuple[str, Callable[[], object]]] = [
            ("expiry sweep", self._sweep),
            ("reconnect SLA", self._sla),
        ]
        if link is not None and link.connected:
            steps = [
                ("cancels", lambda: self._send_cancels(link)),
                *steps,
                (
                    "meter tables",
                    lambda: self._under_dispatch_lock(dispatch.push_meter_tables, link),
                ),
                (
                    "republish",
                    lambda: self._under_dispatch_lock(
                        partial(dispatch.republish_unacked, settings=self.settings), link
                    ),
                ),
                ("dispatch", self.dispatch_now),
            ]
        failed: list[str] = []
        for name, step in steps:
            try:
                step()
            except Exception as exc:  # logged; the other steps still run
                log.log(
                    logging.WARNING if isinstance(exc, CentralError) else logging.ERROR,
                    "background pass: %s failed: %s",
                    name,
                    exc,
                    exc_info=not isinstance(exc, CentralError),
                )
                failed.append(name)
        if failed:
            raise CentralError(f"background pass: {', '.join(failed)} failed (see above)")

    def _send_cancels(self, link: MqttLink) -> None:
        self._under_dispatch_lock(
            partial(dispatch.send_cancels, resend_after_s=self.settings.republish_after_s), link
        )

    def _sweep(self) -> None:
        with self.factory() as session:
            dispatch.sweep_expired(session, grace_s=self.settings.expiry_grace_s)

    def _sla(self) -> None:
        # minutes matter for a 24 h clock: not every pass (every few seconds) reads them all
        if time.monotonic() - self._sla_at < self.settings.reconnect_sla_sweep_s:
            return
        self._sla_at = time.monotonic()
        with self.factory() as session:
            reconnect_sla.sweep(session, self.settings)

    def _under_dispatch_lock(
        self, step: Callable[[Session, MqttLink, CommandSigner], object], link: MqttLink
    ) -> None:
        with self._dispatch_lock, self.factory() as session:
            step(session, link, self.signer)

    def _loop(self) -> None:
        next_full = 0.0  # monotonic time of the next whole pass
        while not self._stop.is_set():
            try:
                if self._full_pass.is_set() or time.monotonic() >= next_full:
                    self._full_pass.clear()
                    next_full = time.monotonic() + self.settings.sweep_interval_s
                    self.run_once()
                    self._dispatched_at = time.monotonic()
                elif self.link is not None and self.link.connected:
                    # cancels first: a reconnect waits for its superseded disconnect's cancel
                    self._send_cancels(self.link)
                    self.dispatch_now()
                    self._dispatched_at = time.monotonic()
            except CentralError as exc:
                log.warning("background pass: %s", exc)
            except Exception:
                log.exception("background pass failed")
            self._wake.wait(max(0.0, next_full - time.monotonic()))
            self._wake.clear()
            self._settle(next_full)

    def _settle(self, next_full: float) -> None:
        """Woken only by freed slots: wait out ``dispatch_settle_s`` from the last
        dispatch (anything urgent ends the wait)."""
        if not self._urgent.is_set():
            until = min(self._dispatched_at + self.settings.dispatch_settle_s, next_full)
            self._urgent.wait(max(0.0, until - time.monotonic()))
        # what woke the loop until now is seen by the pass that follows (its commits came
        # first); anything later wakes it again
        self._urgent.clear()
        self._wake.clear()

    # -- consumers (paho thread) --------------------------------------------------
    def handle_result(self, topic: str, payload: bytes) -> bool:
        """A message on a result topic: an :class:`OrderReceipt` (step 5), an
        :class:`OrderResult` (steps 6-8), a :class:`RefusalReport` or a
        :class:`RelayReport` (issue 16, ``services.relay_state``). Once it is
        committed the agent gets a signed :class:`MessageAck`; an exception (database
        down) sends none, and the agent sends the message again."""
        message = self._parse(topic, payload)
        if message is not None:
            self._handle_one(topic, payload, message)
        return True

    def handle_results(self, batch: list[tuple[str, bytes]]) -> None:
        """Result-topic messages that arrived together (the MQTT handler thread), each
        handled as :meth:`handle_result` would, in arrival order, except that receipts
        and results in a row are applied in one transaction and acknowledged with one
        ack per concentrator after its commit (``_apply_run``). One that cannot be
        stored is logged and not acknowledged: its agent sends it again."""
        run: list[_Applicable] = []
        for topic, payload in batch:
            try:
                message = self._parse(topic, payload)
                if isinstance(message, OrderReceipt | OrderResult):
                    run.append((topic, payload, message))
                    continue
                self._apply_run(run)
                run = []
                if message is not None:
                    self._handle_one(topic, payload, message)
            except Exception:
                log.exception("%s not stored; the agent sends it again", topic)
        self._apply_run(run)

    def _parse(self, topic: str, payload: bytes) -> AgentMessage | None:
        """The message, or None once a refused one is kept (``_reject``)."""
        try:
            message = parse_agent_message(payload)
        except SharedError as exc:
            self._reject(topic, payload, str(exc))
            return None
        if not topic.startswith(f"rcd/v1/c/{message.concentrator_id}/"):
            self._reject(
                topic, payload, f"{message.kind} names concentrator {message.concentrator_id}"
            )
            return None
        return message

    def _handle_one(self, topic: str, payload: bytes, message: AgentMessage) -> None:
        if isinstance(message, RefusalReport):
            self._refusal(topic, payload, message)
            return
        if isinstance(message, RelayReport):
            self._relay_report(topic, payload, message)
            return
        effect = self._apply(topic, payload, message)
        self._ack(message.concentrator_id, [AckedMessage(kind=message.kind, id=message.order_id)])
        if isinstance(message, OrderResult) and effect != "duplicate":
            self.slot_freed()  # dispatch waiting orders

    def _apply_run(self, run: list[_Applicable]) -> None:
        """Receipts and results in one transaction: one commit and one signed ack per
        concentrator instead of one of each per message (in a campaign, two messages per
        order). If that transaction fails (an order changed meanwhile, a row that
        cannot be written), nothing of it was committed: each message is then applied
        on its own, so one bad message costs the others nothing."""
        if len(run) > 1:
            try:
                effects = self._apply_together(run)
            except Exception as exc:
                log.info("%d receipts/results applied one at a time: %s", len(run), exc)
            else:
                acks: dict[str, list[AckedMessage]] = {}
                for _, _, message in run:
                    acks.setdefault(message.concentrator_id, []).append(
                        AckedMessage(kind=message.kind, id=message.order_id)
                    )
                for concentrator_id, acked in acks.items():
                    self._ack(concentrator_id, acked)
                if any(isinstance(message, OrderResult) and effect != "duplicate"
                       for (_, _, message), effect in zip(run, effects, strict=True)):
                    self.slot_freed()
                return
        for topic, payload, message in run:
            try:
                self._handle_one(topic, payload, message)
            except Exception:
                log.exception("%s for %s not stored; the agent sends it again",
                              message.kind, message.order_id)

    def _apply_together(self, run: list[_Applicable]) -> list[str]:
        session = self.factory()
        # the SQLite writer lock is held until the commit (session_scope exits first)
        with sqlite_write_lock(session), session_scope(lambda: session) as session:
            return [self._apply_in(session, topic, payload, message)
                    for topic, payload, message in run]

    @staticmethod
    def _apply_in(
        session: Session, topic: str, payload: bytes, message: OrderResult | OrderReceipt
    ) -> str:
        effect = results.apply_agent_message(session, message)
        if effect in _KEPT_AS_REJECTED:
            # nothing to apply it to: kept for the audit trail, then acked
            rejected.record_rejected(
                session, topic, payload, f"{message.kind}: {_KEPT_AS_REJECTED[effect]}"
            )
        return effect

    def _apply(self, topic: str, payload: bytes, message: OrderResult | OrderReceipt) -> str:
        for attempt in (1, 2):
            try:
                with session_scope(self.factory) as session:
                    return self._apply_in(session, topic, payload, message)
            except Conflict:
                # the order changed between read and write (e.g. the expiry sweep):
                # read it again once; it is then applied or recorded as late
                if attempt == 2:
                    raise
                log.info("%s for %s raced another change; retrying", message.kind, topic)
        raise AssertionError("unreachable")

    def _relay_report(self, topic: str, payload: bytes, report: RelayReport) -> bool:
        """Issue 16: apply it in one transaction, then ack it, as a result. One that
        names a meter or order it cannot be about is kept as rejected (and acked: a
        copy cannot fix it); one that could not be stored is not acked (sent again)."""
        with session_scope(self.factory) as session:
            effect = relay_state.apply_report(session, report, self.settings)
            why = relay_state.REFUSED.get(effect)
            if why is not None:
                log.warning("relay report %s on %s refused: %s", report.report_id, topic, why)
                rejected.record_rejected(session, topic, payload, f"relay_report: {why}")
        self._ack(report.concentrator_id, [AckedMessage(kind="relay_report", id=report.report_id)])
        if effect == "applied":
            self.wake_dispatch()  # a proposed reconnect (held) or a button press: look now
        return True

    def _refusal(self, topic: str, payload: bytes, report: RefusalReport) -> bool:
        with session_scope(self.factory) as session:
            _, new = rejected.record_refusal(session, topic, payload, report)
        if new:
            alarm = report.reason.value in rejected.KEY_ALARM_REASONS
            log.log(
                logging.ERROR if alarm else logging.WARNING,
                "security event: concentrator %s refused a message on its %s topic: %s (%s)%s",
                report.concentrator_id,
                report.topic_leaf,
                report.reason.value,
                report.detail,
                "; configuration alarm: check the concentrator's coordinator key" if alarm else "",
            )
        self._ack(report.concentrator_id, [AckedMessage(kind="refusal", id=report.refusal_id)])
        return True

    def _ack(self, concentrator_id: str, acked: list[AckedMessage]) -> None:
        """Tell the agent it may drop these from its outbox (after their commit)."""
        link = self.link
        if link is None:
            return
        for start in range(0, len(acked), MAX_ACKS):
            now = utcnow()
            ack = MessageAck(
                command_id=dispatch.new_command_id(),
                concentrator_id=concentrator_id,
                issued_at=now,
                deadline=now + ACK_LIFETIME,
                acks=acked[start : start + MAX_ACKS],
            )
            signed = self.signer.sign(ack)
            if link.publish_nowait(Outgoing(topics.commands(concentrator_id), signed)):
                for one in ack.acks:
                    metrics.ACKS.labels(kind=one.kind).inc()

    def _reject(self, topic: str, payload: bytes, reason: str) -> bool:
        """Keep a refused message (``services.rejected``), then acknowledge it: redelivery
        cannot fix it. If the row cannot be written, the exception leaves it unacknowledged
        and the broker delivers it again."""
        log.warning("refused agent message on %s: %s", topic, reason)
        with session_scope(self.factory) as session:
            rejected.record_rejected(session, topic, payload, reason)
        return True

    def handle_status(self, topic: str, payload: bytes) -> bool:
        try:
            status = decode(ConcentratorStatus, payload)
        except SharedError as exc:
            return self._reject(topic, payload, str(exc))
        if not topic.startswith(f"rcd/v1/c/{status.concentrator_id}/"):
            return self._reject(
                topic, payload, f"status names concentrator {status.concentrator_id}"
            )
        with session_scope(self.factory) as session:
            results.apply_status(session, status)
        return True
