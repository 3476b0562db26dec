"""The DLMS client the edge agent uses: gurux-dlms's GXDLMSSecureClient over a Transport.

gurux builds and parses the APDUs and frames (it is the reference client we test the
simulator against); this module adds what gurux leaves to the application: the
request/response loop over a :class:`~shared.dlms.transport.Transport`, HDLC/wrapper
framing checks before gurux sees the bytes (so garbage becomes
:class:`MalformedResponse`), timeouts, and the mapping of every failure onto
:mod:`shared.dlms.errors`.

Workarounds for gurux-dlms 1.0.203 client behaviour (all handled here):

* ``GXDLMSClient.getData`` accepts frames addressed to anybody; on a shared HDLC line a
  late answer from another meter could be taken as ours. We check the HDLC addresses
  ourselves and drop frames that are not from the meter we talk to.
* gurux prints to stdout and raises bare ``Exception``/``ValueError`` on bad frames and on
  an HLS-GMAC f(CtoS) mismatch; we translate by where in the exchange it happened.
* gurux reports an action/data-access error through ``GXDLMSException.errorCode`` (or
  ``reply.error``), not by type; we map codes to ActionRefused / AccessDenied /
  DataAccessError. In a GET-with-list the first failed item fails the whole call.
* gurux ``print()``s on every deciphered APDU; we shadow ``print`` in its modules.
* gurux's AES-GCM is pure Python (most of the agent's CPU per exchange); it runs through
  OpenSSL instead (:mod:`shared.dlms.gurux_gcm`, installed at import), which
  also verifies the tag of an authenticated-and-encrypted response: gurux 1.0.203 does
  not, and a tampered one now fails as gurux's own tag check fails (``ValueError``,
  mapped to MalformedResponse).
"""

from __future__ import annotations

import contextlib
import importlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from types import TracebackType
from typing import Any, Literal

from gurux_dlms import GXByteBuffer, GXDLMSException, GXReplyData
from gurux_dlms.enums import Authentication, DataType, InterfaceType, ObjectType, Security
from gurux_dlms.GXDLMSConfirmedServiceError import GXDLMSConfirmedServiceError
from gurux_dlms.GXDLMSExceptionResponse import GXDLMSExceptionResponse
from gurux_dlms.objects import GXDLMSData, GXDLMSDisconnectControl, GXDLMSObject
from gurux_dlms.secure import GXDLMSSecureClient

from shared.dlms import gurux_gcm, hdlc, wrapper
from shared.dlms.errors import (
    AccessDenied,
    ActionRefused,
    AssociationRefused,
    DataAccessError,
    DlmsError,
    MalformedResponse,
    MeterUnreachable,
    NoResponse,
    Preempted,
    TransportError,
)
from shared.dlms.profile import parse_cosem_datetime
from shared.dlms.transport import Transport


def _silent(*_args: object, **_kwargs: object) -> None:
    return None


# gurux-dlms 1.0.203 print()s on every deciphered APDU ("Encryption is applied.") and on
# some errors. Shadow ``print`` in those modules only (thread-safe, unlike
# contextlib.redirect_stdout, which swaps sys.stdout for the whole process).
# (gurux_dlms/__init__ rebinds module names to classes, hence import_module.)
for _name in (
    "GXDLMSChippering", "GXDLMSChipperingStream", "GXDLMSClient", "_GXAPDU", "GXDLMS",
    "GXDLMSSettings", "GXSecure", "GXDLMSConverter",
):
    importlib.import_module(f"gurux_dlms.{_name}").print = _silent  # type: ignore[attr-defined]

gurux_gcm.install()

DISCONNECT_CONTROL_OBIS = "0.0.96.3.10.255"
ENERGY_OBIS = "1.0.1.8.0.255"
CLOCK_OBIS = "0.0.1.0.0.255"
# After a broken HDLC session: silence this long ends the line's settling (longer
# than one PLC frame's flight), read at most SETTLE_LIMIT times.
SETTLE_QUIET_S = 0.5
SETTLE_LIMIT = 20
UNITS = {27: "W", 28: "VA", 29: "var", 30: "Wh", 31: "VAh", 32: "varh", 33: "A", 35: "V"}


@dataclass(frozen=True)
class MeterKeys:
    block_key: bytes
    auth_key: bytes
    system_title: bytes = b"RCDAGENT"  # client system title, 8 bytes


