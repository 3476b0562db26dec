"""Security hardening (issue 12): index orders.created_at and orders.not_before (the
approval window counts disconnects by the time their relays may first switch,
max(not_before, acceptance)); the protection_changes table (a protection removed
only with a second person's approval: the request, who decided, when).

Revision ID: 0007
Revises: 0005 (the lead relinks the chain at merge)
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

INDEXES = {"ix_orders_created_at": "created_at", "ix_orders_not_before": "not_before"}


def upgrade() -> None:
    present = {i["name"] for i in sa.inspect(op.get_bind()).get_indexes("orders")}
    for name, column in INDEXES.items():
        if name not in present:
            op.create_index(name, "orders", [column])
    op.create_table(
        "protection_changes",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("meter_id", sa.String(length=64), nullable=False),
        sa.Column("change", sa.String(length=40), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("requested_by", sa.String(length=100), nullable=False),
        sa.Column("requested_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("decided_by", sa.String(length=100), nullable=True),
        sa.Column("decided_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(["meter_id"], ["meters.id"]),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("protection_changes") as batch_op:
        batch_op.create_index(batch_op.f("ix_protection_changes_meter_id"), ["meter_id"])
        batch_op.create_index(batch_op.f("ix_protection_changes_state"), ["state"])


def downgrade() -> None:
    op.drop_table("protection_changes")
    for name in INDEXES:
        op.drop_index(name, table_name="orders")
