"""Writing what the gateway sends: the EndDeviceControlsResponseMessage of every
operation, and the CreatedEndDeviceEvents result messages to Legacy; reading
Legacy's acknowledgement (its Reply/Result)."""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Final

from lxml import etree

from central.soap.cim import (
    CONNECT_FAILED,
    CONTROL_CODES,
    DISCONNECT_FAILED,
    EDC,
    EDCM,
    EDE,
    EDEM,
    ERROR_CODES,
    EVENT_CODES,
    GEDCM,
    MSG,
    NOUN,
    REFUSAL_TEXT,
    iso,
    now_utc,
)
from central.soap.faults import SOAP11_ENV
from central.soap.service_port import (
    ControlAction,
    ItemOutcome,
    OrderEnded,
    OrderView,
    Outcome,
    Refusal,
)
from central.soap.xmltext import XmlText

# our OrderReason values -> the CIM spelling we write back
CIM_REASONS = {
    "non_payment": "nonPayment",
    "payment_restored": "paymentRestored",
    "losses": "losses",
    "customer_request": "customerRequest",
}
INFORM_CODE = "0.0"  # informational line of a successful reply (order state)


@dataclass(frozen=True)
class Naming:
    """How meters are named in what we send: mRID and Names/name of this NameType."""

    name_type: str = "MeterNumber"


def _sub(parent: etree._Element, tag: str, value: str | None = None) -> etree._Element:
    node = etree.SubElement(parent, tag)
    if value is not None:
        node.text = value
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
) -> None:
    header = _sub(parent, f"{{{ns}}}Header")
    _sub(header, f"{{{MSG}}}Verb", verb)
    _sub(header, f"{{{MSG}}}Noun", noun)
    _sub(header, f"{{{MSG}}}Timestamp", iso(now_utc()))
    _sub(header, f"{{{MSG}}}Source", source)
    _sub(header, f"{{{MSG}}}MessageID", message_id)
    if correlation_id:
        _sub(header, f"{{{MSG}}}CorrelationID", correlation_id)


def _soap(nsmap: dict[str, str]) -> tuple[etree._Element, etree._Element]:
    env = etree.Element(f"{{{SOAP11_ENV}}}Envelope", nsmap={"soapenv": SOAP11_ENV, **nsmap})
    return env, etree.SubElement(env, f"{{{SOAP11_ENV}}}Body")


def _names(parent: etree._Element, ns: str, value: str, naming: Naming) -> None:
    names = _sub(parent, f"{{{ns}}}Names")
    _sub(names, f"{{{ns}}}name", value)
    kind = _sub(names, f"{{{ns}}}NameType")
    _sub(kind, f"{{{ns}}}name", naming.name_type)


def error_for(outcome: ItemOutcome) -> tuple[str, str, str, str]:
    """(code, level, reason, details) for a refused item."""
    assert outcome.refusal is not None
    code, level = ERROR_CODES[outcome.refusal]
    subject = f"meter '{outcome.meter_id}'" if outcome.meter_id else "request"
    if outcome.refusal in (Refusal.ORDER_NOT_FOUND, Refusal.NOT_CANCELLABLE) and outcome.order_id:
        subject = f"order '{outcome.order_id}'"
    reason = f"{subject}: {REFUSAL_TEXT[outcome.refusal]}"
    details = outcome.refusal.value + (f": {outcome.detail}" if outcome.detail else "")
    return code, level, reason, details


def result_of(outcomes: Sequence[ItemOutcome]) -> str:
    accepted = sum(1 for o in outcomes if o.accepted)
    if accepted == len(outcomes):
        return "OK"
    return "FAILED" if accepted == 0 else "PARTIAL"


# The Reply is written as text (central.soap.xmltext), not as an lxml tree: it names
# every order of a create of up to 1,000 meters. Prefixes declared on its Envelope:
_REPLY_PREFIXES: Final = {"msg": MSG, "edc": EDC}  # and soapenv, m (the operation's)
_CONTROL_ID: Final = {"kind": "uuid", "objectType": "EndDeviceControl"}
# the EndDeviceControlType code written for an action: the first code listed for it
# (built in reverse so that the first one is the one left in the dict)
_CODE_OF_ACTION: Final = {action: code for code, action in reversed(CONTROL_CODES.items())}


