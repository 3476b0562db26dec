"""Routes of the dashboard: the page, its two static files, and one aggregate
(``/dashboard/api/stats``, viewer role, see :mod:`central.dashboard.stats`).

Token policy: outside production (``environment`` development or test, which is
what ``rcd demo`` runs) the page is given a *viewer* token from the configured
API tokens, so it opens without a prompt; it is never given a token of a higher
role. In production nothing is injected: the page asks for a token once and keeps
it in the tab's sessionStorage.
"""

from __future__ import annotations

import json
from functools import lru_cache
from importlib import resources
from typing import Any, Final

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import HTMLResponse, Response

from central.api.deps import SessionDep, Viewer
from central.dashboard.stats import DashboardStats, collect
from central.services import reconnect_sla

router = APIRouter(include_in_schema=False)

STATIC_FILES: Final = {
    "dashboard.js": "text/javascript; charset=utf-8",
    "dashboard.css": "text/css; charset=utf-8",
}
REFRESH_S: Final = 3
# Content security: only our own scripts and styles; the API is same-origin.
CSP: Final = (
    "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
    "connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'self'; "
    "frame-ancestors 'none'"
)


@lru_cache(maxsize=8)
def _asset(name: str) -> str:
    return resources.files("central.dashboard").joinpath("static", name).read_text("utf-8")


def _settings(request: Request) -> Any:
    state = request.app.state
    return getattr(state, "settings", None)


def viewer_token(settings: Any) -> str | None:
    """The token to put in the page, or None (production, or no viewer token configured)."""
    if settings is None or getattr(settings, "environment", "production") == "production":
        return None
    tokens = getattr(settings, "api_tokens", {}) or {}
    for token, entry in tokens.items():
        role = getattr(entry, "role", None) or (
            entry.get("role") if isinstance(entry, dict) else None
        )
        if role == "viewer":
            return str(token)
    return None


def page_config(settings: Any) -> dict[str, Any]:
    return {"token": viewer_token(settings), "refresh_s": REFRESH_S, "api": API_PATHS}


# The REST paths the page reads (the coordinator's API is authoritative).
API_PATHS: Final = {
    "orders": "/api/v1/orders",
    "order": "/api/v1/orders/{id}",
    "concentrators": "/api/v1/concentrators",
    "workorders": "/api/v1/work-orders?status=open&limit=500",
    "stats": "/dashboard/api/stats",
}


@router.get("/dashboard", response_class=HTMLResponse)
def dashboard_page(request: Request) -> HTMLResponse:
    config = json.dumps(page_config(_settings(request)))
    # JSON inside <script>: make "</" harmless so no value can close the element.
    html = _asset("index.html").replace("__RCD_CONFIG__", config.replace("</", "<\\/"))
    return HTMLResponse(
        html,
        headers={
            "Cache-Control": "no-store",
            "Content-Security-Policy": CSP,
            "X-Content-Type-Options": "nosniff",
            "Referrer-Policy": "no-referrer",
        },
    )


@router.get("/dashboard/static/{name}")
def dashboard_static(name: str) -> Response:
    media_type = STATIC_FILES.get(name)
    if media_type is None:
        raise HTTPException(status_code=404, detail=f"no dashboard file {name!r}")
    return Response(
        _asset(name),
        media_type=media_type,
        headers={"Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff"},
    )


@router.get("/dashboard/api/stats", response_model=DashboardStats)
def dashboard_stats(request: Request, session: SessionDep, _actor: Viewer) -> DashboardStats:
    """Counts over all orders and the newest ended orders with their final state."""
    stats = collect(session)
    settings = _settings(request)
    if settings is not None:
        stats.reconnect_sla = reconnect_sla.summary(session, settings)
    return stats
