"""TCP/UDP wrapper (IEC 62056-47): 8-byte header ``version(2)=1 src(2) dst(2) length(2)``."""

from __future__ import annotations

import struct
from dataclasses import dataclass

from shared.dlms.errors import MalformedResponse

HEADER_LEN = 8
VERSION = 1


@dataclass(frozen=True)
class WrapperPdu:
    source: int
    destination: int
    apdu: bytes


def encode(source: int, destination: int, apdu: bytes) -> bytes:
    return struct.pack(">HHHH", VERSION, source, destination, len(apdu)) + apdu


class WrapperReader:
    """Accumulates stream bytes and yields complete wrapper PDUs."""

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[WrapperPdu]:
        self._buf += data
        out: list[WrapperPdu] = []
        while len(self._buf) >= HEADER_LEN:
            version, src, dst, length = struct.unpack_from(">HHHH", self._buf)
            if version != VERSION:
                self._buf.clear()
                raise MalformedResponse(f"wrapper version {version} != 1")
            if len(self._buf) < HEADER_LEN + length:
                break
            apdu = bytes(self._buf[HEADER_LEN : HEADER_LEN + length])
            del self._buf[: HEADER_LEN + length]
            out.append(WrapperPdu(src, dst, apdu))
        return out
