"""Keys, a command and the signing fixtures the signing tests share."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from shared import contracts as c
from shared.signing import (
    CommandSigner,
    CommandVerifier,
    MemorySeenCommands,
    generate_keypair,
    load_private_key,
    load_public_key,
)

NOW = datetime(2026, 11, 26, 10, 0, tzinfo=UTC)
PRIVATE_PEM, PUBLIC_PEM = generate_keypair()


def make_order(**overrides: object) -> c.OrderCommand:
    fields: dict[str, object] = {
        "command_id": "cmd-1",
        "order_id": "ord-1",
        "meter_id": "MTR-1",
        "concentrator_id": "conc-a",
        "action": "disconnect",
        "reason": "non_payment",
        "issued_at": NOW,
        "deadline": NOW + timedelta(hours=1),
    }
    fields.update(overrides)
    return c.validate(c.OrderCommand, fields)


@pytest.fixture
def signer() -> CommandSigner:
    return CommandSigner(load_private_key(PRIVATE_PEM))


@pytest.fixture
def seen() -> MemorySeenCommands:
    return MemorySeenCommands()


@pytest.fixture
def verifier(seen: MemorySeenCommands) -> CommandVerifier:
    return CommandVerifier(load_public_key(PUBLIC_PEM), "conc-a", seen, clock=lambda: NOW)
