"""ReplyAddress against the configured Legacy endpoints: compared by URL parts, so a
look-alike host, user info or a sibling path cannot make the coordinator POST elsewhere."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from central.soap.router import install
from tests.soap.conftest import Coordinator, fast_soap_settings
from tests.soap.helpers import basic, control, create, fault_of, reply_of


@pytest.fixture
def client(coordinator: Coordinator) -> Iterator[TestClient]:
    app = FastAPI()
    prefixes = ("https://legacy.example.cl", "https://hub.example.cl:8443/rcd/results")
    install(
        app,
        coordinator.settings,
        coordinator.sessions,
        fast_soap_settings(reply_address_prefixes=prefixes),
    )
    with TestClient(app) as test_client:
        yield test_client


def with_reply_address(address: str, message_id: str) -> str:
    return create(control(["MTR-001"]), message_id=message_id).replace(
        "<msg:Source>LEGACY</msg:Source>",
        f"<msg:Source>LEGACY</msg:Source><msg:ReplyAddress>{address}</msg:ReplyAddress>",
    )


@pytest.mark.parametrize(
    "address",
    [
        "https://legacy.example.cl.evil.net/notify",
        "https://legacy.example.cl@evil.net/notify",
        "https://legacy.example.cl:1@169.254.169.254/x",
        "http://legacy.example.cl/notify",
        "https://hub.example.cl:8443/rcd/results-evil",
        "https://hub.example.cl:8444/rcd/results",
    ],
)
def test_look_alike_reply_address_is_refused(client: TestClient, address: str) -> None:
    response = client.post(
        "/soap/cim", content=with_reply_address(address, "M-bad"), headers=basic()
    )
    _code, _text, problem, _ = fault_of(response.content)
    assert problem == "reply_address"


@pytest.mark.parametrize(
    "address",
    [
        "https://legacy.example.cl/notify",
        "https://LEGACY.example.cl/x/y",
        "https://hub.example.cl:8443/rcd/results",
        "https://hub.example.cl:8443/rcd/results/orders",
    ],
)
def test_configured_reply_address_is_accepted(client: TestClient, address: str) -> None:
    response = client.post(
        "/soap/cim", content=with_reply_address(address, "M-ok"), headers=basic()
    )
    assert response.status_code == 200, response.text
    result, _errors, _ = reply_of(response.content)
    assert result in ("OK", "PARTIAL")
