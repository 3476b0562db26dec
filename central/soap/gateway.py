"""The request pipeline: bytes in, SOAP reply or Fault out; never raises.

Order of checks: size (the router refuses oversized bodies before reading them all),
hostile XML (DTD, entities, depth, malformed), authentication, envelope and
namespaces, schema validation, Verb/Noun, authorisation, MessageID replay, then the
coordinator's service functions.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass, field

from central.soap import auth, cim, reply_policy
from central.soap.config import SoapSettings
from central.soap.faults import SOAP11_ENV, SoapFault, fault_xml
from central.soap.service_port import Authenticator, ItemOutcome, Principal, ServicePort
from central.soap.store import MessageLog
from central.soap.xmlsafe import XmlLimits, parse_request

log = logging.getLogger(__name__)

XML_CONTENT_TYPE = "text/xml; charset=utf-8"
REPLAYED_OPERATIONS = ("create", "cancel")


@dataclass
class GatewayResponse:
    status: int
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)


class SoapGateway:
    def __init__(
        self,
        service: ServicePort,
        authenticator: Authenticator,
        message_log: MessageLog,
        settings: SoapSettings,
    ) -> None:
        self.service = service
        self.authenticator = authenticator
        self.message_log = message_log
        self.settings = settings
        self.limits = XmlLimits(
            max_bytes=settings.max_body_bytes,
            max_depth=settings.max_depth,
            max_elements=settings.max_elements,
        )

    # ------------------------------------------------------------------ entry

    def handle(self, body: bytes, authorization: str | None) -> GatewayResponse:
        try:
            return self._handle(body, authorization)
        except SoapFault as fault:
            return self.fault(fault)
        except Exception:
            log.exception("SOAP request failed")
            return self.fault(
                SoapFault(
                    "internal error; the request may be retried with the same MessageID",
                    problem="internal",
                    code="Server",
                )
            )

    def fault(self, fault: SoapFault) -> GatewayResponse:
        headers = {"Content-Type": XML_CONTENT_TYPE}
        if fault.http_status == 401:
            headers["WWW-Authenticate"] = f'Basic realm="{self.settings.realm}"'
        log.info("SOAP fault %s: %s", fault.problem, fault.message)
        return GatewayResponse(fault.http_status, fault_xml(fault), headers)

    # ------------------------------------------------------------------ pipeline

    def _handle(self, body: bytes, authorization: str | None) -> GatewayResponse:
        root = parse_request(body, self.limits)
        soap_header = (
            root.find(f"{{{SOAP11_ENV}}}Header")
            if root.tag == f"{{{SOAP11_ENV}}}Envelope"
            else None
        )
        principal = auth.authenticate(
            self.authenticator, self.settings.auth_modes, authorization, soap_header
        )
        env = cim.open_envelope(root)
        auth.authorize(principal, env.operation)
        self._check_reply_address(env.reply_address)
        message_id = env.message_id if env.operation in REPLAYED_OPERATIONS else None
        if message_id:
            if not self.message_log.claim(message_id, env.operation, principal.name):
                owner = self.message_log.owner(message_id)
                if owner is not None and owner != principal.name:
                    # another caller's MessageID: never hand back (or take over) its reply
                    raise SoapFault(
                        f"MessageID '{message_id}' was already used by another caller",
                        problem="message_id_reused",
                    )
                stale = self.settings.stale_claim_s
                if not (
                    self.message_log.take_over_stale(message_id, stale)
                    and self.message_log.claim(message_id, env.operation, principal.name)
                ):
                    return self._replayed(message_id, env.operation)
            try:
                reply = self._run(env, principal)
            except BaseException:
                self.message_log.release(message_id)
                raise
            self.message_log.store(message_id, reply)
        else:
            reply = self._run(env, principal)
        return GatewayResponse(200, reply, {"Content-Type": XML_CONTENT_TYPE})

    def _replayed(self, message_id: str, operation: str) -> GatewayResponse:
        found = self.message_log.wait_reply(message_id, self.settings.in_progress_wait_s)
        if found is None:  # the first copy failed and released its claim
            raise SoapFault(
                f"MessageID '{message_id}' failed while being processed; send it again",
                problem="in_progress",
                code="Server",
                http_status=503,
            )
        stored_operation, reply = found
        if stored_operation != operation:
            raise SoapFault(
                f"MessageID '{message_id}' was already used for a {stored_operation} request",
                problem="message_id_reused",
            )
        if reply is None:
            raise SoapFault(
                f"MessageID '{message_id}' is still being processed; send it again later",
                problem="in_progress",
                code="Server",
                http_status=503,
            )
        return GatewayResponse(200, reply, {"Content-Type": XML_CONTENT_TYPE})

    def _check_reply_address(self, address: str | None) -> None:
        problem = None if address is None else reply_policy.refusal(address, self.settings)
        if problem is not None:
            raise SoapFault(problem, problem="reply_address", path="/Header/ReplyAddress")

    def _run(self, env: cim.Envelope, principal: Principal) -> bytes:
        correlation_id = env.correlation_id or env.message_id or str(uuid.uuid4())
        source = self.settings.source
        if env.operation == "create":
            items = cim.read_create(env, correlation_id)
            if len(items) > self.settings.max_devices_per_message:
                raise SoapFault(
                    f"{len(items)} EndDevices in one message, over the limit of "
                    f"{self.settings.max_devices_per_message}",
                    problem="too_many",
                )
            wanted = [item.request for item in items if item.request is not None]
            answers = iter(self.service.create(wanted, principal) if wanted else [])
            outcomes: list[ItemOutcome] = []
            for item in items:
                if item.outcome is not None:
                    outcomes.append(item.outcome)
                else:
                    outcomes.append(next(answers))
            return cim.build_reply(
                operation="create",
                outcomes=outcomes,
                source=source,
                correlation_id=correlation_id,
            )
        if env.operation == "cancel":
            outcomes = self.service.cancel(cim.read_cancel(env), principal)
            return cim.build_reply(
                operation="cancel",
                outcomes=outcomes,
                source=source,
                correlation_id=correlation_id,
            )
        views = self.service.query(cim.read_get(env), principal)
        info = [] if views else [("2.4", "no order matches the query", "no_match")]
        return cim.build_reply(
            operation="get",
            outcomes=[],
            source=source,
            correlation_id=correlation_id,
            views=views,
            result="OK",
            info=info,
        )
