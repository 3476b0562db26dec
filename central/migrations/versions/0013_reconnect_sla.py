"""orders.sla_due_at and orders.sla_warned: the reconnection SLA clock of a reconnect
(issue 17, item 3). Reconnects already active when this runs get theirs from the SLA
sweep (accepted time plus the configured SLA).

Revision ID: 0013
Revises: 0012
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("orders") as batch:
        batch.add_column(sa.Column("sla_due_at", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("sla_warned", sa.Float(), nullable=True))
        batch.create_index("ix_orders_sla_due_at", ["sla_due_at"])


def downgrade() -> None:
    with op.batch_alter_table("orders") as batch:
        batch.drop_index("ix_orders_sla_due_at")
        batch.drop_column("sla_warned")
        batch.drop_column("sla_due_at")
