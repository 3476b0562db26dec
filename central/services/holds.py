"""Holds (issue 17): disconnects wait, not refused, while a reason to wait lasts.

A validated disconnect is held while:

* its concentrator's last status (``ConcentratorStatus``, or its last will) says it is
  offline or its modem is down (``concentrator_offline``, ``concentrator_modem_down``;
  a concentrator that never reported is not known to be offline, as for re-sending);
* its meter's region, comuna or concentrator is under a declared hold in force
  (``emergency_hold``, ``weather_hold``: an operator gives a reason, a scope and an
  end; it ends by itself at ``ends_at`` or earlier when an operator ends it);
* its meter's supply is already off for another reason (``supply_off``): the registry's
  last known relay state (``meters.relay_state``, from the last result, work order or
  reading) is ``disconnected`` while no disconnect of ours ever completed on that meter.
  Switching it would report "disconnected" over an outage we did not cause.

Reconnects and arms are never held. Before every claim :func:`refresh` stamps ``orders.hold_reason`` and the timeline
(held, hold ended); the dispatcher's candidate query (:meth:`HoldRules.waiting`) leaves
out stamped disconnects and, read live, those of an offline concentrator or under a
declared hold, so a hold is in force from the moment it is committed. A held disconnect whose deadline
passes expires as any other; under an emergency, weather or supply-off hold it gets no
field work order (a crew would do what the hold stops).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Final

from sqlalchemy import ColumnElement, Select, and_, exists, func, or_, select
from sqlalchemy.orm import Session, aliased

from central import metrics
from central.errors import BadRequest, Conflict, NotFound
from central.models import Concentrator, Hold, Meter, Order
from central.services.lifecycle import Actor, note, utcnow
from central.settings import Settings
from central.state import HoldReason, OrderState
from shared.codes import Action, ModemState

KINDS: Final = {"emergency": HoldReason.EMERGENCY, "weather": HoldReason.WEATHER}
SCOPES: Final = ("region", "comuna", "concentrator")
_DISCONNECT: Final = Action.DISCONNECT.value
_VALIDATED: Final = OrderState.VALIDATED.value
_REFRESH_LIMIT: Final = 5000  # orders stamped per pass; the rest on the next


def declare(
    session: Session,
    actor: Actor,
    *,
    kind: str,
    scope: str,
    value: str,
    reason: str,
    ends_at: datetime,
    starts_at: datetime | None = None,
    now: datetime | None = None,
) -> Hold:
    """Declare a hold on disconnects (operator). Does not commit."""
    now = now or utcnow()
    start = starts_at or now
    if kind not in KINDS:
        raise BadRequest(f"hold kind {kind!r} is not one of {', '.join(KINDS)}")
    if scope not in SCOPES:
        raise BadRequest(f"hold scope {scope!r} is not one of {', '.join(SCOPES)}")
    if not value.strip():
        raise BadRequest(f"the hold needs the {scope} it covers")
    if not reason.strip():
        raise BadRequest("the hold needs a reason")
    if ends_at.tzinfo is None or start.tzinfo is None:
        raise BadRequest("the hold's start and end need a time zone")
    if ends_at <= max(now, start):
        raise BadRequest(f"the hold's end {ends_at.isoformat()} is not after its start and now")
    hold = Hold(
        kind=kind,
        scope_kind=scope,
        scope_value=value.strip(),
        reason=reason.strip(),
        starts_at=start,
        ends_at=ends_at,
        created_by=actor.name,
        created_at=now,
    )
    session.add(hold)
    session.flush()
    return hold


def end(session: Session, hold_id: int, actor: Actor, *, now: datetime | None = None) -> Hold:
    """End a hold early (operator). Does not commit."""
    now = now or utcnow()
    hold = session.get(Hold, hold_id)
    if hold is None:
        raise NotFound(f"hold {hold_id} does not exist")
    if hold.ended_at is not None:
        raise Conflict(f"hold {hold_id} was already ended by {hold.ended_by}")
    if hold.ends_at <= now:
        raise Conflict(f"hold {hold_id} already ended at {hold.ends_at.isoformat()}")
    hold.ended_at = now
    hold.ended_by = actor.name
    session.flush()
    return hold


def in_force(hold: Hold, now: datetime) -> bool:
    return hold.ended_at is None and hold.starts_at <= now < hold.ends_at


def list_holds(
    session: Session, *, active: bool = False, now: datetime | None = None, limit: int = 100
) -> list[Hold]:
    now = now or utcnow()
    query = select(Hold)
    if active:
        query = query.where(Hold.ended_at.is_(None), Hold.starts_at <= now, Hold.ends_at > now)
    return list(session.scalars(query.order_by(Hold.id.desc()).limit(limit)))


@dataclass
class HoldRules:
    """What holds disconnects at one moment, read once per claim."""

    concentrators: dict[str, HoldReason] = field(default_factory=dict)
    holds: list[Hold] = field(default_factory=list)
    supply_off: bool = True

    @classmethod
    def read(cls, session: Session, settings: Settings, now: datetime) -> HoldRules:
        rules = cls(supply_off=settings.hold_supply_off)
        if settings.hold_offline_concentrators:
            for conc_id, _online, modem in session.execute(
                select(Concentrator.id, Concentrator.online, Concentrator.modem).where(
                    Concentrator.status_at.is_not(None),
                    or_(Concentrator.online.is_(False), Concentrator.modem == _MODEM_DOWN),
                )
            ):
                rules.concentrators[conc_id] = (
                    HoldReason.MODEM_DOWN
                    if modem == _MODEM_DOWN
                    else HoldReason.CONCENTRATOR_OFFLINE
                )
        rules.holds = list_holds(session, active=True, now=now, limit=10_000)
        return rules

    def _declared(self, scope: str) -> list[str]:
        return [h.scope_value for h in self.holds if h.scope_kind == scope]

    def waiting(self) -> ColumnElement[bool]:
        """SQL for the dispatcher: a disconnect that must not go now. Offline concentrators
        and declared holds are read live (a hold is in force once committed); a supply
        off as :func:`refresh` stamped it just before, in the same claim (its per-row
        check costs a look-up of the meter and of its orders)."""
        live = self.clause(supply_off=False)
        stamped = and_(Order.action == _DISCONNECT, Order.hold_reason.is_not(None))
        return stamped if live is None else or_(live, stamped)

    def clause(self, *, supply_off: bool = True) -> ColumnElement[bool] | None:
        """SQL: this order is a held disconnect (None: nothing can be held now)."""
        parts: list[ColumnElement[bool]] = []
        concs = sorted(set(self.concentrators) | set(self._declared("concentrator")))
        if concs:
            # never NULL (NOT NULL is NULL: an unlinked order would never be released)
            parts.append(Order.concentrator_id.is_not(None) & Order.concentrator_id.in_(concs))
        regions, comunas = self._declared("region"), self._declared("comuna")
        if regions or comunas:
            meter = aliased(Meter)
            place = [meter.region.in_(regions)] if regions else []
            place += [meter.comuna.in_(comunas)] if comunas else []
            parts.append(Order.meter_id.in_(select(meter.id).where(or_(*place))))
        if self.supply_off and supply_off:
            parts.append(_supply_off())
        if not parts:
            return None
        return and_(Order.action == _DISCONNECT, or_(*parts))

    def reason_for(self, row: Any) -> tuple[HoldReason, str] | None:
        """Why this order (a row with concentrator_id, region, comuna, relay_state, ours)
        is held, and a sentence for its timeline; None if it is not."""
        for hold in self.holds:
            value = {"region": row.region, "comuna": row.comuna}.get(
                hold.scope_kind, row.concentrator_id
            )
            if value == hold.scope_value:
                return KINDS[hold.kind], (
                    f"{hold.kind} hold {hold.id} on {hold.scope_kind} {hold.scope_value} "
                    f"until {hold.ends_at.isoformat()}: {hold.reason}"
                )
        reason = self.concentrators.get(row.concentrator_id)
        if reason is not None:
            state = "its modem is down" if reason is HoldReason.MODEM_DOWN else "it is offline"
            return reason, f"concentrator {row.concentrator_id} reported {state}"
        if self.supply_off and row.relay_state == "disconnected" and not row.ours:
            return HoldReason.SUPPLY_OFF, (
                "the meter's last known relay state is disconnected and no disconnect of "
                "ours completed on it: its supply is already off for another reason"
            )
        return None


_MODEM_DOWN: Final = ModemState.DOWN.value


def _ours(meter_id: Any) -> ColumnElement[bool]:
    """A disconnect of ours completed on the meter ``meter_id`` (a column)."""
    done = aliased(Order)
    return exists().where(
        done.meter_id == meter_id,
        done.action == _DISCONNECT,
        # coalesce: keeps SQLite off the final_state index (thousands of completed
        # disconnects per meter looked up) and on the meter's own orders
        func.coalesce(done.final_state, "") == OrderState.COMPLETED_DISCONNECTED.value,
    )


def _supply_off() -> ColumnElement[bool]:
    """The order's meter is off for another reason: checked per order (its meter by
    key, its disconnects by meter), so the cost follows the orders waiting, not the
    number of meters whose relay is open."""
    meter = aliased(Meter)  # the stamping query joins Meter itself
    return and_(
        exists().where(meter.id == Order.meter_id, meter.relay_state == "disconnected"),
        ~_ours(Order.meter_id),
    )


def refresh(
    session: Session, settings: Settings, now: datetime, rules: HoldRules | None = None
) -> int:
    """Stamp newly held disconnects (``hold_reason``, ``held_since``, a ``held`` line) and
    clear those whose hold ended (a ``hold_ended`` line). Returns how many changed;
    flushes, does not commit."""
    rules = rules or HoldRules.read(session, settings, now)
    clause = rules.clause()
    changed = 0
    stale = select(Order).where(Order.hold_reason.is_not(None), Order.state == _VALIDATED)
    if clause is not None:
        stale = stale.where(~clause)
    for order in session.scalars(stale.limit(_REFRESH_LIMIT)):
        reason = order.hold_reason or ""
        order.hold_reason, order.held_since = None, None
        note(
            session,
            order,
            "hold_ended",
            "central",
            f"{reason} no longer holds it: it may go",
            step=4,
            at=now,
        )
        metrics.HOLDS.labels(event="released", reason=reason).inc()
        changed += 1
    if clause is not None:
        changed += _stamp(session, rules, clause, now)
    if changed:
        session.flush()
    return changed


def _stamp(session: Session, rules: HoldRules, clause: ColumnElement[bool], now: datetime) -> int:
    rows = session.execute(
        select(
            Order,
            Order.concentrator_id,
            Meter.region,
            Meter.comuna,
            Meter.relay_state,
            _ours(Order.meter_id).label("ours"),
        )
        .outerjoin(Meter, Meter.id == Order.meter_id)
        # coalesce, not IS NULL: the state index, not hold_reason's (NULL for nearly all)
        .where(Order.state == _VALIDATED, func.coalesce(Order.hold_reason, "") == "", clause)
        .limit(_REFRESH_LIMIT)
    )
    stamped = 0
    for row in rows:
        found = rules.reason_for(row)
        if found is None:  # e.g. a concentrator held by a declared hold only
            continue
        order: Order = row[0]
        order.hold_reason, order.held_since = found[0].value, now
        note(session, order, "held", "central", f"{found[0].value}: {found[1]}", step=4, at=now)
        metrics.HOLDS.labels(event="held", reason=found[0].value).inc()
        stamped += 1
    return stamped


def select_held(reason: str | None = None) -> Select[Order]:
    """Validated disconnects stamped held (by ``reason``), oldest hold first."""
    query = select(Order).where(Order.state == _VALIDATED, Order.hold_reason.is_not(None))
    if reason:
        query = query.where(Order.hold_reason == reason)
    return query.order_by(Order.held_since, Order.id)


def expiry_detail(order: Order) -> str:
    """The detail of a waiting order that expired (``dispatch.sweep_expired``)."""
    if order.state == OrderState.QUARANTINED.value:
        order.hold_reason = HoldReason.QUARANTINED.value
        return f"deadline passed in quarantine {order.quarantine_id} before a second person decided"
    if order.hold_reason:
        return f"deadline passed while held ({order.hold_reason})"
    return "deadline passed before dispatch"


__all__ = [
    "HoldRules",
    "declare",
    "end",
    "expiry_detail",
    "list_holds",
    "refresh",
    "select_held",
    "utcnow",
]
