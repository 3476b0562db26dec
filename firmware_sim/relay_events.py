"""Relay changes no remote method caused, injectable while the simulator runs.

``inject(meter, name, logged=...)`` (HTTP ``POST /meters/{id}/event {"event": name}``)
changes the meter as the real thing would, writes the disconnector log row(s) a real
meter writes (codes: ``firmware_sim.relay_log``) and records an ``event`` entry in the
meter's operation log, so a test judges by the meter's own record.

| event | from | to | log | what it models |
|---|---|---|---|---|
| ``button`` | ready_for_reconnection (modes 1, 3, 5, 6) | connected | 60 | the customer closes an armed relay (transition e) |
| ``manual_disconnect`` | connected (modes 1, 3, 5, 6) | ready_for_reconnection | 59 | the button opens the relay (transition f) |
| ``local_trip`` | connected | ready_for_reconnection | 64, 63 | the meter's limiter opens it (transition g) |
| ``limiter_ok`` | ready_for_reconnection | connected in modes 2, 4; unchanged otherwise | 65 (+ 68) | the limiter's condition ended; modes 2, 4 close by themselves (transition h), the others wait for the button |
| ``self_open`` | connected | disconnected | none | the relay opens by itself and nothing is logged (a firmware fault): the unexplained case, seen only by reading the relay |
| ``self_open`` + ``logged`` | connected | disconnected | 63 | the same fault, logged by the firmware as a local disconnection |
| ``contacts_open`` | connected | output_state false, control_state connected | none | the contacts fell open and the firmware does not know: control_state and output_state disagree |
| ``weld`` | - | - | none | the contacts weld shut (fault ``relay_welded``): a later remote_disconnect is logged (61) and control_state says disconnected, but output_state stays true and current keeps flowing |
| ``bypass`` | - | - | none | the load is wired around the relay (fault ``bypass``): energy grows while the relay is open and says so |
| ``repair`` | - | - | none | a technician: clears weld, bypass and contacts that fell open |

An event that does not apply in the meter's state (a button on a connected meter)
changes nothing and writes nothing, but is still recorded (``changed`` false).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from firmware_sim.cosem import ARM_ON_RECONNECT, CLOSE_ON_RECONNECT, CONNECTED, DISCONNECTED, READY
from firmware_sim.relay_log import (
    LIMITER_EXCEEDED,
    LIMITER_OK,
    LOCAL_DISCONNECTION,
    LOCAL_RECONNECTION,
    MANUAL_CONNECTION,
    MANUAL_DISCONNECTION,
)

if TYPE_CHECKING:
    from firmware_sim.meter import SimulatedMeter

EVENTS = frozenset({"button", "manual_disconnect", "local_trip", "limiter_ok", "self_open",
                    "contacts_open", "weld", "bypass", "repair"})


def inject(meter: SimulatedMeter, event: str, *, logged: bool = False) -> dict[str, Any]:
    """Apply ``event`` to ``meter``; what changed and which log rows it wrote."""
    if event not in EVENTS:
        raise ValueError(f"unknown event {event!r}; known: {sorted(EVENTS)}")
    with meter.lock:
        meter.energy.update(meter.flowing())
        before = meter.relay()
        codes = _apply(meter, event, logged)
        index = None
        for code in codes:
            index = meter.write_log(code)
        after = meter.relay()
        meter.events.append(event)
        meter.oplog.event(event, code=codes[-1] if codes else None, log_index=index,
                          before=before, after=after)
        return {"event": event, "changed": before != after or bool(codes), "codes": codes,
                "log_index": index, **meter.state()}


def _apply(meter: SimulatedMeter, event: str, logged: bool) -> list[int]:
    dc = meter.disconnect
    state, mode = dc.control_state, dc.control_mode
    if event == "button":
        if state == READY and mode in ARM_ON_RECONNECT:
            dc.control_state = CONNECTED
            return [MANUAL_CONNECTION]
        return []
    if event == "manual_disconnect":
        if state == CONNECTED and mode in ARM_ON_RECONNECT:
            dc.control_state = READY
            return [MANUAL_DISCONNECTION]
        return []
    if event == "local_trip":
        if state == CONNECTED and mode != 0:
            dc.control_state = READY
            return [LIMITER_EXCEEDED, LOCAL_DISCONNECTION]
        return []
    if event == "limiter_ok":
        if state != READY:
            return []
        if mode in CLOSE_ON_RECONNECT:
            dc.control_state = CONNECTED
            return [LIMITER_OK, LOCAL_RECONNECTION]
        return [LIMITER_OK]
    if event == "self_open":
        if state != CONNECTED:
            return []
        dc.control_state = DISCONNECTED
        return [LOCAL_DISCONNECTION] if logged else []
    if event == "contacts_open":
        if state != CONNECTED:
            return []
        meter.opened_by_itself = True
        return []
    if event in ("weld", "bypass"):
        meter.faults.add("relay_welded" if event == "weld" else "bypass")
        return []
    meter.faults -= {"relay_welded", "bypass"}  # repair
    meter.opened_by_itself = False
    return []
