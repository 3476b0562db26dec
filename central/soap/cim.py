"""CIM (IEC 61968-100 envelope, IEC 61968-9 EndDeviceControls / EndDeviceEvents):
schema validation, reading requests into neutral dataclasses, writing replies and
result events.
"""

from __future__ import annotations

import functools
import hashlib
import re
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from lxml import etree

from central.soap.faults import SOAP11_ENV, SOAP12_ENV, SoapFault
from central.soap.service_port import (
    CancelRequest,
    ControlAction,
    ControlRequest,
    ItemOutcome,
    OrderEnded,
    OrderQuery,
    OrderView,
    Outcome,
    Refusal,
)

SCHEMA_DIR = Path(__file__).parent / "schemas"
WSDL_FILE = "EndDeviceControls.wsdl"
SCHEMA_FILES = (
    "Message.xsd",
    "EndDeviceControls.xsd",
    "GetEndDeviceControls.xsd",
    "EndDeviceEvents.xsd",
    "EndDeviceControlsMessage.xsd",
    "EndDeviceEventsMessage.xsd",
)

MSG = "http://iec.ch/TC57/2011/schema/message"
EDC = "http://iec.ch/TC57/2011/EndDeviceControls#"
GEDC = "http://iec.ch/TC57/2011/GetEndDeviceControls#"
EDE = "http://iec.ch/TC57/2011/EndDeviceEvents#"
EDCM = "http://iec.ch/TC57/2011/EndDeviceControlsMessage"
EDEM = "http://iec.ch/TC57/2011/EndDeviceEventsMessage"
WSSE = "http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-wssecurity-secext-1.0.xsd"

NOUN = "EndDeviceControls"
# body element local name -> (operation, the Header/Verb it must carry)
OPERATIONS: dict[str, tuple[str, str]] = {
    "CreateEndDeviceControls": ("create", "create"),
    "CancelEndDeviceControls": ("cancel", "cancel"),
    "GetEndDeviceControls": ("get", "get"),
}

CONTROL_CODES: dict[str, ControlAction] = {
    "3.31.0.23": ControlAction.DISCONNECT,
    "3.31.0.18": ControlAction.CONNECT,
    "3.31.0.5": ControlAction.ARM,
}

EVENT_CODES: dict[Outcome, str] = {
    Outcome.DISCONNECTED: "3.31.0.68",
    Outcome.CONNECTED: "3.31.0.42",
    Outcome.ARMED: "3.31.0.11",
    Outcome.EXPIRED: "3.31.0.64",
    Outcome.CANCELLED: "3.31.0.10",
}
DISCONNECT_FAILED = "3.31.0.84"
CONNECT_FAILED = "3.31.0.67"

# Accepted spellings of EndDeviceControl/reason -> shared.contracts.OrderReason values.
REASONS: dict[str, str] = {
    "nonpayment": "non_payment",
    "payment": "payment_restored",
    "paymentrestored": "payment_restored",
    "paymentreceived": "payment_restored",
    "reconnection": "payment_restored",
    "losses": "losses",
    "theft": "losses",
    "energytheft": "losses",
    "customerrequest": "customer_request",
}

# Refusal -> (CIM error code, level). Category 2: the request names something wrong;
# 3: a business rule refuses it; 5: our fault.
ERROR_CODES: dict[Refusal, tuple[str, str]] = {
    Refusal.UNKNOWN_METER: ("2.4", "FATAL"),
    Refusal.ORDER_NOT_FOUND: ("2.4", "FATAL"),
    Refusal.MISSING_DATA: ("2.11", "FATAL"),
    Refusal.UNSUPPORTED_CONTROL: ("2.13", "FATAL"),
    Refusal.UNSUPPORTED_REASON: ("2.14", "FATAL"),
    Refusal.NOT_COMMISSIONED: ("3.1", "FATAL"),
    Refusal.NOT_LINKED: ("3.2", "FATAL"),
    Refusal.CONCENTRATOR_DECOMMISSIONED: ("3.3", "FATAL"),
    Refusal.PROTECTED_CUSTOMER: ("3.4", "FATAL"),
    Refusal.DUPLICATE: ("3.5", "FATAL"),
    Refusal.NOT_WORKING_DAY: ("3.6", "FATAL"),
    Refusal.MORATORIUM: ("3.7", "FATAL"),
    Refusal.NOT_CANCELLABLE: ("3.8", "FATAL"),
    Refusal.INTERNAL_ERROR: ("5.1", "FATAL"),
}

