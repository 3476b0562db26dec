"""PostgreSQL: after its move to ``dispatched``, an order's writes stay on its page.

Each dispatched order is updated twice: its move (state, command id and the signed
command, one statement since issue 14's round 9), then ``published_at``. Only the first
changes an indexed column; the second is meant to be a heap-only (HOT) update, which
adds no index entry (revision 0016: fillfactor 50, no index on that column). This is
what a DBA reads in ``pg_stat_user_tables``.
"""

from __future__ import annotations

import pytest
from sqlalchemy import text
from sqlalchemy.orm import Session, sessionmaker

from central.services import dispatch
from central.settings import Settings
from shared.signing import CommandSigner

from .conftest import WORKDAY, RecordingPublisher, add_meters
from .test_races import create

ORDERS = 40


@pytest.fixture
def settings(postgres_url: str) -> Settings:
    """PostgreSQL only (HOT updates are PostgreSQL's); ``factory`` comes from conftest."""
    return Settings(environment="test", database_url=postgres_url, mqtt_enabled=False,
                    approval_threshold=1000, max_inflight_per_concentrator=1000)


def _updates(session: Session) -> tuple[int, int]:
    """(updates, heap-only updates) of ``orders`` so far, this backend's included."""
    session.execute(text("SELECT pg_stat_force_next_flush()"))
    session.commit()  # the backend flushes its counters when it goes idle
    row = session.execute(text(
        "SELECT n_tup_upd, n_tup_hot_upd FROM pg_stat_user_tables WHERE relname = 'orders'"
    )).one()
    session.commit()
    return int(row[0]), int(row[1])


def test_the_puback_write_is_heap_only(
    factory: sessionmaker[Session], settings: Settings, signer: CommandSigner
) -> None:
    publisher = RecordingPublisher()
    with factory() as session:
        meters = add_meters(session, ORDERS)
        create(session, settings, meters)
        before = _updates(session)
        assert dispatch.dispatch_ready(session, publisher, signer, settings, now=WORKDAY) == ORDERS
        after = _updates(session)
        published = session.scalar(
            text("SELECT count(*) FROM orders WHERE published_at IS NOT NULL")
        )
    updates, hot = after[0] - before[0], after[1] - before[1]
    assert published == ORDERS
    assert updates == 2 * ORDERS
    # Most of the PUBACK writes are heap-only: each needs room on the page for the row's
    # new version next to the one it replaces, until the page is pruned, and how soon a
    # page is pruned depends on the other transactions of the moment.
    assert hot >= ORDERS * 3 // 4
