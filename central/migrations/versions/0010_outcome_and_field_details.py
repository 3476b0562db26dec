"""orders.final_state (how an order ended, kept once it is reported to Legacy) and
what a field crew needs on meters and work orders (service address, comuna, region,
GPS, customer/supply reference, access notes).

Revision ID: 0010
Revises: 0005
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0007"
branch_labels = None
depends_on = None

FIELD_COLUMNS = (
    ("service_address", sa.String(length=300)),
    ("comuna", sa.String(length=100)),
    ("region", sa.String(length=100)),
    ("latitude", sa.Float()),
    ("longitude", sa.Float()),
    ("customer_ref", sa.String(length=100)),
    ("access_notes", sa.Text()),
)


def upgrade() -> None:
    with op.batch_alter_table("orders") as batch:
        batch.add_column(sa.Column("final_state", sa.String(length=32), nullable=True))
        batch.create_index("ix_orders_final_state", ["final_state"])
    # Orders that ended before this revision: their outbox row holds how they ended.
    op.execute(
        "UPDATE orders SET final_state = (SELECT final_state FROM legacy_notifications "
        "WHERE legacy_notifications.order_id = orders.id) WHERE final_state IS NULL"
    )
    for table in ("meters", "work_orders"):
        with op.batch_alter_table(table) as batch:
            for name, kind in FIELD_COLUMNS:
                batch.add_column(sa.Column(name, kind, nullable=True))


def downgrade() -> None:
    for table in ("meters", "work_orders"):
        with op.batch_alter_table(table) as batch:
            for name, _kind in FIELD_COLUMNS:
                batch.drop_column(name)
    with op.batch_alter_table("orders") as batch:
        batch.drop_index("ix_orders_final_state")
        batch.drop_column("final_state")
