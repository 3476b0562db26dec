"""Fixtures for the coordinator: settings, a migrated database (SQLite and
PostgreSQL through ``database_url``), a recording publisher and a signer."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime

import pytest
from sqlalchemy.orm import Session, sessionmaker

from central.db import make_engine, make_session_factory, migrate
from central.services.dispatch import Outgoing
from central.services.lifecycle import Actor
from central.services.registry import MeterFields, upsert_meter
from central.settings import Settings
from shared.signing import CommandSigner, generate_keypair, load_private_key, load_public_key

# A Thursday, a Saturday and a Chilean public holiday (Inmaculada Concepción), at noon in Santiago.
WORKDAY = datetime(2026, 11, 26, 15, 0, tzinfo=UTC)
SATURDAY = datetime(2026, 11, 28, 15, 0, tzinfo=UTC)
HOLIDAY = datetime(2026, 12, 8, 15, 0, tzinfo=UTC)

OPERATOR = Actor("olga", "operator")
APPROVER = Actor("arturo", "approver")


class RecordingPublisher:
    def __init__(self) -> None:
        self.sent: list[Outgoing] = []
        self.fail = False

    def publish_many(self, messages: Sequence[Outgoing]) -> None:
        from central.errors import DispatchError

        if self.fail:
            raise DispatchError("broker unreachable (test)")
        self.sent.extend(messages)


@pytest.fixture(scope="session")
def keypair() -> tuple[bytes, bytes]:
    return generate_keypair()


@pytest.fixture
def signer(keypair: tuple[bytes, bytes]) -> CommandSigner:
    return CommandSigner(load_private_key(keypair[0]))


@pytest.fixture
def public_key(keypair: tuple[bytes, bytes]):  # type: ignore[no-untyped-def]
    return load_public_key(keypair[1])


@pytest.fixture
def settings(database_url: str) -> Settings:
    return Settings(
        environment="test", database_url=database_url, mqtt_enabled=False, approval_threshold=5
    )


@pytest.fixture
def factory(settings: Settings) -> Iterator[sessionmaker[Session]]:
    engine = make_engine(settings.database_url)
    migrate(engine)
    try:
        yield make_session_factory(engine)
    finally:
        engine.dispose()


@pytest.fixture
def session(factory: sessionmaker[Session]) -> Iterator[Session]:
    with factory() as s:
        yield s


def add_meters(
    session: Session,
    count: int = 3,
    concentrator: str = "conc-a",
    prefix: str = "m",
    **fields: object,
) -> list[str]:
    ids = []
    for n in range(count):
        meter_id = f"{prefix}{n}"
        upsert_meter(
            session,
            MeterFields.model_validate(
                {
                    "id": meter_id,
                    "concentrator_id": concentrator,
                    "line_id": "l1",
                    "hdlc_address": 16 + n,
                    **fields,
                }
            ),
        )
        ids.append(meter_id)
    session.commit()
    return ids


@pytest.fixture
def meters(session: Session) -> Callable[..., list[str]]:
    def make(
        count: int = 3, concentrator: str = "conc-a", prefix: str = "m", **fields: object
    ) -> list[str]:
        return add_meters(session, count, concentrator, prefix, **fields)

    return make


@pytest.fixture
def publisher() -> RecordingPublisher:
    return RecordingPublisher()


def add_connect_order(settings: Settings, factory: sessionmaker[Session]) -> str:
    """Meter m0 on conc-a with one validated reconnect order; the order's id."""
    from central.services import orders

    with factory() as session:
        add_meters(session, 1)
        item = orders.create_orders(
            session,
            [orders.OrderRequest(meter_id="m0", action="connect", reason="payment_restored")],
            OPERATOR,
            settings,
            now=WORKDAY,
        ).items[0]
        session.commit()
    assert item.order_id is not None
    return item.order_id
