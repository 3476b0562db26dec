"""The order lifecycle table: one test per allowed row, and refusals."""

from __future__ import annotations

import pytest

from central.errors import InvalidTransition
from central.state import ENDED_STATES, TRANSITIONS, Event, OrderState, can, transition


@pytest.mark.parametrize(
    ("state", "event", "target"),
    [(s, e, t) for (s, e), t in TRANSITIONS.items()],
    ids=[f"{s.value}-{e.value}" for (s, e) in TRANSITIONS],
)
def test_each_row_of_the_table(state: OrderState, event: Event, target: OrderState) -> None:
    assert transition(state, event) is target


@pytest.mark.parametrize(
    ("state", "event"),
    [
        (OrderState.RECEIVED, Event.DISPATCH),
        (OrderState.VALIDATED, Event.COMPLETE_CONNECTED),
        (OrderState.REJECTED, Event.VALIDATE),
        (OrderState.DELIVERED, Event.DISPATCH),
        (OrderState.COMPLETED_DISCONNECTED, Event.FAIL),
        (OrderState.REPORTED, Event.REPORT),
        (OrderState.CANCELLED, Event.CANCEL),
    ],
)
def test_refused_event_names_event_and_state(state: OrderState, event: Event) -> None:
    with pytest.raises(InvalidTransition) as info:
        transition(state, event)
    assert event.value in str(info.value) and state.value in str(info.value)
    assert not can(state, event)


CORRECTIONS = {
    Event.CORRECT_CONNECTED: OrderState.COMPLETED_CONNECTED,
    Event.CORRECT_DISCONNECTED: OrderState.COMPLETED_DISCONNECTED,
    Event.CORRECT_ARMED: OrderState.COMPLETED_ARMED,
}
CORRECTABLE = (OrderState.EXPIRED, OrderState.FAILED, OrderState.REPORTED)
# an armed order whose meter was then seen connected (issue 16): the customer's button
BUTTON_PRESS_STATES = (OrderState.COMPLETED_ARMED, OrderState.REPORTED)


def test_ended_states_accept_only_report_and_a_late_results_correction() -> None:
    for state in ENDED_STATES:
        for event in Event:
            if event is Event.REPORT and state is not OrderState.REPORTED:
                assert can(state, event)
            elif event in CORRECTIONS and state in CORRECTABLE:
                assert transition(state, event) is CORRECTIONS[event]
            elif event is Event.CUSTOMER_CONNECTED and state in BUTTON_PRESS_STATES:
                assert transition(state, event) is OrderState.COMPLETED_CONNECTED
            else:
                assert not can(state, event), (state, event)


@pytest.mark.parametrize("state", CORRECTABLE)
@pytest.mark.parametrize("event", list(CORRECTIONS))
def test_a_late_result_corrects_an_order_that_ended_without_an_answer(
    state: OrderState, event: Event
) -> None:
    assert TRANSITIONS[(state, event)] is CORRECTIONS[event]


@pytest.mark.parametrize(
    "state",
    [s for s in OrderState if s not in CORRECTABLE],
)
def test_nothing_else_is_corrected(state: OrderState) -> None:
    # a completed, cancelled, refused or still active order is never "corrected"
    assert not any(can(state, event) for event in CORRECTIONS)


def test_unknown_names_are_refused() -> None:
    with pytest.raises(InvalidTransition):
        transition("received", "teleport")


@pytest.mark.parametrize("state", BUTTON_PRESS_STATES)
def test_the_customers_button_ends_an_armed_order_connected(state: OrderState) -> None:
    assert transition(state, Event.CUSTOMER_CONNECTED) is OrderState.COMPLETED_CONNECTED


@pytest.mark.parametrize("state", [s for s in OrderState if s not in BUTTON_PRESS_STATES])
def test_no_other_state_takes_the_button_press(state: OrderState) -> None:
    # a running order, or one that ended otherwise, is not finished by a button press
    with pytest.raises(InvalidTransition) as info:
        transition(state, Event.CUSTOMER_CONNECTED)
    assert "customer_connected" in str(info.value)
