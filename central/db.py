"""Engine, sessions and migrations.

SQLite (a file) is the default; PostgreSQL by URL. SQLite gets WAL and a busy
timeout so the API, the result consumer and the sweeper can share one file, and
``synchronous=FULL`` so that every commit is on disk before it returns.
Migrations (Alembic, ``central/migrations``) run at start-up via :func:`migrate`.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from pathlib import Path
from typing import Any, TypeVar

from alembic import command
from alembic.config import Config
from sqlalchemy import ARRAY, ColumnElement, Engine, Select, any_, bindparam, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import QueryableAttribute, Session, sessionmaker
from sqlalchemy.orm.exc import StaleDataError

from central.errors import Conflict, StorageError

T = TypeVar("T")

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"


def make_engine(url: str) -> Engine:
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        database = parsed.database
        if database and database != ":memory:":
            Path(database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"timeout": 30, "check_same_thread": False})

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
            cursor = dbapi_conn.cursor()
            try:
                cursor.execute("PRAGMA journal_mode=WAL")
                # FULL, not NORMAL: with WAL, NORMAL skips the fsync at commit, so a
                # commit survives a process crash but not a power cut or kernel panic.
                # An order acknowledged to a client (and a result acknowledged to the
                # broker) must survive both. FULL costs one fsync per commit; the order
                # path commits per batch, not per order, so it is cheap.
                cursor.execute("PRAGMA synchronous=FULL")
                # 64 MiB page cache (default 2 MiB) and in-memory temp b-trees: batches
                # of thousands of rows touch many index pages.
                cursor.execute("PRAGMA cache_size=-65536")
                cursor.execute("PRAGMA temp_store=MEMORY")
                cursor.execute("PRAGMA foreign_keys=ON")
                cursor.execute("PRAGMA busy_timeout=30000")
            finally:
                cursor.close()

        return engine
    return create_engine(url, pool_pre_ping=True, pool_size=10, max_overflow=10)


_SQLITE_WRITES = threading.Lock()


def sqlite_write_lock(session: Session) -> AbstractContextManager[object]:
    """Hold around a write transaction (first write to commit) on the order hot path.

    SQLite has one writer at a time; a second thread that hits the lock waits in
    SQLite's busy handler, which sleeps in steps of up to 100 ms, so concurrent API
    requests lost whole sleeps after every commit. Threads of this process that take
    this lock hand over at once instead. Writers that do not take it (result consumer,
    sweeper) still wait in the busy handler as before, so it is an optimisation, never
    needed for correctness. A no-op on PostgreSQL (row locks, replicas).
    """
    if session.get_bind().dialect.name == "sqlite":
        return _SQLITE_WRITES
    return nullcontext()


def make_session_factory(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)


def alembic_config(engine: Engine) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.attributes["engine"] = engine
    return config


def migrate(engine: Engine) -> None:
    """Bring the schema to the newest revision (idempotent)."""
    try:
        command.upgrade(alembic_config(engine), "head")
    except SQLAlchemyError as exc:
        raise StorageError(f"database migration failed: {exc}") from exc


CHANGED_MEANWHILE = "the order changed meanwhile (another request or the dispatcher); retry"


@contextmanager
def stale_to_conflict(session: Session, what: str = "") -> Iterator[None]:
    """Around a flush or commit of order changes: a write from a stale read (the order's
    state is not the one read; see ``Order.__mapper_args__``) rolls back and raises
    ``Conflict`` (HTTP 409) instead of ``StaleDataError``."""
    try:
        yield
    except StaleDataError as exc:
        raise changed_meanwhile(session, what) from exc


def changed_meanwhile(session: Session, what: str = "") -> Conflict:
    """Roll back, and the ``Conflict`` to raise for a write that found the order no
    longer as it was read (``stale_to_conflict``, or a guarded UPDATE that matched no
    row)."""
    session.rollback()
    return Conflict(f"{what}: {CHANGED_MEANWHILE}" if what else CHANGED_MEANWHILE)


@contextmanager
def session_scope(factory: Callable[[], Session]) -> Iterator[Session]:
    """A session committed on success, rolled back on error, always closed."""
    session = factory()
    try:
        yield session
        session.commit()
    except StaleDataError as exc:
        session.rollback()
        raise Conflict(CHANGED_MEANWHILE) from exc
    except SQLAlchemyError as exc:
        session.rollback()
        raise StorageError(f"database error: {exc}") from exc
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


def where_given(query: Select[T], *filters: tuple[QueryableAttribute[Any], object]) -> Select[T]:
    """``query`` narrowed by ``column == value`` for each filter whose value was given
    (a list route's optional query parameters)."""
    for column, value in filters:
        if value:
            query = query.where(column == value)
    return query


def one_of(
    session: Session, column: QueryableAttribute[Any], values: Sequence[Any]
) -> ColumnElement[bool]:
    """``column IN (values)``; on PostgreSQL ``column = ANY(:array)``: one parameter
    instead of one per value, so the statement stays short and the driver converts it
    once (hundreds of placeholders are parsed in Python, uncached, every time)."""
    if session.get_bind().dialect.name == "postgresql":
        return column == any_(bindparam(None, list(values), type_=ARRAY(column.type)))
    return column.in_(values)
