"""The protocol of one attempt on a meter, apart from scheduling it.

:func:`switch` runs one attempt on an open association (:class:`MeterLink`): read the
disconnect control, report "already in state" without switching, otherwise invoke
the method and read back relay, energy and clock, trusting a state only when
control and output state agree. :func:`classify` maps what went wrong in an
exchange to the contract's reason codes. Pure logic over the link, with no store or
thread: :class:`edge_agent.executor.Executor` decides when an attempt runs and what
its result does to the order.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Protocol

from edge_agent.errors import MeterError
from edge_agent.meter_table import Meter
from shared.codes import Action, ControlState, Outcome, ReasonCode
from shared.contracts import EnergyReading, RelayReading
from shared.dlms.errors import (
    DIAG_CONTEXT_NOT_SUPPORTED,
    AccessDenied,
    ActionRefused,
    AssociationRefused,
    DataAccessError,
    DlmsError,
    MalformedResponse,
    MeterUnreachable,
    NoResponse,
    TransportError,
)


class MeterLink(Protocol):
    """An open association with one meter."""

    def read_state(self) -> tuple[RelayReading, EnergyReading | None]:
        """Relay state with the energy reading, in one exchange."""
        ...

    def disconnect(self) -> None: ...

    def reconnect(self) -> None: ...

    def read_back(self) -> tuple[RelayReading, EnergyReading | None]: ...


class MeterDriver(Protocol):
    """Opens associations; the real one speaks DLMS (edge_agent.dlms_driver)."""

    def session(self, meter: Meter) -> AbstractContextManager[MeterLink]: ...


def classify(exc: BaseException, meter: Meter | None = None) -> tuple[ReasonCode, str]:
    """The reason code to report for a failed exchange."""
    detail = str(exc)[:400]
    if isinstance(exc, MeterError):
        return exc.reason, exc.detail or detail
    if isinstance(exc, MeterUnreachable):  # not even the HDLC link layer answered
        return ReasonCode.METER_UNREACHABLE, detail
    if isinstance(exc, NoResponse):
        return ReasonCode.METER_NOT_RESPONDING, detail
    if isinstance(exc, MalformedResponse):
        return ReasonCode.INVALID_METER_RESPONSE, detail
    if isinstance(exc, AssociationRefused):
        if exc.diagnostic == DIAG_CONTEXT_NOT_SUPPORTED:
            return ReasonCode.METER_NOT_COMMISSIONED, detail
        return ReasonCode.AUTHENTICATION_FAILED, detail
    if isinstance(exc, ActionRefused | AccessDenied):
        return ReasonCode.METHOD_REFUSED, detail
    if isinstance(exc, DataAccessError):
        return ReasonCode.INVALID_METER_RESPONSE, detail
    if isinstance(exc, TransportError):
        if meter is not None and meter.transport == "tcp":
            return ReasonCode.METER_UNREACHABLE, detail
        return ReasonCode.CONCENTRATOR_SERIAL_FAULT, detail
    if isinstance(exc, DlmsError):
        return ReasonCode.INVALID_METER_RESPONSE, detail
    return ReasonCode.INTERNAL_ERROR, f"{type(exc).__name__}: {detail}"


@dataclass
class AttemptResult:
    outcome: Outcome | None = None  # None: failed, see reason
    reason: ReasonCode | None = None
    detail: str = ""
    relay: RelayReading | None = None
    energy: EnergyReading | None = None
    already: bool = False


_WANTED: dict[Action, frozenset[ControlState]] = {
    Action.DISCONNECT: frozenset({ControlState.DISCONNECTED}),
    Action.CONNECT: frozenset({ControlState.CONNECTED}),
    Action.ARM: frozenset({ControlState.READY_FOR_RECONNECTION, ControlState.CONNECTED}),
}

_OUTCOME_OF_STATE = {
    ControlState.DISCONNECTED: Outcome.DISCONNECTED,
    ControlState.CONNECTED: Outcome.CONNECTED,
    ControlState.READY_FOR_RECONNECTION: Outcome.ARMED,
}


def _confirms(relay: RelayReading, states: frozenset[ControlState]) -> bool:
    """The read-back shows one of ``states`` and an output state that agrees with it.

    A meter answering with a control_state the action wants but an output_state that
    says otherwise (relay open while "connected", closed while "disconnected") is not
    confirmation: the result would tell the customer's utility something the relay did
    not do.
    """
    if relay.control_state not in states:
        return False
    if relay.output_state is None:
        return True
    return relay.output_state is (relay.control_state is ControlState.CONNECTED)


def switch(
    link: MeterLink,
    action: Action,
    stop_before_switch: Callable[[RelayReading], AttemptResult | None] = lambda relay: None,
    on_method: Callable[[float], None] = lambda seconds: None,
) -> AttemptResult:
    """The protocol of one attempt on an open association.

    ``stop_before_switch`` is asked right before the disconnect/reconnect method is
    invoked (after the association and the first read, which can take long on a slow
    PLC line); if it returns a result (deadline passed: ``expired``; cancel requested:
    ``cancelled``) that is the attempt's result and the relay is not touched.
    """
    before, first_energy = link.read_state()
    if before.control_state in _WANTED[action]:
        # Nothing to switch; the first read carried the reading Legacy wants (step 6 of
        # the brief), so this order costs one GET.
        if not _confirms(before, _WANTED[action]):
            # control_state and output_state disagree: not to be trusted as "in state"
            return AttemptResult(
                reason=ReasonCode.INVALID_METER_RESPONSE,
                detail=(f"control_state {before.control_state.name.lower()} but output_state "
                        f"{before.output_state}"),
                relay=before, energy=first_energy,
            )
        return AttemptResult(
            outcome=_OUTCOME_OF_STATE[before.control_state], relay=before, energy=first_energy,
            already=True,
        )
    if before.control_mode == 0:
        # Mode 0: the meter has no remote switching at all; asking again cannot help.
        return AttemptResult(
            reason=ReasonCode.CONTROL_MODE_FORBIDS,
            detail=f"control_mode 0: the meter accepts no remote {action.value}",
            relay=before,
        )
    stop = stop_before_switch(before)
    if stop is not None:
        return stop
    began = time.monotonic()
    if action is Action.DISCONNECT:
        link.disconnect()
    else:
        link.reconnect()
    on_method(time.monotonic() - began)  # the method's round trip on this line
    relay, energy = link.read_back()
    if action is Action.DISCONNECT:
        ok = _confirms(relay, frozenset({ControlState.DISCONNECTED}))
    else:
        ok = _confirms(relay, frozenset({ControlState.CONNECTED,
                                         ControlState.READY_FOR_RECONNECTION}))
    if not ok:
        return AttemptResult(
            reason=ReasonCode.RELAY_DID_NOT_SWITCH,
            detail=(f"control_state {relay.control_state.name.lower()}, output_state "
                    f"{relay.output_state} after the method"),
            relay=relay,
            energy=energy,
        )
    return AttemptResult(outcome=_OUTCOME_OF_STATE[relay.control_state], relay=relay, energy=energy)
