from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from edge_agent.errors import TransitionRefused
from edge_agent.lifecycle import TRANSITIONS, Event, State, next_state
from edge_agent.store import Store
from shared.codes import Outcome
from shared.contracts import CancelCommand, MeterTableSync, OrderReceipt, replace
from shared.message_kinds import parse_agent_message

from .fakes import order, tcp_entry


def test_transition_table_refuses_unlisted_events() -> None:
    assert next_state("o", State.QUEUED, Event.START) is State.RUNNING
    with pytest.raises(TransitionRefused, match="'succeed' is not allowed in state 'queued'"):
        next_state("o", State.QUEUED, Event.SUCCEED)
    for terminal in (State.SUCCEEDED, State.FAILED, State.EXPIRED, State.CANCELLED):
        for event in Event:
            assert (terminal, event) not in TRANSITIONS
            with pytest.raises(TransitionRefused):
                next_state("o", terminal, event)
    # between two attempts nothing is in flight: a cancel stops the retries
    assert next_state("o", State.WAITING, Event.CANCEL) is State.CANCELLED
    # the executor itself ends a running order whose cancel arrived mid-attempt
    assert next_state("o", State.RUNNING, Event.CANCEL) is State.CANCELLED


def test_order_stored_once_and_seen(sqlite_path: Path) -> None:
    with Store(sqlite_path) as store:
        cmd = order("o1", "m1")
        now = datetime.now(UTC)
        assert store.store_order(cmd, now) == "stored"
        assert store.seen(cmd.command_id)
        again = replace(cmd, command_id="other")
        assert store.store_order(again, now) == "duplicate"
        assert store.queue_depth() == 1


def test_stored_order_puts_one_receipt_in_the_outbox(sqlite_path: Path) -> None:
    with Store(sqlite_path) as store:
        now = datetime.now(UTC)
        first, second = order("o1", "m1"), order("o2", "m2")
        store.store_order(first, now)
        store.store_order(second, now)
        store.store_order(replace(first, command_id="again"), now)  # duplicate
        receipts = [parse_agent_message(payload) for _, payload, _ in store.outbox_pending()]
        assert all(isinstance(r, OrderReceipt) for r in receipts)
        assert [(r.order_id, r.command_id, r.queue_depth) for r in receipts if isinstance(r, OrderReceipt)] == [
            ("o1", first.command_id, 1), ("o2", second.command_id, 2)]
        assert receipts[0].received_at == now and receipts[0].concentrator_id == first.concentrator_id
        # the broker's PUBACK removes nothing (issue 11); the coordinator's ack does
        assert store.outbox_acknowledge("receipt", "o1") == 1
        assert store.outbox_acknowledge("receipt", "o1") == 0  # an ack copy changes nothing
        assert store.outbox_depth() == 1
        # a copy after the ack: the coordinator has no receipt yet (e.g. restored), so a
        # receipt goes out again, for the same stored order
        assert store.store_order(replace(first, command_id="third"), now) == "duplicate"
        again = [parse_agent_message(p) for _, p, _ in store.outbox_pending()]
        assert [(m.kind, m.order_id) for m in again] == [("receipt", "o2"), ("receipt", "o1")]  # type: ignore[union-attr]
        assert store.queue_depth() == 2


