"""Step 9: tell Legacy how every order ended, from a durable outbox, until it
acknowledges.

The outbox is the coordinator's ``legacy_notifications`` table: one row per ended
order, written in the same transaction as the order's final state
(``central.services.lifecycle.on_order_finished``), so nothing is lost across a
restart. :class:`LegacyNotifier` claims due rows, sends a ``created EndDeviceEvents``
message to the order's ReplyAddress (or the configured Legacy endpoint), and on an
acknowledgement (HTTP 2xx, a SOAP response whose ``Reply/Result`` is OK) marks the
row delivered and the order ``reported``. Otherwise the row is retried with
exponential backoff; a Result PARTIAL or FAILED, with Legacy's Errors, is also
written on the order's timeline. After ``max_attempts`` the row is given up: it
stays undelivered, the order's timeline says so and the dashboard counts it. The MessageID is derived from the order and its final state, so a re-send
(e.g. after a crash between Legacy's acknowledgement and our commit) carries the same
MessageID and Legacy can drop the duplicate.

Several replicas may run notifiers on one database: a row is claimed by moving its
``next_attempt_at`` forward in a conditional UPDATE, and only the replica whose
UPDATE matched sends it.
"""

from __future__ import annotations

import logging
import random
import threading
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import httpx
from lxml import etree
from sqlalchemy import CursorResult, or_, update
from sqlalchemy.orm import Session, sessionmaker

from central.db import session_scope
from central.errors import CentralError
from central.models import LEGACY_GIVEN_UP, LegacyNotification, Order
from central.services import orders as order_service
from central.services.lifecycle import note, utcnow
from central.services.workorders import work_order_for
from central.soap import cim_write, device_events, reply_policy
from central.soap.config import SoapSettings
from central.soap.faults import SOAP11_ENV, SoapFault
from central.soap.service_port import ControlAction, OrderEnded, Outcome
from central.soap.xmlsafe import XmlLimits, parse_request

log = logging.getLogger(__name__)

ACTOR = "legacy-notifier"
SOAP_ACTION = "http://iec.ch/TC57/2011/EndDeviceEvents/CreatedEndDeviceEvents"
OUTCOME_OF_STATE: dict[str, Outcome] = {
    "completed_connected": Outcome.CONNECTED,
    "completed_disconnected": Outcome.DISCONNECTED,
    "completed_armed": Outcome.ARMED,
    "failed": Outcome.FAILED,
    "expired": Outcome.EXPIRED,
    "cancelled": Outcome.CANCELLED,
}
_ACK_LIMITS = XmlLimits(max_bytes=1024 * 1024, max_depth=40, max_elements=10_000)
LEGACY_STEP = 9
GIVEN_UP = LEGACY_GIVEN_UP  # last_error prefix of a row no longer retried
NEVER = datetime(9999, 1, 1, tzinfo=UTC)


@dataclass
class Delivery:
    """One claimed outbox row, ready to send (or to close without sending)."""

    row_id: int
    order_id: str
    target: str | None
    message_id: str
    body: bytes | None  # None: nothing to send (see ``skip``)
    skip: str | None = None
    report: bool = True  # advance the order to ``reported`` when done
    final_state: str = ""  # the row's final state when prepared (see ``_close``)


def ended_from_order(order: Order, work_order_id: int | None) -> OrderEnded | None:
    outcome = OUTCOME_OF_STATE.get(order.state)
    if outcome is None:
        return None
    reason = order.result_reason
    if reason and order.result_detail:
        reason = f"{reason}: {order.result_detail}"
    return OrderEnded(
        order_id=order.id,
        meter_id=order.meter_id,
        action=ControlAction(order.action),
        outcome=outcome,
        ended_at=order.finished_at or order.updated_at,
        energy_value=order.energy_value,
        energy_unit=order.energy_unit,
        energy_read_at=order.energy_read_at,
        failure_reason=reason if outcome not in _SUCCESS else None,
        work_order_ref=f"WO-{work_order_id}" if work_order_id is not None else None,
        issuer_id=order.issuer_id,
        issuer_tracking_id=order.external_ref,
    )


_SUCCESS = frozenset({Outcome.CONNECTED, Outcome.DISCONNECTED, Outcome.ARMED})


@dataclass(frozen=True)
class Acknowledgement:
    ok: bool
    why: str = ""
    # Legacy answered with a Reply that is not OK (kept on the order's timeline)
    refused: bool = False