REFUSAL_TEXT: dict[Refusal, str] = {
    Refusal.UNKNOWN_METER: "unknown meter",
    Refusal.NOT_COMMISSIONED: "meter not commissioned",
    Refusal.NOT_LINKED: "meter not linked to a concentrator",
    Refusal.CONCENTRATOR_DECOMMISSIONED: "concentrator decommissioned",
    Refusal.PROTECTED_CUSTOMER: "protected customer (Ley 21.304): disconnect refused",
    Refusal.UNSUPPORTED_CONTROL: "unsupported control code",
    Refusal.UNSUPPORTED_REASON: "unsupported reason",
    Refusal.MISSING_DATA: "missing data",
    Refusal.DUPLICATE: "duplicate: another active order for this meter",
    Refusal.NOT_WORKING_DAY: "not a working day",
    Refusal.MORATORIUM: "disconnection moratorium in force",
    Refusal.ORDER_NOT_FOUND: "no such order",
    Refusal.NOT_CANCELLABLE: "order can no longer be cancelled",
    Refusal.INTERNAL_ERROR: "internal error",
}


def _now() -> datetime:
    return datetime.now(UTC)


def iso(value: datetime) -> str:
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.isoformat()


# --------------------------------------------------------------------------- schemas


@functools.cache
def message_schema() -> etree.XMLSchema:
    """One schema holding both message XSDs (and, through them, all the others)."""
    imports = "".join(
        f'<xs:import namespace="{ns}" schemaLocation="{(SCHEMA_DIR / name).as_uri()}"/>'
        for ns, name in (
            (EDCM, "EndDeviceControlsMessage.xsd"),
            (EDEM, "EndDeviceEventsMessage.xsd"),
        )
    )
    driver = (
        '<xs:schema xmlns:xs="http://www.w3.org/2001/XMLSchema" '
        f'targetNamespace="urn:ami-rcd:soap-bundle">{imports}</xs:schema>'
    )
    parser = etree.XMLParser(resolve_entities=False, no_network=True)
    return etree.XMLSchema(etree.fromstring(driver.encode(), parser=parser))


def _readable_path(path: str | None, nsmap: dict[str, str]) -> str | None:
    """lxml gives paths like /ns0:A/ns0:B[2]; keep them, they name the element."""
    return path or None


def validate(element: etree._Element) -> None:
    """Validate one message element (the SOAP Body's child) against our XSDs."""
    schema = message_schema()
    doc = etree.ElementTree(element)
    if schema.validate(doc):
        return
    errors = list(schema.error_log)
    first = errors[0]
    path = _readable_path(first.path, {})
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    raise SoapFault(
        f"schema violation at {path}: {first.message}{more}",
        problem="schema",
        path=path,
    )


# --------------------------------------------------------------------------- envelope


@dataclass
class Envelope:
    operation: str  # create | cancel | get
    message: etree._Element  # the Body child (e.g. CreateEndDeviceControls)
    soap_header: etree._Element | None
    verb: str
    noun: str
    message_id: str | None
    correlation_id: str | None
    reply_address: str | None
    async_reply: bool | None
    source: str | None
    options: dict[str, str] = field(default_factory=dict)


def _text(node: etree._Element | None, path: str) -> str | None:
    if node is None:
        return None
    found = node.find(path)
    if found is None or found.text is None:
        return None
    value = found.text.strip()
    return value or None


