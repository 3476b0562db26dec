"""What the dispatcher sends again or besides an order's first command: the same signed
command until the agent's receipt (``republish_unacked``), signed cancels
(``send_cancels``) and the agents' signed meter tables (``push_meter_tables``)."""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from typing import cast

from sqlalchemy import Table, exists, select
from sqlalchemy.orm import Session
from sqlalchemy.orm.attributes import set_committed_value

from central import bulk, metrics
from central.db import stale_to_conflict
from central.models import Concentrator, Order
from central.services import registry
from central.services.commands import (
    Outgoing,
    Publisher,
    build_command,
    new_command_id,
    publish_and_mark,
    resend_delay,
)
from central.services.lifecycle import SYSTEM, note, utcnow
from central.settings import Settings
from central.state import OrderState
from shared import topics
from shared.contracts import CancelCommand
from shared.errors import InvalidPayload
from shared.signing import CommandSigner

log = logging.getLogger(__name__)


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
    return publish_and_mark(session, publisher, [i for i, _ in messages], [m for _, m in messages])


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
    # A plain UPDATE, not the ORM's compare-and-set on the state: an agent's receipt or
    # result that moved an order while its cancel was on the wire would roll back the
    # record of every cancel of the pass, and each would be sent again on the next one.
    sent = [{"id": order.id, "cancel_sent_at": now} for order in orders]
    bulk.update_rows(session, cast(Table, Order.__table__), sent)
    for order in orders:
        again = order.cancel_sent_at is not None
        set_committed_value(order, "cancel_sent_at", now)
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


