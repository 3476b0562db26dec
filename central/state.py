"""The order lifecycle as an explicit transition table.

::

    received ──validate──▶ validated ──dispatch──▶ dispatched ──deliver──▶ delivered
        │                      │                       │                      │
        └──reject──▶ rejected  ├──cancel──▶ cancelled  ├── complete_* / fail / expire / cancel
                               └──expire──▶ expired    │
    completed_connected | completed_disconnected | completed_armed | failed | expired
    | cancelled | rejected ──report──▶ reported

    completed_armed | reported (armed) ──customer_connected──▶ completed_connected

    expired | failed | reported ──correct_connected|correct_disconnected|correct_armed──▶
        completed_connected | completed_disconnected | completed_armed   (a late result)

    validated ──quarantine──▶ quarantined ──release──▶ validated     (anomaly, issue 17)
                                  ├──discard──▶ rejected  (a second person deleted it)
                                  ├──cancel──▶ cancelled
                                  └──expire──▶ expired

``transition(state, event)`` is the only place that decides; anything not in
``TRANSITIONS`` raises :class:`central.errors.InvalidTransition`. Each event also
names the step of the brief (1-10) it belongs to, for the timeline.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Final

from central.errors import InvalidTransition


class OrderState(StrEnum):
    RECEIVED = "received"
    VALIDATED = "validated"
    REJECTED = "rejected"
    DISPATCHED = "dispatched"
    DELIVERED = "delivered"
    COMPLETED_CONNECTED = "completed_connected"
    COMPLETED_DISCONNECTED = "completed_disconnected"
    COMPLETED_ARMED = "completed_armed"
    FAILED = "failed"
    EXPIRED = "expired"
    CANCELLED = "cancelled"
    REPORTED = "reported"
    # Held by the anomaly detector (central/services/anomaly.py): never signed, never
    # published, never claimed, until a second person releases or deletes it.
    QUARANTINED = "quarantined"


class Event(StrEnum):
    VALIDATE = "validate"
    REJECT = "reject"
    DISPATCH = "dispatch"
    DELIVER = "deliver"
    COMPLETE_CONNECTED = "complete_connected"
    COMPLETE_DISCONNECTED = "complete_disconnected"
    COMPLETE_ARMED = "complete_armed"
    FAIL = "fail"
    EXPIRE = "expire"
    CANCEL = "cancel"
    REPORT = "report"
    # The meter moved to another concentrator while its order was in flight on the old
    # one, and the old agent answered that the meter is not in its table: nothing was
    # switched, so the order goes back to be dispatched to the meter's new concentrator.
    REROUTE = "reroute"
    # A late result (the order had ended expired, or failed without the agent's answer,
    # and may already be reported) says the relay switched: the record becomes what the
    # meter did, and Legacy is told again.
    CORRECT_CONNECTED = "correct_connected"
    CORRECT_DISCONNECTED = "correct_disconnected"
    CORRECT_ARMED = "correct_armed"
    # Anomaly detection (issue 17): a disconnect above the limits waits for a second person.
    QUARANTINE = "quarantine"
    RELEASE = "release"  # the second person lets it go on to dispatch
    DISCARD = "discard"  # the second person deletes it: it ends rejected, coded
    # The order ended armed (the meter only made itself ready) and the meter was then
    # seen connected: the customer pressed the button. The order's story ends connected
    # and Legacy is told so (issue 16).
    CUSTOMER_CONNECTED = "customer_connected"


S = OrderState
E = Event

# Orders in these states still own their meter ("one active order per meter").
ACTIVE_STATES: Final = frozenset(
    {S.RECEIVED, S.VALIDATED, S.QUARANTINED, S.DISPATCHED, S.DELIVERED}
)
IN_FLIGHT_STATES: Final = frozenset({S.DISPATCHED, S.DELIVERED})
# The order has ended; Legacy must be told (then it becomes REPORTED).
FINAL_STATES: Final = frozenset(
    {
        S.REJECTED,
        S.COMPLETED_CONNECTED,
        S.COMPLETED_DISCONNECTED,
        S.COMPLETED_ARMED,
        S.FAILED,
        S.EXPIRED,
        S.CANCELLED,
    }
)
ENDED_STATES: Final = FINAL_STATES | {S.REPORTED}
# Final states that need a field technician (step 10).
WORK_ORDER_STATES: Final = frozenset({S.FAILED, S.EXPIRED})

_OUTCOMES_FROM_FLIGHT: Final = {
    E.COMPLETE_CONNECTED: S.COMPLETED_CONNECTED,
    E.COMPLETE_DISCONNECTED: S.COMPLETED_DISCONNECTED,
    E.COMPLETE_ARMED: S.COMPLETED_ARMED,
    E.FAIL: S.FAILED,
    E.EXPIRE: S.EXPIRED,
    E.CANCEL: S.CANCELLED,
}

TRANSITIONS: Final[dict[tuple[OrderState, Event], OrderState]] = {
    (S.RECEIVED, E.VALIDATE): S.VALIDATED,
    (S.RECEIVED, E.REJECT): S.REJECTED,
    (S.VALIDATED, E.DISPATCH): S.DISPATCHED,
    (S.VALIDATED, E.CANCEL): S.CANCELLED,
    (S.VALIDATED, E.EXPIRE): S.EXPIRED,
    (S.DISPATCHED, E.DELIVER): S.DELIVERED,
    **{(S.DISPATCHED, event): target for event, target in _OUTCOMES_FROM_FLIGHT.items()},
    **{(S.DELIVERED, event): target for event, target in _OUTCOMES_FROM_FLIGHT.items()},
    (S.DISPATCHED, E.REROUTE): S.VALIDATED,
    (S.DELIVERED, E.REROUTE): S.VALIDATED,
    # in the enum's order, not the set's: the table reads (and tests collect) the same
    # in every process
    **{(final, E.REPORT): S.REPORTED for final in S if final in FINAL_STATES},
    **{
        (ended, event): target
        for ended in (S.EXPIRED, S.FAILED, S.REPORTED)
        for event, target in (
            (E.CORRECT_CONNECTED, S.COMPLETED_CONNECTED),
            (E.CORRECT_DISCONNECTED, S.COMPLETED_DISCONNECTED),
            (E.CORRECT_ARMED, S.COMPLETED_ARMED),
        )
    },
    (S.VALIDATED, E.QUARANTINE): S.QUARANTINED,
    (S.QUARANTINED, E.RELEASE): S.VALIDATED,
    (S.QUARANTINED, E.DISCARD): S.REJECTED,
    (S.QUARANTINED, E.CANCEL): S.CANCELLED,  # an operator's cancel, or a reconnect
    (S.QUARANTINED, E.EXPIRE): S.EXPIRED,  # deadlines still apply
}
TRANSITIONS.update(
    {
        (S.COMPLETED_ARMED, E.CUSTOMER_CONNECTED): S.COMPLETED_CONNECTED,
        # from ``reported`` the caller checks it was reported armed
        (S.REPORTED, E.CUSTOMER_CONNECTED): S.COMPLETED_CONNECTED,
    }
)
# Corrections apply only to an order that ended without the agent's answer (expired,
# or failed for lack of one); from ``reported`` the caller checks what it was reported as.
CORRECTABLE_STATES: Final = frozenset({S.EXPIRED, S.FAILED})

# An ended order's outcome, from its final state. ``state`` and outcome are two fields:
# once Legacy is told, the state is ``reported`` and the outcome stays (``final_state``).
OUTCOME_OF: Final[dict[OrderState, str]] = {
    S.COMPLETED_CONNECTED: "connected",
    S.COMPLETED_DISCONNECTED: "disconnected",
    S.COMPLETED_ARMED: "armed",
    S.FAILED: "failed",
    S.EXPIRED: "expired",
    S.CANCELLED: "cancelled",
    S.REJECTED: "rejected",
}
FINAL_STATE_OF: Final[dict[str, OrderState]] = {v: k for k, v in OUTCOME_OF.items()}
OUTCOMES: Final[tuple[str, ...]] = tuple(OUTCOME_OF.values())


def outcome_of(final_state: str | None) -> str | None:
    """``connected`` ... ``rejected`` for an ended order, None while it runs."""
    if final_state is None:
        return None
    known = _STATE_OF.get(final_state)
    return OUTCOME_OF.get(known) if known is not None else None


class HoldReason(StrEnum):
    """Why a validated disconnect waits (``orders.hold_reason``, central/services/holds.py);
    ``quarantined`` is written only on one that expired in quarantine."""

    CONCENTRATOR_OFFLINE = "concentrator_offline"
    MODEM_DOWN = "concentrator_modem_down"
    EMERGENCY = "emergency_hold"
    WEATHER = "weather_hold"
    SUPPLY_OFF = "supply_off"
    QUARANTINED = "quarantined"


# An order that expired while it waited for one of these gets no field work order: a crew
# would do what the hold or the quarantine stops (or find the supply already off).
NO_FIELD_VISIT_HOLDS: Final = frozenset(
    {HoldReason.EMERGENCY, HoldReason.WEATHER, HoldReason.SUPPLY_OFF, HoldReason.QUARANTINED}
)


# The step of the brief (Table 2) each event belongs to.
STEP_OF: Final[dict[Event, int]] = {
    E.VALIDATE: 3,
    E.REJECT: 3,
    E.DISPATCH: 4,
    E.DELIVER: 5,
    E.COMPLETE_CONNECTED: 8,
    E.COMPLETE_DISCONNECTED: 8,
    E.COMPLETE_ARMED: 8,
    E.FAIL: 8,
    E.EXPIRE: 8,
    E.CANCEL: 2,
    E.REPORT: 9,
    E.REROUTE: 4,
    E.CORRECT_CONNECTED: 8,
    E.CORRECT_DISCONNECTED: 8,
    E.CORRECT_ARMED: 8,
    E.QUARANTINE: 3,
    E.RELEASE: 3,
    E.DISCARD: 3,
    E.CUSTOMER_CONNECTED: 8,
}


# By value; StrEnum members hash and compare as their values, so members find themselves.
# (A dict lookup instead of ``OrderState(value)``: this runs for every order.)
_STATE_OF: Final[dict[str, OrderState]] = {state.value: state for state in OrderState}
_EVENT_OF: Final[dict[str, Event]] = {event.value: event for event in Event}


def transition(state: OrderState | str, event: Event | str) -> OrderState:
    """The state after ``event`` in ``state``; refuses anything not in the table."""
    known_state = _STATE_OF.get(state)
    known_event = _EVENT_OF.get(event)
    if known_state is None or known_event is None:
        raise InvalidTransition(str(event), str(state))
    target = TRANSITIONS.get((known_state, known_event))
    if target is None:
        raise InvalidTransition(known_event.value, known_state.value)
    return target


def can(state: OrderState | str, event: Event | str) -> bool:
    try:
        transition(state, event)
    except InvalidTransition:
        return False
    return True
