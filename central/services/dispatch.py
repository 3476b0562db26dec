"""Step 4: send validated orders to their concentrators, safely.

Outbox pattern: orders are moved to ``dispatched`` and committed, then their signed
commands (``command_payload``) are committed, *before* they are published (two
transactions: the first one ends the replicas' claim lock), so a result can never arrive
for an order the database still thinks unsent; ``published_at`` is set once the broker
acknowledged (PUBACK). The broker's PUBACK is not delivery: only the agent's receipt
moves an order to ``delivered``. Until then :func:`republish_unacked` sends the very
same signed command again (same command id, same signed deadline) with exponential
backoff (``resend_at``, ``sends``: in the database, so across restarts), and never once
its deadline has passed. The deadline in a command is the order's own (or the end of
the working day, earlier), never extended. The agent answers a copy of an order it
holds with the receipt or result it stored.

Limits that keep the off-switch safe, applied on every pass:

* at most ``max_inflight_per_concentrator`` disconnects dispatched-but-unfinished per
  concentrator, and apart from them ``max_inflight_reconnects_per_concentrator``
  connects/arms, claimed first (``reconnect_lane``: reconnects never wait);
* at most ``disconnects_per_minute`` disconnects fleet-wide in any minute;
* disconnects of a batch awaiting a second person's approval are held;
* an order waits while another order of the same meter is in flight.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import lru_cache
from typing import Any, Protocol, cast

from sqlalchemy import Table, exists, func, select, text, update
from sqlalchemy.orm import Session

from central import bulk, metrics
from central.db import one_of, sqlite_write_lock, stale_to_conflict
from central.errors import DispatchError
from central.models import Concentrator, Meter, Order, OrderEvent
from central.services import holds, reconnect_lane, registry, validation
from central.services.lifecycle import SYSTEM, advance, note, utcnow
from central.services.orders import new_id, stop_protected_disconnects
from central.settings import Settings
from central.state import IN_FLIGHT_STATES, STEP_OF, Event, OrderState, transition
from shared import topics
from shared.contracts import (
    Action,
    CancelCommand,
    ModemState,
    OrderCommand,
    OrderReason,
    ReasonCode,
    RetryPolicy,
    SimState,
)
from shared.errors import InvalidPayload
from shared.signing import CommandSigner

log = logging.getLogger(__name__)

IN_FLIGHT = [s.value for s in IN_FLIGHT_STATES]
# not sent yet: the sweep ends them expired once their deadline passed
_WAITING = [OrderState.VALIDATED.value, OrderState.QUARANTINED.value]


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


def build_command(
    order: _Ready,
    settings: Settings,
    command_id: str,
    now: datetime,
    policy: RetryPolicy | None = None,
) -> OrderCommand:
    if policy is None:
        retry = settings.retry_for(order.action)
        policy = _policy(retry.max_attempts, retry.backoff_initial_s, retry.backoff_max_s)
    assert order.concentrator_id is not None and order.deadline is not None
    # The order's own deadline, signed: never extended (an order past it is not sent;
    # OrderCommand refuses a deadline that is not after issued_at).
    deadline = order.deadline
    if order.action == Action.DISCONNECT.value and not weekend_allowed(order):
        # The day rules hold on the concentrator too: retries must not carry an
        # ordinary disconnect past local midnight into a weekend or a holiday, so the
        # agent's deadline ends with the working day it was sent on (earlier, never
        # later). On a non-working day there is no such time: the command is refused.
        today = validation.local_day(now, settings.timezone)
        if validation.is_working_day(today, settings.holiday_country):
            deadline = min(deadline, validation.end_of_local_day(now, settings.timezone))
        else:
            deadline = min(deadline, now)
    if deadline <= now:
        raise DeadlinePassed(f"order {order.id}: deadline {deadline.isoformat()} has passed")
    return OrderCommand(
        command_id=command_id,
        order_id=order.id,
        meter_id=order.meter_id,
        concentrator_id=order.concentrator_id,
        action=Action(order.action),
        reason=OrderReason(order.reason),
        priority=order.priority,
        issued_at=now,
        not_before=order.not_before if order.not_before and order.not_before < deadline else None,
        deadline=deadline,
        retry=policy,
    )


@lru_cache(maxsize=64)
def _policy(max_attempts: int, initial: float, maximum: float) -> RetryPolicy:
    return RetryPolicy(max_attempts=max_attempts, backoff_initial_s=initial, backoff_max_s=maximum)


_READY_COLUMNS = (
    Order.id,
    Order.meter_id,
    Order.concentrator_id,
    Order.action,
    Order.reason,
    Order.priority,
    Order.deadline,
    Order.not_before,
    Order.updated_at,
    Order.special,
    Order.approved_by,
    Order.created_at,
)


_CLAIM_LOCK_KEY = 0x52434402
_LOCKED_AT = "rcd_claim_locked_at"  # session.info: when this transaction took the claim lock
CLAIM_SIZE = 5000  # orders signed and committed per claim; a pass claims until none is left
_PAGE = 5000  # candidates read per query while selecting one claim


def select_ready(
    session: Session, settings: Settings, now: datetime, limit: int | None = None
) -> list[Any]:
    """Validated orders that may go now, within every limit (rows of ``_READY_COLUMNS``),
    at most ``limit``. Locks them on PostgreSQL (SKIP LOCKED) so that replicas do not pick
    the same ones.

    Candidates are read in pages, best first; each page leaves out what can no longer go
    (concentrators at their in-flight cap, disconnects once the minute's budget is spent),
    so orders that wait behind a capped concentrator never hide ready ones behind them.
    """
    if session.get_bind().dialect.name == "postgresql":
        # One claim at a time across replicas: SKIP LOCKED alone lets a second replica take
        # the next candidates while the first one's dispatches are uncommitted, and both
        # would spend the same fleet-wide disconnect budget and in-flight caps (released
        # when the claim's transaction ends).
        asked = time.perf_counter()
        session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _CLAIM_LOCK_KEY})
        session.info[_LOCKED_AT] = time.perf_counter()
        metrics.CLAIM_LOCK.labels(phase="wait").observe(session.info[_LOCKED_AT] - asked)
    limit = CLAIM_SIZE if limit is None else limit
    waiting = select(Order.id).where(Order.state == OrderState.VALIDATED.value).limit(1)
    if session.execute(waiting).first() is None:
        return []  # the usual pass: nothing waits, so no limit needs reading
    limits = _Limits.read(session, settings, now)
    ready: list[Any] = []
    for reconnects in (True, False):  # reconnects are claimed first
        after: Any = None
        while len(ready) < limit:
            page = list(session.execute(_candidates(session, limits, after, _PAGE, reconnects)))
            if not page:
                break
            after = page[-1]
            limits.mark_busy(session, page)
            for order in page:
                if len(ready) < limit and limits.admit(order):
                    ready.append(order)
            if len(page) < _PAGE:
                break
    return ready


@dataclass
class _Limits:
    """What bounds one claim: in-flight per concentrator, busy meters, the disconnect
    budget of the minute, and the day rules for disconnects."""

    settings: Settings
    now: datetime
    inflight: dict[str, int]
    busy_meters: set[str]
    disconnect_budget: int
    working_day: bool
    moratorium: bool
    holds: holds.HoldRules  # issue 17: disconnects that wait (offline, declared, supply off)
    reconnects: reconnect_lane.ReconnectLane

    @classmethod
    def read(cls, session: Session, settings: Settings, now: datetime) -> _Limits:
        inflight, reconnects = reconnect_lane.read_inflight(session, settings)
        recent_disconnects = (
            session.scalar(
                select(func.count()).where(
                    Order.action == Action.DISCONNECT.value,
                    Order.dispatched_at >= now - timedelta(seconds=60),
                )
            )
            or 0
        )
        # The working-day and moratorium rules hold on the day the relay is switched, not
        # only on the day the order was accepted: a disconnect accepted on Friday that waits
        # (not_before, rate limit, approval) past midnight into a Saturday or a holiday in
        # America/Santiago is held until a working day (unless special).
        today = validation.local_day(now, settings.timezone)
        return cls(
            settings=settings,
            now=now,
            inflight=inflight,
            busy_meters=set(),
            disconnect_budget=settings.disconnects_per_minute - recent_disconnects,
            working_day=validation.is_working_day(today, settings.holiday_country),
            moratorium=validation.in_moratorium(today, settings),
            holds=holds.HoldRules.read(session, settings, now),
            reconnects=reconnects,
        )

    def full(self) -> list[str]:
        cap = self.settings.max_inflight_per_concentrator
        return [conc for conc, count in self.inflight.items() if count >= cap]

    def mark_busy(self, session: Session, page: list[Any]) -> None:
        """Meters of ``page`` with an order in flight."""
        wanted = sorted({o.meter_id for o in page} - self.busy_meters)
        for start in range(0, len(wanted), 500):
            busy, superseded = reconnect_lane.split_busy(
                session.execute(
                    select(
                        Order.meter_id, Order.action, Order.superseded_by, Order.cancel_sent_at
                    ).where(
                        Order.state.in_(IN_FLIGHT),
                        one_of(session, Order.meter_id, wanted[start : start + 500]),
                    )
                )
            )
            self.busy_meters.update(busy)
            self.reconnects.superseded.update(superseded)

    def admit(self, order: Any) -> bool:
        conc = order.concentrator_id
        if conc is None:
            return False
        if reconnect_lane.is_reconnect(order.action):
            return self.reconnects.admit(conc, order.meter_id, self.busy_meters)
        if order.meter_id in self.busy_meters:
            return False
        if self.inflight.get(conc, 0) >= self.settings.max_inflight_per_concentrator:
            return False
        if order.action == Action.DISCONNECT.value:
            if not self.working_day and not weekend_allowed(order):
                return False
            if self.moratorium and order.reason == OrderReason.NON_PAYMENT.value:
                return False
            if self.disconnect_budget <= 0:
                return False
            self.disconnect_budget -= 1
        self.inflight[conc] = self.inflight.get(conc, 0) + 1
        self.busy_meters.add(order.meter_id)
        return True


def _candidates(
    session: Session, limits: _Limits, after: Any, size: int, reconnects: bool = False
) -> Any:
    """The next page of validated, approved, sendable orders of one lane (reconnects, or
    the rest) after the row ``after`` (priority first, then age), leaving out what
    ``limits`` already rules out."""
    approved = (Order.needs_approval.is_(False)) | (Order.approved_by.is_not(None))
    # Ley 21.304, checked again at dispatch: a meter flagged protected after its
    # disconnect was accepted is never sent one (``stop_protected_disconnects`` ends it)
    protected = exists().where(Meter.id == Order.meter_id, Meter.protected_customer.is_(True))
    not_protected = (Order.action != Action.DISCONNECT.value) | ~protected
    # Validation refuses a decommissioned concentrator; an order that followed its meter
    # there (``registry.follow_meter_move``), or whose concentrator was decommissioned
    # after it was accepted, waits as for an unlinked meter: that agent's meter table is
    # no longer kept, so it is never sent a command.
    in_service = exists().where(
        Concentrator.id == Order.concentrator_id, Concentrator.decommissioned.is_(False)
    )
    query = select(*_READY_COLUMNS).where(
        Order.state == OrderState.VALIDATED.value,
        Order.deadline > limits.now,  # past it: the sweep ends it expired, never sent
        approved,
        not_protected,
        in_service,
        reconnect_lane.lane_filter(reconnects),
    )
    query = query.where(~limits.holds.waiting())  # issue 17: held disconnects wait
    full = limits.reconnects.full() if reconnects else limits.full()
    if full:
        query = query.where(Order.concentrator_id.not_in(full))
    if limits.disconnect_budget <= 0 or not limits.working_day:
        # no disconnect can go (special ones may on a non-working day, if budget is left)
        no_disconnect = Order.action != Action.DISCONNECT.value
        query = query.where(
            no_disconnect if limits.disconnect_budget <= 0 else no_disconnect | Order.special
        )
    if limits.moratorium:
        query = query.where(
            (Order.action != Action.DISCONNECT.value)
            | (Order.reason != OrderReason.NON_PAYMENT.value)
        )
    if after is not None:
        query = query.where(
            (Order.priority < after.priority)
            | (
                (Order.priority == after.priority)
                & (
                    (Order.created_at > after.created_at)
                    | ((Order.created_at == after.created_at) & (Order.id > after.id))
                )
            )
        )
    query = query.order_by(Order.priority.desc(), Order.created_at, Order.id).limit(size)
    if session.get_bind().dialect.name == "postgresql":
        query = query.with_for_update(skip_locked=True)
    return query


@dataclass
class Claim:
    """Orders moved to ``dispatched`` (committed) with their signed commands, to publish."""

    ids: list[str]
    messages: list[Outgoing]
    more: bool = False  # the claim was full: more orders may be ready


def _claim_committed(session: Session) -> None:
    """The claim's transaction ended: the replicas' claim lock is free again."""
    locked_at = session.info.pop(_LOCKED_AT, None)
    if locked_at is not None:
        metrics.CLAIM_LOCK.labels(phase="held").observe(time.perf_counter() - locked_at)


def dispatch_ready(
    session: Session,
    publisher: Publisher,
    signer: CommandSigner,
    settings: Settings,
    *,
    now: datetime | None = None,
) -> int:
    """One dispatch pass: :func:`claim_ready` then :func:`publish_claimed`.
    Returns how many orders the broker acknowledged."""
    claim = claim_ready(session, signer, settings, now=now)
    if not claim.ids:
        return 0
    return publish_claimed(session, publisher, claim)


def claim_ready(
    session: Session, signer: CommandSigner, settings: Settings, *, now: datetime | None = None
) -> Claim:
    """Select what may go, move it to ``dispatched`` with its timeline events (in bulk)
    and commit; then sign the commands and commit them. Callers serialise claims (one at
    a time per process; the claim lock between replicas); publishing may then overlap the
    next claim.

    The signatures are made after the first commit: on PostgreSQL that commit releases
    the replicas' claim lock, which then covers only the selection and the state change
    (what the in-flight caps and the disconnect budget of the next claim read), not the
    Ed25519 signing and the writing of the signed commands. Nothing is published before
    both commits; a dispatched order left without its signed command (a crash between
    them) gets the very same command rebuilt and signed when it is sent again
    (:func:`_signed_again`)."""
    now = now or utcnow()
    if stop_protected_disconnects(session, now=now):  # reads; writes only if it finds some
        with sqlite_write_lock(session):
            session.commit()
    with stale_to_conflict(session, "holds not stamped"):
        if holds.refresh(session, settings, now):  # issue 17: held / hold ended lines
            with sqlite_write_lock(session):
                session.commit()
    ready = select_ready(session, settings, now)
    if not ready:
        session.commit()  # ends the read (on PostgreSQL: releases the claim lock); no writes
        _claim_committed(session)
        return Claim([], [])
    commands = _commands_for(ready, settings, now)
    claimed = _move_to_dispatched(session, ready, commands, settings, now)
    _claim_committed(session)
    ids = [o.id for o in ready if o.id in claimed]
    lost = len(ready) - len(ids)
    if lost:
        log.info("%d order(s) changed before the claim; not dispatched", lost)
    latency = metrics.STEP_LATENCY.labels(
        step=str(STEP_OF[Event.DISPATCH]), state=OrderState.DISPATCHED.value
    )
    for order in ready:
        if order.id in claimed:
            latency.observe(max(0.0, (now - order.updated_at).total_seconds()))
    messages = _sign_claimed(session, signer, [commands[order_id] for order_id in ids])
    return Claim(
        [i for i in ids if i in messages], [messages[i] for i in ids if i in messages],
        more=len(ready) >= CLAIM_SIZE,
    )


def _commands_for(ready: list[Any], settings: Settings, now: datetime) -> dict[str, OrderCommand]:
    """The command of each ready order (a new command id each), by order id; an order
    past its deadline, or whose command the contract refuses, is left out (it stays
    validated, and expires into a work order if it never becomes sendable)."""
    policies: dict[str, RetryPolicy] = {}
    commands: dict[str, OrderCommand] = {}
    for order in ready:
        policy = policies.get(order.action)
        if policy is None:
            retry = settings.retry_for(order.action)
            policy = policies[order.action] = _policy(
                retry.max_attempts, retry.backoff_initial_s, retry.backoff_max_s
            )
        try:
            commands[order.id] = build_command(order, settings, new_command_id(), now, policy)
        except DeadlinePassed as exc:
            log.info("order %s not dispatched: %s", order.id, exc)
        except (InvalidPayload, ValueError) as exc:
            # one order the contract refuses must not hold back the others
            log.error("order %s not dispatched: its command is invalid: %s", order.id, exc)
    return commands


def _move_to_dispatched(
    session: Session,
    ready: list[Any],
    commands: dict[str, OrderCommand],
    settings: Settings,
    now: datetime,
) -> set[str]:
    """Compare-and-set the ready orders to ``dispatched`` with their command ids, write
    their timeline events, and commit (on PostgreSQL: the claim lock is released). The ids
    of the orders that moved."""
    target = transition(OrderState.VALIDATED, Event.DISPATCH).value
    step = STEP_OF[Event.DISPATCH]
    resend_at = now + timedelta(seconds=resend_delay(settings, 1))
    updates = [
        {
            "id": order.id,
            "concentrator_id": order.concentrator_id,  # compared, not written
            "state": target,
            "command_id": commands[order.id].command_id,
            "dispatched_at": now,
            "updated_at": now,
            "command_deadline": commands[order.id].deadline,
            "resend_at": resend_at,
            "sends": 1,
        }
        for order in ready
        if order.id in commands
    ]
    with sqlite_write_lock(session):
        # Compare-and-set: on SQLite the selection ran outside this write transaction, so
        # an order may have changed meanwhile (e.g. cancelled, or its meter moved to
        # another concentrator: that changes the concentrator, not the state). Only rows
        # still validated on the concentrator their command was made for move; which
        # ones did is read back by the command id this claim gave them.
        bulk.update_rows(
            session,
            cast(Table, Order.__table__),
            updates,
            expect={"state": OrderState.VALIDATED.value},
            match=("concentrator_id",),
        )
        claimed = {
            order_id
            for order_id, command_id in session.execute(
                select(Order.id, Order.command_id).where(Order.dispatched_at == now)
            )
            if order_id in commands and commands[order_id].command_id == command_id
        }
        bulk.insert_rows(
            session,
            cast(Table, OrderEvent.__table__),
            [
                {
                    "order_id": order_id,
                    "at": now,
                    "step": step,
                    "actor": SYSTEM.name,
                    "event": Event.DISPATCH.value,
                    "from_state": OrderState.VALIDATED.value,
                    "to_state": target,
                    "detail": f"signed command {command.command_id} to concentrator "
                    f"{command.concentrator_id}",
                }
                for order_id, command in commands.items()
                if order_id in claimed
            ],
        )
        session.commit()
    session.expire_all()
    return claimed


def _sign_claimed(
    session: Session, signer: CommandSigner, commands: list[OrderCommand]
) -> dict[str, Outgoing]:
    """Sign the commands of claimed orders, keep them with their orders (only while the
    order still carries that command), commit. The messages to publish, by order id."""
    messages: dict[str, Outgoing] = {}
    rows: list[dict[str, Any]] = []
    topic_of: dict[str, str] = {}  # concentrator id -> its command topic (checked once)
    for command in commands:
        try:
            signed = signer.sign(command)
        except (InvalidPayload, ValueError) as exc:  # sent again, or ended, by republish
            log.error("order %s: its command could not be signed: %s", command.order_id, exc)
            continue
        rows.append({"id": command.order_id, "command_id": command.command_id,
                     "command_payload": signed.decode()})
        topic = topic_of.get(command.concentrator_id)
        if topic is None:
            topic = topic_of[command.concentrator_id] = topics.commands(command.concentrator_id)
        messages[command.order_id] = Outgoing(topic, signed)
    with sqlite_write_lock(session):
        bulk.update_rows(session, cast(Table, Order.__table__), rows, match=("command_id",))
        session.commit()
    session.expire_all()
    return messages


def publish_claimed(session: Session, publisher: Publisher, claim: Claim) -> int:
    """Publish claimed commands, wait for every PUBACK, record ``published_at``."""
    return _publish_and_mark(session, publisher, claim.ids, claim.messages)


def _publish_and_mark(
    session: Session, publisher: Publisher, ids: list[str], messages: list[Outgoing]
) -> int:
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


def resend_delay(settings: Settings, sends: int) -> float:
    """Seconds until the command is sent again after its ``sends``-th sending."""
    return float(
        min(settings.republish_max_s, settings.republish_after_s * 2.0 ** max(0, sends - 1))
    )


def republish_unacked(
    session: Session,
    publisher: Publisher,
    signer: CommandSigner,
    settings: Settings,
    *,
    now: datetime | None = None,
) -> int:
    """Send again, as first signed, the commands of dispatched orders without the agent's
    receipt whose ``resend_at`` came, as long as their signed deadline is ahead; a
    PUBACK does not stop this, the receipt does. An order whose cancel was requested is
    not sent again (the cancel is), nor one whose concentrator is known to be offline."""
    now = now or utcnow()
    # While its agent is known to be offline the broker keeps the copy already queued for
    # it: no pile of copies; when it reports online again its orders are due at once
    # (``results.apply_status``). One that never reported is not known to be offline.
    reachable = exists().where(
        Concentrator.id == Order.concentrator_id,
        Concentrator.online.is_(True) | Concentrator.status_at.is_(None),
    )
    due = list(
        session.scalars(
            select(Order)
            .where(
                Order.state == OrderState.DISPATCHED.value,
                Order.cancel_requested.is_(False),
                Order.resend_at <= now,
                Order.deadline > now,
                reachable,
            )
            .order_by(Order.resend_at)
            .limit(1000)
        )
    )
    messages = []
    for order in due:
        payload = _signed_again(order, signer, settings)
        if payload is None or order.command_deadline is None or order.command_deadline <= now:
            order.resend_at = None  # its signed deadline passed: the sweep ends it
            continue
        order.sends += 1
        order.resend_at = now + timedelta(seconds=resend_delay(settings, order.sends))
        note(
            session,
            order,
            "republish",
            SYSTEM,
            f"no receipt from the agent yet: command {order.command_id} sent again "
            f"(sending {order.sends}, signed deadline {order.command_deadline.isoformat()})",
            step=4,
            at=now,
        )
        assert order.concentrator_id is not None
        messages.append((order.id, Outgoing(topics.commands(order.concentrator_id), payload)))
    if not due:
        return 0
    with stale_to_conflict(session, "republish"):
        session.commit()
    if not messages:
        return 0
    return _publish_and_mark(session, publisher, [i for i, _ in messages], [m for _, m in messages])


def _signed_again(order: Order, signer: CommandSigner, settings: Settings) -> bytes | None:
    """The command as first signed; for an order dispatched before it was kept (older
    rows), the same command rebuilt (same command id, issued when it was dispatched)."""
    if order.command_payload is not None:
        return order.command_payload.encode()
    if order.command_id is None or order.dispatched_at is None:
        return None
    try:
        command = build_command(order, settings, order.command_id, order.dispatched_at)
        payload = signer.sign(command)
    except (InvalidPayload, ValueError) as exc:
        log.warning("order %s: command cannot be signed again: %s", order.id, exc)
        return None
    order.command_payload = payload.decode()
    order.command_deadline = command.deadline
    return payload


def send_cancels(
    session: Session,
    publisher: Publisher,
    signer: CommandSigner,
    *,
    now: datetime | None = None,
    resend_after_s: float = 60.0,
) -> int:
    """Send a signed cancel for every order whose cancel was requested and that an agent
    may still hold: in flight, or ended here without the agent's result (expired, a meter
    flagged protected after its order ended). Sent again every ``resend_after_s`` until
    the agent's result (the confirmation it no longer holds the order), never once the
    order's deadline passed: after it the agent runs nothing."""
    now = now or utcnow()
    candidates = session.scalars(
        select(Order).where(
            Order.cancel_requested,
            Order.command_id.is_not(None),
            Order.deadline > now,
            Order.state.not_in([OrderState.RECEIVED.value, OrderState.VALIDATED.value]),
        )
    )
    cutoff = now - timedelta(seconds=resend_after_s)
    orders = [
        order
        for order in candidates
        if order.result_json is None
        and (order.cancel_sent_at is None or order.cancel_sent_at <= cutoff)
    ]
    if not orders:
        return 0
    messages = []
    for order in orders:
        assert order.concentrator_id is not None and order.deadline is not None
        command = CancelCommand(
            command_id=new_command_id(),
            order_id=order.id,
            concentrator_id=order.concentrator_id,
            issued_at=now,
            deadline=max(order.deadline, now + timedelta(minutes=5)),
        )
        messages.append(Outgoing(topics.commands(order.concentrator_id), signer.sign(command)))
    publisher.publish_many(messages)
    for order in orders:
        again = order.cancel_sent_at is not None
        order.cancel_sent_at = now
        note(
            session,
            order,
            "cancel_sent",
            SYSTEM,
            "cancel command acknowledged by the broker"
            + ("; sent again: no result from the agent yet" if again else ""),
            step=4,
            at=now,
        )
    with stale_to_conflict(session, "cancel sent but not recorded"):
        session.commit()
    metrics.PUBLISHED.labels(kind="cancel").inc(len(orders))
    return len(orders)


