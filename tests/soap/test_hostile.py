"""Hostile and broken XML: each gets a SOAP Fault that says what is wrong, and the
gateway keeps serving."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.soap.conftest import VIEWER, AppServer, Coordinator, fast_soap_settings, open_coordinator
from tests.soap.helpers import (
    basic,
    control,
    create,
    envelope,
    fault_of,
    get_by_meter,
    header,
    reply_of,
)

LIMIT = 64 * 1024
VALID = create(control(["MTR-001"]))
XML_DECL = '<?xml version="1.0"?>'


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AppServer]:
    coordinator: Coordinator = open_coordinator(
        Path(tmp_path_factory.mktemp("hostile")) / "central.sqlite3"
    )
    try:
        with AppServer(coordinator, fast_soap_settings(max_body_bytes=LIMIT)) as running:
            yield running
    finally:
        coordinator.close()


def post(
    server: AppServer, body: str | bytes, headers: dict[str, str] | None = None
) -> httpx.Response:
    content = body.encode() if isinstance(body, str) else body
    return httpx.post(server.endpoint, content=content, headers=headers or basic(), timeout=10)


def still_serving(server: AppServer) -> None:
    response = post(server, get_by_meter("MTR-001"))
    assert response.status_code == 200, response.text
    assert reply_of(response.content)[0] == "OK"


BILLION_LAUGHS = (
    XML_DECL
    + '<!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;">'
    + '<!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">]>'
    + envelope("<x>&lol3;</x>")
)
EXTERNAL_ENTITY = (
    XML_DECL + '<!DOCTYPE e [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>' + envelope("<x>&xxe;</x>")
)
PARAMETER_ENTITY = (
    XML_DECL
    + '<!DOCTYPE e [<!ENTITY % remote SYSTEM "http://127.0.0.1:9/evil.dtd"> %remote;]>'
    + envelope("<x/>")
)
EXTERNAL_DTD = XML_DECL + '<!DOCTYPE e SYSTEM "http://127.0.0.1:9/evil.dtd">' + envelope("<x/>")
PLAIN_DTD = XML_DECL + "<!DOCTYPE Envelope []>" + VALID
DEEP = envelope("<a>" * 200 + "</a>" * 200)
SOAP12 = envelope("<m:CreateEndDeviceControls/>", ns="http://www.w3.org/2003/05/soap-envelope")
WRONG_BODY_NS = VALID.replace(
    'xmlns:m="http://iec.ch/TC57/2011/EndDeviceControlsMessage"',
    'xmlns:m="http://example.com/NotCIM"',
)
WRONG_PAYLOAD_NS = VALID.replace(
    'xmlns:edc="http://iec.ch/TC57/2011/EndDeviceControls#"',
    'xmlns:edc="http://iec.ch/TC57/2009/EndDeviceControls#"',
)
BAD_TIMING = create(
    control(
        ["MTR-001"],
        timing="<edc:primaryDeviceTiming><edc:randomisation>sometimes</edc:randomisation>"
        "</edc:primaryDeviceTiming>",
    )
)
UNEXPECTED_ELEMENT = create(control(["MTR-001"], extra="<edc:colour>red</edc:colour>"))
MALFORMED = VALID[:-30]
NOT_SOAP = '<Envelope xmlns="urn:something-else"><Body/></Envelope>'
VERB_MISMATCH = VALID.replace("<msg:Verb>create</msg:Verb>", "<msg:Verb>get</msg:Verb>")
UNKNOWN_OPERATION = envelope(
    f"<m:PurgeEndDeviceControls>{header('delete')}</m:PurgeEndDeviceControls>"
)

CASES = [
    # (name, body, expected problem kind, words the fault string must contain)
    ("billion laughs", BILLION_LAUGHS, "entity_expansion", "entity expansion"),
    ("external entity", EXTERNAL_ENTITY, "external_entity", "external entity"),
    ("parameter entity", PARAMETER_ENTITY, "external_entity", "external entity"),
    ("external DTD", EXTERNAL_DTD, "external_entity", "DTD"),
    ("plain DTD", PLAIN_DTD, "dtd", "DTD"),
    ("deep nesting", DEEP, "too_deep", "nesting too deep"),
    ("SOAP 1.2", SOAP12, "wrong_namespace", "SOAP 1.2"),
    ("wrong body namespace", WRONG_BODY_NS, "wrong_namespace", "http://example.com/NotCIM"),
    ("not SOAP", NOT_SOAP, "wrong_namespace", "wrong namespace"),
    ("wrong payload namespace", WRONG_PAYLOAD_NS, "schema", "schema violation"),
    ("bad randomisation", BAD_TIMING, "schema", "randomisation"),
    ("unexpected element", UNEXPECTED_ELEMENT, "schema", "colour"),
    ("malformed", MALFORMED, "malformed", "malformed XML"),
    ("empty", "", "malformed", "empty"),
    ("verb mismatch", VERB_MISMATCH, "verb_mismatch", "Verb"),
    ("unknown operation", UNKNOWN_OPERATION, "unknown_operation", "PurgeEndDeviceControls"),
]


@pytest.mark.parametrize(("name", "body", "kind", "words"), CASES, ids=[c[0] for c in CASES])
def test_hostile_input_gets_its_fault(
    server: AppServer, name: str, body: str, kind: str, words: str
) -> None:
    response = post(server, body)
    assert response.status_code in (400, 500), response.text
    code, text, problem, _path = fault_of(response.content)
    assert problem == kind, text
    assert words in text, text
    assert code.startswith("soapenv:")
    still_serving(server)


def test_schema_fault_names_the_element_path(server: AppServer) -> None:
    response = post(server, BAD_TIMING)
    _code, text, problem, path = fault_of(response.content)
    assert problem == "schema"
    assert path is not None and "EndDeviceControl" in path and "randomisation" in path
    assert path in text


def test_oversized_body_refused_before_parsing(server: AppServer) -> None:
    big = VALID.replace("<msg:Source>", "<msg:Source>" + "A" * (LIMIT + 10))
    response = post(server, big)
    assert response.status_code == 413
    assert fault_of(response.content)[2] == "too_large"

    def chunks() -> Iterator[bytes]:  # no Content-Length: counted while streaming
        for _ in range(LIMIT // 1024 + 4):
            yield b" " * 1024

    response = httpx.post(server.endpoint, content=chunks(), headers=basic(), timeout=10)
    assert response.status_code == 413
    assert fault_of(response.content)[2] == "too_large"
    still_serving(server)


def test_authentication_and_roles(server: AppServer) -> None:
    response = httpx.post(
        server.endpoint, content=VALID, headers={"Content-Type": "text/xml"}, timeout=10
    )
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"].startswith("Basic")
    assert fault_of(response.content)[2] == "unauthenticated"

    response = post(server, VALID, basic(("legacy", "wrong-token")))
    assert response.status_code == 401
    assert "invalid credentials" in fault_of(response.content)[1]

    response = post(server, VALID, basic(VIEWER))  # a viewer may read, not create
    assert response.status_code == 403
    assert fault_of(response.content)[2] == "forbidden"
    response = post(server, get_by_meter("MTR-001"), basic(VIEWER))
    assert response.status_code == 200


def test_wsdl_and_schemas_are_served(server: AppServer) -> None:
    base = f"{server.base}/soap"
    for service, message_xsd in (
        ("ExecuteEndDeviceControls", "EndDeviceControlsMessage.xsd"),
        ("GetEndDeviceControls", "GetEndDeviceControlsMessage.xsd"),
        ("ReceiveEndDeviceEvents", "EndDeviceEventsMessage.xsd"),
        ("ReplyEndDeviceControls", "EndDeviceControlsMessage.xsd"),
    ):
        wsdl = httpx.get(f"{base}/{service}?wsdl", timeout=10)
        assert wsdl.status_code == 200, service
        assert f'schemaLocation="{base}/schemas/{message_xsd}"' in wsdl.text
        if service.endswith("EndDeviceControls") and not service.startswith("Reply"):
            assert f'location="{base}/{service}"' in wsdl.text
    xsd = httpx.get(f"{base}/schemas/Message.xsd", timeout=10)
    assert xsd.status_code == 200 and "IEC 61968-100" in xsd.text
    assert httpx.get(f"{base}/schemas/..%2Fcim.py", timeout=10).status_code == 404


def test_faults_carry_the_standard_fault_message(server: AppServer) -> None:
    """A Fault's detail holds the declared EndDeviceControlsFaultMessage (in the called
    service's namespace), valid against the standard schemas; zeep built from the
    standard WSDL surfaces it."""
    import zeep.exceptions
    from lxml import etree

    from tests.soap.standard_clients import execute_client, header, standard_schema

    for path, body, namespace, code in (
        (
            "/soap/ExecuteEndDeviceControls",
            BAD_TIMING,
            "http://iec.ch/TC57/2011/EndDeviceControlsMessage",
            "2.1",
        ),
        (
            "/soap/GetEndDeviceControls",
            get_by_meter("MTR-001"),
            "http://iec.ch/TC57/2011/GetEndDeviceControlsMessage",
            "6.2",
        ),
    ):
        headers = basic() if code != "6.2" else {"Content-Type": "text/xml"}
        response = httpx.post(f"{server.base}{path}", content=body, headers=headers, timeout=10)
        assert response.status_code in (401, 500)
        detail = etree.fromstring(response.content).find(".//detail")
        assert detail is not None
        message = etree.fromstring(etree.tostring(detail[0]))
        assert message.tag == f"{{{namespace}}}EndDeviceControlsFaultMessage"
        assert standard_schema().validate(message), standard_schema().error_log
        error = message.find(".//{http://iec.ch/TC57/2011/schema/message}Error")
        assert error is not None and error.findtext("{*}code") == code

    client = execute_client(server, user=("legacy", "wrong-token"))
    with pytest.raises(zeep.exceptions.Fault) as caught:
        client.service.CancelEndDeviceControls(
            Header=header("f-1", verb="cancel"),
            Payload={
                "EndDeviceControls": {
                    "EndDeviceControl": [{"mRID": "x", "EndDeviceControlType": {}}]
                }
            },
        )
    detail = caught.value.detail
    assert detail is not None and etree.QName(detail[0]).localname == (
        "EndDeviceControlsFaultMessage"
    )
