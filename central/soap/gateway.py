"""The request pipeline: bytes in, SOAP reply or Fault out; never raises.

Order of checks: size (the router refuses oversized bodies before reading them all),
hostile XML (DTD, entities, depth, malformed), authentication (WS-Security nonce
replay included), envelope and namespaces, schema validation, Verb/Noun,
authorisation, Header/ReplayDetection, MessageID replay, then the coordinator's
service functions. A standard-valid message never gets a Fault: what we cannot do
with it is a Reply FAILED with a coded Error.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass, field

from central.soap import auth, cim, cim_read, cim_write, legacy_shapes, reply_policy
from central.soap.cim_read import MessageRefused
from central.soap.config import SoapSettings
from central.soap.faults import EXECUTE_FAULT_NS, SOAP11_ENV, SoapFault, fault_xml
from central.soap.replay import NonceLog, freshness_problem
from central.soap.service_port import (
    Authenticator,
    ControlRequest,
    ItemOutcome,
    OrderView,
    Principal,
    Refusal,
    ServicePort,
)
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
        nonce_log: NonceLog | None = None,
    ) -> None:
        self.service = service
        self.authenticator = authenticator
        self.message_log = message_log
        self.nonce_log = nonce_log or NonceLog(message_log.engine)
        self.settings = settings
        self.limits = XmlLimits(
            max_bytes=settings.max_body_bytes,
            max_depth=settings.max_depth,
            max_elements=settings.max_elements,
        )
        self.read_options = cim_read.ReadOptions(settings.meter_name_type, self.limits)
        self.naming = cim_write.Naming(settings.meter_name_type)

    # ------------------------------------------------------------------ entry

    def handle(
        self, body: bytes, authorization: str | None, *, fault_ns: str = EXECUTE_FAULT_NS
    ) -> GatewayResponse:
        """``fault_ns``: the message namespace of the service called, for the
        standard fault element in a Fault's detail."""
        try:
            return self._handle(body, authorization)
        except SoapFault as fault:
            return self.fault(fault, fault_ns)
        except Exception:
            log.exception("SOAP request failed")
            return self.fault(
                SoapFault(
                    "internal error; the request may be retried with the same MessageID",
                    problem="internal",
                    code="Server",
                ),
                fault_ns,
            )

    def fault(self, fault: SoapFault, fault_ns: str = EXECUTE_FAULT_NS) -> GatewayResponse:
        headers = {"Content-Type": XML_CONTENT_TYPE}
        if fault.http_status == 401:
            headers["WWW-Authenticate"] = f'Basic realm="{self.settings.realm}"'
        log.info("SOAP fault %s: %s", fault.problem, fault.message)
        return GatewayResponse(fault.http_status, fault_xml(fault, fault_ns), headers)

    # ------------------------------------------------------------------ pipeline

    def _handle(self, body: bytes, authorization: str | None) -> GatewayResponse:
        root = parse_request(body, self.limits)
        soap_header = (
            root.find(f"{{{SOAP11_ENV}}}Header")
            if root.tag == f"{{{SOAP11_ENV}}}Envelope"
            else None
        )
        principal = auth.authenticate(
            self.authenticator,
            self.settings.auth_modes,
            authorization,
            soap_header,
            replay_check=self._wsse_replay,
            require_nonce=self.settings.wsse_require_nonce,
        )
        env = cim.open_envelope(
            root, normalise=legacy_shapes.normalise if self.settings.compat_legacy_shapes else None
        )
        auth.authorize(principal, env.operation)
        self._check_reply_address(env.reply_address)
        refused = self._refused_at_once(env)
        if refused is not None:
            return GatewayResponse(200, refused, {"Content-Type": XML_CONTENT_TYPE})
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

    # ------------------------------------------------------------------ replays

    def _wsse_replay(self, nonce: str, created: str) -> None:
        window = self.settings.replay_window_s
        problem = freshness_problem(created, cim.now_utc(), window)
        if problem is None and not self.nonce_log.first_use("wsse", nonce, window):
            problem = "this UsernameToken Nonce was already used"
        if problem is not None:
            raise SoapFault(f"WS-Security: {problem}", problem="replay", http_status=401)

    def _refused_at_once(self, env: cim.Envelope) -> bytes | None:
        """The Reply FAILED for a replayed ReplayDetection or an operation we do not
        support, or None to go on."""
        problem: MessageRefused | None = None
        if env.replay is not None:
            nonce, created = env.replay
            window = self.settings.replay_window_s
            why = freshness_problem(created, cim.now_utc(), window)
            if why is None and not self.nonce_log.first_use("cim", nonce, window):
                why = f"Header/ReplayDetection Nonce '{nonce[:64]}' was already used"
            if why is not None:
                problem = MessageRefused(Refusal.REPLAY, why)
        if problem is None and env.operation in cim.UNSUPPORTED_OPERATIONS:
            problem = MessageRefused(
                Refusal.UNSUPPORTED_OPERATION,
                f"{env.operation} EndDeviceControls is not supported: orders are created "
                "and cancelled (CreateEndDeviceControls, CancelEndDeviceControls)",
            )
        if problem is None:
            return None
        return self._refusal(env, problem)

    def _refusal(self, env: cim.Envelope, refused: MessageRefused) -> bytes:
        log.info("SOAP %s refused: %s", env.operation, refused.detail)
        return cim_write.build_reply(
            operation=env.operation,
            outcomes=[ItemOutcome(meter_id=None, refusal=refused.refusal, detail=refused.detail)],
            source=self.settings.source,
            correlation_id=env.correlation_id or env.message_id,
        )

    # ------------------------------------------------------------------ operations

    def _run(self, env: cim.Envelope, principal: Principal) -> bytes:
        correlation_id = env.correlation_id or env.message_id or str(uuid.uuid4())
        try:
            if env.operation == "create":
                return self._create(env, principal, correlation_id)
            if env.operation == "cancel":
                outcomes = self.service.cancel(
                    cim_read.read_cancel(env, self.read_options), principal
                )
                return self._reply("cancel", outcomes, correlation_id)
            return self._get(env, principal, correlation_id)
        except MessageRefused as refused:
            return self._refusal(env, refused)

    def _reply(
        self,
        operation: str,
        outcomes: list[ItemOutcome],
        correlation_id: str,
        views: list[OrderView] | None = None,
    ) -> bytes:
        return cim_write.build_reply(
            operation=operation,
            outcomes=outcomes,
            source=self.settings.source,
            correlation_id=correlation_id,
            views=views or [],
            naming=self.naming,
        )

    def _create(self, env: cim.Envelope, principal: Principal, correlation_id: str) -> bytes:
        items = cim_read.read_create(env, correlation_id, self.read_options)
        if len(items) > self.settings.max_devices_per_message:
            raise SoapFault(
                f"{len(items)} EndDevices in one message, over the limit of "
                f"{self.settings.max_devices_per_message}",
                problem="too_many",
            )
        wanted = [item.request for item in items if item.request is not None]
        answers = iter(self.service.create(wanted, principal) if wanted else [])
        outcomes: list[ItemOutcome] = []
        views: list[OrderView] = []
        for item in items:
            if item.outcome is not None:
                outcomes.append(item.outcome)
                continue
            outcome = next(answers)
            outcomes.append(outcome)
            if outcome.accepted and outcome.order_id and item.request is not None:
                views.append(_view_of(item.request, outcome))
        return self._reply("create", outcomes, correlation_id, views)

    def _get(self, env: cim.Envelope, principal: Principal, correlation_id: str) -> bytes:
        views = self.service.query(cim_read.read_get(env, self.read_options), principal)
        info = [] if views else [("2.4", "no order matches the query", "no_match")]
        return cim_write.build_reply(
            operation="get",
            outcomes=[],
            source=self.settings.source,
            correlation_id=correlation_id,
            views=views,
            result="OK",
            info=info,
            naming=self.naming,
        )


def _view_of(request: ControlRequest, outcome: ItemOutcome) -> OrderView:
    """The standard EndDeviceControl of an accepted create, as the reply shows it."""
    assert outcome.order_id is not None
    return OrderView(
        order_id=outcome.order_id,
        meter_id=request.meter_id,
        action=request.action,
        state=outcome.state or "",
        reason=request.reason,
        issuer_id=request.issuer_id,
        issuer_tracking_id=request.issuer_tracking_id,
        not_before=request.not_before,
        deadline=request.deadline,
    )

