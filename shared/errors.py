"""Exceptions raised by ``shared`` (contracts, topics, signing).

The tree::

    SharedError                       anything raised by this package
    ├── ContractError                 a payload does not match its contract
    │   ├── PayloadTooLarge           over the size limit of its kind, refused unread
    │   └── InvalidPayload            not JSON, wrong/missing/unknown fields (names them)
    ├── TopicError                    a topic or concentrator id outside our tree
    └── CommandRejected               a signed command the receiver must refuse;
        ├── Unsigned                  carries ``reason`` (a ReasonCode) to report back
        ├── BadSignature
        ├── UnknownSigningKey
        ├── CommandExpired
        ├── CommandReplayed
        ├── WrongRecipient
        └── StaleProtectedList        a protected list older than the one held

Library errors (pydantic, cryptography, json) are mapped at the boundary with
``raise ... from`` so that callers only ever catch these.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from shared.codes import ReasonCode
    from shared.contracts import Command


class SharedError(Exception):
    """Base of every error raised by the shared package."""


class ContractError(SharedError):
    """A payload does not honour its message contract."""


class PayloadTooLarge(ContractError):
    def __init__(self, kind: str, size: int, limit: int) -> None:
        super().__init__(f"{kind} payload is {size} bytes, over the limit of {limit} bytes")
        self.kind = kind
        self.size = size
        self.limit = limit


class InvalidPayload(ContractError):
    """Carries ``problems``: one ``(field path, message)`` pair per fault."""

    def __init__(self, kind: str, problems: list[tuple[str, str]]) -> None:
        listed = "; ".join(f"{path}: {message}" for path, message in problems)
        super().__init__(f"invalid {kind}: {listed}")
        self.kind = kind
        self.problems = problems

    @property
    def fields(self) -> list[str]:
        return [path for path, _ in self.problems]


class TopicError(SharedError):
    """A topic or identifier that does not belong to the ami-rcd topic tree."""


class CommandRejected(SharedError):
    """A command the receiver refuses; ``reason`` is what it reports back.

    ``command`` is the parsed command when its signature was good (past its deadline,
    seen before, for another concentrator): the agent answers a copy of an order it
    holds with the state it stored, rather than with a refusal."""

    reason: ReasonCode

    def __init__(
        self, message: str, *, command_id: str | None = None, command: Command | None = None
    ) -> None:
        super().__init__(message)
        self.command_id = command_id
        self.command = command


def _reason(name: str) -> ReasonCode:
    from shared.codes import ReasonCode

    return ReasonCode(name)


class Unsigned(CommandRejected):
    @property
    def reason(self) -> ReasonCode:  # type: ignore[override]
        return _reason("unsigned_command")


class BadSignature(CommandRejected):
    @property
    def reason(self) -> ReasonCode:  # type: ignore[override]
        return _reason("bad_signature")


class UnknownSigningKey(CommandRejected):
    @property
    def reason(self) -> ReasonCode:  # type: ignore[override]
        return _reason("bad_signature")


class CommandExpired(CommandRejected):
    @property
    def reason(self) -> ReasonCode:  # type: ignore[override]
        return _reason("expired")


class CommandReplayed(CommandRejected):
    @property
    def reason(self) -> ReasonCode:  # type: ignore[override]
        return _reason("replayed_command")


class WrongRecipient(CommandRejected):
    @property
    def reason(self) -> ReasonCode:  # type: ignore[override]
        return _reason("wrong_concentrator")


class StaleProtectedList(CommandRejected):
    @property
    def reason(self) -> ReasonCode:  # type: ignore[override]
        return _reason("stale_protected_list")
