"""``rcd demo``: the whole system, end to end, on one machine.

What it starts (and stops again, whatever happens):

* an MQTT broker: mosquitto with our shipped configuration and ACL when it is
  installed, otherwise an embedded broker (amqtt, MQTT 3.1.1) so that pip alone
  suffices;
* the coordinator (FastAPI on uvicorn, SQLite) with its SOAP gateway and
  dashboard;
* a simulated fleet speaking real DLMS bytes: three concentrators with twenty
  meters each on an HDLC line (a pty) with a PLC channel model, plus one
  point-to-point meter over TCP behind a router;
* one edge agent per concentrator / router;
* a Legacy stand-in that receives the results (step 9).

Then it does what Legacy does: one SOAP ``CreateEndDeviceControls`` (sent with
zeep from the served WSDL) carrying disconnects and reconnects, including the
hard cases, and waits for every order to end. It prints a summary and checks
each scenario's outcome: the exit status says whether every one was as
expected.
"""

from __future__ import annotations

import contextlib
import csv
import io
import logging
import secrets
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Literal, TextIO

import httpx

from ops.demo_broker import BrokerKind, start_broker
from ops.demo_console import serving_lines, write_profile
from ops.demo_relay import AUDIT, RelayStory
from ops.demo_report import DemoReport, Row, check_row, final_outcome, render_table
from ops.demo_scenarios import (
    CONCENTRATORS,
    CONTROL_CODES,
    ROUTER,
    SCENARIOS,
    fleet_plan,
    refused_ids,
)
from ops.legacy import LegacyStandIn
from ops.serving import ThreadedServer
from shared.protect_cli import PROTECT_USER

log = logging.getLogger("rcd.demo")

Role = Literal["viewer", "operator", "approver", "admin"]
MqttProtocol = Literal["5", "3.1.1"]
ROLES: tuple[Role, ...] = ("viewer", "operator", "approver", "admin")


