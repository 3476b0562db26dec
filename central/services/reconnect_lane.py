"""Reconnects never wait (issue 17, item 3): the dispatcher's lane for connects and arms.

A customer who paid must not wait behind a disconnect campaign. So, at the coordinator:

* connects and arms have their own in-flight budget per concentrator
  (``max_inflight_reconnects_per_concentrator``): a concentrator full of in-flight
  disconnects still takes a reconnect at once, and reconnects never use up the budget
  disconnects need;
* they are claimed before any disconnect, whatever priority a disconnect was given;
* they are not counted against the fleet-wide disconnect rate and need no approval
  (``approvals`` and the rate limit only ever look at disconnects);
* a reconnect does not wait for a disconnect of the same meter that it superseded: that
  disconnect already has a cancel on its way (``intake._supersede``; the reconnect goes
  once ``dispatch.send_cancels`` has it acknowledged, in the same pass), and the agent itself cancels a queued
  disconnect of a meter it receives a reconnect for, and runs one exchange per meter at
  a time, so a disconnect that had already switched is simply followed by the reconnect.

Pure helpers over what ``selection._Limits`` reads; ``dispatch`` keeps the hooks.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Final

from sqlalchemy import ColumnElement, func, select
from sqlalchemy.orm import Session

from central.models import Order
from central.settings import Settings
from central.state import IN_FLIGHT_STATES
from shared.codes import Action

RECONNECT_ACTIONS: Final = frozenset({Action.CONNECT.value, Action.ARM.value})
_IN_FLIGHT = [s.value for s in IN_FLIGHT_STATES]


def is_reconnect(action: str) -> bool:
    return action in RECONNECT_ACTIONS


def lane_filter(reconnects: bool) -> ColumnElement[bool]:
    """The candidates of one lane: reconnects (claimed first) or everything else."""
    if reconnects:
        return Order.action.in_(sorted(RECONNECT_ACTIONS))
    return Order.action.not_in(sorted(RECONNECT_ACTIONS))


@dataclass
class ReconnectLane:
    """In-flight reconnects per concentrator and the meters a reconnect may go to even
    though an order of theirs is in flight (a superseded disconnect)."""

    cap: int
    inflight: dict[str, int] = field(default_factory=dict)
    superseded: set[str] = field(default_factory=set)  # see :func:`split_busy`

    def full(self) -> list[str]:
        return [conc for conc, count in self.inflight.items() if count >= self.cap]

    def admit(self, concentrator_id: str, meter_id: str, busy_meters: set[str]) -> bool:
        """One reconnect, within its own budget; a disconnect it superseded (whose cancel
        is out) does not hold it back, any other order of the meter in flight does."""
        if meter_id in busy_meters and meter_id not in self.superseded:
            return False
        if self.inflight.get(concentrator_id, 0) >= self.cap:
            return False
        self.inflight[concentrator_id] = self.inflight.get(concentrator_id, 0) + 1
        self.superseded.discard(meter_id)  # one reconnect per meter
        busy_meters.add(meter_id)
        return True


def split_busy(rows: Iterable[Any]) -> tuple[set[str], set[str]]:
    """From in-flight ``(meter_id, action, superseded_by, cancel_sent_at)`` rows: meters
    busy for any order, and meters whose only in-flight orders are disconnects a
    reconnect superseded and whose cancel the broker already acknowledged (a reconnect
    may go to those at once: on the same topic the cancel reaches the agent first;
    ``send_cancels`` runs before dispatch in every pass)."""
    busy: set[str] = set()
    superseded: set[str] = set()
    blocking: set[str] = set()
    for meter_id, action, superseded_by, cancel_sent_at in rows:
        busy.add(meter_id)
        if (
            action == Action.DISCONNECT.value
            and superseded_by is not None
            and cancel_sent_at is not None
        ):
            superseded.add(meter_id)
        else:
            blocking.add(meter_id)
    return busy, superseded - blocking


def read_inflight(session: Session, settings: Settings) -> tuple[dict[str, int], ReconnectLane]:
    """In-flight orders per concentrator: those that count against the ordinary cap
    (everything but reconnects), and the reconnect lane with its own count."""
    ordinary: dict[str, int] = {}
    lane = ReconnectLane(cap=settings.max_inflight_reconnects_per_concentrator)
    for conc, action, count in session.execute(
        select(Order.concentrator_id, Order.action, func.count())
        .where(Order.state.in_(_IN_FLIGHT))
        .group_by(Order.concentrator_id, Order.action)
    ):
        if conc is None:
            continue
        counts = lane.inflight if is_reconnect(action) else ordinary
        counts[conc] = counts.get(conc, 0) + count
    return ordinary, lane
