"""Receipts and results that arrive together (``Coordinator.handle_results``, what the
MQTT handler thread calls with everything that has arrived): applied in one transaction,
acknowledged with one signed ack per concentrator after the commit; a message that
cannot be stored costs the others nothing and is itself not acknowledged."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from datetime import timedelta

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from central.coordinator import Coordinator
from central.errors import StorageError
from central.models import Order, OrderEvent, RejectedMessage
from central.services import dispatch, orders, results
from central.services.dispatch import Outgoing
from central.services.orders import OrderRequest
from central.settings import Settings
from shared import topics
from shared.codes import Outcome
from shared.contracts import OrderReceipt, OrderResult, validate
from shared.signing import CommandSigner

from .conftest import OPERATOR, WORKDAY, RecordingPublisher, add_meters

STORED = WORKDAY + timedelta(seconds=2)


class _AckLink:
    """Stands in for the MQTT link: records the acks the coordinator sends."""

    connected = True

    def __init__(self) -> None:
        self.sent: list[Outgoing] = []

    def publish_nowait(self, message: Outgoing) -> bool:
        self.sent.append(message)
        return True

    def publish_many(self, messages: Sequence[Outgoing]) -> None:
        self.sent.extend(messages)

    def close(self) -> None:
        pass

    def acks(self) -> dict[str, list[list[tuple[str, str]]]]:
        """Per concentrator, each ack's (kind, id) list, in the order they were sent."""
        out: dict[str, list[list[tuple[str, str]]]] = {}
        for message in self.sent:
            body = json.loads(json.loads(message.payload)["body"])
            assert message.topic == topics.commands(body["concentrator_id"])
            out.setdefault(body["concentrator_id"], []).append(
                [(a["kind"], a["id"]) for a in body["acks"]]
            )
        return out


def _dispatched(session: Session, settings: Settings, signer: CommandSigner) -> dict[str, str]:
    """Two meters on conc-a and one on conc-b, each with a dispatched disconnect."""
    add_meters(session, 2, concentrator="conc-a", prefix="a")
    add_meters(session, 1, concentrator="conc-b", prefix="b")
    meters = ["a0", "a1", "b0"]
    items = orders.create_orders(
        session,
        [OrderRequest(meter_id=m, action="disconnect", reason="non_payment") for m in meters],
        OPERATOR,
        settings,
        now=WORKDAY,
    ).items
    session.commit()
    dispatch.dispatch_ready(session, RecordingPublisher(), signer, settings, now=WORKDAY)
    session.commit()
    return {m: item.order_id for m, item in zip(meters, items, strict=True) if item.order_id}


def _receipt(order_id: str, meter: str) -> tuple[str, bytes]:
    conc = "conc-b" if meter.startswith("b") else "conc-a"
    receipt = validate(OrderReceipt, {
        "order_id": order_id, "command_id": f"cmd-{order_id}", "meter_id": meter,
        "concentrator_id": conc, "received_at": STORED, "queue_depth": 1,
    })
    return topics.results(conc), receipt.to_json()


def _result(order_id: str, meter: str) -> tuple[str, bytes]:
    conc = "conc-b" if meter.startswith("b") else "conc-a"
    result = validate(OrderResult, {
        "order_id": order_id, "meter_id": meter, "concentrator_id": conc,
        "outcome": Outcome.DISCONNECTED, "attempts": [], "received_at": STORED,
        "started_at": STORED, "finished_at": STORED + timedelta(seconds=1),
    })
    return topics.results(conc), result.to_json()


@pytest.fixture
def wired(
    settings: Settings, factory: sessionmaker[Session], signer: CommandSigner
) -> tuple[Coordinator, _AckLink, dict[str, str]]:
    """A coordinator whose acks are recorded, and the orders of ``_dispatched``."""
    with factory() as session:
        ids = _dispatched(session, settings, signer)
    coordinator = Coordinator(settings, factory)
    link = _AckLink()
    coordinator.link = link  # type: ignore[assignment]
    return coordinator, link, ids


Wired = tuple[Coordinator, _AckLink, dict[str, str]]


def _states(factory: sessionmaker[Session]) -> dict[str, str]:
    with factory() as session:
        return {meter: state for meter, state in session.execute(select(Order.meter_id, Order.state))}


def test_messages_that_arrive_together_are_applied_and_acked_once_per_concentrator(
    factory: sessionmaker[Session], wired: Wired
) -> None:
    coordinator, link, ids = wired
    batch = [_receipt(ids["a0"], "a0"), _receipt(ids["b0"], "b0"), _result(ids["a0"], "a0"),
             _receipt(ids["a1"], "a1"), _result(ids["b0"], "b0")]
    coordinator.handle_results(batch)
    assert _states(factory) == {
        "a0": "completed_disconnected", "a1": "delivered", "b0": "completed_disconnected",
    }
    assert link.acks() == {
        "conc-a": [[("receipt", ids["a0"]), ("result", ids["a0"]), ("receipt", ids["a1"])]],
        "conc-b": [[("receipt", ids["b0"]), ("result", ids["b0"])]],
    }
    # the same messages again (the agents did not get the acks): nothing changes, acked again
    coordinator.handle_results(batch)
    assert _states(factory)["a1"] == "delivered"
    with factory() as session:
        delivered = session.scalar(
            select(func.count()).select_from(OrderEvent).where(OrderEvent.event == "deliver")
        )
    assert delivered == 3  # one per order: the copies added none
    assert len(link.acks()["conc-a"]) == 2


