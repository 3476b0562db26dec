"""Hand-written SOAP requests for the tests that do not go through zeep."""

from __future__ import annotations

import base64

from lxml import etree

from tests.soap.conftest import OPERATOR

SOAP = "http://schemas.xmlsoap.org/soap/envelope/"
GW = "urn:ami-rcd:soap-gateway"


def basic(user: tuple[str, str] = OPERATOR) -> dict[str, str]:
    token = base64.b64encode(f"{user[0]}:{user[1]}".encode()).decode()
    return {"Authorization": f"Basic {token}", "Content-Type": "text/xml; charset=utf-8"}


def envelope(body: str, soap_header: str = "", ns: str = SOAP) -> str:
    return (
        f'<soapenv:Envelope xmlns:soapenv="{ns}" '
        'xmlns:m="http://iec.ch/TC57/2011/EndDeviceControlsMessage" '
        'xmlns:msg="http://iec.ch/TC57/2011/schema/message" '
        'xmlns:edc="http://iec.ch/TC57/2011/EndDeviceControls#" '
        'xmlns:g="http://iec.ch/TC57/2011/GetEndDeviceControlsMessage" '
        'xmlns:q="http://iec.ch/TC57/2011/GetEndDeviceControls#">'
        f"<soapenv:Header>{soap_header}</soapenv:Header>"
        f"<soapenv:Body>{body}</soapenv:Body></soapenv:Envelope>"
    )


def header(
    verb: str, message_id: str | None = None, extra: str = "", prefix: str = "m", after: str = ""
) -> str:
    """``extra`` goes before Source (Revision, ReplayDetection, Context, Timestamp),
    ``after`` after MessageID (CorrelationID, Comment, Property, extensions)."""
    mid = f"<msg:MessageID>{message_id}</msg:MessageID>" if message_id else ""
    return (
        f"<{prefix}:Header><msg:Verb>{verb}</msg:Verb><msg:Noun>EndDeviceControls</msg:Noun>"
        f"{extra}<msg:Source>LEGACY</msg:Source>{mid}{after}</{prefix}:Header>"
    )


def control(
    meters: list[str],
    code: str = "3.31.0.18",
    reason: str = "payment",
    tracking: str = "T-1",
    extra: str = "",
    after_reason: str = "",
    timing: str = "",
    devices: str | None = None,
) -> str:
    """A standard EndDeviceControl; ``extra`` after issuerTrackingID, ``after_reason``
    after reason (a PAN action), ``timing`` after EndDevices (primaryDeviceTiming)."""
    if devices is None:
        devices = "".join(
            f"<edc:EndDevices><edc:Names><edc:name>{m}</edc:name></edc:Names></edc:EndDevices>"
            for m in meters
        )
    return (
        f"<edc:EndDeviceControl><edc:issuerID>LEGACY</edc:issuerID>"
        f"<edc:issuerTrackingID>{tracking}</edc:issuerTrackingID>{extra}"
        f"<edc:reason>{reason}</edc:reason>{after_reason}"
        f'<edc:EndDeviceControlType ref="{code}"/>{devices}{timing}</edc:EndDeviceControl>'
    )


def create(
    controls: str,
    message_id: str | None = None,
    options: str = "",
    head: str | None = None,
    after_payload: str = "",
    operation: str = "Create",
    soap_header: str = "",
) -> str:
    request = f"<m:Request>{options}</m:Request>" if options else ""
    head = head if head is not None else header(operation.lower(), message_id)
    return envelope(
        f"<m:{operation}EndDeviceControls>{head}{request}"
        f"<m:Payload><edc:EndDeviceControls>{controls}</edc:EndDeviceControls>{after_payload}"
        f"</m:Payload></m:{operation}EndDeviceControls>",
        soap_header,
    )


def special() -> str:
    return "<msg:Option><msg:name>special</msg:name><msg:value>true</msg:value></msg:Option>"


def get(request: str, head: str | None = None) -> str:
    head = head if head is not None else header("get", prefix="g")
    return envelope(
        f"<g:GetEndDeviceControls>{head}<g:Request>{request}</g:Request></g:GetEndDeviceControls>"
    )


def get_by_meter(meter: str) -> str:
    return get(
        "<q:GetEndDeviceControls>"
        f"<q:EndDevice><q:Names><q:name>{meter}</q:name></q:Names></q:EndDevice>"
        "</q:GetEndDeviceControls>"
    )


def get_by_tracking(tracking: str) -> str:
    return get(
        "<q:GetEndDeviceControls>"
        f"<q:EndDeviceControl><q:issuerTrackingID>{tracking}</q:issuerTrackingID>"
        "</q:EndDeviceControl></q:GetEndDeviceControls>"
    )


def cancel(tracking: str, message_id: str | None = None, type_ref: str = "") -> str:
    return envelope(
        f"<m:CancelEndDeviceControls>{header('cancel', message_id)}<m:Payload>"
        f"<edc:EndDeviceControls><edc:EndDeviceControl><edc:issuerTrackingID>{tracking}"
        f"</edc:issuerTrackingID><edc:EndDeviceControlType{type_ref}/></edc:EndDeviceControl>"
        "</edc:EndDeviceControls></m:Payload></m:CancelEndDeviceControls>"
    )


def fault_of(content: bytes) -> tuple[str, str, str | None, str | None]:
    """(faultcode, faultstring, problem kind, path) of a Fault reply."""
    root = etree.fromstring(content)
    fault = root.find(f"{{{SOAP}}}Body/{{{SOAP}}}Fault")
    assert fault is not None, content[:500]
    return (
        fault.findtext("faultcode") or "",
        fault.findtext("faultstring") or "",
        fault.findtext(f"detail/{{{GW}}}problem/{{{GW}}}kind"),
        fault.findtext(f"detail/{{{GW}}}problem/{{{GW}}}path"),
    )


MSG = "{http://iec.ch/TC57/2011/schema/message}"
EDCM = "{http://iec.ch/TC57/2011/EndDeviceControlsMessage}"
EDC = "{http://iec.ch/TC57/2011/EndDeviceControls#}"


def reply_of(content: bytes) -> tuple[str, list[dict[str, str]], etree._Element]:
    """(Result, Errors as dicts, the response message element) of a normal reply."""
    root = etree.fromstring(content)
    body = root.find(f"{{{SOAP}}}Body")
    assert body is not None and len(body) == 1, content[:500]
    message = body[0]
    result = message.findtext(f"{{*}}Reply/{MSG}Result") or ""
    errors = [
        {child.tag.split("}")[1]: (child.text or "") for child in error}
        for error in message.findall(f"{{*}}Reply/{MSG}Error")
        if error.findtext(f"{MSG}level") != "INFORM"
    ]
    return result, errors, message


def states_of(message: etree._Element) -> dict[str, str]:
    """order mRID -> state, from the reply's INFORM lines."""
    return {
        error.findtext(f"{MSG}ID") or "": (error.findtext(f"{MSG}reason") or "").removeprefix(
            "state: "
        )
        for error in message.findall(f"{{*}}Reply/{MSG}Error")
        if error.findtext(f"{MSG}level") == "INFORM" and error.find(f"{MSG}ID") is not None
    }
