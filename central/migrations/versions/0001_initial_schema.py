"""initial schema

Revision ID: 0001
Revises:
Create Date: 2026-11-26 08:43:22.806129
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:

    op.create_table(
        "batches",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("created_by", sa.String(length=100), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("size", sa.Integer(), nullable=False),
        sa.Column("disconnects", sa.Integer(), nullable=False),
        sa.Column("needs_approval", sa.Boolean(), nullable=False),
        sa.Column("approved_by", sa.String(length=100), nullable=True),
        sa.Column("approved_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_table(
        "concentrators",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("decommissioned", sa.Boolean(), nullable=False),
        sa.Column("online", sa.Boolean(), nullable=False),
        sa.Column("status_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("queue_depth", sa.Integer(), nullable=False),
        sa.Column("outbox_depth", sa.Integer(), nullable=False),
        sa.Column("modem", sa.String(length=16), nullable=False),
        sa.Column("sim", sa.String(length=16), nullable=False),
        sa.Column("signal_dbm", sa.Integer(), nullable=True),
        sa.Column("agent_version", sa.String(length=32), nullable=False),
        sa.Column("table_generation", sa.Integer(), nullable=False),
        sa.Column("table_pushed_generation", sa.Integer(), nullable=False),
        sa.Column("agent_table_generation", sa.Integer(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_table(
        "meters",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("concentrator_id", sa.String(length=64), nullable=True),
        sa.Column("topology", sa.String(length=20), nullable=False),
        sa.Column("transport", sa.String(length=8), nullable=False),
        sa.Column("line_id", sa.String(length=64), nullable=True),
        sa.Column("hdlc_address", sa.Integer(), nullable=True),
        sa.Column("host", sa.String(length=253), nullable=True),
        sa.Column("port", sa.Integer(), nullable=True),
        sa.Column("logical_server", sa.Integer(), nullable=False),
        sa.Column("keys_ref", sa.String(length=64), nullable=True),
        sa.Column("commissioned", sa.Boolean(), nullable=False),
        sa.Column("protected_customer", sa.Boolean(), nullable=False),
        sa.Column("relay_state", sa.String(length=16), nullable=False),
        sa.Column("relay_state_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("energy_kwh", sa.Float(), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["concentrator_id"],
            ["concentrators.id"],
        ),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("meters", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_meters_concentrator_id"), ["concentrator_id"], unique=False
        )

    op.create_table(
        "orders",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("idempotency_key", sa.String(length=200), nullable=True),
        sa.Column("meter_id", sa.String(length=64), nullable=False),
        sa.Column("concentrator_id", sa.String(length=64), nullable=True),
        sa.Column("action", sa.String(length=16), nullable=False),
        sa.Column("reason", sa.String(length=32), nullable=False),
        sa.Column("special", sa.Boolean(), nullable=False),
        sa.Column("priority", sa.Integer(), nullable=False),
        sa.Column("state", sa.String(length=32), nullable=False),
        sa.Column("created_by", sa.String(length=100), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("deadline", sa.DateTime(timezone=True), nullable=True),
        sa.Column("max_attempts", sa.Integer(), nullable=False),
        sa.Column("batch_id", sa.String(length=64), nullable=True),
        sa.Column("needs_approval", sa.Boolean(), nullable=False),
        sa.Column("approved_by", sa.String(length=100), nullable=True),
        sa.Column("source", sa.String(length=16), nullable=False),
        sa.Column("external_ref", sa.String(length=200), nullable=True),
        sa.Column("issuer_id", sa.String(length=200), nullable=True),
        sa.Column("not_before", sa.DateTime(timezone=True), nullable=True),
        sa.Column("correlation_id", sa.String(length=200), nullable=True),
        sa.Column("reply_address", sa.String(length=500), nullable=True),
        sa.Column("refusal_code", sa.String(length=40), nullable=True),
        sa.Column("refusal_detail", sa.Text(), nullable=True),
        sa.Column("command_id", sa.String(length=64), nullable=True),
        sa.Column("dispatched_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("published_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("cancel_requested", sa.Boolean(), nullable=False),
        sa.Column("cancel_sent_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("superseded_by", sa.String(length=64), nullable=True),
        sa.Column("result_reason", sa.String(length=40), nullable=True),
        sa.Column("result_detail", sa.Text(), nullable=True),
        sa.Column("already_in_state", sa.Boolean(), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("energy_value", sa.Float(), nullable=True),
        sa.Column("energy_unit", sa.String(length=16), nullable=True),
        sa.Column("energy_read_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("result_json", sa.JSON(), nullable=True),
        sa.ForeignKeyConstraint(
            ["batch_id"],
            ["batches.id"],
        ),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("idempotency_key"),
    )
    with op.batch_alter_table("orders", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_orders_batch_id"), ["batch_id"], unique=False)
        batch_op.create_index(
            batch_op.f("ix_orders_dispatched_at"), ["dispatched_at"], unique=False
        )
        batch_op.create_index(batch_op.f("ix_orders_external_ref"), ["external_ref"], unique=False)
        batch_op.create_index("ix_orders_meter_state", ["meter_id", "state"], unique=False)
        batch_op.create_index(batch_op.f("ix_orders_state"), ["state"], unique=False)
        batch_op.create_index("ix_orders_state_conc", ["state", "concentrator_id"], unique=False)

    op.create_table(
        "legacy_notifications",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("order_id", sa.String(length=64), nullable=False),
        sa.Column("final_state", sa.String(length=32), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("delivered_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("next_attempt_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(
            ["order_id"],
            ["orders.id"],
        ),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("order_id"),
    )
    with op.batch_alter_table("legacy_notifications", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_legacy_notifications_delivered_at"), ["delivered_at"], unique=False
        )

    op.create_table(
        "order_events",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("order_id", sa.String(length=64), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("step", sa.Integer(), nullable=False),
        sa.Column("actor", sa.String(length=100), nullable=False),
        sa.Column("event", sa.String(length=40), nullable=False),
        sa.Column("from_state", sa.String(length=32), nullable=True),
        sa.Column("to_state", sa.String(length=32), nullable=True),
        sa.Column("detail", sa.Text(), nullable=False),
        sa.ForeignKeyConstraint(
            ["order_id"],
            ["orders.id"],
        ),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("order_events", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_order_events_order_id"), ["order_id"], unique=False)

    op.create_table(
        "work_orders",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("order_id", sa.String(length=64), nullable=False),
        sa.Column("meter_id", sa.String(length=64), nullable=False),
        sa.Column("concentrator_id", sa.String(length=64), nullable=True),
        sa.Column("action", sa.String(length=16), nullable=False),
        sa.Column("reason", sa.String(length=40), nullable=False),
        sa.Column("detail", sa.Text(), nullable=False),
        sa.Column("last_relay_state", sa.String(length=16), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("closed_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("closed_by", sa.String(length=100), nullable=True),
        sa.Column("technician_outcome", sa.String(length=40), nullable=True),
        sa.Column("notes", sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(
            ["order_id"],
            ["orders.id"],
        ),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("order_id"),
    )
    with op.batch_alter_table("work_orders", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_work_orders_concentrator_id"), ["concentrator_id"], unique=False
        )
        batch_op.create_index(batch_op.f("ix_work_orders_meter_id"), ["meter_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_work_orders_status"), ["status"], unique=False)


def downgrade() -> None:

    with op.batch_alter_table("work_orders", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_work_orders_status"))
        batch_op.drop_index(batch_op.f("ix_work_orders_meter_id"))
        batch_op.drop_index(batch_op.f("ix_work_orders_concentrator_id"))

    op.drop_table("work_orders")
    with op.batch_alter_table("order_events", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_order_events_order_id"))

    op.drop_table("order_events")
    with op.batch_alter_table("legacy_notifications", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_legacy_notifications_delivered_at"))

    op.drop_table("legacy_notifications")
    with op.batch_alter_table("orders", schema=None) as batch_op:
        batch_op.drop_index("ix_orders_state_conc")
        batch_op.drop_index(batch_op.f("ix_orders_state"))
        batch_op.drop_index("ix_orders_meter_state")
        batch_op.drop_index(batch_op.f("ix_orders_external_ref"))
        batch_op.drop_index(batch_op.f("ix_orders_dispatched_at"))
        batch_op.drop_index(batch_op.f("ix_orders_batch_id"))

    op.drop_table("orders")
    with op.batch_alter_table("meters", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_meters_concentrator_id"))

    op.drop_table("meters")
    op.drop_table("concentrators")
    op.drop_table("batches")
