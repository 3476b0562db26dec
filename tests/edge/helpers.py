"""Building blocks for edge agent tests: keys, configs, signed commands, a result listener."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from edge_agent.config import EdgeConfig, parse_config
from shared import topics
from shared.broker import MosquittoBroker
from shared.contracts import (
    AckedKind,
    AckedMessage,
    MessageAck,
    OrderReceipt,
    OrderResult,
    RefusalReport,
    RelayReport,
)
from shared.message_kinds import parse_agent_message
from shared.protect import ProtectSigner
from shared.signing import CommandSigner, generate_keypair, load_private_key

DEMO_BLOCK = "000102030405060708090A0B0C0D0E0F"
DEMO_AUTH = "D0D1D2D3D4D5D6D7D8D9DADBDCDDDEDF"


def make_signer(tmp: Path) -> tuple[CommandSigner, Path]:
    private, public = generate_keypair()
    pub = tmp / "coordinator.pub"
    pub.write_bytes(public)
    return CommandSigner(load_private_key(private)), pub


def make_protect_signer(tmp: Path) -> tuple[ProtectSigner, Path]:
    """The protect authority's key (issue 17): a separate pair from the coordinator's."""
    private, public = generate_keypair()
    pub = tmp / "protect.pub"
    pub.write_bytes(public)
    return ProtectSigner(load_private_key(private)), pub


def config_dict(tmp: Path, pub: Path, concentrator_id: str, broker_url: str = "mqtt://127.0.0.1:1",
                lines: dict[str, str] | None = None,
                protect_pub: Path | None = None) -> dict[str, Any]:
    """An agent's settings; without ``protect_pub`` the agent neither needs nor takes a
    protected list (tests of other rules), with it the production setting applies."""
    protect: dict[str, Any] = (
        {"public_key_file": str(protect_pub)} if protect_pub else {"require_list": False}
    )
    return {
        "agent": {"concentrator_id": concentrator_id, "data_dir": str(tmp / "data"),
                  "status_interval_s": 0.5},
        "broker": {"url": broker_url, "password": "secret", "reconnect_min_s": 0.1,
                   "reconnect_max_s": 0.5, "keepalive_s": 5},
        "coordinator": {"public_key_file": str(pub)},
        "protect": protect,
        "executor": {"dlms_timeout_s": 0.5, "idle_poll_s": 0.05, "counter_block": 100},
        "lines": {k: {"port": v, "baudrate": 115200} for k, v in (lines or {}).items()},
        "keys": {"default": {"block_key": DEMO_BLOCK, "auth_key": DEMO_AUTH}},
    }


def make_config(tmp: Path, pub: Path, concentrator_id: str, **kw: Any) -> EdgeConfig:
    return parse_config(config_dict(tmp, pub, concentrator_id, **kw), environ={})


def wait_for(predicate: Callable[[], Any], timeout: float = 10.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


class Coordinator:
    """A stand-in for the central coordinator: publishes commands, collects receipts,
    results and refusal reports, and (given the signer, as the real one does after its
    commit) acknowledges each, unless ``acking`` is cleared."""

    def __init__(self, broker: MosquittoBroker, concentrator_id: str, client_id: str,
                 signer: CommandSigner | None = None) -> None:
        self.cid = concentrator_id
        self.signer = signer
        self.acking = signer is not None
        self.acks_sent = 0
        self.results: list[OrderResult] = []
        self.receipts: list[OrderReceipt] = []
        self.refusals: list[RefusalReport] = []
        self.relay_reports: list[RelayReport] = []
        self.ack_relay_reports = True  # off: relay reports stay in the agent's outbox
        self.raw: list[bytes] = []
        self.status: list[bytes] = []
        self._lock = threading.Lock()
        self._ready = threading.Event()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id,
                                  protocol=mqtt.MQTTv5)
        broker.add_coordinator(client_id)  # the broker makes the account the client id
        self.client.username_pw_set(client_id, broker.password)
        self.client.on_message = self._on_message
        self.client.on_subscribe = lambda *a: self._ready.set()
        self.client.on_connect = lambda c, u, f, rc, p: c.subscribe(
            [(topics.results(concentrator_id), 1), (topics.status(concentrator_id), 1)])
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = 600
        self.client.reconnect_delay_set(1, 1)
        self.client.connect(broker.host, broker.port, clean_start=False, properties=props)
        self.client.loop_start()
        assert self._ready.wait(10), "coordinator did not subscribe"

    def _on_message(self, client: Any, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        with self._lock:
            if msg.topic.endswith("/result"):
                message = parse_agent_message(msg.payload)
                if isinstance(message, OrderReceipt):
                    self.receipts.append(message)
                    key = message.order_id
                elif isinstance(message, RefusalReport):
                    self.refusals.append(message)
                    key = message.refusal_id
                elif isinstance(message, RelayReport):
                    self.relay_reports.append(message)
                    if self.acking and self.ack_relay_reports:
                        self.ack(message.kind, message.report_id)
                    return
                else:
                    self.raw.append(msg.payload)
                    self.results.append(message)
                    key = message.order_id
                if self.acking:
                    self.ack(message.kind, key)
            else:
                self.status.append(msg.payload)

    def ack(self, kind: AckedKind, key: str) -> None:
        """What the real coordinator sends once it committed the message."""
        assert self.signer is not None
        now = datetime.now(UTC)
        ack = MessageAck(command_id=f"ack-{uuid.uuid4().hex[:12]}", concentrator_id=self.cid,
                         issued_at=now, deadline=now + timedelta(hours=1),
                         acks=[AckedMessage(kind=kind, id=key)])
        self.client.publish(topics.commands(self.cid), self.signer.sign(ack), qos=1)
        self.acks_sent += 1

    def publish(self, payload: bytes, topic: str | None = None, retain: bool = False) -> None:
        info = self.client.publish(topic or topics.commands(self.cid), payload, qos=1, retain=retain)
        info.wait_for_publish(10)

    def by_order(self) -> dict[str, list[OrderResult]]:
        out: dict[str, list[OrderResult]] = {}
        with self._lock:
            for r in self.results:
                out.setdefault(r.order_id, []).append(r)
        return out

    def receipts_by_order(self) -> dict[str, list[OrderReceipt]]:
        out: dict[str, list[OrderReceipt]] = {}
        with self._lock:
            for r in self.receipts:
                out.setdefault(r.order_id, []).append(r)
        return out

    def result(self, order_id: str, timeout: float = 10.0) -> OrderResult:
        found: list[OrderResult] = wait_for(lambda: self.by_order().get(order_id), timeout,
                                            f"result of {order_id}")
        return found[0]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def dump_toml(data: dict[str, Any]) -> str:
    """Enough TOML for our config dicts (tables of scalars, one level of sub-tables)."""

    def scalar(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, int | float):
            return repr(v)
        return '"' + str(v).replace("\\", "\\\\").replace('"', '\\"') + '"'

    out: list[str] = []
    for section, values in data.items():
        subtables = {k: v for k, v in values.items() if isinstance(v, dict)}
        plain = {k: v for k, v in values.items() if not isinstance(v, dict)}
        if plain or not subtables:
            out.append(f"[{section}]")
            out += [f"{k} = {scalar(v)}" for k, v in plain.items()]
        for name, table in subtables.items():
            out.append(f"[{section}.{name}]")
            out += [f"{k} = {scalar(v)}" for k, v in table.items()]
    return "\n".join(out) + "\n"
