"""Applying state transitions to orders, with their timeline events and end hooks."""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import select, update
from sqlalchemy.orm import Session
from sqlalchemy.orm.attributes import set_committed_value

from central import metrics
from central.models import LegacyNotification, Meter, Order, OrderEvent, WorkOrder
from central.state import (
    FINAL_STATES,
    IN_FLIGHT_STATES,
    NO_FIELD_VISIT_HOLDS,
    STEP_OF,
    WORK_ORDER_STATES,
    Event,
    OrderState,
    transition,
)
from shared.codes import ReasonCode

ROLES = ("viewer", "operator", "approver", "admin")
# What a field crew needs, copied from the meter onto its work order when it is created.
FIELD_DETAILS = (
    "service_address",
    "comuna",
    "region",
    "latitude",
    "longitude",
    "customer_ref",
    "access_notes",
)


def field_details(meter: Meter | None) -> dict[str, object]:
    return {name: getattr(meter, name) if meter else None for name in FIELD_DETAILS}


@dataclass(frozen=True)
class Actor:
    """Who did something: a person/token name with a role, or a system part."""

    name: str
    role: str = "operator"

    def __str__(self) -> str:
        return self.name

    def at_least(self, role: str) -> bool:
        return ROLES.index(self.role) >= ROLES.index(role) if self.role in ROLES else False


SYSTEM = Actor("central", "admin")


def utcnow() -> datetime:
    return datetime.now(UTC)


def note(
    session: Session,
    order: Order,
    event: str,
    actor: Actor | str,
    detail: str = "",
    *,
    step: int,
    at: datetime | None = None,
) -> OrderEvent:
    """A timeline line that is not a state change (e.g. "broker acknowledged")."""
    line = OrderEvent(
        order_id=order.id,
        at=at or utcnow(),
        step=step,
        actor=str(actor),
        event=event,
        from_state=order.state,
        to_state=order.state,
        detail=detail,
    )
    session.add(line)
    return line


def request_cancel(
    session: Session,
    order: Order,
    actor: Actor | str,
    detail: str,
    *,
    step: int,
    at: datetime | None = None,
    while_in: Collection[OrderState] = IN_FLIGHT_STATES,
    **also: object,
) -> bool:
    """Flag an order an agent may hold for a cancel (``dispatch.send_cancels`` sends it)
    and note it on its timeline; ``also`` are more columns written with the flag (e.g.
    ``superseded_by``). False, with nothing written, if the order is no longer in one of
    ``while_in`` (it ended meanwhile: the caller decides again on a fresh read).

    Not the ORM's compare-and-set on the exact state read (``Order.__mapper_args__``): an
    agent's receipt that moved the order from ``dispatched`` to ``delivered`` while the
    cancel was being decided turned the cancel into a 409 that nobody retried, and the
    relay was switched (CI, stop 24). Both states are in flight; the cancel stands."""
    values = {"cancel_requested": True, **also}
    written = session.execute(
        update(Order)
        .where(Order.id == order.id, Order.state.in_([s.value for s in while_in]))
        .values(**values)
        .execution_options(synchronize_session=False)
    )
    if written.rowcount != 1:  # type: ignore[attr-defined]
        return False
    for name, value in values.items():
        set_committed_value(order, name, value)
    note(session, order, "cancel_requested", actor, detail, step=step, at=at)
    return True


def advance(
    session: Session,
    order: Order,
    event: Event,
    actor: Actor | str,
    detail: str = "",
    *,
    at: datetime | None = None,
    step: int | None = None,
) -> OrderState:
    """Move ``order`` by ``event`` (refused by ``central.state`` if not allowed),
    record the timeline event and, when the order ends, run :func:`on_order_finished`."""
    now = at or utcnow()
    before = OrderState(order.state)
    after = transition(before, event)
    used_step = step if step is not None else STEP_OF[event]
    previous = order.updated_at
    order.state = after.value
    order.updated_at = now
    session.add(
        OrderEvent(
            order_id=order.id,
            at=now,
            step=used_step,
            actor=str(actor),
            event=event.value,
            from_state=before.value,
            to_state=after.value,
            detail=detail,
        )
    )
    if previous is not None:
        metrics.STEP_LATENCY.labels(step=str(used_step), state=after.value).observe(
            max(0.0, (now - previous).total_seconds())
        )
    if after in FINAL_STATES:
        order.final_state = after.value  # kept when the order becomes reported
        order.finished_at = order.finished_at or now
        on_order_finished(session, order, actor, now)
    return after


