"""What a claim holds while it signs (SQLite and PostgreSQL).

Replicas serialise their claims with an advisory lock held until the claim's
transaction commits. A claim signs its commands before it moves its orders, and the
statement that moves an order to ``dispatched`` stores its signed command (issue 14):
no order is ever dispatched without the command it is sent with, and a claim that fails
before its commit leaves its orders validated. Nothing is published before the commit.
Orders dispatched by an older version without a stored command get the very same
command rebuilt and signed when they are sent again.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import select, text
from sqlalchemy.orm import Session, sessionmaker

from central.models import Order, OrderEvent
from central.services import dispatch, selection
from central.settings import Settings
from shared.contracts import Command
from shared.signing import CommandSigner, CommandVerifier, MemorySeenCommands

from .conftest import WORKDAY, RecordingPublisher, add_meters
from .test_races import create


class ProbingSigner(CommandSigner):
    """Signs as the real one; before its first signature it looks, from another
    connection, at what the claim has committed and whether the claim lock is free."""

    def __init__(self, real: CommandSigner, factory: sessionmaker[Session]) -> None:
        super().__init__(real._key)
        self._factory = factory
        self.seen: list[tuple[str, str | None, str | None]] = []
        self.lock_free: bool | None = None

    def sign(self, command: Command) -> bytes:
        self._probe()
        return super().sign(command)

    def sign_many(self, commands: Sequence[Command]) -> list[bytes]:
        self._probe()
        return super().sign_many(commands)

    def _probe(self) -> None:
        if not self.seen:
            with self._factory() as other:
                self.seen = [
                    (o.state, o.command_id, o.command_payload)
                    for o in other.scalars(select(Order).order_by(Order.id))
                ]
                if other.get_bind().dialect.name == "postgresql":
                    self.lock_free = bool(other.scalar(
                        text("SELECT pg_try_advisory_xact_lock(:key)"),
                        {"key": selection._CLAIM_LOCK_KEY},
                    ))
                other.rollback()


def test_a_claim_signs_before_it_moves_and_stores_each_command_with_its_order(
    factory: sessionmaker[Session],
    settings: Settings,
    publisher: RecordingPublisher,
    signer: CommandSigner,
) -> None:
    with factory() as setup:
        add_meters(setup, 3)
        ids = create(setup, settings, ["m0", "m1", "m2"])
    probe = ProbingSigner(signer, factory)
    with factory() as session:
        sent = dispatch.dispatch_ready(session, publisher, probe, settings, now=WORKDAY)

    assert sent == 3
    # while signing: nothing moved yet, and (PostgreSQL) no other replica may claim
    assert probe.seen == [("validated", None, None)] * 3
    if settings.database_url.startswith("postgresql"):
        assert probe.lock_free is False
    with factory() as check:
        stored = {o.id: o for o in check.scalars(select(Order).where(Order.id.in_(ids)))}
        assert {o.state for o in stored.values()} == {"dispatched"}
        assert sorted(m.payload.decode() for m in publisher.sent) == sorted(
            o.command_payload or "" for o in stored.values()
        )
        assert all(o.published_at is not None for o in stored.values())


def test_a_claim_that_fails_while_signing_leaves_its_orders_validated(
    factory: sessionmaker[Session],
    settings: Settings,
    publisher: RecordingPublisher,
    signer: CommandSigner,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with factory() as setup:
        add_meters(setup, 1)
        (order_id,) = create(setup, settings, ["m0"])

    def crash(signer: CommandSigner, commands: list[Any]) -> None:
        raise RuntimeError("the process died while signing (test)")

    monkeypatch.setattr(dispatch, "_sign_claimed", crash)
    with factory() as session, pytest.raises(RuntimeError):
        dispatch.claim_ready(session, signer, settings, now=WORKDAY)
    monkeypatch.undo()

    with factory() as check:
        order = check.get(Order, order_id)
        assert order is not None
        assert order.state == "validated" and order.command_id is None
        events = check.scalars(select(OrderEvent.event).where(OrderEvent.order_id == order_id))
        assert "dispatch" not in list(events)
    with factory() as session:
        assert dispatch.dispatch_ready(session, publisher, signer, settings, now=WORKDAY) == 1


def test_an_order_dispatched_without_a_stored_command_gets_the_same_command_again(
    factory: sessionmaker[Session],
    settings: Settings,
    publisher: RecordingPublisher,
    signer: CommandSigner,
) -> None:
    """A row an older version dispatched before it kept signed commands: republish
    rebuilds and signs the very same command (same id, same signed deadline)."""
    with factory() as setup:
        add_meters(setup, 1)
        (order_id,) = create(setup, settings, ["m0"])
    with factory() as session:
        assert dispatch.dispatch_ready(session, publisher, signer, settings, now=WORKDAY) == 1
    (first,) = publisher.sent
    with factory() as session:
        order = session.get(Order, order_id)
        assert order is not None and order.command_payload == first.payload.decode()
        order.command_payload, order.published_at = None, None
        assert order.resend_at is not None
        due = order.resend_at + timedelta(seconds=1)
        session.commit()
    with factory() as session:
        resent = dispatch.republish_unacked(session, publisher, signer, settings, now=due)

    assert resent == 1
    assert publisher.sent[1].payload == first.payload  # the very same signed command
    with factory() as check:
        order = check.get(Order, order_id)
        assert order is not None and order.command_payload == first.payload.decode()
        assert order.published_at is not None


def test_a_claims_commands_to_one_concentrator_share_a_signature(
    factory: sessionmaker[Session],
    settings: Settings,
    publisher: RecordingPublisher,
    signer: CommandSigner,
) -> None:
    """Issue 14: one Ed25519 signature per concentrator's commands in a claim (a Merkle
    root), each command still its own message that the agent verifies alone."""
    with factory() as setup:
        a = add_meters(setup, 3, concentrator="conc-a", prefix="a")
        b = add_meters(setup, 2, concentrator="conc-b", prefix="b")
        create(setup, settings, a + b)
    with factory() as session:
        sent = dispatch.dispatch_ready(session, publisher, signer, settings, now=WORKDAY)
    assert sent == 5

    by_concentrator: dict[str, set[str]] = {}
    for message in publisher.sent:
        verifier = CommandVerifier(
            signer._key.public_key(), message.topic.split("/")[3], MemorySeenCommands(),
            clock=lambda: WORKDAY,
        )
        command = verifier.verify(message.payload)
        by_concentrator.setdefault(command.concentrator_id, set()).add(
            json.loads(message.payload)["signature"]
        )
    assert {k: len(v) for k, v in by_concentrator.items()} == {"conc-a": 1, "conc-b": 1}
    assert by_concentrator["conc-a"] != by_concentrator["conc-b"]
    with factory() as check:  # what is sent again is what was sent
        stored = {o.command_payload for o in check.scalars(select(Order))}
    assert stored == {m.payload.decode() for m in publisher.sent}
