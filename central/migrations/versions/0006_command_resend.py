"""orders: the signed command as sent, its deadline, and when to send it again until
the agent's receipt (issue 11: the broker is never the only copy).

Revision ID: 0006
Revises: 0005
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("orders") as batch:
        batch.add_column(sa.Column("command_payload", sa.Text(), nullable=True))
        batch.add_column(sa.Column("command_deadline", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("resend_at", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("sends", sa.Integer(), nullable=False, server_default="0"))
    # orders already sent and not received: sent again (rebuilt, same command id) soon
    op.execute("UPDATE orders SET resend_at = dispatched_at, sends = 1 WHERE state = 'dispatched'")


def downgrade() -> None:
    with op.batch_alter_table("orders") as batch:
        batch.drop_column("sends")
        batch.drop_column("resend_at")
        batch.drop_column("command_deadline")
        batch.drop_column("command_payload")