def on_order_finished(session: Session, order: Order, actor: Actor | str, now: datetime) -> None:
    """Runs in the same transaction as the final state.

    * writes the ``legacy_notifications`` outbox row the SOAP gateway's notifier
      consumes (step 9);
    * creates a field work order for failed and expired orders (step 10), except for
      a mass disconnect that never got its second-person approval, an order whose cancel
      was requested while it was in flight (operator, supersede, Ley 21.304), and a
      disconnect of a meter flagged ``protected_customer`` (Ley 21.304) since it was
      accepted.
    """
    _notify_legacy(session, order, now)
    if _settle_proposed(session, order, actor, now):
        return
    if order.needs_approval and order.approved_by is None:
        # Never approved: a field visit would bypass the second person's approval.
        note(
            session,
            order,
            "no_work_order",
            SYSTEM,
            "ended without the required approval",
            step=10,
            at=now,
        )
        return
    if OrderState(order.state) in WORK_ORDER_STATES and order.hold_reason in NO_FIELD_VISIT_HOLDS:
        # issue 17: it expired while a hold or a quarantine stopped it (central/state.py)
        note(
            session,
            order,
            "no_work_order",
            SYSTEM,
            f"it waited ({order.hold_reason}) until its deadline: no field work order",
            step=10,
            at=now,
        )
        return
    if OrderState(order.state) in WORK_ORDER_STATES:
        meter = session.get(Meter, order.meter_id)
        if order.result_reason == ReasonCode.PROTECTED_CUSTOMER_EDGE.value:
            # The agent holds the protect authority's list (Ley 21.304) and refused the
            # disconnect: a crew would cut what the second authority protects.
            note(
                session,
                order,
                "no_work_order",
                actor,
                "the concentrator refused the disconnect: the meter is on the protect "
                "authority's list (Ley 21.304, protected_customer_edge); no field work order",
                step=10,
                at=now,
            )
            return
        if order.action == "disconnect" and meter is not None and meter.protected_customer:
            # Ley 21.304: a crew sent to finish this disconnect would cut a patient's
            # supply (the meter was flagged while the order was on its way).
            note(
                session,
                order,
                "no_work_order",
                SYSTEM,
                "meter supplies a registered electro-dependent patient (Ley 21.304): "
                "no field work order to disconnect",
                step=10,
                at=now,
            )
            return
        if order.cancel_requested:
            # Stopped while in flight (an operator's cancel, a reconnect that superseded
            # a disconnect): a crew sent to finish it would undo that decision.
            why = (
                f"superseded by order {order.superseded_by}" if order.superseded_by else "cancelled"
            )
            note(
                session,
                order,
                "no_work_order",
                SYSTEM,
                f"{order.action} was {why} while in flight: no field work order to finish "
                f"it; the relay state is uncertain (last known: "
                f"{meter.relay_state if meter else 'unknown'})",
                step=10,
                at=now,
            )
            return
        reason = order.result_reason or ("expired" if order.state == "expired" else "failed")
        work_order = WorkOrder(
            order_id=order.id,
            meter_id=order.meter_id,
            concentrator_id=order.concentrator_id,
            action=order.action,
            reason=reason,
            detail=order.result_detail or "",
            last_relay_state=meter.relay_state if meter else "unknown",
            created_at=now,
            **field_details(meter),
        )
        session.add(work_order)
        session.flush()
        note(
            session,
            order,
            "work_order_created",
            SYSTEM,
            f"field work order {work_order.id}: {reason}",
            step=10,
            at=now,
        )


# The reason of a field work order proposed while its order still ran remotely
# (central/services/reconnect_sla.py: the reconnection SLA at risk).
PROPOSED_WHILE_RUNNING = "reconnect_sla_at_risk"


def _settle_proposed(session: Session, order: Order, actor: Actor | str, now: datetime) -> bool:
    """An order that already has a field work order (proposed while it ran, e.g. for the
    reconnection SLA): it stands if the order failed or expired; if the relay was switched
    remotely, or the order was cancelled, no crew must go. True if there was one."""
    existing = session.scalars(
        select(WorkOrder).where(
            WorkOrder.order_id == order.id, WorkOrder.reason == PROPOSED_WHILE_RUNNING
        )
    ).first()
    if existing is None:  # none, or one of an earlier end (a late result handles that)
        return False
    if OrderState(order.state) in WORK_ORDER_STATES:
        note(
            session,
            order,
            "work_order_kept",
            SYSTEM,
            f"field work order {existing.id} (proposed earlier) stands",
            step=10,
            at=now,
        )
    else:
        cancel_work_order(session, order, actor, f"the order ended {order.state}", now)
    return True


def _notify_legacy(session: Session, order: Order, now: datetime) -> None:
    """The step-9 outbox row; an order that ends again (corrected by a late result) has
    its row made due again with the new final state: the notifier sends the order as it
    now is (a new outcome has a new MessageID, the CorrelationID stays the order's)."""
    row = session.scalars(
        select(LegacyNotification).where(LegacyNotification.order_id == order.id)
    ).first()
    if row is None:
        session.add(LegacyNotification(order_id=order.id, final_state=order.state, created_at=now))
        return
    row.final_state = order.state
    row.delivered_at = None
    row.next_attempt_at = None
    row.attempts = 0
    row.last_error = None


def cancel_work_order(
    session: Session, order: Order, actor: Actor | str, reason: str, now: datetime
) -> WorkOrder | None:
    """Cancel the order's open field work order (e.g. a late result says the relay did
    switch: no crew must go). Returns it, or None if there is no open one."""
    work_order = session.scalars(
        select(WorkOrder).where(WorkOrder.order_id == order.id, WorkOrder.status == "open")
    ).first()
    if work_order is None:
        return None
    work_order.status = "cancelled"
    work_order.closed_at = now
    work_order.closed_by = str(actor)
    work_order.notes = reason
    note(
        session,
        order,
        "work_order_cancelled",
        actor,
        f"field work order {work_order.id} cancelled: {reason}",
        step=10,
        at=now,
    )
    return work_order
