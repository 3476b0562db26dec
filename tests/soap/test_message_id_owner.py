"""A MessageID belongs to the caller that sent it first: another caller re-sending it
gets a fault, never the first caller's stored reply (its order ids and meters)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from central.settings import TokenEntry
from central.soap.router import install
from tests.soap.conftest import OPERATOR, Coordinator, fast_soap_settings
from tests.soap.helpers import basic, control, create, fault_of, reply_of

OTHER = ("contractor", "contractor-operator-token-03")


@pytest.fixture
def client(coordinator: Coordinator) -> Iterator[TestClient]:
    tokens = dict(coordinator.settings.api_tokens)
    tokens[OTHER[1]] = TokenEntry(name=OTHER[0], role="operator")
    settings = coordinator.settings.model_copy(update={"api_tokens": tokens})
    app = FastAPI()
    install(app, settings, coordinator.sessions, fast_soap_settings())
    with TestClient(app) as test_client:
        yield test_client


def test_another_callers_message_id_returns_no_reply(client: TestClient) -> None:
    body = create(control(["MTR-001"]), message_id="M-legacy-1")
    first = client.post("/soap/cim", content=body, headers=basic(OPERATOR))
    assert first.status_code == 200
    assert reply_of(first.content)[0] == "OK"
    stolen = client.post("/soap/cim", content=body, headers=basic(OTHER))
    assert fault_of(stolen.content)[2] == "message_id_reused"
    # the owner still gets its reply again
    again = client.post("/soap/cim", content=body, headers=basic(OPERATOR))
    assert again.content == first.content
