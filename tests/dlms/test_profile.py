"""shared.dlms.profile: selective access, block-transfer reassembly and the log's rows,
from hex (no I/O)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from shared.dlms import axdr
from shared.dlms import profile as P
from shared.dlms.errors import DataAccessError, MalformedResponse

# two rows of the disconnector log: 2026-12-02 (Wednesday) 10:30:00 code 60, 10:31:00 code 61
ROW1 = "0202" "090C" "07EA0C02030A1E00FF000000" "113C"
ROW2 = "0202" "090C" "07EA0C02030A1F00FF000000" "113D"
BUFFER = "0102" + ROW1 + ROW2  # array of two structures, 38 bytes


def test_entry_descriptor_request_is_the_standard_bytes() -> None:
    request = P.build_get_request(0xC1, P.DISCONNECTOR_LOG, P.EntrySelector(3, 0))
    assert request.hex().upper() == (
        "C001C1" "0007" "0000636202FF" "02"  # GET normal, class 7, 0.0.99.98.2.255, attr 2
        "01" "02"  # selective access present, selector 2: entry_descriptor
        "0204" "0600000003" "0600000000" "120001" "120000"  # entries 3.., all columns
    )


def test_range_descriptor_request_restricts_the_clock_column() -> None:
    start = datetime(2026, 12, 2, 10, 30, tzinfo=UTC)
    end = datetime(2026, 12, 2, 10, 31, tzinfo=UTC)
    access = P.encode_access(P.clock_range(start, end))
    assert access.hex().upper() == (
        "01" "0204"  # selector 1: range_descriptor, structure of four
        "0204" "120008" "09060000010000FF" "0F02" "120000"  # clock 0.0.1.0.0.255 attr 2
        "090C07EA0C02030A1E00FF000000" "090C07EA0C02030A1F00FF000000" "0100"
    )
    value, _ = axdr.decode(access, 1)
    selector = P.decode_access(1, value)
    assert isinstance(selector, P.RangeSelector)
    assert selector.restricting == (8, bytes.fromhex("0000010000FF"), 2, 0)


def test_decode_access_refuses_what_it_cannot_use() -> None:
    with pytest.raises(MalformedResponse, match="four numbers"):
        P.decode_access(2, axdr.structure(axdr.uint32(1)))
    with pytest.raises(MalformedResponse, match="unsigned"):
        P.decode_access(2, axdr.structure(axdr.int8(1), axdr.uint32(0), axdr.uint16(1),
                                          axdr.uint16(0)))
    with pytest.raises(MalformedResponse, match="unknown access selector 9"):
        P.decode_access(9, axdr.structure())


def test_a_normal_answer_completes_at_once() -> None:
    transfer = P.GetTransfer(0xC1)
    event = transfer.receive(bytes.fromhex("C401C100" + BUFFER))
    assert isinstance(event, P.Complete) and event.blocks == 0
    entries = P.log_entries(event.value, 7)
    assert [(e.index, e.code) for e in entries] == [(7, 60), (8, 61)]
    assert entries[0].at == datetime(2026, 12, 2, 10, 30, tzinfo=UTC)


def test_blocks_are_asked_for_one_by_one_and_reassembled() -> None:
    raw = bytes.fromhex(BUFFER)
    first, second = raw[:20], raw[20:]
    transfer = P.GetTransfer(0xC1)
    event = transfer.receive(bytes.fromhex("C402C1" "00" "00000001" "00" "14") + first)
    assert isinstance(event, P.SendNext) and event.block_number == 1
    assert event.request.hex().upper() == "C002C100000001"  # GET-Request-next, block 1
    event = transfer.receive(bytes.fromhex("C402C1" "01" "00000002" "00" "12") + second)
    assert isinstance(event, P.Complete) and event.blocks == 2
    assert [e.code for e in P.log_entries(event.value, 1)] == [60, 61]
    # the server side cuts the same value into the same APDUs
    assert P.split_blocks(0xC1, event.value, 20) == [
        bytes.fromhex("C402C1000000000100" "14") + first,
        bytes.fromhex("C402C1010000000200" "12") + second,
    ]


@pytest.mark.parametrize(("apdu", "error", "match"), [
    ("C402C1000000000200" "0100", MalformedResponse, "block 2 out of sequence"),
    ("C402C2000000000100" "0100", MalformedResponse, "invoke-id 0xc2"),
    ("C402C1" "01" "00000001" "01" "0F", DataAccessError, "block 1: data-access-result 15"),
    ("C401C1" "0104", DataAccessError, "data-access-result 4"),
    ("C402C1000000000100" "0500", MalformedResponse, "length does not match"),
    ("C7010100", MalformedResponse, "not a GET response"),
])
def test_a_broken_transfer_is_refused_by_name(apdu: str, error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        P.GetTransfer(0xC1).receive(bytes.fromhex(apdu))


def test_rows_that_are_not_clock_and_code_are_refused() -> None:
    with pytest.raises(MalformedResponse, match="row 1: not a usable COSEM date-time"):
        P.log_entries([[b"\x00" * 3, 60]], 1)
    with pytest.raises(MalformedResponse, match="row 2: bad event code"):
        P.log_entries([[bytes.fromhex("07EA0C02030A1E00FF000000"), 60],
                       [bytes.fromhex("07EA0C02030A1E00FF000000"), 999]], 1)
    with pytest.raises(MalformedResponse, match="must be an array"):
        P.log_entries(axdr.uint8(1), 1)