class Demo:
    def __init__(
        self,
        work_dir: Path,
        *,
        broker: BrokerKind = "auto",
        port: int = 0,
        out: TextIO = sys.stdout,
        timeout_s: float = 180.0,
    ) -> None:
        self.work_dir = work_dir
        self.broker_kind = broker
        self.port = port
        self.out = out
        self.timeout_s = timeout_s
        self.tokens: dict[Role, str] = {
            role: f"demo-{role}-{secrets.token_hex(8)}" for role in ROLES
        }
        self.plans = fleet_plan()

    # -- output -------------------------------------------------------------------------
    def say(self, text: str) -> None:
        print(text, file=self.out, flush=True)

    # -- the run -----------------------------------------------------------------------
    @contextlib.contextmanager
    def running(self) -> Iterator[DemoRunning]:
        from shared.broker import COORDINATOR_USER
        from shared.signing import generate_keypair

        private_pem, public_pem = generate_keypair()
        key_dir = self.work_dir / "keys"
        key_dir.mkdir(parents=True, exist_ok=True)
        (key_dir / "coordinator.pub").write_bytes(public_pem)
        users = [*CONCENTRATORS, ROUTER]
        with contextlib.ExitStack() as stack:
            host, mqtt_port, passwords, broker_text = stack.enter_context(
                start_broker(self.broker_kind, [*users, PROTECT_USER])
            )
            protocol: MqttProtocol = "3.1.1" if "embedded" in broker_text else "5"
            self.say(f"broker      {broker_text} on {host}:{mqtt_port}")
            self._protect(key_dir, users, host, mqtt_port, passwords[PROTECT_USER], protocol)
            fleet = stack.enter_context(self._fleet())
            self.say(
                f"meters      {len(self.plans)} simulated DLMS meters, control {fleet.control_url}"
            )
            legacy = stack.enter_context(LegacyStandIn())
            self.say(f"legacy      stand-in receiving results at {legacy.url}")
            central = self._central(
                host,
                mqtt_port,
                passwords[COORDINATOR_USER],
                protocol,
                private_pem.decode(),
                legacy.url,
            )
            server = ThreadedServer(central, port=self.port).start()
            stack.callback(server.stop)
            self.say(f"coordinator {server.url}  (dashboard {server.url}/dashboard)")
            self._import_registry(server.url, {"P2P-0001": fleet.tcp_port("P2P-0001")})
            for concentrator in users:
                agent = self._agent(
                    concentrator, fleet, host, mqtt_port, passwords[concentrator], protocol, key_dir
                )
                stack.enter_context(agent)
            self.say(f"agents      {len(users)} edge agents: {', '.join(users)}")
            yield DemoRunning(self, server, fleet, legacy)

    def _protect(
        self, key_dir: Path, users: list[str], host: str, port: int, password: str,
        protocol: str,
    ) -> None:
        """The protect authority (issue 17): its own key; one signed list per
        concentrator with its Ley 21.304 meters, retained before the agents start."""
        from shared.keys_cli import write_keypair
        from shared.protect_cli import push, sign_list

        with contextlib.redirect_stdout(io.StringIO()):
            write_keypair(key_dir, "protect", True, "", "")
        listed = 0
        for concentrator in users:
            meters = [p.meter_id for p in self.plans
                      if p.concentrator_id == concentrator and p.protected]
            listed += len(meters)
            payload = sign_list(key_dir / "protect.key", concentrator, 1, meters)
            push(payload, host=host, port=port, password=password or None, protocol=protocol)
        self.say(f"protect     {len(users)} signed protected lists ({listed} meters), "
                 "protect key apart from the coordinator's")

    @contextlib.contextmanager
    def _fleet(self) -> Iterator[Any]:
        from firmware_sim.fleet import FleetSpec, LineSpec
        from firmware_sim.fleet import MeterSpec as MeterSpec
        from firmware_sim.runner import running_fleet

        lines = tuple(
            # A PLC segment: 20 ms per frame, 9.6 kbit/s, reproducible.
            LineSpec(line_id=f"{c}-plc1", latency_s=0.02, bit_rate=9600, loss=0.0, seed=n)
            for n, c in enumerate(CONCENTRATORS)
        )
        meters: list[MeterSpec] = []
        for plan in self.plans:
            meters.append(
                MeterSpec(
                    meter_id=plan.meter_id,
                    transport=plan.transport,
                    line_id=f"{plan.concentrator_id}-plc1" if plan.transport == "hdlc" else None,
                    hdlc_address=plan.hdlc_address,
                    control_mode=plan.control_mode,
                    relay=plan.relay,
                    commissioned=plan.sim_commissioned,
                    faults=(plan.fault,) if plan.fault else (),
                    energy_wh=10_000.0 + 137.0 * len(meters),
                    late_answer_s=3.0,
                )
            )
        with running_fleet(FleetSpec(meters=tuple(meters), lines=lines)) as fleet:
            yield fleet

    def _central(
        self,
        host: str,
        port: int,
        password: str,
        protocol: MqttProtocol,
        private_pem: str,
        legacy_url: str,
    ) -> Any:
        from central.app import create_app
        from central.settings import RetrySettings, Settings, TokenEntry
        from central.soap.config import SoapSettings

        quick = RetrySettings(max_attempts=3, backoff_initial_s=0.5, backoff_max_s=2.0)
        settings = Settings(
            environment="development",
            database_url=f"sqlite:///{self.work_dir / 'central.sqlite3'}",
            api_tokens={
                token: TokenEntry(name=f"demo-{role}", role=role)
                for role, token in self.tokens.items()
            },
            mqtt_host=host,
            mqtt_port=port,
            mqtt_password=password or "unused",
            mqtt_protocol=protocol,
            signing_key_pem=private_pem,
            retry={"disconnect": quick, "connect": quick, "arm": quick},
            deadline_s={"disconnect": 600, "connect": 600, "arm": 600},
            sweep_interval_s=0.5,
            # DC02-M01 shows a disconnect finding its meter already off; the relay audit
            # reads it first, and the supply-off hold would keep that order waiting
            hold_supply_off=False,
        )
        app = create_app(settings)
        app.state.soap_settings = SoapSettings(
            legacy_endpoint=legacy_url,
            retry_initial_s=0.2,
            retry_max_s=2.0,
            poll_interval_s=0.2,
        )
        return app

    def _import_registry(self, url: str, tcp_ports: dict[str, int]) -> None:
        buffer = io.StringIO()
        writer = csv.writer(buffer)
        writer.writerow(
            [
                "meter_id",
                "concentrator_id",
                "topology",
                "transport",
                "line_id",
                "hdlc_address",
                "host",
                "port",
                "commissioned",
                "protected_customer",
            ]
        )
        for plan in self.plans:
            writer.writerow(
                [
                    plan.meter_id,
                    plan.concentrator_id,
                    "concentrated" if plan.transport == "hdlc" else "point_to_point",
                    plan.transport,
                    "plc1" if plan.transport == "hdlc" else "",
                    plan.hdlc_address or "",
                    "127.0.0.1" if plan.transport == "tcp" else "",
                    tcp_ports.get(plan.meter_id, ""),
                    str(plan.registry_commissioned).lower(),
                    str(plan.protected).lower(),
                ]
            )
        response = httpx.post(
            f"{url}/api/v1/meters/import",
            content=buffer.getvalue(),
            headers={"Authorization": f"Bearer {self.tokens['admin']}", "Content-Type": "text/csv"},
            timeout=30,
        )
        response.raise_for_status()
        self.say(f"registry    {len(self.plans)} meters imported through the REST API")

    def _agent(
        self,
        concentrator: str,
        fleet: Any,
        host: str,
        port: int,
        password: str,
        protocol: str,
        key_dir: Path,
    ) -> Any:
        from edge_agent.agent import EdgeAgent
        from edge_agent.config import parse_config

        lines = {}
        if concentrator in CONCENTRATORS:
            lines["plc1"] = {"port": fleet.serial_path(f"{concentrator}-plc1"), "baudrate": 9600}
        data_dir = self.work_dir / "agents" / concentrator
        data_dir.mkdir(parents=True, exist_ok=True)
        config = parse_config(
            {
                "agent": {
                    "concentrator_id": concentrator,
                    "data_dir": str(data_dir),
                    "status_interval_s": 2,
                    "log_format": "kv",
                    "log_level": "warning",
                },
                "broker": {
                    "url": f"mqtt://{host}:{port}",
                    "password": password or None,
                    "protocol": protocol,
                    "reconnect_min_s": 0.2,
                    "reconnect_max_s": 2,
                },
                "coordinator": {"public_key_file": str(key_dir / "coordinator.pub")},
                "protect": {"public_key_file": str(key_dir / "protect.pub")},
                "executor": {"dlms_timeout_s": 1.0, "idle_poll_s": 0.1},
                "audit": AUDIT,
                "lines": lines,
                "keys": {
                    "default": {
                        "block_key": "000102030405060708090A0B0C0D0E0F",
                        "auth_key": "D0D1D2D3D4D5D6D7D8D9DADBDCDDDEDF",
                    }
                },
            },
            environ={},
        )
        return EdgeAgent(config)  # started by the caller's ExitStack (enter_context)