def open_envelope(root: etree._Element) -> Envelope:
    """Check the SOAP envelope and the CIM header; validate the message."""
    if not isinstance(root.tag, str):
        raise SoapFault("not a SOAP envelope", problem="wrong_namespace")
    qname = etree.QName(root)
    if qname.localname != "Envelope":
        raise SoapFault(
            f"the document element is '{qname.localname}', not a SOAP 1.1 Envelope",
            problem="wrong_namespace",
            path=f"/{qname.localname}",
        )
    if qname.namespace == SOAP12_ENV:
        raise SoapFault(
            f"SOAP 1.2 envelope received; this endpoint speaks SOAP 1.1 ({SOAP11_ENV})",
            problem="wrong_namespace",
            code="VersionMismatch",
        )
    if qname.namespace != SOAP11_ENV:
        raise SoapFault(
            f"wrong namespace for Envelope: '{qname.namespace or ''}', expected '{SOAP11_ENV}'",
            problem="wrong_namespace",
            code="VersionMismatch",
            path="/Envelope",
        )
    soap_header = root.find(f"{{{SOAP11_ENV}}}Header")
    body = root.find(f"{{{SOAP11_ENV}}}Body")
    if body is None:
        raise SoapFault("the SOAP envelope has no Body", problem="schema", path="/Envelope/Body")
    children = [child for child in body if isinstance(child.tag, str)]
    if len(children) != 1:
        raise SoapFault(
            f"the SOAP Body must hold exactly one message element, found {len(children)}",
            problem="schema",
            path="/Envelope/Body",
        )
    message = children[0]
    mq = etree.QName(message)
    if mq.localname not in OPERATIONS:
        raise SoapFault(
            f"unknown operation element '{mq.localname}'; expected one of "
            + ", ".join(sorted(OPERATIONS)),
            problem="unknown_operation",
            path=f"/Envelope/Body/{mq.localname}",
        )
    if mq.namespace != EDCM:
        raise SoapFault(
            f"wrong namespace for {mq.localname}: '{mq.namespace or ''}', expected '{EDCM}'",
            problem="wrong_namespace",
            path=f"/Envelope/Body/{mq.localname}",
        )
    operation, expected_verb = OPERATIONS[mq.localname]
    # Validate a detached copy: the SOAP wrapper is not part of our schema.
    detached = etree.fromstring(etree.tostring(message))
    validate(detached)
    header = message.find(f"{{{EDCM}}}Header")
    verb = _text(header, f"{{{MSG}}}Verb") or ""
    noun = _text(header, f"{{{MSG}}}Noun") or ""
    if verb != expected_verb:
        raise SoapFault(
            f"Header/Verb is '{verb}' but {mq.localname} needs '{expected_verb}'",
            problem="verb_mismatch",
            path=f"/{mq.localname}/Header/Verb",
        )
    if noun != NOUN:
        raise SoapFault(
            f"Header/Noun is '{noun}', expected '{NOUN}'",
            problem="noun_mismatch",
            path=f"/{mq.localname}/Header/Noun",
        )
    flag = _text(header, f"{{{MSG}}}AsyncReplyFlag")
    options: dict[str, str] = {}
    request = message.find(f"{{{EDCM}}}Request")
    if request is not None:
        for option in request.findall(f"{{{MSG}}}Option"):
            name = _text(option, f"{{{MSG}}}name")
            if name:
                options[name] = _text(option, f"{{{MSG}}}value") or ""
    return Envelope(
        operation=operation,
        message=message,
        soap_header=soap_header,
        verb=verb,
        noun=noun,
        message_id=_text(header, f"{{{MSG}}}MessageID"),
        correlation_id=_text(header, f"{{{MSG}}}CorrelationID"),
        reply_address=_text(header, f"{{{MSG}}}ReplyAddress"),
        async_reply=None if flag is None else flag in ("true", "1"),
        source=_text(header, f"{{{MSG}}}Source"),
        options=options,
    )


# --------------------------------------------------------------------------- requests


@dataclass
class Item:
    """One meter of the request, ready for the service or already refused."""

    meter_id: str | None
    control_index: int
    request: ControlRequest | None = None
    outcome: ItemOutcome | None = None


def _flag(options: dict[str, str], *names: str) -> bool:
    return any(options.get(name, "").strip().lower() in ("true", "1", "yes") for name in names)


def _reason_key(raw: str) -> str:
    return re.sub(r"[^a-z]", "", raw.lower())


def _parse_dt(raw: str | None) -> datetime | None:
    if raw is None:
        return None
    value = datetime.fromisoformat(raw.replace("Z", "+00:00"))
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def _meters(control: etree._Element, ns: str, tag: str) -> list[str | None]:
    found: list[str | None] = []
    for device in control.findall(f"{{{ns}}}{tag}"):
        meter = _text(device, f"{{{ns}}}mRID") or _text(device, f"{{{ns}}}Names/{{{ns}}}name")
        found.append(meter)
    return found


