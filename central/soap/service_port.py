"""The seam between the SOAP gateway and the coordinator.

The gateway speaks CIM on one side and these neutral dataclasses on the other; the
coordinator's service functions sit behind :class:`ServicePort`. Tests drive the
gateway with an in-memory port; production wires :mod:`central.soap.adapter`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Protocol


class ControlAction(StrEnum):
    CONNECT = "connect"
    DISCONNECT = "disconnect"
    ARM = "arm"


class Refusal(StrEnum):
    """Why one meter of a request was refused; each has its CIM error code."""

    UNKNOWN_METER = "unknown_meter"
    NOT_COMMISSIONED = "not_commissioned"
    NOT_LINKED = "not_linked_to_concentrator"
    CONCENTRATOR_DECOMMISSIONED = "concentrator_decommissioned"
    PROTECTED_CUSTOMER = "protected_customer"
    UNSUPPORTED_CONTROL = "unsupported_control_code"
    UNSUPPORTED_REASON = "unsupported_reason"
    MISSING_DATA = "missing_data"
    DUPLICATE = "duplicate"
    NOT_WORKING_DAY = "not_working_day"
    MORATORIUM = "moratorium"
    ORDER_NOT_FOUND = "order_not_found"
    NOT_CANCELLABLE = "not_cancellable"
    INTERNAL_ERROR = "internal_error"
    UNSUPPORTED_OPERATION = "unsupported_operation"  # change / close / delete
    UNSUPPORTED_PAYLOAD = "unsupported_payload"  # Format, OperationSet, bad Compressed
    REPLAY = "replay"  # Header/ReplayDetection seen before or outside the window


@dataclass(frozen=True)
class ControlRequest:
    """One meter of one EndDeviceControl: becomes one order."""

    meter_id: str
    action: ControlAction
    reason: str  # shared.codes.OrderReason value
    issuer_id: str | None = None
    issuer_tracking_id: str | None = None
    priority: int | None = None
    not_before: datetime | None = None
    deadline: datetime | None = None
    special: bool = False  # allowed outside working days
    correlation_id: str | None = None
    reply_address: str | None = None
    # Stable per (MessageID, control, meter): a re-run after a crash finds the order.
    idempotency_key: str | None = None
    source: str = "soap"


@dataclass(frozen=True)
class CancelRequest:
    """Cancel by our order id (EndDeviceControl/mRID) or by the issuer's tracking id."""

    order_id: str | None = None
    issuer_tracking_id: str | None = None
    meter_id: str | None = None


@dataclass(frozen=True)
class ItemOutcome:
    """What became of one meter / one cancel: accepted with its order, or refused."""

    meter_id: str | None
    order_id: str | None = None
    refusal: Refusal | None = None
    detail: str = ""
    # The order already existed (same request twice): accepted, nothing new created.
    existing: bool = False
    state: str | None = None

    @property
    def accepted(self) -> bool:
        return self.refusal is None


@dataclass(frozen=True)
class OrderQuery:
    issuer_tracking_ids: Sequence[str] = ()
    order_ids: Sequence[str] = ()
    meter_ids: Sequence[str] = ()
    correlation_ids: Sequence[str] = ()


@dataclass(frozen=True)
class OrderView:
    order_id: str
    meter_id: str
    action: ControlAction
    state: str
    reason: str | None = None
    issuer_id: str | None = None
    issuer_tracking_id: str | None = None
    updated_at: datetime | None = None
    detail: str | None = None
    not_before: datetime | None = None
    deadline: datetime | None = None


class Outcome(StrEnum):
    CONNECTED = "connected"
    DISCONNECTED = "disconnected"
    ARMED = "armed"
    FAILED = "failed"
    EXPIRED = "expired"
    CANCELLED = "cancelled"
    # accepted, then refused: a disconnect deleted from quarantine (issue 17)
    REJECTED = "rejected"


@dataclass(frozen=True)
class OrderEnded:
    """An order reached its end: what Legacy is told in step 9."""

    order_id: str
    meter_id: str
    action: ControlAction
    outcome: Outcome
    ended_at: datetime
    energy_value: float | None = None
    energy_unit: str | None = None
    energy_read_at: datetime | None = None
    failure_reason: str | None = None
    work_order_ref: str | None = None
    issuer_id: str | None = None
    issuer_tracking_id: str | None = None
    extra: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Principal:
    name: str
    role: str  # viewer | operator | approver | admin


class ServicePort(Protocol):
    """What the gateway needs from the coordinator."""

    def create(self, requests: Sequence[ControlRequest], actor: Principal) -> list[ItemOutcome]:
        """One outcome per request, in the same order."""
        ...

    def cancel(self, requests: Sequence[CancelRequest], actor: Principal) -> list[ItemOutcome]: ...

    def query(self, query: OrderQuery, actor: Principal) -> list[OrderView]: ...


class Authenticator(Protocol):
    def authenticate(self, username: str, password: str) -> Principal | None:
        """The principal for these credentials, or None."""
        ...

    def authenticate_digest(
        self, username: str, digest: str, nonce: bytes, created: str
    ) -> Principal | None:
        """The principal whose secret gives this WS-Security PasswordDigest, or None."""
        ...
