"""The edge agent: store + executor + MQTT link, wired together.

``EdgeAgent(config).start()`` opens the SQLite store, puts orders a dead agent left
running back in the queue, starts the executor and the MQTT link; ``stop()`` stops
them in reverse order (results already stored stay in the outbox for the next start).
``run_forever()`` is what ``rcd edge run`` and the systemd unit call: it stops cleanly
on SIGTERM/SIGINT.

Incoming commands (paho's network thread, :meth:`EdgeAgent.handle_message`): the
signed envelope is verified (signature, recipient, deadline, replay), then the order is
stored and its command id remembered in one transaction; only then does the link PUBACK
it. A copy of an order the agent holds (the coordinator sends the same command again
until it has the receipt; a replay of a genuine command) is answered with what the
agent stored: its receipt or its result, never a refusal. A signed ``ack`` from the
coordinator drops the messages it names from the outbox. A message the agent cannot
verify (unsigned, forged, another key, another concentrator, past its deadline and not
held, malformed) ends no order: it is reported as a :class:`RefusalReport` (reason,
SHA-256 of the payload, nothing read from it) through the outbox. Nothing a payload
contains can stop the agent.

Protected list (Ley 21.304, issue 17): the retained message on the ``protected`` leaf
is verified with the protect authority's key only (``protect.public_key_file``, never
the coordinator's), then kept if newer (:func:`shared.protect.judge`); a list signed
by another key, for another concentrator, or stale is refused and reported. A verified
disconnect of a listed meter ends ``failed`` with ``protected_customer_edge`` (at
store time or at the last check before the method) and is reported as a security
event (a :class:`RefusalReport` with that reason) as well.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import signal
import threading
import uuid
from collections.abc import Callable
from contextlib import AbstractContextManager
from datetime import UTC, datetime, timedelta
from types import FrameType, TracebackType
from typing import Any, Literal, TypeVar

from edge_agent import relay_store
from edge_agent.attempt_protocol import MeterDriver, MeterLink
from edge_agent.config import EdgeConfig
from edge_agent.errors import ConfigError
from edge_agent.executor import (
    AGENT_VERSION,
    DEFAULT_TRANSIT_S,
    Executor,
    TransitEstimator,
)
from edge_agent.logs import log
from edge_agent.meter_table import Meter
from edge_agent.mqtt_link import MqttLink
from edge_agent.relay_audit import RelayAuditor
from edge_agent.store import OrderRow, Store
from shared import topics
from shared.codes import ModemState, ReasonCode, SimState
from shared.contracts import (
    CancelCommand,
    ConcentratorStatus,
    MessageAck,
    MeterTableSync,
    OrderCommand,
    ProtectedList,
    RefusalReport,
    validate,
)
from shared.errors import CommandRejected, CommandReplayed, ContractError, TopicError
from shared.protect import ProtectedListVerifier
from shared.signing import CommandVerifier, key_id_of, load_public_key_file


def utcnow() -> datetime:
    return datetime.now(UTC)


class _LazyDlmsDriver:
    """Loads the DLMS stack (gurux-dlms, about 8 MB) when the agent has meters to talk to
    (``preload``, on a thread of its own) or at the first exchange, not at start-up of a
    concentrator without meters. Loaded at the first exchange, its import (0.17-0.28 s)
    held a campaign's first order off the line."""

    def __init__(self, store: Store, config: EdgeConfig) -> None:
        self._store = store
        self._config = config
        self._driver: MeterDriver | None = None
        self._lock = threading.Lock()

    def _real(self) -> Any:
        with self._lock:
            if self._driver is None:
                from edge_agent.dlms_driver import DlmsDriver

                self._driver = DlmsDriver(self._store, self._config)
            return self._driver

    def preload(self) -> None:
        """Load the stack in the background (a no-op once loaded)."""
        if self._driver is None:
            threading.Thread(target=self._preload, name="rcd-dlms-load", daemon=True).start()

    def _preload(self) -> None:
        try:
            self._real()
        except Exception:  # the first exchange tries again and reports the fault
            log("dlms.preload_failed", logging.WARNING, exc_info=True)

    def session(self, meter: Meter) -> AbstractContextManager[MeterLink]:
        driver: MeterDriver = self._real()
        return driver.session(meter)

    def raw_session(self, meter: Meter, preempt: Callable[[], bool]) -> AbstractContextManager[Any]:
        """An association for the relay audit (same invocation counters as orders)."""
        return self._real().raw_session(meter, preempt)  # type: ignore[no-any-return]

    def learned(self, meter: Meter, table_version: int, control_mode: int,
                scaler_unit: tuple[int, int]) -> None:
        """The relay audit's read of control_mode and scaler_unit, for the orders' cache."""
        self._real().learned(meter, table_version, control_mode, scaler_unit)


