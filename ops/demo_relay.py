"""The demo's relay truth story (issue 16), after its order scenarios: the customer
presses the button on the meter the demo armed (its order ends connected, Legacy is told
``3.31.0.42`` for it), and the relays of a few meters of one concentrator open by
themselves (injected through the simulator's control interface), which the coordinator
groups into one incident. Both are checked and printed in the summary.

The agents audit with short settings (``AUDIT``) so the whole story takes seconds: the
relays are opened as soon as the coordinator knows them connected (while the scenarios
still run), the button is pressed once the armed order's row is checked."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx

from firmware_sim.client import SimControl
from ops.legacy import LegacyStandIn

# The agents' relay audit in the demo: every meter's log and relay read as often as
# its line allows (at the lowest priority: an order waits for one exchange at most); a
# meter that does not answer is tried again after log_poll_s, not hogging its line.
AUDIT: dict[str, Any] = {"cycle_s": 30, "log_poll_s": 8, "max_airtime_share": 0.9,
                         "idle_poll_s": 0.1}
BUTTON_METER = "DC02-M04"  # the scenario that ends armed (control mode 1)
# DC-03's line: its broken meters fail fast (a refused association), so its audit round
# is the shortest; four meters in no scenario, the first ones of the audit's spread
INCIDENT_CONCENTRATOR = "DC-03"
INCIDENT_METERS = ("DC03-M06", "DC03-M10", "DC03-M12", "DC03-M20")
CONNECTED_CODE = "3.31.0.42"


@dataclass
class RelayOutcome:
    """What the story showed, and what was not as expected."""

    button: str = ""
    incident: str = ""
    seconds: float = 0.0  # after the scenarios ended
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def lines(self) -> list[str]:
        check = (f"ok, {self.seconds:.1f}s after the scenarios" if self.ok
                 else "FAIL: " + "; ".join(self.problems))
        return [f"button      {self.button or '-'}", f"incident    {self.incident or '-'}",
                f"relay truth {check}"]


class RelayStory:
    def __init__(self, url: str, headers: dict[str, str], control_url: str,
                 legacy: LegacyStandIn, say: Callable[[str], None]) -> None:
        self.url = url
        self.headers = headers
        self.sim = SimControl(control_url)
        self.legacy = legacy
        self.say = say
        self.opened_ones: set[str] = set()

    @property
    def opened(self) -> bool:
        return self.opened_ones == set(INCIDENT_METERS)

    def _get(self, path: str, **params: Any) -> Any:
        response = httpx.get(f"{self.url}/api/v1{path}", params=params, headers=self.headers,
                             timeout=10)
        response.raise_for_status()
        return response.json()

    def _relay_states(self) -> dict[str, str]:
        rows = self._get("/meters", concentrator_id=INCIDENT_CONCENTRATOR)
        return {row["id"]: row["relay_state"] for row in rows}

    def tick(self) -> None:
        """Called while the scenarios run: as soon as the coordinator has audited one
        of the incident's meters connected (an opening must contradict a known state),
        open its relay by itself, with no log row, as a firmware fault would."""
        if self.opened:
            return
        states = self._relay_states()
        for meter_id in INCIDENT_METERS:
            if meter_id not in self.opened_ones and states.get(meter_id) == "connected":
                self.sim.inject(meter_id, "self_open")
                self.opened_ones.add(meter_id)
        if self.opened:
            self.say(f"relays      {len(INCIDENT_METERS)} relays of {INCIDENT_CONCENTRATOR} "
                     "opened by themselves (simulator control interface)")

    def finish(self, timeout_s: float) -> RelayOutcome:
        """Press the button, make sure the relays were opened, and wait for both
        stories to end; what did not within ``timeout_s`` is a problem."""
        began = time.monotonic()
        outcome = RelayOutcome()
        order = self._armed_order()
        if order is None:
            outcome.problems.append(f"no armed order on {BUTTON_METER} to press the button for")
        else:
            self.sim.inject(BUTTON_METER, "button")
            self.say(f"button      the customer pressed the button on {BUTTON_METER}")
        deadline = time.monotonic() + timeout_s
        while not self.opened and time.monotonic() < deadline:
            self.tick()
            time.sleep(0.2)
        pressed = incident = None
        while time.monotonic() < deadline:
            pressed = pressed or (order and self._pressed(order["id"]))
            incident = incident or (self.opened and self._incident())
            if (pressed or order is None) and incident:
                break
            time.sleep(0.3)
        if order is not None:
            if pressed:
                outcome.button = (f"{BUTTON_METER} pressed by the customer: order "
                                  f"{order['id'][:8]} armed -> connected, Legacy told "
                                  f"{CONNECTED_CODE}")
            else:
                outcome.problems.append(f"{BUTTON_METER}'s order did not end connected "
                                        f"with Legacy told {CONNECTED_CODE}")
        if incident:
            outcome.incident = incident
        else:
            outcome.problems.append(f"no incident of {INCIDENT_CONCENTRATOR} with "
                                    f"{', '.join(INCIDENT_METERS)}")
        outcome.seconds = time.monotonic() - began
        return outcome

    def _armed_order(self) -> dict[str, Any] | None:
        rows = self._get("/orders", meter_id=BUTTON_METER)
        armed = [r for r in rows if r["action"] == "connect"
                 and r.get("final_state") == "completed_armed"]
        return armed[0] if armed else None

    def _pressed(self, order_id: str) -> bool:
        detail = self._get(f"/orders/{order_id}")
        ended = [e.get("to_state") for e in detail.get("events", []) if e.get("to_state")]
        told = self.legacy.by_meter().get(BUTTON_METER)
        return bool(ended and "completed_connected" in ended
                    and told is not None and told.event_code == CONNECTED_CODE)

    def _incident(self) -> str | None:
        for row in self._get("/incidents", status="active"):
            detail = self._get(f"/incidents/{row['id']}")
            meters = sorted(detail["meter_ids"])
            if detail["group_key"] == INCIDENT_CONCENTRATOR and meters == sorted(INCIDENT_METERS):
                return (f"#{detail['id']} {INCIDENT_CONCENTRATOR}: {len(meters)} relays opened "
                        f"by themselves, {', '.join(meters)} ({detail['status']}, "
                        f"{len(detail['to_restore'])} to restore)")
        return None
