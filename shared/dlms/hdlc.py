"""HDLC framing for DLMS (IEC 62056-46), without I/O.

Frame: ``7E | format(2) | dst | src | control | [HCS(2) | info] | FCS(2) | 7E``.
The format field is ``1010 S LLL LLLLLLLL``: type 3, segmentation bit S, 11-bit length
counting every byte between the flags. HCS and FCS are CRC-16/X.25 (reflected 0x1021,
init 0xFFFF, final xor 0xFFFF), sent least significant byte first. The HCS is present only
when the frame carries an information field.

Addresses use the extension bit: every byte carries 7 address bits shifted left by one;
the last byte has bit 0 set. A server address is ``upper`` (logical device) plus an
optional ``lower`` (physical device, the meter's address on a shared line).
"""

from __future__ import annotations

from dataclasses import dataclass

from shared.dlms.errors import MalformedResponse

FLAG = 0x7E
SNRM = 0x93
UA = 0x73
DISC = 0x53
DM = 0x1F
FRMR = 0x97
UI = 0x13
LLC_REQUEST = b"\xe6\xe6\x00"
LLC_RESPONSE = b"\xe6\xe7\x00"
DEFAULT_MAX_INFO = 128


def _make_table() -> list[int]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0x8408 if crc & 1 else crc >> 1
        table.append(crc)
    return table


_TABLE = _make_table()


def crc16(data: bytes) -> int:
    """CRC-16/X.25 as used for HCS and FCS."""
    crc = 0xFFFF
    for b in data:
        crc = (crc >> 8) ^ _TABLE[(crc ^ b) & 0xFF]
    return crc ^ 0xFFFF


def _crc_bytes(data: bytes) -> bytes:
    c = crc16(data)
    return bytes((c & 0xFF, c >> 8))


def encode_address(value: int, size: int) -> bytes:
    """Encode ``value`` in ``size`` bytes (1, 2 or 4) with the extension bit."""
    out = bytearray()
    bits = 7 * size
    if value >= 1 << bits:
        raise ValueError(f"address {value} does not fit in {size} bytes")
    for i in range(size):
        shift = 7 * (size - 1 - i)
        out.append(((value >> shift) & 0x7F) << 1)
    out[-1] |= 1
    return bytes(out)


def server_address(logical: int, physical: int | None) -> bytes:
    """Server (meter) address: logical only (1 byte) or logical+physical (2 or 4 bytes)."""
    if physical is None:
        return encode_address(logical, 1)
    size = 1 if logical < 0x80 and physical < 0x80 else 2
    upper = bytearray(encode_address(logical, size))
    upper[-1] &= 0xFE  # the address continues with the lower part
    return bytes(upper) + encode_address(physical, size)


def decode_address(raw: bytes) -> tuple[int, int | None]:
    """Decode an address field into (upper, lower); lower is None for 1-byte addresses."""
    vals = [b >> 1 for b in raw]
    if len(raw) == 1:
        return vals[0], None
    if len(raw) == 2:
        return vals[0], vals[1]
    if len(raw) == 4:
        return (vals[0] << 7) | vals[1], (vals[2] << 7) | vals[3]
    raise MalformedResponse(f"bad HDLC address length {len(raw)}")


@dataclass(frozen=True)
class Frame:
    dst: bytes
    src: bytes
    control: int
    info: bytes = b""
    segmented: bool = False

    @property
    def is_i_frame(self) -> bool:
        return self.control & 1 == 0

    @property
    def is_rr(self) -> bool:
        return self.control & 0x0F == 0x01

    @property
    def send_seq(self) -> int:
        return (self.control >> 1) & 7

    @property
    def recv_seq(self) -> int:
        return (self.control >> 5) & 7


def i_control(send_seq: int, recv_seq: int, final: bool = True) -> int:
    return ((recv_seq & 7) << 5) | (0x10 if final else 0) | ((send_seq & 7) << 1)


def rr_control(recv_seq: int) -> int:
    return ((recv_seq & 7) << 5) | 0x10 | 0x01


def encode_frame(frame: Frame) -> bytes:
    header_len = 2 + len(frame.dst) + len(frame.src) + 1
    total = header_len + 2 + (len(frame.info) + 2 if frame.info else 0)
    if total > 0x7FF:
        raise ValueError("HDLC frame too long")
    fmt = 0xA000 | (0x0800 if frame.segmented else 0) | total
    head = bytes((fmt >> 8, fmt & 0xFF)) + frame.dst + frame.src + bytes((frame.control,))
    if frame.info:
        head = head + _crc_bytes(head) + frame.info
    return bytes((FLAG,)) + head + _crc_bytes(head) + bytes((FLAG,))


