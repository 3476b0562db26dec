"""The approval window counts disconnects by the time their relays may first switch
(issue 12, item 3): batches accepted hours apart but staged for the same minute are
held for a second person. SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from central.models import OrderEvent
from central.services import orders
from central.services.lifecycle import Actor
from central.services.orders import OrderRequest
from central.settings import Settings

from .conftest import APPROVER, OPERATOR, WORKDAY

Meters = Callable[..., list[str]]
OTTO = Actor("otto", "operator")


def stage(
    session: Session,
    settings: Settings,
    meters: list[str],
    now: datetime,
    not_before: datetime | None,
    actor: Actor = OPERATOR,
) -> orders.BatchOutcome:
    requests = [
        OrderRequest.model_validate(
            {
                "meter_id": m,
                "action": "disconnect",
                "reason": "non_payment",
                "not_before": not_before,
                "deadline": (not_before or now) + timedelta(hours=2),
            }
        )
        for m in meters
    ]
    outcome = orders.create_orders(session, requests, actor, settings, now=now)
    session.commit()
    assert all(item.accepted for item in outcome.items), outcome.items
    return outcome


def test_batches_accepted_an_hour_apart_for_the_same_minute_are_held(
    session: Session, settings: Settings, meters: Meters
) -> None:
    """Threshold 5 per hour: 5 at 15:00 and 2 at 16:01, all to switch at 18:00, would
    open 7 relays in one minute with no second person: the second batch is held."""
    switch_at = WORKDAY + timedelta(hours=3)
    first = stage(session, settings, meters(5, prefix="a"), WORKDAY, switch_at)
    assert not first.needs_approval
    later = WORKDAY + timedelta(minutes=61)
    second = stage(session, settings, meters(2, prefix="b"), later, switch_at, OTTO)
    assert second.needs_approval
    assert all(item.needs_approval for item in second.items)
    detail = session.scalars(
        select(OrderEvent.detail).where(
            OrderEvent.order_id == second.items[0].order_id, OrderEvent.event == "approval_required"
        )
    ).one()
    assert "7 relays may switch" in detail
    # a second person releases it
    assert orders.approve_batch(session, second.batch_id or "", APPROVER).approved_by == "arturo"
    session.commit()


def test_stagings_an_hour_apart_in_switching_time_are_not_held(
    session: Session, settings: Settings, meters: Meters
) -> None:
    stage(session, settings, meters(5, prefix="a"), WORKDAY, WORKDAY + timedelta(hours=3))
    later = WORKDAY + timedelta(minutes=61)
    apart = stage(
        session, settings, meters(5, prefix="b"), later, WORKDAY + timedelta(hours=4)
    )
    assert not apart.needs_approval


def test_the_window_is_one_hour_of_switching_time_wherever_it_starts(
    session: Session, settings: Settings, meters: Meters
) -> None:
    """5 staged at 15:00 for 18:00. At 16:01 (nothing accepted in the last hour), one
    for 18:59 would make 6 within [18:00, 19:00): held; one for 19:00 is not."""
    switch_at = WORKDAY + timedelta(hours=3)
    stage(session, settings, meters(5, prefix="a"), WORKDAY, switch_at)
    later = WORKDAY + timedelta(minutes=61)
    inside = stage(
        session, settings, meters(1, prefix="i"), later, switch_at + timedelta(minutes=59)
    )
    assert inside.needs_approval
    outside = stage(
        session, settings, meters(1, prefix="o"), later, switch_at + timedelta(minutes=60)
    )
    assert not outside.needs_approval


def test_approved_disconnects_do_not_count(
    session: Session, settings: Settings, meters: Meters
) -> None:
    switch_at = WORKDAY + timedelta(hours=3)
    big = stage(session, settings, meters(6, prefix="a"), WORKDAY, switch_at)
    assert big.needs_approval  # over the threshold by itself
    orders.approve_batch(session, big.batch_id or "", APPROVER)
    session.commit()
    later = WORKDAY + timedelta(minutes=61)
    assert not stage(session, settings, meters(5, prefix="b"), later, switch_at).needs_approval
