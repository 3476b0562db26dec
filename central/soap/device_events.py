"""Unsolicited relay changes to Legacy (issue 16): standard CIM ``CreatedEndDeviceEvents``
for what a meter's relay did without an order, from the ``legacy_device_events``
outbox (written in the same transaction as the drift, see
``central.services.relay_state``).

The message is the one the order results use (``cim_write.build_event``), element for
element as the EndDeviceEvents schema orders them (mRID, createdDateTime, reason,
severity, Assets, EndDeviceEventDetails, EndDeviceEventType, status), with:

* ``EndDeviceEventType/@ref`` the standard code of the state the meter was seen in:
  3.31.0.68 disconnected, 3.31.0.42 connected, 3.31.0.11 armed;
* no issuerID/issuerTrackingID and no CorrelationID (no request of Legacy's behind
  it), and the detail ``orderInitiated`` = ``false``, ``cause`` (the log code or the
  read that showed it);
* ``mRID`` ``relay-event:<id>`` and a MessageID derived from it, so a re-send after a
  crash carries the same MessageID.

Delivered to the configured Legacy endpoint by the order-result notifier's round
(``LegacyNotifier.run_once``), with its backoff and acknowledgement rules; with no
endpoint configured a row is closed as not sent.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Protocol

from lxml import etree
from sqlalchemy import CursorResult, or_, select, update
from sqlalchemy.orm import Session, sessionmaker

from central.db import session_scope
from central.models import LEGACY_GIVEN_UP, DeviceEventNotification, Meter
from central.services.lifecycle import utcnow
from central.soap.cim import EDE, EDEM, EVENT_CODES, MSG, iso
from central.soap.cim_write import Naming, _header, _names, _soap, _sub
from central.soap.config import SoapSettings
from central.soap.service_port import Outcome

log = logging.getLogger(__name__)
NEVER = datetime(9999, 1, 1, tzinfo=UTC)  # next attempt of a row given up

CODE_OF_STATE = {
    "disconnected": EVENT_CODES[Outcome.DISCONNECTED],
    "connected": EVENT_CODES[Outcome.CONNECTED],
    "armed": EVENT_CODES[Outcome.ARMED],
}


def message_id(row_id: int) -> str:
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"ami-rcd:relay-event:{row_id}"))


def build_device_event(
    row: DeviceEventNotification,
    *,
    source: str,
    concentrator_id: str | None = None,
    naming: Naming = Naming(),
) -> bytes:
    """The CreatedEndDeviceEvents message for one unsolicited relay change."""
    env, body = _soap({"m": EDEM, "msg": MSG, "ede": EDE})
    message = _sub(body, f"{{{EDEM}}}CreatedEndDeviceEvents")
    _header(
        message,
        EDEM,
        verb="created",
        noun="EndDeviceEvents",
        source=source,
        message_id=message_id(row.id),
        correlation_id=None,
    )
    payload = _sub(message, f"{{{EDEM}}}Payload")
    events = _sub(payload, f"{{{EDE}}}EndDeviceEvents")
    event = _sub(events, f"{{{EDE}}}EndDeviceEvent")
    _sub(event, f"{{{EDE}}}mRID", f"relay-event:{row.event_id}")
    _sub(event, f"{{{EDE}}}createdDateTime", iso(row.at))
    _sub(event, f"{{{EDE}}}reason", f"relay {row.relay_state} without an order: {row.cause}")
    _sub(event, f"{{{EDE}}}severity", "alarm" if row.relay_state == "disconnected" else "info")
    asset = _sub(event, f"{{{EDE}}}Assets")
    _sub(asset, f"{{{EDE}}}mRID", row.meter_id)
    _names(asset, EDE, row.meter_id, naming)
    details = [("orderInitiated", "false"), ("relayState", row.relay_state), ("cause", row.cause)]
    if concentrator_id:
        details.append(("concentrator", concentrator_id))
    for name, value in details:
        detail = _sub(event, f"{{{EDE}}}EndDeviceEventDetails")
        _sub(detail, f"{{{EDE}}}name", name)
        _sub(detail, f"{{{EDE}}}value", value)
    _sub(event, f"{{{EDE}}}EndDeviceEventType").set("ref", CODE_OF_STATE[row.relay_state])
    status = _sub(event, f"{{{EDE}}}status")
    _sub(status, f"{{{EDE}}}dateTime", iso(row.at))
    _sub(status, f"{{{EDE}}}reason", "not the result of an order")
    _sub(status, f"{{{EDE}}}value", row.relay_state)
    return bytes(etree.tostring(env, xml_declaration=True, encoding="UTF-8"))


class Answer(Protocol):
    """Legacy's answer as the notifier reads it (``notifier.Acknowledgement``)."""

    @property
    def ok(self) -> bool: ...

    @property
    def why(self) -> str: ...


