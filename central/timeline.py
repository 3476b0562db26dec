"""What each timeline line says, by what it holds (its event), for the REST API, the
``rcd`` command line and the dashboard alike: one label per event, never the title of
a step the event merely belongs to (a receipt is the agent storing the order, not the
meter executing it)."""

from __future__ import annotations

from typing import Final

LABELS: Final[dict[str, str]] = {
    "receive": "order received",
    "validate": "meter validated",
    "reject": "rejected at validation",
    "approval_required": "waits for a second person's approval",
    "approved": "approved by a second person",
    "dispatch": "signed and sent to the concentrator",
    "republish": "sent again (no broker acknowledgement)",
    "deliver": "stored by the edge agent (receipt)",
    "attempt": "DLMS attempt on the meter (the outcome rests on it)",
    "attempt_retried": "DLMS attempt on the meter, failed, retried",
    "complete_connected": "result: connected",
    "complete_disconnected": "result: disconnected",
    "complete_armed": "result: armed for the customer to close",
    "fail": "result: failed",
    "expire": "expired before a result",
    "cancel": "cancelled",
    "cancel_requested": "cancel requested",
    "cancel_sent": "cancel sent to the concentrator",
    "report": "reported to Legacy",
    "work_order_created": "field work order created",
    "no_work_order": "no field work order",
    "late_result": "result after the order ended",
    "rerouted": "re-routed to the meter's new concentrator",
    "reroute": "re-routed to the meter's new concentrator",
    "meter_moved": "meter moved while in flight",
    "rejected_message": "agent message rejected",
    "customer_connected": "customer pressed the button: connected",
}


def label_of(event: str) -> str:
    return LABELS.get(event, event.replace("_", " "))
