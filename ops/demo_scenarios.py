"""The demo's scenario table and the simulated fleet it runs on.

Each :class:`Scenario` is one order Legacy sends and the outcome the demo expects; the
fleet plan gives each meter the state or fault that outcome needs (a stuck relay, no
keys, a protected customer). They sit together, apart from the run in
:mod:`ops.demo`, because a scenario and its meter's plan change as a pair.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

CONTROL_CODES = {"disconnect": "3.31.0.23", "connect": "3.31.0.18"}
# Result event codes Legacy must receive (IEC 61968-9, domain 31 RCDSwitch).
EVENT_CODES = {
    "disconnected": "3.31.0.68",
    "connected": "3.31.0.42",
    "armed": "3.31.0.11",
    ("failed", "disconnect"): "3.31.0.84",
    ("failed", "connect"): "3.31.0.67",
}


@dataclass(frozen=True)
class Scenario:
    meter_id: str
    action: Literal["disconnect", "connect"]
    expect: str  # disconnected, connected, armed, failed, rejected (the API's outcomes)
    reason: str | None  # expected reason code (failures and refusals)
    what: str


SCENARIOS: tuple[Scenario, ...] = (
    Scenario("DC01-M01", "disconnect", "disconnected", None, "disconnect for non-payment"),
    Scenario("DC01-M02", "disconnect", "disconnected", None, "disconnect for non-payment"),
    Scenario("DC01-M03", "disconnect", "disconnected", None, "disconnect for non-payment"),
    Scenario(
        "DC02-M01", "disconnect", "disconnected", None, "already disconnected: nothing switched"
    ),
    Scenario("P2P-0001", "disconnect", "disconnected", None, "point-to-point meter over TCP"),
    Scenario("DC01-M05", "disconnect", "failed", "meter_not_responding", "meter does not answer"),
    Scenario(
        "DC02-M02", "disconnect", "failed", "meter_unreachable", "meter unreachable on the PLC"
    ),
    Scenario("DC03-M01", "disconnect", "failed", "relay_did_not_switch", "relay stuck"),
    Scenario("DC03-M02", "disconnect", "failed", "method_refused", "relay hardware error"),
    Scenario("DC03-M05", "disconnect", "failed", "meter_not_commissioned", "meter has no keys yet"),
    Scenario(
        "DC03-M03",
        "disconnect",
        "rejected",
        "protected_customer",
        "electro-dependent patient (Ley 21.304)",
    ),
    Scenario(
        "DC03-M04", "disconnect", "rejected", "not_commissioned", "not commissioned in the registry"
    ),
    Scenario("MTR-UNKNOWN", "disconnect", "rejected", "unknown_meter", "meter not in the registry"),
    Scenario("DC02-M03", "connect", "connected", None, "reconnect after payment (control mode 2)"),
    Scenario("DC02-M04", "connect", "armed", None, "reconnect that only arms (control mode 1)"),
    Scenario("DC01-M06", "connect", "connected", None, "reconnect after payment (control mode 4)"),
)

CONCENTRATORS = ("DC-01", "DC-02", "DC-03")
ROUTER = "RT-01"
METERS_PER_LINE = 20


@dataclass
class MeterPlan:
    """How one simulated meter starts, and how the registry knows it."""

    meter_id: str
    concentrator_id: str
    transport: Literal["hdlc", "tcp"] = "hdlc"
    hdlc_address: int | None = None
    control_mode: int = 2
    relay: Literal["connected", "disconnected", "ready_for_reconnection"] = "connected"
    fault: str | None = None
    sim_commissioned: bool = True
    registry_commissioned: bool = True
    protected: bool = False


def fleet_plan() -> list[MeterPlan]:
    plans: list[MeterPlan] = []
    for concentrator in CONCENTRATORS:
        short = concentrator.replace("-", "")
        for n in range(1, METERS_PER_LINE + 1):
            plans.append(MeterPlan(f"{short}-M{n:02d}", concentrator, hdlc_address=0x10 + n))
    plans.append(MeterPlan("P2P-0001", ROUTER, transport="tcp"))
    by_id = {plan.meter_id: plan for plan in plans}
    by_id["DC01-M05"].fault = "no_answer"
    by_id["DC02-M02"].fault = "unreachable"
    by_id["DC03-M01"].fault = "relay_stuck"
    by_id["DC03-M02"].fault = "relay_error"
    by_id["DC03-M05"].sim_commissioned = False
    by_id["DC03-M03"].protected = True
    by_id["DC03-M04"].registry_commissioned = False
    by_id["DC02-M01"].relay = "disconnected"
    for meter_id, mode in (("DC02-M03", 2), ("DC02-M04", 1), ("DC01-M06", 4)):
        by_id[meter_id].relay = "disconnected"
        by_id[meter_id].control_mode = mode
    return plans


def refused_ids() -> set[str]:
    """Meters whose order the coordinator refuses at once (no result reaches Legacy)."""
    return {s.meter_id for s in SCENARIOS if s.expect == "rejected"}
