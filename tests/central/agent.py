"""A small test agent: logs in as its concentrator, verifies signed commands,
answers each order with a scripted result (published ``repeat`` times, as a
QoS 1 redelivery would) and publishes its status."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime

import paho.mqtt.client as paho
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from paho.mqtt.enums import CallbackAPIVersion

from shared import topics
from shared.codes import ControlState, Outcome, ReasonCode
from shared.contracts import (
    Attempt,
    CancelCommand,
    ConcentratorStatus,
    EnergyReading,
    MessageAck,
    MeterTableSync,
    OrderCommand,
    OrderReceipt,
    OrderResult,
    RelayReading,
)
from shared.errors import CommandReplayed
from shared.signing import CommandVerifier, MemorySeenCommands

Script = Callable[[OrderCommand], tuple[Outcome, ReasonCode | None]]

_STATE = {
    Outcome.CONNECTED: ControlState.CONNECTED,
    Outcome.DISCONNECTED: ControlState.DISCONNECTED,
    Outcome.ARMED: ControlState.READY_FOR_RECONNECTION,
}


def default_script(command: OrderCommand) -> tuple[Outcome, ReasonCode | None]:
    if command.meter_id.startswith("bad"):
        return Outcome.FAILED, ReasonCode.METER_NOT_RESPONDING
    return {"connect": Outcome.CONNECTED, "disconnect": Outcome.DISCONNECTED, "arm": Outcome.ARMED}[
        command.action.value
    ], None


class TestAgent:
    __test__ = False

    def __init__(
        self,
        host: str,
        port: int,
        concentrator_id: str,
        public_key: Ed25519PublicKey,
        *,
        password: str = "secret",
        script: Script = default_script,
        repeat: int = 2,
        answer: bool = True,
        receipts: bool = True,
    ) -> None:
        self.concentrator_id = concentrator_id
        self.verifier = CommandVerifier(public_key, concentrator_id, MemorySeenCommands())
        self.script = script
        self.repeat = repeat
        self.answer = answer
        self.receipts = receipts
        self.orders: list[OrderCommand] = []
        self.cancels: list[CancelCommand] = []
        self.tables: list[MeterTableSync] = []
        self.rejected: list[str] = []
        self.acks: list[MessageAck] = []
        self.copies: list[OrderCommand] = []  # the same command sent again (no receipt yet)
        self._lock = threading.Lock()
        self._ready = threading.Event()
        self.client = paho.Client(
            CallbackAPIVersion.VERSION2, client_id=f"agent-{concentrator_id}", protocol=paho.MQTTv5
        )
        self.client.username_pw_set(concentrator_id, password)
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message
        self.client.on_subscribe = lambda *_a: self._ready.set()
        self.client.connect(host, port)
        self.client.loop_start()
        if not self._ready.wait(10):
            raise RuntimeError("test agent could not subscribe")

    def _on_connect(self, client: paho.Client, *_args: object) -> None:
        client.subscribe(
            [
                (topics.commands(self.concentrator_id), 1),
                (topics.meter_table(self.concentrator_id), 1),
            ]
        )

    def publish_status(self, online: bool = True, queue_depth: int = 0) -> None:
        status = ConcentratorStatus(
            concentrator_id=self.concentrator_id,
            online=online,
            at=datetime.now(UTC),
            queue_depth=queue_depth,
        )
        self.client.publish(
            topics.status(self.concentrator_id), status.to_json(), qos=1, retain=True
        ).wait_for_publish(5)

    def _on_message(
        self, client: paho.Client, _userdata: object, message: paho.MQTTMessage
    ) -> None:
        try:
            command = self.verifier.verify(bytes(message.payload))
        except CommandReplayed as exc:
            if isinstance(exc.command, OrderCommand):
                with self._lock:
                    self.copies.append(exc.command)
            else:
                self.rejected.append(str(exc))
            return
        except Exception as exc:
            self.rejected.append(str(exc))
            return
        with self._lock:
            if isinstance(command, MessageAck):
                self.acks.append(command)
                return
        self.verifier._seen.remember(command.command_id, command.deadline)  # type: ignore[attr-defined]
        with self._lock:
            if isinstance(command, MeterTableSync):
                self.tables.append(command)
                return
            if isinstance(command, CancelCommand):
                self.cancels.append(command)
                return
            self.orders.append(command)
        if self.receipts:
            self.send_receipt(command)
        if self.answer:
            self.answer_order(command)

    def send_receipt(self, command: OrderCommand) -> None:
        """Step 5, as the real agent does once the order is stored."""
        receipt = OrderReceipt(
            order_id=command.order_id,
            command_id=command.command_id,
            meter_id=command.meter_id,
            concentrator_id=self.concentrator_id,
            received_at=datetime.now(UTC),
            queue_depth=1,
        )
        for _ in range(self.repeat):
            self.client.publish(topics.results(self.concentrator_id), receipt.to_json(), qos=1)

    def answer_order(
        self,
        command: OrderCommand,
        outcome: Outcome | None = None,
        reason: ReasonCode | None = None,
    ) -> None:
        if outcome is None:
            outcome, reason = self.script(command)
        now = datetime.now(UTC)
        result = OrderResult(
            order_id=command.order_id,
            meter_id=command.meter_id,
            concentrator_id=self.concentrator_id,
            outcome=outcome,
            reason=reason,
            relay=RelayReading(control_state=_STATE[outcome], control_mode=3)
            if outcome in _STATE
            else None,
            energy=EnergyReading(value=42.5, unit="kWh", read_at=now),
            attempts=[Attempt(number=1, started_at=now, finished_at=now, error=reason)],
            received_at=now,
            started_at=now,
            finished_at=now,
        )
        for _ in range(self.repeat):
            self.client.publish(topics.results(self.concentrator_id), result.to_json(), qos=1)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def wait_until(check: Callable[[], bool], timeout: float = 10.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if check():
            return True
        time.sleep(0.05)
    return check()
