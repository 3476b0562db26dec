"""Liveness, readiness (public: load balancers probe them) and Prometheus metrics (viewer)."""

from __future__ import annotations

from fastapi import APIRouter, Response, status
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError

from central import metrics
from central.api.deps import ContextDep, Viewer

router = APIRouter(tags=["health"])

PUBLIC_PATHS = frozenset({"/health", "/ready"})


@router.get("/health")
def health() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/ready")
def ready(context: ContextDep, response: Response) -> dict[str, object]:
    checks: dict[str, object] = {}
    try:
        with context.factory() as session:
            session.execute(text("SELECT 1"))
        checks["database"] = "ok"
    except SQLAlchemyError as exc:
        checks["database"] = f"error: {type(exc).__name__}"
    if context.settings.mqtt_enabled:
        checks["mqtt"] = "ok" if context.coordinator.mqtt_connected else "disconnected"
    ok = all(value == "ok" for value in checks.values())
    if not ok:
        response.status_code = status.HTTP_503_SERVICE_UNAVAILABLE
    return {"ready": ok, **checks}


@router.get("/metrics", response_class=Response)
def prometheus(context: ContextDep, _actor: Viewer) -> Response:
    return Response(
        metrics.render(context.metrics_registry), media_type="text/plain; version=0.0.4"
    )
