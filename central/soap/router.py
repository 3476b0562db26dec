"""FastAPI router of the SOAP gateway: POST /soap/cim, GET /soap/cim?wsdl and the XSDs.

The gateway lives in ``app.state.soap_gateway``. Either the caller puts it there
(:func:`central.soap.adapter.install`), or the router's lifespan, merged into the
app's by ``include_router``, builds it from the coordinator's ``app.state.context``
(settings + session factory) and runs the :class:`~central.soap.notifier.LegacyNotifier`
for as long as the app runs. ``app.state.soap_settings`` overrides the
``RCD_SOAP_*`` environment.
"""

from __future__ import annotations

import logging
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import cache

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from central.soap.cim import SCHEMA_DIR, SCHEMA_FILES, WSDL_FILE
from central.soap.faults import SoapFault, fault_xml
from central.soap.gateway import XML_CONTENT_TYPE, SoapGateway

log = logging.getLogger(__name__)


@asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    from central.soap.adapter import build_gateway
    from central.soap.config import SoapSettings
    from central.soap.notifier import LegacyNotifier

    state = app.state
    context = getattr(state, "context", None)
    notifier: LegacyNotifier | None = None
    if context is not None:
        soap_settings = getattr(state, "soap_settings", None) or SoapSettings()
        if getattr(state, "soap_gateway", None) is None:
            state.soap_gateway = build_gateway(
                context.settings, context.factory, soap_settings, context.coordinator.kick
            )
        if soap_settings.notifier_enabled and getattr(state, "soap_notifier", None) is None:
            notifier = LegacyNotifier(context.factory, soap_settings)
            notifier.start()
            state.soap_notifier = notifier
    try:
        yield
    finally:
        if notifier is not None:
            notifier.stop()
            state.soap_notifier = None


router = APIRouter(tags=["soap"], lifespan=_lifespan)

_LOCATION = re.compile(r'schemaLocation="([A-Za-z0-9_.-]+\.xsd)"')
_ADDRESS = re.compile(r'<soap:address location="[^"]*"/>')


@cache
def _schema_text(name: str) -> str:
    return (SCHEMA_DIR / name).read_text(encoding="utf-8")


def _gateway(request: Request) -> SoapGateway | None:
    gateway = getattr(request.app.state, "soap_gateway", None)
    return gateway if isinstance(gateway, SoapGateway) else None


def _fault_response(fault: SoapFault, gateway: SoapGateway | None) -> Response:
    if gateway is not None:
        answer = gateway.fault(fault)
        return Response(answer.body, status_code=answer.status, headers=answer.headers)
    return Response(fault_xml(fault), status_code=fault.http_status, media_type=XML_CONTENT_TYPE)


@router.get("/soap/cim", name="soap_wsdl", response_class=Response)
async def wsdl(request: Request) -> Response:
    """The WSDL (``?wsdl``), with schema and endpoint locations made absolute."""
    text = _schema_text(WSDL_FILE)
    text = _LOCATION.sub(
        lambda m: f'schemaLocation="{request.url_for("soap_schema", name=m.group(1))}"', text
    )
    text = _ADDRESS.sub(f'<soap:address location="{request.url_for("soap_endpoint")}"/>', text)
    return Response(text, media_type="text/xml; charset=utf-8")


@router.get("/soap/cim/schemas/{name}", name="soap_schema", response_class=Response)
async def schema(name: str) -> Response:
    if name not in SCHEMA_FILES:
        return Response(f"no schema named {name}\n", status_code=404, media_type="text/plain")
    return Response(_schema_text(name), media_type="text/xml; charset=utf-8")


@router.post("/soap/cim", name="soap_endpoint", response_class=Response)
async def endpoint(request: Request) -> Response:
    gateway = _gateway(request)
    if gateway is None:
        return _fault_response(
            SoapFault(
                "the SOAP gateway is not configured",
                problem="internal",
                code="Server",
                http_status=503,
            ),
            None,
        )
    limit = gateway.settings.max_body_bytes
    declared = request.headers.get("content-length")
    too_large = SoapFault(
        f"request body is over the limit of {limit} bytes", problem="too_large", http_status=413
    )
    if declared is not None:
        try:
            if int(declared) > limit:
                return _fault_response(too_large, gateway)
        except ValueError:
            return _fault_response(
                SoapFault("invalid Content-Length", problem="malformed"), gateway
            )
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            return _fault_response(too_large, gateway)
        chunks.append(chunk)
    answer = await run_in_threadpool(
        gateway.handle, b"".join(chunks), request.headers.get("authorization")
    )
    return Response(answer.body, status_code=answer.status, headers=answer.headers)
