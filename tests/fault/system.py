"""The whole system, each part its own OS process, for the fault suite.

mosquitto with the shipped configuration (``shared.broker.MosquittoBroker``),
``rcd central run`` on a PostgreSQL database, one ``rcd edge run`` per concentrator,
``rcd sim --fleet`` with one HDLC line on a pty per concentrator and the PLC channel
model, and the Legacy receiver (``tests.fault.legacy_receiver``). Every part can be
killed (SIGKILL), frozen (SIGSTOP) and thawed (SIGCONT) by its pid, and restarted with
the same ports, data directory and database. The wiring follows ``ops.demo``, but as
processes instead of threads.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg

from firmware_sim.client import SimControl
from shared.broker import MosquittoBroker, free_port
from shared.protect_cli import PROTECT_USER, push, sign_list
from shared.signing import generate_keypair

CONCENTRATORS = ("DC-01", "DC-02", "DC-03")
METERS_PER_LINE = 12
ADMIN = "fault-admin-token-0001"
OPERATOR = ("legacy", "fault-operator-token-0002")
REPO = Path(__file__).resolve().parents[2]
KEYS = {
    "block_key": "000102030405060708090A0B0C0D0E0F",
    "auth_key": "D0D1D2D3D4D5D6D7D8D9DADBDCDDDEDF",
}
# Short policies so that a scenario fits in seconds (the defaults are hours).
COORDINATOR_ENV = {
    "RCD_ENVIRONMENT": "test",
    "RCD_DEADLINE_S": json.dumps({"disconnect": 20, "connect": 20, "arm": 20}),
    "RCD_RETRY": json.dumps({
        a: {"max_attempts": 2, "backoff_initial_s": 0.5, "backoff_max_s": 1.0}
        for a in ("disconnect", "connect", "arm")
    }),
    "RCD_SWEEP_INTERVAL_S": "0.5",
    "RCD_REPUBLISH_AFTER_S": "1",
    "RCD_REPUBLISH_MAX_S": "4",
    "RCD_EXPIRY_GRACE_S": "3",
    "RCD_APPROVAL_THRESHOLD": "100000",
    "RCD_DISCONNECTS_PER_MINUTE": "100000",
    "RCD_MQTT_PUBACK_TIMEOUT_S": "5",
    "RCD_SOAP_LEGACY_TIMEOUT_S": "2",
    "RCD_SOAP_RETRY_INITIAL_S": "0.2",
    "RCD_SOAP_RETRY_MAX_S": "1",
    "RCD_SOAP_POLL_INTERVAL_S": "0.2",
    "RCD_SOAP_CLAIM_S": "5",
    # a MessageID claimed by a coordinator that was killed is retaken after this long
    "RCD_SOAP_STALE_CLAIM_S": "5",
}


def meter_ids(concentrator: str) -> list[str]:
    short = concentrator.replace("-", "")
    return [f"{short}-M{n:02d}" for n in range(1, METERS_PER_LINE + 1)]


def concentrator_of(meter_id: str) -> str:
    return f"DC-{meter_id[2:4]}"


def wait_until(what: str, check: Callable[[], bool], timeout: float, step: float = 0.1) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(Exception):
            if check():
                return
        time.sleep(step)
    raise TimeoutError(f"{what} not within {timeout:.0f}s")


class Proc:
    """One part of the system as a child process in its own session."""

    def __init__(self, name: str, argv: list[str], log: Path, env: dict[str, str]) -> None:
        self.name = name
        self.argv = argv
        self.log = log
        self.env = env
        self.popen: subprocess.Popen[bytes] | None = None

    def start(self) -> Proc:
        with self.log.open("ab") as out:
            self.popen = subprocess.Popen(
                self.argv, stdout=out, stderr=subprocess.STDOUT, cwd=REPO,
                env={**os.environ, **self.env}, start_new_session=True,
            )
        return self

    @property
    def pid(self) -> int:
        assert self.popen is not None and self.popen.poll() is None, f"{self.name} not running"
        return self.popen.pid

    def kill(self) -> None:
        """kill -9: no clean-up of any kind."""
        if self.popen is not None and self.popen.poll() is None:
            os.kill(self.popen.pid, signal.SIGKILL)
            self.popen.wait(timeout=10)
        self.popen = None

    def freeze(self) -> None:
        os.kill(self.pid, signal.SIGSTOP)

    def thaw(self) -> None:
        os.kill(self.pid, signal.SIGCONT)

    def stop(self) -> None:
        if self.popen is None:
            return
        if self.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.popen.pid, signal.SIGCONT)
                os.kill(self.popen.pid, signal.SIGTERM)
            try:
                self.popen.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.kill()
        self.popen = None


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "shared.cli", *args]


class System:
    """Start with ``with System(work_dir, admin_url) as system:``."""

    def __init__(self, work_dir: Path, postgres_admin_url: str) -> None:
        self.work = work_dir
        self.pg_admin = postgres_admin_url
        self.db_name = f"rcd_fault_{secrets.token_hex(5)}"
        base = postgres_admin_url.rsplit("/", 1)[0]
        self.db_url = f"{base}/{self.db_name}"
        self.mqtt_password = secrets.token_urlsafe(12)
        # The shipped configuration, but mosquitto's default autosave_interval (30 min):
        # a kill -9 loses everything the broker was holding, and nothing may be lost.
        self.broker = MosquittoBroker(
            users=CONCENTRATORS, password=self.mqtt_password,
            work_dir=self._dir("broker"), drop=("autosave_interval",),
        )
        self.central_port = free_port()
        self.legacy_port = free_port()
        self.legacy_control_port = free_port()
        self.legacy_record = self.work / "legacy.jsonl"
        self.legacy_record.touch()
        self.parts: dict[str, Proc] = {}
        self.sim: SimControl | None = None
        self.serial_paths: dict[str, str] = {}
        self.http = httpx.Client(
            base_url=self.central_url, headers={"Authorization": f"Bearer {ADMIN}"},
            timeout=10,
        )

    def _dir(self, name: str) -> Path:
        path = self.work / name
        path.mkdir(parents=True, exist_ok=True)
        return path

    @property
    def central_url(self) -> str:
        return f"http://127.0.0.1:{self.central_port}"

    @property
    def legacy_url(self) -> str:
        return f"http://127.0.0.1:{self.legacy_port}/legacy/results"

    # ------------------------------------------------------------------ start / stop
    def __enter__(self) -> System:
        try:
            self._create_database()
            self.broker.start()
            self._push_protected_lists()
            self._start_sim()
            self._start_legacy()
            private_pem, public_pem = generate_keypair()
            (self.work / "coordinator.pub").write_bytes(public_pem)
            self._central_env = {
                **COORDINATOR_ENV,
                "RCD_DATABASE_URL": self.db_url.replace("postgresql://", "postgresql+psycopg://"),
                "RCD_MQTT_HOST": "127.0.0.1",
                "RCD_MQTT_PORT": str(self.broker.port),
                "RCD_MQTT_PASSWORD": self.mqtt_password,
                # Legacy's endpoint is configuration: the ReplyAddress is honoured under it
                "RCD_SOAP_LEGACY_ENDPOINT": self.legacy_url,
                "RCD_SIGNING_KEY_PEM": private_pem.decode(),
                "RCD_API_TOKENS": json.dumps({
                    ADMIN: {"name": "fault-admin", "role": "admin"},
                    OPERATOR[1]: {"name": OPERATOR[0], "role": "operator"},
                }),
            }
            self.parts["central"] = Proc(
                "central",
                _cli("central", "run", "--port", str(self.central_port), "--log-level", "warning"),
                self.work / "central.log", self._central_env,
            )
            self.start_central()
            self._import_registry()
            for c in CONCENTRATORS:
                self.parts[c] = Proc(
                    c, _cli("edge", "run", "--config", str(self._agent_config(c))),
                    self.work / f"agent-{c}.log", {},
                ).start()
            self.wait_agents_ready()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _push_protected_lists(self) -> None:
        """As in production: the protect authority's key, and a list (none protected
        here) retained for each concentrator before its agent starts."""
        private_pem, public_pem = generate_keypair()
        (self.work / "protect.key").write_bytes(private_pem)
        (self.work / "protect.pub").write_bytes(public_pem)
        self.broker.add_user(PROTECT_USER)
        for c in CONCENTRATORS:
            push(sign_list(self.work / "protect.key", c, 1, []), host=self.broker.host,
                 port=self.broker.port, password=self.mqtt_password)

    def close(self) -> None:
        for proc in reversed(list(self.parts.values())):
            proc.stop()
        if self.broker.pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.broker.pid, signal.SIGCONT)
        self.broker.close()
        self.http.close()
        with contextlib.suppress(Exception), psycopg.connect(self.pg_admin, autocommit=True) as c:
            c.execute(f'ALTER DATABASE "{self.db_name}" ALLOW_CONNECTIONS true')
            c.execute(f'DROP DATABASE IF EXISTS "{self.db_name}" WITH (FORCE)')

    def _create_database(self) -> None:
        with psycopg.connect(self.pg_admin, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{self.db_name}"')

    def _start_sim(self) -> None:
        fleet = self.work / "fleet.toml"
        lines, meters = [], []
        for n, c in enumerate(CONCENTRATORS):
            # A PLC segment as in the demo: 20 ms per frame, 9.6 kbit/s, reproducible.
            lines.append(
                f'[[line]]\nline_id = "{c}-plc1"\nlatency_s = 0.02\nbit_rate = 9600\n'
                f"loss = 0.0\nseed = {n}\n"
            )
            for k, m in enumerate(meter_ids(c), start=1):
                meters.append(
                    f'[[meter]]\nmeter_id = "{m}"\ntransport = "hdlc"\nline_id = "{c}-plc1"\n'
                    f'hdlc_address = {0x10 + k}\ncontrol_mode = 2\nrelay = "connected"\n'
                )
        fleet.write_text("\n".join(lines + meters))
        out = self.work / "sim.out"
        proc = Proc("sim", _cli("sim", "--fleet", str(fleet), "--json"), out, {}).start()
        self.parts["sim"] = proc
        table: dict[str, Any] = {}

        def ready() -> bool:
            first = out.read_text().splitlines()[:1]
            if first and first[0].startswith("{"):
                table.update(json.loads(first[0]))
            return bool(table)

        wait_until("simulator table", ready, 20)
        self.sim = SimControl(table["control_url"])
        for m in table["meters"]:
            self.serial_paths[m["line_id"]] = m["serial_path"]

    def _start_legacy(self) -> None:
        argv = [
            sys.executable, "-m", "tests.fault.legacy_receiver", "--port", str(self.legacy_port),
            "--control-port", str(self.legacy_control_port), "--record", str(self.legacy_record),
        ]
        self.parts["legacy"] = Proc("legacy", argv, self.work / "legacy.log", {}).start()
        wait_until("Legacy receiver", lambda: "ready" in (self.work / "legacy.log").read_text(), 20)

    def start_central(self) -> None:
        self.parts["central"].start()
        wait_until(
            "coordinator /health",
            lambda: httpx.get(f"{self.central_url}/health", timeout=1).status_code == 200, 60,
        )

    def _agent_config(self, concentrator: str) -> Path:
        data = self._dir(f"agent-{concentrator}")
        path = data / "agent.toml"
        path.write_text(
            f"""[agent]