@dataclass(frozen=True)
class MeterAddress:
    interface: Literal["hdlc", "wrapper"]
    logical_server: int = 1
    physical_server: int | None = None  # HDLC address on the line


@dataclass(frozen=True)
class DisconnectState:
    output_state: bool
    control_state: int
    control_mode: int


@dataclass(frozen=True)
class Status:
    """One GET-with-list of what a switch decision and its result need: the relay state,
    the energy register and the clock; control_mode and scaler_unit only when asked
    (the agent caches them per meter)."""

    output_state: bool
    control_state: int
    control_mode: int | None
    energy_raw: float  # unscaled register value
    scaler: int | None
    unit: int | None
    meter_clock: datetime | None


@dataclass(frozen=True)
class ReadBack:
    output_state: bool
    control_state: int
    control_mode: int
    energy_value: float  # already scaled
    energy_unit: str  # e.g. "Wh"
    meter_clock: datetime | None


def _boolean(value: Any, what: str) -> bool:
    """A DLMS boolean as the meter sent it; anything else is a malformed answer (a
    truthy integer is not taken for "connected")."""
    if not isinstance(value, bool):
        raise MalformedResponse(f"{what}: expected a boolean, got {value!r}")
    return value


def _integer(value: Any, what: str) -> int:
    """A DLMS integer or enum as the meter sent it."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise MalformedResponse(f"{what}: expected an integer, got {value!r}")
    return value


def _register(value: Any, what: str) -> float:
    """A register value: an integer or a float, nothing else."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise MalformedResponse(f"{what}: expected a number, got {value!r}")
    return float(value)


def _scaler_unit(value: Any) -> tuple[int, int]:
    if not isinstance(value, list) or len(value) != 2:
        raise MalformedResponse(f"bad scaler_unit {value!r}")
    return _integer(value[0], "scaler"), _integer(value[1], "unit")


def _clock(value: Any) -> datetime | None:
    if isinstance(value, bytes | bytearray):
        return parse_cosem_datetime(bytes(value))
    if hasattr(value, "value") and isinstance(value.value, datetime):
        return value.value
    return None


def unit_name(unit: int) -> str:
    return UNITS.get(unit, str(unit))


