"""The Alembic migrations produce exactly the schema the models describe (both databases)."""

from __future__ import annotations

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from central.db import make_engine, migrate
from central.models import Base


def test_migrations_match_models(database_url: str) -> None:
    engine = make_engine(database_url)
    try:
        migrate(engine)
        migrate(engine)  # idempotent
        with engine.connect() as connection:
            diff = compare_metadata(MigrationContext.configure(connection), Base.metadata)
        # other parts may add their own tables (e.g. soap_messages); ours must match exactly
        ours = [
            d
            for d in diff
            if not (d[0] == "remove_table" and d[1].name not in Base.metadata.tables)
        ]
        assert ours == []
    finally:
        engine.dispose()


def test_soap_messages_revision_matches_the_gateway_table(database_url: str) -> None:
    store = pytest.importorskip("central.soap.store")
    engine = make_engine(database_url)
    try:
        migrate(engine)
        with engine.connect() as connection:
            diff = compare_metadata(MigrationContext.configure(connection), store.metadata)
        assert [d for d in diff if "soap_messages" in str(d)] == []
    finally:
        engine.dispose()


def test_outcome_revision_keeps_how_reported_orders_ended(database_url: str) -> None:
    """Revision 0010: orders that ended before it get final_state from their outbox row."""
    import sqlalchemy as sa
    from alembic import command

    from central.db import alembic_config

    engine = make_engine(database_url)
    try:
        config = alembic_config(engine)
        command.upgrade(config, "0005")
        with engine.begin() as connection:
            connection.execute(sa.text(
                "INSERT INTO orders (id, meter_id, action, reason, special, priority, state, "
                "created_by, created_at, updated_at, max_attempts, needs_approval, source, "
                "cancel_requested, already_in_state, attempts) VALUES ('o1', 'M1', 'disconnect', "
                "'non_payment', false, 5, 'reported', 'x', :now, :now, 3, false, 'rest', false, "
                "false, 3)"
            ), {"now": "2026-01-01 00:00:00"})
            connection.execute(sa.text(
                "INSERT INTO legacy_notifications (order_id, final_state, created_at, attempts) "
                "VALUES ('o1', 'failed', :now, 1)"
            ), {"now": "2026-01-01 00:00:00"})
        migrate(engine)
        with engine.connect() as connection:
            value = connection.execute(sa.text("SELECT final_state FROM orders")).scalar_one()
        assert value == "failed"
    finally:
        engine.dispose()