concentrator_id = "{concentrator}"
data_dir = "{data}"
status_interval_s = 1
log_level = "info"
resend_initial_s = 1
resend_max_s = 4

[broker]
url = "mqtt://127.0.0.1:{self.broker.port}"
password = "{self.mqtt_password}"
reconnect_min_s = 0.2
reconnect_max_s = 1

[coordinator]
public_key_file = "{self.work / 'coordinator.pub'}"

[protect]
public_key_file = "{self.work / 'protect.pub'}"

[executor]
dlms_timeout_s = 1.0
idle_poll_s = 0.1

[lines.plc1]
port = "{self.serial_paths[f'{concentrator}-plc1']}"
baudrate = 9600

[keys.default]
block_key = "{KEYS['block_key']}"
auth_key = "{KEYS['auth_key']}"
"""
        )
        return path

    def _import_registry(self) -> None:
        buffer = io.StringIO()
        writer = csv.writer(buffer)
        writer.writerow([
            "meter_id", "concentrator_id", "topology", "transport", "line_id", "hdlc_address",
            "commissioned", "protected_customer",
        ])
        for c in CONCENTRATORS:
            for k, m in enumerate(meter_ids(c), start=1):
                writer.writerow([m, c, "concentrated", "hdlc", "plc1", 0x10 + k, "true", "false"])
        response = self.http.post(
            "/api/v1/meters/import", content=buffer.getvalue(),
            headers={"Content-Type": "text/csv"},
        )
        response.raise_for_status()

    def wait_agents_ready(self, timeout: float = 60) -> None:
        def ready() -> bool:
            rows = self.http.get("/api/v1/concentrators").json()
            good = [
                r["id"] for r in rows
                if r["online"] and r["agent_table_generation"] == r["table_generation"]
            ]
            return set(CONCENTRATORS) <= set(good)

        wait_until("agents online with their meter tables", ready, timeout, 0.3)

    # ------------------------------------------------------------------ faults
    def part(self, name: str) -> Proc:
        return self.parts[name]

    def broker_kill(self) -> None:
        self.broker.kill()

    def broker_start(self) -> None:
        self.broker.start()

    def broker_signal(self, sig: signal.Signals) -> None:
        assert self.broker.pid is not None
        os.kill(self.broker.pid, sig)

    def legacy_mode(self, mode: str, delay_s: float = 0.0) -> None:
        httpx.post(
            f"http://127.0.0.1:{self.legacy_control_port}/mode",
            json={"mode": mode, "delay_s": delay_s}, timeout=5,
        ).raise_for_status()

    @contextlib.contextmanager
    def admin_sql(self) -> Iterator[psycopg.Connection[Any]]:
        with psycopg.connect(self.pg_admin, autocommit=True) as conn:
            yield conn

    def terminate_backends(self) -> int:
        with self.admin_sql() as conn:
            rows = conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = %s AND pid <> pg_backend_pid()", (self.db_name,),
            ).fetchall()
        return len(rows)

    def database_allow(self, allow: bool) -> None:
        with self.admin_sql() as conn:
            conn.execute(
                f'ALTER DATABASE "{self.db_name}" ALLOW_CONNECTIONS {"true" if allow else "false"}'
            )

    # ------------------------------------------------------------------ observation
    @contextlib.contextmanager
    def db(self) -> Iterator[psycopg.Connection[Any]]:
        with psycopg.connect(self.db_url, autocommit=True) as conn:
            yield conn

    def legacy_deliveries(self, since: float = 0.0) -> list[dict[str, Any]]:
        rows = [json.loads(line) for line in self.legacy_record.read_text().splitlines() if line]
        return [r for r in rows if r["at"] >= since]

    def log_tail(self, name: str, lines: int = 30) -> str:
        path = self.work / (f"agent-{name}.log" if name in CONCENTRATORS else f"{name}.log")
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
