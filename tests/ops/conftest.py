"""One real coordinator (SQLite in a temporary directory, MQTT off) for the ops tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from .live import ADMIN, METERS_CSV, LiveServer, make_app, make_settings, serve


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    tmp: Path = tmp_path_factory.mktemp("ops-central")
    app = make_app(make_settings(tmp, approval_threshold=5))
    with serve(app) as server:
        response = httpx.post(
            f"{server.url}/api/v1/meters/import",
            content=METERS_CSV.encode(),
            headers={"Authorization": f"Bearer {ADMIN}", "Content-Type": "text/csv"},
        )
        response.raise_for_status()
        yield server
