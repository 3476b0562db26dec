"""What an operator types, resolved: an order by the first characters of its id (the
dashboard shows 8), a meter id with a "did you mean", filter values checked against
the known ones (an unknown value is an error, not an empty list)."""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Final

from sqlalchemy import func, select
from sqlalchemy.orm import Session, selectinload

from central.errors import BadRequest, Conflict, NotFound
from central.models import Meter, Order

MIN_PREFIX: Final = 4
_HEX: Final = re.compile(r"[0-9a-f]+")
_SPACES: Final = re.compile(r"\s+")


def choice(name: str, value: str | None, valid: Iterable[str]) -> str | None:
    """``value`` if it is one of ``valid`` (or not given); otherwise BadRequest listing them."""
    if value is None or value == "":
        return None
    known = list(valid)
    if value not in known:
        raise BadRequest(f"{name} {value!r} is not one of: {', '.join(known)}")
    return value


def order_id_of(session: Session, text: str) -> str:
    """The id of the order whose id is ``text``, or of the only one whose id starts
    with it. Reads ids only: no order is loaded into the session, so a caller that then
    changes the order reads it afresh (its compare-and-set on the state stays tight)."""
    if session.scalar(select(Order.id).where(Order.id == text)) is not None:
        return text
    prefix = text.strip().lower()
    if len(prefix) < MIN_PREFIX or not _HEX.fullmatch(prefix):
        raise NotFound(f"order {text} does not exist")
    found = list(session.scalars(select(Order.id).where(Order.id.startswith(prefix)).limit(6)))
    if not found:
        raise NotFound(f"no order id starts with {prefix}")
    if len(found) > 1:
        raise Conflict(
            f"{prefix} is the start of several order ids ({', '.join(found[:5])}): "
            "give more of it"
        )
    return found[0]


def find_order(session: Session, text: str, *, with_events: bool = True) -> Order:
    """The order whose id is ``text``, or the only one whose id starts with it."""
    query = select(Order)
    if with_events:
        query = query.options(selectinload(Order.events))
    order = session.scalars(query.where(Order.id == order_id_of(session, text))).first()
    if order is None:
        raise NotFound(f"order {text} does not exist")
    return order


def meter_key(meter_id: str) -> str:
    """Spaces and case do not tell two meters apart for a person: the key to compare."""
    return _SPACES.sub("", meter_id).upper()


def similar_meter(session: Session, meter_id: str) -> str | None:
    """A registered meter id that differs from ``meter_id`` only by case or spaces."""
    key = meter_key(meter_id)
    if not key:
        return None
    found = session.scalars(select(Meter.id).where(func.upper(Meter.id) == key).limit(1)).first()
    return found if found is not None and found != meter_id else None
