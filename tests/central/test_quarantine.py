"""Issue 17 item 2: anomaly detection with quarantine, on SQLite and PostgreSQL, with a
fixed clock (the rolling window and the same-weekday baseline are read from it)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta

import pytest
from pydantic import ValidationError
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from central import metrics
from central.errors import Conflict, InvalidTransition, PermissionDenied
from central.models import LegacyNotification, Order, OrderEvent, Quarantine, WorkOrder
from central.services import dispatch, orders, quarantine
from central.services.anomaly import threshold_for
from central.services.lifecycle import Actor
from central.settings import AnomalySettings, ScopeFloors, ScopeLimits, Settings
from central.state import Event, OrderState, transition
from shared.signing import CommandSigner

from .conftest import APPROVER, OPERATOR, WORKDAY, RecordingPublisher

HIGH = {"source": 10_000, "concentrator": 10_000, "comuna": 10_000, "region": 10_000, "fleet": 10_000}


def with_anomaly(settings: Settings, weeks: int = 0, **limits: int) -> Settings:
    cfg = AnomalySettings(
        limits=ScopeLimits(**(HIGH | limits)),
        baseline_weeks=weeks,
        baseline_factor=2.0,
        baseline_floor=ScopeFloors(**dict.fromkeys(HIGH, 2)),
    )
    return settings.model_copy(update={"anomaly": cfg, "approval_threshold": 10_000})


def disconnect(
    session: Session, settings: Settings, meters: list[str], actor: Actor = OPERATOR, now=WORKDAY
) -> orders.BatchOutcome:
    outcome = orders.create_orders(
        session,
        [orders.OrderRequest(meter_id=m, action="disconnect", reason="non_payment") for m in meters],
        actor,
        settings,
        now=now,
    )
    session.commit()
    return outcome


def states(session: Session, ids: list[str | None]) -> list[str]:
    session.expire_all()
    return [session.get(Order, i).state for i in ids]  # type: ignore[union-attr]


# ---------------------------------------------------------------- the state machine
@pytest.mark.parametrize(
    ("state", "event", "target"),
    [
        (OrderState.VALIDATED, Event.QUARANTINE, OrderState.QUARANTINED),
        (OrderState.QUARANTINED, Event.RELEASE, OrderState.VALIDATED),
        (OrderState.QUARANTINED, Event.DISCARD, OrderState.REJECTED),
        (OrderState.QUARANTINED, Event.CANCEL, OrderState.CANCELLED),
        (OrderState.QUARANTINED, Event.EXPIRE, OrderState.EXPIRED),
    ],
)
def test_each_quarantine_row(state: OrderState, event: Event, target: OrderState) -> None:
    assert transition(state, event) is target


@pytest.mark.parametrize("event", [Event.DISPATCH, Event.VALIDATE, Event.DELIVER, Event.QUARANTINE])
def test_a_quarantined_order_is_never_dispatched(event: Event) -> None:
    with pytest.raises(InvalidTransition, match="quarantined"):
        transition(OrderState.QUARANTINED, event)


def test_threshold_rule() -> None:
    cfg = AnomalySettings(
        limits=ScopeLimits(source=100),
        baseline_factor=3.0,
        baseline_floor=ScopeFloors(source=10),
    )
    assert threshold_for(cfg, "source", None) == (100, 100)  # no baseline: the limit
    assert threshold_for(cfg, "source", 0.0) == (10, 100)  # quiet hour: the floor
    assert threshold_for(cfg, "source", 5.5) == (17, 100)  # ceil(3 x 5.5)
    assert threshold_for(cfg, "source", 50.0) == (100, 100)  # never above the limit


# ---------------------------------------------------------------- detection
def test_a_source_over_its_limit_is_quarantined_and_never_claimed(
    session: Session,
    settings: Settings,
    meters: Callable[..., list[str]],
    signer: CommandSigner,
    publisher: RecordingPublisher,
) -> None:
    settings = with_anomaly(settings, source=4)
    ids = meters(30)
    before = metrics.QUARANTINE.labels(event="quarantined")._value.get()
    first = disconnect(session, settings, ids[:4])  # at the limit: not above
    assert {i.state for i in first.items} == {"validated"}
    burst = disconnect(session, settings, ids[4:24])  # 5x the limit in one go
    assert {i.state for i in burst.items} == {"quarantined"} and burst.accepted == 20
    late = disconnect(session, settings, ids[24:26])  # the window still holds the first 4
    assert {i.state for i in late.items} == {"quarantined"}
    [row] = session.scalars(select(Quarantine))
    assert (row.scope_kind, row.scope_value, row.state, row.orders) == ("source", "olga", "open", 22)
    assert (row.counted, row.threshold) == (24, 4)
    assert metrics.QUARANTINE.labels(event="quarantined")._value.get() - before == 22
    # another operator is another source
    other = disconnect(session, settings, ids[26:28], Actor("otto", "operator"))
    assert {i.state for i in other.items} == {"validated"}
    # the dispatcher claims what is not quarantined, and nothing else
    dispatch.dispatch_ready(session, publisher, signer, settings, now=WORKDAY)
    sent = {m.topic for m in publisher.sent}
    assert len(publisher.sent) == 6 and sent == {"rcd/v1/c/conc-a/cmd"}
    assert set(states(session, [i.order_id for i in burst.items])) == {"quarantined"}
    line = session.scalars(
        select(OrderEvent).where(
            OrderEvent.order_id == burst.items[0].order_id, OrderEvent.event == "quarantine"
        )
    ).one()
    assert line.to_state == "quarantined" and "threshold of 4" in line.detail


SCOPES = [
    ("concentrator", {"concentrator": 3}, "conc-a"),
    ("comuna", {"comuna": 3}, "Maipú"),
    ("region", {"region": 3}, "Metropolitana"),
    ("fleet", {"fleet": 3}, "all"),
]


def test_each_scope_is_counted(
    session: Session, settings: Settings, meters: Callable[..., list[str]]
) -> None:
    ids = meters(16, comuna="Maipú", region="Metropolitana")
    for n, (scope, limits, value) in enumerate(SCOPES):
        only = with_anomaly(settings, **limits)
        now = WORKDAY + timedelta(hours=2 * n)  # each in a window of its own
        chunk = ids[4 * n : 4 * n + 4]
        # two operators: no single source goes over anything
        disconnect(session, only, chunk[:2], Actor("ana", "operator"), now=now)
        second = disconnect(session, only, chunk[2:], Actor("bea", "operator"), now=now)
        assert {i.state for i in second.items} == {"quarantined"}, scope
        row = session.scalars(select(Quarantine).where(Quarantine.opened_at == now)).one()
        assert (row.scope_kind, row.scope_value, row.orders) == (scope, value, 2)


def test_the_baseline_of_the_same_weekday_and_hour(
    session: Session, settings: Settings, meters: Callable[..., list[str]]
) -> None:
    settings = with_anomaly(settings, weeks=2, source=100)
    cfg = settings.anomaly.model_copy(update={"baseline_floor": ScopeFloors(source=4)})
    settings = settings.model_copy(update={"anomaly": cfg})  # factor 2, floor 4
    ids = meters(40)
    # two weeks ago and one week ago, in the same hour: 4 and 2 disconnects
    for weeks, chunk in ((2, ids[0:4]), (1, ids[4:6])):
        moment = WORKDAY - timedelta(weeks=weeks, minutes=10)
        assert {i.state for i in disconnect(session, settings, chunk, now=moment).items} == {
            "validated"
        }
    # a day earlier: neither in the baseline nor in the window
    disconnect(session, settings, ids[6:9], now=WORKDAY - timedelta(days=1))
    # baseline mean 3 -> threshold max(4, 2 x 3) = 6
    assert {i.state for i in disconnect(session, settings, ids[20:26]).items} == {"validated"}
    assert {i.state for i in disconnect(session, settings, ids[26:27]).items} == {"quarantined"}
    row = session.scalars(select(Quarantine)).one()
    assert (row.baseline, row.threshold, row.configured_limit) == (3.0, 6, 100)


def test_reconnects_are_never_quarantined_and_supersede_a_quarantined_disconnect(
    session: Session, settings: Settings, meters: Callable[..., list[str]]
) -> None:
    settings = with_anomaly(settings, source=1, fleet=1)
    ids = meters(4)
    held = disconnect(session, settings, ids[:2])
    assert {i.state for i in held.items} == {"quarantined"}
    connects = orders.create_orders(
        session,
        [orders.OrderRequest(meter_id=m, action="connect", reason="payment_restored") for m in ids],
        OPERATOR,
        settings,
        now=WORKDAY,
    )
    session.commit()
    assert {i.state for i in connects.items} == {"validated"}
    assert states(session, [i.order_id for i in held.items]) == ["cancelled", "cancelled"]


# ---------------------------------------------------------------- decisions
def test_release_by_a_second_person_sends_them_on(
    session: Session,
    settings: Settings,
    meters: Callable[..., list[str]],
    signer: CommandSigner,
    publisher: RecordingPublisher,
) -> None:
    settings = with_anomaly(settings, source=1)
    ids = meters(3)
    held = disconnect(session, settings, ids, Actor("soap:arturo", "approver"))
    [row] = session.scalars(select(Quarantine))
    with pytest.raises(PermissionDenied, match="may not release"):
        quarantine.release(session, row.id, OPERATOR, now=WORKDAY)
    with pytest.raises(PermissionDenied, match="second person"):  # the same person via REST
        quarantine.release(session, row.id, APPROVER, now=WORKDAY)
    boss = Actor("berta", "approver")
    quarantine.release(session, row.id, boss, note_text="planned campaign", now=WORKDAY)
    session.commit()
    with pytest.raises(Conflict, match="already released"):
        quarantine.delete(session, row.id, boss, now=WORKDAY)
    assert states(session, [i.order_id for i in held.items]) == ["validated"] * 3
    assert dispatch.dispatch_ready(session, publisher, signer, settings, now=WORKDAY) == 3
    events = [
        e.event
        for e in session.scalars(
            select(OrderEvent)
            .where(OrderEvent.order_id == held.items[0].order_id)
            .order_by(OrderEvent.id)
        )
    ]
    assert events == ["receive", "validate", "quarantine", "release", "dispatch"]
    assert session.get(Quarantine, row.id).decided_by == "berta"  # type: ignore[union-attr]


def test_delete_ends_them_rejected_and_coded_for_legacy(
    session: Session, settings: Settings, meters: Callable[..., list[str]]
) -> None:
    settings = with_anomaly(settings, source=1)
    held = disconnect(session, settings, meters(2))
    row = session.scalars(select(Quarantine)).one()
    quarantine.delete(session, row.id, APPROVER, note_text="not ours", now=WORKDAY)
    session.commit()
    session.expire_all()
    for item in held.items:
        order = session.get(Order, item.order_id)
        assert order is not None and order.state == "rejected"
        assert order.refusal_code == "quarantine_deleted" and "arturo" in str(order.refusal_detail)
    notes = session.scalars(select(LegacyNotification.final_state)).all()
    assert notes == ["rejected", "rejected"]
    assert session.scalar(select(func.count()).select_from(WorkOrder)) == 0


def test_a_quarantine_past_its_deadline_expires_without_a_work_order(
    session: Session, settings: Settings, meters: Callable[..., list[str]]
) -> None:
    settings = with_anomaly(settings, source=1)
    held = disconnect(session, settings, meters(2))
    dispatch.sweep_expired(session, now=WORKDAY + timedelta(hours=5))
    session.expire_all()
    order = session.get(Order, held.items[0].order_id)
    assert order is not None and order.state == "expired"
    assert "in quarantine" in str(order.result_detail)
    assert session.scalar(select(func.count()).select_from(WorkOrder)) == 0


@pytest.mark.parametrize(
    ("environ", "named"),
    [
        ({"RCD_ANOMALY__LIMITS__SORCE": "5"}, "sorce"),
        ({"RCD_ANOMALY__WINDOW_S": "10"}, "window_s"),
        ({"RCD_ANOMALY__LIMITS__REGION": "0"}, "region"),
        ({"RCD_ANOMALY__BASELINE_FACTOR": "0.5"}, "baseline_factor"),
    ],
)
def test_bad_anomaly_settings_stop_start_up_naming_them(
    monkeypatch: pytest.MonkeyPatch, environ: dict[str, str], named: str
) -> None:
    for key, value in environ.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(ValidationError, match=named):
        Settings()


def test_anomaly_settings_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RCD_ANOMALY__LIMITS__SOURCE", "40")
    monkeypatch.setenv("RCD_ANOMALY__BASELINE_WEEKS", "0")
    cfg = Settings().anomaly
    assert (cfg.limits.source, cfg.limits.fleet, cfg.baseline_weeks) == (40, 10_000, 0)
