"""Reading standard EndDeviceControls requests into the neutral dataclasses.

Everything a standard request may carry is either used or answered with a coded
Reply Error (:class:`MessageRefused` for the whole message, an :class:`Item` outcome
for one meter); nothing standard-valid ends in a schema Fault.
"""

from __future__ import annotations

import base64
import binascii
import gzip
import hashlib
import io
import re
import zlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from lxml import etree

from central.soap.cim import (
    CONTROL_CODES,
    EDC,
    EDCM,
    GEDC,
    GEDCM,
    REASONS,
    Envelope,
    now_utc,
    parse_dt,
    text,
    validate,
)
from central.soap.faults import SoapFault
from central.soap.service_port import (
    CancelRequest,
    ControlAction,
    ControlRequest,
    ItemOutcome,
    OrderQuery,
    Refusal,
)
from central.soap.xmlsafe import XmlLimits, parse_request

SPECIAL_OPTIONS = ("special", "weekendAllowed", "allowNonWorkingDay")
PRIORITY_OPTION = "priority"
CORRELATION_ID_TYPES = ("correlationid", "correlation")
TRACKING_ID_TYPES = ("issuertrackingid",)
RANDOMISED = ("start", "startAndEnd")


class MessageRefused(Exception):
    """The whole message is refused: a Reply FAILED with one coded Error."""

    def __init__(self, refusal: Refusal, detail: str) -> None:
        super().__init__(detail)
        self.refusal = refusal
        self.detail = detail


@dataclass(frozen=True)
class ReadOptions:
    """How the gateway reads requests (from SoapSettings)."""

    meter_name_type: str = "MeterNumber"
    limits: XmlLimits = field(
        default_factory=lambda: XmlLimits(max_bytes=1024 * 1024, max_depth=40, max_elements=50_000)
    )


@dataclass
class Item:
    """One meter of the request, ready for the service or already refused."""

    meter_id: str | None
    control_index: int
    request: ControlRequest | None = None
    outcome: ItemOutcome | None = None


# --------------------------------------------------------------------------- meters


def meter_of(device: etree._Element, ns: str, name_type: str) -> str | None:
    """Meter number of an EndDevice: mRID, else a Names/name of the configured
    NameType (or of no NameType), else serialNumber."""
    mrid = text(device, f"{{{ns}}}mRID")
    if mrid:
        return mrid
    for name in device.iterchildren(f"{{{ns}}}Names"):
        value = text(name, f"{{{ns}}}name")
        kind = text(next(name.iterchildren(f"{{{ns}}}NameType"), None), f"{{{ns}}}name")
        if value and (kind is None or kind == name_type):
            return value
    return text(device, f"{{{ns}}}serialNumber")


def _meters(parent: etree._Element, ns: str, tag: str, name_type: str) -> list[str | None]:
    return [meter_of(device, ns, name_type) for device in parent.iterchildren(f"{{{ns}}}{tag}")]


# --------------------------------------------------------------------------- payload


def _decompress(raw: str, limits: XmlLimits) -> etree._Element:
    try:
        packed = base64.b64decode(re.sub(r"\s+", "", raw), validate=True)
        data = gzip.GzipFile(fileobj=io.BytesIO(packed)).read(limits.max_bytes + 1)
    except (binascii.Error, OSError, EOFError, zlib.error) as exc:
        raise MessageRefused(
            Refusal.UNSUPPORTED_PAYLOAD, f"Payload/Compressed is not base64 gzip: {exc}"
        ) from exc
    if len(data) > limits.max_bytes:
        raise MessageRefused(
            Refusal.UNSUPPORTED_PAYLOAD,
            f"Payload/Compressed unpacks to more than {limits.max_bytes} bytes",
        )
    try:
        root = parse_request(data, limits)
        if root.tag != f"{{{EDC}}}EndDeviceControls":
            raise MessageRefused(
                Refusal.UNSUPPORTED_PAYLOAD,
                f"Payload/Compressed holds {root.tag}, not EndDeviceControls",
            )
        validate(root)
    except SoapFault as fault:
        raise MessageRefused(
            Refusal.UNSUPPORTED_PAYLOAD, f"Payload/Compressed: {fault.message}"
        ) from fault
    return root


def controls_of(env: Envelope, limits: XmlLimits) -> list[etree._Element]:
    """The EndDeviceControl elements of the payload (Format / Compressed /
    OperationSet handled: unsupported forms are refused with a coded Error)."""
    payload = env.message.find(f"{{{EDCM}}}Payload")
    if payload is None:
        return []
    fmt = text(payload, f"{{{EDCM}}}Format")
    if fmt is not None and fmt.upper() != "XML":
        raise MessageRefused(
            Refusal.UNSUPPORTED_PAYLOAD, f"Payload/Format '{fmt}' is not supported (only XML)"
        )
    if payload.find(f"{{{EDCM}}}OperationSet") is not None:
        raise MessageRefused(Refusal.UNSUPPORTED_PAYLOAD, "Payload/OperationSet is not supported")
    controls = list(payload.findall(f"{{{EDC}}}EndDeviceControls/{{{EDC}}}EndDeviceControl"))
    compressed = text(payload, f"{{{EDCM}}}Compressed")
    if compressed is not None:
        if controls:
            raise MessageRefused(
                Refusal.UNSUPPORTED_PAYLOAD,
                "Payload has both EndDeviceControl elements and Compressed",
            )
        controls = list(_decompress(compressed, limits).findall(f"{{{EDC}}}EndDeviceControl"))
    return controls