def push_meter_tables(
    session: Session, publisher: Publisher, signer: CommandSigner, *, now: datetime | None = None
) -> int:
    """Publish (retained) the signed meter table of every concentrator whose table changed."""
    now = now or utcnow()
    stale = list(
        session.scalars(
            select(Concentrator).where(
                Concentrator.table_pushed_generation < Concentrator.table_generation,
                Concentrator.decommissioned.is_(False),
            )
        )
    )
    pushed = 0
    for concentrator in stale:
        table = registry.build_meter_table(session, concentrator.id, new_command_id(), now=now)
        try:
            signed = signer.sign(table)
        except InvalidPayload as exc:
            # e.g. more meters than one table carries: this concentrator's agent keeps
            # its last table; the others still get theirs
            log.error("meter table of concentrator %s not sent: %s", concentrator.id, exc)
            continue
        publisher.publish_many([Outgoing(topics.meter_table(concentrator.id), signed, retain=True)])
        concentrator.table_pushed_generation = table.generation
        session.commit()
        metrics.PUBLISHED.labels(kind="meter_table").inc()
        pushed += 1
    return pushed


def sweep_expired(session: Session, *, now: datetime | None = None, grace_s: float = 60.0) -> int:
    """Orders past their deadline without a result end ``expired`` (with a work order).
    In-flight ones get ``grace_s`` for a result already on its way. Commits."""
    now = now or utcnow()
    waiting = list(
        session.scalars(
            select(Order).where(Order.state.in_(_WAITING), Order.deadline < now)
        )
    )
    flying = list(
        session.scalars(
            select(Order).where(
                Order.state.in_(IN_FLIGHT), Order.deadline < now - timedelta(seconds=grace_s)
            )
        )
    )
    # an order dispatched (or finished) since it was read here is not expired over its
    # newer state (compare-and-set, also on the flushes inside ``advance``): Conflict,
    # the next pass looks again
    with stale_to_conflict(session, "expiry sweep"):
        for order in waiting:
            order.result_reason = "expired"
            order.result_detail = holds.expiry_detail(order)
            advance(session, order, Event.EXPIRE, SYSTEM, order.result_detail, at=now)
        for order in flying:
            order.result_reason, order.result_detail = _silent_agent_reason(session, order)
            advance(session, order, Event.EXPIRE, SYSTEM, order.result_detail, at=now)
        session.commit()
    return len(waiting) + len(flying)