def _controls(env: Envelope) -> list[etree._Element]:
    payload = env.message.find(f"{{{EDCM}}}Payload")
    if payload is None:
        return []
    return list(payload.findall(f"{{{EDC}}}EndDeviceControls/{{{EDC}}}EndDeviceControl"))


def _idempotency_key(message_id: str | None, index: int, meter: str) -> str | None:
    if not message_id:
        return None
    digest = hashlib.sha256(f"{message_id}\x00{index}\x00{meter}".encode()).hexdigest()
    return f"soap:{digest[:48]}"


def read_create(env: Envelope, correlation_id: str) -> list[Item]:
    controls = _controls(env)
    if not controls:
        raise SoapFault(
            "create EndDeviceControls needs Payload/EndDeviceControls with at least one "
            "EndDeviceControl",
            problem="schema",
            path="/CreateEndDeviceControls/Payload",
        )
    special = _flag(env.options, "special", "weekendAllowed", "allowNonWorkingDay")
    items: list[Item] = []
    seen: set[str] = set()
    for index, control in enumerate(controls):
        meters = _meters(control, EDC, "EndDevices")
        code_node = control.find(f"{{{EDC}}}EndDeviceControlType")
        code = code_node.get("ref") if code_node is not None else None
        raw_reason = _text(control, f"{{{EDC}}}reason")
        problem: tuple[Refusal, str] | None = None
        action = CONTROL_CODES.get(code or "")
        if not meters:
            meters = [None]
        if action is None:
            problem = (
                Refusal.UNSUPPORTED_CONTROL,
                f"EndDeviceControlType '{code}' is not one of "
                + ", ".join(f"{c} ({a.value})" for c, a in CONTROL_CODES.items())
                if code
                else "EndDeviceControlType is missing",
            )
        reason: str | None = None
        if raw_reason is not None:
            reason = REASONS.get(_reason_key(raw_reason))
            if reason is None and problem is None:
                problem = (Refusal.UNSUPPORTED_REASON, f"reason '{raw_reason}' is not supported")
        elif action is ControlAction.DISCONNECT and problem is None:
            problem = (Refusal.MISSING_DATA, "a disconnect needs a reason")
        else:
            reason = "payment_restored"
        interval = control.find(f"{{{EDC}}}scheduledInterval")
        not_before = deadline = None
        try:
            not_before = _parse_dt(_text(interval, f"{{{EDC}}}start"))
            deadline = _parse_dt(_text(interval, f"{{{EDC}}}end"))
        except ValueError as exc:
            problem = problem or (Refusal.MISSING_DATA, f"scheduledInterval: {exc}")
        if not_before and deadline and deadline <= not_before and problem is None:
            problem = (Refusal.MISSING_DATA, "scheduledInterval end is not after its start")
        priority_raw = _text(control, f"{{{EDC}}}priority")
        priority = int(priority_raw) if priority_raw is not None else None
        if priority is not None and not 0 <= priority <= 9 and problem is None:
            problem = (Refusal.MISSING_DATA, f"priority {priority} is not between 0 and 9")
        for meter in meters:
            item = Item(meter_id=meter, control_index=index)
            if meter is None:
                item.outcome = ItemOutcome(
                    meter_id=None,
                    refusal=Refusal.MISSING_DATA,
                    detail=f"EndDeviceControl #{index + 1}: EndDevices needs mRID or Names/name",
                )
            elif problem is not None:
                item.outcome = ItemOutcome(meter_id=meter, refusal=problem[0], detail=problem[1])
            elif meter in seen:
                item.outcome = ItemOutcome(
                    meter_id=meter,
                    refusal=Refusal.DUPLICATE,
                    detail="the meter appears more than once in this message",
                )
            else:
                seen.add(meter)
                assert action is not None and reason is not None
                item.request = ControlRequest(
                    meter_id=meter,
                    action=action,
                    reason=reason,
                    issuer_id=_text(control, f"{{{EDC}}}issuerID"),
                    issuer_tracking_id=_text(control, f"{{{EDC}}}issuerTrackingID"),
                    priority=priority,
                    not_before=not_before,
                    deadline=deadline,
                    special=special,
                    correlation_id=correlation_id,
                    reply_address=env.reply_address,
                    idempotency_key=_idempotency_key(env.message_id, index, meter),
                )
            items.append(item)
    return items


