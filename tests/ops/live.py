"""The real coordinator app served by uvicorn on a free port in a thread.

Used by the ops CLI tests and the dashboard browser test: the CLI and the
browser talk real HTTP to the real app (SQLite in a temporary directory, MQTT
off), nothing is mocked.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import uvicorn
from fastapi import FastAPI

from central.settings import Settings
from ops.serving import ThreadedServer

VIEWER = "dev-viewer"
OPERATOR = "dev-operator"
APPROVER = "dev-approver"
ADMIN = "dev-admin"


def make_settings(tmp: Path, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "environment": "test",
        "database_url": f"sqlite:///{tmp / 'central.sqlite3'}",
        "mqtt_enabled": False,
    }
    values.update(overrides)
    return Settings(**values)


def make_app(settings: Settings) -> FastAPI:
    from central.app import create_app

    app = create_app(settings)
    if not any(getattr(r, "path", "") == "/dashboard" for r in app.routes):
        # Until central/app.py includes it (see docs/dashboard.md).
        from central.dashboard import router

        app.include_router(router)
    return app


class LiveServer:
    def __init__(self, app: FastAPI, url: str, server: uvicorn.Server) -> None:
        self.app = app
        self.url = url
        self.server = server


@contextmanager
def serve(app: FastAPI, startup_timeout_s: float = 20.0) -> Iterator[LiveServer]:
    running = ThreadedServer(app).start(startup_timeout_s)
    try:
        yield LiveServer(app, running.url, running.server)
    finally:
        running.stop()


# ---------------------------------------------------------------- the field, simulated
# With MQTT off the coordinator stores orders but does not publish them. These
# helpers play the broker and the agents through the coordinator's own entry
# points: a dispatch pass with a recording publisher, then results and status
# payloads handed to the same consumers the MQTT link calls.
class RecordingPublisher:
    def __init__(self) -> None:
        self.sent: list[Any] = []

    def publish_many(self, messages: Any) -> None:
        self.sent.extend(messages)


def dispatch_all(app: FastAPI) -> int:
    from central.services import dispatch

    context = app.state.context
    with context.factory() as session:
        return dispatch.dispatch_ready(
            session, RecordingPublisher(), context.coordinator.signer, context.settings
        )


def report_result(
    app: FastAPI,
    order_id: str,
    meter_id: str,
    concentrator_id: str,
    outcome: str,
    *,
    reason: str | None = None,
    detail: str = "",
    attempts: int = 1,
    energy_kwh: float | None = 1234.5,
    receipt: bool = True,
) -> None:
    """What the agent sends: its receipt (step 5, unless ``receipt=False``), then the
    result with one attempt per try (steps 6-7)."""
    from datetime import UTC, datetime, timedelta

    from shared import topics
    from shared.contracts import OrderReceipt, OrderResult, validate

    now = datetime.now(UTC)
    if receipt:
        stored = OrderReceipt(
            order_id=order_id,
            command_id=f"cmd-{order_id}",
            meter_id=meter_id,
            concentrator_id=concentrator_id,
            received_at=now - timedelta(seconds=2 * attempts + 1),
            queue_depth=1,
        )
        assert app.state.context.coordinator.handle_result(
            topics.results(concentrator_id), stored.to_json()
        )
    tries = [
        {
            "number": n,
            "started_at": now - timedelta(seconds=2 * (attempts - n + 1)),
            "finished_at": now - timedelta(seconds=2 * (attempts - n)),
            "error": reason if (n < attempts or outcome == "failed") and reason else None,
        }
        for n in range(1, attempts + 1)
    ]
    result = validate(OrderResult,
        {
            "order_id": order_id,
            "meter_id": meter_id,
            "concentrator_id": concentrator_id,
            "outcome": outcome,
            "reason": reason,
            "detail": detail,
            "energy": None
            if energy_kwh is None
            else {"value": energy_kwh, "unit": "kWh", "read_at": now},
            "attempts": tries,
            "received_at": now - timedelta(seconds=2 * attempts + 1),
            "finished_at": now,
        }
    )
    handled = app.state.context.coordinator.handle_result(
        topics.results(concentrator_id), result.to_json()
    )
    assert handled


def report_status(app: FastAPI, concentrator_id: str, *, online: bool, queue_depth: int) -> None:
    from datetime import UTC, datetime

    from shared import topics
    from shared.contracts import ConcentratorStatus

    status = ConcentratorStatus(
        concentrator_id=concentrator_id,
        online=online,
        at=datetime.now(UTC),
        queue_depth=queue_depth,
    )
    app.state.context.coordinator.handle_status(topics.status(concentrator_id), status.to_json())


METERS_CSV = """meter_id,concentrator_id,line_id,hdlc_address,commissioned,protected_customer
MTR-001,conc-north,line1,16,true,false
MTR-002,conc-north,line1,17,true,false
MTR-003,conc-north,line1,18,true,false
MTR-004,conc-south,line1,16,true,false
MTR-005,conc-south,line1,17,true,true
MTR-006,conc-south,line1,18,false,false
"""


def release_held(api_url: str, order_id: str) -> None:
    """A second person (dev-approver) approves the order's batch if it waits for one.

    These tests run on the real clock and flag their disconnects special so that they
    pass on any day; on a weekend or holiday the special flag lifts the working-day
    rule only with a second person's approval (issue 12), which this gives."""
    import httpx

    headers = {"Authorization": f"Bearer {APPROVER}"}
    order = httpx.get(f"{api_url}/orders/{order_id}", headers=headers, timeout=10).json()
    if order["needs_approval"] and order["approved_by"] is None:
        answer = httpx.post(f"{api_url}/orders/{order_id}/approve", headers=headers, timeout=10)
        answer.raise_for_status()
