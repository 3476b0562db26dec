"""The MQTT message contract between the coordinator and the edge agents.

Every message is a frozen :mod:`msgspec` Struct (one definition for both sides)
that refuses unknown fields and carries a ``schema_version``. msgspec checks
types and constraints only when it decodes or converts, never on plain
construction, so anything built from outside input goes through
:func:`validate` (an already parsed object) or :func:`decode` (bytes); both
check the size limit of the kind first where there are bytes, and turn
msgspec's errors into :class:`shared.errors.InvalidPayload` naming the
offending field (``retry.max_attempts``, ``attempts.0.detail``). The
cross-field rules live in ``__post_init__``, which runs on construction too.
Encode with :meth:`Contract.to_json` / :func:`encode`; :func:`to_builtins` gives
the JSON-ready dict and :func:`replace` a changed copy (checked again by
``__post_init__``).

Commands (order, cancel, meter table, ack) travel inside a signed envelope (see
``shared.signing``); receipts, results, refusals and status are published by the agent
on topics only it may write (see ``deploy/mosquitto/acl``). Receipts, results and
refusals share the result topic: :func:`shared.message_kinds.parse_agent_message` tells
them apart by ``kind``. The agent keeps each of them in its outbox until a
:class:`MessageAck` names it (the broker's PUBACK is not enough: the broker is a
transport, never the only copy). The codes the messages carry (actions, outcomes,
reason codes) are in :mod:`shared.codes`.
"""

from __future__ import annotations

import math
import re
from datetime import UTC, datetime
from typing import Annotated, Any, Final, Literal, TypeVar

import msgspec
from msgspec import Meta, field

from shared import topics
from shared.codes import (
    SUCCESS_OUTCOMES,
    Action,
    ControlState,
    ModemState,
    OrderReason,
    Outcome,
    ReasonCode,
    SimState,
)
from shared.errors import InvalidPayload, PayloadTooLarge

SCHEMA_VERSION: Final = 1

# Size limits per message kind, checked before any parsing.
MAX_COMMAND_BYTES: Final = 16 * 1024
MAX_RESULT_BYTES: Final = 64 * 1024
MAX_RECEIPT_BYTES: Final = 2 * 1024
MAX_STATUS_BYTES: Final = 8 * 1024
MAX_METER_TABLE_BYTES: Final = 4 * 1024 * 1024
MAX_REFUSAL_BYTES: Final = 4 * 1024
MAX_RELAY_REPORT_BYTES: Final = 48 * 1024

# Identifiers end up in MQTT topics and file names: no '/', '+', '#' or spaces.
# msgspec matches with Python's re, whose "$" also matches before a final newline:
# patterns end with "\Z" (the end of the text, as "$" meant to pydantic).
Identifier = Annotated[
    str,
    Meta(
        min_length=1,
        max_length=topics.IDENTIFIER_MAX_LENGTH,
        pattern=rf"^{topics.IDENTIFIER_CHARS}\Z",
    ),
]
# Timestamps must carry their offset; a naive one is refused.
AwareDatetime = Annotated[datetime, Meta(tz=True)]
# Counts, depths and generations end up in the coordinator's INTEGER columns, whose
# range ends at 2**31 - 1 on PostgreSQL: a larger number is refused here, by name,
# rather than as a database error in the consumer (which leaves the message unacked).
MAX_COUNT: Final = 2**31 - 1
Count = Annotated[int, Meta(ge=0, le=MAX_COUNT)]


