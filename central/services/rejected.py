"""Agent messages the coordinator could not accept, kept for the audit trail.

A result or status that is malformed, over its size limit, or published on another
concentrator's topic, and an agent's report of a command it refused
(:func:`record_refusal`, a security event), is acknowledged to the broker (redelivery cannot fix it), so the
row written here is its only copy: topic, time, the reason naming the problem, and the
payload (cut at 64 kB; ``size`` is the whole). When the payload still names an order of
the concentrator whose topic it came on, the order's timeline says so too: the operator
then sees why the order has no result and will expire into a field work order.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from central import metrics
from central.db import where_given
from central.models import Order, RejectedMessage
from central.services.lifecycle import note, utcnow
from shared import topics
from shared.codes import ReasonCode
from shared.contracts import RefusalReport
from shared.errors import SharedError
from shared.message_kinds import load_object

KEEP_BYTES = 64 * 1024
# Refusals that mean the concentrator and the coordinator disagree about keys (or
# someone forges commands): a configuration alarm on the concentrator, never a work order.
KEY_ALARM_REASONS = frozenset({ReasonCode.BAD_SIGNATURE.value, ReasonCode.UNSIGNED_COMMAND.value})
REFUSAL_PREFIX = "agent refused a message: "


def _concentrator_of(topic: str) -> str | None:
    try:
        return topics.parse(topic)[0]
    except SharedError:
        return None


def _order_id_in(payload: bytes) -> str | None:
    """The ``order_id`` the payload names, if it is a JSON object that names one."""
    try:
        value = load_object(payload[:KEEP_BYTES], "rejected message").get("order_id")
    except SharedError:
        return None
    # Only what could be an order id (the contract's id pattern): anything else, e.g. a NUL
    # that PostgreSQL text cannot hold, would make this row unwritable and the message
    # would be redelivered for ever; the payload (bytes) keeps it whatever it is.
    return value if topics.is_identifier(value) else None


def _text(value: str, limit: int) -> str:
    """Text a PostgreSQL column can hold: a NUL is written as an escape."""
    return value.replace("\x00", "\\x00")[:limit]


def record_rejected(
    session: Session, topic: str, payload: bytes, reason: str, *, now: datetime | None = None
) -> RejectedMessage:
    """Keep one refused agent message. Does not commit."""
    now = now or utcnow()
    concentrator_id = _concentrator_of(topic)
    order_id = _order_id_in(payload)
    row = RejectedMessage(
        received_at=now,
        topic=_text(topic, 300),
        concentrator_id=concentrator_id,
        order_id=order_id,
        reason=_text(reason, 2000),
        size=len(payload),
        payload=payload[:KEEP_BYTES],
    )
    session.add(row)
    session.flush()
    order = session.get(Order, order_id) if order_id else None
    # Only on an order of the concentrator that published it: another agent cannot
    # write into the timelines of orders that are not its own.
    if order is not None and concentrator_id and order.concentrator_id == concentrator_id:
        note(
            session,
            order,
            "rejected_message",
            f"agent:{concentrator_id}",
            f"message from the agent refused (kept as rejected message {row.id}): {row.reason}"[
                :2000
            ],
            step=8,
            at=now,
        )
    metrics.REJECTED.inc()
    return row


def record_refusal(
    session: Session,
    topic: str,
    payload: bytes,
    report: RefusalReport,
    *,
    now: datetime | None = None,
) -> tuple[RejectedMessage, bool]:
    """Keep an agent's report of a message it refused (a security event); the agent sends
    it again until acknowledged, so a copy (same topic, same bytes) is not kept twice.
    Returns (row, new). Touches no order: nothing in the refused message is trusted.
    Does not commit."""
    existing = session.scalars(
        select(RejectedMessage).where(
            RejectedMessage.concentrator_id == report.concentrator_id,
            RejectedMessage.topic == _text(topic, 300),
            RejectedMessage.payload == payload[:KEEP_BYTES],
        )
    ).first()
    if existing is not None:
        return existing, False
    reason = (
        f"{REFUSAL_PREFIX}{report.reason.value} on its {report.topic_leaf} topic "
        f"(sha256 {report.payload_sha256}, {report.payload_size} bytes): {report.detail}"
    )
    row = record_rejected(session, topic, payload, reason, now=now)
    metrics.AGENT_REFUSALS.labels(reason=report.reason.value).inc()
    return row, True


def security_events(
    session: Session, *, since: datetime | None = None, limit: int = 20
) -> list[RejectedMessage]:
    """The agents' refusal reports, newest first (the dashboard's security events)."""
    query = select(RejectedMessage).where(RejectedMessage.reason.startswith(REFUSAL_PREFIX))
    if since is not None:
        query = query.where(RejectedMessage.received_at >= since)
    return list(session.scalars(query.order_by(RejectedMessage.id.desc()).limit(limit)))


def signature_alarms(
    session: Session, *, now: datetime | None = None, within: timedelta = timedelta(days=1)
) -> dict[str, str]:
    """Concentrator id -> its last signature alarm (``KEY_ALARM_REASONS``) of ``within``."""
    since = (now or utcnow()) - within
    alarms: dict[str, str] = {}
    for row in security_events(session, since=since, limit=1000):  # newest first
        if key_alarm(row) and row.concentrator_id and row.concentrator_id not in alarms:
            alarms[row.concentrator_id] = f"{row.received_at.isoformat()}: {row.reason}"[:300]
    return alarms


def key_alarm(row: RejectedMessage) -> bool:
    """Whether a kept refusal is a signature alarm (see ``KEY_ALARM_REASONS``)."""
    head = row.reason[len(REFUSAL_PREFIX) :].split(" ", 1)[0]
    return row.reason.startswith(REFUSAL_PREFIX) and head in KEY_ALARM_REASONS


def list_rejected(
    session: Session,
    *,
    concentrator_id: str | None = None,
    order_id: str | None = None,
    since: datetime | None = None,
    limit: int = 100,
    offset: int = 0,
) -> list[RejectedMessage]:
    query = where_given(
        select(RejectedMessage),
        (RejectedMessage.concentrator_id, concentrator_id),
        (RejectedMessage.order_id, order_id),
    )
    if since:
        query = query.where(RejectedMessage.received_at >= since)
    query = query.order_by(RejectedMessage.id.desc()).limit(limit).offset(offset)
    return list(session.scalars(query))
