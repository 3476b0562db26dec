"""A meter moved to another concentrator keeps its orders going (SQLite and PostgreSQL).

Not yet dispatched: the order follows the meter. In flight on the old concentrator:
the old agent's answer decides; "not in my table" (nothing switched) sends the order
to the new concentrator instead of a field work order.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
from sqlalchemy.orm import Session, sessionmaker

from central.services import dispatch, orders, registry, results, workorders
from central.services.registry import MeterChange
from central.settings import Settings
from shared import topics
from shared.codes import Outcome, ReasonCode
from shared.signing import CommandSigner

from .conftest import OPERATOR, WORKDAY, RecordingPublisher
from .races import commit_between_select_and_claim, ready_orders
from .test_orders import create_one, req, result_for

Meters = Callable[..., list[str]]


def _move(session: Session, meter: str, to: str | None) -> None:
    registry.change_meter(session, meter, MeterChange(concentrator_id=to))
    session.commit()


def _dispatch(
    session: Session, publisher: RecordingPublisher, signer: CommandSigner, settings: Settings
) -> list[str]:
    """Topics the next dispatch pass published to."""
    before = len(publisher.sent)
    dispatch.dispatch_ready(session, publisher, signer, settings, now=WORKDAY)
    return [m.topic for m in publisher.sent[before:]]


def _in_flight_then_moved(
    session: Session,
    settings: Settings,
    publisher: RecordingPublisher,
    signer: CommandSigner,
    action: str = "disconnect",
) -> str:
    """An order for m0 dispatched to conc-a; then m0 is moved to conc-b. Its id."""
    reason = "non_payment" if action == "disconnect" else "payment_restored"
    order_id = create_one(session, settings, req("m0", action, reason)).order_id
    assert order_id is not None
    assert _dispatch(session, publisher, signer, settings) == [topics.commands("conc-a")]
    _move(session, "m0", "conc-b")
    return order_id


def _not_in_table(order_id: str, meter: str, conc: str) -> object:
    return result_for(
        order_id,
        meter,
        Outcome.FAILED,
        conc,
        reason=ReasonCode.NOT_IN_CONCENTRATOR_TABLE,
        attempts=[],
    )


def test_order_not_yet_dispatched_follows_the_meter(
    session: Session,
    settings: Settings,
    meters: Meters,
    publisher: RecordingPublisher,
    signer: CommandSigner,
) -> None:
    meters(1)
    item = create_one(session, settings, req("m0", "connect", "payment_restored"))
    _move(session, "m0", "conc-b")
    assert _dispatch(session, publisher, signer, settings) == [topics.commands("conc-b")]
    order = orders.get_order(session, item.order_id or "")
    assert order.concentrator_id == "conc-b"
    moved = [e for e in order.events if e.event == "rerouted"]
    assert len(moved) == 1 and "conc-a to conc-b" in moved[0].detail


def test_unlinked_meter_holds_its_order_until_linked_again(
    session: Session,
    settings: Settings,
    meters: Meters,
    publisher: RecordingPublisher,
    signer: CommandSigner,
) -> None:
    meters(1)
    item = create_one(session, settings, req("m0", "connect", "payment_restored"))
    _move(session, "m0", None)
    assert _dispatch(session, publisher, signer, settings) == []
    assert orders.get_order(session, item.order_id or "").state == "validated"
    _move(session, "m0", "conc-c")
    assert _dispatch(session, publisher, signer, settings) == [topics.commands("conc-c")]


def test_in_flight_order_is_sent_to_the_new_concentrator_when_the_old_one_lost_the_meter(
    session: Session,
    settings: Settings,
    meters: Meters,
    publisher: RecordingPublisher,
    signer: CommandSigner,
) -> None:
    meters(1)
    order_id = _in_flight_then_moved(session, settings, publisher, signer, "connect")
    # still on conc-a: its agent may be switching right now
    order = orders.get_order(session, order_id)
    assert order.state == "dispatched" and order.concentrator_id == "conc-a"
    assert [e.event for e in order.events][-1] == "meter_moved"

    old_answer = _not_in_table(order_id, "m0", "conc-a")
    assert results.apply_result(session, old_answer) == "rerouted"  # type: ignore[arg-type]
    session.commit()
    order = orders.get_order(session, order_id)
    assert order.state == "validated" and order.concentrator_id == "conc-b"
    assert order.result_json is None and order.published_at is None
    assert workorders.list_work_orders(session, meter_id="m0") == []
    # the old agent's copy of its answer (QoS 1) changes nothing now
    assert results.apply_result(session, old_answer) == "wrong_concentrator"  # type: ignore[arg-type]

    assert _dispatch(session, publisher, signer, settings) == [topics.commands("conc-b")]
    done = result_for(order_id, "m0", Outcome.CONNECTED, "conc-b")
    assert results.apply_result(session, done) == "applied"
    session.commit()
    session.expire_all()  # the timeline was loaded before; read it again
    order = orders.get_order(session, order_id)
    assert order.state == "completed_connected"
    events = [e.event for e in order.events]
    assert events.index("reroute") < events.index("complete_connected")
    assert events.count("dispatch") == 2


def test_in_flight_order_that_the_old_agent_switched_ends_there(
    session: Session,
    settings: Settings,
    meters: Meters,
    publisher: RecordingPublisher,
    signer: CommandSigner,
) -> None:
    """The old agent got the order before the new meter table: its success stands."""
    meters(1)
    order_id = _in_flight_then_moved(session, settings, publisher, signer)
    done = result_for(order_id, "m0", Outcome.DISCONNECTED, "conc-a")
    assert results.apply_result(session, done) == "applied"
    session.commit()
    assert orders.get_order(session, order_id).state == "completed_disconnected"
    assert _dispatch(session, publisher, signer, settings) == []


def test_cancel_requested_order_is_not_rerouted(
    session: Session,
    settings: Settings,
    meters: Meters,
    publisher: RecordingPublisher,
    signer: CommandSigner,
) -> None:
    meters(1)
    order_id = _in_flight_then_moved(session, settings, publisher, signer)
    order = orders.get_order(session, order_id)
    order.cancel_requested = True
    session.commit()
    outcome = results.apply_result(session, _not_in_table(order_id, "m0", "conc-a"))  # type: ignore[arg-type]
    session.commit()
    assert outcome == "applied"
    assert orders.get_order(session, order_id).state == "cancelled"
    assert _dispatch(session, publisher, signer, settings) == []
    assert workorders.list_work_orders(session, meter_id="m0") == []


def test_not_in_table_without_a_move_is_a_failure_with_a_work_order(
    session: Session,
    settings: Settings,
    meters: Meters,
    publisher: RecordingPublisher,
    signer: CommandSigner,
) -> None:
    meters(1)
    order_id = create_one(session, settings, req("m0")).order_id or ""
    _dispatch(session, publisher, signer, settings)
    outcome = results.apply_result(session, _not_in_table(order_id, "m0", "conc-a"))  # type: ignore[arg-type]
    session.commit()
    assert outcome == "applied"
    assert orders.get_order(session, order_id).state == "failed"
    [work] = workorders.list_work_orders(session, meter_id="m0")
    assert work.reason == ReasonCode.NOT_IN_CONCENTRATOR_TABLE.value


def test_meter_moved_between_the_dispatchers_select_and_claim_is_not_sent_to_the_old_one(
    factory: sessionmaker[Session],
    settings: Settings,
    publisher: RecordingPublisher,
    signer: CommandSigner,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The move changes the order's concentrator, not its state: the claim's
    compare-and-set must see it, or the command goes to the old concentrator while the
    order (and its cancels, and the results it accepts) belong to the new one."""
    (order_id,) = ready_orders(factory, settings, req("m0", "connect", "payment_restored"))
    selected = commit_between_select_and_claim(
        monkeypatch, factory, lambda other: _move(other, "m0", "conc-b")
    )
    with factory() as session:
        dispatch.dispatch_ready(session, publisher, signer, settings, now=WORKDAY)
    monkeypatch.undo()
    assert [[row.concentrator_id for row in ready] for ready in selected] == [["conc-a"]]
    assert topics.commands("conc-a") not in [m.topic for m in publisher.sent]
    with factory() as session:
        order = orders.get_order(session, order_id)
        assert order.concentrator_id == "conc-b"
        # the next pass sends it where the meter is now
        assert _dispatch(session, publisher, signer, settings) == [topics.commands("conc-b")]
        order = orders.get_order(session, order_id)
        assert order.state == "dispatched" and order.concentrator_id == "conc-b"