def is_acknowledgement(
    response: httpx.Response, *, reply_optional: bool = False
) -> Acknowledgement:
    """Legacy's acknowledgement is its Reply/Result: OK ends delivery, anything else
    (PARTIAL, FAILED, a Fault, no Reply unless ``reply_optional``) does not."""
    if not 200 <= response.status_code < 300:
        return Acknowledgement(False, f"HTTP {response.status_code}")
    try:
        root = parse_request(response.content, _ACK_LIMITS)
    except SoapFault as fault:
        return Acknowledgement(False, f"reply is not usable XML: {fault.message}")
    if root.tag != f"{{{SOAP11_ENV}}}Envelope":
        return Acknowledgement(False, f"reply is not a SOAP 1.1 envelope ({root.tag})")
    body = root.find(f"{{{SOAP11_ENV}}}Body")
    message = next((c for c in body if isinstance(c.tag, str)), None) if body is not None else None
    if message is None:
        return Acknowledgement(False, "reply has an empty SOAP Body")
    if message.tag == f"{{{SOAP11_ENV}}}Fault":
        text = message.findtext("faultstring") or etree.tostring(message, encoding="unicode")[:200]
        return Acknowledgement(False, f"SOAP Fault: {text}")
    answer = cim_write.read_answer(message)
    if answer.result is None:
        if reply_optional:
            return Acknowledgement(True)
        return Acknowledgement(False, "reply has no Reply/Result")
    if answer.result != "OK":
        return Acknowledgement(False, answer.summary, refused=True)
    return Acknowledgement(True)


