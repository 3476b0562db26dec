"""Shared test harness: a real mosquitto with our shipped configuration, real
databases (a temporary SQLite file, a temporary PostgreSQL database on the
machine's server) and a pty pair for serial-line tests.

PostgreSQL tests skip only when no server answers and ``RCD_REQUIRE_POSTGRES``
is unset; ``.ci/run`` sets it, so in CI they always run.
"""

from __future__ import annotations

import os
import tty
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from shared.broker import MosquittoBroker

# Concentrator users every broker fixture knows; add more with broker.add_user().
DEFAULT_CONCENTRATORS = ("conc-a", "conc-b", "conc-c", "conc-d")

POSTGRES_ADMIN_URL = os.environ.get(
    "RCD_TEST_POSTGRES_ADMIN", "postgresql://postgres@127.0.0.1:5432/postgres"
)


@pytest.fixture(scope="session")
def broker() -> Iterator[MosquittoBroker]:
    """One mosquitto for the session, with the shipped config and ACL.

    Tests must use their own concentrator ids / client ids to stay independent.
    """
    with MosquittoBroker(users=DEFAULT_CONCENTRATORS) as running:
        yield running


@pytest.fixture
def broker_factory(tmp_path: Path) -> Iterator[Callable[..., MosquittoBroker]]:
    """Start private brokers (e.g. to stop, kill or restart them in a test)."""
    started: list[MosquittoBroker] = []

    def start(users: tuple[str, ...] = DEFAULT_CONCENTRATORS, **kwargs: object) -> MosquittoBroker:
        work_dir = tmp_path / f"mosquitto-{len(started)}"
        work_dir.mkdir()
        instance = MosquittoBroker(users=users, work_dir=work_dir, **kwargs)  # type: ignore[arg-type]
        started.append(instance)
        return instance.start()

    yield start
    for instance in started:
        instance.close()


@pytest.fixture
def sqlite_path(tmp_path: Path) -> Path:
    return tmp_path / "rcd.sqlite3"


@pytest.fixture
def sqlite_url(sqlite_path: Path) -> str:
    return f"sqlite:///{sqlite_path}"


def _postgres_available() -> bool:
    try:
        import psycopg

        with psycopg.connect(POSTGRES_ADMIN_URL, connect_timeout=2):
            return True
    except Exception:
        return False


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A fresh, empty PostgreSQL database, dropped afterwards (SQLAlchemy URL)."""
    import psycopg

    if not _postgres_available():
        if os.environ.get("RCD_REQUIRE_POSTGRES"):
            pytest.fail(f"RCD_REQUIRE_POSTGRES is set but {POSTGRES_ADMIN_URL} does not answer")
        pytest.skip("no PostgreSQL server answers (set RCD_REQUIRE_POSTGRES to make this fail)")
    name = f"rcd_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    base = POSTGRES_ADMIN_URL.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://")
    try:
        yield f"{base}/{name}"
    finally:
        with psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(params=["sqlite", "postgres"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Run a test once on SQLite and once on PostgreSQL."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'rcd.sqlite3'}"
    url: str = request.getfixturevalue("postgres_url")
    return url


@pytest.fixture
def pty_pair() -> Iterator[tuple[int, str]]:
    """(master fd, slave path): a serial line; the code under test opens the path."""
    master, slave = os.openpty()
    tty.setraw(master)
    tty.setraw(slave)
    path = os.ttyname(slave)
    try:
        yield master, path
    finally:
        os.close(master)
        os.close(slave)
