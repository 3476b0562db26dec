"""Issue 12 item 6: WS-Security UsernameToken with Nonce and Created (PasswordText
or PasswordDigest); a captured token sent again within the window is refused.
Issue 13 item 6: the pre-standard shapes only behind ``compat_legacy_shapes``."""

from __future__ import annotations

import base64
import secrets
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from tests.soap.conftest import OPERATOR, Coordinator, fast_soap_settings
from tests.soap.helpers import control, create, envelope, fault_of, get_by_meter, reply_of
from tests.soap.standard_clients import wsse_digest_token

WSSE = "http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-wssecurity-secext-1.0.xsd"
WSU = "http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-wssecurity-utility-1.0.xsd"
PROFILE = "http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-username-token-profile-1.0"


def client_for(coordinator: Coordinator, **settings: object) -> TestClient:
    from central.soap.router import install

    app = FastAPI()
    install(app, coordinator.settings, coordinator.sessions, fast_soap_settings(**settings))
    return TestClient(app)


@pytest.fixture
def client(coordinator: Coordinator) -> Iterator[TestClient]:
    with client_for(coordinator) as test_client:
        yield test_client


def token(
    *,
    digest: bool = False,
    nonce: bytes | None = None,
    created: str | None = None,
    password: str = OPERATOR[1],
    with_nonce: bool = True,
) -> str:
    nonce = nonce if nonce is not None else secrets.token_bytes(16)
    created = created or datetime.now(UTC).isoformat()
    if digest:
        value = wsse_digest_token((OPERATOR[0], password), nonce, created)
        kind = f' Type="{PROFILE}#PasswordDigest"'
    else:
        value, kind = password, f' Type="{PROFILE}#PasswordText"'
    extra = (
        f'<wsse:Nonce EncodingType="{PROFILE[:-27]}soap-message-security-1.0#Base64Binary">'
        f"{base64.b64encode(nonce).decode()}</wsse:Nonce><wsu:Created>{created}</wsu:Created>"
        if with_nonce
        else ""
    )
    return (
        f'<wsse:Security xmlns:wsse="{WSSE}" xmlns:wsu="{WSU}"><wsse:UsernameToken>'
        f"<wsse:Username>{OPERATOR[0]}</wsse:Username><wsse:Password{kind}>{value}"
        f"</wsse:Password>{extra}</wsse:UsernameToken></wsse:Security>"
    )


def post(client: TestClient, soap_header: str, body: str | None = None) -> tuple[int, bytes]:
    body = body or get_by_meter("MTR-001")
    body = body.replace("<soapenv:Header>", "<soapenv:Header>" + soap_header)
    response = client.post(
        "/soap/GetEndDeviceControls", content=body, headers={"Content-Type": "text/xml"}
    )
    return response.status_code, response.content


def test_password_text_with_nonce_and_created(client: TestClient) -> None:
    status, content = post(client, token())
    assert status == 200 and reply_of(content)[0] == "OK"


def test_password_digest(client: TestClient) -> None:
    status, content = post(client, token(digest=True))
    assert status == 200 and reply_of(content)[0] == "OK"
    status, content = post(client, token(digest=True, password="not-the-token"))
    assert status == 401 and "invalid credentials" in fault_of(content)[1]


@pytest.mark.parametrize("digest", [False, True], ids=["text", "digest"])
def test_a_captured_token_sent_again_is_refused(client: TestClient, digest: bool) -> None:
    captured = token(digest=digest)
    assert post(client, captured)[0] == 200
    status, content = post(client, captured)
    assert status == 401
    _code, text, problem, _ = fault_of(content)
    assert problem == "replay" and "already used" in text


def test_created_outside_the_window_is_refused(client: TestClient) -> None:
    old = (datetime.now(UTC) - timedelta(minutes=30)).isoformat()
    status, content = post(client, token(digest=True, created=old))
    assert status == 401 and "older than the replay window" in fault_of(content)[1]


def test_a_token_without_nonce_is_refused_unless_configured(coordinator: Coordinator) -> None:
    with client_for(coordinator) as strict:
        status, content = post(strict, token(with_nonce=False))
        assert status == 401 and "Nonce and a Created" in fault_of(content)[1]
    with client_for(coordinator, wsse_require_nonce=False) as lax:
        assert post(lax, token(with_nonce=False))[0] == 200


# --------------------------------------------------------------------------- compatibility

OLD_CREATE = envelope(
    "<m:CreateEndDeviceControls><m:Header><msg:Verb>create</msg:Verb>"
    "<msg:Noun>EndDeviceControls</msg:Noun><msg:MessageID>old-1</msg:MessageID></m:Header>"
    "<m:Payload><edc:EndDeviceControls><edc:EndDeviceControl>"
    "<edc:issuerTrackingID>OLD-1</edc:issuerTrackingID><edc:priority>4</edc:priority>"
    "<edc:reason>paymentReceived</edc:reason><edc:scheduledInterval>"
    "<edc:end>2031-01-07T18:00:00Z</edc:end><edc:start>2031-01-07T09:00:00Z</edc:start>"
    '</edc:scheduledInterval><edc:EndDeviceControlType ref="3.31.0.18"/>'
    "<edc:EndDevices><edc:Names><edc:name>MTR-001</edc:name></edc:Names></edc:EndDevices>"
    "</edc:EndDeviceControl></edc:EndDeviceControls></m:Payload></m:CreateEndDeviceControls>"
)
OLD_GET = envelope(
    "<m:GetEndDeviceControls><m:Header><msg:Verb>get</msg:Verb>"
    "<msg:Noun>EndDeviceControls</msg:Noun></m:Header><m:Request><q:GetEndDeviceControls>"
    "<q:EndDeviceControl><q:issuerTrackingID>OLD-1</q:issuerTrackingID></q:EndDeviceControl>"
    "</q:GetEndDeviceControls></m:Request></m:GetEndDeviceControls>"
)


def basic_post(client: TestClient, body: str) -> tuple[int, bytes]:
    from tests.soap.helpers import basic

    response = client.post("/soap/cim", content=body, headers=basic())
    return response.status_code, response.content


def test_old_shapes_are_refused_by_default(client: TestClient) -> None:
    status, content = basic_post(client, OLD_CREATE)
    assert status == 500 and fault_of(content)[2] == "schema"
    status, content = basic_post(client, OLD_GET)
    assert status == 500 and fault_of(content)[2] == "wrong_namespace"


def test_old_shapes_accepted_behind_the_compatibility_setting(coordinator: Coordinator) -> None:
    with client_for(coordinator, compat_legacy_shapes=True) as client:
        status, content = basic_post(client, OLD_CREATE)
        assert status == 200 and reply_of(content)[0] == "OK", content
        status, content = basic_post(client, OLD_GET)
        assert status == 200 and reply_of(content)[0] == "OK"
    [order] = coordinator.orders()
    assert order.priority == 4 and order.external_ref == "OLD-1"
    assert order.not_before == datetime(2031, 1, 7, 9, tzinfo=UTC)
    assert order.deadline == datetime(2031, 1, 7, 18, tzinfo=UTC)
    # the standard shape still works with the setting on
    with client_for(coordinator, compat_legacy_shapes=True) as client:
        status, content = basic_post(client, create(control(["MTR-002"]), message_id="new-1"))
        assert status == 200 and reply_of(content)[0] == "OK"
