"""Issue 17 item 4: holds on disconnects (a concentrator offline or with its modem down,
a declared emergency or weather hold, a supply already off), on SQLite and
PostgreSQL, with a fixed clock. Reconnects are never held; a hold ending releases."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from central.app import create_app
from central.errors import BadRequest, Conflict
from central.models import Meter, Order, OrderEvent, WorkOrder
from central.services import dispatch, holds, orders, results
from central.settings import Settings
from shared.codes import ModemState
from shared.contracts import ConcentratorStatus, OrderCommand
from shared.message_kinds import parse_command
from shared.signing import CommandSigner, open_envelope

from .conftest import OPERATOR, WORKDAY, RecordingPublisher

HOUR = timedelta(hours=1)


def place(
    session: Session, settings: Settings, meter: str, action: str = "disconnect", now=WORKDAY
) -> str:
    reason = "non_payment" if action == "disconnect" else "payment_restored"
    [item] = orders.create_orders(
        session,
        [orders.OrderRequest(meter_id=meter, action=action, reason=reason)],
        OPERATOR,
        settings,
        now=now,
    ).items
    session.commit()
    assert item.accepted, item.message
    return str(item.order_id)


def sent_orders(publisher: RecordingPublisher) -> set[str]:
    commands = [parse_command(open_envelope(m.payload).body) for m in publisher.sent]
    return {c.order_id for c in commands if isinstance(c, OrderCommand)}


def timeline(session: Session, order_id: str) -> list[str]:
    return list(
        session.scalars(
            select(OrderEvent.event).where(OrderEvent.order_id == order_id).order_by(OrderEvent.id)
        )
    )


def status(session: Session, concentrator: str, online: bool, at, modem=ModemState.OK) -> None:  # type: ignore[no-untyped-def]
    results.apply_status(
        session, ConcentratorStatus(concentrator_id=concentrator, online=online, at=at, modem=modem)
    )
    session.commit()


def test_a_region_hold_holds_disconnects_until_it_ends(
    session: Session,
    settings: Settings,
    meters: Callable[..., list[str]],
    signer: CommandSigner,
    publisher: RecordingPublisher,
) -> None:
    meters(2, prefix="rm", region="Metropolitana")
    meters(1, prefix="bb", region="Biobío")
    hold = holds.declare(
        session,
        OPERATOR,
        kind="weather",
        scope="region",
        value="Metropolitana",
        reason="snow storm: crews cannot reach customers",
        ends_at=WORKDAY + HOUR,
        now=WORKDAY,
    )
    session.commit()
    held = place(session, settings, "rm0")
    elsewhere = place(session, settings, "bb0")
    reconnect = place(session, settings, "rm1", "connect")
    dispatch.dispatch_ready(session, publisher, signer, settings, now=WORKDAY)
    assert sent_orders(publisher) == {elsewhere, reconnect}
    order = session.get(Order, held)
    assert order is not None and order.state == "validated" and order.hold_reason == "weather_hold"
    assert timeline(session, held)[-1] == "held"
    assert [o.id for o in session.scalars(holds.select_held())] == [held]
    # still held a minute before its end; the pass after its end releases it
    dispatch.dispatch_ready(session, publisher, signer, settings, now=WORKDAY + HOUR - timedelta(minutes=1))
    assert held not in sent_orders(publisher)
    dispatch.dispatch_ready(session, publisher, signer, settings, now=WORKDAY + HOUR)
    assert held in sent_orders(publisher)
    assert timeline(session, held)[-2:] == ["hold_ended", "dispatch"]
    assert [h.id for h in holds.list_holds(session, active=True, now=WORKDAY)] == [hold.id]
    assert holds.list_holds(session, active=True, now=WORKDAY + HOUR) == []


def test_a_hold_ended_early_by_an_operator_releases(
    session: Session,
    settings: Settings,
    meters: Callable[..., list[str]],
    signer: CommandSigner,
    publisher: RecordingPublisher,
) -> None:
    meters(1, comuna="Maipú")
    hold = holds.declare(
        session, OPERATOR, kind="emergency", scope="comuna", value="Maipú",
        reason="wildfire", ends_at=WORKDAY + 5 * HOUR, now=WORKDAY,
    )
    session.commit()
    order_id = place(session, settings, "m0")
    dispatch.dispatch_ready(session, publisher, signer, settings, now=WORKDAY)
    assert publisher.sent == []
    holds.end(session, hold.id, OPERATOR, now=WORKDAY + HOUR)
    session.commit()
    with pytest.raises(Conflict, match="already ended"):
        holds.end(session, hold.id, OPERATOR, now=WORKDAY + HOUR)
    dispatch.dispatch_ready(session, publisher, signer, settings, now=WORKDAY + HOUR)
    assert sent_orders(publisher) == {order_id}


def test_an_offline_concentrator_holds_disconnects_not_reconnects(
    session: Session,
    settings: Settings,
    meters: Callable[..., list[str]],
    signer: CommandSigner,
    publisher: RecordingPublisher,
) -> None:
    meters(2)
    status(session, "conc-a", False, WORKDAY - HOUR)  # its last will
    cut = place(session, settings, "m0")
    restore = place(session, settings, "m1", "connect")
    dispatch.dispatch_ready(session, publisher, signer, settings, now=WORKDAY)
    assert sent_orders(publisher) == {restore}
    assert session.get(Order, cut).hold_reason == "concentrator_offline"  # type: ignore[union-attr]
    # back online but its modem reports down: still held, for the modem now
    status(session, "conc-a", True, WORKDAY, ModemState.DOWN)
    dispatch.dispatch_ready(session, publisher, signer, settings, now=WORKDAY)
    assert cut not in sent_orders(publisher)
    status(session, "conc-a", True, WORKDAY + HOUR)
    dispatch.dispatch_ready(session, publisher, signer, settings, now=WORKDAY + HOUR)
    assert cut in sent_orders(publisher)
    assert "hold_ended" in timeline(session, cut)


def test_a_supply_already_off_holds_only_when_it_was_not_our_disconnect(
    session: Session,
    settings: Settings,
    meters: Callable[..., list[str]],
    signer: CommandSigner,
    publisher: RecordingPublisher,
) -> None:
    meters(1)
    meter = session.get(Meter, "m0")
    assert meter is not None
    meter.relay_state = "disconnected"  # e.g. a crew's visit, or a failed reconnect's reading
    session.commit()
    order_id = place(session, settings, "m0")
    dispatch.dispatch_ready(session, publisher, signer, settings, now=WORKDAY)
    assert publisher.sent == []
    order = session.get(Order, order_id)
    assert order is not None and order.hold_reason == "supply_off"
    # the deadline still applies: it expires, and no crew is sent to a supply already off
    dispatch.sweep_expired(session, now=WORKDAY + 5 * HOUR)
    session.expire_all()
    order = session.get(Order, order_id)
    assert order is not None and order.state == "expired"
    assert "while held (supply_off)" in str(order.result_detail)
    assert session.scalar(select(func.count()).select_from(WorkOrder)) == 0
    assert timeline(session, order_id)[-1] == "no_work_order"


def test_a_disconnect_held_by_an_offline_concentrator_expires_into_a_work_order(
    session: Session, settings: Settings, meters: Callable[..., list[str]], signer: CommandSigner,
    publisher: RecordingPublisher,
) -> None:
    meters(1)
    status(session, "conc-a", False, WORKDAY)
    order_id = place(session, settings, "m0")
    dispatch.dispatch_ready(session, publisher, signer, settings, now=WORKDAY)
    dispatch.sweep_expired(session, now=WORKDAY + 5 * HOUR)
    session.expire_all()
    assert session.get(Order, order_id).state == "expired"  # type: ignore[union-attr]
    assert session.scalar(select(func.count()).select_from(WorkOrder)) == 1


BAD_HOLDS = [
    ({"kind": "flood"}, "kind"),
    ({"scope": "street"}, "scope"),
    ({"value": " "}, "region it covers"),
    ({"reason": ""}, "reason"),
    ({"ends_at": WORKDAY - HOUR}, "not after"),
]


def test_a_hold_is_declared_with_a_kind_scope_reason_and_end(session: Session) -> None:
    good: dict[str, object] = {
        "kind": "emergency", "scope": "region", "value": "Maule", "reason": "earthquake",
        "ends_at": WORKDAY + HOUR,
    }
    for changes, message in BAD_HOLDS:
        with pytest.raises(BadRequest, match=message):
            holds.declare(session, OPERATOR, now=WORKDAY, **(good | changes))  # type: ignore[arg-type]
    assert holds.list_holds(session) == []


def test_holds_over_rest(settings: Settings) -> None:
    auth = {"Authorization": "Bearer dev-operator"}
    with TestClient(create_app(settings)) as client:
        body = {
            "kind": "emergency", "scope": "region", "value": "Ñuble", "reason": "earthquake",
            "ends_at": "2099-01-01T00:00:00Z",
        }
        assert client.post("/api/v1/holds", json=body).status_code == 401
        viewer = {"Authorization": "Bearer dev-viewer"}
        assert client.post("/api/v1/holds", json=body, headers=viewer).status_code == 403
        created = client.post("/api/v1/holds", json=body, headers=auth)
        assert created.status_code == 201 and created.json()["in_force"] is True
        naive = client.post("/api/v1/holds", json=body | {"ends_at": "2099-01-01T00:00:00"}, headers=auth)
        assert naive.status_code == 422
        listed = client.get("/api/v1/holds", params={"active": True}, headers=viewer).json()
        assert [h["scope_value"] for h in listed] == ["Ñuble"]
        ended = client.post(f"/api/v1/holds/{created.json()['id']}/end", headers=auth)
        assert ended.json()["ended_by"] == "dev-operator" and ended.json()["in_force"] is False
        assert client.get("/api/v1/holds", params={"active": True}, headers=viewer).json() == []
        assert client.get("/api/v1/held-orders", headers=viewer).json() == []
        tiles = client.get("/dashboard/api/stats", headers=viewer).json()
        assert (tiles["held"], tiles["quarantined"], tiles["holds_active"]) == (0, 0, 0)
