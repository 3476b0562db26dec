"""Index orders.created_at and orders.not_before: the approval window counts
disconnects by the time their relays may first switch, max(not_before, acceptance).

Revision ID: 0007
Revises: 0005 (the lead relinks the chain at merge)
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0005"
branch_labels = None
depends_on = None

INDEXES = {"ix_orders_created_at": "created_at", "ix_orders_not_before": "not_before"}


def upgrade() -> None:
    present = {i["name"] for i in sa.inspect(op.get_bind()).get_indexes("orders")}
    for name, column in INDEXES.items():
        if name not in present:
            op.create_index(name, "orders", [column])


def downgrade() -> None:
    for name in INDEXES:
        op.drop_index(name, table_name="orders")
