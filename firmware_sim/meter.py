"""A simulated meter: COSEM objects plus the association/service logic, bytes in, bytes out.

Transports (TCP wrapper, HDLC line) feed complete xDLMS/ACSE APDUs into
:meth:`SimulatedMeter.handle` and send back what it returns. Link-level faults
(no_answer, garbage, late_answer, unreachable) are applied by the transports; the meter
itself applies relay_stuck, relay_error and not_commissioned.
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

from firmware_sim.cosem import STATE_NAMES, DisconnectControl, EnergyRegister, Refused
from firmware_sim.oplog import OperationLog, RelayMethod
from firmware_sim.relay_log import (
    REMOTE_CONNECTION,
    REMOTE_DISCONNECTION,
    SWITCH_FAILURE,
    DisconnectorLog,
)
from shared.dlms import apdu as A
from shared.dlms import axdr
from shared.dlms import profile as P
from shared.dlms import security as S
from shared.dlms.axdr import Data
from shared.dlms.errors import (
    DIAG_AUTHENTICATION_FAILURE,
    DIAG_AUTHENTICATION_REQUIRED,
    DIAG_CONTEXT_NOT_SUPPORTED,
    DIAG_MECHANISM_NOT_RECOGNISED,
    DIAG_MECHANISM_REQUIRED,
    DIAG_NO_REASON,
    MalformedResponse,
)

if TYPE_CHECKING:
    from firmware_sim.fleet import MeterSpec

FAULTS = frozenset(
    {"no_answer", "garbage", "late_answer", "unreachable", "relay_stuck", "relay_error",
     "not_commissioned", "relay_welded", "bypass"}
)
PUBLIC_CLIENT = 16
MANAGEMENT_CLIENT = 1

DISCONNECT_CONTROL = (70, bytes((0, 0, 96, 3, 10, 255)))
ENERGY = (3, bytes((1, 0, 1, 8, 0, 255)))
CLOCK = (8, bytes((0, 0, 1, 0, 0, 255)))
ASSOCIATION_LN = (15, bytes((0, 0, 40, 0, 0, 255)))
INVOCATION_COUNTER = (1, bytes((0, 0, 43, 1, 0, 255)))
RELAY_LOG = (7, P.DISCONNECTOR_LOG.obis)
EVENT_CODE = (1, P.DISCONNECTOR_EVENT_CODE_OBIS)
OBJECTS = (DISCONNECT_CONTROL, ENERGY, CLOCK, ASSOCIATION_LN, INVOCATION_COUNTER, RELAY_LOG,
           EVENT_CODE)
MAX_PDU = 1024
# glo-ciphering (tag, length, SC, invocation counter, GCM tag) and the datablock header
BLOCK_OVERHEAD = 40


@dataclass
class MeterCounters:
    frames_rx: int = 0
    frames_tx: int = 0
    bytes_rx: int = 0
    bytes_tx: int = 0
    channel_time_s: float = 0.0
    apdus: int = 0
    associations: int = 0
    refused_associations: int = 0
    dropped_frames: int = 0

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


@dataclass
class Association:
    """One application association (lives as long as its HDLC link / TCP connection)."""

    client: int
    state: str = "idle"  # idle | pending (HLS pass 3 awaited) | ready
    secured: bool = False
    client_title: bytes = b""
    ctos: bytes = b""
    stoc: bytes = b""
    general_glo: bool = False
    max_pdu: int = MAX_PDU
    request_ic: int | None = None  # the client's invocation counter of the current request
    aarq_ic: int | None = None  # ... and of the AARQ that opened this association
    blocks: list[bytes] = field(default_factory=list)  # a long GET answer still to send
    blocks_sent: int = 0


def system_title_for(meter_id: str) -> bytes:
    """Deterministic 8-byte server system title: 'SIM' + 5 bytes from the meter id."""
    return b"SIM" + hashlib.sha256(meter_id.encode()).digest()[:5]


class SimulatedMeter:
    def __init__(self, spec: MeterSpec) -> None:
        self.spec = spec
        self.meter_id = spec.meter_id
        self.system_title = system_title_for(spec.meter_id)
        self.keys = S.Keys(spec.block_key, spec.auth_key)
        self.commissioned = spec.commissioned
        self.faults: set[str] = set(spec.faults)
        self.late_answer_s = spec.late_answer_s
        self.disconnect = DisconnectControl(STATE_NAMES[spec.relay], spec.control_mode)
        self.energy = EnergyRegister(spec.energy_wh, spec.load_w)
        self.relay_log = DisconnectorLog(spec.log_capacity)
        self.max_pdu = spec.max_pdu
        # the contacts fell open while the meter's control state still says connected
        self.opened_by_itself = False
        self.clock_offset = timedelta(0)
        self.counters = MeterCounters()
        self.server_ic = 0
        self.last_client_ic: dict[int, int] = {}
        self.lock = threading.RLock()
        self.events: list[str] = []
        self.oplog = OperationLog(spec.meter_id)
        self._aarq_from: tuple[int, int | None] = (0, None)  # client, IC of the AARQ in hand
        # what the meter was asked, in order (the last 256 requests), for exchange traces:
        # "SNRM", "DISC", "AARQ", "RLRQ", "GET 70/2 70/3 ...", "ACTION 70/1"
        self.trace: deque[str] = deque(maxlen=256)
        self._random: Callable[[int], bytes] = os.urandom

    # ------------------------------------------------------------ control interface

    def set_fault(self, fault: str | None) -> None:
        """Replace the active faults with ``fault`` (None clears all)."""
        if fault is not None and fault not in FAULTS:
            raise ValueError(f"unknown fault {fault!r}; known: {sorted(FAULTS)}")
        with self.lock:
            self.faults = set() if fault is None else {fault}

    def add_fault(self, fault: str) -> None:
        if fault not in FAULTS:
            raise ValueError(f"unknown fault {fault!r}")
        with self.lock:
            self.faults.add(fault)

    def has_fault(self, fault: str) -> bool:
        return fault in self.faults

    def press_button(self) -> bool:
        """The customer's button: closes an armed relay. True when the relay closed."""
        from firmware_sim.relay_events import inject

        return inject(self, "button")["changed"] is True

    @property
    def output_state(self) -> bool:
        """The contacts as the meter senses them: as its control state says, unless they
        welded shut or fell open."""
        if "relay_welded" in self.faults:
            return True
        return self.disconnect.output_state and not self.opened_by_itself

    def flowing(self) -> bool:
        """Current reaches the load: the contacts are closed, or the meter is bypassed."""
        return self.output_state or "bypass" in self.faults

    def relay(self) -> tuple[int, bool]:
        return self.disconnect.control_state, self.output_state

    def write_log(self, code: int) -> int:
        """A row in the disconnector control log at the meter's clock; its position."""
        return self.relay_log.append(self._now(), code)

    def advance(self, seconds: float) -> None:
        """Let simulated time pass for the energy register."""
        with self.lock:
            self.energy.advance(seconds, self.flowing())

    def state(self) -> dict[str, object]:
        with self.lock:
            self.energy.update(self.flowing())
            return {
                "meter_id": self.meter_id,
                "control_state": self.disconnect.control_state,
                "output_state": self.output_state,
                "control_mode": self.disconnect.control_mode,
                "energy_wh": round(self.energy.energy_wh, 3),
                "commissioned": self.commissioned,
                "faults": sorted(self.faults),
                "log_entries": len(self.relay_log.rows),
                "last_event_code": self.relay_log.last_code,
                "server_invocation_counter": self.server_ic,
                "client_invocation_counters": dict(self.last_client_ic),
                "counters": self.counters.as_dict(),
                "system_title": self.system_title.hex(),
            }

    # ------------------------------------------------------------ service dispatch

    def handle(self, assoc: Association, request: bytes) -> bytes:
        """Process one complete APDU from ``assoc``'s client; return the response APDU."""
        with self.lock:
            self.counters.apdus += 1
            try:
                return self._handle(assoc, request)
            except MalformedResponse:
                return A.build_exception_response(1, 2)
            except (IndexError, ValueError):
                return A.build_exception_response(1, 3)

    def release(self, assoc: Association) -> None:
        with self.lock:
            if assoc.state == "ready":
                self.oplog.association("close", client=assoc.client, invocation_counter=None)
            assoc.state = "idle"
            assoc.secured = False

    def _handle(self, assoc: Association, req: bytes) -> bytes:
        if not req:
            return A.build_exception_response(1, 2)
        tag = req[0]
        if tag == A.AARQ:
            self.trace.append("AARQ")
            return self._aarq(assoc, req)
        if tag == A.RLRQ:
            self.trace.append("RLRQ")
            self.release(assoc)
            return A.build_rlre(0)
        if assoc.state == "idle":
            return A.build_exception_response(1, 1)  # service-not-allowed before AARQ
        if tag in S.PLAIN_TAGS or tag == S.GENERAL_GLO:
            if not assoc.secured:
                return A.build_exception_response(1, 2)
            try:
                c = S.parse(req)
                if c.sc & 0x30 != S.SC_AUTH_ENC:
                    return A.build_exception_response(1, 5)
                if c.ic <= self.last_client_ic.get(assoc.client, -1):
                    return A.build_exception_response(1, 6)  # invocation-counter-error
                plain = S.unwrap(c, assoc.client_title, self.keys)
            except MalformedResponse:
                return A.build_exception_response(1, 5)  # decipher-error
            self.last_client_ic[assoc.client] = c.ic
            assoc.general_glo = c.tag == S.GENERAL_GLO
            assoc.request_ic = c.ic
            return self._protect(assoc, self._service(assoc, plain))
        if assoc.secured:
            return A.build_exception_response(1, 1)  # plain APDU on a ciphered association
        assoc.request_ic = None
        return self._service(assoc, req)

    def _protect(self, assoc: Association, plain: bytes) -> bytes:
        if plain[0] not in S.GLO_TAGS:
            return plain  # exception-response is never ciphered here
        self.server_ic += 1
        return S.wrap(
            plain, S.SC_AUTH_ENC, self.system_title, self.server_ic, self.keys,
            general=assoc.general_glo,
        )

    # ------------------------------------------------------------ AARQ

    def _refuse(self, diagnostic: int, context: bytes, result: int = 1) -> bytes:
        self.counters.refused_associations += 1
        client, ic = self._aarq_from
        self.oplog.association(
            "refused", client=client, invocation_counter=ic, diagnostic=diagnostic
        )
        return A.build_aare(A.Aare(result=result, diagnostic=diagnostic, context=context))

    def _aarq(self, assoc: Association, req: bytes) -> bytes:
        aarq = A.parse_aarq(req)
        self.release(assoc)
        self._aarq_from = (assoc.client, None)
        if assoc.client == PUBLIC_CLIENT:
            # mechanism first: diagnostic 2 is reserved for "not provisioned" (see errors.py)
            if aarq.mechanism not in (None, A.MECH_NONE) or aarq.ciphered:
                return self._refuse(DIAG_MECHANISM_NOT_RECOGNISED, aarq.context)
            if aarq.user_information is None:
                return self._refuse(DIAG_NO_REASON, aarq.context)
            init = A.parse_initiate_request(aarq.user_information)
            if init.dlms_version < 6:
                return self._refuse(DIAG_NO_REASON, aarq.context)
            assoc.state = "ready"
            assoc.max_pdu = min(self.max_pdu, init.max_pdu or self.max_pdu)
            self.counters.associations += 1
            self.oplog.association("open", client=assoc.client, invocation_counter=None)
            conf = A.SERVER_CONFORMANCE & init.conformance
            return A.build_aare(A.Aare(
                context=aarq.context,
                user_information=A.build_initiate_response(conf, self.max_pdu),
            ))
        if assoc.client != MANAGEMENT_CLIENT:
            return self._refuse(DIAG_NO_REASON, aarq.context)
        if not self.commissioned or "not_commissioned" in self.faults:
            return self._refuse(DIAG_CONTEXT_NOT_SUPPORTED, aarq.context)
        if aarq.mechanism is None or aarq.mechanism == A.MECH_NONE:
            return self._refuse(DIAG_MECHANISM_REQUIRED, aarq.context)
        if aarq.mechanism != A.MECH_HLS_GMAC:
            return self._refuse(DIAG_MECHANISM_NOT_RECOGNISED, aarq.context)
        if not aarq.ciphered or aarq.user_information is None:
            return self._refuse(DIAG_MECHANISM_REQUIRED, aarq.context)
        if aarq.calling_title is None or len(aarq.calling_title) != 8 or not aarq.calling_auth_value:
            return self._refuse(DIAG_AUTHENTICATION_FAILURE, aarq.context)
        try:
            c = S.parse(aarq.user_information)
            if c.sc & 0x30 != S.SC_AUTH_ENC:
                return self._refuse(DIAG_AUTHENTICATION_FAILURE, aarq.context)
            plain = S.unwrap(c, aarq.calling_title, self.keys)
        except MalformedResponse:
            return self._refuse(DIAG_AUTHENTICATION_FAILURE, aarq.context)
        self._aarq_from = (assoc.client, c.ic)
        if c.ic <= self.last_client_ic.get(assoc.client, -1):
            self.events.append(f"replayed invocation counter {c.ic}")
            return self._refuse(DIAG_AUTHENTICATION_FAILURE, aarq.context)
        self.last_client_ic[assoc.client] = c.ic
        init = A.parse_initiate_request(plain)
        if init.dlms_version < 6:
            return self._refuse(DIAG_NO_REASON, aarq.context)
        assoc.state = "pending"
        assoc.secured = True
        assoc.client_title = aarq.calling_title
        assoc.aarq_ic = c.ic
        assoc.ctos = aarq.calling_auth_value
        assoc.stoc = self._random(16)
        assoc.general_glo = c.tag == S.GENERAL_GLO
        assoc.max_pdu = min(self.max_pdu, init.max_pdu or self.max_pdu)
        self.server_ic += 1
        conf = A.SERVER_CONFORMANCE & init.conformance
        user_info = S.wrap(
            A.build_initiate_response(conf, self.max_pdu), S.SC_AUTH_ENC, self.system_title,
            self.server_ic, self.keys,
        )
        return A.build_aare(A.Aare(
            result=0, diagnostic=DIAG_AUTHENTICATION_REQUIRED, context=aarq.context,
            responding_title=self.system_title, mechanism=A.MECH_HLS_GMAC,
            responding_auth_value=assoc.stoc, user_information=user_info,
        ))

    # ------------------------------------------------------------ xDLMS services

    def _service(self, assoc: Association, req: bytes) -> bytes:
        tag = req[0]
        if tag not in (A.GET_REQUEST, A.SET_REQUEST, A.ACTION_REQUEST):
            return A.build_exception_response(2, 2)  # service-unknown / not supported
        r = A.parse_request(req)
        name = {A.GET_REQUEST: "GET", A.SET_REQUEST: "SET"}.get(tag, "ACTION")
        self.trace.append(" ".join([name, *(f"{ref.class_id}/{ref.index}" for ref in r.refs)]))
        if assoc.state == "pending":
            ok = (
                tag == A.ACTION_REQUEST and r.kind == 1 and r.refs
                and (r.refs[0].class_id, r.refs[0].obis) == ASSOCIATION_LN
                and r.refs[0].index == 1
            )
            if not ok:
                return A.build_exception_response(1, 1)
            return self._hls_pass3(assoc, r)
        if tag == A.GET_REQUEST:
            if r.kind == 1:
                return self._get_normal(assoc, r)
            if r.kind == 2:
                return self._get_next(assoc, r)
            if r.kind == 3:
                return A.build_get_response_with_list(
                    r.invoke_id, [self._get(ref) for ref in r.refs]
                )
            return A.build_exception_response(2, 2)
        if tag == A.SET_REQUEST:
            if r.kind != 1:
                return A.build_exception_response(2, 2)
            if assoc.client != MANAGEMENT_CLIENT:
                return A.build_set_response(r.invoke_id, A.DAR_READ_WRITE_DENIED)
            return A.build_set_response(r.invoke_id, self._set(r.refs[0], r.data[0]))
        if r.kind != 1:
            return A.build_exception_response(2, 2)
        if assoc.client != MANAGEMENT_CLIENT:
            return A.build_action_response(r.invoke_id, A.AR_READ_WRITE_DENIED)
        return A.build_action_response(r.invoke_id, self._logged_action(assoc, r))

    def _get_normal(self, assoc: Association, r: A.Request) -> bytes:
        """GET-Request-Normal; an answer longer than the PDU goes out in blocks."""
        ref, access = r.refs[0], r.access[0] if r.access else None
        assoc.blocks, assoc.blocks_sent = [], 0
        is_log = (ref.class_id, ref.obis) == RELAY_LOG and ref.index == 2
        if access is not None and not is_log:
            return A.build_get_response(r.invoke_id, A.DAR_OBJECT_UNAVAILABLE)
        try:
            result = self._log_buffer(access) if is_log else self._get(ref)
        except MalformedResponse:
            return A.build_get_response(r.invoke_id, A.DAR_OTHER_REASON)
        answer = A.build_get_response(r.invoke_id, result)
        rows = len(result.value) if is_log and isinstance(result, Data) else 0
        if len(answer) + BLOCK_OVERHEAD // 2 <= assoc.max_pdu or not isinstance(result, Data):
            if is_log:
                self.oplog.log_read(client=assoc.client, block=0, rows=rows, last=True)
            return answer
        size = max(16, assoc.max_pdu - BLOCK_OVERHEAD)
        assoc.blocks = P.split_blocks(r.invoke_id, result, size)
        if is_log:
            self.oplog.log_read(client=assoc.client, block=1, rows=rows,
                                last=len(assoc.blocks) == 1)
        return self._next_block(assoc)

    def _next_block(self, assoc: Association) -> bytes:
        block = assoc.blocks[assoc.blocks_sent]
        assoc.blocks_sent += 1
        if assoc.blocks_sent == len(assoc.blocks):
            assoc.blocks, assoc.blocks_sent = [], 0
        return block

    def _get_next(self, assoc: Association, r: A.Request) -> bytes:
        """GET-Request-next: the block after the one the client names."""
        def refuse(code: int) -> bytes:
            assoc.blocks, assoc.blocks_sent = [], 0
            return bytes((A.GET_RESPONSE, 2, r.invoke_id, 1)) + r.block_number.to_bytes(
                4, "big") + bytes((1, code))
        if not assoc.blocks:
            return refuse(P.DAR_NO_LONG_GET_IN_PROGRESS)
        if r.block_number != assoc.blocks_sent:
            return refuse(P.DAR_LONG_GET_ABORTED)
        last = assoc.blocks_sent + 1 == len(assoc.blocks)
        self.oplog.log_read(client=assoc.client, block=assoc.blocks_sent + 1, rows=0, last=last)
        return self._next_block(assoc)

    def _log_buffer(self, access: tuple[int, Data] | None) -> Data:
        selector = P.decode_access(*access) if access is not None else None
        return self.relay_log.select(selector)

    def _logged_action(self, assoc: Association, r: A.Request) -> int:
        """Run the method; a Disconnect control method goes into the operation log with
        the relay state before and after, whatever its result."""
        ref = r.refs[0]
        before = (self.disconnect.control_state, self.disconnect.output_state)
        result = self._action(ref, r.data)
        if (ref.class_id, ref.obis) == DISCONNECT_CONTROL and ref.index in (1, 2):
            self._log_switch(result, before[1])
            method: RelayMethod = "remote_disconnect" if ref.index == 1 else "remote_reconnect"
            self.oplog.relay(
                method, client=assoc.client, invocation_counter=assoc.request_ic,
                action_result=result, before=before,
                after=(self.disconnect.control_state, self.disconnect.output_state),
            )
        return result

    def _log_switch(self, result: int, closed_before: bool) -> None:
        """The disconnector log row of a method: a relay that moved, or a failure."""
        if result == A.AR_HARDWARE_FAULT:
            self.write_log(SWITCH_FAILURE)
        elif result == A.AR_SUCCESS and closed_before != self.disconnect.output_state:
            self.write_log(REMOTE_CONNECTION if self.disconnect.output_state
                           else REMOTE_DISCONNECTION)

    def _hls_pass3(self, assoc: Association, r: A.Request) -> bytes:
        f_stoc = r.data[0].value if r.data and r.data[0].tag == axdr.OCTET_STRING else b""
        try:
            S.verify_hls(assoc.client_title, self.keys, assoc.stoc, f_stoc)
        except MalformedResponse:
            self.counters.refused_associations += 1
            self.oplog.association(
                "refused", client=assoc.client, invocation_counter=assoc.aarq_ic
            )
            assoc.state = "idle"
            return A.build_action_response(r.invoke_id, A.AR_READ_WRITE_DENIED)
        assoc.state = "ready"
        self.counters.associations += 1
        self.oplog.association("open", client=assoc.client, invocation_counter=assoc.aarq_ic)
        self.server_ic += 1
        f_ctos = S.gmac_hls(self.system_title, self.server_ic, self.keys, assoc.ctos)
        return A.build_action_response(r.invoke_id, A.AR_SUCCESS, axdr.octets(f_ctos))

    def _now(self) -> datetime:
        return datetime.now(UTC) + self.clock_offset

    def _get(self, ref: A.AttributeRef) -> A.GetResult:
        key = (ref.class_id, ref.obis)
        if key not in OBJECTS:
            return A.DAR_OBJECT_UNDEFINED
        if ref.index == 1:
            return axdr.octets(ref.obis)
        closed = self.output_state
        if key == RELAY_LOG:
            value = self.relay_log.attribute(ref.index)
            return value if value is not None else A.DAR_OBJECT_UNAVAILABLE
        if key == EVENT_CODE:
            return axdr.uint8(self.relay_log.last_code) if ref.index == 2 else A.DAR_OBJECT_UNAVAILABLE
        if key == DISCONNECT_CONTROL:
            if ref.index == 2:
                return axdr.boolean(closed)
            if ref.index == 3:
                return axdr.enum(self.disconnect.control_state)
            if ref.index == 4:
                return axdr.enum(self.disconnect.control_mode)
        elif key == ENERGY:
            self.energy.update(self.flowing())
            if ref.index == 2:
                return axdr.uint32(self.energy.raw_value)
            if ref.index == 3:
                return axdr.structure(axdr.int8(self.energy.scaler), axdr.enum(self.energy.unit))
        elif key == CLOCK:
            now = self._now()
            if ref.index == 2:
                return axdr.octets(axdr.date_time(
                    now.year, now.month, now.day, now.hour, now.minute, now.second,
                    deviation=0, weekday=now.isoweekday(),
                ))
            if ref.index == 3:
                return Data(axdr.INT16, 0)
            if ref.index == 4:
                return axdr.uint8(0)
        elif key == ASSOCIATION_LN:
            if ref.index == 8:
                return axdr.enum(2)
        elif key == INVOCATION_COUNTER and ref.index == 2:
            return axdr.uint32(self.last_client_ic.get(MANAGEMENT_CLIENT, -1) + 1)
        return A.DAR_OBJECT_UNAVAILABLE

    def _set(self, ref: A.AttributeRef, value: Data) -> int:
        key = (ref.class_id, ref.obis)
        if key not in OBJECTS:
            return A.DAR_OBJECT_UNDEFINED
        if key == DISCONNECT_CONTROL and ref.index == 4:
            if value.tag != axdr.ENUM or not 0 <= value.value <= 6:
                return A.DAR_TYPE_UNMATCHED
            self.disconnect.control_mode = value.value
            return A.DAR_SUCCESS
        if key == CLOCK and ref.index == 2:
            raw = value.value
            if value.tag != axdr.OCTET_STRING or len(raw) != 12:
                return A.DAR_TYPE_UNMATCHED
            year = int.from_bytes(raw[0:2], "big")
            wanted = datetime(year, raw[2], raw[3], raw[5], raw[6], raw[7], tzinfo=UTC)
            self.clock_offset = wanted - datetime.now(UTC)
            return A.DAR_SUCCESS
        return A.DAR_READ_WRITE_DENIED

    def _action(self, ref: A.AttributeRef, params: list[Data]) -> int:
        key = (ref.class_id, ref.obis)
        if key not in OBJECTS:
            return A.AR_OBJECT_UNDEFINED
        if key != DISCONNECT_CONTROL or ref.index not in (1, 2):
            return A.AR_OBJECT_UNAVAILABLE
        if "relay_error" in self.faults:
            self.events.append("relay_error: method refused")
            return A.AR_HARDWARE_FAULT
        self.energy.update(self.flowing())
        if "relay_stuck" in self.faults:
            self.events.append("relay_stuck: method accepted, relay unchanged")
            return A.AR_SUCCESS
        try:
            if ref.index == 1:
                self.disconnect.remote_disconnect()
                self.events.append("remote_disconnect")
            else:
                self.disconnect.remote_reconnect()
                self.events.append("remote_reconnect")
        except Refused as exc:
            return exc.result
        return A.AR_SUCCESS


