"""The commands sent to the agents: what an order's command says (its signed deadline
never later than the order's own, nor, for an ordinary disconnect, than the end of the
working day it is sent on), how soon an unacknowledged one is sent again, and publishing
with QoS 1 until the broker's PUBACK, recorded as ``published_at``."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache
from typing import Protocol, TypeVar

from sqlalchemy import update
from sqlalchemy.orm import Session

from central import metrics
from central.db import one_of, sqlite_write_lock
from central.models import Order
from central.services import validation
from central.services.ids import new_id
from central.services.lifecycle import utcnow
from central.settings import Settings
from shared.codes import Action, OrderReason
from shared.contracts import OrderCommand, RetryPolicy


@dataclass(frozen=True)
class Outgoing:
    topic: str
    payload: bytes
    retain: bool = False


class Publisher(Protocol):
    """What dispatch needs from MQTT (``central.mqtt.MqttLink`` in production)."""

    def publish_many(self, messages: Sequence[Outgoing]) -> None:
        """Publish with QoS 1 and return once the broker acknowledged every one;
        raise ``DispatchError`` otherwise."""
        ...


class DeadlinePassed(ValueError):
    """No command for an order whose deadline (or working day) has passed."""


def new_command_id() -> str:
    return "c" + new_id()


class _Ready(Protocol):
    id: str
    meter_id: str
    concentrator_id: str | None
    action: str
    reason: str
    priority: int
    deadline: datetime | None
    not_before: datetime | None
    updated_at: datetime
    special: bool
    approved_by: str | None


def weekend_allowed(order: _Ready) -> bool:
    """The special flag lifts the working-day rule only once a second person approved
    the order (central/services/approvals.py)."""
    return order.special and order.approved_by is not None


def working_day_end(settings: Settings, now: datetime) -> datetime:
    """The latest deadline an ordinary disconnect sent at ``now`` may carry: the end of
    the local working day, or ``now`` itself on a weekend or holiday (no such time)."""
    today = validation.local_day(now, settings.timezone)
    if validation.is_working_day(today, settings.holiday_country):
        return validation.end_of_local_day(now, settings.timezone)
    return now


def build_command(
    order: _Ready,
    settings: Settings,
    command_id: str,
    now: datetime,
    policy: RetryPolicy | None = None,
    day_end: datetime | None = None,
) -> OrderCommand:
    """The order's command; ``day_end`` is :func:`working_day_end` of ``now``, given when
    many commands are built for the same moment (a claim)."""
    if policy is None:
        retry = settings.retry_for(order.action)
        policy = retry_policy(retry.max_attempts, retry.backoff_initial_s, retry.backoff_max_s)
    assert order.concentrator_id is not None and order.deadline is not None
    # The order's own deadline, signed: never extended (an order past it is not sent;
    # OrderCommand refuses a deadline that is not after issued_at).
    deadline = order.deadline
    if order.action == Action.DISCONNECT.value and not weekend_allowed(order):
        # The day rules hold on the concentrator too: retries must not carry an
        # ordinary disconnect past local midnight into a weekend or a holiday, so the
        # agent's deadline ends with the working day it was sent on (earlier, never
        # later). On a non-working day there is no such time: the command is refused.
        deadline = min(deadline, day_end or working_day_end(settings, now))
    if deadline <= now:
        raise DeadlinePassed(f"order {order.id}: deadline {deadline.isoformat()} has passed")
    return OrderCommand(
        command_id=command_id,
        order_id=order.id,
        meter_id=order.meter_id,
        concentrator_id=order.concentrator_id,
        action=_member(_ACTIONS, order.action, "action"),
        reason=_member(_REASONS, order.reason, "reason"),
        priority=order.priority,
        issued_at=now,
        not_before=order.not_before if order.not_before and order.not_before < deadline else None,
        deadline=deadline,
        retry=policy,
    )


_E = TypeVar("_E", Action, OrderReason)
# the members by value: a dict lookup, where calling the Enum class costs microseconds
_ACTIONS = {action.value: action for action in Action}
_REASONS = {reason.value: reason for reason in OrderReason}


def _member(members: dict[str, _E], value: str, what: str) -> _E:
    try:
        return members[value]
    except KeyError:
        raise ValueError(f"unknown {what} {value!r}") from None


@lru_cache(maxsize=64)
def retry_policy(max_attempts: int, initial: float, maximum: float) -> RetryPolicy:
    return RetryPolicy(max_attempts=max_attempts, backoff_initial_s=initial, backoff_max_s=maximum)


def resend_delay(settings: Settings, sends: int) -> float:
    """Seconds until the command is sent again after its ``sends``-th sending."""
    return float(
        min(settings.republish_max_s, settings.republish_after_s * 2.0 ** max(0, sends - 1))
    )


def publish_and_mark(
    session: Session, publisher: Publisher, ids: list[str], messages: list[Outgoing]
) -> int:
    """Publish ``messages`` (the commands of the orders ``ids``), wait for every PUBACK,
    record ``published_at``; how many."""
    publisher.publish_many(messages)  # raises DispatchError: resent at ``resend_at``
    acked = utcnow()
    with sqlite_write_lock(session):
        for start in range(0, len(ids), 500):
            session.execute(
                update(Order)
                .where(
                    one_of(session, Order.id, ids[start : start + 500]),
                    Order.published_at.is_(None),
                )
                .values(published_at=acked),
                execution_options={"synchronize_session": False},
            )
        session.commit()
    session.expire_all()
    metrics.PUBLISHED.labels(kind="order").inc(len(ids))
    return len(ids)