def read_cancel(env: Envelope) -> list[CancelRequest]:
    controls = _controls(env)
    wanted: list[CancelRequest] = []
    for control in controls:
        order_id = _text(control, f"{{{EDC}}}mRID")
        tracking = _text(control, f"{{{EDC}}}issuerTrackingID")
        meters = [m for m in _meters(control, EDC, "EndDevices") if m]
        if not meters:
            wanted.append(CancelRequest(order_id=order_id, issuer_tracking_id=tracking))
        for meter in meters:
            wanted.append(
                CancelRequest(order_id=order_id, issuer_tracking_id=tracking, meter_id=meter)
            )
    if not wanted:
        raise SoapFault(
            "cancel EndDeviceControls needs Payload/EndDeviceControls/EndDeviceControl "
            "with mRID or issuerTrackingID",
            problem="schema",
            path="/CancelEndDeviceControls/Payload",
        )
    return wanted


def read_get(env: Envelope) -> OrderQuery:
    query = env.message.find(f"{{{EDCM}}}Request/{{{GEDC}}}GetEndDeviceControls")
    trackings: list[str] = []
    orders: list[str] = []
    meters: list[str] = []
    if query is not None:
        for control in query.findall(f"{{{GEDC}}}EndDeviceControl"):
            order_id = _text(control, f"{{{GEDC}}}mRID")
            tracking = _text(control, f"{{{GEDC}}}issuerTrackingID")
            if order_id:
                orders.append(order_id)
            if tracking:
                trackings.append(tracking)
        meters.extend(m for m in _meters(query, GEDC, "EndDevice") if m)
    if not (trackings or orders or meters):
        raise SoapFault(
            "get EndDeviceControls needs Request/GetEndDeviceControls with an "
            "EndDeviceControl (mRID or issuerTrackingID) or an EndDevice",
            problem="schema",
            path="/GetEndDeviceControls/Request",
        )
    return OrderQuery(issuer_tracking_ids=trackings, order_ids=orders, meter_ids=meters)


# --------------------------------------------------------------------------- replies


def _sub(parent: etree._Element, tag: str, text: str | None = None) -> etree._Element:
    node = etree.SubElement(parent, tag)
    if text is not None:
        node.text = text
    return node


def _header(
    parent: etree._Element,
    ns: str,
    *,
    verb: str,
    noun: str,
    source: str,
    message_id: str,
    correlation_id: str | None,
    timestamp: datetime,
) -> None:
    header = _sub(parent, f"{{{ns}}}Header")
    _sub(header, f"{{{MSG}}}Verb", verb)
    _sub(header, f"{{{MSG}}}Noun", noun)
    _sub(header, f"{{{MSG}}}Timestamp", iso(timestamp))
    _sub(header, f"{{{MSG}}}Source", source)
    _sub(header, f"{{{MSG}}}MessageID", message_id)
    if correlation_id:
        _sub(header, f"{{{MSG}}}CorrelationID", correlation_id)


def _soap(nsmap: dict[str, str]) -> tuple[etree._Element, etree._Element]:
    env = etree.Element(f"{{{SOAP11_ENV}}}Envelope", nsmap={"soapenv": SOAP11_ENV, **nsmap})
    body = etree.SubElement(env, f"{{{SOAP11_ENV}}}Body")
    return env, body


def error_for(outcome: ItemOutcome) -> tuple[str, str, str, str]:
    """(code, level, reason, details) for a refused item."""
    assert outcome.refusal is not None
    code, level = ERROR_CODES[outcome.refusal]
    text = REFUSAL_TEXT[outcome.refusal]
    subject = f"meter '{outcome.meter_id}'" if outcome.meter_id else "request"
    if outcome.refusal in (Refusal.ORDER_NOT_FOUND, Refusal.NOT_CANCELLABLE) and outcome.order_id:
        subject = f"order '{outcome.order_id}'"
    reason = f"{subject}: {text}"
    details = outcome.refusal.value + (f": {outcome.detail}" if outcome.detail else "")
    return code, level, reason, details


