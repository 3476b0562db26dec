"""A dispatch pass has no per-pass cap (issue 14): claims follow one another until
nothing more is ready, and orders waiting behind a concentrator at its in-flight cap do
not hide ready orders of other concentrators. On SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import pytest
from sqlalchemy.orm import Session, sessionmaker

from central.coordinator import Coordinator
from central.models import Order
from central.services import dispatch
from central.services.lifecycle import utcnow
from central.settings import Settings

from .conftest import WORKDAY, RecordingPublisher
from .test_safety_review import create, req

Meters = Callable[..., list[str]]


class _Link(RecordingPublisher):
    connected = True


def test_capped_concentrator_first_does_not_hide_the_others(
    settings: Settings, session: Session, meters: Meters, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings.max_inflight_per_concentrator = 2
    settings.max_inflight_reconnects_per_concentrator = 2  # connects: their own cap
    settings.approval_threshold = 100
    monkeypatch.setattr(dispatch, "_PAGE", 3)
    meters(6, concentrator="conc-a", prefix="a")
    meters(4, concentrator="conc-b", prefix="b")
    # conc-a's six orders are older: they fill the first candidates
    create(session, settings, [req(f"a{n}", "connect") for n in range(6)])
    create(session, settings, [req(f"b{n}", "connect") for n in range(4)])
    ready = dispatch.select_ready(session, settings, WORKDAY, limit=4)
    session.rollback()
    by_conc = sorted(o.concentrator_id for o in ready)
    assert by_conc == ["conc-a"] * 2 + ["conc-b"] * 2


def test_one_pass_dispatches_past_the_claim_size(
    settings: Settings,
    factory: sessionmaker[Session],
    session: Session,
    meters: Meters,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    settings.max_inflight_per_concentrator = 100
    settings.approval_threshold = 1000
    monkeypatch.setattr(dispatch, "CLAIM_SIZE", 4)
    monkeypatch.setattr(dispatch, "_PAGE", 3)
    meters(11, concentrator="conc-a")
    # accepted now: dispatch_now runs on the real clock, and never sends past a deadline
    create(session, settings, [req(f"m{n}", "connect") for n in range(11)], now=utcnow())
    coordinator = Coordinator(settings, factory)
    link = _Link()
    coordinator.link = link  # type: ignore[assignment]
    published = coordinator.dispatch_now()
    assert published == 11
    assert sorted(_order_ids(link.sent)) == sorted(
        o.id for o in session.query(Order).filter(Order.state == "dispatched")
    )
    assert session.query(Order).filter(Order.state == "validated").count() == 0


def _order_ids(messages: Sequence[dispatch.Outgoing]) -> list[str]:
    import json

    return [json.loads(json.loads(m.payload)["body"])["order_id"] for m in messages]
