"""Result delivery targets are configuration, not request data (issue 12, item 2).

With no endpoint list, a foreign ReplyAddress is refused in the synchronous reply
and results go to the configured default endpoint; a stored address that the
policy does not admit (written before the rule, or by hand) is never POSTed to.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import httpx
import pytest
from sqlalchemy import update

from central.db import session_scope
from central.models import Order
from central.soap.notifier import LegacyNotifier
from shared.codes import Outcome
from tests.soap.conftest import AppServer, Coordinator, LegacyServer, fast_soap_settings
from tests.soap.helpers import basic, control, create, fault_of, reply_of, special


def with_reply_address(address: str, message_id: str) -> str:
    return create(
        control(["MTR-003"], code="3.31.0.18", tracking=f"T-{message_id}"),
        message_id=message_id,
        options=special(),
    ).replace(
        "<msg:MessageID>", f"<msg:ReplyAddress>{address}</msg:ReplyAddress><msg:MessageID>"
    )


@pytest.fixture
def attacker_sink() -> Iterator[LegacyServer]:
    """Where a hostile ReplyAddress points: it must never receive anything."""
    server = LegacyServer().start()
    try:
        yield server
    finally:
        server.stop()


FOREIGN = [
    "http://127.0.0.1:{port}/steal",
    "http://x@127.0.0.1:{port}/steal",
    "gopher://127.0.0.1:{port}/_x",
    "file:///etc/passwd",
]


@pytest.mark.parametrize("template", FOREIGN)
def test_with_no_endpoint_configured_any_reply_address_is_refused(
    coordinator: Coordinator, attacker_sink: LegacyServer, template: str
) -> None:
    address = template.format(port=attacker_sink.port)
    with AppServer(coordinator, fast_soap_settings()) as server:
        response = httpx.post(
            server.endpoint, content=with_reply_address(address, "m-none"), headers=basic()
        )
    _code, _text, problem, path = fault_of(response.content)
    assert (problem, path) == ("reply_address", "/Header/ReplyAddress")
    assert coordinator.orders() == []  # refused before any order was stored


def test_a_foreign_reply_address_is_refused_and_results_go_to_the_default_endpoint(
    coordinator: Coordinator, legacy: LegacyServer, attacker_sink: LegacyServer
) -> None:
    settings = fast_soap_settings(legacy_endpoint=legacy.url)
    foreign = f"http://x@127.0.0.1:{attacker_sink.port}/steal"
    with AppServer(coordinator, settings) as server:
        refused = httpx.post(
            server.endpoint, content=with_reply_address(foreign, "m-foreign"), headers=basic()
        )
        assert fault_of(refused.content)[2] == "reply_address"
        # the default endpoint itself (or a path under it) is a configured endpoint
        accepted = httpx.post(
            server.endpoint, content=with_reply_address(legacy.url, "m-own"), headers=basic()
        )
        assert reply_of(accepted.content)[0] == "OK"
    (order,) = coordinator.orders()
    coordinator.finish(order.id, Outcome.CONNECTED, energy=1.0)
    with LegacyNotifier(coordinator.sessions, settings):
        assert len(legacy.wait_for(1)) == 1
    assert attacker_sink.received == []


def test_a_stored_reply_address_the_policy_refuses_is_not_posted_to(
    coordinator: Coordinator, legacy: LegacyServer, attacker_sink: LegacyServer
) -> None:
    """An order row whose reply_address points elsewhere (from before the rule, or the
    REST hole of issue 12) gets its result at the configured endpoint instead."""
    settings = fast_soap_settings(legacy_endpoint=legacy.url)
    with AppServer(coordinator, settings) as server:
        response = httpx.post(
            server.endpoint, content=with_reply_address(legacy.url, "m-row"), headers=basic()
        )
        assert reply_of(response.content)[0] == "OK"
    (order,) = coordinator.orders()
    with session_scope(coordinator.sessions) as session:
        session.execute(
            update(Order)
            .where(Order.id == order.id)
            .values(reply_address=f"http://x@127.0.0.1:{attacker_sink.port}/steal")
        )
    coordinator.finish(order.id, Outcome.CONNECTED, energy=1.0)
    with LegacyNotifier(coordinator.sessions, settings):
        assert len(legacy.wait_for(1)) == 1
        time.sleep(0.3)
    assert attacker_sink.received == []
