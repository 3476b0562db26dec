"""The REST API walked with schemathesis from its own OpenAPI document, on SQLite and
PostgreSQL (issue 12, item 4): whatever a caller sends, no 5xx, and every status code
it answers is one the document lists. Examples are bounded to keep the run short."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import schemathesis
from fastapi import FastAPI
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import status_code_conformance

from central.app import create_app
from central.settings import Settings

ADMIN = {"Authorization": "Bearer dev-admin"}
EXAMPLES = 12  # per operation: about 30 operations, well under a minute per database
CSV = "meter_id,concentrator_id,line_id,hdlc_address,protected_customer\nm1,conc-a,l1,17,no\n"


@pytest.fixture
def api_app(database_url: str) -> Iterator[FastAPI]:
    app = create_app(Settings(environment="test", database_url=database_url, mqtt_enabled=False))
    with TestClient(app) as client:  # runs the lifespan: migrations, coordinator
        headers = {**ADMIN, "Content-Type": "text/csv"}
        assert client.post("/api/v1/meters/import", content=CSV, headers=headers).status_code == 200
        yield app


def test_no_server_error_and_every_status_documented(api_app: FastAPI) -> None:
    schema = schemathesis.openapi.from_asgi("/openapi.json", api_app)
    failures: list[str] = []
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) > 20
    for operation in operations:

        @settings(
            max_examples=EXAMPLES,
            deadline=None,
            derandomize=True,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        @given(case=operation.as_strategy())
        def walk(case: schemathesis.Case) -> None:
            case.call_and_validate(
                headers=ADMIN, checks=[not_a_server_error, status_code_conformance]
            )

        try:
            walk()
        except (Exception, BaseExceptionGroup) as exc:  # walk the other operations too
            found = [line for line in str(exc).splitlines() if line.strip()][:6]
            failures.append(f"{operation.label}: " + " | ".join(found))
    assert not failures, "\n\n".join(failures)
