"""The coordinator's tables (SQLAlchemy 2 typed ORM).

Times are stored as UTC and always read back timezone-aware (SQLite keeps no
zone, so :class:`UTCDateTime` restores it).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    TypeDecorator,
    text,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from central.state import outcome_of


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        assert isinstance(value, datetime)
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Base(DeclarativeBase):
    pass


class Concentrator(Base):
    __tablename__ = "concentrators"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str] = mapped_column(String(200), default="")
    decommissioned: Mapped[bool] = mapped_column(Boolean, default=False)
    online: Mapped[bool] = mapped_column(Boolean, default=False)
    status_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    queue_depth: Mapped[int] = mapped_column(Integer, default=0)
    outbox_depth: Mapped[int] = mapped_column(Integer, default=0)
    modem: Mapped[str] = mapped_column(String(16), default="unknown")
    sim: Mapped[str] = mapped_column(String(16), default="unknown")
    signal_dbm: Mapped[int | None] = mapped_column(Integer)
    agent_version: Mapped[str] = mapped_column(String(32), default="")
    table_generation: Mapped[int] = mapped_column(Integer, default=0)  # ours, bumped on change
    table_pushed_generation: Mapped[int] = mapped_column(Integer, default=-1)  # published
    agent_table_generation: Mapped[int | None] = mapped_column(Integer)  # as the agent reports
    # the relay audit's share of each line's airtime, from the agent's last status
    audit_airtime: Mapped[dict[str, float] | None] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class Meter(Base):
    __tablename__ = "meters"
    __table_args__ = (
        # the few protected meters, looked up before every dispatch pass (revision 0017)
        Index(
            "ix_meters_protected_customer",
            "protected_customer",
            postgresql_where=text("protected_customer IS true"),
            sqlite_where=text("protected_customer IS 1"),
        ),
    )

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    concentrator_id: Mapped[str | None] = mapped_column(
        String(64), ForeignKey("concentrators.id"), index=True
    )
    topology: Mapped[str] = mapped_column(String(20), default="concentrated")  # or point_to_point
    transport: Mapped[str] = mapped_column(String(8), default="hdlc")  # hdlc | tcp
    line_id: Mapped[str | None] = mapped_column(String(64))
    hdlc_address: Mapped[int | None] = mapped_column(Integer)
    host: Mapped[str | None] = mapped_column(String(253))
    port: Mapped[int | None] = mapped_column(Integer)
    logical_server: Mapped[int] = mapped_column(Integer, default=1)
    keys_ref: Mapped[str | None] = mapped_column(String(64))
    commissioned: Mapped[bool] = mapped_column(Boolean, default=True)
    protected_customer: Mapped[bool] = mapped_column(Boolean, default=False)  # Ley 21.304
    relay_state: Mapped[str] = mapped_column(String(16), default="unknown")
    relay_state_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    energy_kwh: Mapped[float | None] = mapped_column(Float)
    # where a field crew goes (service address, GPS when known, who the customer is)
    service_address: Mapped[str | None] = mapped_column(String(300))
    comuna: Mapped[str | None] = mapped_column(String(100))
    region: Mapped[str | None] = mapped_column(String(100))
    latitude: Mapped[float | None] = mapped_column(Float)
    longitude: Mapped[float | None] = mapped_column(Float)
    customer_ref: Mapped[str | None] = mapped_column(String(100))  # customer/supply number
    access_notes: Mapped[str | None] = mapped_column(Text)
    # issue 16: where relay_state came from (order / audit / log / field), the meter's
    # firmware as its agent last reported it, its last audit, and the energy register
    # (Wh) when a disconnect was last confirmed (the tamper baseline; None when connected)
    relay_state_source: Mapped[str | None] = mapped_column(String(16))
    firmware_version: Mapped[str | None] = mapped_column(String(64))
    audited_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    disconnect_energy_wh: Mapped[float | None] = mapped_column(Float)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)


class Batch(Base):
    __tablename__ = "batches"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    created_by: Mapped[str] = mapped_column(String(100))
    # indexed: the rolling approval window sums recent batches' disconnects
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)
    size: Mapped[int] = mapped_column(Integer, default=0)
    disconnects: Mapped[int] = mapped_column(Integer, default=0)
    needs_approval: Mapped[bool] = mapped_column(Boolean, default=False)
    approved_by: Mapped[str | None] = mapped_column(String(100))
    approved_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


_PARTIAL_INDEXED = (
    "final_state", "external_ref", "not_before", "dispatched_at", "quarantine_id", "hold_reason"
)


class Order(Base):
    __tablename__ = "orders"
    __table_args__ = (
        Index("ix_orders_state_conc", "state", "concentrator_id"),
        Index("ix_orders_meter_state", "meter_id", "state"),
        # the few orders with a cancel to send, looked up before every dispatch step
        Index(
            "ix_orders_cancel_requested",
            "cancel_requested",
            postgresql_where=text("cancel_requested"),
            sqlite_where=text("cancel_requested"),
        ),
        # Partial: these columns are NULL for most orders, which then cost no entry, and
        # every query on them compares a value (revision 0016). On PostgreSQL the table
        # also has fillfactor 50, so that the writes of the signed command and of
        # ``published_at`` (in no index) stay heap-only updates on the row's page.
        *(
            Index(
                f"ix_orders_{column}",
                column,
                postgresql_where=text(f"{column} IS NOT NULL"),
                sqlite_where=text(f"{column} IS NOT NULL"),
            )
            for column in _PARTIAL_INDEXED
        ),
    )

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    idempotency_key: Mapped[str | None] = mapped_column(String(200), unique=True)
    meter_id: Mapped[str] = mapped_column(String(64))  # not a FK: unknown meters are recorded too
    concentrator_id: Mapped[str | None] = mapped_column(String(64))
    action: Mapped[str] = mapped_column(String(16))
    reason: Mapped[str] = mapped_column(String(32))
    special: Mapped[bool] = mapped_column(Boolean, default=False)  # allowed outside working days
    priority: Mapped[int] = mapped_column(Integer, default=5)
    state: Mapped[str] = mapped_column(String(32))  # see ix_orders_state_conc
    # The final state the order reached (kept when it then becomes ``reported``): its
    # outcome. None while it runs.
    final_state: Mapped[str | None] = mapped_column(String(32))
    created_by: Mapped[str] = mapped_column(String(100))
    # indexed with not_before: the approval window counts disconnects by switching time
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    deadline: Mapped[datetime | None] = mapped_column(UTCDateTime)
    max_attempts: Mapped[int] = mapped_column(Integer, default=3)
    batch_id: Mapped[str | None] = mapped_column(String(64), ForeignKey("batches.id"), index=True)
    needs_approval: Mapped[bool] = mapped_column(Boolean, default=False)
    approved_by: Mapped[str | None] = mapped_column(String(100))
    # where it came from, for the SOAP gateway and Legacy
    source: Mapped[str] = mapped_column(String(16), default="rest")
    external_ref: Mapped[str | None] = mapped_column(String(200))
    issuer_id: Mapped[str | None] = mapped_column(String(200))
    not_before: Mapped[datetime | None] = mapped_column(UTCDateTime)
    correlation_id: Mapped[str | None] = mapped_column(String(200))
    reply_address: Mapped[str | None] = mapped_column(String(500))
    # validation / result
    refusal_code: Mapped[str | None] = mapped_column(String(40))
    refusal_detail: Mapped[str | None] = mapped_column(Text)
    command_id: Mapped[str | None] = mapped_column(String(64))
    dispatched_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    published_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # The signed command exactly as first sent: re-sent as is (same command id, same
    # signed deadline) until the agent's receipt, never after ``command_deadline``.
    command_payload: Mapped[str | None] = mapped_column(Text)
    command_deadline: Mapped[datetime | None] = mapped_column(UTCDateTime)
    resend_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    sends: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    cancel_sent_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    superseded_by: Mapped[str | None] = mapped_column(String(64))
    result_reason: Mapped[str | None] = mapped_column(String(40))
    result_detail: Mapped[str | None] = mapped_column(Text)
    already_in_state: Mapped[bool] = mapped_column(Boolean, default=False)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    energy_value: Mapped[float | None] = mapped_column(Float)
    energy_unit: Mapped[str | None] = mapped_column(String(16))
    energy_read_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    result_json: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    # Issue 17: the quarantine that held it (kept after release or delete), and why a
    # validated disconnect is held now (central/services/holds.py; None: not held)
    # (not a foreign key: adding one would make SQLite copy the whole orders table)
    quarantine_id: Mapped[str | None] = mapped_column(String(64))
    hold_reason: Mapped[str | None] = mapped_column(String(40))
    held_since: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # Reconnects only (issue 17): when the reconnection SLA ends, and the largest
    # fraction of it already warned about on the timeline (central/services/reconnect_sla.py)
    sla_due_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    sla_warned: Mapped[float | None] = mapped_column(Float)

    events: Mapped[list[OrderEvent]] = relationship(
        back_populates="order", order_by="OrderEvent.id", lazy="raise_on_sql"
    )

    # Compare-and-set on the state: every ORM UPDATE of an order carries
    # ``WHERE state = <the state it was read in>`` (the state is the "version", set by
    # the application, hence no generator). A write from a stale read (e.g. a cancel of
    # an order another session dispatched meanwhile) matches no row and raises
    # ``sqlalchemy.orm.exc.StaleDataError`` instead of overwriting the newer state;
    # callers map it to ``central.errors.Conflict`` (see ``central.db.stale_to_conflict``).
    __mapper_args__ = {"version_id_col": state, "version_id_generator": False}

    @property
    def outcome(self) -> str | None:
        """How it ended (connected ... rejected), also once reported; None while it runs."""
        return outcome_of(self.final_state)


class OrderEvent(Base):
    """One line of an order's timeline: what happened, when, in which step, by whom."""

    __tablename__ = "order_events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    order_id: Mapped[str] = mapped_column(String(64), ForeignKey("orders.id"), index=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    step: Mapped[int] = mapped_column(Integer)
    actor: Mapped[str] = mapped_column(String(100))
    event: Mapped[str] = mapped_column(String(40))
    from_state: Mapped[str | None] = mapped_column(String(32))
    to_state: Mapped[str | None] = mapped_column(String(32))
    detail: Mapped[str] = mapped_column(Text, default="")

    order: Mapped[Order] = relationship(back_populates="events", lazy="raise_on_sql")


