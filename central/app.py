"""The FastAPI application factory: ``create_app(settings)``.

Nothing is built at import time: the factory creates the engine, runs the
migrations, builds the coordinator (MQTT, background loop) and wires the
routers. The lifespan starts and stops the coordinator and disposes the engine.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request, status
from fastapi.responses import JSONResponse
from prometheus_client import CollectorRegistry
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.orm.exc import StaleDataError

from central import metrics
from central.api.deps import AppContext, hash_token
from central.api.routes import (
    concentrators,
    health,
    meters,
    orders,
    protections,
    rejected,
    relay,
    workorders,
)
from central.api.schemas import ERROR_RESPONSES
from central.coordinator import Coordinator
from central.db import CHANGED_MEANWHILE, make_engine, make_session_factory, migrate
from central.errors import (
    BadRequest,
    CentralError,
    Conflict,
    DispatchError,
    NotFound,
    PermissionDenied,
    StorageError,
)
from central.services.lifecycle import Actor
from central.settings import Settings

log = logging.getLogger(__name__)
API_PREFIX = "/api/v1"

_STATUS: list[tuple[type[CentralError], int]] = [
    (NotFound, status.HTTP_404_NOT_FOUND),
    (Conflict, status.HTTP_409_CONFLICT),
    (PermissionDenied, status.HTTP_403_FORBIDDEN),
    (BadRequest, status.HTTP_400_BAD_REQUEST),
    (StorageError, status.HTTP_503_SERVICE_UNAVAILABLE),
    (DispatchError, status.HTTP_503_SERVICE_UNAVAILABLE),
]


def create_app(settings: Settings) -> FastAPI:
    engine = make_engine(settings.database_url)
    migrate(engine)
    factory = make_session_factory(engine)
    coordinator = Coordinator(settings, factory)
    registry = CollectorRegistry()
    registry.register(metrics.DatabaseCollector(factory, settings.relay_audit_cycle_s))
    context = AppContext(
        settings=settings,
        factory=factory,
        coordinator=coordinator,
        tokens={hash_token(t): Actor(e.name, e.role) for t, e in settings.api_tokens.items()},
        metrics_registry=registry,
    )

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        # ``rcd central run`` starts it before serving, so that a refused login is one
        # line and exit 2 (no restart loop) instead of uvicorn's traceback and exit 3.
        if not getattr(app.state, "coordinator_started", False):
            coordinator.start()
        try:
            yield
        finally:
            coordinator.stop()
            engine.dispose()

    app = FastAPI(
        title="ami-rcd coordinator",
        version="1.0",
        description="Remote connect/disconnect of smart meters: orders, meters, concentrators, "
        "field work orders. Authenticate with `Authorization: Bearer <token>`.",
        lifespan=lifespan,
    )
    app.state.context = context
    app.state.settings = settings

    @app.middleware("http")
    async def _refuse_nul(request: Request, call_next: Any) -> Any:
        # PostgreSQL cannot store a NUL character: refused in a path or query with a
        # 422 naming where, before any route reads it (bodies: central/services/inputs.py)
        for where, raw in (("path", request.url.path), ("query", request.url.query)):
            if "\x00" in raw or "%00" in raw:
                return JSONResponse(
                    {
                        "detail": [
                            {
                                "loc": [where],
                                "msg": f"the {where} contains a NUL character",
                                "type": "nul_character",
                            }
                        ]
                    },
                    status_code=status.HTTP_422_UNPROCESSABLE_CONTENT,
                )
        return await call_next(request)

    @app.exception_handler(CentralError)
    async def _central_error(_request: Request, exc: CentralError) -> JSONResponse:
        code = next((c for kind, c in _STATUS if isinstance(exc, kind)), 500)
        return JSONResponse({"detail": str(exc), "error": type(exc).__name__}, status_code=code)

    @app.exception_handler(IntegrityError)
    async def _integrity_error(_request: Request, exc: IntegrityError) -> JSONResponse:
        # e.g. two requests racing with the same idempotency key: the second one retries
        log.info("integrity error: %s", exc.orig)
        return JSONResponse(
            {"detail": "conflicting concurrent change; retry the request", "error": "Conflict"},
            status_code=status.HTTP_409_CONFLICT,
        )

    @app.exception_handler(StaleDataError)
    async def _stale_error(_request: Request, exc: StaleDataError) -> JSONResponse:
        # an order written from a stale read (compare-and-set on its state): retry
        log.info("stale write refused: %s", exc)
        return JSONResponse(
            {"detail": CHANGED_MEANWHILE, "error": "Conflict"},
            status_code=status.HTTP_409_CONFLICT,
        )

    @app.exception_handler(SQLAlchemyError)
    async def _database_error(_request: Request, exc: SQLAlchemyError) -> JSONResponse:
        log.error("database error: %s", exc)
        return JSONResponse(
            {"detail": "database unavailable", "error": "StorageError"},
            status_code=status.HTTP_503_SERVICE_UNAVAILABLE,
        )

    for module in (orders, meters, concentrators, workorders, rejected, protections, relay):
        app.include_router(module.router, prefix=API_PREFIX, responses=ERROR_RESPONSES)
    app.include_router(health.router, responses=ERROR_RESPONSES)
    _include_optional(app)
    return app


def _include_optional(app: FastAPI) -> None:
    """Routers of the other parts (dashboard, SOAP gateway) when installed."""
    import importlib

    for module_name in ("central.dashboard.routes", "central.soap.router"):
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name != module_name:
                raise
            continue
        router = getattr(module, "router", None)
        if router is not None:
            # the SOAP gateway is described by its WSDL (SOAP 1.1 faults travel as HTTP
            # 500 by the standard), not by the REST API's OpenAPI document
            app.include_router(router, include_in_schema=module_name != "central.soap.router")
