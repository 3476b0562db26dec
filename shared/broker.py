"""Run a private mosquitto with the configuration we ship (tests, demo, bench).

The shipped ``deploy/mosquitto/mosquitto.conf`` is used as it is, except for
the lines that name host paths and the listener, which are pointed at a
temporary directory and a free port. So every test that passes through this
broker also checks our production settings: no anonymous access, the ACL, the
queue limits.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterable
from pathlib import Path
from types import TracebackType
from typing import Final

DEPLOY_DIR: Final = Path(__file__).resolve().parent.parent / "deploy" / "mosquitto"
COORDINATOR_USER: Final = "coordinator"


class BrokerError(RuntimeError):
    """mosquitto could not be found, configured or started."""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def mosquitto_binary() -> str:
    for candidate in (shutil.which("mosquitto"), "/usr/sbin/mosquitto"):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    raise BrokerError("mosquitto is not installed (apt-get install mosquitto)")


def render_config(
    template: str, *, port: int, work_dir: Path, drop: Iterable[str] = ()
) -> str:
    """Our shipped configuration with paths and listener moved into ``work_dir``.

    Directives named in ``drop`` are left out, so mosquitto's own default applies
    (the fault suite drops ``autosave_interval``: delivery must not rest on it)."""
    dropped = frozenset(drop)
    replacements = {
        "password_file": f"password_file {work_dir / 'passwd'}",
        "acl_file": f"acl_file {work_dir / 'acl'}",
        "persistence_location": f"persistence_location {work_dir}/",
        "listener": f"listener {port} 127.0.0.1",
    }
    lines = []
    for line in template.splitlines():
        directive = line.split(" ", 1)[0]
        if directive in dropped:
            lines.append(f"# {line}  (left out: mosquitto's default applies)")
            continue
        lines.append(replacements.get(directive, line) if not line.startswith("#") else line)
    text = "\n".join(lines) + "\n"
    if os.geteuid() == 0:
        # As root mosquitto would switch to its own user, who cannot read a
        # private temporary directory; a test broker keeps our identity.
        text += "user root\n"
    missing = [d for d in replacements if not re.search(rf"^{d} ", text, re.MULTILINE)]
    if missing:
        raise BrokerError(f"shipped mosquitto.conf lacks {', '.join(missing)}")
    return text


class MosquittoBroker:
    """A mosquitto process on 127.0.0.1:``port`` with our config, ACL and users.

    Users are ``coordinator`` plus any concentrator ids given; all share
    ``password`` unless ``passwords`` says otherwise. ``stop``/``start`` keep
    the data directory, so persistence across a broker restart can be tested.
    """

    def __init__(
        self,
        users: Iterable[str] = (),
        *,
        password: str = "secret",
        port: int | None = None,
        work_dir: Path | None = None,
        drop: Iterable[str] = (),
    ) -> None:
        self.port = port or free_port()
        self._drop = tuple(drop)
        self.host = "127.0.0.1"
        self.password = password
        self._own_dir = work_dir is None
        self.work_dir = work_dir or Path(tempfile.mkdtemp(prefix="rcd-mosquitto-"))
        self._users: dict[str, str] = {COORDINATOR_USER: password}
        for user in users:
            self._users[user] = password
        self._process: subprocess.Popen[bytes] | None = None
        self.log_path = self.work_dir / "mosquitto.log"

    # -- users ------------------------------------------------------------------
    def add_user(self, name: str, password: str | None = None) -> None:
        """Add a user; a running broker reloads its password file (SIGHUP)."""
        self._users[name] = password or self.password
        self._write_passwords()
        if self._process is not None and self._process.poll() is None:
            self._process.send_signal(signal.SIGHUP)
            time.sleep(0.2)

    def _write_passwords(self) -> None:
        path = self.work_dir / "passwd"
        path.write_text("")
        tool = shutil.which("mosquitto_passwd") or "/usr/bin/mosquitto_passwd"
        for name, secret in self._users.items():
            subprocess.run([tool, "-b", str(path), name, secret], check=True, capture_output=True)

    # -- process ----------------------------------------------------------------
    def start(self) -> MosquittoBroker:
        template = (DEPLOY_DIR / "mosquitto.conf").read_text()
        (self.work_dir / "mosquitto.conf").write_text(
            render_config(template, port=self.port, work_dir=self.work_dir, drop=self._drop)
        )
        shutil.copyfile(DEPLOY_DIR / "acl", self.work_dir / "acl")
        self._write_passwords()
        log = open(self.log_path, "ab")
        try:
            self._process = subprocess.Popen(
                [mosquitto_binary(), "-c", str(self.work_dir / "mosquitto.conf")],
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        finally:
            log.close()
        self._wait_listening()
        return self

    def _wait_listening(self, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._process is not None and self._process.poll() is not None:
                raise BrokerError(f"mosquitto exited at start: {self.log_path.read_text()[-2000:]}")
            try:
                with socket.create_connection((self.host, self.port), timeout=0.2):
                    return
            except OSError:
                time.sleep(0.05)
        raise BrokerError(f"mosquitto did not listen on port {self.port} within {timeout}s")

    def stop(self) -> None:
        """Stop gracefully (SIGTERM): mosquitto writes its persistence file."""
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)

    def kill(self) -> None:
        """Crash it (SIGKILL): whatever was not autosaved is lost."""
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            process.kill()
            process.wait(timeout=5)

    @property
    def pid(self) -> int | None:
        """The process id while it runs (a fault test freezes it with SIGSTOP)."""
        return self._process.pid if self._process is not None else None

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    @property
    def url(self) -> str:
        return f"mqtt://{self.host}:{self.port}"

    def close(self) -> None:
        self.stop()
        if self._own_dir:
            shutil.rmtree(self.work_dir, ignore_errors=True)

    def __enter__(self) -> MosquittoBroker:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class EmbeddedBroker:
    """An in-process MQTT 3.1.1 broker (amqtt) for the zero-setup demo.

    Only for machines without mosquitto: it has no ACL, no persistence across
    restarts and no MQTT 5, so clients must be configured for MQTT 3.1.1.
    Never use it in the field.
    """

    def __init__(self, port: int | None = None) -> None:
        self.host = "127.0.0.1"
        self.port = port or free_port()
        self.password = ""
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None

    @property
    def url(self) -> str:
        return f"mqtt://{self.host}:{self.port}"

    def start(self) -> EmbeddedBroker:
        self._thread = threading.Thread(target=self._run, name="embedded-broker", daemon=True)
        self._thread.start()
        if not self._ready.wait(10) or self._error is not None:
            raise BrokerError(f"embedded broker did not start: {self._error}")
        return self

    def _run(self) -> None:
        from amqtt.broker import Broker

        async def serve() -> None:
            config = {
                "listeners": {"default": {"type": "tcp", "bind": f"{self.host}:{self.port}"}},
                "plugins": {"amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}},
            }
            broker = Broker(config)
            self._stop = asyncio.Event()
            try:
                await broker.start()
            except BaseException as exc:
                self._error = exc
                self._ready.set()
                raise
            self._ready.set()
            try:
                await self._stop.wait()
            finally:
                await broker.shutdown()

        self._loop = asyncio.new_event_loop()
        try:
            self._loop.run_until_complete(serve())
        except BaseException as exc:
            self._error = exc
            self._ready.set()
        finally:
            self._loop.close()

    def stop(self) -> None:
        loop, stop = self._loop, self._stop
        if loop is not None and stop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(stop.set)
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None

    close = stop

    def __enter__(self) -> EmbeddedBroker:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
