"""Which message a payload is, by its ``kind`` field, and parsing it as that message.

A signed envelope's body is one of the coordinator's commands (:func:`parse_command`);
the result topic carries receipts, results, refusals and relay reports
(:func:`parse_agent_message`). Each is parsed within its own model's size limit. Apart
from :mod:`shared.contracts`, which defines the models, because the kind tables need
every model of both families.
"""

from __future__ import annotations

import json
from typing import Any, Final, TypeVar

from shared.contracts import (
    MAX_METER_TABLE_BYTES,
    MAX_RESULT_BYTES,
    AgentMessage,
    CancelCommand,
    Command,
    Contract,
    MessageAck,
    MeterTableSync,
    OrderCommand,
    OrderReceipt,
    OrderResult,
    RefusalReport,
    RelayReport,
    size_limit,
    validate,
)
from shared.errors import InvalidPayload, PayloadTooLarge

M = TypeVar("M", bound=Contract)


def load_object(data: bytes, what: str) -> dict[str, Any]:
    """``data`` as a JSON object, or :class:`InvalidPayload` saying why not.

    Deep nesting ("[[[[...") within a size limit is refused here too, rather than
    escaping as a RecursionError from whichever consumer happened to parse it.
    """
    try:
        obj = json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InvalidPayload(what, [("(message)", f"not JSON: {exc}")]) from exc
    except RecursionError as exc:
        raise InvalidPayload(what, [("(message)", "nested too deeply")]) from exc
    except ValueError as exc:  # an integer over Python's digit limit (4,300)
        raise InvalidPayload(what, [("(message)", f"not usable JSON: {exc}")]) from exc
    if not isinstance(obj, dict):
        raise InvalidPayload(what, [("(message)", "not a JSON object")])
    return obj


def _parse_by_kind(data: bytes, what: str, kinds: dict[str, type[M]]) -> M:
    """Parse a payload into the model its ``kind`` names, within that model's size limit."""
    obj = load_object(data, what)
    kind = obj.get("kind")
    if not isinstance(kind, str) or kind not in kinds:
        raise InvalidPayload(what, [("kind", f"must be one of {sorted(kinds)}, got {kind!r}")])
    model = kinds[kind]
    if len(data) > size_limit(model):
        raise PayloadTooLarge(model.__name__, len(data), size_limit(model))
    return validate(model, obj)


_COMMAND_KINDS: Final[dict[str, type[Command]]] = {
    "order": OrderCommand,
    "cancel": CancelCommand,
    "meter_table": MeterTableSync,
    "ack": MessageAck,
}
_AGENT_KINDS: Final[dict[str, type[AgentMessage]]] = {
    "result": OrderResult,
    "receipt": OrderReceipt,
    "refusal": RefusalReport,
    "relay_report": RelayReport,
}


def parse_command(data: bytes) -> Command:
    """Parse the body of a signed envelope into the command its ``kind`` names."""
    if len(data) > MAX_METER_TABLE_BYTES:  # the largest command kind
        raise PayloadTooLarge("command", len(data), MAX_METER_TABLE_BYTES)
    return _parse_by_kind(data, "command", _COMMAND_KINDS)


def parse_agent_message(data: bytes | str) -> AgentMessage:
    """Parse a payload from the result topic into the message its ``kind`` names.

    ``kind`` is ``"result"`` (:class:`OrderResult`), ``"receipt"``
    (:class:`OrderReceipt`), ``"refusal"`` (:class:`RefusalReport`) or
    ``"relay_report"`` (:class:`RelayReport`); a payload without ``kind`` is refused
    naming it.
    """
    raw = data.encode() if isinstance(data, str) else data
    if len(raw) > MAX_RESULT_BYTES:
        raise PayloadTooLarge("agent message", len(raw), MAX_RESULT_BYTES)
    return _parse_by_kind(raw, "agent message", _AGENT_KINDS)
