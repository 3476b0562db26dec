"""Step 3: may this order be sent? Every refusal has a code and a message."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, timedelta
from enum import StrEnum
from functools import lru_cache
from typing import Protocol
from zoneinfo import ZoneInfo

import holidays

from central.settings import Settings
from shared.codes import Action, OrderReason


class RefusalCode(StrEnum):
    UNKNOWN_METER = "unknown_meter"
    NOT_COMMISSIONED = "not_commissioned"
    NO_CONCENTRATOR = "no_concentrator"
    UNKNOWN_CONCENTRATOR = "unknown_concentrator"
    CONCENTRATOR_DECOMMISSIONED = "concentrator_decommissioned"
    PROTECTED_CUSTOMER = "protected_customer"
    NOT_WORKING_DAY = "not_working_day"
    MORATORIUM = "moratorium"
    METER_BUSY = "meter_busy"
    UNSUPPORTED_ACTION = "unsupported_action"
    INVALID_REQUEST = "invalid_request"


class MeterLike(Protocol):
    """What validation reads of a meter (an ORM ``Meter`` or a row of its columns)."""

    @property
    def id(self) -> str: ...
    @property
    def concentrator_id(self) -> str | None: ...
    @property
    def commissioned(self) -> bool: ...
    @property
    def protected_customer(self) -> bool: ...


class ConcentratorLike(Protocol):
    @property
    def id(self) -> str: ...
    @property
    def decommissioned(self) -> bool: ...


@dataclass(frozen=True)
class Refusal:
    code: RefusalCode
    message: str


@lru_cache(maxsize=8)
def _holidays(country: str) -> holidays.HolidayBase:
    return holidays.country_holidays(country)


@lru_cache(maxsize=1024)  # asked per order on the hot path; a day's answer never changes
def is_working_day(day: date, country: str = "CL") -> bool:
    return day.weekday() < 5 and day not in _holidays(country)


def end_of_local_day(moment: datetime, timezone: str) -> datetime:
    """The next local midnight after ``moment`` (an aware datetime in the same zone)."""
    zone = ZoneInfo(timezone)
    local = moment.astimezone(zone)
    following = local.date() + timedelta(days=1)
    return datetime(following.year, following.month, following.day, tzinfo=zone)


def local_day(moment: datetime, timezone: str) -> date:
    return moment.astimezone(ZoneInfo(timezone)).date()


def in_moratorium(day: date, settings: Settings) -> bool:
    if settings.nonpayment_moratorium_active:
        return True
    return any(w.start <= day <= w.end for w in settings.nonpayment_moratorium)


def check(
    meter_id: str,
    action: Action,
    reason: OrderReason,
    special: bool,
    meter: MeterLike | None,
    concentrator: ConcentratorLike | None,
    settings: Settings,
    now: datetime,
) -> Refusal | None:
    """The first rule this order breaks, or None. Pure: the caller loads the rows."""
    if meter is None:
        return Refusal(RefusalCode.UNKNOWN_METER, f"meter {meter_id} is not registered")
    if action is Action.DISCONNECT and meter.protected_customer:
        return Refusal(
            RefusalCode.PROTECTED_CUSTOMER,
            f"meter {meter_id} supplies a registered electro-dependent patient "
            "(Ley 21.304): disconnection is never allowed",
        )
    if not meter.commissioned:
        return Refusal(RefusalCode.NOT_COMMISSIONED, f"meter {meter_id} is not commissioned")
    if meter.concentrator_id is None:
        return Refusal(
            RefusalCode.NO_CONCENTRATOR, f"meter {meter_id} is not linked to a concentrator"
        )
    if concentrator is None:
        return Refusal(
            RefusalCode.UNKNOWN_CONCENTRATOR,
            f"concentrator {meter.concentrator_id} of meter {meter_id} is not registered",
        )
    if concentrator.decommissioned:
        return Refusal(
            RefusalCode.CONCENTRATOR_DECOMMISSIONED,
            f"concentrator {concentrator.id} of meter {meter_id} is decommissioned",
        )
    if action is Action.DISCONNECT:
        day = local_day(now, settings.timezone)
        if not special and not is_working_day(day, settings.holiday_country):
            return Refusal(
                RefusalCode.NOT_WORKING_DAY,
                f"{day.isoformat()} is not a working day in {settings.holiday_country}; "
                "disconnects need the special flag",
            )
        if reason is OrderReason.NON_PAYMENT and in_moratorium(day, settings):
            return Refusal(
                RefusalCode.MORATORIUM,
                f"non-payment disconnects are suspended on {day.isoformat()} (moratorium)",
            )
    return None