def test_order_of_a_meter_moved_to_a_decommissioned_concentrator_is_not_sent_there(
    session: Session,
    settings: Settings,
    meters: Meters,
    publisher: RecordingPublisher,
    signer: CommandSigner,
) -> None:
    """Validation refuses an order whose concentrator is decommissioned; an order that
    follows its meter there waits (as for an unlinked meter) instead of going to an agent
    whose meter table is no longer kept."""
    meters(1)
    registry.ensure_concentrator(session, "conc-old")
    registry.set_concentrator_decommissioned(session, "conc-old", True)
    session.commit()
    item = create_one(session, settings, req("m0", "connect", "payment_restored"))
    _move(session, "m0", "conc-old")
    assert _dispatch(session, publisher, signer, settings) == []
    assert orders.get_order(session, item.order_id or "").state == "validated"
    _move(session, "m0", "conc-c")
    assert _dispatch(session, publisher, signer, settings) == [topics.commands("conc-c")]


def test_in_flight_order_is_not_rerouted_to_a_decommissioned_concentrator(
    session: Session,
    settings: Settings,
    meters: Meters,
    publisher: RecordingPublisher,
    signer: CommandSigner,
) -> None:
    meters(1)
    order_id = _in_flight_then_moved(session, settings, publisher, signer, "connect")
    registry.set_concentrator_decommissioned(session, "conc-b", True)
    session.commit()
    assert results.apply_result(session, _not_in_table(order_id, "m0", "conc-a")) == "rerouted"  # type: ignore[arg-type]
    session.commit()
    assert _dispatch(session, publisher, signer, settings) == []


def test_copy_of_the_old_agents_answer_after_a_cancel_on_reroute_changes_nothing(
    session: Session,
    settings: Settings,
    meters: Meters,
    publisher: RecordingPublisher,
    signer: CommandSigner,
) -> None:
    """Results are idempotent on order_id: the second copy (QoS 1) of the answer that
    ended a cancel-requested order is a duplicate, not a late result with its attempts
    written into the timeline a second time."""
    meters(1)
    order_id = _in_flight_then_moved(session, settings, publisher, signer)
    orders.cancel_order(session, order_id, OPERATOR, now=WORKDAY)
    session.commit()
    answer = result_for(
        order_id,
        "m0",
        Outcome.FAILED,
        "conc-a",
        reason=ReasonCode.NOT_IN_CONCENTRATOR_TABLE,
    )
    assert results.apply_result(session, answer) == "applied"  # type: ignore[arg-type]
    session.commit()
    before = [e.event for e in orders.get_order(session, order_id).events]
    assert results.apply_result(session, answer) == "duplicate"  # type: ignore[arg-type]
    session.commit()
    session.expire_all()
    order = orders.get_order(session, order_id)
    assert order.state == "cancelled"
    assert [e.event for e in order.events] == before
