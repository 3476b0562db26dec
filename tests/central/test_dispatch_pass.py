"""A dispatch pass has no per-pass cap (issue 14): claims follow one another until
nothing more is ready, and orders waiting behind a concentrator at its in-flight cap do
not hide ready orders of other concentrators. On SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import pytest
from sqlalchemy.orm import Session, sessionmaker

from central.coordinator import Coordinator
from central.models import Order
from central.services import dispatch, selection
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
    monkeypatch.setattr(selection, "_PAGE", 3)
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
    monkeypatch.setattr(selection, "CLAIM_SIZE", 4)
    monkeypatch.setattr(selection, "FIRST_CLAIM_SIZE", 4)
    monkeypatch.setattr(selection, "_PAGE", 3)
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


class _SlowLink(_Link):
    """Records when each claim's publish ran; fails the first one if told to."""

    def __init__(self, fail_first: bool = False) -> None:
        super().__init__()
        self.calls: list[tuple[float, float, int]] = []
        self.fail_first = fail_first

    def publish_many(self, messages: Sequence[dispatch.Outgoing]) -> None:
        import time

        from central.errors import DispatchError

        start = time.monotonic()
        time.sleep(0.05)  # PUBACKs take a while: the next claim is signed meanwhile
        self.calls.append((start, time.monotonic(), len(messages)))
        if self.fail_first and len(self.calls) == 1:
            raise DispatchError("broker unreachable (test)")
        super().publish_many(messages)

    def close(self) -> None:
        pass


def _pipelined(settings: Settings, session: Session, meters: Meters,
               monkeypatch: pytest.MonkeyPatch) -> None:
    settings.max_inflight_per_concentrator = 100
    settings.approval_threshold = 1000
    monkeypatch.setattr(selection, "CLAIM_SIZE", 4)
    monkeypatch.setattr(selection, "FIRST_CLAIM_SIZE", 4)
    meters(10, concentrator="conc-a")
    create(session, settings, [req(f"m{n}", "connect") for n in range(10)], now=utcnow())


@pytest.mark.parametrize(("first", "sizes"), [(4, [4, 4, 2]), (2, [2, 4, 4])])
def test_claims_publish_one_at_a_time_in_claim_order(
    settings: Settings, factory: sessionmaker[Session], session: Session, meters: Meters,
    monkeypatch: pytest.MonkeyPatch, first: int, sizes: list[int],
) -> None:
    """Claims go out one after another in claim order; a pass's first claim is
    FIRST_CLAIM_SIZE (its first commands on the wire before the rest is signed), every
    later one CLAIM_SIZE."""
    _pipelined(settings, session, meters, monkeypatch)
    monkeypatch.setattr(selection, "FIRST_CLAIM_SIZE", first)
    coordinator = Coordinator(settings, factory)
    link = _SlowLink()
    coordinator.link = link  # type: ignore[assignment]
    try:
        assert coordinator.dispatch_now() == 10
    finally:
        coordinator.stop()
    assert [size for _, _, size in link.calls] == sizes
    for (_, end, _), (start, _, _) in zip(link.calls, link.calls[1:], strict=False):
        assert end <= start  # never two claims on the wire at once: a line keeps its order
    # in the order of the claims: oldest first, as they were dispatched
    dispatched = sorted(session.query(Order).all(), key=lambda o: (o.created_at, o.id))
    assert _order_ids(link.sent) == [o.id for o in dispatched]
    assert all(o.published_at is not None for o in dispatched)


def test_a_failed_publish_loses_no_order(
    settings: Settings, factory: sessionmaker[Session], session: Session, meters: Meters,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from central.errors import DispatchError

    _pipelined(settings, session, meters, monkeypatch)
    coordinator = Coordinator(settings, factory)
    link = _SlowLink(fail_first=True)
    coordinator.link = link  # type: ignore[assignment]
    try:
        with pytest.raises(DispatchError):
            coordinator.dispatch_now()
    finally:
        coordinator.stop()
    session.expire_all()
    rows = session.query(Order).all()
    # the failed claim's orders stay dispatched without a PUBACK: sent again at resend_at;
    # the claims after it were not sent ahead of it (they fail with it, in order)
    assert link.sent == []
    dispatched = [o for o in rows if o.state == "dispatched"]
    assert len(dispatched) >= 4
    assert all(o.published_at is None and o.resend_at is not None for o in dispatched)
    assert {o.state for o in rows} <= {"dispatched", "validated"} and len(rows) == 10


def test_a_claim_the_database_refuses_moves_and_sends_nothing(
    settings: Settings, factory: sessionmaker[Session], session: Session, meters: Meters,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The move to ``dispatched`` (with the signed commands) fails: the failure reaches
    the pass, nothing is published, the orders stay validated without a command, and
    the next pass dispatches every one of them."""
    from central.errors import DispatchError

    _pipelined(settings, session, meters, monkeypatch)
    real = dispatch._move_to_dispatched
    calls: list[int] = []

    def fail_first(*args: object, **kwargs: object) -> object:
        calls.append(1)
        if len(calls) == 1:
            raise DispatchError("database unreachable (test)")
        return real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(dispatch, "_move_to_dispatched", fail_first)
    coordinator = Coordinator(settings, factory)
    link = _SlowLink()
    coordinator.link = link  # type: ignore[assignment]
    try:
        with pytest.raises(DispatchError, match="database unreachable"):
            coordinator.dispatch_now()
        assert link.sent == []
        session.expire_all()
        rows = session.query(Order).all()
        assert {o.state for o in rows} == {"validated"}
        assert all(o.command_id is None and o.command_payload is None for o in rows)
        assert coordinator.dispatch_now() == 10
    finally:
        coordinator.stop()
    session.expire_all()
    rows = session.query(Order).all()
    assert sorted(_order_ids(link.sent)) == sorted(o.id for o in rows)
    assert all(o.state == "dispatched" and o.published_at is not None for o in rows)


def test_a_result_wakes_only_the_dispatch_step(
    settings: Settings, factory: sessionmaker[Session], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Accepted orders and results (wake_dispatch) run the dispatch step at once; the
    other steps wait for their interval or for a kick (approval, registry change)."""
    import time

    settings.sweep_interval_s = 60
    settings.mqtt_enabled = False
    coordinator = Coordinator(settings, factory)
    calls: list[str] = []
    monkeypatch.setattr(coordinator, "run_once", lambda: calls.append("pass"))
    monkeypatch.setattr(coordinator, "dispatch_now", lambda: calls.append("dispatch") or 0)
    coordinator.link = _SlowLink()  # type: ignore[assignment]

    def settled(count: int) -> bool:
        end = time.monotonic() + 5
        while len(calls) < count and time.monotonic() < end:
            time.sleep(0.01)
        return len(calls) == count

    coordinator.start()
    try:
        assert settled(1) and calls == ["pass"]  # the first pass runs every step
        coordinator.wake_dispatch()
        assert settled(2) and calls[-1] == "dispatch"
        coordinator.kick()
        assert settled(3) and calls[-1] == "pass"
    finally:
        coordinator.stop()

