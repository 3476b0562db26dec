"""Clients that were never given our WSDL: zeep and suds built from the
standard-shaped files in tests/soap/standard/, and the standard schemas every
message the gateway sends is checked against."""

from __future__ import annotations

import base64
import functools
import hashlib
import secrets
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import requests
import zeep
from lxml import etree
from requests.auth import HTTPBasicAuth
from zeep.plugins import HistoryPlugin
from zeep.transports import Transport

from tests.soap.conftest import OPERATOR, AppServer

STANDARD = Path(__file__).parent / "standard"
SOAP = "http://schemas.xmlsoap.org/soap/envelope/"
EXECUTE_BINDING = "{http://iec.ch/TC57/2011/ExecuteEndDeviceControls}EndDeviceControls_Binding"
GET_BINDING = "{http://iec.ch/TC57/2011/GetEndDeviceControls}GetEndDeviceControls_Binding"
RECEIVE_BINDING = "{http://iec.ch/TC57/2011/ReceiveEndDeviceEvents}EndDeviceEvents_Binding"


@functools.cache
def standard_schema() -> etree.XMLSchema:
    imports = "".join(
        f'<xs:import namespace="{ns}" schemaLocation="{(STANDARD / name).as_uri()}"/>'
        for ns, name in (
            ("http://iec.ch/TC57/2011/EndDeviceControlsMessage", "EndDeviceControlsMessage.xsd"),
            (
                "http://iec.ch/TC57/2011/GetEndDeviceControlsMessage",
                "GetEndDeviceControlsMessage.xsd",
            ),
            ("http://iec.ch/TC57/2011/EndDeviceEventsMessage", "EndDeviceEventsMessage.xsd"),
        )
    )
    driver = (
        '<xs:schema xmlns:xs="http://www.w3.org/2001/XMLSchema" '
        f'targetNamespace="urn:tests:standard">{imports}</xs:schema>'
    )
    return etree.XMLSchema(etree.fromstring(driver.encode()))


def body_message(envelope: bytes | etree._Element) -> etree._Element:
    root = etree.fromstring(envelope) if isinstance(envelope, bytes) else envelope
    body = root.find(f"{{{SOAP}}}Body")
    assert body is not None and len(body) == 1, etree.tostring(root)[:500]
    return body[0]


def assert_standard(envelope: bytes | etree._Element) -> etree._Element:
    """The Body's message, after checking it against the standard schemas."""
    message = etree.fromstring(etree.tostring(body_message(envelope)))
    schema = standard_schema()
    assert schema.validate(message), f"{schema.error_log}\n{etree.tostring(message)[:3000]!r}"
    return message


def _transport(user: tuple[str, str] | None) -> Transport:
    session = requests.Session()
    if user is not None:
        session.auth = HTTPBasicAuth(*user)
    return Transport(session=session, timeout=10)


class StandardZeep:
    """A zeep client of one standard service, pointed at the gateway, that checks
    every reply it receives against the standard schemas."""

    def __init__(
        self,
        wsdl: str,
        binding: str,
        address: str,
        user: tuple[str, str] | None = OPERATOR,
        wsse: Any = None,
    ) -> None:
        self.history = HistoryPlugin()  # type: ignore[no-untyped-call]
        self.client = zeep.Client(
            str(STANDARD / wsdl), transport=_transport(user), wsse=wsse, plugins=[self.history]
        )
        self.service = self.client.create_service(binding, address)

    def call(self, operation: str, **parts: Any) -> Any:
        reply = getattr(self.service, operation)(**parts)
        assert_standard(self.history.last_received["envelope"])
        return reply

    @property
    def sent(self) -> etree._Element:
        return self.history.last_sent["envelope"]


def execute_client(server: AppServer, **kwargs: Any) -> StandardZeep:
    return StandardZeep(
        "ExecuteEndDeviceControls.wsdl",
        EXECUTE_BINDING,
        f"{server.base}/soap/ExecuteEndDeviceControls",
        **kwargs,
    )


def get_client(server: AppServer, **kwargs: Any) -> StandardZeep:
    return StandardZeep(
        "GetEndDeviceControls.wsdl",
        GET_BINDING,
        f"{server.base}/soap/GetEndDeviceControls",
        **kwargs,
    )


def suds_client(server: AppServer, wsdl: str, path: str, user: tuple[str, str] = OPERATOR) -> Any:
    from suds.client import Client
    from suds.transport.http import HttpAuthenticated

    transport = HttpAuthenticated(username=user[0], password=user[1])
    return Client((STANDARD / wsdl).as_uri(), location=f"{server.base}{path}", transport=transport)


# --------------------------------------------------------------------------- messages


def header(message_id: str, verb: str = "create", **extra: Any) -> dict[str, Any]:
    values: dict[str, Any] = {
        "Verb": verb,
        "Noun": "EndDeviceControls",
        "Source": "LEGACY",
        "MessageID": message_id,
        "CorrelationID": f"corr-{message_id}",
    }
    values.update(extra)
    return values


def device(meter: str, name_type: str | None = "MeterNumber") -> dict[str, Any]:
    name: dict[str, Any] = {"name": meter}
    if name_type:
        name["NameType"] = {"name": name_type}
    return {"Names": [name]}


def control(
    meters: list[str],
    code: str = "3.31.0.18",
    tracking: str = "T-1",
    reason: str | None = "paymentReceived",
    **extra: Any,
) -> dict[str, Any]:
    values: dict[str, Any] = {
        "issuerID": "LEGACY",
        "issuerTrackingID": tracking,
        "EndDeviceControlType": {"ref": code},
        "EndDevices": [device(m) for m in meters],
    }
    if reason is not None:
        values["reason"] = reason
    values.update(extra)
    return values


def payload(*controls: dict[str, Any]) -> dict[str, Any]:
    return {"EndDeviceControls": {"EndDeviceControl": list(controls)}}


def special() -> dict[str, Any]:
    return {"Option": [{"name": "weekendAllowed", "value": "true"}]}


def replay_detection(nonce: str | None = None, created: datetime | None = None) -> dict[str, Any]:
    return {
        "Nonce": nonce or secrets.token_hex(16),
        "Created": created or datetime.now(UTC),
    }


def wsse_digest_token(user: tuple[str, str], nonce: bytes, created: str) -> str:
    raw = hashlib.sha1(nonce + created.encode() + user[1].encode()).digest()
    return base64.b64encode(raw).decode()


def errors_of(reply: Any) -> list[Any]:
    return [e for e in (reply.Reply.Error or []) if e.level != "INFORM"]


def states_of(reply: Any) -> dict[str, str]:
    """order mRID -> state, from the INFORM lines of a reply."""
    return {
        e.ID._value_1: e.reason.removeprefix("state: ")
        for e in (reply.Reply.Error or [])
        if e.level == "INFORM" and e.ID is not None
    }