def test_a_message_that_cannot_be_stored_costs_the_others_nothing_and_is_not_acked(
    factory: sessionmaker[Session], wired: Wired, monkeypatch: pytest.MonkeyPatch
) -> None:
    coordinator, link, ids = wired
    real = results.apply_agent_message

    def failing_for_a1(session: Session, message: OrderReceipt | OrderResult) -> str:
        if message.meter_id == "a1":
            raise StorageError("database error: disk I/O error (test)")
        return real(session, message)

    monkeypatch.setattr(results, "apply_agent_message", failing_for_a1)
    coordinator.handle_results([
        _receipt(ids["a0"], "a0"), _receipt(ids["a1"], "a1"), _result(ids["b0"], "b0"),
    ])
    assert _states(factory) == {
        "a0": "delivered", "a1": "dispatched", "b0": "completed_disconnected",
    }
    acked = [pair for acks in link.acks().values() for ack in acks for pair in ack]
    assert sorted(acked) == sorted([("receipt", ids["a0"]), ("result", ids["b0"])])


def test_a_refused_message_in_a_batch_is_kept_and_the_rest_applied(
    factory: sessionmaker[Session], wired: Wired
) -> None:
    coordinator, link, ids = wired
    spoofed_topic, spoofed = _receipt(ids["b0"], "b0")
    coordinator.handle_results([
        _receipt(ids["a0"], "a0"),
        (topics.results("conc-a"), b'{"kind": "receipt"'),  # cut short
        (topics.results("conc-a"), spoofed),  # conc-b's receipt on conc-a's topic
        _result(ids["a0"], "a0"),
        _receipt(ids["a1"], "a1"),
    ])
    assert spoofed_topic != topics.results("conc-a")
    assert _states(factory) == {
        "a0": "completed_disconnected", "a1": "delivered", "b0": "dispatched",
    }
    with factory() as session:
        reasons = list(session.scalars(select(RejectedMessage.reason)))
    assert len(reasons) == 2
    assert any("names concentrator conc-b" in r for r in reasons)
    # the refused ones are not acked to conc-b (nothing of it was applied)
    assert set(link.acks()) == {"conc-a"}


def test_the_mqtt_handler_thread_passes_results_between_statuses_as_one_batch(
    settings: Settings,
) -> None:
    import paho.mqtt.client as paho

    from central.mqtt import MqttLink

    calls: list[tuple[str, list[str]]] = []
    link = MqttLink(
        settings,
        on_results=lambda batch: calls.append(("results", [t for t, _ in batch])),
        on_status=lambda topic, _payload: bool(calls.append(("status", [topic]))),
    )

    def message(topic: str) -> paho.MQTTMessage:
        made = paho.MQTTMessage(topic=topic.encode())
        made.payload = b"{}"
        return made

    a, b = topics.results("conc-a"), topics.results("conc-b")
    status = topics.status("conc-a")
    link._handle([message(a), message(b), message(status), message(a)])
    assert calls == [("results", [a, b]), ("status", [status]), ("results", [a])]


def _until(check: Callable[[], bool], timeout: float = 10.0) -> None:
    end = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < end, "timed out"
        time.sleep(0.01)


def test_results_that_free_slots_share_one_dispatch_and_new_orders_never_wait(
    settings: Settings, factory: sessionmaker[Session], monkeypatch: pytest.MonkeyPatch
) -> None:
    settings.dispatch_settle_s = 1.0
    settings.sweep_interval_s = 3600.0
    coordinator = Coordinator(settings, factory)
    coordinator.link = _AckLink()  # type: ignore[assignment]
    passes: list[float] = []
    monkeypatch.setattr(coordinator, "dispatch_now", lambda: passes.append(time.monotonic()) or 0)
    coordinator.start()
    try:
        _until(lambda: len(passes) == 1)  # the first whole pass
        for _ in range(10):  # ten results, each freeing a slot
            coordinator.slot_freed()
        time.sleep(0.3)
        assert len(passes) == 1  # settling: the results so far wait for one claim
        _until(lambda: len(passes) == 2)
        time.sleep(0.3)
        assert len(passes) == 2  # the ten shared it
        settings.dispatch_settle_s = 60.0
        coordinator.slot_freed()
        coordinator.wake_dispatch()  # new orders: at once, whatever the settling
        _until(lambda: len(passes) == 3)
    finally:
        coordinator.stop()