def result_of(outcomes: Sequence[ItemOutcome]) -> str:
    accepted = sum(1 for o in outcomes if o.accepted)
    if accepted == len(outcomes):
        return "OK"
    return "FAILED" if accepted == 0 else "PARTIAL"


def build_reply(
    *,
    operation: str,
    outcomes: Sequence[ItemOutcome],
    source: str,
    correlation_id: str | None,
    views: Iterable[OrderView] = (),
    result: str | None = None,
    info: Sequence[tuple[str, str, str]] = (),
) -> bytes:
    """The ResponseMessage for an operation, wrapped in a SOAP 1.1 envelope."""
    element = {
        "create": "CreateEndDeviceControlsResponse",
        "cancel": "CancelEndDeviceControlsResponse",
        "get": "GetEndDeviceControlsResponse",
    }[operation]
    env, body = _soap({"m": EDCM, "msg": MSG, "edc": EDC})
    message = _sub(body, f"{{{EDCM}}}{element}")
    _header(
        message,
        EDCM,
        verb="reply",
        noun=NOUN,
        source=source,
        message_id=str(uuid.uuid4()),
        correlation_id=correlation_id,
        timestamp=_now(),
    )
    reply = _sub(message, f"{{{EDCM}}}Reply")
    _sub(reply, f"{{{MSG}}}Result", result or result_of(outcomes))
    for outcome in outcomes:
        if outcome.accepted:
            continue
        code, level, reason, details = error_for(outcome)
        error = _sub(reply, f"{{{MSG}}}Error")
        _sub(error, f"{{{MSG}}}code", code)
        _sub(error, f"{{{MSG}}}level", level)
        _sub(error, f"{{{MSG}}}reason", reason)
        _sub(error, f"{{{MSG}}}details", details)
        if outcome.meter_id:
            ident = _sub(error, f"{{{MSG}}}ID", outcome.meter_id)
            ident.set("kind", "name")
            ident.set("objectType", "EndDevice")
        elif outcome.order_id:
            ident = _sub(error, f"{{{MSG}}}ID", outcome.order_id)
            ident.set("kind", "uuid")
            ident.set("objectType", "EndDeviceControl")
    for code, reason, details in info:
        error = _sub(reply, f"{{{MSG}}}Error")
        _sub(error, f"{{{MSG}}}code", code)
        _sub(error, f"{{{MSG}}}level", "INFORM")
        _sub(error, f"{{{MSG}}}reason", reason)
        _sub(error, f"{{{MSG}}}details", details)
    for outcome in outcomes:
        if outcome.accepted and outcome.order_id:
            ident = _sub(reply, f"{{{MSG}}}ID", outcome.order_id)
            ident.set("kind", "uuid")
            ident.set("objectType", "EndDeviceControl")
    accepted = [o for o in outcomes if o.accepted and o.order_id]
    view_list = list(views)
    if accepted or view_list:
        payload = _sub(message, f"{{{EDCM}}}Payload")
        controls = _sub(payload, f"{{{EDC}}}EndDeviceControls")
        for outcome in accepted:
            control = _sub(controls, f"{{{EDC}}}EndDeviceControl")
            _sub(control, f"{{{EDC}}}mRID", outcome.order_id)
            if outcome.state or outcome.existing:
                status = _sub(control, f"{{{EDC}}}status")
                if outcome.existing:
                    _sub(status, f"{{{EDC}}}remark", "existing order returned, nothing new created")
                if outcome.state:
                    _sub(status, f"{{{EDC}}}value", outcome.state)
            if outcome.meter_id:
                device = _sub(control, f"{{{EDC}}}EndDevices")
                names = _sub(device, f"{{{EDC}}}Names")
                _sub(names, f"{{{EDC}}}name", outcome.meter_id)
        for view in view_list:
            control = _sub(controls, f"{{{EDC}}}EndDeviceControl")
            _sub(control, f"{{{EDC}}}mRID", view.order_id)
            if view.issuer_id:
                _sub(control, f"{{{EDC}}}issuerID", view.issuer_id)
            if view.issuer_tracking_id:
                _sub(control, f"{{{EDC}}}issuerTrackingID", view.issuer_tracking_id)
            if view.reason:
                _sub(control, f"{{{EDC}}}reason", view.reason)
            status = _sub(control, f"{{{EDC}}}status")
            if view.updated_at:
                _sub(status, f"{{{EDC}}}dateTime", iso(view.updated_at))
            if view.detail:
                _sub(status, f"{{{EDC}}}remark", view.detail[:256])
            _sub(status, f"{{{EDC}}}value", view.state)
            code = next(c for c, a in CONTROL_CODES.items() if a is view.action)
            _sub(control, f"{{{EDC}}}EndDeviceControlType").set("ref", code)
            device = _sub(control, f"{{{EDC}}}EndDevices")
            names = _sub(device, f"{{{EDC}}}Names")
            _sub(names, f"{{{EDC}}}name", view.meter_id)
    return bytes(etree.tostring(env, xml_declaration=True, encoding="UTF-8"))


