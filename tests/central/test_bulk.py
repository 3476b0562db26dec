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


def test_rows_written_in_bulk_read_back_as_given(session: Session) -> None:
    """Every column type of an order (text with tabs, newlines, backslashes and non-ASCII,
    JSON, floats, booleans, integers, UTC times, NULLs) survives insert_rows and
    update_rows unchanged: on PostgreSQL they go by binary COPY, on SQLite by executemany."""
    from datetime import UTC, datetime

    from central.models import Order

    at = datetime(2026, 12, 4, 22, 30, 15, 123456, tzinfo=UTC)
    awkward = 'tab\there, line\nbreak, back\\slash, "quotes", ñandú, \\N, 💡'
    row = {
        "id": "bulk-1", "idempotency_key": awkward, "meter_id": "MTR-1", "concentrator_id": None,
        "action": "disconnect", "reason": "non_payment", "special": True, "priority": 7,
        "state": "validated", "created_by": "legacy", "created_at": at, "updated_at": at,
        "max_attempts": 3, "needs_approval": False, "source": "soap", "refusal_detail": awkward,
        "energy_value": 1234.5678, "sends": 2, "result_json": {"note": awkward, "n": [1, 2.5, None]},
        "sla_warned": 0.25, "cancel_requested": False, "already_in_state": True, "attempts": 0,
    }
    orders = cast(Table, Order.__table__)
    bulk.insert_rows(session, orders, [row])
    session.commit()
    stored = session.get(Order, "bulk-1")
    assert stored is not None
    for key, value in row.items():
        assert getattr(stored, key) == value, key
    later = datetime(2027, 1, 2, 3, 4, 5, 6, tzinfo=UTC)
    bulk.update_rows(session, orders, [{"id": "bulk-1", "command_payload": awkward,
                                        "dispatched_at": later, "sends": 3}],
                     expect={"state": "validated"})
    session.commit()
    session.expire_all()
    stored = session.get(Order, "bulk-1")
    assert stored is not None
    assert (stored.command_payload, stored.dispatched_at, stored.sends) == (awkward, later, 3)


def test_a_table_with_a_type_without_binary_copy_is_copied_as_text(session: Session) -> None:
    """A column type that ``bulk`` has no binary format for (NUMERIC here) makes that
    table go by text COPY on PostgreSQL, and its rows are still written as given."""
    from decimal import Decimal

    from sqlalchemy import Column, MetaData, Numeric, String, select

    table = Table("bulk_numeric_probe", MetaData(), Column("id", String(10), primary_key=True),
                  Column("amount", Numeric(12, 3)), Column("note", String(40)))
    bind = session.get_bind()
    assert bulk._binary_types(table, ("id", "amount", "note"), bind.dialect) is None
    assert bulk._binary_types(table, ("id", "note"), bind.dialect) == ["text", "text"]
    table.create(session.connection())
    rows = [{"id": "n1", "amount": Decimal("12.345"), "note": "tab\there"},
            {"id": "n2", "amount": None, "note": "\\N"}]
    bulk.insert_rows(session, table, rows)
    got = {r.id: (r.amount, r.note) for r in session.execute(select(table))}
    assert got == {"n1": (Decimal("12.345"), "tab\there"), "n2": (None, "\\N")}
    session.rollback()
