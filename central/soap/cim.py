"""CIM (IEC 61968-100 envelope, IEC 61968-9 EndDeviceControls / EndDeviceEvents):
the codes, the schemas, and opening a request envelope.

Reading requests is in :mod:`central.soap.cim_read`, writing replies and result
events in :mod:`central.soap.cim_write`.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from lxml import etree

from central.soap.faults import SOAP11_ENV, SOAP12_ENV, SoapFault
from central.soap.service_port import ControlAction, Outcome, Refusal

SCHEMA_DIR = Path(__file__).parent / "schemas"
SCHEMA_FILES = (
    "Message.xsd",
    "EndDeviceControls.xsd",
    "EndDeviceControlsMessage.xsd",
    "GetEndDeviceControls.xsd",
    "GetEndDeviceControlsMessage.xsd",
    "EndDeviceEvents.xsd",
    "EndDeviceEventsMessage.xsd",
)
# service name -> its WSDL; the first two are served by us, the others are Legacy's side.
WSDL_FILES = {
    "ExecuteEndDeviceControls": "ExecuteEndDeviceControls.wsdl",
    "GetEndDeviceControls": "GetEndDeviceControls.wsdl",
    "ReceiveEndDeviceEvents": "ReceiveEndDeviceEvents.wsdl",
    "ReplyEndDeviceControls": "ReplyEndDeviceControls.wsdl",
}
SERVED_SERVICES = ("ExecuteEndDeviceControls", "GetEndDeviceControls")

MSG = "http://iec.ch/TC57/2011/schema/message"
EDC = "http://iec.ch/TC57/2011/EndDeviceControls#"
GEDC = "http://iec.ch/TC57/2011/GetEndDeviceControls#"
EDE = "http://iec.ch/TC57/2011/EndDeviceEvents#"
EDCM = "http://iec.ch/TC57/2011/EndDeviceControlsMessage"
GEDCM = "http://iec.ch/TC57/2011/GetEndDeviceControlsMessage"
EDEM = "http://iec.ch/TC57/2011/EndDeviceEventsMessage"

NOUN = "EndDeviceControls"
SOAP_ACTION_BASE = "http://iec.ch/TC57/2011/EndDeviceControls/"
# body element -> (operation, the Header/Verb it must carry)
OPERATIONS: dict[tuple[str, str], tuple[str, str]] = {
    (EDCM, "CreateEndDeviceControls"): ("create", "create"),
    (EDCM, "ChangeEndDeviceControls"): ("change", "change"),
    (EDCM, "CancelEndDeviceControls"): ("cancel", "cancel"),
    (EDCM, "CloseEndDeviceControls"): ("close", "close"),
    (EDCM, "DeleteEndDeviceControls"): ("delete", "delete"),
    (GEDCM, "GetEndDeviceControls"): ("get", "get"),
}
UNSUPPORTED_OPERATIONS = ("change", "close", "delete")

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

# Accepted spellings of EndDeviceControl/reason -> shared.codes.OrderReason values.
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
# 3: a business rule refuses it; 5: our fault; 6: security.
ERROR_CODES: dict[Refusal, tuple[str, str]] = {
    Refusal.UNKNOWN_METER: ("2.4", "FATAL"),
    Refusal.ORDER_NOT_FOUND: ("2.4", "FATAL"),
    Refusal.UNSUPPORTED_OPERATION: ("2.10", "FATAL"),
    Refusal.MISSING_DATA: ("2.11", "FATAL"),
    Refusal.UNSUPPORTED_PAYLOAD: ("2.12", "FATAL"),
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
    Refusal.REPLAY: ("6.1", "FATAL"),
}

REFUSAL_TEXT: dict[Refusal, str] = {
    Refusal.UNKNOWN_METER: "unknown meter",
    Refusal.NOT_COMMISSIONED: "meter not commissioned",
    Refusal.NOT_LINKED: "meter not linked to a concentrator",
    Refusal.CONCENTRATOR_DECOMMISSIONED: "concentrator decommissioned",
    Refusal.PROTECTED_CUSTOMER: "protected customer (Ley 21.304): disconnect refused",
    Refusal.UNSUPPORTED_CONTROL: "unsupported control code",
    Refusal.UNSUPPORTED_REASON: "unsupported reason",
    Refusal.UNSUPPORTED_OPERATION: "operation not supported",
    Refusal.UNSUPPORTED_PAYLOAD: "payload form not supported",
    Refusal.MISSING_DATA: "missing data",
    Refusal.DUPLICATE: "duplicate: another active order for this meter",
    Refusal.NOT_WORKING_DAY: "not a working day",
    Refusal.MORATORIUM: "disconnection moratorium in force",
    Refusal.ORDER_NOT_FOUND: "no such order",
    Refusal.NOT_CANCELLABLE: "order can no longer be cancelled",
    Refusal.INTERNAL_ERROR: "internal error",
    Refusal.REPLAY: "replayed message refused",
}


def now_utc() -> datetime:
    return datetime.now(UTC)


def iso(value: datetime) -> str:
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.isoformat()


def parse_dt(raw: str | None) -> datetime | None:
    if raw is None:
        return None
    value = datetime.fromisoformat(raw.strip().replace("Z", "+00:00"))
    return value if value.tzinfo else value.replace(tzinfo=UTC)


# --------------------------------------------------------------------------- schemas


# libxml2 must not build schemas in two threads at once (the first build initialises its
# built-in types): two SOAP requests arriving together after a start failed, now and
# then, with "the given type is not a built-in type". One lock guards the build, and
# each validation, since a schema's error_log is shared by whoever validates with it.
_SCHEMA_LOCK = threading.Lock()
_SCHEMA: list[etree.XMLSchema] = []


def message_schema() -> etree.XMLSchema:
    """One schema holding every message XSD (and, through them, the profiles), built on
    first use, once."""
    with _SCHEMA_LOCK:
        if not _SCHEMA:
            _SCHEMA.append(_build_schema())
        return _SCHEMA[0]


def _build_schema() -> etree.XMLSchema:
    imports = "".join(
        f'<xs:import namespace="{ns}" schemaLocation="{(SCHEMA_DIR / name).as_uri()}"/>'
        for ns, name in (
            (EDCM, "EndDeviceControlsMessage.xsd"),
            (GEDCM, "GetEndDeviceControlsMessage.xsd"),
            (EDEM, "EndDeviceEventsMessage.xsd"),
        )
    )
    driver = (
        '<xs:schema xmlns:xs="http://www.w3.org/2001/XMLSchema" '
        f'targetNamespace="urn:ami-rcd:soap-bundle">{imports}</xs:schema>'
    )
    parser = etree.XMLParser(resolve_entities=False, no_network=True)
    return etree.XMLSchema(etree.fromstring(driver.encode(), parser=parser))


def validate(element: etree._Element) -> None:
    """Validate one message element (the SOAP Body's child) against our XSDs."""
    schema = message_schema()
    with _SCHEMA_LOCK:  # about 2 ms for a message of 1,000 meters
        if schema.validate(etree.ElementTree(element)):
            return
        errors = list(schema.error_log)
    first = errors[0]
    path = first.path or None
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    raise SoapFault(
        f"schema violation at {path}: {first.message}{more}", problem="schema", path=path
    )


# --------------------------------------------------------------------------- envelope


@dataclass
class Envelope:
    operation: str  # create | change | cancel | close | delete | get
    message: etree._Element  # the Body child (e.g. CreateEndDeviceControls)
    soap_header: etree._Element | None
    verb: str
    noun: str
    message_id: str | None
    correlation_id: str | None
    reply_address: str | None
    async_reply: bool | None
    source: str | None
    # Header/ReplayDetection: (Nonce, Created) as sent
    replay: tuple[str, str] | None = None
    # Request/Option name -> value, then Header/Property Name -> Value (options win)
    options: dict[str, str] = field(default_factory=dict)
    # Request/ID: (value, idType, kind)
    request_ids: list[tuple[str, str | None, str | None]] = field(default_factory=list)
    # EndDeviceControl index -> priority, only from the old shape (compat_legacy_shapes)
    legacy_priorities: dict[int, str] = field(default_factory=dict)

    @property
    def ns(self) -> str:
        return etree.QName(self.message).namespace or ""


def text(node: etree._Element | None, path: str) -> str | None:
    if node is None:
        return None
    if "/" in path or path.startswith("."):
        found = node.find(path)
    else:  # one child's tag: lxml matches it in C (find parses the path in Python)
        found = next(node.iterchildren(path), None)
    if found is None or found.text is None:
        return None
    value = found.text.strip()
    return value or None


def _check_soap(root: etree._Element) -> etree._Element:
    """The one message element of a SOAP 1.1 Body."""
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
    return children[0]


def _operation_of(message: etree._Element) -> tuple[str, str]:
    mq = etree.QName(message)
    key = (mq.namespace or "", mq.localname)
    if key in OPERATIONS:
        return OPERATIONS[key]
    known = {local: ns for ns, local in OPERATIONS}
    if mq.localname in known:
        raise SoapFault(
            f"wrong namespace for {mq.localname}: '{mq.namespace or ''}', "
            f"expected '{known[mq.localname]}'",
            problem="wrong_namespace",
            path=f"/Envelope/Body/{mq.localname}",
        )
    raise SoapFault(
        f"unknown operation element '{mq.localname}'; expected one of " + ", ".join(sorted(known)),
        problem="unknown_operation",
        path=f"/Envelope/Body/{mq.localname}",
    )


# rewrites a pre-standard message into the standard shape (central.soap.legacy_shapes)
Normaliser = Callable[[etree._Element], tuple[etree._Element, dict[int, str]]]


def open_envelope(root: etree._Element, *, normalise: Normaliser | None = None) -> Envelope:
    """Check the SOAP envelope and the CIM header; validate the message (after
    ``normalise``, when the old shapes are accepted)."""
    message = _check_soap(root)
    legacy_priorities: dict[int, str] = {}
    if normalise is not None:
        message, legacy_priorities = normalise(message)
    operation, expected_verb = _operation_of(message)
    # Validate a detached copy: the SOAP wrapper is not part of our schema.
    validate(etree.fromstring(etree.tostring(message)))
    ns = etree.QName(message).namespace
    header = message.find(f"{{{ns}}}Header")
    verb = text(header, f"{{{MSG}}}Verb") or ""
    noun = text(header, f"{{{MSG}}}Noun") or ""
    local = etree.QName(message).localname
    if verb != expected_verb:
        raise SoapFault(
            f"Header/Verb is '{verb}' but {local} needs '{expected_verb}'",
            problem="verb_mismatch",
            path=f"/{local}/Header/Verb",
        )
    if noun != NOUN:
        raise SoapFault(
            f"Header/Noun is '{noun}', expected '{NOUN}'",
            problem="noun_mismatch",
            path=f"/{local}/Header/Noun",
        )
    env = Envelope(
        operation=operation,
        message=message,
        soap_header=root.find(f"{{{SOAP11_ENV}}}Header"),
        verb=verb,
        noun=noun,
        message_id=text(header, f"{{{MSG}}}MessageID"),
        correlation_id=text(header, f"{{{MSG}}}CorrelationID"),
        reply_address=text(header, f"{{{MSG}}}ReplyAddress"),
        async_reply=None,
        source=text(header, f"{{{MSG}}}Source"),
        legacy_priorities=legacy_priorities,
    )
    _read_header_extras(env, header)
    _read_request(env, message.find(f"{{{ns}}}Request"), ns)
    return env


def _read_header_extras(env: Envelope, header: etree._Element | None) -> None:
    flag = text(header, f"{{{MSG}}}AsyncReplyFlag")
    env.async_reply = None if flag is None else flag in ("true", "1")
    nonce = text(header, f"{{{MSG}}}ReplayDetection/{{{MSG}}}Nonce")
    created = text(header, f"{{{MSG}}}ReplayDetection/{{{MSG}}}Created")
    if nonce is not None and created is not None:
        env.replay = (nonce, created)
    if header is not None:
        for prop in header.findall(f"{{{MSG}}}Property"):
            name = text(prop, f"{{{MSG}}}Name")
            if name:
                env.options.setdefault(name, text(prop, f"{{{MSG}}}Value") or "")


def _read_request(env: Envelope, request: etree._Element | None, ns: str) -> None:
    if request is None:
        return
    # In the generic RequestType the children are msg:*; in the Get request they are
    # declared in the Get message's own namespace.
    inner = MSG if ns == EDCM else ns
    for option in request.findall(f"{{{inner}}}Option"):
        name = text(option, f"{{{MSG}}}name")
        if name:
            env.options[name] = text(option, f"{{{MSG}}}value") or ""
    for ident in request.findall(f"{{{inner}}}ID"):
        value = (ident.text or "").strip()
        if value:
            env.request_ids.append((value, ident.get("idType"), ident.get("kind")))
