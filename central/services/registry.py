"""Registry of concentrators and meters (step 3's reference data).

Every change to a concentrator's meters bumps its ``table_generation``; the
dispatcher pushes the signed table to the agent (retained) when the pushed
generation lags behind.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Annotated, Literal

from pydantic import BaseModel, Field, ValidationError
from sqlalchemy import select
from sqlalchemy.orm import Session

from central.errors import BadRequest, NotFound
from central.models import Concentrator, Meter, Order
from central.services.lifecycle import note, utcnow
from central.services.orders import stop_protected_disconnects
from central.state import ACTIVE_STATES, IN_FLIGHT_STATES, OrderState
from shared import topics
from shared.contracts import MeterEntry, MeterTableSync, validate
from shared.errors import InvalidPayload

_TRUE = {"1", "true", "yes", "y", "si", "sí", "t"}
_FALSE = {"0", "false", "no", "n", "f", ""}


# The bounds of ``shared.contracts.MeterEntry`` and of MQTT topic segments, checked when a
# meter is written, so that a bad value is refused by name at import or PATCH instead of
# leaving the meter silently out of its concentrator's table (or out of any topic).
# (pydantic matches with Rust's regex, where "$" is the end of the text.)
RegistryId = Annotated[
    str,
    Field(
        min_length=1,
        max_length=topics.IDENTIFIER_MAX_LENGTH,
        pattern=f"^{topics.IDENTIFIER_CHARS}$",
    ),
]
HdlcAddress = Annotated[int, Field(ge=16, le=0x3FFD)]
Host = Annotated[str, Field(min_length=1, max_length=253)]
Port = Annotated[int, Field(ge=1, le=65535)]
LogicalServer = Annotated[int, Field(ge=1, le=0x3FFF)]
KeysRef = Annotated[str, Field(min_length=1, max_length=64)]


class MeterFields(BaseModel):
    """Writable meter fields (CSV row, REST body)."""

    id: RegistryId
    concentrator_id: RegistryId | None = None
    topology: Literal["concentrated", "point_to_point"] = "concentrated"
    transport: Literal["hdlc", "tcp"] = "hdlc"
    line_id: RegistryId | None = None
    hdlc_address: HdlcAddress | None = None
    host: Host | None = None
    port: Port | None = None
    logical_server: LogicalServer = 1
    keys_ref: KeysRef | None = None
    commissioned: bool = True
    protected_customer: bool = False


class MeterChange(BaseModel):
    """A partial change (REST PATCH): only the fields given are written."""

    concentrator_id: RegistryId | None = None
    topology: Literal["concentrated", "point_to_point"] | None = None
    transport: Literal["hdlc", "tcp"] | None = None
    line_id: RegistryId | None = None
    hdlc_address: HdlcAddress | None = None
    host: Host | None = None
    port: Port | None = None
    logical_server: LogicalServer | None = None
    keys_ref: KeysRef | None = None
    commissioned: bool | None = None
    protected_customer: bool | None = None


@dataclass
class ImportReport:
    created: int = 0
    updated: int = 0
    concentrators_created: int = 0
    errors: list[str] = field(default_factory=list)


def _bump(session: Session, concentrator_id: str | None) -> None:
    if concentrator_id is None:
        return
    row = session.get(Concentrator, concentrator_id)
    if row is not None:
        row.table_generation += 1


def _meter_written(session: Session, row: Meter, old: str | None) -> None:
    """After a meter row was written (``old``: its concentrator before): its
    concentrator's table is stale, and on a move the old one's too, and the meter's
    orders follow it (:func:`follow_meter_move`)."""
    if old != row.concentrator_id:
        _bump(session, old)
        follow_meter_move(session, row.id, old, row.concentrator_id)
    _bump(session, row.concentrator_id)


def follow_meter_move(
    session: Session, meter_id: str, old: str | None, new: str | None
) -> int:
    """The meter now hangs from ``new``: its orders not yet dispatched go there; one in
    flight on ``old`` stays there (the old agent may already be switching) and is sent
    to ``new`` only if ``old`` answers that the meter is not in its table (see
    ``central.services.results``). Every order touched gets a timeline line.
    Returns how many orders were re-routed. Does not commit."""
    now = utcnow()
    actor = "central"
    moved = 0
    for order in session.scalars(
        select(Order).where(
            Order.meter_id == meter_id,
            Order.state.in_([s.value for s in ACTIVE_STATES]),
        )
    ):
        if OrderState(order.state) in IN_FLIGHT_STATES:
            note(
                session,
                order,
                "meter_moved",
                actor,
                f"meter moved from concentrator {old} to {new} while this order is on "
                f"{order.concentrator_id}: that agent's result decides; if it no longer "
                f"has the meter, the order is sent to {new}",
                step=3,
                at=now,
            )
            continue
        order.concentrator_id = new
        detail = (
            f"meter moved from concentrator {old} to {new}: the order will go to {new}"
            if new is not None
            else f"meter unlinked from concentrator {old}: the order waits until it is "
            "linked again, or expires into a field work order"
        )
        note(session, order, "rerouted", actor, detail, step=3, at=now)
        order.updated_at = now
        moved += 1
    return moved


def ensure_concentrator(
    session: Session, concentrator_id: str, name: str = ""
) -> tuple[Concentrator, bool]:
    row = session.get(Concentrator, concentrator_id)
    if row is not None:
        return row, False
    row = Concentrator(id=concentrator_id, name=name or concentrator_id, table_generation=1)
    session.add(row)
    session.flush()
    return row, True


def set_concentrator_decommissioned(
    session: Session, concentrator_id: str, value: bool
) -> Concentrator:
    row = get_concentrator(session, concentrator_id)
    row.decommissioned = value
    return row


def get_concentrator(session: Session, concentrator_id: str) -> Concentrator:
    row = session.get(Concentrator, concentrator_id)
    if row is None:
        raise NotFound(f"concentrator {concentrator_id} does not exist")
    return row


def list_concentrators(session: Session) -> list[Concentrator]:
    return list(session.scalars(select(Concentrator).order_by(Concentrator.id)))


def get_meter(session: Session, meter_id: str) -> Meter:
    row = session.get(Meter, meter_id)
    if row is None:
        raise NotFound(f"meter {meter_id} does not exist")
    return row


def list_meters(
    session: Session, *, concentrator_id: str | None = None, limit: int = 1000, offset: int = 0
) -> list[Meter]:
    query = select(Meter)
    if concentrator_id:
        query = query.where(Meter.concentrator_id == concentrator_id)
    return list(session.scalars(query.order_by(Meter.id).limit(min(limit, 100_000)).offset(offset)))


def upsert_meter(
    session: Session, fields: MeterFields, report: ImportReport | None = None
) -> Meter:
    report = report if report is not None else ImportReport()
    if fields.concentrator_id:
        _, created = ensure_concentrator(session, fields.concentrator_id)
        report.concentrators_created += int(created)
    row = session.get(Meter, fields.id)
    values = fields.model_dump()
    if row is None:
        row = Meter(**values)
        session.add(row)
        report.created += 1
        old = row.concentrator_id
    else:
        old = row.concentrator_id
        for name, value in values.items():
            setattr(row, name, value)
        report.updated += 1
    _meter_written(session, row, old)
    if row.protected_customer:
        session.flush()
        stop_protected_disconnects(session, [row.id])
    return row


def change_meter(session: Session, meter_id: str, change: MeterChange) -> Meter:
    row = get_meter(session, meter_id)
    values = change.model_dump(exclude_unset=True)
    old = row.concentrator_id
    if values.get("concentrator_id"):
        ensure_concentrator(session, values["concentrator_id"])
    for name, value in values.items():
        setattr(row, name, value)
    _meter_written(session, row, old)
    session.flush()
    if row.protected_customer:
        stop_protected_disconnects(session, [row.id])
    return row


def _flag(value: str, column: str, line: int) -> bool:
    lowered = value.strip().lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise BadRequest(f"line {line}: {column} must be true/false, got {value!r}")


def import_meters_csv(session: Session, text: str) -> ImportReport:
    """Create or update meters from CSV with a header row.

    Columns: ``meter_id`` (required), ``concentrator_id``, ``topology``, ``transport``,
    ``line_id``, ``hdlc_address``, ``host``, ``port``, ``logical_server``, ``keys_ref``,
    ``commissioned``, ``protected_customer``. Unknown concentrators are created.
    A bad row is reported and skipped; the others are imported. Does not commit.
    """
    reader = csv.DictReader(io.StringIO(text))
    if reader.fieldnames is None or "meter_id" not in reader.fieldnames:
        raise BadRequest("CSV needs a header row with at least a meter_id column")
    report = ImportReport()
    for line, raw in enumerate(reader, start=2):
        row = {k.strip(): (v or "").strip() for k, v in raw.items() if k}
        try:
            data: dict[str, object] = {"id": row.pop("meter_id")}
            for column in ("commissioned", "protected_customer"):
                if column in row:
                    data[column] = _flag(row.pop(column), column, line)
            for column, value in row.items():
                if value != "":
                    data[column] = value
            fields = MeterFields.model_validate(data)
        except (BadRequest, ValidationError) as exc:
            report.errors.append(f"line {line}: {exc}".replace("\n", " ")[:500])
            continue
        upsert_meter(session, fields, report)
    session.flush()
    return report


def meter_entry(meter: Meter) -> MeterEntry | None:
    try:
        return validate(
            MeterEntry,
            {
                "meter_id": meter.id,
                "transport": meter.transport,
                "line_id": meter.line_id,
                "hdlc_address": meter.hdlc_address,
                "host": meter.host,
                "port": meter.port,
                "logical_server": meter.logical_server,
                "commissioned": meter.commissioned,
                "keys_ref": meter.keys_ref,
                "protected_customer": bool(meter.protected_customer),  # None before a flush
            },
        )
    except InvalidPayload:
        return None  # incomplete or out-of-range address: the agent cannot use it anyway


def build_meter_table(
    session: Session, concentrator_id: str, command_id: str, *, now: datetime | None = None
) -> MeterTableSync:
    now = now or utcnow()
    concentrator = get_concentrator(session, concentrator_id)
    entries = [
        e
        for m in list_meters(session, concentrator_id=concentrator_id, limit=100_000)
        if (e := meter_entry(m))
    ]
    return MeterTableSync(
        command_id=command_id,
        concentrator_id=concentrator_id,
        generation=concentrator.table_generation,
        issued_at=now,
        deadline=now + timedelta(days=3650),
        meters=entries,
    )
