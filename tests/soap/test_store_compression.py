"""PostgreSQL: the gateway's stored Replies are compressed with lz4 (issue 14).

What a DBA would check: the column's compression method, the method of a stored value,
and that the Reply read back is the one stored, byte for byte.
"""

from __future__ import annotations

import os

from sqlalchemy import create_engine, text

from central.soap.store import MessageLog


def _large_reply() -> bytes:
    """About 0.3 MB of Reply-like XML, which PostgreSQL compresses (over 2 kB)."""
    items = "".join(
        f"<m:EndDeviceControl><m:mRID>{os.urandom(8).hex()}</m:mRID>"
        f"<m:EndDevices><m:mRID>MTR-{n:06d}</m:mRID></m:EndDevices></m:EndDeviceControl>"
        for n in range(3000)
    )
    return f"<m:Reply>{items}</m:Reply>".encode()


def test_replies_are_stored_with_lz4_and_read_back_unchanged(postgres_url: str) -> None:
    engine = create_engine(postgres_url)
    try:
        with engine.begin() as conn:  # a database made before this change: pglz
            conn.execute(text(
                "CREATE TABLE soap_messages (message_id VARCHAR(128) PRIMARY KEY, "
                "operation VARCHAR(16) NOT NULL, principal VARCHAR(100) NOT NULL, "
                "received_ts FLOAT NOT NULL, reply_xml BYTEA)"
            ))
        messages = MessageLog(engine)
        assert messages.claim("m-1", "create", "legacy")
        reply = _large_reply()
        messages.store("m-1", reply)
        with engine.connect() as conn:
            column = conn.execute(text(
                "SELECT attcompression FROM pg_attribute "
                "WHERE attrelid = 'soap_messages'::regclass AND attname = 'reply_xml'"
            )).scalar()
            stored = conn.execute(text(
                "SELECT pg_column_compression(reply_xml), octet_length(reply_xml), "
                "pg_column_size(reply_xml) FROM soap_messages WHERE message_id = 'm-1'"
            )).one()
        assert column == "l"
        assert stored[0] == "lz4" and stored[1] == len(reply) and stored[2] < len(reply) / 2
        assert messages.reply("m-1") == ("create", reply)
        MessageLog(engine)  # a second start (another replica) finds it done
    finally:
        engine.dispose()