def test_receipt_rolls_back_with_the_order(sqlite_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with Store(sqlite_path) as store:
        def broken(*_: object) -> int:
            raise RuntimeError("disk gone")
        monkeypatch.setattr(store, "_queue_depth", broken)
        with pytest.raises(RuntimeError):
            store.store_order(order("o1", "m1"), datetime.now(UTC))
        monkeypatch.undo()
        assert store.order_state("o1") is None and store.outbox_depth() == 0
        assert not store.seen(order("o1", "m1").command_id)


def test_priority_then_age(sqlite_path: Path) -> None:
    with Store(sqlite_path) as store:
        now = datetime.now(UTC)
        store.store_order(order("low", "m1", priority=1), now)
        store.store_order(order("high", "m2", priority=9), now)
        store.store_order(order("high2", "m3", priority=9), now)
        got = [store.claim_next(now + timedelta(seconds=1)) for _ in range(3)]
        assert [o.order_id for o in got if o] == ["high", "high2", "low"]
        assert store.claim_next(now) is None
        assert store.order_state("low") is State.RUNNING


def test_cancel_only_queued(sqlite_path: Path) -> None:
    with Store(sqlite_path) as store:
        now = datetime.now(UTC)
        store.store_order(order("o1", "m1"), now)
        store.store_order(order("o2", "m2"), now)
        store.claim_next(now + timedelta(seconds=1), lambda m: m != "m2")
        def cancel(oid: str) -> CancelCommand:
            return CancelCommand(command_id=f"c-{oid}", order_id=oid, concentrator_id="conc-a",
                                 issued_at=now, deadline=now + timedelta(minutes=1))
        result = store.cancel(cancel("o1"), now)
        assert result is not None and result.outcome is Outcome.CANCELLED
        assert store.cancel(cancel("o2"), now) is None  # running
        assert store.order_state("o1") is State.CANCELLED
        assert store.outbox_depth() == 3  # two receipts and the cancellation result


def test_invocation_counter_never_goes_back(sqlite_path: Path) -> None:
    with Store(sqlite_path) as store:
        store.import_meters([tcp_entry("m1")])
        first = store.reserve_counter("m1", 100)
        assert first == 0
        # crash: the session never commits; the next one starts above the block
        second = store.reserve_counter("m1", 100)
        assert second == 100
        store.commit_counter("m1", 105)
        assert store.reserve_counter("m1", 100) == 105
    with Store(sqlite_path) as store:  # reopened after a "crash"
        assert store.reserve_counter("m1", 100) == 205


def test_meter_table_generation_and_counter_kept(sqlite_path: Path) -> None:
    now = datetime.now(UTC)
    def sync(gen: int, ids: list[str]) -> MeterTableSync:
        return MeterTableSync(command_id=f"t{gen}", concentrator_id="conc-a", generation=gen,
                              issued_at=now, deadline=now + timedelta(hours=1),
                              meters=[tcp_entry(i) for i in ids])
    with Store(sqlite_path) as store:
        assert store.apply_meter_table(sync(2, ["m1", "m2"]))
        store.commit_counter("m1", 50)
        assert not store.apply_meter_table(sync(1, ["m9"]))
        assert store.apply_meter_table(sync(3, ["m2"]))
        assert store.meter("m1") is None and store.meter_count() == 1
        assert store.apply_meter_table(sync(4, ["m1"]))
        assert store.reserve_counter("m1", 10) == 50


def _cancel(order_id: str, now: datetime, minutes: float = 5) -> CancelCommand:
    return CancelCommand(command_id=f"cancel-{order_id}", order_id=order_id,
                         concentrator_id="conc-a", issued_at=now,
                         deadline=now + timedelta(minutes=minutes))


def test_cancel_before_its_order_ends_the_order_when_it_arrives(sqlite_path: Path) -> None:
    """E.g. the coordinator published the order again (no PUBACK seen) after the cancel:
    the order is stored already cancelled, with its receipt and result; nothing runs."""
    now = datetime.now(UTC)
    with Store(sqlite_path) as store:
        assert store.cancel(_cancel("o1", now), now) is None
        assert store.early_cancel("o1") == "cancel-o1"
        assert store.store_order(order("o1", "m1"), now) == "cancelled"
        assert store.order_state("o1") is State.CANCELLED
        assert store.claim_next(now + timedelta(seconds=1)) is None  # nothing to execute
        messages = [parse_agent_message(p) for _, p, _ in store.outbox_pending()]
        assert [m.kind for m in messages] == ["receipt", "result"]
        result = messages[1]
        assert result.outcome is Outcome.CANCELLED and "cancel-o1" in result.detail  # type: ignore[union-attr]
        assert store.early_cancel("o1") is None
        # a copy of the order is a duplicate of an ended one: its result goes out again
        assert store.store_order(replace(order("o1", "m1"), command_id="again"), now) == "resent"
    with Store(sqlite_path) as store:  # and all of it survived a restart
        assert store.order_state("o1") is State.CANCELLED


def test_early_cancel_is_forgotten_after_its_deadline(sqlite_path: Path) -> None:
    now = datetime.now(UTC)
    with Store(sqlite_path) as store:
        store.cancel(_cancel("o1", now, minutes=1), now)
        store.cancel(_cancel("o2", now, minutes=60), now)
        store.forget_seen_before(now + timedelta(minutes=2))
        assert store.early_cancel("o1") is None and store.early_cancel("o2") == "cancel-o2"
        assert store.store_order(order("o1", "m1"), now) == "stored"