def _split_address(data: bytes, pos: int) -> tuple[bytes, int]:
    start = pos
    while pos < len(data):
        if data[pos] & 1:
            return data[start : pos + 1], pos + 1
        pos += 1
        if pos - start > 4:
            break
    raise MalformedResponse("HDLC address not terminated")


def decode_frame(raw: bytes) -> Frame:
    """Decode one frame including both flags; raise MalformedResponse when anything is off."""
    if len(raw) < 9 or raw[0] != FLAG or raw[-1] != FLAG:
        raise MalformedResponse("not an HDLC frame")
    body = raw[1:-1]
    fmt = (body[0] << 8) | body[1]
    if fmt & 0xF000 != 0xA000 or (fmt & 0x7FF) != len(body):
        raise MalformedResponse("bad HDLC format/length field")
    if _crc_bytes(body[:-2]) != body[-2:]:
        raise MalformedResponse("bad HDLC FCS")
    dst, pos = _split_address(body, 2)
    src, pos = _split_address(body, pos)
    control = body[pos]
    pos += 1
    info = b""
    if pos < len(body) - 2:
        if _crc_bytes(body[:pos]) != body[pos : pos + 2]:
            raise MalformedResponse("bad HDLC HCS")
        info = bytes(body[pos + 2 : -2])
    return Frame(bytes(dst), bytes(src), control, info, bool(fmt & 0x0800))


class FrameReader:
    """Byte-stream to frames: finds the opening flag, uses the length field, drops junk.

    ``feed`` returns decoded frames; corrupted frames are returned as the
    :class:`MalformedResponse` instance in their place so a caller can count or raise.
    """

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[Frame | MalformedResponse]:
        self._buf += data
        out: list[Frame | MalformedResponse] = []
        while True:
            start = self._buf.find(FLAG)
            if start < 0:
                if self._buf:
                    out.append(MalformedResponse("bytes outside an HDLC frame"))
                self._buf.clear()
                return out
            if start > 0:
                out.append(MalformedResponse("bytes outside an HDLC frame"))
                del self._buf[:start]
            # skip repeated flags
            while len(self._buf) >= 2 and self._buf[1] == FLAG:
                del self._buf[0]
            if len(self._buf) < 3:
                return out
            fmt = (self._buf[1] << 8) | self._buf[2]
            if fmt & 0xF000 != 0xA000:
                del self._buf[0]
                out.append(MalformedResponse("bad HDLC format field"))
                continue
            end = (fmt & 0x7FF) + 1
            if len(self._buf) < end + 1:
                return out
            raw = bytes(self._buf[: end + 1])
            del self._buf[: end + 1]
            try:
                out.append(decode_frame(raw))
            except MalformedResponse as exc:
                out.append(exc)


def segment(info: bytes, max_info: int) -> list[bytes]:
    """Split an information field into chunks of at most ``max_info`` bytes."""
    if not info:
        return [b""]
    return [info[i : i + max_info] for i in range(0, len(info), max_info)]


def ua_info(max_info_tx: int, max_info_rx: int, window_tx: int = 1, window_rx: int = 1) -> bytes:
    """UA/SNRM parameter negotiation field (format 0x81, group 0x80)."""
    params = (
        bytes((0x05, 2)) + max_info_tx.to_bytes(2, "big")
        + bytes((0x06, 2)) + max_info_rx.to_bytes(2, "big")
        + bytes((0x07, 4)) + window_tx.to_bytes(4, "big")
        + bytes((0x08, 4)) + window_rx.to_bytes(4, "big")
    )
    return bytes((0x81, 0x80, len(params))) + params


def parse_snrm_info(info: bytes) -> dict[int, int]:
    """Parse negotiation parameters (id -> value) from an SNRM/UA information field."""
    out: dict[int, int] = {}
    if len(info) < 3 or info[0] != 0x81 or info[1] != 0x80:
        return out
    pos = 3
    while pos + 2 <= len(info):
        pid, ln = info[pos], info[pos + 1]
        out[pid] = int.from_bytes(info[pos + 2 : pos + 2 + ln], "big")
        pos += 2 + ln
    return out
