"""The real coordinator app served by uvicorn on a free port in a thread.

Used by the ops CLI tests and the dashboard browser test: the CLI and the
browser talk real HTTP to the real app (SQLite in a temporary directory, MQTT
off), nothing is mocked.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import uvicorn
from fastapi import FastAPI

from central.settings import Settings

VIEWER = "dev-viewer"
OPERATOR = "dev-operator"
APPROVER = "dev-approver"
ADMIN = "dev-admin"


def make_settings(tmp: Path, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "environment": "test",
        "database_url": f"sqlite:///{tmp / 'central.sqlite3'}",
        "mqtt_enabled": False,
    }
    values.update(overrides)
    return Settings(**values)


def make_app(settings: Settings) -> FastAPI:
    from central.app import create_app

    app = create_app(settings)
    if not any(getattr(r, "path", "") == "/dashboard" for r in app.routes):
        # Until central/app.py includes it (see docs/dashboard.md).
        from central.dashboard import router

        app.include_router(router)
    return app


class LiveServer:
    def __init__(self, app: FastAPI, url: str, server: uvicorn.Server) -> None:
        self.app = app
        self.url = url
        self.server = server


@contextmanager
def serve(app: FastAPI, startup_timeout_s: float = 20.0) -> Iterator[LiveServer]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(app, log_level="warning", lifespan="on", access_log=False)
    server = uvicorn.Server(config)
    thread = threading.Thread(
        target=server.run, kwargs={"sockets": [sock]}, name="uvicorn-test", daemon=True
    )
    thread.start()
    deadline = time.monotonic() + startup_timeout_s
    while not server.started:
        if not thread.is_alive():
            raise RuntimeError("the coordinator app did not start (see the log above)")
        if time.monotonic() > deadline:
            server.should_exit = True
            raise RuntimeError("the coordinator app did not start in time")
        time.sleep(0.02)
    try:
        yield LiveServer(app, f"http://127.0.0.1:{port}", server)
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()
