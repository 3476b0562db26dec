"""Replay detection for Header/ReplayDetection and WS-Security UsernameToken:
a (Nonce, Created) pair is accepted once, and only while Created is inside the
window around now. Seen nonces live in the gateway's table ``soap_nonces``, so all
replicas on one database refuse a copy that another one accepted.
"""

from __future__ import annotations

import hashlib
import time
from datetime import datetime, timedelta

from sqlalchemy import Column, Engine, Float, String, Table, delete, insert, inspect
from sqlalchemy.exc import DBAPIError, IntegrityError

from central.soap.cim import parse_dt
from central.soap.store import metadata

soap_nonces = Table(
    "soap_nonces",
    metadata,
    Column("nonce_key", String(64), primary_key=True),  # sha256(scope, nonce)
    Column("seen_ts", Float, nullable=False, index=True),  # epoch seconds
)


def freshness_problem(created_raw: str, now: datetime, window_s: float) -> str | None:
    """Why Created is not acceptable (unparseable, too old, in the future), or None."""
    try:
        created = parse_dt(created_raw)
    except ValueError:
        return f"Created '{created_raw}' is not a date-time"
    assert created is not None
    window = timedelta(seconds=window_s)
    if created < now - window:
        return f"Created {created_raw} is older than the replay window of {window_s:g} s"
    if created > now + window:
        return f"Created {created_raw} is more than {window_s:g} s in the future"
    return None


class NonceLog:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        try:
            metadata.create_all(engine, tables=[soap_nonces], checkfirst=True)
        except DBAPIError:
            if not inspect(engine).has_table(soap_nonces.name):
                raise

    def first_use(self, scope: str, nonce: str, window_s: float) -> bool:
        """True the first time ``nonce`` is seen in ``scope`` (within twice the window:
        older entries are forgotten, their Created is outside the window anyway)."""
        key = hashlib.sha256(f"{scope}\x00{nonce}".encode()).hexdigest()
        now = time.time()
        try:
            with self.engine.begin() as conn:
                conn.execute(delete(soap_nonces).where(soap_nonces.c.seen_ts < now - 2 * window_s))
                conn.execute(insert(soap_nonces).values(nonce_key=key, seen_ts=now))
            return True
        except IntegrityError:
            return False