class WorkOrder(Base):
    """A field visit: for an order that could not be done remotely (step 10, kind
    ``order``), or for what a meter's relay did on its own (issue 16: kind ``tamper``,
    ``welded_relay`` or ``drift``, with the alarm that raised it and no order)."""

    __tablename__ = "work_orders"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    order_id: Mapped[str | None] = mapped_column(
        String(64), ForeignKey("orders.id"), unique=True
    )
    kind: Mapped[str] = mapped_column(String(16), default="order", server_default="order")
    alarm_id: Mapped[int | None] = mapped_column(Integer)
    meter_id: Mapped[str] = mapped_column(String(64), index=True)
    concentrator_id: Mapped[str | None] = mapped_column(String(64), index=True)
    action: Mapped[str] = mapped_column(String(16))
    reason: Mapped[str] = mapped_column(String(40))
    detail: Mapped[str] = mapped_column(Text, default="")
    last_relay_state: Mapped[str] = mapped_column(String(16), default="unknown")
    status: Mapped[str] = mapped_column(String(16), default="open", index=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    closed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    closed_by: Mapped[str | None] = mapped_column(String(100))
    technician_outcome: Mapped[str | None] = mapped_column(String(40))
    notes: Mapped[str | None] = mapped_column(Text)
    # copied from the meter when the work order is created: where the crew goes
    service_address: Mapped[str | None] = mapped_column(String(300))
    comuna: Mapped[str | None] = mapped_column(String(100))
    region: Mapped[str | None] = mapped_column(String(100))
    latitude: Mapped[float | None] = mapped_column(Float)
    longitude: Mapped[float | None] = mapped_column(Float)
    customer_ref: Mapped[str | None] = mapped_column(String(100))
    access_notes: Mapped[str | None] = mapped_column(Text)

    order: Mapped[Order | None] = relationship(lazy="raise_on_sql")


# last_error prefix of an outbox row whose delivery was given up (see central/soap/notifier.py)
LEGACY_GIVEN_UP = "given up: "


class LegacyNotification(Base):
    """Outbox for step 9: one row per ended order, written in the same transaction
    as the final state. The SOAP gateway's notifier consumes it (see docs/central.md)."""

    __tablename__ = "legacy_notifications"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    order_id: Mapped[str] = mapped_column(String(64), ForeignKey("orders.id"), unique=True)
    final_state: Mapped[str] = mapped_column(String(32))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    delivered_at: Mapped[datetime | None] = mapped_column(UTCDateTime, index=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    last_error: Mapped[str | None] = mapped_column(Text)

    order: Mapped[Order] = relationship(lazy="raise_on_sql")


class RejectedMessage(Base):
    """An agent message the coordinator could not accept (malformed, over its size limit,
    or published on another concentrator's topic), kept for the audit trail: the broker
    has it acknowledged, so this row is the only copy (payload cut at 64 kB)."""

    __tablename__ = "rejected_messages"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    received_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)
    topic: Mapped[str] = mapped_column(String(300))
    concentrator_id: Mapped[str | None] = mapped_column(String(64), index=True)  # from the topic
    order_id: Mapped[str | None] = mapped_column(String(64), index=True)  # if one could be read
    reason: Mapped[str] = mapped_column(Text)
    size: Mapped[int] = mapped_column(Integer)  # of the whole payload
    payload: Mapped[bytes] = mapped_column(LargeBinary)


class ProtectionChange(Base):
    """A request to remove a protection (clear a meter's protected-customer flag, Ley
    21.304): it takes effect only when a second person (approver, not the requester)
    approves it. The row is the audit record of who asked, who decided and when."""

    __tablename__ = "protection_changes"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    meter_id: Mapped[str] = mapped_column(String(64), ForeignKey("meters.id"), index=True)
    change: Mapped[str] = mapped_column(String(40))  # clear_protected_customer
    state: Mapped[str] = mapped_column(String(16), index=True)  # pending, approved
    requested_by: Mapped[str] = mapped_column(String(100))
    requested_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    decided_by: Mapped[str | None] = mapped_column(String(100))
    decided_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class Quarantine(Base):
    """Disconnects the anomaly detector held (central/services/anomaly.py): one row per
    tripped scope (a source, a concentrator, a comuna, a region, the fleet) while it is
    open; later disconnects over the same scope's limit join it. A second person (role
    approver, who placed none of its orders) releases or deletes it."""

    __tablename__ = "quarantines"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    scope_kind: Mapped[str] = mapped_column(String(16))  # source|concentrator|comuna|region|fleet
    scope_value: Mapped[str] = mapped_column(String(200))
    state: Mapped[str] = mapped_column(String(16), index=True)  # open, released, deleted
    opened_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)
    window_s: Mapped[int] = mapped_column(Integer)
    counted: Mapped[int] = mapped_column(Integer)  # in the window when it tripped, new included
    threshold: Mapped[int] = mapped_column(Integer)  # the limit it went over
    configured_limit: Mapped[int] = mapped_column(Integer)
    baseline: Mapped[float | None] = mapped_column(Float)  # mean of the same weekday/hour
    orders: Mapped[int] = mapped_column(Integer, default=0)  # held in it (joined included)
    detail: Mapped[str] = mapped_column(Text, default="")
    decided_by: Mapped[str | None] = mapped_column(String(100))
    decided_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    decision_note: Mapped[str | None] = mapped_column(Text)


