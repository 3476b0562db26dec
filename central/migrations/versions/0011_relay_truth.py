"""Relay truth from the meters (issue 16): accepted relay reports, observations and
events per meter, alarms, incidents, the outbox of unsolicited EndDeviceEvents for
Legacy; on meters where their relay state came from, their firmware, their last
audit and the tamper baseline; work orders of other kinds than an order's.

Revision ID: 0011
Revises: 0010
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None

TZ = sa.DateTime(timezone=True)
METER_COLUMNS = (
    ("relay_state_source", sa.String(length=16)),
    ("firmware_version", sa.String(length=64)),
    ("audited_at", TZ),
    ("disconnect_energy_wh", sa.Float()),
)


def _id() -> sa.Column[int]:
    return sa.Column("id", sa.Integer(), autoincrement=True, nullable=False)


def _tables() -> None:
    op.create_table(
        "relay_reports",
        sa.Column("report_id", sa.String(length=64), nullable=False),
        sa.Column("concentrator_id", sa.String(length=64), nullable=False),
        sa.Column("meter_id", sa.String(length=64), nullable=False),
        sa.Column("trigger", sa.String(length=16), nullable=False),
        sa.Column("order_id", sa.String(length=64), nullable=True),
        sa.Column("observed_at", TZ, nullable=False),
        sa.Column("received_at", TZ, nullable=False),
        sa.Column("events", sa.Integer(), nullable=False),
        sa.Column("summary", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("report_id"),
    )
    op.create_index("ix_relay_reports_concentrator_id", "relay_reports", ["concentrator_id"])
    op.create_index("ix_relay_reports_meter_id", "relay_reports", ["meter_id"])
    op.create_index("ix_relay_reports_received_at", "relay_reports", ["received_at"])
    op.create_table(
        "relay_observations",
        _id(),
        sa.Column("meter_id", sa.String(length=64), nullable=False),
        sa.Column("observed_at", TZ, nullable=False),
        sa.Column("source", sa.String(length=16), nullable=False),
        sa.Column("relay_state", sa.String(length=16), nullable=False),
        sa.Column("output_state", sa.Boolean(), nullable=True),
        sa.Column("control_mode", sa.Integer(), nullable=True),
        sa.Column("energy_wh", sa.Float(), nullable=True),
        sa.Column("report_id", sa.String(length=64), nullable=True),
        sa.Column("order_id", sa.String(length=64), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index(
        "ix_relay_observations_meter_at", "relay_observations", ["meter_id", "observed_at"]
    )
    op.create_table(
        "relay_events",
        _id(),
        sa.Column("meter_id", sa.String(length=64), nullable=False),
        sa.Column("concentrator_id", sa.String(length=64), nullable=True),
        sa.Column("at", TZ, nullable=False),
        sa.Column("kind", sa.String(length=32), nullable=False),
        sa.Column("log_index", sa.Integer(), nullable=True),
        sa.Column("code", sa.Integer(), nullable=True),
        sa.Column("from_state", sa.String(length=16), nullable=True),
        sa.Column("to_state", sa.String(length=16), nullable=True),
        sa.Column("order_id", sa.String(length=64), nullable=True),
        sa.Column("report_id", sa.String(length=64), nullable=True),
        sa.Column("firmware_version", sa.String(length=64), nullable=True),
        sa.Column("incident_id", sa.Integer(), nullable=True),
        sa.Column("detail", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index(
        "ux_relay_events_meter_index", "relay_events", ["meter_id", "log_index"], unique=True
    )
    op.create_index("ix_relay_events_meter_at", "relay_events", ["meter_id", "at"])
    op.create_index("ix_relay_events_kind", "relay_events", ["kind"])
    op.create_index("ix_relay_events_incident_id", "relay_events", ["incident_id"])
    op.create_table(
        "relay_alarms",
        _id(),
        sa.Column("meter_id", sa.String(length=64), nullable=False),
        sa.Column("concentrator_id", sa.String(length=64), nullable=True),
        sa.Column("kind", sa.String(length=32), nullable=False),
        sa.Column("severity", sa.String(length=16), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("raised_at", TZ, nullable=False),
        sa.Column("last_seen_at", TZ, nullable=False),
        sa.Column("detail", sa.Text(), nullable=False),
        sa.Column("event_id", sa.Integer(), nullable=True),
        sa.Column("work_order_id", sa.Integer(), nullable=True),
        sa.Column("order_id", sa.String(length=64), nullable=True),
        sa.Column("acknowledged_by", sa.String(length=100), nullable=True),
        sa.Column("acknowledged_at", TZ, nullable=True),
        sa.Column("closed_by", sa.String(length=100), nullable=True),
        sa.Column("closed_at", TZ, nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_relay_alarms_meter_id", "relay_alarms", ["meter_id"])
    op.create_index("ix_relay_alarms_status", "relay_alarms", ["status"])
    op.create_table(
        "relay_incidents",
        _id(),
        sa.Column("group_kind", sa.String(length=16), nullable=False),
        sa.Column("group_key", sa.String(length=64), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("opened_at", TZ, nullable=False),
        sa.Column("first_event_at", TZ, nullable=False),
        sa.Column("last_event_at", TZ, nullable=False),
        sa.Column("meters", sa.Integer(), nullable=False),
        sa.Column("acknowledged_by", sa.String(length=100), nullable=True),
        sa.Column("acknowledged_at", TZ, nullable=True),
        sa.Column("closed_by", sa.String(length=100), nullable=True),
        sa.Column("closed_at", TZ, nullable=True),
        sa.Column("restore_batch_id", sa.String(length=64), nullable=True),
        sa.Column("restore_requested_by", sa.String(length=100), nullable=True),
        sa.Column("notes", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_relay_incidents_status", "relay_incidents", ["status"])
    op.create_table(
        "legacy_device_events",
        _id(),
        sa.Column("event_id", sa.Integer(), nullable=False),
        sa.Column("meter_id", sa.String(length=64), nullable=False),
        sa.Column("relay_state", sa.String(length=16), nullable=False),
        sa.Column("at", TZ, nullable=False),
        sa.Column("cause", sa.String(length=200), nullable=False),
        sa.Column("created_at", TZ, nullable=False),
        sa.Column("delivered_at", TZ, nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("next_attempt_at", TZ, nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("event_id"),
    )
    op.create_index(
        "ix_legacy_device_events_delivered_at", "legacy_device_events", ["delivered_at"]
    )


def upgrade() -> None:
    _tables()
    with op.batch_alter_table("meters") as batch:
        for name, kind in METER_COLUMNS:
            batch.add_column(sa.Column(name, kind, nullable=True))
    with op.batch_alter_table("work_orders") as batch:
        batch.add_column(
            sa.Column("kind", sa.String(length=16), nullable=False, server_default="order")
        )
        batch.add_column(sa.Column("alarm_id", sa.Integer(), nullable=True))
        batch.alter_column("order_id", existing_type=sa.String(length=64), nullable=True)


def downgrade() -> None:
    op.execute("DELETE FROM work_orders WHERE order_id IS NULL")
    with op.batch_alter_table("work_orders") as batch:
        batch.alter_column("order_id", existing_type=sa.String(length=64), nullable=False)
        batch.drop_column("alarm_id")
        batch.drop_column("kind")
    with op.batch_alter_table("meters") as batch:
        for name, _kind in METER_COLUMNS:
            batch.drop_column(name)
    for table in (
        "legacy_device_events",
        "relay_incidents",
        "relay_alarms",
        "relay_events",
        "relay_observations",
        "relay_reports",
    ):
        op.drop_table(table)
