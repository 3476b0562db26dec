"""The order lifecycle as an explicit transition table.

::

    queued ──start──▶ running ──succeed──▶ succeeded
      │  ▲              │ │ └──fail──────▶ failed
      │  └──recover─────┘ └──retry──▶ waiting ──start──▶ running
      ├──cancel──▶ cancelled            ├──expire──▶ expired
      └──expire──▶ expired              └──cancel──▶ cancelled

    running ──expire──▶ expired      running ──cancel──▶ cancelled
    (both by the executor, right before the relay method or instead of a retry)

``recover`` puts an order that was running when the agent died back in the
queue: the executor reads the relay before switching, so running it again is
safe. A cancel stops an order that has not started or is waiting between two
attempts (no exchange is in flight). For a running order the store records the
request and the executor ends the order ``cancelled`` itself, right before the relay
method or instead of the next retry; an exchange is never interrupted midway.
Every state change in the store goes through :func:`next_state`, which
refuses any event the table does not list for the current state.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Final

from edge_agent.errors import TransitionRefused


class State(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    WAITING = "waiting"  # a retryable attempt failed; next attempt scheduled
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    EXPIRED = "expired"
    CANCELLED = "cancelled"


class Event(StrEnum):
    START = "start"
    SUCCEED = "succeed"
    FAIL = "fail"
    RETRY = "retry"
    EXPIRE = "expire"
    CANCEL = "cancel"
    RECOVER = "recover"


TRANSITIONS: Final[dict[tuple[State, Event], State]] = {
    (State.QUEUED, Event.START): State.RUNNING,
    (State.QUEUED, Event.CANCEL): State.CANCELLED,
    (State.QUEUED, Event.EXPIRE): State.EXPIRED,
    (State.QUEUED, Event.FAIL): State.FAILED,  # refused as it is stored: protected list
    (State.RUNNING, Event.SUCCEED): State.SUCCEEDED,
    (State.RUNNING, Event.FAIL): State.FAILED,
    (State.RUNNING, Event.RETRY): State.WAITING,
    (State.RUNNING, Event.EXPIRE): State.EXPIRED,
    (State.RUNNING, Event.CANCEL): State.CANCELLED,  # by the executor, never mid-exchange
    (State.RUNNING, Event.RECOVER): State.QUEUED,
    (State.WAITING, Event.START): State.RUNNING,
    (State.WAITING, Event.EXPIRE): State.EXPIRED,
    (State.WAITING, Event.CANCEL): State.CANCELLED,
}

TERMINAL: Final = frozenset({State.SUCCEEDED, State.FAILED, State.EXPIRED, State.CANCELLED})
ACTIVE: Final = frozenset({State.QUEUED, State.RUNNING, State.WAITING})


def next_state(order_id: str, state: State | str, event: Event) -> State:
    """The state after ``event``; raises TransitionRefused if the table has no entry."""
    current = State(state)
    try:
        return TRANSITIONS[(current, event)]
    except KeyError:
        raise TransitionRefused(order_id, current.value, event.value) from None
