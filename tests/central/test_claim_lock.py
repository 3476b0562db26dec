"""What a claim holds while it signs (SQLite and PostgreSQL).

Replicas serialise their claims with an advisory lock held until the claim's
transaction commits. The commands are signed after that commit, in a second
transaction: the lock covers the selection and the state change (what the next claim
of any replica reads for its in-flight caps and disconnect budget), not the signing.
Nothing is published before both commits, and a crash between them leaves dispatched
orders whose very same command is rebuilt and signed when they are sent again.
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


def test_commands_are_signed_after_the_claim_committed_and_released_its_lock(
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
    # while signing: every order committed as dispatched with its command id, no command yet
    assert [(state, payload) for state, _, payload in probe.seen] == [("dispatched", None)] * 3
    assert all(command_id for _, command_id, _ in probe.seen)
    if settings.database_url.startswith("postgresql"):
        assert probe.lock_free is True  # another replica could claim meanwhile
    with factory() as check:
        stored = {o.id: o for o in check.scalars(select(Order).where(Order.id.in_(ids)))}
        assert sorted(m.payload.decode() for m in publisher.sent) == sorted(
            o.command_payload or "" for o in stored.values()
        )
        assert all(o.published_at is not None for o in stored.values())


def test_a_claim_that_stops_before_signing_sends_the_same_command_later(
    factory: sessionmaker[Session],
    settings: Settings,
    publisher: RecordingPublisher,
    signer: CommandSigner,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with factory() as setup:
        add_meters(setup, 1)
        (order_id,) = create(setup, settings, ["m0"])
    made: list[Any] = []

    def crash(session: Session, signer: CommandSigner, commands: list[Any]) -> None:
        made.extend(commands)
        raise RuntimeError("the process died between the two commits (test)")

    monkeypatch.setattr(dispatch, "_sign_claimed", crash)
    with factory() as session, pytest.raises(RuntimeError):
        dispatch.claim_ready(session, signer, settings, now=WORKDAY)
    monkeypatch.undo()

    with factory() as check:
        order = check.get(Order, order_id)
        assert order is not None
        assert order.state == "dispatched" and order.command_payload is None
        assert order.published_at is None and order.resend_at is not None
        events = check.scalars(select(OrderEvent.event).where(OrderEvent.order_id == order_id))
        assert "dispatch" in list(events)
        due = order.resend_at + timedelta(seconds=1)
    with factory() as session:
        resent = dispatch.republish_unacked(session, publisher, signer, settings, now=due)

    assert resent == 1
    (command,) = made
    assert publisher.sent[0].payload == signer.sign(command)  # the very same signed command
    with factory() as check:
        order = check.get(Order, order_id)
        assert order is not None and order.command_payload == signer.sign(command).decode()
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