def _silent_agent_reason(session: Session, order: Order) -> tuple[str, str]:
    """Reason and detail for an in-flight order that expired without a result.

    The technician should know whether to visit the meter or the concentrator: when
    the concentrator's last status (periodic, or its last will) reported its SIM or
    its cellular modem failed, the work order names that fault instead of a bare
    ``expired``; an offline concentrator is named in the detail.
    """
    where = (
        "the agent stored it but no result came back"
        if order.state == OrderState.DELIVERED.value
        else "the order never reached the agent"
    )
    detail = f"deadline passed without a result from the agent ({where})"
    conc = session.get(Concentrator, order.concentrator_id) if order.concentrator_id else None
    if conc is None:
        return "expired", detail
    seen = f" (status of {conc.status_at.isoformat()})" if conc.status_at else ""
    if conc.sim in _SIM_FAULTS:
        return (
            ReasonCode.CONCENTRATOR_SIM_FAULT.value,
            f"{detail}; concentrator {conc.id} reported its SIM {conc.sim}{seen}",
        )
    if conc.modem == ModemState.DOWN.value:
        return (
            ReasonCode.CONCENTRATOR_MODEM_FAULT.value,
            f"{detail}; concentrator {conc.id} reported its modem down{seen}",
        )
    if not conc.online:
        return "expired", f"{detail}; concentrator {conc.id} is offline{seen}"
    return "expired", detail


_SIM_FAULTS = frozenset({SimState.ABSENT.value, SimState.ERROR.value})


__all__ = [
    "DispatchError",
    "Outgoing",
    "Publisher",
    "dispatch_ready",
    "push_meter_tables",
    "republish_unacked",
    "send_cancels",
    "sweep_expired",
]
