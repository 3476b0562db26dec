"""Races between the dispatcher and state changes read earlier (SQLite and PostgreSQL).

Every state change is a compare-and-set on the state it was read in: a cancel the
dispatcher did not see is never overwritten (nor published), and a cancel that read an
order the dispatcher claimed meanwhile fails with ``Conflict`` instead of writing
``cancelled`` over ``dispatched``.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from central.errors import Conflict
from central.models import Order, OrderEvent
from central.services import dispatch, orders
from central.settings import Settings
from shared.signing import CommandSigner

from .conftest import OPERATOR, WORKDAY, RecordingPublisher
from .races import commit_between_select_and_claim, commit_orders, ready_orders
from .test_orders import req


def create(session: Session, settings: Settings, meters: list[str]) -> list[str]:
    """Disconnects of ``meters``, committed; their ids (test_claim_lock.py uses it too)."""
    return commit_orders(session, settings, [req(m) for m in meters])


def timeline(factory: sessionmaker[Session], order_id: str) -> list[tuple[str, str | None]]:
    with factory() as s:
        return [
            (e.event, e.to_state)
            for e in s.scalars(
                select(OrderEvent).where(OrderEvent.order_id == order_id).order_by(OrderEvent.id)
            )
        ]


def commanded(publisher: RecordingPublisher) -> str:
    return b"".join(m.payload for m in publisher.sent).decode()


def test_cancel_committed_between_select_and_claim_is_not_dispatched(
    factory: sessionmaker[Session],
    settings: Settings,
    publisher: RecordingPublisher,
    signer: CommandSigner,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    cancelled, kept = ready_orders(factory, settings, req("m0"), req("m1"))

    def cancel(other: Session) -> None:
        orders.cancel_order(other, cancelled, OPERATOR, now=WORKDAY)

    selected = commit_between_select_and_claim(monkeypatch, factory, cancel)
    with factory() as session:
        sent = dispatch.dispatch_ready(session, publisher, signer, settings, now=WORKDAY)

    assert [{row.id for row in ready} for ready in selected] == [{cancelled, kept}]
    assert sent == 1
    assert len(publisher.sent) == 1
    assert kept in commanded(publisher) and cancelled not in commanded(publisher)
    with factory() as check:
        lost = check.get(Order, cancelled)
        won = check.get(Order, kept)
        assert lost is not None and won is not None
        assert lost.state == "cancelled" and lost.result_reason == "cancelled"
        assert lost.command_id is None and lost.dispatched_at is None
        assert lost.published_at is None
        assert won.state == "dispatched" and won.published_at is not None
    assert timeline(factory, cancelled) == [
        ("receive", "received"),
        ("validate", "validated"),
        ("cancel", "cancelled"),
    ]
    assert timeline(factory, kept) == [
        ("receive", "received"),
        ("validate", "validated"),
        ("dispatch", "dispatched"),
    ]


def test_cancel_read_before_a_claim_conflicts_instead_of_overwriting_dispatched(
    factory: sessionmaker[Session],
    settings: Settings,
    publisher: RecordingPublisher,
    signer: CommandSigner,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    (order_id,) = ready_orders(factory, settings, req("m0"))
    real_get = orders.get_order

    def get_then_claim(session: Session, wanted: str, **kw: Any) -> Order:
        order = real_get(session, wanted, **kw)
        assert order.state == "validated"
        with factory() as other:  # the dispatcher claims (commits) and publishes meanwhile
            assert dispatch.dispatch_ready(other, publisher, signer, settings, now=WORKDAY) == 1
        return order

    monkeypatch.setattr(orders, "get_order", get_then_claim)
    with factory() as session, pytest.raises(Conflict, match="changed meanwhile"):
        orders.cancel_order(session, order_id, OPERATOR, now=WORKDAY)
    monkeypatch.undo()

    with factory() as check:
        order = check.get(Order, order_id)
        assert order is not None
        assert order.state == "dispatched" and not order.cancel_requested
    assert order_id in commanded(publisher)
    assert timeline(factory, order_id)[-1] == ("dispatch", "dispatched")

    # the operator retries: the order is in flight, so the agent is asked to cancel
    with factory() as session:
        retried = orders.cancel_order(session, order_id, OPERATOR, now=WORKDAY)
        session.commit()
        assert retried.state == "dispatched" and retried.cancel_requested
    with factory() as session:
        assert dispatch.send_cancels(session, publisher, signer, now=WORKDAY) == 1
    assert b'\\"kind\\":\\"cancel\\"' in publisher.sent[-1].payload
    assert order_id.encode() in publisher.sent[-1].payload
    assert timeline(factory, order_id) == [
        ("receive", "received"),
        ("validate", "validated"),
        ("dispatch", "dispatched"),
        ("cancel_requested", "dispatched"),
        ("cancel_sent", "dispatched"),
    ]


def test_expiry_sweep_does_not_overwrite_an_order_dispatched_meanwhile(
    factory: sessionmaker[Session],
    settings: Settings,
    publisher: RecordingPublisher,
    signer: CommandSigner,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    (order_id,) = ready_orders(factory, settings, req("m0"))
    with factory() as setup:
        order = setup.get(Order, order_id)
        assert order is not None and order.deadline is not None
        late: datetime = order.deadline + timedelta(seconds=1)
        # another replica, whose clock is a little behind, dispatches it just before its
        # deadline (none dispatches an order past it: issue 11)
        just_before: datetime = order.deadline - timedelta(seconds=1)
    real_advance = dispatch.advance
    claimed: list[bool] = []

    def claim_then_advance(session: Session, *args: Any, **kw: Any) -> Any:
        if not claimed:
            claimed.append(True)
            with factory() as other:
                assert (
                    dispatch.dispatch_ready(other, publisher, signer, settings, now=just_before)
                    == 1
                )
        return real_advance(session, *args, **kw)

    monkeypatch.setattr(dispatch, "advance", claim_then_advance)
    with factory() as session, pytest.raises(Conflict):
        dispatch.sweep_expired(session, now=late)
    monkeypatch.undo()
    with factory() as check:
        order = check.get(Order, order_id)
        assert order is not None and order.state == "dispatched" and order.finished_at is None
    assert [event for event, _ in timeline(factory, order_id)] == [
        "receive",
        "validate",
        "dispatch",
    ]
    # the next sweep sees it in flight and gives the agent its grace period
    with factory() as session:
        assert dispatch.sweep_expired(session, now=late, grace_s=60) == 0
