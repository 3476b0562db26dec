"""What the race tests share: orders made ready from a session of their own, and a
commit slipped in between the dispatcher's select and its claim.

The dispatcher selects ready orders, then claims them with a compare-and-set on the
state (and concentrator) it read; whatever another session commits in between must
make the claim leave that order alone (``test_races.py``, ``test_meter_move.py``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from sqlalchemy.orm import Session, sessionmaker

from central.services import dispatch, orders
from central.services.orders import OrderRequest
from central.settings import Settings

from .conftest import OPERATOR, WORKDAY, add_meters


def commit_orders(session: Session, settings: Settings, requests: list[OrderRequest]) -> list[str]:
    """Create and commit ``requests`` (all must be accepted); the orders' ids."""
    outcome = orders.create_orders(session, requests, OPERATOR, settings, now=WORKDAY)
    session.commit()
    assert all(item.accepted for item in outcome.items)
    return [item.order_id or "" for item in outcome.items]


def ready_orders(
    factory: sessionmaker[Session], settings: Settings, *requests: OrderRequest
) -> list[str]:
    """Meters m0, m1, ... on conc-a (one per request) and the requests' orders,
    validated and committed from a session of their own; the orders' ids."""
    with factory() as setup:
        add_meters(setup, len(requests))
        return commit_orders(setup, settings, list(requests))


def commit_between_select_and_claim(
    monkeypatch: pytest.MonkeyPatch,
    factory: sessionmaker[Session],
    meanwhile: Callable[[Session], None],
) -> list[list[Any]]:
    """Make each select of the dispatcher end its transaction and commit ``meanwhile``
    from another session before the claim runs. The rows each select returned are
    appended to the list returned here (for the test to check what was selected)."""
    real_select = dispatch.select_ready
    selected: list[list[Any]] = []

    def select_then_commit(session: Session, *args: Any, **kw: Any) -> list[Any]:
        ready = real_select(session, *args, **kw)
        selected.append(ready)
        # End the selecting transaction (on PostgreSQL it holds FOR UPDATE locks; SQLite
        # selects outside any write transaction): the claim's UPDATE alone must notice.
        session.rollback()
        with factory() as other:
            meanwhile(other)
            other.commit()
        return ready

    monkeypatch.setattr(dispatch, "select_ready", select_then_commit)
    return selected
