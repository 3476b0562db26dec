"""concentrators.audit_airtime: the relay audit's measured share of each line's
airtime, as the agent's last status reported it (issue 16), for the metrics.

Revision ID: 0015
Revises: 0014
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0015"
down_revision = "0014"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("concentrators") as batch:
        batch.add_column(sa.Column("audit_airtime", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("concentrators") as batch:
        batch.drop_column("audit_airtime")
