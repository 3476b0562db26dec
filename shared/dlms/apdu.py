"""ACSE and xDLMS APDUs (IEC 62056-5-3, Logical Name referencing), without I/O.

Covers what a meter for remote connect/disconnect needs: AARQ/AARE (with HLS mechanism
and ciphered user-information), RLRQ/RLRE, GET (normal and with-list), SET (normal),
ACTION (normal), exception-response and confirmed-service-error. GET-Request-Normal may
carry selective access (kept undecoded in ``Request.access``; see ``shared.dlms.profile``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from shared.dlms import axdr
from shared.dlms.axdr import Data, decode_length, encode_length
from shared.dlms.errors import MalformedResponse

AARQ = 0x60
AARE = 0x61
RLRQ = 0x62
RLRE = 0x63
GET_REQUEST = 0xC0
SET_REQUEST = 0xC1
ACTION_REQUEST = 0xC3
GET_RESPONSE = 0xC4
SET_RESPONSE = 0xC5
ACTION_RESPONSE = 0xC7
EXCEPTION_RESPONSE = 0xD8
INITIATE_REQUEST = 0x01
INITIATE_RESPONSE = 0x08
CONFIRMED_SERVICE_ERROR = 0x0E

CONTEXT_LN = b"\x60\x85\x74\x05\x08\x01\x01"
CONTEXT_LN_CIPHERED = b"\x60\x85\x74\x05\x08\x01\x03"
MECHANISM_PREFIX = b"\x60\x85\x74\x05\x08\x02"
MECH_NONE = 0
MECH_LOW = 1
MECH_HLS_GMAC = 5

# data-access-result
DAR_SUCCESS = 0
DAR_HARDWARE_FAULT = 1
DAR_TEMPORARY_FAILURE = 2
DAR_READ_WRITE_DENIED = 3
DAR_OBJECT_UNDEFINED = 4
DAR_OBJECT_CLASS_INCONSISTENT = 9
DAR_OBJECT_UNAVAILABLE = 11
DAR_TYPE_UNMATCHED = 12
DAR_SCOPE_OF_ACCESS_VIOLATED = 13
DAR_OTHER_REASON = 250

# action-result uses the same numbering
AR_SUCCESS = 0
AR_HARDWARE_FAULT = 1
AR_TEMPORARY_FAILURE = 2
AR_READ_WRITE_DENIED = 3
AR_OBJECT_UNDEFINED = 4
AR_OBJECT_UNAVAILABLE = 11
AR_TYPE_UNMATCHED = 12
AR_OTHER_REASON = 250

# conformance bits (24-bit block) the simulator offers
CONF_GET = 0x001000
CONF_SET = 0x000800
CONF_SELECTIVE_ACCESS = 0x000400
CONF_ACTION = 0x000100
CONF_MULTIPLE_REFERENCES = 0x000200
CONF_BLOCK_TRANSFER_GET = 0x000002 << 12  # 0x002000
SERVER_CONFORMANCE = 0x001000 | 0x000800 | 0x000100 | 0x000200 | 0x000400 | 0x080000 | 0x100000


@dataclass(frozen=True)
class AttributeRef:
    class_id: int
    obis: bytes
    index: int

    @property
    def obis_str(self) -> str:
        return ".".join(str(b) for b in self.obis)


def obis_bytes(obis: str) -> bytes:
    parts = [int(p) for p in obis.replace("-", ".").replace(":", ".").replace("*", ".").split(".")]
    if len(parts) != 6:
        raise ValueError(f"bad OBIS code {obis!r}")
    return bytes(parts)


# ---------------------------------------------------------------- BER helpers (ACSE)


def _ber_items(buf: bytes) -> list[tuple[int, bytes]]:
    items = []
    pos = 0
    while pos < len(buf):
        tag = buf[pos]
        length, pos = decode_length(buf, pos + 1)
        if pos + length > len(buf):
            raise MalformedResponse("truncated ACSE element")
        items.append((tag, bytes(buf[pos : pos + length])))
        pos += length
    return items


def _ber(tag: int, content: bytes) -> bytes:
    return bytes((tag,)) + encode_length(len(content)) + content


# ---------------------------------------------------------------- AARQ / AARE


@dataclass
class Aarq:
    context: bytes = CONTEXT_LN
    calling_title: bytes | None = None
    mechanism: int | None = None
    calling_auth_value: bytes | None = None
    user_information: bytes | None = None  # the xDLMS APDU (plain or glo-ciphered)

    @property
    def ciphered(self) -> bool:
        return self.context == CONTEXT_LN_CIPHERED


def parse_aarq(apdu: bytes) -> Aarq:
    if not apdu or apdu[0] != AARQ:
        raise MalformedResponse("not an AARQ")
    length, pos = decode_length(apdu, 1)
    out = Aarq()
    for tag, content in _ber_items(apdu[pos : pos + length]):
        if tag == 0xA1:  # application-context-name: 06 len oid
            out.context = content[2:]
        elif tag == 0xA6:  # calling-AP-title: 04 len title
            out.calling_title = content[2:]
        elif tag == 0x8B:  # mechanism-name (implicit OID)
            if content[:-1] == MECHANISM_PREFIX:
                out.mechanism = content[-1]
            else:
                out.mechanism = -1
        elif tag == 0xAC:  # calling-authentication-value: 80 len value
            out.calling_auth_value = content[2:]
        elif tag == 0xBE:  # user-information: 04 len xDLMS APDU
            out.user_information = content[2:]
    return out


def build_aarq(a: Aarq) -> bytes:
    body = _ber(0xA1, _ber(0x06, a.context))
    if a.calling_title is not None:
        body += _ber(0xA6, _ber(0x04, a.calling_title))
    if a.mechanism is not None and a.mechanism != MECH_NONE:
        body += _ber(0x8A, b"\x07\x80")
        body += _ber(0x8B, MECHANISM_PREFIX + bytes((a.mechanism,)))
    if a.calling_auth_value is not None:
        body += _ber(0xAC, _ber(0x80, a.calling_auth_value))
    if a.user_information is not None:
        body += _ber(0xBE, _ber(0x04, a.user_information))
    return _ber(AARQ, body)


@dataclass
class Aare:
    result: int = 0  # 0 accepted, 1 rejected-permanent, 2 rejected-transient
    diagnostic: int = 0  # acse-service-user diagnostic
    context: bytes = CONTEXT_LN
    responding_title: bytes | None = None
    mechanism: int | None = None
    responding_auth_value: bytes | None = None
    user_information: bytes | None = None


def build_aare(a: Aare) -> bytes:
    body = _ber(0xA1, _ber(0x06, a.context))
    body += _ber(0xA2, _ber(0x02, bytes((a.result,))))
    body += _ber(0xA3, _ber(0xA1, _ber(0x02, bytes((a.diagnostic,)))))
    if a.responding_title is not None:
        body += _ber(0xA4, _ber(0x04, a.responding_title))
    if a.mechanism is not None and a.mechanism != MECH_NONE:
        body += _ber(0x88, b"\x07\x80")
        body += _ber(0x89, MECHANISM_PREFIX + bytes((a.mechanism,)))
    if a.responding_auth_value is not None:
        body += _ber(0xAA, _ber(0x80, a.responding_auth_value))
    if a.user_information is not None:
        body += _ber(0xBE, _ber(0x04, a.user_information))
    return _ber(AARE, body)


def parse_aare(apdu: bytes) -> Aare:
    if not apdu or apdu[0] != AARE:
        raise MalformedResponse("not an AARE")
    length, pos = decode_length(apdu, 1)
    out = Aare()
    for tag, content in _ber_items(apdu[pos : pos + length]):
        if tag == 0xA1:
            out.context = content[2:]
        elif tag == 0xA2:
            out.result = content[-1]
        elif tag == 0xA3:
            out.diagnostic = content[-1]
        elif tag == 0xA4:
            out.responding_title = content[2:]
        elif tag == 0x89:
            out.mechanism = content[-1]
        elif tag == 0xAA:
            out.responding_auth_value = content[2:]
        elif tag == 0xBE:
            out.user_information = content[2:]
    return out


@dataclass(frozen=True)
class InitiateRequest:
    dlms_version: int
    conformance: int
    max_pdu: int
    dedicated_key: bytes | None = None


def parse_initiate_request(apdu: bytes) -> InitiateRequest:
    try:
        if apdu[0] != INITIATE_REQUEST:
            raise MalformedResponse("not an InitiateRequest")
        pos = 1
        key = None
        if apdu[pos]:
            n = apdu[pos + 1]
            key = bytes(apdu[pos + 2 : pos + 2 + n])
            pos += 2 + n
        else:
            pos += 1
        pos += 2 if apdu[pos] else 1  # response-allowed
        pos += 2 if apdu[pos] else 1  # proposed-quality-of-service
        version = apdu[pos]
        pos += 1
        if apdu[pos : pos + 3] != b"\x5f\x1f\x04":
            raise MalformedResponse("bad conformance block")
        conformance = int.from_bytes(apdu[pos + 4 : pos + 7], "big")
        max_pdu = int.from_bytes(apdu[pos + 7 : pos + 9], "big")
    except IndexError as exc:
        raise MalformedResponse("truncated InitiateRequest") from exc
    return InitiateRequest(version, conformance, max_pdu, key)


def build_initiate_request(conformance: int, max_pdu: int = 0xFFFF) -> bytes:
    return (
        b"\x01\x00\x00\x00\x06\x5f\x1f\x04\x00"
        + conformance.to_bytes(3, "big") + max_pdu.to_bytes(2, "big")
    )


def build_initiate_response(conformance: int, max_pdu: int) -> bytes:
    return (
        b"\x08\x00\x06\x5f\x1f\x04\x00"
        + conformance.to_bytes(3, "big") + max_pdu.to_bytes(2, "big") + b"\x00\x07"
    )


def build_confirmed_service_error(service: int = 1, error_class: int = 6, error: int = 0) -> bytes:
    """ConfirmedServiceError; default initiateError / initiate / other."""
    return bytes((CONFIRMED_SERVICE_ERROR, service, error_class, error))


def build_rlrq() -> bytes:
    return b"\x62\x03\x80\x01\x00"


def build_rlre(reason: int = 0) -> bytes:
    return bytes((RLRE, 3, 0x80, 1, reason))


# ---------------------------------------------------------------- GET / SET / ACTION


@dataclass
class Request:
    """A parsed GET/SET/ACTION request."""

    service: int  # GET_REQUEST, SET_REQUEST or ACTION_REQUEST
    kind: int  # 1 normal, 2 next (GET), 3 with-list ...
    invoke_id: int
    refs: list[AttributeRef] = field(default_factory=list)
    data: list[Data] = field(default_factory=list)  # SET values / ACTION parameters
    block_number: int = 0
    # per attribute of a GET: (access-selector, access-parameters), None without
    access: list[tuple[int, Data] | None] = field(default_factory=list)


def _attr_ref(buf: bytes, pos: int) -> tuple[AttributeRef, int]:
    class_id = int.from_bytes(buf[pos : pos + 2], "big")
    obis = bytes(buf[pos + 2 : pos + 8])
    index = buf[pos + 8]
    if len(obis) != 6:
        raise MalformedResponse("truncated attribute descriptor")
    return AttributeRef(class_id, obis, index), pos + 9


def _skip_selective_access(buf: bytes, pos: int) -> int:
    if buf[pos]:
        raise MalformedResponse("selective access is not supported")
    return pos + 1


def _selective_access(buf: bytes, pos: int) -> tuple[tuple[int, Data] | None, int]:
    """The optional access-selection of a GET: (selector, parameters) or None."""
    if not buf[pos]:
        return None, pos + 1
    selector = buf[pos + 1]
    parameters, pos = axdr.decode(buf, pos + 2)
    return (selector, parameters), pos


def parse_request(apdu: bytes) -> Request:
    """Parse a plain GET/SET/ACTION request APDU."""
    try:
        service, kind, invoke = apdu[0], apdu[1], apdu[2]
        req = Request(service, kind, invoke)
        pos = 3
        if service == GET_REQUEST:
            if kind == 1:
                ref, pos = _attr_ref(apdu, pos)
                access, pos = _selective_access(apdu, pos)
                req.refs.append(ref)
                req.access.append(access)
            elif kind == 2:
                req.block_number = int.from_bytes(apdu[pos : pos + 4], "big")
            elif kind == 3:
                n, pos = decode_length(apdu, pos)
                for _ in range(n):
                    ref, pos = _attr_ref(apdu, pos)
                    pos = _skip_selective_access(apdu, pos)
                    req.refs.append(ref)
        elif service == SET_REQUEST and kind == 1:
            ref, pos = _attr_ref(apdu, pos)
            pos = _skip_selective_access(apdu, pos)
            value, pos = axdr.decode(apdu, pos)
            req.refs.append(ref)
            req.data.append(value)
        elif service == ACTION_REQUEST and kind == 1:
            ref, pos = _attr_ref(apdu, pos)
            req.refs.append(ref)
            if apdu[pos]:
                value, pos = axdr.decode(apdu, pos + 1)
                req.data.append(value)
    except IndexError as exc:
        raise MalformedResponse("truncated request") from exc
    return req


def _ref_bytes(ref: AttributeRef) -> bytes:
    return ref.class_id.to_bytes(2, "big") + ref.obis + bytes((ref.index,))


def build_get_request(invoke_id: int, ref: AttributeRef) -> bytes:
    return bytes((GET_REQUEST, 1, invoke_id)) + _ref_bytes(ref) + b"\x00"


def build_get_request_with_list(invoke_id: int, refs: list[AttributeRef]) -> bytes:
    body = b"".join(_ref_bytes(r) + b"\x00" for r in refs)
    return bytes((GET_REQUEST, 3, invoke_id)) + encode_length(len(refs)) + body


def build_set_request(invoke_id: int, ref: AttributeRef, value: Data) -> bytes:
    return bytes((SET_REQUEST, 1, invoke_id)) + _ref_bytes(ref) + b"\x00" + axdr.encode(value)


def build_action_request(invoke_id: int, ref: AttributeRef, param: Data | None) -> bytes:
    tail = b"\x01" + axdr.encode(param) if param is not None else b"\x00"
    return bytes((ACTION_REQUEST, 1, invoke_id)) + _ref_bytes(ref) + tail


GetResult = Data | int  # Data on success, data-access-result code on failure


def _get_result(r: GetResult) -> bytes:
    if isinstance(r, Data):
        return b"\x00" + axdr.encode(r)
    return bytes((1, r))


def build_get_response(invoke_id: int, result: GetResult) -> bytes:
    return bytes((GET_RESPONSE, 1, invoke_id)) + _get_result(result)


def build_get_response_with_list(invoke_id: int, results: list[GetResult]) -> bytes:
    body = b"".join(_get_result(r) for r in results)
    return bytes((GET_RESPONSE, 3, invoke_id)) + encode_length(len(results)) + body


def build_get_response_block(invoke_id: int, block: int, last: bool, raw: bytes) -> bytes:
    return (
        bytes((GET_RESPONSE, 2, invoke_id, 1 if last else 0)) + block.to_bytes(4, "big")
        + b"\x00" + encode_length(len(raw)) + raw
    )


def build_set_response(invoke_id: int, result: int) -> bytes:
    return bytes((SET_RESPONSE, 1, invoke_id, result))


def build_action_response(invoke_id: int, result: int, data: Data | None = None) -> bytes:
    tail = b"\x01\x00" + axdr.encode(data) if data is not None else b"\x00"
    return bytes((ACTION_RESPONSE, 1, invoke_id, result)) + tail


def build_exception_response(state_error: int = 1, service_error: int = 2) -> bytes:
    """ExceptionResponse: state-error 1 service-not-allowed / 2 service-unknown;
    service-error 1 operation-not-possible, 2 service-not-supported, 3 other-reason,
    5 decipher-error, 6 invocation-counter-error."""
    return bytes((EXCEPTION_RESPONSE, state_error, service_error))


def parse_get_response(apdu: bytes) -> list[GetResult]:
    """Parse a GET response (normal or with-list) into Data / error codes."""
    if not apdu or apdu[0] != GET_RESPONSE:
        raise MalformedResponse("not a GET response")
    kind = apdu[1]
    pos = 3

    def one(p: int) -> tuple[GetResult, int]:
        if apdu[p] == 0:
            return axdr.decode(apdu, p + 1)
        return apdu[p + 1], p + 2

    if kind == 1:
        return [one(pos)[0]]
    if kind == 3:
        n, pos = decode_length(apdu, pos)
        out = []
        for _ in range(n):
            r, pos = one(pos)
            out.append(r)
        return out
    raise MalformedResponse(f"unsupported GET response kind {kind}")