# --------------------------------------------------------------------------- timing


@dataclass(frozen=True)
class Timing:
    not_before: datetime | None
    deadline: datetime | None
    randomise: bool


def timing_of(control: etree._Element) -> Timing:
    """primaryDeviceTiming: interval start = not before, end = deadline (or start +
    duration); durationIndefinite = no deadline; randomisation start/startAndEnd
    spreads the start over the first half of the interval."""
    node = control.find(f"{{{EDC}}}primaryDeviceTiming")
    if node is None:
        return Timing(None, None, False)
    try:
        start = parse_dt(text(node, f"{{{EDC}}}interval/{{{EDC}}}start"))
        end = parse_dt(text(node, f"{{{EDC}}}interval/{{{EDC}}}end"))
    except ValueError as exc:
        raise _ItemProblem(Refusal.MISSING_DATA, f"primaryDeviceTiming: {exc}") from exc
    duration = text(node, f"{{{EDC}}}duration")
    indefinite = (text(node, f"{{{EDC}}}durationIndefinite") or "") in ("true", "1")
    if end is None and duration is not None and not indefinite:
        try:
            end = (start or now_utc()) + timedelta(minutes=float(duration))
        except (ValueError, OverflowError) as exc:  # xs:float allows INF, NaN, 1e38
            raise _ItemProblem(
                Refusal.MISSING_DATA, f"primaryDeviceTiming duration '{duration}': {exc}"
            ) from exc
    if indefinite:
        end = None
    if start and end and end <= start:
        raise _ItemProblem(
            Refusal.MISSING_DATA, "primaryDeviceTiming interval end is not after its start"
        )
    randomise = text(node, f"{{{EDC}}}randomisation") in RANDOMISED
    return Timing(start, end, randomise and start is not None and end is not None)