# --------------------------------------------------------------------------- results


def event_code(ended: OrderEnded) -> str:
    if ended.outcome is Outcome.FAILED:
        return DISCONNECT_FAILED if ended.action is ControlAction.DISCONNECT else CONNECT_FAILED
    return EVENT_CODES[ended.outcome]


def result_message_id(ended: OrderEnded) -> str:
    """Stable per order end, so a re-sent result carries the same MessageID."""
    return str(
        uuid.uuid5(uuid.NAMESPACE_URL, f"ami-rcd:result:{ended.order_id}:{ended.outcome.value}")
    )


def build_event(
    ended: OrderEnded, *, correlation_id: str | None, source: str, message_id: str
) -> bytes:
    """The ``created EndDeviceEvents`` message for one ended order (step 9)."""
    env, body = _soap({"m": EDEM, "msg": MSG, "ede": EDE})
    message = _sub(body, f"{{{EDEM}}}CreatedEndDeviceEvents")
    _header(
        message,
        EDEM,
        verb="created",
        noun="EndDeviceEvents",
        source=source,
        message_id=message_id,
        correlation_id=correlation_id,
        timestamp=ended.ended_at,
    )
    payload = _sub(message, f"{{{EDEM}}}Payload")
    events = _sub(payload, f"{{{EDE}}}EndDeviceEvents")
    event = _sub(events, f"{{{EDE}}}EndDeviceEvent")
    _sub(event, f"{{{EDE}}}mRID", f"{ended.order_id}:{ended.outcome.value}")
    _sub(event, f"{{{EDE}}}createdDateTime", iso(ended.ended_at))
    if ended.issuer_id:
        _sub(event, f"{{{EDE}}}issuerID", ended.issuer_id)
    if ended.issuer_tracking_id:
        _sub(event, f"{{{EDE}}}issuerTrackingID", ended.issuer_tracking_id)
    reason = ended.failure_reason or ended.outcome.value
    _sub(event, f"{{{EDE}}}reason", reason)
    details: list[tuple[str, str]] = [
        ("orderId", ended.order_id),
        ("action", ended.action.value),
        ("outcome", ended.outcome.value),
    ]
    if ended.energy_value is not None:
        details.append(("energyReading", repr(float(ended.energy_value))))
        details.append(("energyReading.unit", ended.energy_unit or "kWh"))
        if ended.energy_read_at is not None:
            details.append(("energyReading.readAt", iso(ended.energy_read_at)))
    if ended.failure_reason:
        details.append(("failureReason", ended.failure_reason))
    if ended.work_order_ref:
        details.append(("fieldWorkOrder", ended.work_order_ref))
    details.extend(sorted(ended.extra.items()))
    for name, value in details:
        detail = _sub(event, f"{{{EDE}}}EndDeviceEventDetails")
        _sub(detail, f"{{{EDE}}}name", name)
        _sub(detail, f"{{{EDE}}}value", value)
    _sub(event, f"{{{EDE}}}EndDeviceEventType").set("ref", event_code(ended))
    device = _sub(event, f"{{{EDE}}}EndDevice")
    names = _sub(device, f"{{{EDE}}}Names")
    _sub(names, f"{{{EDE}}}name", ended.meter_id)
    return bytes(etree.tostring(env, xml_declaration=True, encoding="UTF-8"))
