"""The coded values the messages carry: actions, reasons, outcomes, relay and modem states.

Apart from :mod:`shared.contracts` because much of the product uses them without any
message: the coordinator's database columns and reports, the SOAP mapping to IEC
61968-9, the agent's classification of a failed exchange, the simulator.
"""

from __future__ import annotations

from enum import IntEnum, StrEnum
from typing import Final


class Action(StrEnum):
    CONNECT = "connect"
    DISCONNECT = "disconnect"
    ARM = "arm"  # reconnect that only arms the meter; the customer closes the relay


class OrderReason(StrEnum):
    NON_PAYMENT = "non_payment"
    PAYMENT_RESTORED = "payment_restored"
    LOSSES = "losses"
    CUSTOMER_REQUEST = "customer_request"


class Outcome(StrEnum):
    CONNECTED = "connected"
    DISCONNECTED = "disconnected"
    ARMED = "armed"  # ready_for_reconnection: waiting for the customer's button
    FAILED = "failed"
    EXPIRED = "expired"
    CANCELLED = "cancelled"
    REJECTED = "rejected"


SUCCESS_OUTCOMES: Final = frozenset({Outcome.CONNECTED, Outcome.DISCONNECTED, Outcome.ARMED})


class ReasonCode(StrEnum):
    """Why an order did not reach the wanted state; one per failure the brief names."""

    METER_NOT_RESPONDING = "meter_not_responding"  # packet loss, malfunction, timeout
    METER_UNREACHABLE = "meter_unreachable"  # no route from the concentrator (PLC)
    METER_NOT_COMMISSIONED = "meter_not_commissioned"
    NOT_IN_CONCENTRATOR_TABLE = "not_in_concentrator_table"
    AUTHENTICATION_FAILED = "authentication_failed"  # association refused: keys
    INVALID_METER_RESPONSE = "invalid_meter_response"  # garbage, bad FCS, wrong PDU
    RELAY_DID_NOT_SWITCH = "relay_did_not_switch"  # accepted, state unchanged
    METHOD_REFUSED = "method_refused"  # the meter refused the method: hardware fault
    CONTROL_MODE_FORBIDS = "control_mode_forbids"  # mode 0, or mode disallows remote
    CONCENTRATOR_MODEM_FAULT = "concentrator_modem_fault"
    CONCENTRATOR_SIM_FAULT = "concentrator_sim_fault"
    CONCENTRATOR_SERIAL_FAULT = "concentrator_serial_fault"
    BAD_SIGNATURE = "bad_signature"
    UNSIGNED_COMMAND = "unsigned_command"
    REPLAYED_COMMAND = "replayed_command"
    WRONG_CONCENTRATOR = "wrong_concentrator"
    MALFORMED_COMMAND = "malformed_command"
    EXPIRED = "expired"  # deadline passed before the order could finish
    CANCELLED = "cancelled"
    INTERNAL_ERROR = "internal_error"
    # the meter is on the concentrator's protected list (Ley 21.304), signed by the
    # protect authority, not the coordinator: a disconnect is refused whoever signed it
    PROTECTED_CUSTOMER_EDGE = "protected_customer_edge"
    # a protected list older than, or as old as but unlike, the one the agent holds
    STALE_PROTECTED_LIST = "stale_protected_list"


# Failures that may pass on a later attempt; the rest end the order at once.
RETRYABLE_REASONS: Final = frozenset(
    {
        ReasonCode.METER_NOT_RESPONDING,
        ReasonCode.METER_UNREACHABLE,
        ReasonCode.INVALID_METER_RESPONSE,
        ReasonCode.RELAY_DID_NOT_SWITCH,
        ReasonCode.CONCENTRATOR_MODEM_FAULT,
        ReasonCode.CONCENTRATOR_SERIAL_FAULT,
    }
)


class ControlState(IntEnum):
    """DLMS Disconnect control (IC 70) attribute 3."""

    DISCONNECTED = 0
    CONNECTED = 1
    READY_FOR_RECONNECTION = 2


class ModemState(StrEnum):
    OK = "ok"
    DEGRADED = "degraded"
    DOWN = "down"
    UNKNOWN = "unknown"


class SimState(StrEnum):
    OK = "ok"
    ABSENT = "absent"
    ERROR = "error"
    UNKNOWN = "unknown"
