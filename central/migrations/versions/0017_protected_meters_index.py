"""A partial index of the protected meters (Ley 21.304).

Before every dispatch pass the coordinator ends any active disconnect of a protected
meter. That check now starts from the protected meters, a handful in a fleet, instead
of joining every active order to its meter; this index finds them without reading the
meter table.

Revision ID: 0017
Revises: 0016
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0017"
down_revision = "0016"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index(
        "ix_meters_protected_customer",
        "meters",
        ["protected_customer"],
        postgresql_where=sa.text("protected_customer IS true"),
        sqlite_where=sa.text("protected_customer IS 1"),
    )


def downgrade() -> None:
    op.drop_index("ix_meters_protected_customer", table_name="meters")
