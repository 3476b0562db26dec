"""Profile generic (interface class 7) reads, without I/O: bytes in, events out.

What the agent needs to read a meter's disconnector control log incrementally:

* the access selection of a GET with selective access (IEC 62056-6-2, class 7
  attribute 2): ``entry_descriptor`` (selector 2: entries ``from_entry..to_entry``,
  1-based, ``to_entry`` 0 = up to the last) and ``range_descriptor`` (selector 1:
  capture-object values between two bounds, for us the clock column);
* :class:`GetTransfer`, the client side of a GET that may come back in blocks
  (GET-Response-with-datablock, answered by GET-Request-next until the last block):
  feed it each response APDU, it says what to send next or hands over the value;
* :func:`log_entries`, the buffer of the disconnector log (rows of clock, event code)
  as :class:`LogEntry` items with their position in the log.

The simulator decodes the same access selections (:func:`decode_access`), so both ends
share one definition. Every malformed input raises :class:`MalformedResponse`.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

from shared.dlms import apdu as A
from shared.dlms import axdr
from shared.dlms.axdr import Data, decode_length, encode_length
from shared.dlms.errors import DataAccessError, MalformedResponse

PROFILE_GENERIC = 7
# Blue Book: the disconnector control log and the event code object it captures.
DISCONNECTOR_LOG = A.AttributeRef(PROFILE_GENERIC, bytes((0, 0, 99, 98, 2, 255)), 2)
DISCONNECTOR_EVENT_CODE_OBIS = bytes((0, 0, 96, 11, 2, 255))
CLOCK_OBIS = bytes((0, 0, 1, 0, 0, 255))
SELECT_RANGE = 1
SELECT_ENTRY = 2
# data-access-result codes of the block transfer (Green Book)
DAR_DATA_BLOCK_UNAVAILABLE = 14
DAR_LONG_GET_ABORTED = 15
DAR_NO_LONG_GET_IN_PROGRESS = 16


@dataclass(frozen=True)
class EntrySelector:
    """entry_descriptor: rows ``from_entry..to_entry`` (1-based; 0 = to the last one),
    columns ``from_value..to_value`` (1-based; 0 = to the last column)."""

    from_entry: int
    to_entry: int = 0
    from_value: int = 1
    to_value: int = 0

    def data(self) -> Data:
        return axdr.structure(
            axdr.uint32(self.from_entry), axdr.uint32(self.to_entry),
            axdr.uint16(self.from_value), axdr.uint16(self.to_value),
        )


@dataclass(frozen=True)
class RangeSelector:
    """range_descriptor on one capture object (ours: the clock column): rows whose value
    lies in ``[from_value, to_value]``; all columns (empty selected_values)."""

    restricting: tuple[int, bytes, int, int]  # class_id, logical name, attribute, data index
    from_value: Data
    to_value: Data

    def data(self) -> Data:
        class_id, obis, attribute, index = self.restricting
        return axdr.structure(
            axdr.structure(axdr.uint16(class_id), axdr.octets(obis),
                           Data(axdr.INT8, attribute), axdr.uint16(index)),
            self.from_value, self.to_value, axdr.array([]),
        )


Selector = EntrySelector | RangeSelector


def clock_range(start: datetime, end: datetime) -> RangeSelector:
    """Rows logged between ``start`` and ``end`` (the clock column, UTC)."""
    return RangeSelector((8, CLOCK_OBIS, 2, 0), axdr.octets(cosem_datetime(start)),
                         axdr.octets(cosem_datetime(end)))


def encode_access(selector: Selector) -> bytes:
    """access-selector and access-parameters, as they follow ``01`` in a GET request."""
    kind = SELECT_ENTRY if isinstance(selector, EntrySelector) else SELECT_RANGE
    return bytes((kind,)) + axdr.encode(selector.data())


def decode_access(kind: int, parameters: Data) -> Selector:
    """The selector a request carries (``kind``, its parameters), checked field by field."""
    items = parameters.value if parameters.tag == axdr.STRUCTURE else None
    if kind == SELECT_ENTRY:
        if items is None or len(items) != 4:
            raise MalformedResponse("entry_descriptor must be a structure of four numbers")
        values = [_unsigned(item, "entry_descriptor") for item in items]
        return EntrySelector(*values)
    if kind == SELECT_RANGE:
        if items is None or len(items) != 4:
            raise MalformedResponse("range_descriptor must be a structure of four items")
        target = items[0].value if items[0].tag == axdr.STRUCTURE else None
        if target is None or len(target) != 4 or target[1].tag != axdr.OCTET_STRING:
            raise MalformedResponse("range_descriptor: bad restricting_object")
        restricting = (_unsigned(target[0], "class_id"), bytes(target[1].value),
                       int(target[2].value), _unsigned(target[3], "data_index"))
        return RangeSelector(restricting, items[1], items[2])
    raise MalformedResponse(f"unknown access selector {kind}")


def _unsigned(item: Data, what: str) -> int:
    if item.tag not in (axdr.UINT8, axdr.UINT16, axdr.UINT32, axdr.UINT64):
        raise MalformedResponse(f"{what}: expected an unsigned number, got type {item.tag}")
    return int(item.value)


def build_get_request(invoke_id: int, ref: A.AttributeRef, selector: Selector | None) -> bytes:
    """GET-Request-Normal, with selective access when ``selector`` is given."""
    head = bytes((A.GET_REQUEST, 1, invoke_id)) + ref.class_id.to_bytes(2, "big") + ref.obis
    head += bytes((ref.index,))
    return head + (b"\x01" + encode_access(selector) if selector is not None else b"\x00")


def build_get_next(invoke_id: int, block_number: int) -> bytes:
    """GET-Request-Next: the block after ``block_number`` (the last one received)."""
    return bytes((A.GET_REQUEST, 2, invoke_id)) + block_number.to_bytes(4, "big")


# ---------------------------------------------------------------- block transfer


@dataclass(frozen=True)
class SendNext:
    """Event: ask for the next block with ``request``."""

    request: bytes
    block_number: int


@dataclass(frozen=True)
class Complete:
    """Event: the whole value arrived (``blocks``: 0 for a normal response)."""

    value: Data
    blocks: int


class GetTransfer:
    """The client side of one GET, possibly answered in blocks. Pure state machine.

    ``receive(apdu)`` takes each (deciphered) GET response and returns
    :class:`SendNext` (send its request, feed the answer) or :class:`Complete`.
    A data-access-result raises :class:`DataAccessError`; a block out of sequence, a
    response for another invoke-id or a truncated APDU raises :class:`MalformedResponse`.
    """

    def __init__(self, invoke_id: int, max_bytes: int = 1 << 20) -> None:
        self.invoke_id = invoke_id
        self.max_bytes = max_bytes
        self._raw = bytearray()
        self._block = 0
        self._done = False

    def receive(self, apdu: bytes) -> SendNext | Complete:
        if self._done:
            raise MalformedResponse("GET already complete")
        if len(apdu) < 4 or apdu[0] != A.GET_RESPONSE:
            raise MalformedResponse(f"not a GET response: {apdu[:4].hex()}")
        kind, invoke = apdu[1], apdu[2]
        if invoke != self.invoke_id:
            raise MalformedResponse(f"answer for invoke-id {invoke:#x}, expected {self.invoke_id:#x}")
        if kind == 1:
            if self._block:
                raise MalformedResponse("normal response in the middle of a block transfer")
            return self._finish(A.parse_get_response(apdu)[0], 0)
        if kind != 2:
            raise MalformedResponse(f"unexpected GET response kind {kind}")
        return self._datablock(apdu)

    def _datablock(self, apdu: bytes) -> SendNext | Complete:
        try:
            last = apdu[3] != 0
            number = struct.unpack_from(">I", apdu, 4)[0]
            choice = apdu[8]
        except (IndexError, struct.error) as exc:
            raise MalformedResponse("truncated GET-Response-with-datablock") from exc
        if choice == 1:  # data-access-result instead of raw data
            if len(apdu) < 10:
                raise MalformedResponse("truncated data-access-result")
            self._done = True
            raise DataAccessError(apdu[9], f"block {number}: data-access-result {apdu[9]}")
        if choice != 0:
            raise MalformedResponse(f"bad datablock result choice {choice}")
        if number != self._block + 1:
            raise MalformedResponse(f"block {number} out of sequence (expected {self._block + 1})")
        length, pos = decode_length(apdu, 9)
        if pos + length != len(apdu):
            raise MalformedResponse("datablock length does not match the APDU")
        self._raw += apdu[pos:]
        if len(self._raw) > self.max_bytes:
            raise MalformedResponse(f"value longer than {self.max_bytes} bytes")
        self._block = number
        if not last:
            return SendNext(build_get_next(self.invoke_id, number), number)
        value, end = axdr.decode(bytes(self._raw))
        if end != len(self._raw):
            raise MalformedResponse("bytes left over after the reassembled value")
        return self._finish(value, number)

    def _finish(self, result: A.GetResult, blocks: int) -> Complete:
        self._done = True
        if not isinstance(result, Data):
            raise DataAccessError(result, f"data-access-result {result}")
        return Complete(result, blocks)


def split_blocks(invoke_id: int, value: Data, block_size: int) -> list[bytes]:
    """The server side: ``value`` as GET-Response-with-datablock APDUs of at most
    ``block_size`` raw bytes each (the simulator uses it; tests build hex with it)."""
    raw = axdr.encode(value)
    chunks = [raw[i : i + block_size] for i in range(0, len(raw), block_size)] or [b""]
    return [
        bytes((A.GET_RESPONSE, 2, invoke_id, 1 if n == len(chunks) else 0))
        + n.to_bytes(4, "big") + b"\x00" + encode_length(len(chunk)) + chunk
        for n, chunk in enumerate(chunks, start=1)
    ]


# ---------------------------------------------------------------- the log's rows


@dataclass(frozen=True)
class LogEntry:
    index: int  # position in the log, 1-based
    at: datetime
    code: int


def log_entries(buffer: Data | list[Any], first_index: int) -> list[LogEntry]:
    """Rows ``[clock, event code]`` as entries numbered from ``first_index``.

    ``buffer`` is the decoded array (``Data``) or the same rows as plain Python values
    (what gurux hands over: ``[[bytes, int], ...]``).
    """
    rows = buffer.py() if isinstance(buffer, Data) else buffer
    if not isinstance(rows, list):
        raise MalformedResponse(f"profile buffer must be an array, got {type(rows).__name__}")
    out: list[LogEntry] = []
    for n, row in enumerate(rows):
        if not isinstance(row, list) or len(row) < 2:
            raise MalformedResponse(f"log row {n + 1}: expected [clock, event code], got {row!r}")
        raw, code = row[0], row[1]
        at = parse_cosem_datetime(bytes(raw)) if isinstance(raw, bytes | bytearray) else None
        if at is None:
            raise MalformedResponse(f"log row {n + 1}: not a usable COSEM date-time")
        if isinstance(code, bool) or not isinstance(code, int) or not 0 <= code <= 255:
            raise MalformedResponse(f"log row {n + 1}: bad event code {code!r}")
        out.append(LogEntry(first_index + n, at, int(code)))  # gurux hands int subclasses
    return out


def cosem_datetime(moment: datetime) -> bytes:
    """A UTC moment as the 12-byte COSEM date-time (deviation 0)."""
    utc = moment.astimezone(UTC)
    return axdr.date_time(utc.year, utc.month, utc.day, utc.hour, utc.minute, utc.second,
                          deviation=0, weekday=utc.isoweekday())


def parse_cosem_datetime(raw: bytes) -> datetime | None:
    """12-byte COSEM date-time to an aware datetime (UTC when no deviation is given)."""
    if len(raw) != 12:
        return None
    year = int.from_bytes(raw[0:2], "big")
    month, day, hour, minute, second = raw[2], raw[3], raw[5], raw[6], raw[7]
    if year == 0xFFFF or month > 12 or day > 31 or hour > 23 or minute > 59 or second > 59:
        return None
    dev = int.from_bytes(raw[9:11], "big", signed=True)
    # COSEM deviation is minutes local-to-UTC with inverted sign (Blue Book): UTC = local + dev
    tz = UTC if dev == -0x8000 else timezone(timedelta(minutes=-dev))
    try:
        return datetime(year, month, day, hour, minute, second, tzinfo=tz)
    except ValueError:
        return None