class Hold(Base):
    """An operator's declared hold on disconnects (emergency, weather) over a region, a
    comuna or a concentrator, from ``starts_at`` until ``ends_at`` or until an operator
    ends it early (``ended_at``). Held disconnects wait; reconnects never do."""

    __tablename__ = "holds"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    kind: Mapped[str] = mapped_column(String(16))  # emergency, weather
    scope_kind: Mapped[str] = mapped_column(String(16))  # region, comuna, concentrator
    scope_value: Mapped[str] = mapped_column(String(200))
    reason: Mapped[str] = mapped_column(Text)
    starts_at: Mapped[datetime] = mapped_column(UTCDateTime)
    ends_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
    created_by: Mapped[str] = mapped_column(String(100))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    ended_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    ended_by: Mapped[str | None] = mapped_column(String(100))
# --------------------------------------------------------------------------- issue 16


class RelayReportRow(Base):
    """One accepted :class:`shared.contracts.RelayReport`, by the agent's key: a copy
    (QoS 1, or the outbox sending again before our ack) is recognised and changes nothing."""

    __tablename__ = "relay_reports"

    report_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    concentrator_id: Mapped[str] = mapped_column(String(64), index=True)
    meter_id: Mapped[str] = mapped_column(String(64), index=True)
    trigger: Mapped[str] = mapped_column(String(16))
    order_id: Mapped[str | None] = mapped_column(String(64))
    observed_at: Mapped[datetime] = mapped_column(UTCDateTime)
    received_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)
    events: Mapped[int] = mapped_column(Integer, default=0)  # log entries it carried
    summary: Mapped[str] = mapped_column(Text, default="")