Post = Callable[[str, bytes], Answer]


def run_once(
    sessions: sessionmaker[Session],
    settings: SoapSettings,
    post: Post,
    backoff: Callable[[int], float],
    now: datetime,
) -> int:
    """Send every due row once through ``post`` (the notifier's HTTP client and
    acknowledgement rules); returns how many were closed."""
    with session_scope(sessions) as session:
        due = list(
            session.scalars(
                select(DeviceEventNotification.id)
                .where(DeviceEventNotification.delivered_at.is_(None))
                .where(
                    or_(
                        DeviceEventNotification.next_attempt_at.is_(None),
                        DeviceEventNotification.next_attempt_at <= now,
                    )
                )
                .order_by(DeviceEventNotification.id)
                .limit(settings.batch_size)
            )
        )
    closed = 0
    for row_id in due:
        body = _claim(sessions, settings, row_id, now)
        if body is None:
            continue
        target = settings.legacy_endpoint
        if target is None:
            _finish(sessions, row_id, "not sent: no Legacy endpoint configured", None)
            closed += 1
            continue
        answer = post(target, body)
        if answer.ok:
            _finish(sessions, row_id, None, None)
            closed += 1
        else:
            _finish(sessions, row_id, answer.why, (settings.max_attempts, backoff))
    return closed


def _claim(
    sessions: sessionmaker[Session], settings: SoapSettings, row_id: int, now: datetime
) -> bytes | None:
    table = DeviceEventNotification
    with session_scope(sessions) as session:
        result = session.execute(
            update(table)
            .where(table.id == row_id, table.delivered_at.is_(None))
            .where(or_(table.next_attempt_at.is_(None), table.next_attempt_at <= now))
            .values(next_attempt_at=now + timedelta(seconds=settings.claim_s))
        )
        assert isinstance(result, CursorResult)
        if result.rowcount != 1:
            return None  # another replica has it
        row = session.get(DeviceEventNotification, row_id)
        assert row is not None
        meter = session.get(Meter, row.meter_id)
        return build_device_event(
            row,
            source=settings.source,
            concentrator_id=meter.concentrator_id if meter else None,
            naming=Naming(settings.meter_name_type),
        )


def _finish(
    sessions: sessionmaker[Session],
    row_id: int,
    error: str | None,
    retry: tuple[int, Callable[[int], float]] | None,
) -> None:
    """Delivered (``retry`` None: sent and acknowledged, or closed unsent with ``error``)
    or due again after the backoff, given up after the configured attempts."""
    now = utcnow()
    with session_scope(sessions) as session:
        row = session.get(DeviceEventNotification, row_id)
        if row is None:
            return
        row.attempts += 1
        if retry is None:
            row.delivered_at = now
            row.last_error = error
            return
        limit, backoff = retry
        given_up = bool(limit) and row.attempts >= limit
        row.last_error = ((LEGACY_GIVEN_UP if given_up else "") + (error or ""))[:2000]
        row.next_attempt_at = NEVER if given_up else now + timedelta(seconds=backoff(row.attempts))
    log.warning("relay event %s not acknowledged by Legacy: %s", row_id, error)
