"""The COSEM objects of a simulated meter, as plain state machines (no protocol, no I/O)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

CONNECTED = 1
DISCONNECTED = 0
READY = 2
STATE_NAMES = {"disconnected": DISCONNECTED, "connected": CONNECTED, "ready_for_reconnection": READY}

# Which control modes a remote_reconnect only arms (standard transition d) and which
# close the relay directly (transition a). Mode 0: the object is always connected and
# refuses both methods.
ARM_ON_RECONNECT = frozenset({1, 3, 5, 6})
CLOSE_ON_RECONNECT = frozenset({2, 4})


class Refused(Exception):
    """A method invocation the state machine refuses; ``result`` is the action-result."""

    def __init__(self, result: int) -> None:
        super().__init__(f"refused with action-result {result}")
        self.result = result


@dataclass
class DisconnectControl:
    """Interface class 70 state machine (IEC 62056-6-2, 4.5.8).

    Transitions used: a remote_reconnect disconnected->connected (modes 2, 4);
    b/c remote_disconnect connected|ready->disconnected (modes 1..6);
    d remote_reconnect disconnected->ready_for_reconnection (modes 1, 3, 5, 6);
    e manual_reconnect ready_for_reconnection->connected (the customer's button).
    """

    control_state: int = CONNECTED
    control_mode: int = 1

    @property
    def output_state(self) -> bool:
        return self.control_state == CONNECTED

    def remote_disconnect(self) -> None:
        if self.control_mode == 0:
            raise Refused(250)  # other-reason: mode 0 has no disconnection
        self.control_state = DISCONNECTED

    def remote_reconnect(self) -> None:
        if self.control_mode == 0:
            raise Refused(250)
        if self.control_state == CONNECTED:
            return
        if self.control_mode in CLOSE_ON_RECONNECT:
            self.control_state = CONNECTED
        elif self.control_state == DISCONNECTED:
            self.control_state = READY

    def manual_reconnect(self) -> bool:
        """The button on the meter: closes an armed relay. True when something changed."""
        if self.control_state == READY and self.control_mode != 0:
            self.control_state = CONNECTED
            return True
        return False


@dataclass
class EnergyRegister:
    """Active energy import 1.0.1.8.0.255: integrates ``load_w`` while the relay is closed.

    Stored in Wh as a float; exposed as a double-long-unsigned with scaler 1 (tens of Wh)
    and unit Wh (30), which is what many meters report.
    """

    energy_wh: float = 0.0
    load_w: float = 1000.0
    scaler: int = 1
    unit: int = 30
    _last: float = field(default_factory=time.monotonic)

    def update(self, closed: bool, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        if closed:
            self.energy_wh += self.load_w * (now - self._last) / 3600.0
        self._last = now

    def advance(self, seconds: float, closed: bool) -> None:
        """Simulated time passing (tests use this instead of waiting)."""
        self.update(closed)
        if closed:
            self.energy_wh += self.load_w * seconds / 3600.0

    @property
    def raw_value(self) -> int:
        return int(self.energy_wh // (10**self.scaler)) & 0xFFFFFFFF
