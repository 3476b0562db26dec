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