class EdgeAgent:
    def __init__(self, config: EdgeConfig, *, driver: MeterDriver | None = None) -> None:
        self.config = config
        self.cid = config.agent.concentrator_id
        try:
            public_key = load_public_key_file(config.coordinator.public_key_file)
        except (OSError, ValueError) as exc:
            raise ConfigError("coordinator.public_key_file", f"not a usable key: {exc}") from exc
        self.protect_verifier: ProtectedListVerifier | None = None
        if config.protect.public_key_file is not None:
            try:
                protect_key = load_public_key_file(config.protect.public_key_file)
            except (OSError, ValueError) as exc:
                raise ConfigError("protect.public_key_file", f"not a usable key: {exc}") from exc
            if key_id_of(protect_key) == key_id_of(public_key):
                raise ConfigError("protect.public_key_file",
                                  "is the coordinator's key; the protect authority needs its own")
            self.protect_verifier = ProtectedListVerifier(protect_key, self.cid)
        self.store = Store(config.database_path)
        self.verifier = CommandVerifier(
            public_key, self.cid, self.store,
            clock_skew=timedelta(seconds=config.coordinator.clock_skew_s),
        )
        try:
            self.link = MqttLink(config, self.store, self.handle_message, self.status)
        except BaseException:
            self.store.close()
            raise
        real = _LazyDlmsDriver(self.store, config)
        self._lazy = real if driver is None else None
        self.executor = Executor(
            self.store,
            driver if driver is not None else real,
            line_concurrency={k: v.concurrency for k, v in config.lines.items()},
            tcp_concurrency=config.executor.tcp_concurrency,
            idle_poll_s=config.executor.idle_poll_s,
            on_result=self.link.wake,
            transit=TransitEstimator(
                {f"line:{k}": v.initial_transit_s() for k, v in config.lines.items()},
                DEFAULT_TRANSIT_S,
            ),
            require_protected_list=config.protect.require_list,
            on_protected=self._protected_at_switch,
        )
        self.auditor: RelayAuditor | None = None
        sessions = getattr(driver, "raw_session", None) if driver is not None else real.raw_session
        if config.audit.enabled and sessions is not None:
            self.auditor = RelayAuditor(
                self.store, self.executor, sessions, config.audit, self.cid,
                on_report=self.link.wake,
                hold_disconnects=lambda: (config.protect.require_list
                                          and self.store.protected_version() is None),
                readable=lambda meter: meter.transport != "hdlc" or meter.line_id in config.lines,
                learned=getattr(driver if driver is not None else real, "learned",
                                lambda *facts: None),
            )
            self.executor.on_ended = self.auditor.order_ended
        self._stopped = threading.Event()
        self._started = False

    # -- lifecycle ------------------------------------------------------------
    def start(self) -> EdgeAgent:
        log("agent.start", concentrator=self.cid, version=AGENT_VERSION,
            meters=self.store.meter_count(), queue=self.store.queue_depth(),
            outbox=self.store.outbox_depth(), db=str(self.config.database_path))
        self.executor.start()
        self._preload_driver()
        try:
            self.link.start()
            if self.auditor is not None:
                self.auditor.start()
        except BaseException:
            # Not started: no scheduler thread or worker pool may outlive the failure
            # (executing orders whose results nothing would publish, on a store that
            # stop() is about to close).
            self.executor.stop()
            raise
        self._started = True
        return self

    def _preload_driver(self) -> None:
        if self._lazy is not None and self.store.meter_count() > 0:
            self._lazy.preload()

    def stop(self) -> None:
        if not self._started:
            self.store.close()
            return
        self._started = False
        log("agent.stopping", concentrator=self.cid)
        if self.auditor is not None:
            self.auditor.stop()
        try:
            self.link.stop()
        finally:
            try:
                self.executor.stop()
            finally:
                self.store.close()
        log("agent.stopped", concentrator=self.cid)

    def __enter__(self) -> EdgeAgent:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    def request_stop(self) -> None:
        self._stopped.set()

    def run_forever(self) -> None:
        def on_signal(signum: int, frame: FrameType | None) -> None:
            log("agent.signal", signal=signal.Signals(signum).name)
            self._stopped.set()

        previous = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
        try:
            self.start()
            while not self._stopped.wait(1.0):
                pass
        finally:
            self.stop()
            for s, handler in previous.items():
                signal.signal(s, handler)

    # -- status ---------------------------------------------------------------
    def _modem(self) -> dict[str, Any]:
        """The modem daemon's file, value by value: one it gets wrong is left out (unknown),
        never the whole status, whose queue and table figures are the agent's own."""
        path = self.config.agent.modem_status_file
        if path is None:
            return {}
        try:
            with path.open("rb") as file:
                raw = file.read(_MODEM_FILE_MAX + 1)
            data = json.loads(raw) if len(raw) <= _MODEM_FILE_MAX else None
        except (OSError, ValueError, RecursionError):
            data = None
        if not isinstance(data, dict):
            return {"modem": ModemState.UNKNOWN, "sim": SimState.UNKNOWN}
        return {
            "modem": _choice(ModemState, data.get("modem"), ModemState.UNKNOWN),
            "sim": _choice(SimState, data.get("sim"), SimState.UNKNOWN),
            "signal_dbm": _signal_dbm(data.get("signal_dbm")),
        }

    def status(self, online: bool) -> ConcentratorStatus:
        generation = self.store.get_meta("meter_generation")
        try:  # validated: the modem's values come from a file outside the agent
            return validate(ConcentratorStatus, {
                "concentrator_id": self.cid, "online": online, "at": utcnow(),
                "queue_depth": self.store.queue_depth(), "outbox_depth": self.store.outbox_depth(),
                "meter_count": self.store.meter_count(),
                "meter_table_generation": int(generation) if generation else None,
                "agent_version": AGENT_VERSION, **self._modem(),
                "audit_airtime": relay_store.airtime_shares(self.store),
            })
        except (ValueError, ContractError):
            return ConcentratorStatus(concentrator_id=self.cid, online=online, at=utcnow(),
                                      agent_version=AGENT_VERSION)

    # -- commands ---------------------------------------------------------------
    def handle_message(self, topic: str, payload: bytes) -> None:
        try:
            _, leaf = topics.parse(topic)
        except TopicError:
            log("command.unknown_topic", logging.WARNING, topic=topic)
            return
        received = utcnow()
        if leaf == "protected":
            self._protected_list(payload)
            return
        try:
            command = self.verifier.verify(payload)
        except CommandRejected as exc:
            if not self._copy_of_held(leaf, exc):
                self._refused(leaf, payload, exc.reason, str(exc))
            return
        except ContractError as exc:
            self._refused(leaf, payload, ReasonCode.MALFORMED_COMMAND, str(exc))
            return
        if isinstance(command, MessageAck) and leaf == "cmd":
            self._acknowledged(command)
        elif isinstance(command, OrderCommand) and leaf == "cmd":
            outcome = self.store.store_order(command, received)
            log("order.received", order=command.order_id, meter=command.meter_id,
                action=command.action.value, priority=command.priority,
                deadline=command.deadline.isoformat(), stored=outcome)
            if outcome == "protected":
                self._security_event(payload, command.order_id, command.meter_id, "stored")
            self.executor.wake()
            if outcome in ("stored", "resent", "cancelled", "protected"):
                self.link.wake()  # publish the receipt (or the result sent again) now
        elif isinstance(command, CancelCommand) and leaf == "cmd":
            result = self.store.cancel(command, received)
            if result is not None:
                done = "cancelled"
            elif self.store.cancel_requested(command.order_id) is not None:
                done = "requested: attempt in flight; stops before switching or retrying"
            elif self.store.early_cancel(command.order_id) is not None:
                done = "remembered: the order has not arrived; it ends cancelled if it does"
            else:
                done = "not cancelled: unknown or ended"
            log("order.cancel", order=command.order_id, done=done)
            self.link.wake()
        elif isinstance(command, MeterTableSync) and leaf == "meters":
            applied = self.store.apply_meter_table(command)
            log("meters.table", generation=command.generation, meters=len(command.meters),
                applied=applied)
            if applied:
                self._preload_driver()
            if applied and self.auditor is not None:
                self.auditor.wake()  # it may sleep a minute on an empty table: new meters to read
        else:
            log("command.wrong_topic", logging.WARNING, topic=topic, kind=command.kind)

    # -- protected list (Ley 21.304) ----------------------------------------------
    def _protected_list(self, payload: bytes) -> None:
        if self.protect_verifier is None:
            self._refused("protected", payload, ReasonCode.BAD_SIGNATURE,
                          "no protect authority key configured (protect.public_key_file)")
            return
        try:
            plist: ProtectedList = self.protect_verifier.verify(payload)
        except CommandRejected as exc:
            self._refused("protected", payload, exc.reason, str(exc))
            return
        except ContractError as exc:
            self._refused("protected", payload, ReasonCode.MALFORMED_COMMAND, str(exc))
            return
        verdict = self.store.apply_protected_list(plist)
        if verdict == "stale":
            self._refused("protected", payload, ReasonCode.STALE_PROTECTED_LIST,
                          f"protected list version {plist.version} refused: this agent "
                          f"holds version {self.store.protected_version()} (a list is "
                          "replaced only by a higher version)")
            return
        log("protected.list", version=plist.version, meters=len(plist.meters),
            applied=verdict == "apply")
        self.executor.wake()  # disconnects held for want of a list may go now

    def _security_event(self, payload: bytes, order_id: str, meter_id: str, when: str) -> None:
        log("security.protected_disconnect", logging.WARNING, order=order_id, meter=meter_id,
            refused=when)
        self._refused("cmd", payload, ReasonCode.PROTECTED_CUSTOMER_EDGE,
                      f"signed disconnect of protected meter {meter_id} (order {order_id}) "
                      f"refused when {when}: the meter is on the protect authority's list")

    def _protected_at_switch(self, order: OrderRow) -> None:
        """The executor refused a disconnect of a listed meter (list changed after store)."""
        self._security_event(order.command.to_json(), order.order_id,
                             order.command.meter_id, "about to switch")

    def _acknowledged(self, ack: MessageAck) -> None:
        """The coordinator stored these messages: they leave the outbox."""
        dropped = self.store.outbox_acknowledge_all((a.kind, a.id) for a in ack.acks)
        log("outbox.acknowledged", logging.DEBUG, acks=len(ack.acks), dropped=dropped)

    def _copy_of_held(self, leaf: str, exc: CommandRejected) -> bool:
        """A genuine command seen before or past its deadline: a copy of an order held here
        is answered with the stored receipt or result, a copy of a cancel (applied once) is
        ignored. False: it must be reported as refused."""
        command = exc.command
        if leaf != "cmd" or command is None or command.concentrator_id != self.cid:
            return False
        if isinstance(command, MessageAck):  # idempotent: a late copy is still true
            self._acknowledged(command)
            return True
        if isinstance(command, OrderCommand):
            answered = self.store.answer_copy(command.order_id)
            if answered is None:
                return False
            log("order.copy", order=command.order_id, command=command.command_id,
                answered=answered, why=exc.reason.value)
            self.link.wake()
            return True
        if isinstance(command, CancelCommand) and isinstance(exc, CommandReplayed):
            log("order.cancel_copy", order=command.order_id, command=command.command_id)
            return True
        return False

    def _refused(self, leaf: str, payload: bytes, reason: ReasonCode, detail: str) -> None:
        if leaf == "meters" and reason in (ReasonCode.REPLAYED_COMMAND, ReasonCode.EXPIRED):
            # the retained table comes back on every (re)subscribe: nothing to report
            log("meters.table_ignored", logging.DEBUG, reason=reason.value)
            return
        digest = hashlib.sha256(payload).hexdigest()
        report = RefusalReport(
            refusal_id="r" + uuid.uuid4().hex, concentrator_id=self.cid, reason=reason,
            detail=detail[:500], topic_leaf=_REPORTED_LEAF.get(leaf, "cmd"),
            payload_sha256=digest, payload_size=len(payload), received_at=utcnow(),
            agent_version=AGENT_VERSION,
        )
        queued = self.store.add_refusal(report.refusal_id, digest, report.to_json())
        log("command.refused", logging.WARNING, topic_leaf=leaf, reason=reason.value,
            sha256=digest, reported=queued, detail=detail[:300])
        if queued:
            self.link.wake()


# The leaf a refusal report names (everything else counts as the command topic).
_REPORTED_LEAF: dict[str, Literal["cmd", "meters", "protected"]] = {
    "meters": "meters", "protected": "protected"}

# The modem daemon writes a few hundred bytes; a larger file is not its status.
_MODEM_FILE_MAX = 64 * 1024

E = TypeVar("E", ModemState, SimState)


def _choice(kind: type[E], value: object, default: E) -> E:
    try:
        return kind(value) if isinstance(value, str) else default
    except ValueError:
        return default


def _signal_dbm(value: object) -> int | None:
    """Whole dBm within the contract's range; a float is rounded (pydantic took -71.0)."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    dbm = round(value)
    return dbm if -150 <= dbm <= 0 else None
