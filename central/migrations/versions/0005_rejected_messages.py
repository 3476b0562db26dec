"""rejected_messages: agent messages the coordinator could not accept, kept for audit.

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "rejected_messages",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("topic", sa.String(length=300), nullable=False),
        sa.Column("concentrator_id", sa.String(length=64), nullable=True),
        sa.Column("order_id", sa.String(length=64), nullable=True),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("size", sa.Integer(), nullable=False),
        sa.Column("payload", sa.LargeBinary(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_rejected_messages_received_at", "rejected_messages", ["received_at"])
    op.create_index(
        "ix_rejected_messages_concentrator_id", "rejected_messages", ["concentrator_id"]
    )
    op.create_index("ix_rejected_messages_order_id", "rejected_messages", ["order_id"])


def downgrade() -> None:
    op.drop_table("rejected_messages")
