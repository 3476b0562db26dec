"""Reconnects never wait at the coordinator (issue 17, item 3), on SQLite and PostgreSQL:
their own in-flight budget per concentrator, claimed before disconnects, outside the
disconnect rate limit and the approvals, and not held back by the disconnect they
superseded once its cancel is out."""

from __future__ import annotations

from collections.abc import Callable

from sqlalchemy.orm import Session

from central.models import Order
from central.services import dispatch, orders
from central.settings import Settings
from shared.signing import CommandSigner

from .conftest import WORKDAY, RecordingPublisher
from .test_safety_review import create, req

Meters = Callable[..., list[str]]


def test_a_concentrator_full_of_disconnects_still_takes_a_reconnect(
    settings: Settings, session: Session, meters: Meters
) -> None:
    settings.max_inflight_per_concentrator = 2
    settings.max_inflight_reconnects_per_concentrator = 1
    meters(6)
    create(session, settings, [req(f"m{n}") for n in range(4)])
    claimed = dispatch.select_ready(session, settings, WORKDAY)
    session.rollback()
    assert len(claimed) == 2  # the disconnect cap
    for order in claimed[:2]:
        session.get(Order, order.id).state = "dispatched"  # type: ignore[union-attr]
    session.commit()
    create(session, settings, [req("m4", "connect"), req("m5", "arm")])
    ready = dispatch.select_ready(session, settings, WORKDAY)
    session.rollback()
    # no more disconnect fits; one reconnect does (its own cap of 1)
    assert len(ready) == 1 and ready[0].action in ("connect", "arm")


def test_reconnects_are_claimed_before_any_disconnect(
    settings: Settings, session: Session, meters: Meters
) -> None:
    meters(3)
    create(session, settings, [req("m0", priority=9), req("m1", priority=9)])
    create(session, settings, [req("m2", "connect", priority=0)])
    ready = dispatch.select_ready(session, settings, WORKDAY, limit=1)
    session.rollback()
    assert len(ready) == 1 and ready[0].action in ("connect", "arm")


def test_reconnects_bypass_the_disconnect_rate_and_the_approval(
    settings: Settings, session: Session, meters: Meters
) -> None:
    settings.disconnects_per_minute = 1
    meters(10)
    # more reconnects in one batch than the approval threshold (5): none is held
    batch = create(session, settings, [req(f"m{n}", "connect") for n in range(6)])
    assert not batch.needs_approval and not any(i.needs_approval for i in batch.items)
    create(session, settings, [req(f"m{n}") for n in range(6, 8)])
    ready = dispatch.select_ready(session, settings, WORKDAY)
    session.rollback()
    actions = sorted(o.action for o in ready)
    assert actions == ["connect"] * 6 + ["disconnect"]  # the minute's budget: one


def test_a_reconnect_goes_once_the_superseded_disconnects_cancel_is_out(
    settings: Settings,
    session: Session,
    meters: Meters,
    publisher: RecordingPublisher,
    signer: CommandSigner,
) -> None:
    settings.max_inflight_per_concentrator = 1
    meters(2)
    disconnect = create(session, settings, [req("m0")]).items[0].order_id or ""
    assert dispatch.dispatch_ready(session, publisher, signer, settings, now=WORKDAY) == 1
    connect = create(session, settings, [req("m0", "connect")]).items[0].order_id or ""
    old = orders.get_order(session, disconnect)
    assert old.superseded_by == connect and old.cancel_requested
    timeline = [e.detail for e in old.events]
    assert any(f"superseded by connect order {connect}" in d for d in timeline)
    # before its cancel is acknowledged the meter is still busy
    assert dispatch.dispatch_ready(session, publisher, signer, settings, now=WORKDAY) == 0
    assert dispatch.send_cancels(session, publisher, signer, now=WORKDAY) == 1
    assert dispatch.dispatch_ready(session, publisher, signer, settings, now=WORKDAY) == 1
    kinds = [m.payload for m in publisher.sent[-2:]]
    assert b"cancel" in kinds[0] and connect.encode() in kinds[1]  # cancel first, same topic
    assert publisher.sent[-2].topic == publisher.sent[-1].topic
