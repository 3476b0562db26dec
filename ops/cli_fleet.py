"""``rcd meters ...`` and ``rcd workorders ...``: the registry and the field work orders
over the REST API, what an operations desk does daily (see docs/operations.md)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Final

from ops.cli import (
    EXIT_OK,
    EXIT_USAGE,
    UsageError,
    _client,
    _guard,
    _list_of,
    _short_time,
    outcome_of,
    reason_of,
)
from ops.client import ApiError
from ops.render import table

TECHNICIAN_OUTCOMES: Final = (
    "connected",
    "disconnected",
    "no_access",
    "meter_replaced",
    "meter_faulty",
    "other",
)
PLACE_FIELDS: Final = (
    ("address", "service_address"),
    ("comuna", "comuna"),
    ("region", "region"),
    ("gps", "gps"),
    ("customer", "customer_ref"),
    ("access", "access_notes"),
)


def register(
    subparsers: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser
) -> None:
    meters = subparsers.add_parser("meters", help="the meter registry")
    sub = meters.add_subparsers(dest="meters_command", metavar="ACTION")
    sub.required = True
    imp = sub.add_parser("import", parents=[common], help="import meters from a CSV file")
    imp.add_argument("file", type=Path)
    imp.set_defaults(handler=_guard(_meters_import))
    lst = sub.add_parser("list", parents=[common], help="registered meters")
    lst.add_argument("--concentrator", default=None, help="only this concentrator's meters")
    lst.add_argument("--limit", type=int, default=1000)
    lst.set_defaults(handler=_guard(_meters_list))
    show = sub.add_parser("show", parents=[common], help="one meter: link, relay, place")
    show.add_argument("meter")
    show.set_defaults(handler=_guard(_meters_show))
    history = sub.add_parser("history", parents=[common], help="a meter's orders, newest first")
    history.add_argument("meter")
    history.add_argument("--limit", type=int, default=50)
    history.set_defaults(handler=_guard(_meters_history))
    from ops import cli_relay  # issue 16: what the relay did on its own

    cli_relay.register_meter(sub, common)

    workorders = subparsers.add_parser("workorders", help="field work orders (step 10)")
    wo = workorders.add_subparsers(dest="workorders_command", metavar="ACTION")
    wo.required = True
    exp = wo.add_parser("export", parents=[common], help="export work orders as CSV")
    exp.add_argument("--out", default=None, help="file to write (default stdout)")
    exp.add_argument("--status", choices=("open", "closed"), default=None, help="default all")
    exp.set_defaults(handler=_guard(_workorders_export))
    wlist = wo.add_parser("list", parents=[common], help="work orders, oldest first")
    wlist.add_argument("--status", choices=("open", "closed"), default="open", help="default open")
    wlist.add_argument("--all", action="store_true", help="open and closed")
    wlist.add_argument("--meter", default=None)
    wlist.add_argument("--concentrator", default=None)
    wlist.add_argument("--limit", type=int, default=1000)
    wlist.set_defaults(handler=_guard(_workorders_list))
    wshow = wo.add_parser("show", parents=[common], help="one work order: where and why")
    wshow.add_argument("work_order_id", type=int)
    wshow.set_defaults(handler=_guard(_workorders_show))
    close = wo.add_parser("close", parents=[common], help="close with the technician's outcome")
    close.add_argument("work_order_id", type=int)
    close.add_argument("--outcome", choices=TECHNICIAN_OUTCOMES, required=True)
    close.add_argument("--notes", default="")
    close.set_defaults(handler=_guard(_workorders_close))


def _facts(pairs: list[tuple[str, Any]]) -> None:
    width = max(len(k) for k, _ in pairs)
    for key, value in pairs:
        if value not in (None, ""):
            print(f"{key.ljust(width)}  {value}")


def _place(row: dict[str, Any]) -> list[tuple[str, Any]]:
    lat, lon = row.get("latitude"), row.get("longitude")
    gps = f"{lat}, {lon}" if lat is not None and lon is not None else None
    values = {**row, "gps": gps}
    return [(label, values.get(key)) for label, key in PLACE_FIELDS]


# ------------------------------------------------------------------ meters
def _meters_import(args: argparse.Namespace) -> int:
    try:
        content = args.file.read_bytes()
    except OSError as exc:
        raise UsageError(f"cannot read {args.file}: {exc.strerror or exc}") from exc
    with _client(args) as client:
        try:
            answer = client.json(
                "POST", "meters/import", content=content, headers={"Content-Type": "text/csv"}
            )
        except ApiError as exc:
            if exc.status == 400:  # the file itself (header, encoding): the user's to fix
                raise UsageError(f"{args.file}: {exc.message}") from exc
            raise
    report = answer if isinstance(answer, dict) else {}
    counts = [f"{k}: {v}" for k, v in report.items() if isinstance(v, int)]
    print("meters imported: " + (", ".join(counts) or "ok"))
    errors = report.get("errors") or []
    for line in errors:
        print(f"error: {args.file}: {line}", file=sys.stderr)
    return EXIT_USAGE if errors else EXIT_OK


def _meters_list(args: argparse.Namespace) -> int:
    params: dict[str, Any] = {"limit": args.limit}
    if args.concentrator:
        params["concentrator_id"] = args.concentrator
    with _client(args) as client:
        meters = _list_of(client.json("GET", "meters", params=params), "meters")
    rows = [
        (
            m.get("id"),
            m.get("concentrator_id"),
            m.get("transport"),
            "yes" if m.get("commissioned") else "no",
            "yes" if m.get("protected_customer") else "",
            m.get("relay_state"),
            m.get("comuna"),
            m.get("service_address"),
        )
        for m in meters
    ]
    headers = (
        "meter",
        "concentrator",
        "link",
        "commissioned",
        "protected",
        "relay",
        "comuna",
        "address",
    )
    print(table(headers, rows))
    return EXIT_OK


def _meters_show(args: argparse.Namespace) -> int:
    with _client(args) as client:
        m = client.json("GET", f"meters/{args.meter}")
    link = (
        f"{m.get('host')}:{m.get('port')}"
        if m.get("transport") == "tcp"
        else f"line {m.get('line_id')}, HDLC address {m.get('hdlc_address')}"
    )
    _facts(
        [
            ("meter", m.get("id")),
            ("concentrator", m.get("concentrator_id") or "- (not linked)"),
            ("topology", m.get("topology")),
            ("link", f"{m.get('transport')}: {link}"),
            ("commissioned", "yes" if m.get("commissioned") else "no"),
            (
                "protected",
                "yes (Ley 21.304: never disconnected)" if m.get("protected_customer") else "no",
            ),
            (
                "relay",
                f"{m.get('relay_state')} (as of {_short_time(m.get('relay_state_at'))})"
                if m.get("relay_state_at")
                else m.get("relay_state"),
            ),
            ("energy", f"{m['energy_kwh']} kWh" if m.get("energy_kwh") is not None else None),
            *_place(m),
        ]
    )
    return EXIT_OK


def _meters_history(args: argparse.Namespace) -> int:
    with _client(args) as client:
        client.json("GET", f"meters/{args.meter}")  # an unknown meter is an error, not ""
        orders = _list_of(
            client.json("GET", "orders", params={"meter_id": args.meter, "limit": args.limit}),
            "orders",
        )
        work = _list_of(
            client.json("GET", "work-orders", params={"meter_id": args.meter}), "work_orders"
        )
    by_order = {str(w.get("order_id")): w for w in work}
    rows = [
        (
            _short_time(o.get("created_at")),
            o.get("id"),
            o.get("action"),
            o.get("reason"),
            o.get("state"),
            outcome_of(o),
            reason_of(o),
            f"{by_order[o['id']]['id']} ({by_order[o['id']]['status']})"
            if o.get("id") in by_order
            else "",
        )
        for o in orders
    ]
    headers = (
        "created",
        "order",
        "action",
        "reason",
        "state",
        "outcome",
        "reason code",
        "work order",
    )
    print(table(headers, rows))
    return EXIT_OK


# ------------------------------------------------------------------ work orders
def _workorders_list(args: argparse.Namespace) -> int:
    params: dict[str, Any] = {"limit": args.limit}
    if not args.all:
        params["status"] = args.status
    if args.meter:
        params["meter_id"] = args.meter
    if args.concentrator:
        params["concentrator_id"] = args.concentrator
    with _client(args) as client:
        rows = _list_of(client.json("GET", "work-orders", params=params), "work_orders")
    body = [
        (
            w.get("id"),
            _short_time(w.get("created_at")),
            w.get("meter_id"),
            w.get("action"),
            w.get("reason"),
            w.get("status"),
            w.get("comuna"),
            w.get("service_address"),
        )
        for w in rows
    ]
    print(
        table(("id", "created", "meter", "action", "reason", "status", "comuna", "address"), body)
    )
    return EXIT_OK


def _workorders_show(args: argparse.Namespace) -> int:
    with _client(args) as client:
        w = client.json("GET", f"work-orders/{args.work_order_id}")
    _print_work_order(w)
    return EXIT_OK


def _print_work_order(w: dict[str, Any]) -> None:
    _facts(
        [
            ("work order", w.get("id")),
            ("status", w.get("status")),
            ("meter", w.get("meter_id")),
            ("concentrator", w.get("concentrator_id")),
            ("to do", f"{w.get('action')} the supply by hand"),
            ("why", w.get("reason")),
            ("detail", w.get("detail")),
            ("last relay", w.get("last_relay_state")),
            *_place(w),
            ("order", w.get("order_id")),
            ("created", _short_time(w.get("created_at"))),
            ("closed", _short_time(w.get("closed_at"))),
            ("closed by", w.get("closed_by")),
            ("technician", w.get("technician_outcome")),
            ("notes", w.get("notes")),
        ]
    )


def _workorders_close(args: argparse.Namespace) -> int:
    body = {"outcome": args.outcome, "notes": args.notes}
    with _client(args) as client:
        w = client.json("POST", f"work-orders/{args.work_order_id}/close", json=body)
    print(f"work order {w.get('id')} closed: {w.get('technician_outcome')}")
    return EXIT_OK


def _workorders_export(args: argparse.Namespace) -> int:
    params: dict[str, Any] = {}
    if args.status:
        params["status"] = args.status
    with _client(args) as client:
        response = client.request(
            "GET", "work-orders/export", params=params, headers={"Accept": "text/csv"}
        )
    text = response.text
    if args.out is None:
        sys.stdout.write(text)
        return EXIT_OK
    try:
        with open(args.out, "w", encoding="utf-8") as handle:
            handle.write(text)
    except OSError as exc:
        raise UsageError(f"cannot write {args.out}: {exc.strerror or exc}") from exc
    lines = max(0, len(text.strip().splitlines()) - 1)
    print(f"{lines} work orders written to {args.out}", file=sys.stderr)
    return EXIT_OK
