"""SOAP 1.1 Faults: every refusal of the gateway says what is wrong.

The Fault's ``detail`` carries first the standard fault element the WSDLs declare
(``EndDeviceControlsFaultMessage`` with a Reply FAILED and one coded Error, in the
namespace of the service called), then our ``gw:problem`` with the kind and path."""

from __future__ import annotations

from lxml import etree

SOAP11_ENV = "http://schemas.xmlsoap.org/soap/envelope/"
SOAP12_ENV = "http://www.w3.org/2003/05/soap-envelope"
GATEWAY_NS = "urn:ami-rcd:soap-gateway"
MESSAGE_NS = "http://iec.ch/TC57/2011/schema/message"
EXECUTE_FAULT_NS = "http://iec.ch/TC57/2011/EndDeviceControlsMessage"
GET_FAULT_NS = "http://iec.ch/TC57/2011/GetEndDeviceControlsMessage"
# Error/code of a Fault: 2 = the request is not usable, 5 = our fault, 6 = security
_SECURITY = frozenset({"unauthenticated", "forbidden", "replay"})


class SoapFault(Exception):
    """A request the gateway refuses; rendered as a SOAP 1.1 Fault.

    ``code`` is the SOAP faultcode local name (Client, Server, VersionMismatch);
    ``problem`` a short machine-readable kind (``dtd``, ``entity``, ``too_large`` ...);
    ``path`` the offending element's path when there is one.
    """

    def __init__(
        self,
        message: str,
        *,
        problem: str,
        code: str = "Client",
        http_status: int = 500,
        path: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.problem = problem
        self.code = code
        self.http_status = http_status
        self.path = path


def fault_code(fault: SoapFault) -> str:
    if fault.problem in _SECURITY:
        return "6.2"
    return "5.1" if fault.code == "Server" else "2.1"


def _fault_message(detail: etree._Element, fault: SoapFault, namespace: str) -> None:
    message = etree.SubElement(
        detail, f"{{{namespace}}}EndDeviceControlsFaultMessage", nsmap={"m": namespace}
    )
    reply = etree.SubElement(message, f"{{{namespace}}}Reply", nsmap={"msg": MESSAGE_NS})
    etree.SubElement(reply, f"{{{MESSAGE_NS}}}Result").text = "FAILED"
    error = etree.SubElement(reply, f"{{{MESSAGE_NS}}}Error")
    etree.SubElement(error, f"{{{MESSAGE_NS}}}code").text = fault_code(fault)
    etree.SubElement(error, f"{{{MESSAGE_NS}}}level").text = "FATAL"
    etree.SubElement(error, f"{{{MESSAGE_NS}}}reason").text = fault.message
    etree.SubElement(error, f"{{{MESSAGE_NS}}}details").text = fault.problem


def fault_xml(fault: SoapFault, namespace: str = EXECUTE_FAULT_NS) -> bytes:
    env = etree.Element(f"{{{SOAP11_ENV}}}Envelope", nsmap={"soapenv": SOAP11_ENV})
    body = etree.SubElement(env, f"{{{SOAP11_ENV}}}Body")
    node = etree.SubElement(body, f"{{{SOAP11_ENV}}}Fault")
    # faultcode, faultstring, detail are unqualified children in SOAP 1.1.
    etree.SubElement(node, "faultcode").text = f"soapenv:{fault.code}"
    etree.SubElement(node, "faultstring").text = fault.message
    detail = etree.SubElement(node, "detail")
    _fault_message(detail, fault, namespace)
    info = etree.SubElement(detail, f"{{{GATEWAY_NS}}}problem", nsmap={"gw": GATEWAY_NS})
    etree.SubElement(info, f"{{{GATEWAY_NS}}}kind").text = fault.problem
    if fault.path:
        etree.SubElement(info, f"{{{GATEWAY_NS}}}path").text = fault.path
    return bytes(etree.tostring(env, xml_declaration=True, encoding="UTF-8"))
