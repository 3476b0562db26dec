"""Run a private mosquitto with the configuration we ship (tests, demo, bench).

The shipped ``deploy/mosquitto/mosquitto.conf`` (main file) and its drop-in
``ami-rcd.conf`` (in a ``conf.d`` directory, as on Debian) are used as they are,
except for the lines that name host paths and the listener, which are pointed at
a temporary directory and a free port. So every test that passes through this
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
# The coordinator's account; the broker makes an account's name its client id
# (use_username_as_clientid), so every replica has its own (deploy/mosquitto/acl).
COORDINATOR_USER: Final = "rcd-central-1"
COORDINATOR_ACL: Final = "topic readwrite rcd/v1/#"


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
    """Our drop-in (``ami-rcd.conf``) with its paths and listener moved into ``work_dir``.

    Directives named in ``drop`` are left out, so mosquitto's own default applies
    (the fault suite drops ``autosave_interval``: delivery must not rest on it)."""
    dropped = frozenset(drop)
    replacements = {
        "password_file": f"password_file {work_dir / 'passwd'}",
        "acl_file": f"acl_file {work_dir / 'acl'}",
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
    missing = [d for d in replacements if not re.search(rf"^{d} ", text, re.MULTILINE)]
    if missing:
        raise BrokerError(f"shipped ami-rcd.conf lacks {', '.join(missing)}")
    return text


def render_main(template: str, *, work_dir: Path) -> str:
    """Our main file (``mosquitto.conf``) with persistence and conf.d in ``work_dir``."""
    replacements = {
        "persistence_location": f"persistence_location {work_dir}/",
        "include_dir": f"include_dir {work_dir / 'conf.d'}",
    }
    lines = []
    for line in template.splitlines():
        directive = line.split(" ", 1)[0]
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


def render_tls_listener(template: str, *, port: int, tls_dir: Path) -> str:
    """The shipped ``tls-listener.conf`` on ``port`` with its files in ``tls_dir``
    (``ca.crt``, ``broker.crt``, ``broker.key``)."""
    replacements = {
        "listener": f"listener {port} 127.0.0.1",
        "cafile": f"cafile {tls_dir / 'ca.crt'}",
        "certfile": f"certfile {tls_dir / 'broker.crt'}",
        "keyfile": f"keyfile {tls_dir / 'broker.key'}",
    }
    lines = []
    for line in template.splitlines():
        directive = line.split(" ", 1)[0]
        lines.append(line if line.startswith("#") else replacements.get(directive, line))
    return "\n".join(lines) + "\n"


def stop_process(process: subprocess.Popen[bytes] | None, grace_s: float = 10.0) -> None:
    """SIGTERM a broker process we started, SIGKILL it if it has not gone within
    ``grace_s``; nothing for one that is absent or already ended."""
    if process is None or process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=5)


def _hash_password(name: str, secret: str, work_dir: Path) -> str:
    """One ``user:hash`` line of a mosquitto password file, from ``mosquitto_passwd``."""
    tool = shutil.which("mosquitto_passwd") or "/usr/bin/mosquitto_passwd"
    with tempfile.NamedTemporaryFile("w", dir=work_dir, prefix="passwd-", delete=False) as scratch:
        scratch_path = Path(scratch.name)
    try:
        subprocess.run([tool, "-b", str(scratch_path), name, secret], check=True, capture_output=True)
        line = scratch_path.read_text()
    finally:
        scratch_path.unlink(missing_ok=True)
    return line if line.endswith("\n") else line + "\n"


class MosquittoBroker:
    """A mosquitto process on 127.0.0.1:``port`` with our config, ACL and users.

    Users are the coordinator account ``rcd-central-1`` plus any concentrator ids
    given; all share ``password`` unless ``add_user`` says otherwise.
    ``add_coordinator`` adds a replica account the way docs/deployment.md says
    (a password and an ACL block). ``stop``/``start`` keep the data directory, so
    persistence across a broker restart can be tested.
    """

    def __init__(
        self,
        users: Iterable[str] = (),
        *,
        password: str = "secret",
        port: int | None = None,
        work_dir: Path | None = None,
        drop: Iterable[str] = (),
        tls_dir: Path | None = None,
    ) -> None:
        self.port = port or free_port()
        self._drop = tuple(drop)
        # with tls_dir, the shipped TLS listener (client certificates) runs on tls_port too
        self.tls_dir = tls_dir
        self.tls_port = free_port() if tls_dir is not None else None
        self.host = "127.0.0.1"
        self.password = password
        self._own_dir = work_dir is None
        self.work_dir = work_dir or Path(tempfile.mkdtemp(prefix="rcd-mosquitto-"))
        self._users: dict[str, str] = {COORDINATOR_USER: password}
        for user in users:
            self._users[user] = password
        self._coordinators: list[str] = []
        self._hashed: dict[str, tuple[str, str]] = {}  # user: (password, its passwd line)
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

    def add_coordinator(self, name: str, password: str | None = None) -> None:
        """Add a coordinator replica's account: its own user and ACL block."""
        self._coordinators.append(name)
        self._write_acl()
        self.add_user(name, password)

    def _write_acl(self) -> None:
        text = (DEPLOY_DIR / "acl").read_text()
        blocks = "".join(f"\nuser {name}\n{COORDINATOR_ACL}\n" for name in self._coordinators)
        (self.work_dir / "acl").write_text(text + blocks)

    def _write_passwords(self) -> None:
        """Write the password file whole, then move it into place.

        mosquitto re-reads it on SIGHUP and drops every connected client whose user is
        missing from what it read: a file rewritten in place (truncated, then one
        ``mosquitto_passwd`` run per user) dropped the clients of a broker that reloaded
        meanwhile. Each user is hashed once, when added or when its password changes.
        """
        for name, secret in self._users.items():
            if self._hashed.get(name, (None, ""))[0] != secret:
                self._hashed[name] = (secret, _hash_password(name, secret, self.work_dir))
        text = "".join(line for _secret, line in self._hashed.values())
        path = self.work_dir / "passwd"
        staged = path.with_name("passwd.new")
        staged.write_text(text)
        os.replace(staged, path)

    # -- process ----------------------------------------------------------------
    def start(self) -> MosquittoBroker:
        # The main file as on a Debian host, our drop-in in its conf.d directory.
        main = render_main((DEPLOY_DIR / "mosquitto.conf").read_text(), work_dir=self.work_dir)
        (self.work_dir / "mosquitto.conf").write_text(main)
        (self.work_dir / "conf.d").mkdir(exist_ok=True)
        config = render_config(
            (DEPLOY_DIR / "ami-rcd.conf").read_text(),
            port=self.port,
            work_dir=self.work_dir,
            drop=self._drop,
        )
        if self.tls_dir is not None and self.tls_port is not None:
            tls_template = (DEPLOY_DIR / "tls-listener.conf").read_text()
            config += render_tls_listener(tls_template, port=self.tls_port, tls_dir=self.tls_dir)
        (self.work_dir / "conf.d" / "ami-rcd.conf").write_text(config)
        self._write_acl()
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
        stop_process(process)

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
