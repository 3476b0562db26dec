"""Issue 17, items 2 and 4: quarantined disconnects (the anomaly detector's
``quarantines``), declared holds (``holds``), and on orders the quarantine that held
one and why a validated disconnect is held now.

Revision ID: 0012
Revises: 0011
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "quarantines",
        sa.Column("id", sa.String(length=64), primary_key=True),
        sa.Column("scope_kind", sa.String(length=16), nullable=False),
        sa.Column("scope_value", sa.String(length=200), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("opened_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("window_s", sa.Integer(), nullable=False),
        sa.Column("counted", sa.Integer(), nullable=False),
        sa.Column("threshold", sa.Integer(), nullable=False),
        sa.Column("configured_limit", sa.Integer(), nullable=False),
        sa.Column("baseline", sa.Float(), nullable=True),
        sa.Column("orders", sa.Integer(), nullable=False),
        sa.Column("detail", sa.Text(), nullable=False),
        sa.Column("decided_by", sa.String(length=100), nullable=True),
        sa.Column("decided_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("decision_note", sa.Text(), nullable=True),
    )
    op.create_index("ix_quarantines_state", "quarantines", ["state"])
    op.create_index("ix_quarantines_opened_at", "quarantines", ["opened_at"])
    op.create_table(
        "holds",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("scope_kind", sa.String(length=16), nullable=False),
        sa.Column("scope_value", sa.String(length=200), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("starts_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("ends_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("created_by", sa.String(length=100), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("ended_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("ended_by", sa.String(length=100), nullable=True),
    )
    op.create_index("ix_holds_ends_at", "holds", ["ends_at"])
    with op.batch_alter_table("orders") as batch:
        batch.add_column(sa.Column("quarantine_id", sa.String(length=64), nullable=True))
        batch.add_column(sa.Column("hold_reason", sa.String(length=40), nullable=True))
        batch.add_column(sa.Column("held_since", sa.DateTime(timezone=True), nullable=True))
        batch.create_index("ix_orders_quarantine_id", ["quarantine_id"])
        batch.create_index("ix_orders_hold_reason", ["hold_reason"])


def downgrade() -> None:
    with op.batch_alter_table("orders") as batch:
        batch.drop_index("ix_orders_hold_reason")
        batch.drop_index("ix_orders_quarantine_id")
        batch.drop_column("held_since")
        batch.drop_column("hold_reason")
        batch.drop_column("quarantine_id")
    op.drop_table("holds")
    op.drop_table("quarantines")