def _text_header(out: XmlText, m: str, *, message_id: str, source: str,
                 correlation_id: str | None) -> None:
    out.start(f"{m}:Header")
    out.leaf("msg:Verb", "reply")
    out.leaf("msg:Noun", NOUN)
    out.leaf("msg:Timestamp", iso(now_utc()))
    out.leaf("msg:Source", source)
    out.leaf("msg:MessageID", message_id)
    if correlation_id:
        out.leaf("msg:CorrelationID", correlation_id)
    out.end(f"{m}:Header")


def _text_error(out: XmlText, code: str, level: str, reason: str, details: str | None,
                ident: tuple[str, dict[str, str]] | None) -> None:
    out.start("msg:Error")
    out.leaf("msg:code", code)
    out.leaf("msg:level", level)
    out.leaf("msg:reason", reason)
    if details:
        out.leaf("msg:details", details)
    if ident is not None:
        out.leaf("msg:ID", ident[0], ident[1])
    out.end("msg:Error")


def _text_control(out: XmlText, view: OrderView, naming: Naming) -> None:
    out.start("edc:EndDeviceControl")
    out.leaf("edc:mRID", view.order_id)
    if view.issuer_id:
        out.leaf("edc:issuerID", view.issuer_id)
    if view.issuer_tracking_id:
        out.leaf("edc:issuerTrackingID", view.issuer_tracking_id)
    if view.reason:
        out.leaf("edc:reason", CIM_REASONS.get(view.reason, view.reason))
    out.leaf("edc:EndDeviceControlType", None, {"ref": _CODE_OF_ACTION[view.action]})
    out.start("edc:EndDevices")
    out.leaf("edc:mRID", view.meter_id)
    out.start("edc:Names")
    out.leaf("edc:name", view.meter_id)
    out.start("edc:NameType")
    out.leaf("edc:name", naming.name_type)
    out.end("edc:NameType")
    out.end("edc:Names")
    out.end("edc:EndDevices")
    if view.not_before or view.deadline:
        out.start("edc:primaryDeviceTiming")
        out.start("edc:interval")
        if view.deadline:
            out.leaf("edc:end", iso(view.deadline))
        if view.not_before:
            out.leaf("edc:start", iso(view.not_before))
        out.end("edc:interval")
        out.end("edc:primaryDeviceTiming")
    out.end("edc:EndDeviceControl")


def _refused_ident(outcome: ItemOutcome) -> tuple[str, dict[str, str]] | None:
    if outcome.meter_id:
        return outcome.meter_id, {"kind": "name", "objectType": "EndDevice"}
    if outcome.order_id:
        return outcome.order_id, _CONTROL_ID
    return None


def _reply_lines(out: XmlText, outcomes: Sequence[ItemOutcome], view_list: list[OrderView],
                 info: Sequence[tuple[str, str, str]]) -> None:
    """The Reply's Errors (refusals FATAL first, then INFORM lines) and IDs."""
    for outcome in outcomes:
        if not outcome.accepted:
            code, level, reason, details = error_for(outcome)
            _text_error(out, code, level, reason, details, _refused_ident(outcome))
    for code, reason, details in info:
        _text_error(out, code, "INFORM", reason, details, None)
    told = set()
    for outcome in outcomes:
        if outcome.accepted and outcome.order_id and outcome.state:
            told.add(outcome.order_id)
            remark = "existing order returned, nothing new created" if outcome.existing else None
            _text_error(out, INFORM_CODE, "INFORM", f"state: {outcome.state}", remark,
                        (outcome.order_id, _CONTROL_ID))
    for view in view_list:
        if view.order_id not in told:
            _text_error(out, INFORM_CODE, "INFORM", f"state: {view.state}",
                        (view.detail or "")[:256] or None, (view.order_id, _CONTROL_ID))
    for outcome in outcomes:
        if outcome.accepted and outcome.order_id:
            out.leaf("msg:ID", outcome.order_id, _CONTROL_ID)