class LegacyNotifier:
    def __init__(
        self,
        sessions: sessionmaker[Session],
        settings: SoapSettings,
        *,
        client: httpx.Client | None = None,
    ) -> None:
        self.sessions = sessions
        self.settings = settings
        self._client = client
        self._own_client = client is None
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._random = random.Random()

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        if self._thread is not None:
            return
        self._stop.clear()
        if self._client is None:
            auth = None
            if self.settings.legacy_username is not None:
                auth = httpx.BasicAuth(
                    self.settings.legacy_username, self.settings.legacy_password or ""
                )
            self._client = httpx.Client(timeout=self.settings.legacy_timeout_s, auth=auth)
        self._thread = threading.Thread(target=self._run, name="legacy-notifier", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        thread = self._thread
        self._stop.set()
        self._wake.set()
        try:
            if thread is not None:
                thread.join(timeout)
        finally:
            self._thread = None
            if self._own_client and self._client is not None:
                self._client.close()
                self._client = None

    def wake(self) -> None:
        """Look at the outbox now (e.g. right after an order ended)."""
        self._wake.set()

    def __enter__(self) -> LegacyNotifier:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                busy = self.run_once() > 0
            except Exception:
                log.exception("legacy notifier round failed")
                busy = False
            if not busy:
                self._wake.wait(self.settings.poll_interval_s)
                self._wake.clear()

    # ------------------------------------------------------------------ one round

    def run_once(self, now: datetime | None = None) -> int:
        """Try every due row once; returns how many rows were closed (sent or skipped)."""
        now = now or utcnow()
        with session_scope(self.sessions) as session:
            due = [
                row.id
                for row in order_service.pending_notifications(
                    session, limit=self.settings.batch_size, now=now
                )
            ]
        closed = 0
        for row_id in due:
            if self._stop.is_set():
                break
            delivery = self._claim(row_id, now)
            if delivery is None:
                continue
            if self._deliver(delivery):
                closed += 1
        if not self._stop.is_set():
            # unsolicited relay changes (issue 16), from their own outbox
            closed += device_events.run_once(
                self.sessions, self.settings, self._post_event, self.backoff, now
            )
        return closed

    def _post_event(self, target: str, body: bytes) -> Acknowledgement:
        """POST one message with this notifier's client and read Legacy's answer."""
        headers = {"Content-Type": "text/xml; charset=utf-8", "SOAPAction": SOAP_ACTION}
        try:
            if self._client is not None:
                response = self._client.post(target, content=body, headers=headers)
            else:  # run_once without start(): a short-lived client
                with httpx.Client(timeout=self.settings.legacy_timeout_s) as short:
                    response = short.post(target, content=body, headers=headers)
            return is_acknowledgement(response, reply_optional=self.settings.compat_legacy_shapes)
        except httpx.HTTPError as exc:
            return Acknowledgement(False, f"{type(exc).__name__}: {exc}")

    def _claim(self, row_id: int, now: datetime) -> Delivery | None:
        table = LegacyNotification
        with session_scope(self.sessions) as session:
            result = session.execute(
                update(table)
                .where(table.id == row_id, table.delivered_at.is_(None))
                .where(or_(table.next_attempt_at.is_(None), table.next_attempt_at <= now))
                .values(next_attempt_at=now + timedelta(seconds=self.settings.claim_s))
            )
            assert isinstance(result, CursorResult)
            if result.rowcount != 1:
                return None  # another replica has it, or it was delivered meanwhile
            row = session.get(LegacyNotification, row_id)
            assert row is not None
            order = session.get(Order, row.order_id)
            return self._prepare(session, row, order)

    def _prepare(self, session: Session, row: LegacyNotification, order: Order | None) -> Delivery:
        if order is None:
            return Delivery(row.id, row.order_id, None, "", None, skip="order does not exist")
        from_legacy = order.source == "soap"
        if not from_legacy and not self.settings.notify_all_orders:
            return Delivery(
                row.id, order.id, None, "", None, skip="not a Legacy order", report=False
            )
        if order.state in ("rejected", "reported"):
            return Delivery(
                row.id,
                order.id,
                None,
                "",
                None,
                skip="the refusal was in the synchronous reply"
                if order.state == "rejected"
                else "already reported",
            )
        work_order = work_order_for(session, order.id)
        ended = ended_from_order(order, work_order.id if work_order else None)
        if ended is None:
            return Delivery(row.id, order.id, None, "", None, skip=f"state {order.state}")
        message_id = cim_write.result_message_id(ended)
        body = cim_write.build_event(
            ended,
            correlation_id=order.correlation_id,
            source=self.settings.source,
            message_id=message_id,
            naming=cim_write.Naming(self.settings.meter_name_type),
        )
        # checked again here: a stored address is no more trusted than a requested one
        target = reply_policy.delivery_target(
            order.reply_address if from_legacy else None, self.settings
        )
        return Delivery(row.id, order.id, target, message_id, body, final_state=row.final_state)

    def _deliver(self, delivery: Delivery) -> bool:
        if delivery.body is None:
            self._close(delivery, f"not sent: {delivery.skip}")
            return True
        if delivery.target is None:
            self._retry(delivery, "no ReplyAddress and no Legacy endpoint configured")
            return False
        assert self._client is not None or self._own_client
        client = self._client
        if client is None:  # run_once without start(): a short-lived client
            with httpx.Client(timeout=self.settings.legacy_timeout_s) as short:
                return self._post(short, delivery)
        return self._post(client, delivery)

    def _post(self, client: httpx.Client, delivery: Delivery) -> bool:
        assert delivery.target is not None and delivery.body is not None
        try:
            response = client.post(
                delivery.target,
                content=delivery.body,
                headers={"Content-Type": "text/xml; charset=utf-8", "SOAPAction": SOAP_ACTION},
            )
            ack = is_acknowledgement(response, reply_optional=self.settings.compat_legacy_shapes)
        except httpx.HTTPError as exc:
            ack = Acknowledgement(False, f"{type(exc).__name__}: {exc}")
        if not ack.ok:
            self._retry(delivery, ack.why, on_timeline=ack.refused)
            return False
        self._close(
            delivery, f"acknowledged by {delivery.target} (MessageID {delivery.message_id})"
        )
        return True

    def _close(self, delivery: Delivery, detail: str) -> None:
        now = utcnow()
        with session_scope(self.sessions) as session:
            row = session.get(LegacyNotification, delivery.row_id)
            if row is None:
                return
            if delivery.body is not None and row.final_state != delivery.final_state:
                # a late result corrected the order while this was on its way: what
                # Legacy acknowledged is the old end; the row stays due for the new one
                log.info("order %s corrected while notifying; sending again", delivery.order_id)
                row.next_attempt_at = None
                return
            row.attempts += 1
            if delivery.report:
                try:
                    order_service.mark_reported(session, delivery.order_id, ACTOR, detail, now=now)
                except CentralError as exc:
                    log.warning("order %s not marked reported: %s", delivery.order_id, exc)
            row.delivered_at = row.delivered_at or now
            row.last_error = None if delivery.body is not None else detail
        log.info("legacy notification for order %s closed: %s", delivery.order_id, detail)

    def backoff(self, attempts: int) -> float:
        base = min(self.settings.retry_max_s, self.settings.retry_initial_s * 2.0 ** (attempts - 1))
        jitter = self.settings.retry_jitter
        return float(base * (1 - jitter + 2 * jitter * self._random.random()))

    def _retry(self, delivery: Delivery, why: str, *, on_timeline: bool = False) -> None:
        now = utcnow()
        limit = self.settings.max_attempts
        with session_scope(self.sessions) as session:
            row = session.get(LegacyNotification, delivery.row_id)
            if row is None:
                return
            row.attempts += 1
            given_up = bool(limit) and row.attempts >= limit
            row.last_error = ((GIVEN_UP if given_up else "") + why)[:2000]
            row.next_attempt_at = (
                NEVER if given_up else now + timedelta(seconds=self.backoff(row.attempts))
            )
            order = session.get(Order, delivery.order_id) if on_timeline or given_up else None
            if order is not None:
                detail = f"attempt {row.attempts}: {why}"
                if given_up:
                    detail += f"; given up after {row.attempts} attempts"
                event = "legacy_gave_up" if given_up else "legacy_refused"
                note(session, order, event, ACTOR, detail[:2000], step=LEGACY_STEP, at=now)
        log.warning(
            "legacy notification for order %s not acknowledged (%s); %s",
            delivery.order_id,
            why,
            "given up" if limit and row.attempts >= limit else "retry later",
        )
