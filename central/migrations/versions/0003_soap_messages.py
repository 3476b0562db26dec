"""soap_messages: the SOAP gateway's MessageID log (central/soap/store.py) as a revision

Databases where the gateway already created it with ``create_all`` keep theirs.

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    if sa.inspect(op.get_bind()).has_table("soap_messages"):
        return
    op.create_table(
        "soap_messages",
        sa.Column("message_id", sa.String(length=128), nullable=False),
        sa.Column("operation", sa.String(length=16), nullable=False),
        sa.Column("principal", sa.String(length=100), nullable=False),
        sa.Column("received_ts", sa.Float(), nullable=False),
        sa.Column("reply_xml", sa.LargeBinary(), nullable=True),
        sa.PrimaryKeyConstraint("message_id"),
    )


def downgrade() -> None:
    op.drop_table("soap_messages")
