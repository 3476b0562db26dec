"""Alembic environment: the engine comes from ``central.db.migrate`` (config attribute),
or from ``RCD_DATABASE_URL`` when run by the alembic command line."""

from __future__ import annotations

import os

from alembic import context
from sqlalchemy import Engine, create_engine

from central.models import Base

config = context.config
target_metadata = Base.metadata


def run_migrations_online() -> None:
    engine: Engine | None = config.attributes.get("engine")
    owned = engine is None
    if engine is None:
        engine = create_engine(
            os.environ.get("RCD_DATABASE_URL", "sqlite:///var/rcd-central.sqlite3")
        )
    try:
        with engine.begin() as connection:
            context.configure(
                connection=connection,
                target_metadata=target_metadata,
                render_as_batch=connection.dialect.name == "sqlite",
            )
            with context.begin_transaction():
                context.run_migrations()
    finally:
        if owned:
            engine.dispose()


run_migrations_online()
