"""Reconnects whose SLA is at risk (issue 17): unfinished reconnects past their first
warning, or whose remote path is failing; the most urgent first."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from central.api.deps import ContextDep, SessionDep, Viewer
from central.services import reconnect_sla

router = APIRouter(tags=["reconnects"])


@router.get("/reconnects/sla-at-risk")
def sla_at_risk(session: SessionDep, context: ContextDep, _actor: Viewer) -> dict[str, Any]:
    """``summary`` (counts as in the dashboard tile) and ``orders`` (each with its SLA end,
    the fraction used, why the remote path is failing, its field work order)."""
    settings = context.settings
    clocks = reconnect_sla.at_risk(session, settings)
    return {
        "sla_s": settings.reconnect_sla_s,
        "warn_at": settings.reconnect_sla_warn_at,
        "field_lead_s": settings.reconnect_sla_field_lead_s,
        "summary": reconnect_sla.summary(session, settings),
        "orders": [c.as_dict() for c in clocks],
    }
