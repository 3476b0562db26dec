"""A partial index of the orders whose cancel was requested: the dispatcher looks for
them before every dispatch step (a reconnect waits for its superseded disconnect's
cancel), and they are a handful among hundreds of thousands of finished orders.

Revision ID: 0014
Revises: 0013
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index(
        "ix_orders_cancel_requested",
        "orders",
        ["cancel_requested"],
        postgresql_where=sa.text("cancel_requested"),
        sqlite_where=sa.text("cancel_requested"),
    )


def downgrade() -> None:
    op.drop_index("ix_orders_cancel_requested", table_name="orders")
