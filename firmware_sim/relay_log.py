"""The meter's disconnector control log (Profile generic 0.0.99.98.2.255) and its codes.

Pure data, no protocol: :class:`DisconnectorLog` keeps the rows (meter clock, event
code), answers the standard attributes, and selects rows by entry or by clock range for
a GET with selective access. The event code object 0.0.96.11.2.255 (class 1, attribute
2) holds the code of the last entry.

Event codes (DLMS UA Blue Book, "Disconnector control" event code list, as we apply
them; which simulator event writes which code):

| code | meaning | written by |
|---|---|---|
| 59 | manual disconnection | ``manual_disconnect``: the button opens the relay (to ready_for_reconnection) |
| 60 | manual connection | the customer's button closes an armed relay (control modes 1, 3, 5, 6) |
| 61 | remote disconnection | remote_disconnect that opened the relay |
| 62 | remote connection | remote_reconnect that closed the relay (modes 2, 4; arming is no relay change) |
| 63 | local disconnection | ``local_trip`` (after 64), ``self_open`` with ``logged`` |
| 64 | limiter threshold exceeded | ``local_trip`` |
| 65 | limiter threshold ok | ``limiter_ok`` |
| 66 | limiter threshold changed | never (no limiter settings here) |
| 67 | disconnect/reconnect failure | a method refused by the ``relay_error`` fault |
| 68 | local reconnection | ``limiter_ok`` in modes 2 and 4, where the meter closes by itself |
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from shared.dlms import axdr
from shared.dlms.axdr import Data
from shared.dlms.errors import MalformedResponse
from shared.dlms.profile import (
    CLOCK_OBIS,
    DISCONNECTOR_EVENT_CODE_OBIS,
    EntrySelector,
    RangeSelector,
    Selector,
    cosem_datetime,
    parse_cosem_datetime,
)

MANUAL_DISCONNECTION = 59
MANUAL_CONNECTION = 60
REMOTE_DISCONNECTION = 61
REMOTE_CONNECTION = 62
LOCAL_DISCONNECTION = 63
LIMITER_EXCEEDED = 64
LIMITER_OK = 65
LIMITER_CHANGED = 66
SWITCH_FAILURE = 67
LOCAL_RECONNECTION = 68
EVENT_NAMES = {
    MANUAL_DISCONNECTION: "manual disconnection", MANUAL_CONNECTION: "manual connection",
    REMOTE_DISCONNECTION: "remote disconnection", REMOTE_CONNECTION: "remote connection",
    LOCAL_DISCONNECTION: "local disconnection", LIMITER_EXCEEDED: "limiter threshold exceeded",
    LIMITER_OK: "limiter threshold ok", LIMITER_CHANGED: "limiter threshold changed",
    SWITCH_FAILURE: "disconnect/reconnect failure", LOCAL_RECONNECTION: "local reconnection",
}
DEFAULT_CAPACITY = 500


@dataclass(frozen=True)
class LogRow:
    at: datetime
    code: int

    def data(self) -> Data:
        return axdr.structure(axdr.octets(cosem_datetime(self.at)), axdr.uint8(self.code))


class DisconnectorLog:
    """A FIFO-sorted profile of (clock, event code); the oldest row goes when full."""

    def __init__(self, capacity: int = DEFAULT_CAPACITY) -> None:
        self.capacity = capacity
        self.rows: list[LogRow] = []
        self.written = 0  # every row ever written (the buffer keeps the last ``capacity``)

    def append(self, at: datetime, code: int) -> int:
        """Write a row; its position in the buffer (1-based) as a reader sees it now."""
        self.rows.append(LogRow(at.replace(microsecond=0), code))
        if len(self.rows) > self.capacity:
            del self.rows[0]
        self.written += 1
        return len(self.rows)

    @property
    def last_code(self) -> int:
        return self.rows[-1].code if self.rows else 0

    def capture_objects(self) -> Data:
        """Attribute 3: clock time, then the disconnector event code value."""
        def column(class_id: int, obis: bytes) -> Data:
            return axdr.structure(axdr.uint16(class_id), axdr.octets(obis),
                                  Data(axdr.INT8, 2), axdr.uint16(0))
        return axdr.array([column(8, CLOCK_OBIS), column(1, DISCONNECTOR_EVENT_CODE_OBIS)])

    def attribute(self, index: int) -> Data | None:
        """Attributes 3..8 (2 is the buffer, read with :meth:`select`)."""
        values = {
            3: self.capture_objects(),
            4: axdr.uint32(0),  # capture_period: asynchronous (on events)
            5: axdr.enum(1),  # sort_method: fifo
            6: axdr.structure(axdr.uint16(0), axdr.octets(bytes(6)), Data(axdr.INT8, 0),
                              axdr.uint16(0)),  # sort_object: none
            7: axdr.uint32(len(self.rows)),  # entries_in_use
            8: axdr.uint32(self.capacity),  # profile_entries
        }
        return values.get(index)

    def select(self, selector: Selector | None) -> Data:
        """The buffer, whole or as the selector asks (rows and columns)."""
        rows = self.rows
        first_col, last_col = 1, 2
        if isinstance(selector, EntrySelector):
            end = len(rows) if selector.to_entry == 0 else min(selector.to_entry, len(rows))
            rows = rows[max(selector.from_entry, 1) - 1 : end] if selector.from_entry else []
            first_col = max(selector.from_value, 1)
            last_col = 2 if selector.to_value == 0 else min(selector.to_value, 2)
        elif isinstance(selector, RangeSelector):
            rows = self._in_range(selector)
        out = []
        for row in rows:
            cells = row.data().value[first_col - 1 : last_col]
            out.append(axdr.structure(*cells))
        return axdr.array(out)

    def _in_range(self, selector: RangeSelector) -> list[LogRow]:
        class_id, obis, _, _ = selector.restricting
        if (class_id, obis) != (8, CLOCK_OBIS):
            raise MalformedResponse("the range can only restrict the clock column")
        start = _moment(selector.from_value)
        end = _moment(selector.to_value)
        return [row for row in self.rows if start <= row.at <= end]


def _moment(value: Data) -> datetime:
    at = parse_cosem_datetime(bytes(value.value)) if value.tag == axdr.OCTET_STRING else None
    if at is None:
        raise MalformedResponse("range bound is not a COSEM date-time")
    return at
