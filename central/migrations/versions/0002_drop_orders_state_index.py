"""drop the single-column index on orders.state (ix_orders_state_conc covers it)

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.drop_index("ix_orders_state", table_name="orders")


def downgrade() -> None:
    op.create_index("ix_orders_state", "orders", ["state"], unique=False)
