"""Every contract round-trips, and bad payloads are refused naming the field."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest

from shared import codes
from shared import contracts as c
from shared import message_kinds as kinds
from shared.errors import InvalidPayload, PayloadTooLarge

NOW = datetime(2026, 11, 26, 10, 0, tzinfo=UTC)


def order(**overrides: object) -> c.OrderCommand:
    fields: dict[str, object] = {
        "command_id": "cmd-1",
        "order_id": "ord-1",
        "meter_id": "MTR-0001",
        "concentrator_id": "conc-a",
        "action": codes.Action.DISCONNECT,
        "reason": codes.OrderReason.NON_PAYMENT,
        "priority": 7,
        "issued_at": NOW,
        "deadline": NOW + timedelta(hours=4),
        "retry": c.RetryPolicy(max_attempts=4, backoff_initial_s=1, backoff_max_s=30),
    }
    fields.update(overrides)
    return c.validate(c.OrderCommand, fields)


def result(**overrides: object) -> c.OrderResult:
    fields: dict[str, object] = {
        "order_id": "ord-1",
        "meter_id": "MTR-0001",
        "concentrator_id": "conc-a",
        "outcome": codes.Outcome.DISCONNECTED,
        "relay": c.RelayReading(output_state=False, control_state=codes.ControlState.DISCONNECTED, control_mode=1),
        "energy": c.EnergyReading(value=12345.6, unit="Wh", meter_clock=NOW, read_at=NOW),
        "attempts": [
            c.Attempt(number=1, started_at=NOW, finished_at=NOW, error=codes.ReasonCode.METER_NOT_RESPONDING, detail="timeout"),
            c.Attempt(number=2, started_at=NOW, finished_at=NOW),
        ],
        "received_at": NOW,
        "started_at": NOW,
        "finished_at": NOW + timedelta(seconds=9),
        "agent_version": "0.1.0",
    }
    fields.update(overrides)
    return c.validate(c.OrderResult, fields)


EXAMPLES: list[c.Contract] = [
    order(),
    order(action=codes.Action.CONNECT, reason=codes.OrderReason.PAYMENT_RESTORED, not_before=NOW),
    c.CancelCommand(command_id="cmd-2", order_id="ord-1", concentrator_id="conc-a", issued_at=NOW, deadline=NOW + timedelta(hours=1)),
    c.MeterTableSync(
        command_id="cmd-3",
        concentrator_id="conc-a",
        generation=4,
        issued_at=NOW,
        deadline=NOW + timedelta(days=1),
        meters=[
            c.MeterEntry(meter_id="MTR-0001", transport="hdlc", line_id="plc0", hdlc_address=17),
            c.MeterEntry(meter_id="MTR-0002", transport="tcp", host="10.1.2.3", port=4059, commissioned=False),
        ],
    ),
    result(),
    result(outcome=codes.Outcome.FAILED, reason=codes.ReasonCode.RELAY_DID_NOT_SWITCH, energy=None),
    c.OrderReceipt(order_id="ord-1", command_id="cmd-1", meter_id="MTR-0001", concentrator_id="conc-a", received_at=NOW, queue_depth=4),
    c.ConcentratorStatus(concentrator_id="conc-a", online=True, at=NOW, modem=codes.ModemState.OK, sim=codes.SimState.OK, queue_depth=3, meter_count=120, agent_version="0.1.0"),
]


@pytest.mark.parametrize("message", EXAMPLES, ids=lambda m: type(m).__name__)
def test_every_contract_round_trips_through_json(message: c.Contract) -> None:
    decoded = c.decode(type(message), message.to_json())
    assert decoded == message
    assert json.loads(message.to_json())["schema_version"] == c.SCHEMA_VERSION


def test_commands_parse_by_kind() -> None:
    for message in EXAMPLES[:4]:
        assert kinds.parse_command(message.to_json()) == message


def test_unknown_field_is_refused_by_name() -> None:
    payload = json.loads(order().to_json())
    payload["relay_override"] = True
    with pytest.raises(InvalidPayload) as caught:
        c.decode(c.OrderCommand, json.dumps(payload))
    assert caught.value.fields == ["relay_override"]
    assert "relay_override" in str(caught.value)


def test_missing_field_is_refused_by_name() -> None:
    payload = json.loads(order().to_json())
    del payload["deadline"]
    with pytest.raises(InvalidPayload) as caught:
        c.decode(c.OrderCommand, json.dumps(payload))
    assert caught.value.fields == ["deadline"]


def test_nested_field_path_is_named() -> None:
    payload = json.loads(order().to_json())
    payload["retry"]["max_attempts"] = 0
    with pytest.raises(InvalidPayload) as caught:
        c.decode(c.OrderCommand, json.dumps(payload))
    assert caught.value.fields == ["retry.max_attempts"]


def test_wrong_enum_value_names_field() -> None:
    payload = json.loads(order().to_json())
    payload["action"] = "explode"
    with pytest.raises(InvalidPayload, match="action"):
        c.decode(c.OrderCommand, json.dumps(payload))


def test_naive_timestamps_are_refused() -> None:
    payload = json.loads(order().to_json())
    payload["issued_at"] = "2026-11-26T10:00:00"
    with pytest.raises(InvalidPayload, match="issued_at"):
        c.decode(c.OrderCommand, json.dumps(payload))


def test_deadline_before_issue_is_refused() -> None:
    with pytest.raises(InvalidPayload, match="deadline must be after issued_at"):
        c.validate(c.OrderCommand, json.loads(order().to_json()) | {"deadline": "2026-11-26T09:00:00Z"})


def test_future_schema_version_is_refused() -> None:
    payload = json.loads(order().to_json()) | {"schema_version": 2}
    with pytest.raises(InvalidPayload, match="schema_version"):
        c.decode(c.OrderCommand, json.dumps(payload))


def test_identifier_that_would_break_a_topic_is_refused() -> None:
    payload = json.loads(order().to_json()) | {"concentrator_id": "conc-a/#"}
    with pytest.raises(InvalidPayload, match="concentrator_id"):
        c.decode(c.OrderCommand, json.dumps(payload))


@pytest.mark.parametrize("value", ["conc-a\n", "conc a", "-conc", "", "c" * 65])
def test_identifier_outside_the_pattern_is_refused(value: str) -> None:
    payload = json.loads(order().to_json()) | {"concentrator_id": value}
    with pytest.raises(InvalidPayload) as caught:
        c.decode(c.OrderCommand, json.dumps(payload))
    assert caught.value.fields == ["concentrator_id"]


def test_failure_without_reason_is_refused() -> None:
    payload = json.loads(result().to_json()) | {"outcome": "failed", "reason": None}
    with pytest.raises(InvalidPayload, match="needs a reason"):
        c.decode(c.OrderResult, json.dumps(payload))


def test_oversized_payload_is_refused_before_parsing() -> None:
    with pytest.raises(PayloadTooLarge) as caught:
        c.decode(c.OrderCommand, b"{" + b" " * c.MAX_COMMAND_BYTES + b"}")
    assert caught.value.limit == c.MAX_COMMAND_BYTES


def test_not_json_is_refused() -> None:
    with pytest.raises(InvalidPayload, match="Invalid JSON"):
        c.decode(c.OrderResult, b"\x00\xffgarbage")


def test_hdlc_meter_needs_its_line_address() -> None:
    with pytest.raises(ValueError, match="hdlc meter needs"):
        c.MeterEntry(meter_id="M1", transport="hdlc", line_id="plc0")


@pytest.mark.parametrize(
    ("attempt", "unit", "expected"),
    [(1, 0.5, 0.0), (2, 0.5, 1.0), (3, 0.5, 2.0), (4, 0.5, 4.0), (10, 0.5, 30.0), (3, 0.0, 1.6), (3, 0.999999, 2.4)],
)
def test_backoff_doubles_with_jitter_and_cap(attempt: int, unit: float, expected: float) -> None:
    policy = c.RetryPolicy(max_attempts=10, backoff_initial_s=1, backoff_max_s=30, jitter=0.2)
    assert policy.delay_before(attempt, unit) == pytest.approx(expected, rel=1e-5)


def receipt(**overrides: object) -> c.OrderReceipt:
    fields: dict[str, object] = {
        "order_id": "ord-1",
        "command_id": "cmd-1",
        "meter_id": "MTR-0001",
        "concentrator_id": "conc-a",
        "received_at": NOW,
        "queue_depth": 2,
    }
    fields.update(overrides)
    return c.validate(c.OrderReceipt, fields)


def test_agent_messages_parse_by_kind() -> None:
    assert kinds.parse_agent_message(result().to_json()) == result()
    assert kinds.parse_agent_message(receipt().to_json()) == receipt()
    assert isinstance(kinds.parse_agent_message(receipt().to_json().decode()), c.OrderReceipt)


@pytest.mark.parametrize("kind", [None, "status", 3])
def test_agent_message_without_known_kind_names_kind(kind: object) -> None:
    payload = json.loads(receipt().to_json())
    if kind is None:
        del payload["kind"]
    else:
        payload["kind"] = kind
    with pytest.raises(InvalidPayload) as info:
        kinds.parse_agent_message(json.dumps(payload).encode())
    assert info.value.fields == ["kind"]


@pytest.mark.parametrize(("change", "field"), [({"queue_depth": -1}, "queue_depth"), ({"extra": 1}, "extra")])
def test_agent_message_names_the_bad_field(change: dict[str, object], field: str) -> None:
    # msgspec stops at the first fault, so one is named per refusal
    payload = json.loads(receipt().to_json()) | change
    with pytest.raises(InvalidPayload) as info:
        kinds.parse_agent_message(json.dumps(payload).encode())
    assert info.value.kind == "OrderReceipt"
    assert info.value.fields == [field]


@pytest.mark.parametrize("data", [b"not json", b"[1, 2]", b"\x00\xff"])
def test_agent_message_not_an_object_is_refused(data: bytes) -> None:
    with pytest.raises(InvalidPayload) as info:
        kinds.parse_agent_message(data)
    assert info.value.fields == ["(message)"]


def test_oversized_receipt_is_refused_before_parsing() -> None:
    padded = receipt().to_json()[:-1] + b" " * c.MAX_RECEIPT_BYTES + b"}"
    with pytest.raises(PayloadTooLarge):
        kinds.parse_agent_message(padded)
    with pytest.raises(PayloadTooLarge):
        kinds.parse_agent_message(b"{" + b" " * c.MAX_RESULT_BYTES + b"}")


@pytest.mark.parametrize("parse", [kinds.parse_command, kinds.parse_agent_message])
def test_deeply_nested_payload_is_refused_as_invalid_not_a_crash(parse: object) -> None:
    nested = b"[" * 30_000 + b"]" * 30_000  # within every size limit
    with pytest.raises(InvalidPayload, match="nested too deeply"):
        parse(nested)  # type: ignore[operator]


def test_oversized_order_in_a_command_body_is_refused_by_its_own_limit() -> None:
    body = order().to_json()
    padded = body[:-1] + b" " * c.MAX_COMMAND_BYTES + b"}"  # valid JSON, over the order limit
    with pytest.raises(PayloadTooLarge) as caught:
        kinds.parse_command(padded)
    assert caught.value.limit == c.MAX_COMMAND_BYTES


# What the pydantic contracts (before msgspec) put on the wire, byte for byte: a new
# coordinator must understand an old agent (and the other way round, but for fields
# added since, which come last: upgrades go coordinator first).
OLD_WIRE = {
    "OrderCommand": (
        b'{"schema_version":1,"kind":"order","command_id":"cmd-1","order_id":"ord-1","meter_id":"MTR'
        b'-0001","concentrator_id":"conc-a","action":"disconnect","reason":"non_payment","priority":'
        b'7,"issued_at":"2026-11-26T10:00:00Z","not_before":null,"deadline":"2026-11-26T14:00:00Z","'
        b'retry":{"schema_version":1,"max_attempts":4,"backoff_initial_s":1.0,"backoff_max_s":30.0,"'
        b'jitter":0.2}}'
    ),
    "OrderResult": (
        b'{"schema_version":1,"kind":"result","order_id":"ord-1","meter_id":"MTR-0001","concentrator'
        b'_id":"conc-a","outcome":"disconnected","reason":null,"detail":"","already_in_state":false,'
        b'"relay":{"schema_version":1,"output_state":false,"control_state":0,"control_mode":1},"ener'
        b'gy":{"schema_version":1,"obis":"1.0.1.8.0.255","value":12345.6,"unit":"Wh","meter_clock":"'
        b'2026-11-26T10:00:00Z","read_at":"2026-11-26T10:00:00Z"},"attempts":[{"schema_version":1,"n'
        b'umber":1,"started_at":"2026-11-26T10:00:00Z","finished_at":"2026-11-26T10:00:00Z","error":'
        b'"meter_not_responding","detail":"timeout"},{"schema_version":1,"number":2,"started_at":"20'
        b'26-11-26T10:00:00Z","finished_at":"2026-11-26T10:00:00Z","error":null,"detail":""}],"recei'
        b'ved_at":"2026-11-26T10:00:00Z","started_at":"2026-11-26T10:00:00Z","finished_at":"2026-11-'
        b'26T10:00:09Z","agent_version":"0.1.0"}'
    ),
    "ConcentratorStatus": (
        b'{"schema_version":1,"kind":"status","concentrator_id":"conc-a","online":true,"at":"2026-11'
        b'-26T10:00:00Z","modem":"ok","sim":"ok","signal_dbm":null,"queue_depth":3,"outbox_depth":0,'
        b'"meter_count":120,"meter_table_generation":null,"agent_version":"0.1.0"}'
    ),
}


# Fields added since, with their defaults, as they end the message now.
ADDED_SINCE = {"ConcentratorStatus": b',"audit_airtime":{}'}


@pytest.mark.parametrize(("index", "name"), [(0, "OrderCommand"), (4, "OrderResult"), (7, "ConcentratorStatus")])
def test_wire_format_is_the_one_pydantic_sent(index: int, name: str) -> None:
    message = EXAMPLES[index]
    assert type(message).__name__ == name
    assert c.decode(type(message), OLD_WIRE[name]) == message
    added = ADDED_SINCE.get(name, b"")
    assert message.to_json() == OLD_WIRE[name].replace(b'"backoff_initial_s":1.0', b'"backoff_initial_s":1').replace(
        b'"backoff_max_s":30.0', b'"backoff_max_s":30'
    )[:-1] + added + b"}"
    assert c.to_builtins(message) == json.loads(OLD_WIRE[name][:-1] + added + b"}")


def test_construction_checks_only_cross_field_rules_validate_checks_all() -> None:
    fields = json.loads(receipt().to_json()) | {"queue_depth": -1, "order_id": "a/#"}
    with pytest.raises(InvalidPayload) as info:
        c.validate(c.OrderReceipt, fields)
    assert info.value.fields == ["order_id"]
    with pytest.raises(ValueError, match="deadline must be after issued_at"):
        c.replace(order(), deadline=NOW)


@pytest.mark.parametrize(
    ("message", "path"),
    [
        ("Expected `int` >= 1 - at `$.attempts[1].number`", "attempts.1.number"),
        ("Object contains unknown field `extra` - at `$.retry`", "retry.extra"),
        ("Object missing required field `unit` - at `$.energy`", "energy.unit"),
        ("Object contains unknown field `extra`", "extra"),
        ("a failed result needs a reason", "(message)"),
    ],
)
def test_error_path_from_msgspec_message(message: str, path: str) -> None:
    assert c.error_path(message)[0] == path


def test_bad_attempt_in_a_result_is_named_by_its_index() -> None:
    payload = json.loads(result().to_json())
    payload["attempts"][1]["detail"] = "x" * 501
    with pytest.raises(InvalidPayload) as info:
        kinds.parse_agent_message(json.dumps(payload).encode())
    assert info.value.fields == ["attempts.1.detail"]


def test_ack_and_refusal_kinds_round_trip_and_refuse_what_they_cannot_carry() -> None:
    """Issue 11: the coordinator's ack (a command kind) and the agent's refusal report
    (an agent message kind)."""
    now = datetime.now(UTC)
    ack = c.MessageAck(command_id="a1", concentrator_id="c1", issued_at=now,
                       deadline=now + timedelta(hours=1),
                       acks=[c.AckedMessage(kind="result", id="o1"),
                             c.AckedMessage(kind="refusal", id="r1")])
    assert kinds.parse_command(ack.to_json()) == ack
    report = c.RefusalReport(refusal_id="r1", concentrator_id="c1",
                             reason=codes.ReasonCode.BAD_SIGNATURE, topic_leaf="cmd",
                             payload_sha256="0" * 64, payload_size=10, received_at=now)
    assert kinds.parse_agent_message(report.to_json()) == report
    empty = json.loads(ack.to_json()) | {"acks": []}
    with pytest.raises(InvalidPayload, match="acks"):
        kinds.parse_command(json.dumps(empty).encode())
    unknown = json.loads(ack.to_json()) | {"acks": [{"kind": "status", "id": "x"}]}
    with pytest.raises(InvalidPayload, match=r"acks\.0\.kind"):
        kinds.parse_command(json.dumps(unknown).encode())
    bad_digest = json.loads(report.to_json()) | {"payload_sha256": "not-a-digest"}
    with pytest.raises(InvalidPayload, match="payload_sha256"):
        kinds.parse_agent_message(json.dumps(bad_digest).encode())
    with pytest.raises(InvalidPayload, match="kind"):
        kinds.parse_agent_message(ack.to_json())  # an ack is no agent message
