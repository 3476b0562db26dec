"""The gateway's own table: request MessageID -> the Reply we gave.

The same MessageID sent again gets the same stored Reply and creates nothing new.
A row is claimed (reply NULL) before the request is processed, so two copies that
arrive together do not both run; the second waits for the first's reply. A claim
left without a reply (the process died mid-request) goes stale and the next copy
takes it over; the coordinator's idempotency keys (derived from the MessageID) make
that re-run return the orders already created instead of new ones.
"""

from __future__ import annotations

import logging
import time

from sqlalchemy import (
    Column,
    Engine,
    Float,
    LargeBinary,
    MetaData,
    String,
    Table,
    delete,
    insert,
    inspect,
    select,
    text,
    update,
)
from sqlalchemy.exc import DBAPIError, IntegrityError

log = logging.getLogger(__name__)
metadata = MetaData()

soap_messages = Table(
    "soap_messages",
    metadata,
    Column("message_id", String(128), primary_key=True),
    Column("operation", String(16), nullable=False),
    Column("principal", String(100), nullable=False),
    Column("received_ts", Float, nullable=False),  # epoch seconds
    Column("reply_xml", LargeBinary, nullable=True),
)


def _compress_with_lz4(engine: Engine) -> None:
    """PostgreSQL: stored Replies are compressed with lz4, not the default pglz (issue
    14). A Reply to 1,000 meters is about 0.25-0.6 MB; pglz cost the database 48 ms of
    CPU per 20 of them, lz4 7 ms, for the same size. Only values written from then on
    change; a server built without lz4 keeps pglz (logged)."""
    with engine.connect() as conn:
        method = conn.execute(text(
            "SELECT attcompression FROM pg_attribute "
            "WHERE attrelid = 'soap_messages'::regclass AND attname = 'reply_xml'"
        )).scalar()
    if method == "l":
        return
    try:
        with engine.begin() as conn:
            conn.execute(text("ALTER TABLE soap_messages ALTER COLUMN reply_xml SET COMPRESSION lz4"))
    except DBAPIError as exc:
        log.warning("stored SOAP Replies stay compressed with pglz: %s", exc.orig)


class MessageLog:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        try:
            metadata.create_all(engine, checkfirst=True)
        except DBAPIError:
            # another replica created it between our check and our CREATE
            if not inspect(engine).has_table(soap_messages.name):
                raise
        if engine.dialect.name == "postgresql":
            _compress_with_lz4(engine)

    def claim(self, message_id: str, operation: str, principal: str) -> bool:
        """True if this request is the first with ``message_id``."""
        try:
            with self.engine.begin() as conn:
                conn.execute(
                    insert(soap_messages).values(
                        message_id=message_id,
                        operation=operation,
                        principal=principal,
                        received_ts=time.time(),
                        reply_xml=None,
                    )
                )
            return True
        except IntegrityError:
            return False

    def reply(self, message_id: str) -> tuple[str, bytes | None] | None:
        """(operation, stored reply or None while in progress), or None if unknown."""
        with self.engine.connect() as conn:
            row = conn.execute(
                select(soap_messages.c.operation, soap_messages.c.reply_xml).where(
                    soap_messages.c.message_id == message_id
                )
            ).first()
        if row is None:
            return None
        return str(row[0]), (bytes(row[1]) if row[1] is not None else None)

    def owner(self, message_id: str) -> str | None:
        """The principal that sent ``message_id`` first, or None if unknown."""
        with self.engine.connect() as conn:
            value = conn.execute(
                select(soap_messages.c.principal).where(soap_messages.c.message_id == message_id)
            ).scalar()
        return None if value is None else str(value)

    def wait_reply(self, message_id: str, timeout_s: float) -> tuple[str, bytes | None] | None:
        deadline = time.monotonic() + timeout_s
        while True:
            found = self.reply(message_id)
            if found is None or found[1] is not None or time.monotonic() >= deadline:
                return found
            time.sleep(0.05)

    def store(self, message_id: str, reply_xml: bytes) -> None:
        with self.engine.begin() as conn:
            conn.execute(
                update(soap_messages)
                .where(soap_messages.c.message_id == message_id)
                .values(reply_xml=reply_xml)
            )

    def take_over_stale(self, message_id: str, older_than_s: float) -> bool:
        """Drop a reply-less claim older than ``older_than_s``; True if one was dropped."""
        with self.engine.begin() as conn:
            result = conn.execute(
                delete(soap_messages).where(
                    soap_messages.c.message_id == message_id,
                    soap_messages.c.reply_xml.is_(None),
                    soap_messages.c.received_ts < time.time() - older_than_s,
                )
            )
            return bool(result.rowcount)

    def release(self, message_id: str) -> None:
        """Forget a claim whose processing failed, so a retry can run."""
        with self.engine.begin() as conn:
            conn.execute(
                delete(soap_messages).where(
                    soap_messages.c.message_id == message_id, soap_messages.c.reply_xml.is_(None)
                )
            )
