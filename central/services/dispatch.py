"""Step 4: send validated orders to their concentrators, safely.

This module claims orders, publishes them and sweeps expired ones; what a claim may
take is central/services/selection.py, what a command says and how it is published
central/services/commands.py, what is sent again or besides (re-sent commands, cancels,
meter tables) central/services/resend.py. Their public names are re-exported here.

Outbox pattern: orders are moved to ``dispatched`` together with their signed commands
(``command_payload``) and committed *before* they are published (that commit ends the
replicas' claim lock), so a result can never arrive for an order the database still
thinks unsent; ``published_at`` is set once the broker acknowledged (PUBACK). The
broker's PUBACK is not delivery: only the agent's receipt moves an order to
``delivered``. Until then :func:`republish_unacked` sends the very same signed command
again (same command id, same signed deadline) with exponential
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
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, cast

from sqlalchemy import Table, select
from sqlalchemy.orm import Session

from central import bulk, metrics
from central.db import sqlite_write_lock, stale_to_conflict
from central.errors import DispatchError
from central.models import Concentrator, Order, OrderEvent
from central.services import holds, selection
from central.services.commands import (
    DeadlinePassed,
    Outgoing,
    Publisher,
    build_command,
    new_command_id,
    publish_and_mark,
    resend_delay,
    retry_policy,
    weekend_allowed,
    working_day_end,
)
from central.services.lifecycle import SYSTEM, advance, utcnow
from central.services.orders import stop_protected_disconnects
from central.services.resend import push_meter_tables, republish_unacked, send_cancels
from central.services.selection import IN_FLIGHT, select_ready
from central.settings import Settings
from central.state import STEP_OF, Event, OrderState, transition
from shared import topics
from shared.codes import ModemState, ReasonCode, SimState
from shared.contracts import OrderCommand, RetryPolicy
from shared.errors import InvalidPayload
from shared.signing import CommandSigner

log = logging.getLogger(__name__)

# not sent yet: the sweep ends them expired once their deadline passed
_WAITING = [OrderState.VALIDATED.value, OrderState.QUARANTINED.value]


@dataclass
class Claim:
    """Orders moved to ``dispatched`` (committed) with their signed commands, to publish."""

    ids: list[str]
    messages: list[Outgoing]
    more: bool = False  # the claim was full: more orders may be ready


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
    session: Session,
    signer: CommandSigner,
    settings: Settings,
    *,
    now: datetime | None = None,
    limit: int | None = None,
) -> Claim:
    """Select what may go, sign its commands, move it to ``dispatched`` with its signed
    commands and timeline events (in bulk) and commit: the claim to publish. Callers
    serialise claims (one at a time per process; the claim lock between replicas);
    publishing may then overlap the next claim. At most ``limit`` orders
    (``selection.CLAIM_SIZE`` if not given); ``Claim.more`` says the limit was reached.

    The signed command is written by the same statement that moves its order (issue
    14): a second pass over the same rows cost PostgreSQL more than the first (the wider
    row leaves its page, so it is no heap-only update either). Signing is cheap by then
    (one Ed25519 signature per concentrator's commands, ``sign_many``), so it stays
    inside the claim lock. Nothing is published before the commit."""
    now = now or utcnow()
    _refresh_stops_and_holds(session, settings, now)
    limit = selection.CLAIM_SIZE if limit is None else limit
    ready = select_ready(session, settings, now, limit)
    if not ready:
        session.commit()  # ends the read (on PostgreSQL: releases the claim lock); no writes
        selection.claim_committed(session)
        return Claim([], [])
    commands = _commands_for(ready, settings, now)
    signed = _sign_claimed(signer, list(commands.values()))
    claimed = _move_to_dispatched(session, ready, commands, signed, settings, now)
    selection.claim_committed(session)
    moved = [o for o in ready if o.id in claimed]
    lost = len(ready) - len(moved)
    if lost:
        log.info("%d order(s) changed before the claim; not dispatched", lost)
    latency = metrics.STEP_LATENCY.labels(
        step=str(STEP_OF[Event.DISPATCH]), state=OrderState.DISPATCHED.value
    )
    for order in moved:
        latency.observe(max(0.0, (now - order.updated_at).total_seconds()))
    ids = [order.id for order in moved]
    return Claim(ids, [signed[i] for i in ids], more=len(ready) >= limit)


def _refresh_stops_and_holds(session: Session, settings: Settings, now: datetime) -> None:
    """Before a claim reads what may go: protected meters' disconnects stopped, held
    disconnects stamped and ended holds cleared (each committed if it wrote)."""
    # The SQLite writer lock is taken before these may write (they flush what they find),
    # not only around the commit: a thread holding the database's write lock while it
    # waits for this one would stall whoever holds this one in SQLite's busy handler.
    with sqlite_write_lock(session):
        if stop_protected_disconnects(session, now=now):  # reads; writes if it finds some
            session.commit()
    with stale_to_conflict(session, "holds not stamped"), sqlite_write_lock(session):
        if holds.refresh(session, settings, now):  # issue 17: held / hold ended lines
            session.commit()


def _commands_for(ready: list[Any], settings: Settings, now: datetime) -> dict[str, OrderCommand]:
    """The command of each ready order (a new command id each), by order id; an order
    past its deadline, or whose command the contract refuses, is left out (it stays
    validated, and expires into a work order if it never becomes sendable)."""
    policies: dict[str, RetryPolicy] = {}
    commands: dict[str, OrderCommand] = {}
    day_end = working_day_end(settings, now)
    for order in ready:
        policy = policies.get(order.action)
        if policy is None:
            retry = settings.retry_for(order.action)
            policy = policies[order.action] = retry_policy(
                retry.max_attempts, retry.backoff_initial_s, retry.backoff_max_s
            )
        try:
            commands[order.id] = build_command(
                order, settings, new_command_id(), now, policy, day_end
            )
        except DeadlinePassed as exc:
            log.info("order %s not dispatched: %s", order.id, exc)
        except (InvalidPayload, ValueError) as exc:
            # one order the contract refuses must not hold back the others
            log.error("order %s not dispatched: its command is invalid: %s", order.id, exc)
    return commands


_DISPATCHED = transition(OrderState.VALIDATED, Event.DISPATCH).value
_ORDERS = cast(Table, Order.__table__)
_EVENTS = cast(Table, OrderEvent.__table__)


_LINE: dict[str, Any] = {  # what every dispatched order's timeline line says
    "step": STEP_OF[Event.DISPATCH],
    "actor": SYSTEM.name,
    "event": Event.DISPATCH.value,
    "from_state": OrderState.VALIDATED.value,
    "to_state": _DISPATCHED,
}


def _move_to_dispatched(
    session: Session,
    ready: list[Any],
    commands: dict[str, OrderCommand],
    signed: dict[str, Outgoing],
    settings: Settings,
    now: datetime,
) -> set[str]:
    """Compare-and-set the ready orders whose commands were signed to ``dispatched``
    with their command ids and signed commands, write their timeline events, and commit
    (on PostgreSQL: the claim lock is released). The ids of the orders that moved."""
    resend_at = now + timedelta(seconds=resend_delay(settings, 1))
    updates = [
        {
            "id": order.id,
            "concentrator_id": order.concentrator_id,  # compared, not written
            "state": _DISPATCHED,
            "command_id": commands[order.id].command_id,
            "command_payload": signed[order.id].payload.decode(),
            "dispatched_at": now,
            "updated_at": now,
            "command_deadline": commands[order.id].deadline,
            "resend_at": resend_at,
            "sends": 1,
        }
        for order in ready
        if order.id in signed
    ]
    # Compare-and-set: on SQLite the selection ran outside this write transaction, so an
    # order may have changed meanwhile (e.g. cancelled, or its meter moved to another
    # concentrator: that changes the concentrator, not the state). Only rows still
    # validated on the concentrator their command was made for move.
    with sqlite_write_lock(session):
        if session.get_bind().dialect.name == "postgresql":
            moved = _move_with_lines(session, updates, now)
        else:
            moved = _move_then_write_lines(session, updates, now)
        session.commit()
    session.expire_all()
    return moved


def _dispatch_line(
    order_id: str, command_id: str, concentrator_id: str, now: datetime
) -> dict[str, Any]:
    """The timeline line of a dispatched order (``_move_with_lines`` writes the same)."""
    return {
        "order_id": order_id,
        "at": now,
        **_LINE,
        "detail": f"signed command {command_id} to concentrator {concentrator_id}",
    }


def _move_then_write_lines(
    session: Session, updates: list[dict[str, Any]], now: datetime
) -> set[str]:
    """SQLite: the move, which rows moved read back by the command id and time this
    claim gave them (executemany gives no rows back), then their timeline lines. The
    ids of the orders that moved."""
    bulk.update_rows(
        session, _ORDERS, updates, expect={"state": OrderState.VALIDATED.value},
        match=("concentrator_id",),
    )
    sent = {row["id"]: (row["command_id"], row["concentrator_id"]) for row in updates}
    moved = {
        order_id
        for order_id, command_id in session.execute(
            select(Order.id, Order.command_id).where(Order.dispatched_at == now)
        )
        if order_id in sent and sent[order_id][0] == command_id
    }
    bulk.insert_rows(session, _EVENTS, [_dispatch_line(i, *sent[i], now) for i in moved])
    return moved


def _move_with_lines(
    session: Session, updates: list[dict[str, Any]], now: datetime
) -> set[str]:
    """PostgreSQL: one statement moves the orders, writes a timeline line for each one
    that moved (the same as ``_dispatch_line``, built by the database: no Python work
    per line, issue 14) and returns the ids of those (the rows this very UPDATE
    changed, so with this claim's command ids)."""
    move, params = bulk.update_from_temp(
        session, _ORDERS, updates, expect={"state": OrderState.VALIDATED.value},
        match=("concentrator_id",),
    )
    params.update({
        f"line_{name}": bulk.bind_value(session, _EVENTS, name, value)
        for name, value in {"at": now, **_LINE}.items()
    })
    statement = (
        f"WITH moved AS ({move} RETURNING t.id, t.command_id, t.concentrator_id), "
        "lines AS (INSERT INTO order_events "
        "(order_id, at, step, actor, event, from_state, to_state, detail) "
        "SELECT id, %(line_at)s, %(line_step)s, %(line_actor)s, %(line_event)s, "
        "%(line_from_state)s, %(line_to_state)s, "
        "'signed command ' || command_id || ' to concentrator ' || concentrator_id "
        "FROM moved) "
        "SELECT id FROM moved"
    )
    return {row[0] for row in session.connection().exec_driver_sql(statement, params)}


def _sign_claimed(signer: CommandSigner, commands: list[OrderCommand]) -> dict[str, Outgoing]:
    """Sign the commands of a claim, a concentrator's together (one signature per
    ``BATCH_LEAVES``, ``shared.merkle``): the messages to publish, by order id. A command
    that cannot be signed is left out: its order stays validated (as one whose command
    the contract refuses), and expires into a work order if it never becomes sendable."""
    messages: dict[str, Outgoing] = {}
    for concentrator_id, group in _by_concentrator(commands).items():
        topic = topics.commands(concentrator_id)
        for command, envelope in zip(group, _signed(signer, group), strict=True):
            if envelope is not None:
                messages[command.order_id] = Outgoing(topic, envelope)
    return messages


def _by_concentrator(commands: list[OrderCommand]) -> dict[str, list[OrderCommand]]:
    groups: dict[str, list[OrderCommand]] = {}
    for command in commands:
        groups.setdefault(command.concentrator_id, []).append(command)
    return groups


def _signed(signer: CommandSigner, group: list[OrderCommand]) -> list[bytes | None]:
    """The group's envelopes, signed together; if the contract refuses one of them, each
    is signed alone so that only that one is left out (None)."""
    try:
        return list(signer.sign_many(group))
    except (InvalidPayload, ValueError):
        pass
    signed: list[bytes | None] = []
    for command in group:
        try:
            signed.append(signer.sign(command))
        except (InvalidPayload, ValueError) as exc:  # its order stays validated
            log.error("order %s not dispatched: its command could not be signed: %s",
                      command.order_id, exc)
            signed.append(None)
    return signed


def publish_claimed(session: Session, publisher: Publisher, claim: Claim) -> int:
    """Publish claimed commands, wait for every PUBACK, record ``published_at``."""
    return publish_and_mark(session, publisher, claim.ids, claim.messages)


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
    "Claim",
    "DeadlinePassed",
    "DispatchError",
    "Outgoing",
    "Publisher",
    "build_command",
    "claim_ready",
    "dispatch_ready",
    "new_command_id",
    "publish_claimed",
    "push_meter_tables",
    "republish_unacked",
    "resend_delay",
    "select_ready",
    "send_cancels",
    "sweep_expired",
    "weekend_allowed",
]
