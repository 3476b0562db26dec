"""What Legacy and the operator do in a fault scenario: place a wave of orders over SOAP
(re-sending a request with the same MessageID until it gets a Reply, as Legacy does),
wait for the system to settle, and collect what the judge needs."""

from __future__ import annotations

import base64
import secrets
import threading
import time
import uuid
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
from lxml import etree

from tests.fault.judge import OrderRecord, Verdict, judge
from tests.fault.system import CONCENTRATORS, OPERATOR, System, concentrator_of, meter_ids

SOAP = "http://schemas.xmlsoap.org/soap/envelope/"
MSG = "http://iec.ch/TC57/2011/schema/message"
EDCM = "http://iec.ch/TC57/2011/EndDeviceControlsMessage"
EDC = "http://iec.ch/TC57/2011/EndDeviceControls#"
CODES = {"disconnect": "3.31.0.23", "connect": "3.31.0.18"}
REASONS = {"disconnect": "nonPayment", "connect": "paymentReceived"}
ACTIVE = ("received", "validated", "dispatched", "delivered")
FINAL = (
    "rejected", "completed_connected", "completed_disconnected", "completed_armed",
    "failed", "expired", "cancelled",
)


def create_request(
    actions: dict[str, str], *, message_id: str, correlation_id: str, reply_to: str,
    deadline: datetime,
) -> bytes:
    controls = []
    for action in ("disconnect", "connect"):
        meters = [m for m, a in actions.items() if a == action]
        if not meters:
            continue
        devices = "".join(
            f"<edc:EndDevices><edc:Names><edc:name>{m}</edc:name></edc:Names></edc:EndDevices>"
            for m in meters
        )
        controls.append(
            "<edc:EndDeviceControl><edc:issuerID>LEGACY</edc:issuerID>"
            f"<edc:issuerTrackingID>{correlation_id}-{action}</edc:issuerTrackingID>"
            f"<edc:reason>{REASONS[action]}</edc:reason>"
            f"<edc:scheduledInterval><edc:end>{deadline.isoformat()}</edc:end>"
            "</edc:scheduledInterval>"
            f'<edc:EndDeviceControlType ref="{CODES[action]}"/>{devices}</edc:EndDeviceControl>'
        )
    return (
        f'<soapenv:Envelope xmlns:soapenv="{SOAP}" xmlns:m="{EDCM}" xmlns:msg="{MSG}" '
        f'xmlns:edc="{EDC}"><soapenv:Header/><soapenv:Body><m:CreateEndDeviceControls>'
        "<m:Header><msg:Verb>create</msg:Verb><msg:Noun>EndDeviceControls</msg:Noun>"
        "<msg:Source>LEGACY</msg:Source><msg:AsyncReplyFlag>true</msg:AsyncReplyFlag>"
        f"<msg:ReplyAddress>{reply_to}</msg:ReplyAddress>"
        f"<msg:MessageID>{message_id}</msg:MessageID>"
        f"<msg:CorrelationID>{correlation_id}</msg:CorrelationID></m:Header>"
        "<m:Request><msg:Option><msg:name>special</msg:name><msg:value>true</msg:value>"
        "</msg:Option></m:Request>"
        f"<m:Payload><edc:EndDeviceControls>{''.join(controls)}</edc:EndDeviceControls>"
        "</m:Payload></m:CreateEndDeviceControls></soapenv:Body></soapenv:Envelope>"
    ).encode()


def accepted_orders(content: bytes) -> dict[str, str]:
    """meter -> order id of a create Reply whose Result is OK or PARTIAL."""
    root = etree.fromstring(content)
    if root.find(f".//{{{SOAP}}}Fault") is not None:
        raise ValueError("SOAP Fault")
    result = root.findtext(f".//{{{EDCM}}}Reply/{{{MSG}}}Result")
    if result not in ("OK", "PARTIAL"):
        raise ValueError(f"Result {result}")
    out = {}
    for control in root.iter(f"{{{EDC}}}EndDeviceControl"):
        order_id = control.findtext(f"{{{EDC}}}mRID")
        meter = control.findtext(f"{{{EDC}}}EndDevices/{{{EDC}}}Names/{{{EDC}}}name")
        if order_id and meter:
            out[meter] = order_id
    return out


