"""SOAP 1.1 Faults: every refusal of the gateway says what is wrong."""

from __future__ import annotations

from lxml import etree

SOAP11_ENV = "http://schemas.xmlsoap.org/soap/envelope/"
SOAP12_ENV = "http://www.w3.org/2003/05/soap-envelope"
GATEWAY_NS = "urn:ami-rcd:soap-gateway"


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


def fault_xml(fault: SoapFault) -> bytes:
    env = etree.Element(f"{{{SOAP11_ENV}}}Envelope", nsmap={"soapenv": SOAP11_ENV})
    body = etree.SubElement(env, f"{{{SOAP11_ENV}}}Body")
    node = etree.SubElement(body, f"{{{SOAP11_ENV}}}Fault")
    # faultcode, faultstring, detail are unqualified children in SOAP 1.1.
    etree.SubElement(node, "faultcode").text = f"soapenv:{fault.code}"
    etree.SubElement(node, "faultstring").text = fault.message
    detail = etree.SubElement(node, "detail")
    info = etree.SubElement(detail, f"{{{GATEWAY_NS}}}problem", nsmap={"gw": GATEWAY_NS})
    etree.SubElement(info, f"{{{GATEWAY_NS}}}kind").text = fault.problem
    if fault.path:
        etree.SubElement(info, f"{{{GATEWAY_NS}}}path").text = fault.path
    return bytes(etree.tostring(env, xml_declaration=True, encoding="UTF-8"))
