"""Inputs from outside that the contracts must refuse cleanly, naming the field.

Found in the review of the move from pydantic to msgspec: a non-finite energy value
(which JSON cannot carry: msgspec writes ``null``, so the coordinator would refuse the
whole result) and a number too long for Python's int conversion (a bare ValueError
instead of InvalidPayload).
"""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from shared import codes
from shared import contracts as c
from shared import message_kinds as kinds
from shared.errors import InvalidPayload
from shared.signing import open_envelope

NOW = datetime(2026, 11, 26, 10, 0, tzinfo=UTC)


def _result_bytes(energy_value: bytes) -> bytes:
    result = c.OrderResult(
        order_id="ord-1", meter_id="MTR-0001", concentrator_id="conc-a",
        outcome=codes.Outcome.DISCONNECTED,
        energy=c.EnergyReading(value=1.0, unit="Wh", read_at=NOW), finished_at=NOW,
    )
    return result.to_json().replace(b'"value":1.0', b'"value":' + energy_value)


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_energy_reading_that_json_cannot_carry_is_refused(value: float) -> None:
    # The agent validates the meter's answer through the contract; a NaN passed and
    # went on the wire as null, which the coordinator refuses: the result was lost.
    with pytest.raises(InvalidPayload) as info:
        c.validate(c.EnergyReading, {"value": value, "unit": "Wh", "read_at": NOW})
    assert info.value.fields == ["value"]
    assert "must be a finite number" in str(info.value)


@pytest.mark.parametrize("literal", [b"NaN", b"Infinity", b"-Infinity", b"1e400"])
def test_result_with_a_non_finite_energy_is_refused_naming_energy(literal: bytes) -> None:
    with pytest.raises(InvalidPayload) as info:
        kinds.parse_agent_message(_result_bytes(literal))
    assert info.value.fields == ["energy.value"]
    assert "must be a finite number" in str(info.value)


def test_finite_energy_still_round_trips() -> None:
    assert kinds.parse_agent_message(_result_bytes(b"-0.0")).energy is not None
    assert kinds.parse_agent_message(_result_bytes(b"1e308")).energy is not None


def _receipt_with_queue_depth(digits: bytes) -> bytes:
    receipt = c.OrderReceipt(order_id="ord-1", command_id="cmd-1", meter_id="MTR-0001",
                             concentrator_id="conc-a", received_at=NOW, queue_depth=1)
    return receipt.to_json().replace(b'"queue_depth":1', b'"queue_depth":' + digits)


def test_number_too_long_to_convert_is_invalid_payload_not_a_crash() -> None:
    # Python refuses int strings over 4,300 digits with a bare ValueError; the
    # coordinator's handler only acknowledges SharedError as "drop it", so the
    # message was never acknowledged (and came back on every reconnect).
    payload = _receipt_with_queue_depth(b"1" * 5000)
    with pytest.raises(InvalidPayload) as info:
        kinds.parse_agent_message(payload)
    assert info.value.fields == ["(message)"]
    with pytest.raises(InvalidPayload):
        kinds.parse_command(payload.replace(b'"receipt"', b'"order"'))


def test_envelope_with_a_number_too_long_is_invalid_payload() -> None:
    envelope = b'{"schema_version":1,"key_id":"k","body":"{}","signature":' + b"9" * 5000 + b"}"
    with pytest.raises(InvalidPayload):
        open_envelope(envelope)


def test_long_but_convertible_numbers_are_still_judged_by_their_field() -> None:
    with pytest.raises(InvalidPayload) as info:
        kinds.parse_agent_message(_receipt_with_queue_depth(b"-" + b"1" * 1500))
    assert info.value.fields == ["queue_depth"]
    assert json.loads(_receipt_with_queue_depth(b"7"))["queue_depth"] == 7


def test_envelope_body_that_is_not_utf8_text_is_refused_naming_body() -> None:
    # "\ud800" is valid JSON but no UTF-8 text: the body's bytes, which the signature
    # covers, cannot exist. It escaped as a bare UnicodeEncodeError.
    envelope = b'{"schema_version":1,"key_id":"k","body":"{\\"kind\\":\\"\\ud800\\"}","signature":"AAAA"}'
    with pytest.raises(InvalidPayload) as info:
        open_envelope(envelope)
    assert info.value.fields == ["body"]


@pytest.mark.parametrize("field", ["queue_depth", "outbox_depth", "meter_count", "meter_table_generation"])
def test_status_counts_beyond_what_the_coordinator_stores_are_refused_by_name(field: str) -> None:
    status = c.ConcentratorStatus(concentrator_id="conc-a", online=True, at=NOW)
    fine = json.loads(status.to_json()) | {field: c.MAX_COUNT}
    assert getattr(c.decode(c.ConcentratorStatus, json.dumps(fine)), field) == c.MAX_COUNT
    with pytest.raises(InvalidPayload) as info:
        c.decode(c.ConcentratorStatus, json.dumps(fine | {field: c.MAX_COUNT + 1}))
    assert info.value.fields == [field]


def test_receipt_queue_depth_and_attempt_number_are_bounded_too() -> None:
    receipt = _receipt_with_queue_depth(str(c.MAX_COUNT + 1).encode())
    with pytest.raises(InvalidPayload) as info:
        kinds.parse_agent_message(receipt)
    assert info.value.fields == ["queue_depth"]
    attempt = {"number": c.MAX_COUNT + 1, "started_at": "2026-11-26T10:00:00Z",
               "finished_at": "2026-11-26T10:00:00Z"}
    with pytest.raises(InvalidPayload) as info:
        c.validate(c.Attempt, attempt)
    assert info.value.fields == ["number"]


@pytest.mark.parametrize("moment", ["9999-12-31T23:59:59-01:00", "0001-01-01T00:00:00+01:00",
                                    "9999-12-31T23:59:59Z"])
def test_timestamp_that_cannot_be_stored_or_moved_in_utc_is_refused_by_name(moment: str) -> None:
    # Valid RFC 3339, but outside what a datetime holds once in UTC (or a day from its
    # end): the coordinator's database layer raised OverflowError on the retained status.
    status = json.loads(c.ConcentratorStatus(concentrator_id="conc-a", online=True, at=NOW).to_json())
    with pytest.raises(InvalidPayload) as info:
        c.decode(c.ConcentratorStatus, json.dumps(status | {"at": moment}))
    assert info.value.fields == ["at"]
    result = json.loads(_result_bytes(b"1.0"))
    result["energy"]["read_at"] = moment
    with pytest.raises(InvalidPayload) as info:
        kinds.parse_agent_message(json.dumps(result).encode())
    assert info.value.fields == ["energy.read_at"]
    result = json.loads(_result_bytes(b"1.0")) | {"attempts": [
        {"number": 1, "started_at": "2026-11-26T10:00:00Z", "finished_at": moment}]}
    with pytest.raises(InvalidPayload) as info:
        kinds.parse_agent_message(json.dumps(result).encode())
    assert info.value.fields == ["attempts.0.finished_at"]


def test_far_but_ordinary_timestamps_still_pass() -> None:
    status = json.loads(c.ConcentratorStatus(concentrator_id="conc-a", online=True, at=NOW).to_json())
    for moment in ["1970-01-01T00:00:00Z", "2000-01-01T00:00:00+14:00", "9000-01-01T00:00:00-12:00"]:
        assert c.decode(c.ConcentratorStatus, json.dumps(status | {"at": moment})).at.year in (1970, 2000, 9000)