class Contract(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """Base of every message: strict about unknown fields, immutable.

    Subclasses repeat ``frozen=True, kw_only=True``: ``kw_only`` there keeps
    ``schema_version`` the first field on the wire, as before, and ``frozen`` is
    what mypy needs to see.
    """

    schema_version: Literal[1] = SCHEMA_VERSION

    def __post_init__(self) -> None:
        # Every timestamp must still be a datetime once in UTC, with a day to spare for
        # the arithmetic done on it (skew, deadlines): "9999-12-31T23:59:59-01:00" is
        # valid RFC 3339 but made the coordinator's database layer raise OverflowError.
        # Subclasses with rules of their own call this first.
        for name in self.__struct_fields__:
            value = getattr(self, name)
            if isinstance(value, datetime) and value.tzinfo is not None:
                if not _EARLIEST <= value <= _LATEST:
                    raise ValueError(
                        f"`{name}` is out of range: {value.isoformat()} (must lie between "
                        f"{_EARLIEST.date()} and {_LATEST.date()} in UTC)"
                    )

    def to_json(self) -> bytes:
        return _ENCODER.encode(self)


_EARLIEST: Final = datetime(1, 1, 2, tzinfo=UTC)
_LATEST: Final = datetime(9999, 12, 30, tzinfo=UTC)


_ENCODER: Final = msgspec.json.Encoder()


class RetryPolicy(Contract, frozen=True, kw_only=True):
    max_attempts: Annotated[int, Meta(ge=1, le=20)] = 3
    backoff_initial_s: Annotated[float, Meta(ge=0, le=3600)] = 2.0
    backoff_max_s: Annotated[float, Meta(ge=0, le=86400)] = 60.0
    jitter: Annotated[float, Meta(ge=0, le=1)] = 0.2

    def delay_before(self, attempt: int, random_unit: float) -> float:
        """Seconds to wait before ``attempt`` (2, 3, ...); ``random_unit`` in [0, 1)."""
        if attempt <= 1:
            return 0.0
        base = min(self.backoff_max_s, self.backoff_initial_s * 2.0 ** (attempt - 2))
        return base * (1 - self.jitter + 2 * self.jitter * random_unit)


class OrderCommand(Contract, frozen=True, kw_only=True):
    """Coordinator → agent: switch one meter's relay (step 4 of the brief)."""

    kind: Literal["order"] = "order"
    command_id: Identifier  # unique per published command: the replay key
    order_id: Identifier  # the durable key: every handler is idempotent on it
    meter_id: Identifier
    concentrator_id: Identifier
    action: Action
    reason: OrderReason
    priority: Annotated[int, Meta(ge=0, le=9)] = 5  # higher runs first
    issued_at: AwareDatetime
    not_before: AwareDatetime | None = None
    deadline: AwareDatetime  # absolute: never executed after it
    retry: RetryPolicy = field(default_factory=RetryPolicy)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.deadline <= self.issued_at:
            raise ValueError("deadline must be after issued_at")
        if self.not_before is not None and self.not_before >= self.deadline:
            raise ValueError("not_before must be before deadline")


class CancelCommand(Contract, frozen=True, kw_only=True):
    """Coordinator → agent: drop an order that has not started yet."""

    kind: Literal["cancel"] = "cancel"
    command_id: Identifier
    order_id: Identifier
    concentrator_id: Identifier
    issued_at: AwareDatetime
    deadline: AwareDatetime  # after this the cancel itself is stale

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.deadline <= self.issued_at:
            raise ValueError("deadline must be after issued_at")


class MeterEntry(Contract, frozen=True, kw_only=True):
    meter_id: Identifier
    transport: Literal["hdlc", "tcp"]
    line_id: Identifier | None = None  # serial line of the concentrator (hdlc)
    hdlc_address: Annotated[int, Meta(ge=16, le=0x3FFD)] | None = None
    host: Annotated[str, Meta(max_length=253)] | None = None  # tcp
    port: Annotated[int, Meta(ge=1, le=65535)] | None = None
    logical_server: Annotated[int, Meta(ge=1, le=0x3FFF)] = 1
    commissioned: bool = True
    keys_ref: Annotated[str, Meta(max_length=64)] | None = None  # name in the agent's key store
    # Ley 21.304: the agent's own last check refuses a disconnect of such a meter
    protected_customer: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.transport == "hdlc" and (self.line_id is None or self.hdlc_address is None):
            raise ValueError("an hdlc meter needs line_id and hdlc_address")
        if self.transport == "tcp" and (self.host is None or self.port is None):
            raise ValueError("a tcp meter needs host and port")


class MeterTableSync(Contract, frozen=True, kw_only=True):
    """Coordinator → agent: the meters this concentrator serves (full table)."""

    kind: Literal["meter_table"] = "meter_table"
    command_id: Identifier
    concentrator_id: Identifier
    generation: Count  # increases with every change; older ones are ignored
    issued_at: AwareDatetime
    deadline: AwareDatetime
    meters: Annotated[list[MeterEntry], Meta(max_length=5000)]


class ProtectedList(Contract, frozen=True, kw_only=True):
    """Protect authority → agent, signed with the protect key (never the coordinator's),
    retained on the concentrator's ``protected`` topic: the meters of registered
    electro-dependent patients (Ley 21.304) it must never disconnect. ``version``
    increases with every list for the concentrator; the agent keeps the newest."""

    kind: Literal["protected_list"] = "protected_list"
    concentrator_id: Identifier
    version: Annotated[int, Meta(ge=1, le=MAX_COUNT)]
    issued_at: AwareDatetime
    meters: Annotated[list[Identifier], Meta(max_length=5000)]


AckedKind = Literal["receipt", "result", "refusal", "relay_report"]


class AckedMessage(Contract, frozen=True, kw_only=True):
    """One agent message the coordinator has stored: its kind and its key (the order id
    of a receipt or result, the ``refusal_id`` of a refusal, the ``report_id`` of a
    relay report)."""

    kind: AckedKind
    id: Identifier


class MessageAck(Contract, frozen=True, kw_only=True):
    """Coordinator → agent, signed, on the agent's command topic: these messages are
    committed to the coordinator's database; the agent may drop them from its outbox.

    Idempotent (an ack of something already dropped changes nothing), so the agent does
    not remember ack command ids; a replayed ack can only drop what was stored already.
    A ``result`` ack also drops the order's receipt: the result supersedes it.
    """

    kind: Literal["ack"] = "ack"
    command_id: Identifier
    concentrator_id: Identifier
    issued_at: AwareDatetime
    deadline: AwareDatetime
    acks: Annotated[list[AckedMessage], Meta(min_length=1, max_length=500)]

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.deadline <= self.issued_at:
            raise ValueError("deadline must be after issued_at")


Command = OrderCommand | CancelCommand | MeterTableSync | MessageAck


class Attempt(Contract, frozen=True, kw_only=True):
    number: Annotated[int, Meta(ge=1, le=MAX_COUNT)]
    started_at: AwareDatetime
    finished_at: AwareDatetime
    error: ReasonCode | None = None  # None: this attempt succeeded
    detail: Annotated[str, Meta(max_length=500)] = ""


class RelayReading(Contract, frozen=True, kw_only=True):
    output_state: bool | None = None
    control_state: ControlState
    control_mode: Annotated[int, Meta(ge=0, le=6)] | None = None


class EnergyReading(Contract, frozen=True, kw_only=True):
    obis: str = "1.0.1.8.0.255"
    value: float
    unit: Annotated[str, Meta(max_length=16)]
    meter_clock: AwareDatetime | None = None
    read_at: AwareDatetime

    def __post_init__(self) -> None:
        super().__post_init__()
        # JSON has no NaN or infinity (msgspec writes them as null): a reading the
        # receiver could not decode would cost the whole result it travels in.
        if not math.isfinite(self.value):
            raise ValueError(f"`value` must be a finite number, got {self.value!r}")


class OrderResult(Contract, frozen=True, kw_only=True):
    """Agent → coordinator: how an order ended (steps 6 and 7)."""

    kind: Literal["result"] = "result"
    order_id: Identifier
    meter_id: Identifier
    concentrator_id: Identifier
    outcome: Outcome
    reason: ReasonCode | None = None
    detail: Annotated[str, Meta(max_length=1000)] = ""
    already_in_state: bool = False  # the relay was already as wanted: nothing switched
    relay: RelayReading | None = None
    energy: EnergyReading | None = None
    attempts: Annotated[list[Attempt], Meta(max_length=50)] = field(default_factory=list)
    received_at: AwareDatetime | None = None  # when the agent stored the order
    started_at: AwareDatetime | None = None
    finished_at: AwareDatetime
    agent_version: Annotated[str, Meta(max_length=32)] = ""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.outcome not in SUCCESS_OUTCOMES and self.reason is None:
            raise ValueError(f"a {self.outcome} result needs a reason")


class OrderReceipt(Contract, frozen=True, kw_only=True):
    """Agent → coordinator: the order is stored durably on the concentrator (step 5).

    Published on the result topic, through the same outbox as results, right after
    the order was stored; a duplicate of an already stored order sends none.
    """

    kind: Literal["receipt"] = "receipt"
    order_id: Identifier
    command_id: Identifier  # the command that delivered it (republishes get new ones)
    meter_id: Identifier
    concentrator_id: Identifier
    received_at: AwareDatetime  # when the agent stored the order
    queue_depth: Count  # active orders on the agent, this one included


Sha256Hex = Annotated[str, Meta(pattern=r"^[0-9a-f]{64}\Z")]


class RefusalReport(Contract, frozen=True, kw_only=True):
    """Agent → coordinator, on the result topic: a message on the agent's command branch
    that it could not verify (no or bad signature, unknown key, another addressee, past
    its deadline and not held, malformed). It ends no order: nothing in the refused
    message is trusted, so it carries no order or meter id, only the reason, the
    payload's SHA-256 digest and size, and where it came in. ``refusal_id`` is the
    agent's own key for the coordinator's ack. Also sent, as a security event, with
    reason ``protected_customer_edge`` for a verified disconnect of a meter on the
    protected list (that order's own result ends it) and for refused protected lists
    (``topic_leaf = "protected"``)."""

    kind: Literal["refusal"] = "refusal"
    refusal_id: Identifier
    concentrator_id: Identifier
    reason: ReasonCode
    detail: Annotated[str, Meta(max_length=500)] = ""
    topic_leaf: Literal["cmd", "meters", "protected"]
    payload_sha256: Sha256Hex
    payload_size: Count
    received_at: AwareDatetime
    agent_version: Annotated[str, Meta(max_length=32)] = ""


class RelayLogEntry(Contract, frozen=True, kw_only=True):
    """One entry of a meter's disconnector control log (Profile generic
    ``0.0.99.98.2.255``): when the meter logged it (its own clock) and the standard
    event code (59 manual disconnection, 60 manual connection, 61 remote
    disconnection, 62 remote connection, 63 local disconnection, 64/65 limiter
    threshold exceeded/ok, 67 disconnect/reconnect failure, 68 local reconnection;
    see ``firmware_sim`` for the table). ``index`` is the entry's position counted
    since the meter's log began (1-based, never reused), so that the agent can ask for
    "entries since N" and the coordinator can tell a repeat from a new entry."""

    index: Annotated[int, Meta(ge=1, le=MAX_COUNT)]
    at: AwareDatetime
    code: Annotated[int, Meta(ge=0, le=255)]


RelayTrigger = Literal["audit", "after_order", "log_poll"]


class RelayReport(Contract, frozen=True, kw_only=True):
    """Agent → coordinator, on the result topic, through the outbox like a result: what
    the agent learnt of one meter's relay outside an order's own result.

    ``trigger`` says why it read: the periodic relay audit, the log read that follows
    every order on the meter (``order_id`` names that order), or the log poll.
    ``events`` are the disconnector log entries new since the last report (in index
    order, possibly none); ``relay``/``energy`` the state read at ``observed_at`` when
    the agent read it (an audit always does). ``report_id`` is the agent's key for the
    coordinator's ack. The coordinator decides what the report means (drift, a button
    press on an armed meter, tamper); the agent only reports."""

    kind: Literal["relay_report"] = "relay_report"
    report_id: Identifier
    concentrator_id: Identifier
    meter_id: Identifier
    trigger: RelayTrigger
    order_id: Identifier | None = None
    observed_at: AwareDatetime
    events: Annotated[list[RelayLogEntry], Meta(max_length=200)] = field(default_factory=list)
    relay: RelayReading | None = None
    energy: EnergyReading | None = None
    firmware_version: Annotated[str, Meta(max_length=64)] = ""
    agent_version: Annotated[str, Meta(max_length=32)] = ""

    def __post_init__(self) -> None:
        super().__post_init__()
        indexes = [entry.index for entry in self.events]
        if indexes != sorted(set(indexes)):
            raise ValueError("`events` must be in increasing index order, without repeats")


AgentMessage = OrderResult | OrderReceipt | RefusalReport | RelayReport


LineKey = Annotated[str, Meta(min_length=1, max_length=300)]
AirtimeShare = Annotated[float, Meta(ge=0, le=1)]


class ConcentratorStatus(Contract, frozen=True, kw_only=True):
    """Agent → coordinator, retained; also the agent's last will (online=False)."""

    kind: Literal["status"] = "status"
    concentrator_id: Identifier
    online: bool
    at: AwareDatetime
    modem: ModemState = ModemState.UNKNOWN
    sim: SimState = SimState.UNKNOWN
    signal_dbm: Annotated[int, Meta(ge=-150, le=0)] | None = None
    queue_depth: Count = 0
    outbox_depth: Count = 0
    meter_count: Count = 0
    meter_table_generation: Count | None = None
    agent_version: Annotated[str, Meta(max_length=32)] = ""
    # issue 16: the relay audit's measured share of each line's airtime ("line:<id>")
    audit_airtime: Annotated[dict[LineKey, AirtimeShare], Meta(max_length=64)] = field(
        default_factory=dict
    )


_LIMITS: Final[dict[str, int]] = {
    "OrderCommand": MAX_COMMAND_BYTES,
    "CancelCommand": MAX_COMMAND_BYTES,
    "MeterTableSync": MAX_METER_TABLE_BYTES,
    "ProtectedList": MAX_METER_TABLE_BYTES,
    "OrderResult": MAX_RESULT_BYTES,
    "OrderReceipt": MAX_RECEIPT_BYTES,
    "RefusalReport": MAX_REFUSAL_BYTES,
    "RelayReport": MAX_RELAY_REPORT_BYTES,
    "ConcentratorStatus": MAX_STATUS_BYTES,
}

M = TypeVar("M", bound=Contract)

# msgspec's messages end with " - at `$.retry.max_attempts`" (or "`$.attempts[0]`");
# unknown and missing fields name themselves in the message instead.
_AT = re.compile(r"^(?P<msg>.*?)(?: - at `\$(?P<path>[^`]*)`)?$", re.S)
_NAMED = re.compile(r"^Object (?:contains unknown|missing required) field `(?P<name>[^`]+)`$")
_FIELD_RULE = re.compile(r"^`(?P<name>[^`]+)` ")  # a __post_init__ rule about one field
_INDEX = re.compile(r"\[(\d+)\]")


def error_path(message: str) -> tuple[str, str]:
    """``(field path, message)`` from a msgspec error: ``("retry.max_attempts", ...)``.

    The path is dotted as the messages always named it (``attempts.0.detail``), and
    an unknown or missing field is named by its own name; ``"(message)"`` is the
    message as a whole.
    """
    match = _AT.match(message)
    assert match is not None  # the pattern matches any text
    text, path = match["msg"], match["path"] or ""
    path = _INDEX.sub(r".\1", path).lstrip(".")
    named = _NAMED.match(text) or _FIELD_RULE.match(text)
    if named:
        path = f"{path}.{named['name']}" if path else named["name"]
    return path or "(message)", text


def _problems(exc: msgspec.ValidationError) -> list[tuple[str, str]]:
    # msgspec stops at the first fault: one problem per refusal.
    return [error_path(str(exc))]


def size_limit(model: type[Contract]) -> int:
    return _LIMITS.get(model.__name__, MAX_COMMAND_BYTES)


_DECODERS: dict[type[Contract], msgspec.json.Decoder[Any]] = {}


def _decoder(model: type[M]) -> msgspec.json.Decoder[M]:
    decoder = _DECODERS.get(model)
    if decoder is None:
        decoder = _DECODERS[model] = msgspec.json.Decoder(model)
    return decoder


def decode(model: type[M], data: bytes | str) -> M:
    """Parse ``data`` as ``model``, refusing oversized or malformed payloads by name."""
    raw = data.encode() if isinstance(data, str) else data
    limit = size_limit(model)
    if len(raw) > limit:
        raise PayloadTooLarge(model.__name__, len(raw), limit)
    try:
        return _decoder(model).decode(raw)
    except msgspec.ValidationError as exc:
        raise InvalidPayload(model.__name__, _problems(exc)) from exc
    except (msgspec.DecodeError, UnicodeDecodeError) as exc:
        raise InvalidPayload(model.__name__, [("(message)", f"Invalid JSON: {exc}")]) from exc


def validate(model: type[M], data: Any, *, strict: bool = True) -> M:
    """Like :func:`decode` for an already parsed object (e.g. from a signed envelope).

    Also the way to build a message from outside input (a meter's answer, a file, a
    database row): plain construction checks only the ``__post_init__`` rules, this
    checks every type and constraint. ``data`` may hold datetimes and enum members
    as well as their JSON forms. ``strict=False`` also accepts numbers and booleans
    written as text (``"17"``, ``"true"``): for a CSV row, never for a message.
    """
    try:
        return msgspec.convert(data, model, strict=strict)
    except msgspec.ValidationError as exc:
        raise InvalidPayload(model.__name__, _problems(exc)) from exc


def encode(message: Contract) -> bytes:
    """The message as JSON (the same as :meth:`Contract.to_json`)."""
    return _ENCODER.encode(message)


def encode_checked(message: Contract) -> bytes:
    """:func:`encode`, after checking the bytes as the receiver will (types, constraints,
    size limit): what a sender uses for a message built from its own rows, since
    construction does not check them. Raises :class:`InvalidPayload` or
    :class:`PayloadTooLarge`."""
    data = _ENCODER.encode(message)
    decode(type(message), data)
    return data


def to_builtins(message: Contract) -> dict[str, Any]:
    """The message as a JSON-ready dict (timestamps as ISO strings, enums as values)."""
    data: dict[str, Any] = msgspec.to_builtins(message)
    return data


def replace(message: M, **changes: Any) -> M:
    """A copy of ``message`` with ``changes``; the ``__post_init__`` rules run again."""
    return msgspec.structs.replace(message, **changes)


def utc_iso(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")