class Run:
    """One scenario: pick meters, place orders, settle, judge."""

    def __init__(self, system: System, name: str) -> None:
        self.system = system
        self.name = name
        self.started = time.monotonic()
        self.t0 = time.time()
        self.actions: dict[str, str] = {}
        self.placed: dict[str, str | None] = {}
        self.notes: list[str] = []
        self._lock = threading.Lock()
        assert system.sim is not None
        self.sim = system.sim
        self.start_seq = {
            m: (entries[-1]["seq"] if entries else 0) for m, entries in self.sim.log().items()
        }
        auth = base64.b64encode(f"{OPERATOR[0]}:{OPERATOR[1]}".encode()).decode()
        self.soap_headers = {
            "Authorization": f"Basic {auth}", "Content-Type": "text/xml; charset=utf-8",
        }

    # ------------------------------------------------------------------ orders
    def pick(self, per_concentrator: int = 10, concentrators: Iterable[str] = CONCENTRATORS
             ) -> dict[str, str]:
        """Meters with no active order; each gets the action that changes its relay."""
        states = {m["meter_id"]: m["control_state"] for m in self.sim.meters()}
        with self.system.db() as conn:
            busy = {r[0] for r in conn.execute(
                "SELECT meter_id FROM orders WHERE state = ANY(%s)", (list(ACTIVE),)
            )}
        for c in concentrators:
            free = [m for m in meter_ids(c) if m not in busy and states[m] in (0, 1)]
            for m in free[:per_concentrator]:
                self.actions[m] = "disconnect" if states[m] == 1 else "connect"
        return self.actions

    def submit(self, *, batch: int = 10, deadline_s: float = 20, give_up_s: float = 90,
               pause_s: float = 0.0) -> dict[str, str | None]:
        """Place the picked orders in SOAP requests of ``batch`` meters; a request that gets
        no Reply (coordinator down, connection reset, 5xx) is re-sent with its MessageID."""
        deadline = datetime.now(UTC) + timedelta(seconds=deadline_s)
        meters = list(self.actions)
        for n in range(0, len(meters), batch):
            chunk = {m: self.actions[m] for m in meters[n:n + batch]}
            self._send(chunk, f"{self.name}-{n // batch}", deadline, give_up_s)
            if pause_s:
                time.sleep(pause_s)
        return self.placed

    def _send(self, chunk: dict[str, str], correlation: str, deadline: datetime,
              give_up_s: float) -> None:
        message_id = str(uuid.uuid4())
        body = create_request(
            chunk, message_id=message_id, correlation_id=correlation,
            reply_to=self.system.legacy_url, deadline=deadline,
        )
        stop = time.monotonic() + give_up_s
        last = ""
        while time.monotonic() < stop:
            try:
                response = httpx.post(
                    f"{self.system.central_url}/soap/cim", content=body,
                    headers=self.soap_headers, timeout=10,
                )
                if response.status_code < 500:
                    got = accepted_orders(response.content)
                    with self._lock:
                        for m in chunk:
                            self.placed[m] = got.get(m)
                    return
                last = f"HTTP {response.status_code}"
            except (httpx.HTTPError, ValueError) as exc:
                last = str(exc)
            time.sleep(0.3)
        self.notes.append(f"{correlation}: no Reply within {give_up_s}s ({last})")
        with self._lock:
            for m in chunk:
                self.placed[m] = None

    def submit_in_background(self, **kwargs: Any) -> threading.Thread:
        thread = threading.Thread(target=self.submit, kwargs=kwargs, daemon=True)
        thread.start()
        return thread

    # ------------------------------------------------------------------ observing
    def relay_ops(self) -> dict[str, list[dict[str, Any]]]:
        log = self.sim.relay_ops()
        return {m: [e for e in log[m] if e["seq"] > self.start_seq.get(m, 0)] for m in self.actions}

    def op_count(self, concentrator: str | None = None) -> int:
        ops = self.relay_ops()
        return sum(
            len(v) for m, v in ops.items()
            if concentrator is None or concentrator_of(m) == concentrator
        )

    def states(self) -> dict[str, str]:
        ids = [o for o in self.placed.values() if o]
        with self.system.db() as conn:
            return dict(conn.execute(
                "SELECT id, state FROM orders WHERE id = ANY(%s)", (ids,)
            ).fetchall())

    def count_in(self, *states: str) -> int:
        return sum(1 for s in self.states().values() if s in states)

    def records(self) -> dict[str, OrderRecord]:
        ids = [o for o in self.placed.values() if o]
        with self.system.db() as conn:
            rows = conn.execute(
                "SELECT id, meter_id, action, state, deadline FROM orders WHERE id = ANY(%s)",
                (ids,),
            ).fetchall()
            finals: dict[str, str] = {}
            for order_id, to_state in conn.execute(
                "SELECT order_id, to_state FROM order_events WHERE order_id = ANY(%s) "
                "AND to_state = ANY(%s) ORDER BY id", (ids, list(FINAL)),
            ):
                finals[order_id] = to_state
        return {
            r[0]: OrderRecord(r[0], r[1], r[2], r[3], finals.get(r[0]), _aware(r[4]))
            for r in rows
        }

    def settle(self, timeout: float = 60, quiet_s: float = 2.0) -> None:
        """Until every placed order is reported to Legacy and no relay has moved for
        ``quiet_s`` (a late operation would still show), or ``timeout``."""
        stop = time.monotonic() + timeout
        last_ops, quiet_since = -1, time.monotonic()
        while time.monotonic() < stop:
            try:
                done = all(s == "reported" for s in self.states().values())
                done = done and len(self.states()) == sum(1 for o in self.placed.values() if o)
                ops = self.op_count()
            except Exception:
                done, ops = False, last_ops
            if ops != last_ops:
                last_ops, quiet_since = ops, time.monotonic()
            if done and time.monotonic() - quiet_since >= quiet_s:
                return
            time.sleep(0.3)

    def verdict(self) -> Verdict:
        placed = {m: self.placed.get(m) for m in self.actions}
        v = judge(
            self.name, placed, self.actions, self.records(), self.relay_ops(),
            self.system.legacy_deliveries(self.t0 - 1), time.monotonic() - self.started,
        )
        v.problems = self.notes + v.problems
        return v


def _aware(value: datetime) -> datetime:
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def new_id() -> str:
    return secrets.token_hex(4)
