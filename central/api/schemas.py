"""Response bodies of the REST API."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field

from central.services.orders import OrderRequest


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


class OrderOut(ORM):
    id: str
    meter_id: str
    concentrator_id: str | None
    action: str
    reason: str
    special: bool
    priority: int
    state: str
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


class BatchOut(BaseModel):
    batch_id: str | None
    needs_approval: bool
    accepted: int
    refused: int
    dispatched: int
    items: list[ItemOut]


class CancelIn(BaseModel):
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
    energy_kwh: float | None


class ImportOut(BaseModel):
    created: int
    updated: int
    concentrators_created: int
    errors: list[str]


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


class ConcentratorChange(BaseModel):
    name: str | None = None
    decommissioned: bool | None = None


class WorkOrderOut(ORM):
    id: int
    order_id: str
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


class CloseIn(BaseModel):
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
