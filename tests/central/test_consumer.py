"""The result/status consumers: malformed payloads and spoofed topics change nothing."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy.orm import Session, sessionmaker

from central.coordinator import Coordinator
from central.models import Concentrator
from central.services import orders
from central.settings import Settings
from shared import topics
from shared.codes import Outcome
from shared.contracts import ConcentratorStatus, OrderResult

from .conftest import add_connect_order


def test_consumers_ignore_malformed_and_spoofed(
    settings: Settings, factory: sessionmaker[Session]
) -> None:
    order_id = add_connect_order(settings, factory)
    coordinator = Coordinator(settings, factory)
    assert coordinator.handle_result(topics.results("conc-a"), b"not json") is True
    spoof = OrderResult(
        order_id=order_id,
        meter_id="m0",
        concentrator_id="conc-a",
        outcome=Outcome.CONNECTED,
        finished_at=datetime.now(UTC),
    )
    # published on another concentrator's topic: ignored (the ACL gives each agent its own)
    assert coordinator.handle_result(topics.results("conc-b"), spoof.to_json()) is True
    status = ConcentratorStatus(
        concentrator_id="conc-a", online=True, at=datetime.now(UTC), queue_depth=2
    )
    assert coordinator.handle_status(topics.status("conc-b"), status.to_json()) is True
    with factory() as session:
        assert orders.get_order(session, order_id).state == "validated"
        conc = session.get(Concentrator, "conc-a")
        assert conc is not None and not conc.online
    assert coordinator.handle_status(topics.status("conc-a"), status.to_json()) is True
    with factory() as session:
        conc = session.get(Concentrator, "conc-a")
        assert conc is not None and conc.online and conc.queue_depth == 2
