"""FastAPI router of the SOAP gateway: one URL per standard service, each with its
``?wsdl``, and the XSDs they import.

- ``/soap/ExecuteEndDeviceControls``: POST the Execute operations, GET ``?wsdl``
- ``/soap/GetEndDeviceControls``: POST GetEndDeviceControls, GET ``?wsdl``
- ``/soap/ReceiveEndDeviceEvents?wsdl``, ``/soap/ReplyEndDeviceControls?wsdl``: what
  Legacy implements (we call it); described here, not served
- ``/soap/schemas/{name}.xsd``; ``POST /soap/cim`` takes any of the operations
  (the gateway dispatches on the body element), kept for existing integrations

The gateway lives in ``app.state.soap_gateway``. Either the caller puts it there
(:func:`install`), or the router's lifespan, merged into the
app's by ``include_router``, builds it from the coordinator's ``app.state.context``
(settings + session factory) and runs the :class:`~central.soap.notifier.LegacyNotifier`
for as long as the app runs. ``app.state.soap_settings`` overrides the
``RCD_SOAP_*`` environment.
"""

from __future__ import annotations

import logging
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from functools import cache, partial

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import Response
from sqlalchemy.orm import Session, sessionmaker
from starlette.concurrency import run_in_threadpool

from central.settings import Settings
from central.soap.adapter import build_gateway
from central.soap.cim import SCHEMA_DIR, SCHEMA_FILES, SERVED_SERVICES, WSDL_FILES
from central.soap.config import SoapSettings
from central.soap.faults import EXECUTE_FAULT_NS, GET_FAULT_NS, SoapFault, fault_xml
from central.soap.gateway import XML_CONTENT_TYPE, SoapGateway
from central.soap.notifier import LegacyNotifier

log = logging.getLogger(__name__)


@asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    state = app.state
    context = getattr(state, "context", None)
    notifier: LegacyNotifier | None = None
    if context is not None:
        soap_settings = getattr(state, "soap_settings", None) or SoapSettings()
        if getattr(state, "soap_gateway", None) is None:
            state.soap_gateway = build_gateway(
                context.settings, context.factory, soap_settings,
                context.coordinator.wake_dispatch,
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


def _fault_ns(request: Request) -> str:
    """The fault element's namespace: the Get service's own, else Execute's."""
    return GET_FAULT_NS if request.url.path.endswith("/GetEndDeviceControls") else EXECUTE_FAULT_NS


def _fault_response(fault: SoapFault, gateway: SoapGateway | None, fault_ns: str) -> Response:
    if gateway is not None:
        answer = gateway.fault(fault, fault_ns)
        return Response(answer.body, status_code=answer.status, headers=answer.headers)
    return Response(
        fault_xml(fault, fault_ns), status_code=fault.http_status, media_type=XML_CONTENT_TYPE
    )


def _wsdl_text(request: Request, service: str) -> str:
    text = _schema_text(WSDL_FILES[service])
    text = _LOCATION.sub(
        lambda m: f'schemaLocation="{request.url_for("soap_schema", name=m.group(1))}"', text
    )
    if service in SERVED_SERVICES:
        text = _ADDRESS.sub(f'<soap:address location="{request.url_for(service)}"/>', text)
    return text


def _describe(service: str) -> Callable[[Request], Awaitable[Response]]:
    async def wsdl(request: Request) -> Response:
        """The service's WSDL (``?wsdl``), schema and endpoint locations made absolute."""
        return Response(_wsdl_text(request, service), media_type="text/xml; charset=utf-8")

    return wsdl


for _service in WSDL_FILES:
    router.add_api_route(
        f"/soap/{_service}",
        _describe(_service),
        methods=["GET"],
        name=f"{_service}_wsdl",
        response_class=Response,
    )


@router.get("/soap/schemas/{name}", name="soap_schema", response_class=Response)
async def schema(name: str) -> Response:
    if name not in SCHEMA_FILES:
        return Response(f"no schema named {name}\n", status_code=404, media_type="text/plain")
    return Response(_schema_text(name), media_type="text/xml; charset=utf-8")


async def endpoint(request: Request) -> Response:
    gateway = _gateway(request)
    fault_ns = _fault_ns(request)
    if gateway is None:
        return _fault_response(
            SoapFault(
                "the SOAP gateway is not configured",
                problem="internal",
                code="Server",
                http_status=503,
            ),
            None,
            fault_ns,
        )
    limit = gateway.settings.max_body_bytes
    declared = request.headers.get("content-length")
    too_large = SoapFault(
        f"request body is over the limit of {limit} bytes", problem="too_large", http_status=413
    )
    if declared is not None:
        try:
            if int(declared) > limit:
                return _fault_response(too_large, gateway, fault_ns)
        except ValueError:
            return _fault_response(
                SoapFault("invalid Content-Length", problem="malformed"), gateway, fault_ns
            )
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            return _fault_response(too_large, gateway, fault_ns)
        chunks.append(chunk)
    answer = await run_in_threadpool(
        partial(gateway.handle, fault_ns=fault_ns),
        b"".join(chunks),
        request.headers.get("authorization"),
    )
    return Response(answer.body, status_code=answer.status, headers=answer.headers)


for _name, _path in (
    ("soap_endpoint", "/soap/cim"),
    *((service, f"/soap/{service}") for service in SERVED_SERVICES),
):
    router.add_api_route(_path, endpoint, methods=["POST"], name=_name, response_class=Response)


def install(
    app: FastAPI,
    settings: Settings,
    sessions: sessionmaker[Session],
    soap_settings: SoapSettings | None = None,
    on_accepted: Callable[[], None] | None = None,
) -> SoapGateway:
    """Put the gateway in ``app.state`` and include the router (if not yet included)."""
    gateway = build_gateway(settings, sessions, soap_settings, on_accepted)
    app.state.soap_gateway = gateway
    paths = {getattr(route, "path", None) for route in app.router.routes}
    if "/soap/cim" not in paths:
        app.include_router(router)
    return gateway