def spread(timing: Timing, key: str) -> datetime | None:
    """This meter's not-before under randomisation: stable per (message, meter), so a
    re-run of the same request computes the same time."""
    if not timing.randomise or timing.not_before is None or timing.deadline is None:
        return timing.not_before
    fraction = int(hashlib.sha256(key.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF
    window = (timing.deadline - timing.not_before) / 2
    return timing.not_before + window * fraction


class _ItemProblem(Exception):
    def __init__(self, refusal: Refusal, detail: str) -> None:
        super().__init__(detail)
        self.refusal = refusal
        self.detail = detail


# --------------------------------------------------------------------------- create


def _flag(options: dict[str, str], names: Iterable[str]) -> bool:
    return any(options.get(name, "").strip().lower() in ("true", "1", "yes") for name in names)


def _reason_key(raw: str) -> str:
    return re.sub(r"[^a-z]", "", raw.lower())


def _idempotency_key(message_id: str | None, index: int, meter: str) -> str | None:
    if not message_id:
        return None
    digest = hashlib.sha256(f"{message_id}\x00{index}\x00{meter}".encode()).hexdigest()
    return f"soap:{digest[:48]}"


def _priority(raw: str | None) -> int | None:
    if raw is None or not raw.strip():
        return None
    try:
        value = int(raw)
    except ValueError:
        raise _ItemProblem(Refusal.MISSING_DATA, f"priority '{raw}' is not a number") from None
    if not 0 <= value <= 9:
        raise _ItemProblem(Refusal.MISSING_DATA, f"priority {value} is not between 0 and 9")
    return value


def _action_and_reason(control: etree._Element) -> tuple[ControlAction, str]:
    code_node = control.find(f"{{{EDC}}}EndDeviceControlType")
    code = code_node.get("ref") if code_node is not None else None
    action = CONTROL_CODES.get(code or "")
    if action is None:
        raise _ItemProblem(
            Refusal.UNSUPPORTED_CONTROL,
            f"EndDeviceControlType '{code}' is not one of "
            + ", ".join(f"{c} ({a.value})" for c, a in CONTROL_CODES.items())
            if code
            else "EndDeviceControlType has no ref (a control code is needed to create)",
        )
    raw_reason = text(control, f"{{{EDC}}}reason")
    if raw_reason is None:
        if action is ControlAction.DISCONNECT:
            raise _ItemProblem(Refusal.MISSING_DATA, "a disconnect needs a reason")
        return action, "payment_restored"
    reason = REASONS.get(_reason_key(raw_reason))
    if reason is None:
        raise _ItemProblem(Refusal.UNSUPPORTED_REASON, f"reason '{raw_reason}' is not supported")
    return action, reason


def read_create(env: Envelope, correlation_id: str, options: ReadOptions) -> list[Item]:
    controls = controls_of(env, options.limits)
    if not controls:
        raise MessageRefused(
            Refusal.MISSING_DATA,
            "create needs Payload/EndDeviceControls with at least one EndDeviceControl",
        )
    special = _flag(env.options, SPECIAL_OPTIONS)
    items: list[Item] = []
    seen: set[str] = set()
    for index, control in enumerate(controls):
        meters = _meters(control, EDC, "EndDevices", options.meter_name_type) or [None]
        try:
            action, reason = _action_and_reason(control)
            timing = timing_of(control)
            priority = _priority(env.legacy_priorities.get(index, env.options.get(PRIORITY_OPTION)))
            problem: _ItemProblem | None = None
        except _ItemProblem as exc:
            problem = exc
        issuer_id = text(control, f"{{{EDC}}}issuerID")  # read once for all its meters
        tracking_id = text(control, f"{{{EDC}}}issuerTrackingID")
        for meter in meters:
            item = Item(meter_id=meter, control_index=index)
            items.append(item)
            if meter is None:
                item.outcome = ItemOutcome(
                    meter_id=None,
                    refusal=Refusal.MISSING_DATA,
                    detail=f"EndDeviceControl #{index + 1}: EndDevices needs mRID, "
                    f"Names/name (NameType '{options.meter_name_type}') or serialNumber",
                )
            elif problem is not None:
                item.outcome = ItemOutcome(meter, refusal=problem.refusal, detail=problem.detail)
            elif meter in seen:
                item.outcome = ItemOutcome(
                    meter,
                    refusal=Refusal.DUPLICATE,
                    detail="the meter appears more than once in this message",
                )
            else:
                seen.add(meter)
                item.request = ControlRequest(
                    meter_id=meter,
                    action=action,
                    reason=reason,
                    issuer_id=issuer_id,
                    issuer_tracking_id=tracking_id,
                    priority=priority,
                    not_before=spread(timing, f"{env.message_id or correlation_id}/{meter}"),
                    deadline=timing.deadline,
                    special=special,
                    correlation_id=correlation_id,
                    reply_address=env.reply_address,
                    idempotency_key=_idempotency_key(env.message_id, index, meter),
                )
    return items


# --------------------------------------------------------------------------- cancel, get


def _ids(env: Envelope) -> tuple[list[str], list[str], list[str]]:
    """Request/ID split into (order mRIDs, issuerTrackingIDs, CorrelationIDs)."""
    orders: list[str] = []
    trackings: list[str] = []
    correlations: list[str] = []
    for value, id_type, kind in env.request_ids:
        wanted = (id_type or "").replace("_", "").lower()
        if wanted in CORRELATION_ID_TYPES or kind == "transaction":
            correlations.append(value)
        elif wanted in TRACKING_ID_TYPES:
            trackings.append(value)
        else:
            orders.append(value)
    return orders, trackings, correlations


def read_cancel(env: Envelope, options: ReadOptions) -> list[CancelRequest]:
    wanted: list[CancelRequest] = []
    for control in controls_of(env, options.limits):
        order_id = text(control, f"{{{EDC}}}mRID")
        tracking = text(control, f"{{{EDC}}}issuerTrackingID")
        if not (order_id or tracking):
            continue
        found = _meters(control, EDC, "EndDevices", options.meter_name_type)
        meters: list[str | None] = [m for m in found if m] or [None]
        for meter in meters:
            wanted.append(
                CancelRequest(order_id=order_id, issuer_tracking_id=tracking, meter_id=meter)
            )
    orders, trackings, _ = _ids(env)
    wanted.extend(CancelRequest(order_id=o) for o in orders)
    wanted.extend(CancelRequest(issuer_tracking_id=t) for t in trackings)
    if not wanted:
        raise MessageRefused(
            Refusal.MISSING_DATA,
            "cancel needs an EndDeviceControl with mRID or issuerTrackingID, or a Request/ID",
        )
    return wanted


def read_get(env: Envelope, options: ReadOptions) -> OrderQuery:
    orders, trackings, correlations = _ids(env)
    meters: list[str] = []
    query = env.message.find(f"{{{GEDCM}}}Request/{{{GEDC}}}GetEndDeviceControls")
    if query is not None:
        for control in query.findall(f"{{{GEDC}}}EndDeviceControl"):
            orders.extend(v for v in [text(control, f"{{{GEDC}}}mRID")] if v)
            trackings.extend(v for v in [text(control, f"{{{GEDC}}}issuerTrackingID")] if v)
        meters.extend(m for m in _meters(query, GEDC, "EndDevice", options.meter_name_type) if m)
    correlation = env.options.get("CorrelationID")
    if correlation:
        correlations.append(correlation)
    if not (trackings or orders or meters or correlations):
        raise MessageRefused(
            Refusal.MISSING_DATA,
            "get needs Request/ID (order mRID, or idType CorrelationID / issuerTrackingID) "
            "or Request/GetEndDeviceControls with an EndDeviceControl or an EndDevice",
        )
    return OrderQuery(
        issuer_tracking_ids=trackings,
        order_ids=orders,
        meter_ids=meters,
        correlation_ids=correlations,
    )
