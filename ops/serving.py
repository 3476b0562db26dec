"""Run an ASGI app (the coordinator) on uvicorn in a thread, on 127.0.0.1.

For the demo and the tests, which need the real HTTP server inside their own
process and must stop it again; production uses ``rcd central run``.
"""

from __future__ import annotations

import socket
import threading
import time
from types import TracebackType
from typing import Any, Literal


class ThreadedServer:
    """uvicorn serving ``app`` on 127.0.0.1:``port`` (0: a free port, bound at once)."""

    def __init__(self, app: Any, *, port: int = 0, lifespan: Literal["on", "off"] = "on") -> None:
        import uvicorn

        self.app = app
        # Binding here, not in uvicorn, gives the port before start and no race for it.
        self._socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._socket.bind(("127.0.0.1", port))
        self.port: int = self._socket.getsockname()[1]
        config = uvicorn.Config(app, log_level="warning", lifespan=lifespan, access_log=False)
        self.server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self.server.run, kwargs={"sockets": [self._socket]}, name="uvicorn", daemon=True
        )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 30.0) -> ThreadedServer:
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if not self._thread.is_alive():
                self._socket.close()
                raise RuntimeError("the app did not start (see the log above)")
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"the app did not start within {timeout:.0f}s")
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        if self._thread.is_alive():
            self._thread.join(timeout=20)
        self._socket.close()

    def __enter__(self) -> ThreadedServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