class MeterSession:
    """One association with one meter; use as a context manager."""

    def __init__(
        self,
        transport: Transport,
        address: MeterAddress,
        keys: MeterKeys | None,
        *,
        client_address: int = 1,
        invocation_counter: int = 0,
        timeout: float = 5.0,
    ) -> None:
        self._transport = transport
        self._address = address
        self._keys = keys
        self._timeout = timeout
        self._hdlc = address.interface == "hdlc"
        self._broken = False
        self._associated = False
        self._invoke = 0
        if self._hdlc:
            server: int = GXDLMSSecureClient.getServerAddress(
                address.logical_server, address.physical_server or 0
            ) if address.physical_server is not None else address.logical_server
        else:
            server = address.logical_server
        auth = Authentication.HIGH_GMAC if keys is not None else Authentication.NONE
        iface = InterfaceType.HDLC if self._hdlc else InterfaceType.WRAPPER
        self._client = GXDLMSSecureClient(True, client_address, server, auth, None, iface)
        self._client_address = client_address
        if keys is not None:
            c = self._client.ciphering
            c.security = Security.AUTHENTICATION_ENCRYPTION
            c.securitySuite = 0
            c.systemTitle = bytearray(keys.system_title)
            c.blockCipherKey = bytearray(keys.block_key)
            c.authenticationKey = bytearray(keys.auth_key)
            c.invocationCounter = invocation_counter
        self._expected_src = (
            hdlc.server_address(address.logical_server, address.physical_server)
            if self._hdlc else b""
        )
        self._hdlc_reader = hdlc.FrameReader()
        self._wrapper_reader = wrapper.WrapperReader()
        # Asked before every request frame goes out; True gives the line up (Preempted)
        # and the session ends without its closing exchange (the relay audit's hook).
        self.preempt: Callable[[], bool] | None = None
        self._abandoned = False

    # ------------------------------------------------------------------ public API

    @property
    def invocation_counter(self) -> int:
        """The next invocation counter the client would use (persist it)."""
        if self._keys is None:
            return 0
        return int(self._client.ciphering.invocationCounter)

    def __enter__(self) -> MeterSession:
        try:
            self._associate()
        except BaseException:
            self._close_link()
            raise
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._close_link()

    def read(self, obis: str, class_id: int, attribute: int) -> object:
        """GET one attribute; the value as gurux converts it (bool, int, bytes, list,
        GXDateTime for a clock, ...). A failed GET raises DataAccessError(result)."""
        obj = self._object(obis, class_id)
        with self._guard("read"):
            reply = self._exchange_all(self._client.read(obj, attribute))
            self._check_reply(reply, action=False)
            return self._client.updateValue(obj, attribute, reply.value)

    def read_disconnect_state(self) -> DisconnectState:
        values = self._read_list(
            [(DISCONNECT_CONTROL_OBIS, 70, 2), (DISCONNECT_CONTROL_OBIS, 70, 3),
             (DISCONNECT_CONTROL_OBIS, 70, 4)]
        )
        return DisconnectState(
            _boolean(values[0], "output_state"),
            _integer(values[1], "control_state"),
            _integer(values[2], "control_mode"),
        )

    def remote_disconnect(self) -> None:
        self._method(1)

    def remote_reconnect(self) -> None:
        self._method(2)

    def read_back(self) -> ReadBack:
        """One GET-with-list: control_state, output_state, control_mode, energy, clock."""
        v = self._read_list([
            (DISCONNECT_CONTROL_OBIS, 70, 3), (DISCONNECT_CONTROL_OBIS, 70, 2),
            (DISCONNECT_CONTROL_OBIS, 70, 4), (ENERGY_OBIS, 3, 2), (ENERGY_OBIS, 3, 3),
            (CLOCK_OBIS, 8, 2),
        ])
        scaler, unit = _scaler_unit(v[4])
        energy = _register(v[3], "energy register") * (10.0**scaler)
        meter_clock = _clock(v[5])
        return ReadBack(
            output_state=_boolean(v[1], "output_state"),
            control_state=_integer(v[0], "control_state"),
            control_mode=_integer(v[2], "control_mode"),
            energy_value=energy, energy_unit=UNITS.get(unit, str(unit)), meter_clock=meter_clock,
        )

    def read_status(self, *, mode: bool, scaler: bool) -> Status:
        """One GET-with-list: output_state, control_state, energy value and clock, plus
        control_mode (``mode``) and the energy scaler_unit (``scaler``) when asked."""
        items = [(DISCONNECT_CONTROL_OBIS, 70, 2), (DISCONNECT_CONTROL_OBIS, 70, 3)]
        if mode:
            items.append((DISCONNECT_CONTROL_OBIS, 70, 4))
        items.append((ENERGY_OBIS, 3, 2))
        if scaler:
            items.append((ENERGY_OBIS, 3, 3))
        items.append((CLOCK_OBIS, 8, 2))
        values = iter(self._read_list(items))
        output_state = _boolean(next(values), "output_state")
        control_state = _integer(next(values), "control_state")
        control_mode = _integer(next(values), "control_mode") if mode else None
        energy = _register(next(values), "energy register")
        scale: int | None = None
        unit: int | None = None
        if scaler:
            scale, unit = _scaler_unit(next(values))
        return Status(output_state, control_state, control_mode, energy, scale, unit,
                      _clock(next(values)))

    def read_values(self, items: list[tuple[str, int, int]]) -> list[Any]:
        """One GET-with-list of ``(obis, class_id, attribute)`` items, values as gurux
        converts them (the relay audit's state read)."""
        return self._read_list(items)

    def read_selective(self, obis: str, class_id: int, attribute: int, access: bytes) -> Any:
        """GET one attribute with selective access; ``access`` is the access-selector
        and its parameters as :func:`shared.dlms.profile.encode_access` builds them.
        gurux follows a block transfer (GET-Request-next until the last block) and hands
        back the reassembled value (a profile buffer: ``[[clock bytes, code], ...]``)."""
        with self._guard("read-selective"):
            frames = self._client._read(obis, class_id, attribute, GXByteBuffer(access))
            reply = self._exchange_all(frames)
            self._check_reply(reply, action=False)
            value = reply.value
        return [] if value is None else value

    def abandon(self) -> None:
        """Leave without closing the link (no DISC, no RLRQ): the exchange that would
        close it is given to an order waiting on the line; the meter's next SNRM (or its
        inactivity timeout) ends the old link."""
        self._associated = False
        self._abandoned = True

    # ------------------------------------------------------------------ internals

    def _object(self, obis: str, class_id: int) -> GXDLMSObject:
        try:
            ot = ObjectType(class_id)
        except ValueError:
            ot = None
        obj: GXDLMSObject = (
            GXDLMSSecureClient.createObject(ot) if ot is not None else GXDLMSData()
        )
        if obj is None:
            obj = GXDLMSData()
        obj.logicalName = obis
        if ot is None:
            obj.objectType = class_id
        return obj

    def _read_list(self, items: list[tuple[str, int, int]]) -> list[Any]:
        objs: dict[tuple[str, int], GXDLMSObject] = {}
        pairs = []
        for obis, cid, attr in items:
            obj = objs.setdefault((obis, cid), self._object(obis, cid))
            pairs.append((obj, attr))
        values: list[Any] = []
        with self._guard("read-with-list"):
            for frames in self._client.readList(pairs):
                reply = self._exchange_all(frames if isinstance(frames, list) else [frames])
                self._check_reply(reply, action=False)
                if reply.value is not None:
                    values.extend(reply.value)
        if len(values) != len(items):
            raise MalformedResponse(f"expected {len(items)} values, got {len(values)}")
        return [bytes(v) if isinstance(v, bytearray) else v for v in values]

    def _method(self, index: int) -> None:
        dc = GXDLMSDisconnectControl(DISCONNECT_CONTROL_OBIS)
        with self._guard("action"):
            frames = self._client.method(dc, index, 0, DataType.INT8)
            reply = self._exchange_all(frames)
            self._check_reply(reply, action=True)

    @staticmethod
    def _check_reply(reply: GXReplyData, *, action: bool) -> None:
        err = int(reply.error or 0)
        if err:
            _raise_result(err, action)

    @contextlib.contextmanager
    def _guard(self, what: str) -> Iterator[None]:
        if not self._associated:
            raise DlmsError(f"{what}: no association")
        try:
            yield
        except DlmsError as exc:
            if isinstance(exc, NoResponse | MalformedResponse | TransportError):
                self._broken = True
            raise
        except GXDLMSException as exc:
            _raise_result(int(exc.errorCode), what == "action", exc)
        except GXDLMSExceptionResponse as exc:
            raise AccessDenied(3, f"{what}: exception-response {exc}") from exc
        except GXDLMSConfirmedServiceError as exc:
            raise DataAccessError(250, f"{what}: confirmed-service-error {exc}") from exc
        except (ValueError, IndexError, TypeError) as exc:
            self._broken = True
            raise MalformedResponse(f"{what}: cannot parse the answer: {exc}") from exc

    def _associate(self) -> None:
        self._transport.drain()
        try:
            if self._hdlc:
                snrm = self._client.snrmRequest()
                try:
                    reply = self._exchange(snrm)
                except NoResponse as exc:
                    raise MeterUnreachable(f"no HDLC link answer (UA) from the meter: {exc}") from exc
                self._client.parseUAResponse(reply.data)
            reply = self._exchange_all(self._client.aarqRequest())
            self._client.parseAareResponse(reply.data)
        except GXDLMSException as exc:
            if getattr(exc, "diagnostic", None) is not None and getattr(exc, "result", None):
                raise AssociationRefused(int(exc.diagnostic), int(exc.result)) from exc
            raise MalformedResponse(f"bad AARE: {exc}") from exc
        except (ValueError, IndexError, TypeError) as exc:
            raise MalformedResponse(f"bad association answer: {exc}") from exc
        except (NoResponse, MalformedResponse, TransportError):
            self._broken = True
            raise
        if self._client.getIsAuthenticationRequired():
            try:
                reply = self._exchange_all(self._client.getApplicationAssociationRequest())
                if reply.error:
                    raise AssociationRefused(13, 1, f"HLS pass 3 refused (result {reply.error})")
                self._client.parseApplicationAssociationResponse(reply.data)
            except (NoResponse, MalformedResponse, TransportError):
                self._broken = True
                raise
            except GXDLMSException as exc:
                raise AssociationRefused(13, 1, f"HLS pass 3 refused: {exc}") from exc
            except GXDLMSExceptionResponse as exc:
                raise AssociationRefused(13, 1, f"HLS pass 3 refused: {exc}") from exc
            except (AssociationRefused, Preempted):
                raise
            except Exception as exc:  # gurux raises bare Exception on f(CtoS) mismatch
                raise AssociationRefused(13, 1, f"meter failed HLS pass 4: {exc}") from exc
        self._associated = True

    def _close_link(self) -> None:
        """Release the association, one exchange; never raises.

        On HDLC the DISC that closes the link releases the association with it (the
        association lives as long as its link), so no RLRQ goes first: one exchange
        of airtime less per order on a PLC line. On the TCP wrapper an RLRQ releases it.
        """
        if self._abandoned:
            return
        try:
            if self._associated and not self._broken and not self._hdlc:
                with contextlib.suppress(Exception):
                    frames = self._client.releaseRequest()
                    if frames:
                        self._exchange_all(frames, timeout=min(self._timeout, 2.0))
            if self._hdlc:
                disc = self._client.disconnectRequest(True)
                if disc:
                    if self._broken:
                        with contextlib.suppress(Exception):
                            self._transport.send(bytes(disc))
                            # On a shared line this meter's late or garbled answers
                            # (to DISC, or to what timed out) must not land in the
                            # next meter's exchange and be taken for its fault.
                            self._settle(quiet=min(self._timeout, SETTLE_QUIET_S))
                    else:
                        with contextlib.suppress(Exception):
                            self._exchange(disc, timeout=min(self._timeout, 2.0))
        finally:
            self._associated = False

    def _settle(self, quiet: float) -> None:
        """Read and discard until the line has been silent for ``quiet`` seconds
        (at most ``SETTLE_LIMIT`` quiet periods, so a chattering line cannot hold us)."""
        for _ in range(SETTLE_LIMIT):
            try:
                self._transport.receive(quiet)
            except NoResponse:
                return

    def _exchange_all(self, frames: Any, timeout: float | None = None) -> GXReplyData:
        reply = GXReplyData()
        for frame in frames or ():
            reply = self._exchange(frame, timeout, reply)
        return reply

    def _exchange(
        self, frame: Any, timeout: float | None = None, reply: GXReplyData | None = None
    ) -> GXReplyData:
        """Send one request frame, collect the answer (following HDLC segmentation)."""
        reply = reply if reply is not None else GXReplyData()
        data: bytes | None = bytes(frame)
        while True:
            if data is not None:
                if self.preempt is not None and self.preempt():
                    self.abandon()
                    raise Preempted("line given up to a waiting order between exchanges")
                self._transport.send(data)
            self._receive_into(reply, timeout if timeout is not None else self._timeout)
            if not reply.isMoreData():
                return reply
            rr = self._client.receiverReady(reply)
            data = bytes(rr) if rr is not None else None

    def _receive_into(self, reply: GXReplyData, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            for raw in self._frames_available():
                buf = GXByteBuffer(raw)
                notify = GXReplyData()
                complete = self._client.getData(buf, reply, notify)
                if complete:
                    return
            left = deadline - time.monotonic()
            if left <= 0:
                raise NoResponse(f"no answer within {timeout:.2f} s")
            self._pending = self._transport.receive(left)

    _pending: bytes = b""

    def _frames_available(self) -> list[bytes]:
        data, self._pending = self._pending, b""
        if not data:
            return []
        out: list[bytes] = []
        if self._hdlc:
            for item in self._hdlc_reader.feed(data):
                if isinstance(item, MalformedResponse):
                    raise MalformedResponse(f"garbage on the line: {item}")
                if item.src != self._expected_src:
                    continue  # another meter's (late) answer on a shared line
                out.append(hdlc.encode_frame(item))
        else:
            for pdu in self._wrapper_reader.feed(data):
                out.append(wrapper.encode(pdu.source, pdu.destination, pdu.apdu))
        return out


def _raise_result(code: int, action: bool, cause: BaseException | None = None) -> None:
    if code == 3:
        raise AccessDenied(code, "access denied (read-write-denied)") from cause
    if action:
        raise ActionRefused(code) from cause
    raise DataAccessError(code) from cause
