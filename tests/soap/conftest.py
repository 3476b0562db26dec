"""Fixtures of the SOAP gateway tests: a real coordinator database (SQLite file,
migrated), the app served by uvicorn on a free port in a thread, and a Legacy
endpoint that is a real HTTP server recording what it receives."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest
from fastapi import FastAPI
from lxml import etree
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session, sessionmaker

from central.db import make_engine, make_session_factory, migrate, session_scope
from central.models import Concentrator, Meter, Order
from central.services.lifecycle import advance
from central.services.results import apply_result
from central.settings import Settings
from central.soap.config import SoapSettings
from central.soap.gateway import SoapGateway
from central.soap.router import install
from central.state import Event
from ops.legacy import LegacyStandIn
from ops.serving import ThreadedServer
from shared.codes import Outcome, ReasonCode
from shared.contracts import EnergyReading, OrderResult

OPERATOR = ("legacy", "legacy-operator-token-0001")
VIEWER = ("auditor", "auditor-viewer-token-0002")

METERS = {
    # id: (commissioned, protected)
    "MTR-001": (True, False),
    "MTR-002": (True, False),
    "MTR-003": (True, False),
    "MTR-004": (True, False),
    "MTR-PROT": (True, True),
    "MTR-NEW": (False, False),
}
CONCENTRATOR = "conc-soap"


def central_settings(url: str) -> Settings:
    return Settings(
        environment="test",
        database_url=url,
        mqtt_enabled=False,
        api_tokens={
            OPERATOR[1]: {"name": OPERATOR[0], "role": "operator"},
            VIEWER[1]: {"name": VIEWER[0], "role": "viewer"},
        },
    )


@dataclass
class Coordinator:
    url: str
    engine: Engine
    sessions: sessionmaker[Session]
    settings: Settings

    def seed(self) -> None:
        with session_scope(self.sessions) as session:
            if session.get(Concentrator, CONCENTRATOR) is None:
                session.add(Concentrator(id=CONCENTRATOR, name="SOAP tests", online=True))
            for meter_id, (commissioned, protected) in METERS.items():
                if session.get(Meter, meter_id) is None:
                    session.add(
                        Meter(
                            id=meter_id,
                            concentrator_id=CONCENTRATOR,
                            commissioned=commissioned,
                            protected_customer=protected,
                        )
                    )

    def orders(self) -> list[Order]:
        with session_scope(self.sessions) as session:
            return list(session.scalars(select(Order).order_by(Order.created_at, Order.id)))

    def finish(
        self,
        order_id: str,
        outcome: Outcome,
        *,
        energy: float | None = None,
        reason: ReasonCode | None = None,
    ) -> None:
        """What the dispatcher and the agent would do: dispatch, then a result (steps 4-8)."""
        now = datetime.now(UTC)
        with session_scope(self.sessions) as session:
            order = session.get(Order, order_id)
            assert order is not None
            if order.state == "validated":
                advance(session, order, Event.DISPATCH, "test-dispatcher", "test")
            applied = apply_result(
                session,
                OrderResult(
                    order_id=order.id,
                    meter_id=order.meter_id,
                    concentrator_id=CONCENTRATOR,
                    outcome=outcome,
                    reason=reason,
                    energy=EnergyReading(value=energy, unit="kWh", read_at=now)
                    if energy is not None
                    else None,
                    finished_at=now,
                ),
            )
            assert applied == "applied", applied

    def close(self) -> None:
        self.engine.dispose()


def open_coordinator(where: Path | str) -> Coordinator:
    """A migrated, seeded coordinator database: a SQLite file path or a database URL."""
    url = f"sqlite:///{where}" if isinstance(where, Path) else where
    engine = make_engine(url)
    migrate(engine)
    coordinator = Coordinator(url, engine, make_session_factory(engine), central_settings(url))
    coordinator.seed()
    return coordinator


@pytest.fixture
def coordinator(database_url: str) -> Iterator[Coordinator]:
    """Once on SQLite, once on PostgreSQL (``database_url`` of tests/conftest.py)."""
    running = open_coordinator(database_url)
    try:
        yield running
    finally:
        running.close()


class AppServer:
    """The coordinator's app (with the SOAP router) under uvicorn, in a thread."""

    def __init__(
        self,
        coordinator: Coordinator | None,
        soap_settings: SoapSettings,
        app: FastAPI | None = None,
    ) -> None:
        """With ``app`` (e.g. from ``central.app.create_app``) its lifespan runs and the
        SOAP router wires itself; without, a bare app gets the gateway installed."""
        if app is None:
            assert coordinator is not None
            self.app = FastAPI()
            install(self.app, coordinator.settings, coordinator.sessions, soap_settings)
        else:
            self.app = app
            self.app.state.soap_settings = soap_settings
        self.running = ThreadedServer(self.app, lifespan="off" if app is None else "on")
        self.port = self.running.port
        self.base = self.running.url

    @property
    def gateway(self) -> SoapGateway:
        gateway: SoapGateway = self.app.state.soap_gateway
        return gateway

    @property
    def endpoint(self) -> str:
        return f"{self.base}/soap/cim"

    def __enter__(self) -> AppServer:
        self.running.start(10)
        return self

    def __exit__(self, *exc: object) -> None:
        self.running.stop()


class LegacyServer(LegacyStandIn):
    """The demo's Legacy stand-in, with the parsed views these tests read."""

    def events(self) -> list[etree._Element]:
        with self._lock:
            bodies = list(self.received)
        return [etree.fromstring(body) for body in bodies]

    def wait_for(self, count: int, timeout: float = 15.0) -> list[etree._Element]:
        self.wait_for_posts(count, timeout)
        return self.events()


@pytest.fixture
def legacy() -> Iterator[LegacyServer]:
    server = LegacyServer().start()
    try:
        yield server
    finally:
        server.stop()


def fast_soap_settings(**overrides: object) -> SoapSettings:
    values: dict[str, object] = {
        "retry_initial_s": 0.05,
        "retry_max_s": 0.3,
        "poll_interval_s": 0.05,
        "claim_s": 5.0,
    }
    values.update(overrides)
    return SoapSettings(**values)  # type: ignore[arg-type]