class DemoRunning:
    def __init__(
        self, demo: Demo, server: ThreadedServer, fleet: Any, legacy: LegacyStandIn
    ) -> None:
        self.demo = demo
        self.server = server
        self.fleet = fleet
        self.legacy = legacy
        self.headers = {"Authorization": f"Bearer {demo.tokens['viewer']}"}

    def wait_for_agents(self, timeout: float = 30) -> None:
        """Every concentrator online and holding the registry's meter table."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            rows = httpx.get(
                f"{self.server.url}/api/v1/concentrators", headers=self.headers, timeout=10
            ).json()
            ready = [
                row["id"]
                for row in rows
                if row["online"] and row["agent_table_generation"] == row["table_generation"]
            ]
            if len(ready) == len(CONCENTRATORS) + 1:
                self.demo.say(
                    f"agents      online with their meter tables: {', '.join(sorted(ready))}"
                )
                return
            time.sleep(0.2)
        raise RuntimeError(f"agents not ready after {timeout}s: {rows}")

    def send_orders(self) -> dict[str, Any]:
        """What Legacy does: one CreateEndDeviceControls, through zeep from the served WSDL."""
        import requests
        import zeep
        from requests.auth import HTTPBasicAuth
        from zeep.transports import Transport

        session = requests.Session()
        session.auth = HTTPBasicAuth("demo-operator", self.demo.tokens["operator"])
        transport = Transport(session=session, timeout=30)  # type: ignore[no-untyped-call]
        client = zeep.Client(
            f"{self.server.url}/soap/ExecuteEndDeviceControls?wsdl", transport=transport
        )  # type: ignore[no-untyped-call]
        controls = []
        for action in ("disconnect", "connect"):
            meters = [s.meter_id for s in SCENARIOS if s.action == action]
            controls.append(
                {
                    "issuerID": "LEGACY",
                    "issuerTrackingID": f"DEMO-{action.upper()}",
                    "reason": "nonPayment" if action == "disconnect" else "paymentReceived",
                    "EndDeviceControlType": {"ref": CONTROL_CODES[action]},
                    "EndDevices": [
                        {"Names": [{"name": meter, "NameType": {"name": "MeterNumber"}}]}
                        for meter in meters
                    ],
                }
            )
        reply = client.service.CreateEndDeviceControls(
            Header={
                "Verb": "create",
                "Noun": "EndDeviceControls",
                "Source": "LEGACY",
                "AsyncReplyFlag": True,
                "ReplyAddress": self.legacy.url,
                "MessageID": f"demo-{secrets.token_hex(6)}",
                "CorrelationID": "demo-correlation",
            },
            # The demo may run on a weekend or holiday: its disconnects are flagged for
            # it (our weekend flag, a standard Request/Option).
            Request={"Option": [{"name": "weekendAllowed", "value": "true"}]},
            Payload={"EndDeviceControls": {"EndDeviceControl": controls}},
        )
        refused = {}
        for error in reply.Reply.Error or []:
            if error.level == "INFORM":  # the state of an accepted order
                continue
            meter = getattr(getattr(error, "ID", None), "_value_1", None) or ""
            refused[meter] = error.reason
        self.demo.say(
            f"legacy      sent {sum(len(c['EndDevices']) for c in controls)} orders over SOAP: "
            f"Reply {reply.Reply.Result}, {len(refused)} refused at once"
        )
        return refused

    def approve_held(self) -> None:
        """A second person (the demo's approver) releases what waits for approval: on a
        weekend or holiday the special flag lifts the working-day rule only so."""
        held = {
            row["batch_id"]
            for row in self.orders().values()
            if row["needs_approval"] and row["approved_by"] is None and row["batch_id"]
        }
        headers = {"Authorization": f"Bearer {self.demo.tokens['approver']}"}
        for batch_id in sorted(held):
            response = httpx.post(
                f"{self.server.url}/api/v1/batches/{batch_id}/approve", headers=headers, timeout=10
            )
            response.raise_for_status()
        if held:
            self.demo.say(f"approver    demo-approver released {len(held)} held batch(es)")

    def orders(self) -> dict[str, dict[str, Any]]:
        rows = httpx.get(
            f"{self.server.url}/api/v1/orders",
            params={"limit": 1000},
            headers=self.headers,
            timeout=10,
        ).json()
        return {row["meter_id"]: row for row in rows}

    def order_detail(self, order_id: str) -> dict[str, Any]:
        response = httpx.get(
            f"{self.server.url}/api/v1/orders/{order_id}", headers=self.headers, timeout=10
        )
        response.raise_for_status()
        result: dict[str, Any] = response.json()
        return result

    def work_orders(self) -> dict[str, dict[str, Any]]:
        rows = httpx.get(
            f"{self.server.url}/api/v1/work-orders", headers=self.headers, timeout=10
        ).json()
        return {row["order_id"]: row for row in rows}

    def wait_until_reported(self, progress: Callable[[int, int], None], timeout: float) -> None:
        expected = {s.meter_id for s in SCENARIOS}
        deadline = time.monotonic() + timeout
        ended = 0
        while time.monotonic() < deadline:
            orders = self.orders()
            ended = sum(1 for m in expected if orders.get(m, {}).get("state") == "reported")
            progress(ended, len(expected))
            if ended == len(expected) and self.legacy.wait_for_meters(expected - refused_ids(), 0):
                return
            time.sleep(0.5)
        raise TimeoutError(f"only {ended} of {len(expected)} orders ended within {timeout:.0f}s")


def check_rows(running: DemoRunning, refused_now: dict[str, str]) -> list[Row]:
    orders = running.orders()
    work_orders = running.work_orders()
    legacy = running.legacy.by_meter()
    rows = []
    for scenario in SCENARIOS:
        row = Row(scenario)
        order = orders.get(scenario.meter_id)
        if order is not None:
            detail = running.order_detail(order["id"])
            row.order_id = order["id"]
            row.outcome = final_outcome(detail)
            row.reason = order.get("result_reason") or order.get("refusal_code") or ""
            if order.get("energy_value") is not None:
                row.energy = f"{order['energy_value']:.0f} {order.get('energy_unit') or ''}".strip()
            row.attempts = int(order.get("attempts") or 0)
            if order.get("finished_at"):
                started = _parse_time(order["created_at"])
                row.seconds = _parse_time(order["finished_at"]) - started
            wo = work_orders.get(order["id"])
            row.work_order = f"WO-{wo['id']}" if wo else ""
        elif scenario.meter_id in refused_now:
            row.outcome = "rejected"
            row.reason = refused_now[scenario.meter_id]
        event = legacy.get(scenario.meter_id)
        row.legacy_event = event.event_code if event else ""
        check_row(row, scenario, refused_now, event)
        rows.append(row)
    return rows


def _parse_time(text: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def run_demo(
    *,
    work_dir: Path | None = None,
    broker: BrokerKind = "auto",
    serve: bool = False,
    port: int = 0,
    out: TextIO = sys.stdout,
    timeout_s: float = 180.0,
    stop_event: threading.Event | None = None,
    relay_story: bool = True,
) -> DemoReport:
    started = time.monotonic()
    own_dir = work_dir is None
    directory = work_dir or Path(tempfile.mkdtemp(prefix="rcd-demo-"))
    demo = Demo(directory, broker=broker, port=port, out=out, timeout_s=timeout_s)
    try:
        with demo.running() as running:
            running.wait_for_agents()
            story = (
                RelayStory(running.server.url, running.headers, running.fleet.control_url,
                           running.legacy, demo.say)
                if relay_story
                else None
            )
            refused_now = running.send_orders()
            running.approve_held()
            last = [-1]

            def progress(done: int, total: int) -> None:
                if story is not None:
                    story.tick()
                if done != last[0]:
                    last[0] = done
                    demo.say(f"progress    {done}/{total} orders ended and reported to Legacy")

            running.wait_until_reported(progress, timeout_s)
            rows = check_rows(running, refused_now)
            relay = story.finish(timeout_s=60) if story is not None else None
            report = DemoReport(
                rows, f"{running.server.url}/dashboard", "", time.monotonic() - started, relay
            )
            demo.say("")
            demo.say(render_table(rows))
            demo.say("")
            for line in relay.lines() if relay is not None else []:
                demo.say(line)
            good = sum(row.ok for row in rows)
            demo.say(f"{good} of {len(rows)} scenarios as expected in {report.elapsed_s:.1f}s")
            if serve:
                url = running.server.url
                tokens = {str(role): token for role, token in demo.tokens.items()}
                profile = write_profile(directory, url, tokens)
                for line in serving_lines(url, tokens, profile):
                    demo.say(line)
                (stop_event or threading.Event()).wait()
            else:  # everything stops now: no link to a server that is gone
                demo.say("dashboard   stops with the demo; `rcd demo --serve` keeps it running")
            return report
    finally:
        if own_dir:
            shutil.rmtree(directory, ignore_errors=True)
            if serve:
                demo.say(f"stopped     everything; removed {directory}")
