"""The dashboard's routes over HTTP, without a browser: page, static files, the
stats aggregate and its role check, and the token policy."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from central.dashboard.routes import viewer_token
from central.settings import Settings
from tests.ops.live import (
    ADMIN,
    METERS_CSV,
    OPERATOR,
    VIEWER,
    LiveServer,
    dispatch_all,
    make_app,
    make_settings,
    release_held,
    report_result,
    serve,
)


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    with serve(make_app(make_settings(tmp_path_factory.mktemp("dash-http")))) as server:
        yield server


def _config(html: str) -> dict[str, object]:
    match = re.search(r'<script id="rcd-config" type="application/json">(.*?)</script>', html)
    assert match, html[:500]
    config: dict[str, object] = json.loads(match.group(1))
    return config


def test_page_and_static_files(live: LiveServer) -> None:
    page = httpx.get(f"{live.url}/dashboard")
    assert page.status_code == 200
    assert "script-src 'self'" in page.headers["content-security-policy"]
    assert page.headers["cache-control"] == "no-store"
    config = _config(page.text)
    assert config["token"] == VIEWER  # test environment: the viewer token, never a higher one
    for name, kind in (("dashboard.js", "javascript"), ("dashboard.css", "css")):
        response = httpx.get(f"{live.url}/dashboard/static/{name}")
        assert response.status_code == 200 and kind in response.headers["content-type"]
    assert httpx.get(f"{live.url}/dashboard/static/../app.py").status_code == 404
    assert httpx.get(f"{live.url}/dashboard/static/secret.txt").status_code == 404


def test_stats_needs_a_token_and_counts_everything(live: LiveServer) -> None:
    url = f"{live.url}/dashboard/api/stats"
    assert httpx.get(url).status_code == 401
    assert httpx.get(url, headers={"Authorization": "Bearer nope"}).status_code == 401

    admin = {"Authorization": f"Bearer {ADMIN}", "Content-Type": "text/csv"}
    httpx.post(f"{live.url}/api/v1/meters/import", content=METERS_CSV, headers=admin)
    operator = {"Authorization": f"Bearer {OPERATOR}"}
    created = []
    for meter in ("MTR-001", "MTR-002", "MTR-005"):
        body = {"meter_id": meter, "action": "disconnect", "reason": "non_payment", "special": True}
        answer = httpx.post(f"{live.url}/api/v1/orders", json=body, headers=operator).json()
        created.append(answer["item"]["order_id"])
        if answer["item"]["accepted"]:
            release_held(f"{live.url}/api/v1", answer["item"]["order_id"])
    dispatch_all(live.app)
    report_result(live.app, created[0], "MTR-001", "conc-north", "disconnected")

    stats = httpx.get(url, headers={"Authorization": f"Bearer {VIEWER}"}).json()
    assert stats["orders_total"] == 3
    assert stats["orders_by_state"] == {
        "completed_disconnected": 1,
        "dispatched": 1,
        "rejected": 1,
    }
    assert stats["active"] == 1 and stats["succeeded"] == 1 and stats["rejected"] == 1
    assert {r["id"]: r["final_state"] for r in stats["recent"]} == {
        created[0]: "completed_disconnected",
        created[2]: "rejected",
    }


def test_token_policy(tmp_path: Path) -> None:
    test = make_settings(tmp_path)
    assert viewer_token(test) == VIEWER
    no_viewer = make_settings(tmp_path, api_tokens={"t" * 20: {"name": "o", "role": "operator"}})
    assert viewer_token(no_viewer) is None  # an operator token is never put in a page
    production = Settings(
        environment="production",
        database_url=f"sqlite:///{tmp_path / 'p.sqlite3'}",
        secret_key="s" * 32,
        api_tokens={"v" * 32: {"name": "wall-screen", "role": "viewer"}},
        mqtt_enabled=False,
    )
    assert viewer_token(production) is None
