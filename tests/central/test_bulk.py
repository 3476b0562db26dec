"""central.bulk's compare-and-set update on SQLite and PostgreSQL (on PostgreSQL through
a temporary table filled by COPY): rows move only while they hold the expected values,
per-row ``match`` columns are compared and never written, and a second call in the same
transaction applies only its own rows."""

from __future__ import annotations

from typing import cast

from sqlalchemy import Table
from sqlalchemy.orm import Session

from central import bulk
from central.models import Meter
from central.services.lifecycle import utcnow


def _table() -> Table:
    return cast(Table, Meter.__table__)


def test_update_rows_compares_expected_and_matched_values(session: Session, meters) -> None:  # type: ignore[no-untyped-def]
    meters(3, concentrator="conc-a", prefix="a")
    meters(1, concentrator="conc-b", prefix="b")
    rows = [
        {"id": "a0", "concentrator_id": "conc-a", "line_id": "moved", "updated_at": utcnow()},
        {"id": "a1", "concentrator_id": "conc-b", "line_id": "moved", "updated_at": utcnow()},  # it is on conc-a
        {"id": "b0", "concentrator_id": "conc-b", "line_id": "moved", "updated_at": utcnow()},
    ]
    bulk.update_rows(session, _table(), rows, expect={"commissioned": True},
                     match=("concentrator_id",))
    # a second call in the same transaction: only its own row changes
    bulk.update_rows(session, _table(), [{"id": "a2", "concentrator_id": "conc-a",
                                          "line_id": "second", "updated_at": utcnow()}], match=("concentrator_id",))
    session.commit()
    got = {m.id: (m.concentrator_id, m.line_id) for m in session.query(Meter)}
    assert got == {
        "a0": ("conc-a", "moved"),
        "a1": ("conc-a", "l1"),  # its matched concentrator differed: left alone
        "a2": ("conc-a", "second"),
        "b0": ("conc-b", "moved"),
    }


def test_update_rows_leaves_rows_without_the_expected_value(session: Session, meters) -> None:  # type: ignore[no-untyped-def]
    meters(2, concentrator="conc-a", prefix="c")
    rows = [{"id": f"c{n}", "line_id": "x", "updated_at": utcnow()} for n in range(2)]
    bulk.update_rows(session, _table(), rows, expect={"commissioned": False})
    session.commit()
    assert {m.line_id for m in session.query(Meter)} == {"l1"}
