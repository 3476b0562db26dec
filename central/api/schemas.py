"""Response bodies of the REST API."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, computed_field

from central.services.inputs import Input
from central.services.orders import OrderRequest
from central.timeline import label_of


class ORM(BaseModel):
    model_config = ConfigDict(from_attributes=True)


class EventOut(ORM):
    at: datetime
    step: int
    actor: str
    event: str
    from_state: str | None
    to_state: str | None
    detail: str

    @computed_field  # type: ignore[prop-decorator]
    @property
    def label(self) -> str:
        """What the line holds (central/timeline.py), the same words everywhere."""
        return label_of(self.event)


class OrderOut(ORM):
    id: str
    meter_id: str
    concentrator_id: str | None
    action: str
    reason: str
    special: bool
    priority: int
    state: str
    # how it ended (connected, disconnected, armed, failed, expired, cancelled, rejected),
    # kept once the state is reported; None while it runs. final_state: the state it ended in.
    outcome: str | None
    final_state: str | None
    created_by: str
    created_at: datetime
    updated_at: datetime
    deadline: datetime | None
    batch_id: str | None
    needs_approval: bool
    approved_by: str | None
    source: str
    external_ref: str | None
    issuer_id: str | None
    correlation_id: str | None
    refusal_code: str | None
    refusal_detail: str | None
    command_id: str | None
    dispatched_at: datetime | None
    published_at: datetime | None
    cancel_requested: bool
    superseded_by: str | None
    result_reason: str | None
    result_detail: str | None
    already_in_state: bool
    attempts: int
    energy_value: float | None
    energy_unit: str | None
    finished_at: datetime | None


class OrderDetail(OrderOut):
    # In the order the coordinator recorded them, which is the order they happened in:
    # agent events carry the agent's clock, so sorting by time would mix two clocks.
    events: list[EventOut]


class ItemOut(BaseModel):
    index: int
    meter_id: str
    accepted: bool
    order_id: str | None
    state: str | None
    code: str | None
    message: str
    duplicate: bool
    needs_approval: bool


class BatchIn(BaseModel):
    orders: list[OrderRequest] = Field(min_length=1, max_length=20_000)


class EstimateOut(BaseModel):
    """How long a batch takes if it goes as planned (``central.services.estimate``)."""

    seconds: float
    bound: str
    orders: int
    disconnects: int
    text: str


class BatchOut(BaseModel):
    batch_id: str | None
    needs_approval: bool
    accepted: int
    refused: int
    dispatched: int
    estimate: EstimateOut
    items: list[ItemOut]


class CancelIn(Input):
    detail: str = Field(default="", max_length=500)


class BatchApprovalOut(ORM):
    id: str
    created_by: str
    size: int
    disconnects: int
    needs_approval: bool
    approved_by: str | None
    approved_at: datetime | None


class MeterOut(ORM):
    id: str
    concentrator_id: str | None
    topology: str
    transport: str
    line_id: str | None
    hdlc_address: int | None
    host: str | None
    port: int | None
    logical_server: int
    keys_ref: str | None
    commissioned: bool
    protected_customer: bool
    relay_state: str
    relay_state_at: datetime | None
    # issue 16: what the state comes from (order, audit, after_order, log_poll, log),
    # the firmware the agent last reported and the meter's last relay audit
    relay_state_source: str | None = None
    firmware_version: str | None = None
    audited_at: datetime | None = None
    energy_kwh: float | None
    # a request to clear protected_customer waits for a second person (protection-changes)
    protection_change_pending: bool = False
    service_address: str | None
    comuna: str | None
    region: str | None
    latitude: float | None
    longitude: float | None
    customer_ref: str | None
    access_notes: str | None


class ImportOut(BaseModel):
    created: int
    updated: int
    concentrators_created: int
    errors: list[str]
    # meters whose protected-customer flag stays set until a second person approves
    protection_pending: list[str] = []


class ProtectionChangeOut(ORM):
    id: int
    meter_id: str
    change: str
    state: str
    requested_by: str
    requested_at: datetime
    decided_by: str | None
    decided_at: datetime | None


class ConcentratorOut(ORM):
    id: str
    name: str
    decommissioned: bool
    online: bool
    status_at: datetime | None
    queue_depth: int
    outbox_depth: int
    modem: str
    sim: str
    signal_dbm: int | None
    agent_version: str
    table_generation: int
    table_pushed_generation: int
    agent_table_generation: int | None
    # the last refusal of a badly signed or unsigned command its agent reported in the
    # last day (issue 11): its coordinator key is wrong, or someone forges commands
    signature_alarm: str | None = None


class ConcentratorChange(Input):
    name: str | None = None
    decommissioned: bool | None = None


class WorkOrderOut(ORM):
    id: int
    # order: a failed/expired order's (order_id set); tamper, welded_relay, drift: raised
    # by a relay alarm (alarm_id set, no order behind it)
    kind: str = "order"
    order_id: str | None
    alarm_id: int | None = None
    meter_id: str
    concentrator_id: str | None
    action: str
    reason: str
    detail: str
    last_relay_state: str
    status: str
    created_at: datetime
    closed_at: datetime | None
    closed_by: str | None
    technician_outcome: str | None
    notes: str | None
    service_address: str | None
    comuna: str | None
    region: str | None
    latitude: float | None
    longitude: float | None
    customer_ref: str | None
    access_notes: str | None


class CloseIn(Input):
    outcome: str = Field(
        pattern=r"^(connected|disconnected|no_access|meter_replaced|meter_faulty|other)$"
    )
    notes: str = Field(default="", max_length=2000)


class RejectedMessageOut(ORM):
    """An agent message the coordinator refused; ``payload_text`` is the start of the
    payload as text (undecodable bytes replaced), the whole is kept in the database."""

    id: int
    received_at: datetime
    topic: str
    concentrator_id: str | None
    order_id: str | None
    reason: str
    size: int
    payload_text: str


class ErrorOut(BaseModel):
    detail: str
    error: str | None = None


# The error answers every API route may give (central/app.py maps the service errors),
# documented so that a client (and the schema fuzz in tests/api) knows each status code.
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorOut, "description": "bad request (the detail names the problem)"},
    401: {"model": ErrorOut, "description": "missing or unknown API token"},
    403: {"model": ErrorOut, "description": "the token's role may not do this"},
    404: {"model": ErrorOut, "description": "no such object"},
    409: {"model": ErrorOut, "description": "conflicts with the current state; retry or re-read"},
    503: {"model": ErrorOut, "description": "database unavailable"},
}