class RelayObservation(Base):
    """The relay (and energy) of one meter as read at one moment: from an order's
    result, an audit, or the read that follows an order or a log poll."""

    __tablename__ = "relay_observations"
    __table_args__ = (Index("ix_relay_observations_meter_at", "meter_id", "observed_at"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    meter_id: Mapped[str] = mapped_column(String(64))
    observed_at: Mapped[datetime] = mapped_column(UTCDateTime)
    source: Mapped[str] = mapped_column(String(16))  # order | audit | after_order | log_poll
    relay_state: Mapped[str] = mapped_column(String(16))  # connected | disconnected | armed
    output_state: Mapped[bool | None] = mapped_column(Boolean)
    control_mode: Mapped[int | None] = mapped_column(Integer)
    energy_wh: Mapped[float | None] = mapped_column(Float)
    report_id: Mapped[str | None] = mapped_column(String(64))
    order_id: Mapped[str | None] = mapped_column(String(64))


class RelayEvent(Base):
    """A line of a meter's relay history: a disconnector log entry (``log_index`` and
    ``code`` set; unique per meter and index), or what the coordinator concluded
    (``drift``, ``button_press``, ``unexplained_open``, ``energy_after_disconnect``)."""

    __tablename__ = "relay_events"
    __table_args__ = (
        Index("ux_relay_events_meter_index", "meter_id", "log_index", unique=True),
        Index("ix_relay_events_meter_at", "meter_id", "at"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    meter_id: Mapped[str] = mapped_column(String(64))
    concentrator_id: Mapped[str | None] = mapped_column(String(64))
    at: Mapped[datetime] = mapped_column(UTCDateTime)
    kind: Mapped[str] = mapped_column(String(32), index=True)
    log_index: Mapped[int | None] = mapped_column(Integer)
    code: Mapped[int | None] = mapped_column(Integer)
    from_state: Mapped[str | None] = mapped_column(String(16))
    to_state: Mapped[str | None] = mapped_column(String(16))
    order_id: Mapped[str | None] = mapped_column(String(64))  # the order that explains it
    report_id: Mapped[str | None] = mapped_column(String(64))
    firmware_version: Mapped[str | None] = mapped_column(String(64))
    incident_id: Mapped[int | None] = mapped_column(Integer, index=True)
    detail: Mapped[str] = mapped_column(Text, default="")


class RelayAlarm(Base):
    """Something a person must look at: a tamper/bypass, a welded relay, a relay that
    closed on a meter that should be off, a protected customer seen disconnected
    (``urgent``). Open until acknowledged and closed by an operator."""

    __tablename__ = "relay_alarms"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    meter_id: Mapped[str] = mapped_column(String(64), index=True)
    concentrator_id: Mapped[str | None] = mapped_column(String(64))
    kind: Mapped[str] = mapped_column(String(32))
    severity: Mapped[str] = mapped_column(String(16))  # urgent | high | normal
    status: Mapped[str] = mapped_column(String(16), default="open", index=True)
    raised_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    last_seen_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    detail: Mapped[str] = mapped_column(Text, default="")
    event_id: Mapped[int | None] = mapped_column(Integer)
    work_order_id: Mapped[int | None] = mapped_column(Integer)
    order_id: Mapped[str | None] = mapped_column(String(64))  # a reconnect proposed for it
    acknowledged_by: Mapped[str | None] = mapped_column(String(100))
    acknowledged_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    closed_by: Mapped[str | None] = mapped_column(String(100))
    closed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class RelayIncident(Base):
    """Unexplained relay openings on one concentrator (or one firmware version) close
    together in time, as one thing an operator acts on."""

    __tablename__ = "relay_incidents"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    group_kind: Mapped[str] = mapped_column(String(16))  # concentrator | firmware
    group_key: Mapped[str] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(16), default="open", index=True)
    opened_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    first_event_at: Mapped[datetime] = mapped_column(UTCDateTime)
    last_event_at: Mapped[datetime] = mapped_column(UTCDateTime)
    meters: Mapped[int] = mapped_column(Integer, default=0)
    acknowledged_by: Mapped[str | None] = mapped_column(String(100))
    acknowledged_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    closed_by: Mapped[str | None] = mapped_column(String(100))
    closed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    restore_batch_id: Mapped[str | None] = mapped_column(String(64))
    restore_requested_by: Mapped[str | None] = mapped_column(String(100))
    notes: Mapped[str] = mapped_column(Text, default="")


class DeviceEventNotification(Base):
    """Outbox of unsolicited relay changes for Legacy (CIM EndDeviceEvents not caused
    by an order), consumed by the SOAP gateway's notifier like ``legacy_notifications``."""

    __tablename__ = "legacy_device_events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    event_id: Mapped[int] = mapped_column(Integer, unique=True)  # relay_events.id
    meter_id: Mapped[str] = mapped_column(String(64))
    relay_state: Mapped[str] = mapped_column(String(16))
    at: Mapped[datetime] = mapped_column(UTCDateTime)
    cause: Mapped[str] = mapped_column(String(200), default="")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    delivered_at: Mapped[datetime | None] = mapped_column(UTCDateTime, index=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    last_error: Mapped[str | None] = mapped_column(Text)