def build_reply(
    *,
    operation: str,
    outcomes: Sequence[ItemOutcome],
    source: str,
    correlation_id: str | None,
    views: Iterable[OrderView] = (),
    result: str | None = None,
    info: Sequence[tuple[str, str, str]] = (),
    naming: Naming = Naming(),
) -> bytes:
    """The EndDeviceControlsResponseMessage for an operation, in a SOAP 1.1 envelope.

    Refused items are FATAL Errors; the state of every order the reply names is an
    INFORM line (code 0.0); accepted orders are Reply/ID and, as standard
    EndDeviceControl, the payload (``views``)."""
    ns = GEDCM if operation == "get" else EDCM
    out = XmlText()
    declared = {f"xmlns:{prefix}": uri for prefix, uri in _REPLY_PREFIXES.items()}
    out.start("soapenv:Envelope", {"xmlns:soapenv": SOAP11_ENV, "xmlns:m": ns, **declared})
    out.start("soapenv:Body")
    out.start("m:EndDeviceControlsResponseMessage")
    _text_header(out, "m", message_id=str(uuid.uuid4()), source=source,
                 correlation_id=correlation_id)
    out.start("m:Reply")
    out.leaf("msg:Result", result or result_of(outcomes))
    view_list = list(views)
    _reply_lines(out, outcomes, view_list, info)
    out.end("m:Reply")
    if view_list:
        out.start("m:Payload")
        out.start("edc:EndDeviceControls")
        for view in view_list:
            _text_control(out, view, naming)
        out.end("edc:EndDeviceControls")
        out.end("m:Payload")
    out.end("m:EndDeviceControlsResponseMessage")
    out.end("soapenv:Body")
    out.end("soapenv:Envelope")
    return out.bytes()


# --------------------------------------------------------------------------- results


def event_code(ended: OrderEnded) -> str:
    # a disconnect deleted from quarantine (issue 17) is refused after it was accepted:
    # Legacy gets the failure code with its reason (failureReason quarantine_deleted)
    if ended.outcome in (Outcome.FAILED, Outcome.REJECTED):
        return DISCONNECT_FAILED if ended.action is ControlAction.DISCONNECT else CONNECT_FAILED
    return EVENT_CODES[ended.outcome]


def result_message_id(ended: OrderEnded) -> str:
    """Stable per order end, so a re-sent result carries the same MessageID."""
    return str(
        uuid.uuid5(uuid.NAMESPACE_URL, f"ami-rcd:result:{ended.order_id}:{ended.outcome.value}")
    )


def _event_details(ended: OrderEnded) -> list[tuple[str, str]]:
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
    return details


def build_event(
    ended: OrderEnded,
    *,
    correlation_id: str | None,
    source: str,
    message_id: str,
    naming: Naming = Naming(),
) -> bytes:
    """The standard ``CreatedEndDeviceEvents`` message for one ended order (step 9):
    the meter in Assets (mRID and Names/name), our detail in reason, status and
    EndDeviceEventDetails."""
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
    _sub(event, f"{{{EDE}}}reason", ended.failure_reason or ended.outcome.value)
    asset = _sub(event, f"{{{EDE}}}Assets")
    _sub(asset, f"{{{EDE}}}mRID", ended.meter_id)
    _names(asset, EDE, ended.meter_id, naming)
    for name, value in _event_details(ended):
        detail = _sub(event, f"{{{EDE}}}EndDeviceEventDetails")
        _sub(detail, f"{{{EDE}}}name", name)
        _sub(detail, f"{{{EDE}}}value", value)
    _sub(event, f"{{{EDE}}}EndDeviceEventType").set("ref", event_code(ended))
    status = _sub(event, f"{{{EDE}}}status")
    _sub(status, f"{{{EDE}}}dateTime", iso(ended.ended_at))
    if ended.failure_reason:
        _sub(status, f"{{{EDE}}}reason", ended.failure_reason)
    _sub(status, f"{{{EDE}}}value", ended.outcome.value)
    return bytes(etree.tostring(env, xml_declaration=True, encoding="UTF-8"))


# --------------------------------------------------------------------------- Legacy's answer


@dataclass(frozen=True)
class LegacyAnswer:
    """Legacy's Reply to a result message: ``result`` None when it had no Reply."""

    result: str | None
    errors: tuple[str, ...] = ()

    @property
    def summary(self) -> str:
        listed = "; ".join(self.errors) or "no Error given"
        return f"Legacy answered Result {self.result}: {listed}"


def read_answer(message: etree._Element) -> LegacyAnswer:
    """Reply/Result and its Errors ("code reason: details") of a response message."""
    reply = message.find("{*}Reply")
    result = None if reply is None else reply.findtext(f"{{{MSG}}}Result")
    errors: list[str] = []
    if reply is not None:
        for error in reply.findall(f"{{{MSG}}}Error"):
            parts = [error.findtext(f"{{{MSG}}}{n}") or "" for n in ("code", "reason", "details")]
            errors.append(f"{parts[0]} {parts[1]}".strip() + (f": {parts[2]}" if parts[2] else ""))
    return LegacyAnswer(result.strip() if result else None, tuple(errors))
