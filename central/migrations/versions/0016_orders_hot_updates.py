"""Fewer index entries per order, and room for its later versions on its own page.

Every order is written four times (accepted, dispatched, its signed command, the
broker's PUBACK), and on PostgreSQL every UPDATE that does not stay on the row's page,
or that changes an indexed column, adds an entry to every index of ``orders``. So:

* ``fillfactor`` 50 on PostgreSQL: inserts leave half of each page free, so the signed
  command and ``published_at`` (no index reads them) can be heap-only (HOT) updates;
* the indexes of columns that are NULL for most orders become partial (``WHERE col IS
  NOT NULL``): every query on them compares a value, which implies it;
* ``ix_orders_sla_due_at`` goes: no query looks orders up by it.

Revision ID: 0016
Revises: 0015
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0016"
down_revision = "0015"
branch_labels = None
depends_on = None

# the columns whose index becomes partial
PARTIAL = ("final_state", "external_ref", "not_before", "dispatched_at", "quarantine_id",
           "hold_reason")


def upgrade() -> None:
    for column in PARTIAL:
        name = f"ix_orders_{column}"
        op.drop_index(name, table_name="orders")
        where = sa.text(f"{column} IS NOT NULL")
        op.create_index(name, "orders", [column], postgresql_where=where, sqlite_where=where)
    op.drop_index("ix_orders_sla_due_at", table_name="orders")
    if op.get_bind().dialect.name == "postgresql":
        # new pages only; a table rewrite of a large history is not worth it
        op.execute("ALTER TABLE orders SET (fillfactor = 50)")


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("ALTER TABLE orders RESET (fillfactor)")
    op.create_index("ix_orders_sla_due_at", "orders", ["sla_due_at"])
    for column in PARTIAL:
        name = f"ix_orders_{column}"
        op.drop_index(name, table_name="orders")
        op.create_index(name, "orders", [column])
