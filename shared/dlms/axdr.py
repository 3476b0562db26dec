"""A-XDR encoding of COSEM ``Data`` (IEC 62056-6-2 / 62056-5-3), the subset ami-rcd needs.

Values are represented as :class:`Data` (a type tag plus a Python value); arrays and
structures hold lists of :class:`Data`. ``Data.py()`` unwraps to plain Python.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any

from shared.dlms.errors import MalformedResponse

NULL = 0
ARRAY = 1
STRUCTURE = 2
BOOLEAN = 3
BIT_STRING = 4
INT32 = 5
UINT32 = 6
OCTET_STRING = 9
VISIBLE_STRING = 10
UTF8_STRING = 12
INT8 = 15
INT16 = 16
UINT8 = 17
UINT16 = 18
INT64 = 20
UINT64 = 21
ENUM = 22
FLOAT32 = 23
FLOAT64 = 24

_INT_FORMATS: dict[int, str] = {
    INT32: ">i", UINT32: ">I", INT8: ">b", INT16: ">h", UINT8: ">B", UINT16: ">H",
    INT64: ">q", UINT64: ">Q", ENUM: ">B", FLOAT32: ">f", FLOAT64: ">d",
}


@dataclass(frozen=True)
class Data:
    tag: int
    value: Any = None

    def py(self) -> Any:
        if self.tag in (ARRAY, STRUCTURE):
            return [d.py() for d in self.value]
        return self.value


def null() -> Data:
    return Data(NULL)


def boolean(v: bool) -> Data:
    return Data(BOOLEAN, bool(v))


def enum(v: int) -> Data:
    return Data(ENUM, v)


def int8(v: int) -> Data:
    return Data(INT8, v)


def uint8(v: int) -> Data:
    return Data(UINT8, v)


def uint16(v: int) -> Data:
    return Data(UINT16, v)


def uint32(v: int) -> Data:
    return Data(UINT32, v)


def uint64(v: int) -> Data:
    return Data(UINT64, v)


def octets(v: bytes) -> Data:
    return Data(OCTET_STRING, bytes(v))


def structure(*items: Data) -> Data:
    return Data(STRUCTURE, list(items))


def array(items: list[Data]) -> Data:
    return Data(ARRAY, list(items))


def encode_length(n: int) -> bytes:
    """BER-style length as A-XDR uses it for variable-length items."""
    if n < 0x80:
        return bytes((n,))
    raw = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes((0x80 | len(raw),)) + raw


def decode_length(buf: bytes, pos: int) -> tuple[int, int]:
    if pos >= len(buf):
        raise MalformedResponse("truncated length")
    first = buf[pos]
    if first < 0x80:
        return first, pos + 1
    n = first & 0x7F
    if pos + 1 + n > len(buf):
        raise MalformedResponse("truncated length")
    return int.from_bytes(buf[pos + 1 : pos + 1 + n], "big"), pos + 1 + n


def encode(d: Data) -> bytes:
    t = d.tag
    if t == NULL:
        return b"\x00"
    if t in (ARRAY, STRUCTURE):
        return bytes((t,)) + encode_length(len(d.value)) + b"".join(encode(x) for x in d.value)
    if t == BOOLEAN:
        return bytes((t, 0xFF if d.value else 0x00))
    if t in (OCTET_STRING, VISIBLE_STRING, UTF8_STRING):
        raw = d.value.encode() if isinstance(d.value, str) else bytes(d.value)
        return bytes((t,)) + encode_length(len(raw)) + raw
    if t in _INT_FORMATS:
        return bytes((t,)) + struct.pack(_INT_FORMATS[t], d.value)
    raise ValueError(f"cannot encode A-XDR type {t}")


def decode(buf: bytes, pos: int = 0) -> tuple[Data, int]:
    """Decode one Data at ``pos``; return it and the position after it."""
    try:
        t = buf[pos]
        pos += 1
        if t == NULL:
            return Data(NULL), pos
        if t in (ARRAY, STRUCTURE):
            n, pos = decode_length(buf, pos)
            items = []
            for _ in range(n):
                item, pos = decode(buf, pos)
                items.append(item)
            return Data(t, items), pos
        if t == BOOLEAN:
            return Data(t, buf[pos] != 0), pos + 1
        if t in (OCTET_STRING, VISIBLE_STRING, UTF8_STRING, BIT_STRING):
            n, pos = decode_length(buf, pos)
            if t == BIT_STRING:
                n = (n + 7) // 8
            if pos + n > len(buf):
                raise MalformedResponse("truncated string")
            raw = bytes(buf[pos : pos + n])
            value: Any = raw.decode("ascii", "replace") if t == VISIBLE_STRING else raw
            return Data(t, value), pos + n
        if t in _INT_FORMATS:
            fmt = _INT_FORMATS[t]
            size = struct.calcsize(fmt)
            if pos + size > len(buf):
                raise MalformedResponse("truncated number")
            return Data(t, struct.unpack_from(fmt, buf, pos)[0]), pos + size
    except IndexError as exc:
        raise MalformedResponse("truncated A-XDR data") from exc
    raise MalformedResponse(f"unsupported A-XDR type {t}")


def date_time(
    year: int, month: int, day: int, hour: int, minute: int, second: int,
    deviation: int = 0x8000, status: int = 0, weekday: int = 0xFF,
) -> bytes:
    """The 12-byte COSEM date-time octet string (deviation 0x8000 = not specified)."""
    return (
        struct.pack(">HBBBBBBB", year, month, day, weekday, hour, minute, second, 0xFF)
        + struct.pack(">hB", deviation - 0x10000 if deviation >= 0x8000 else deviation, status)
    )
