"""``rcd incidents ...``, ``rcd alarms ...`` and ``rcd meters relay METER``: what the
meters' relays did on their own (issue 16), over the REST API (docs/operations.md)."""

from __future__ import annotations

import argparse
from typing import Any

from ops.cli import EXIT_OK, _client, _guard, _list_of, _short_time
from ops.render import table


def register(
    subparsers: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser
) -> None:
    inc = subparsers.add_parser("incidents", help="unexplained relay openings grouped (issue 16)")
    sub = inc.add_subparsers(dest="incidents_command", metavar="ACTION")
    sub.required = True
    lst = sub.add_parser("list", parents=[common], help="open and acknowledged incidents")
    lst.add_argument("--all", action="store_true", help="closed ones too")
    lst.set_defaults(handler=_guard(_incidents_list))
    for name, helptext, handler in (
        ("show", "one incident: its meters and what each did", _incidents_show),
        ("ack", "acknowledge: someone is on it", _incidents_ack),
        (
            "restore",
            "propose connect orders for the meters it cut (a second person approves)",
            _incidents_restore,
        ),
    ):
        command = sub.add_parser(name, parents=[common], help=helptext)
        command.add_argument("incident_id", type=int)
        command.set_defaults(handler=_guard(handler))
    close = sub.add_parser("close", parents=[common], help="close it, with what was found")
    close.add_argument("incident_id", type=int)
    close.add_argument("--notes", default="")
    close.set_defaults(handler=_guard(_incidents_close))

    alarms = subparsers.add_parser(
        "alarms", help="relay alarms: tamper, welded relay, drift, protected customer cut"
    )
    asub = alarms.add_subparsers(dest="alarms_command", metavar="ACTION")
    asub.required = True
    alist = asub.add_parser("list", parents=[common], help="alarms not closed, urgent first")
    alist.add_argument("--all", action="store_true", help="closed ones too")
    alist.add_argument("--meter", default=None)
    alist.set_defaults(handler=_guard(_alarms_list))
    for name, helptext in (("ack", "acknowledge an alarm"), ("close", "close an alarm")):
        command = asub.add_parser(name, parents=[common], help=helptext)
        command.add_argument("alarm_id", type=int)
        command.set_defaults(handler=_guard(_alarms_act), verb=name)


def register_meter(
    sub: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser
) -> None:
    """``rcd meters relay METER`` (called by ``ops.cli_fleet``)."""
    relay = sub.add_parser(
        "relay", parents=[common], help="a meter's relay: state, observations, events, alarms"
    )
    relay.add_argument("meter")
    relay.add_argument("--limit", type=int, default=30)
    relay.set_defaults(handler=_guard(_meter_relay))


# ------------------------------------------------------------------ incidents
def _incidents_list(args: argparse.Namespace) -> int:
    params = {} if args.all else {"status": "active"}
    with _client(args) as client:
        rows = _list_of(client.json("GET", "incidents", params=params), "incidents")
    body = [
        (
            i.get("id"),
            f"{i.get('group_kind')} {i.get('group_key')}",
            i.get("meters"),
            _short_time(i.get("first_event_at")),
            _short_time(i.get("last_event_at")),
            i.get("status"),
            i.get("restore_batch_id") or "",
        )
        for i in rows
    ]
    print(table(("id", "group", "meters", "from", "to", "status", "restore batch"), body))
    return EXIT_OK


def _print_incident(i: dict[str, Any]) -> None:
    print(
        f"incident {i.get('id')} ({i.get('status')}): {i.get('meters')} meter(s) on "
        f"{i.get('group_kind')} {i.get('group_key')}, {_short_time(i.get('first_event_at'))}"
        f" .. {_short_time(i.get('last_event_at'))}"
    )
    if i.get("restore_batch_id"):
        print(f"restore: batch {i['restore_batch_id']} asked by {i.get('restore_requested_by')}")
    if i.get("notes"):
        print(f"notes: {i['notes']}")
    left = set(i.get("to_restore") or [])
    rows = [
        (
            _short_time(e.get("at")),
            e.get("meter_id"),
            e.get("from_state") or "",
            "still disconnected" if e.get("meter_id") in left else "",
            e.get("detail"),
        )
        for e in i.get("events") or []
    ]
    print(table(("at", "meter", "was", "now", "what"), rows))


def _incidents_show(args: argparse.Namespace) -> int:
    with _client(args) as client:
        _print_incident(client.json("GET", f"incidents/{args.incident_id}"))
    return EXIT_OK


def _incidents_ack(args: argparse.Namespace) -> int:
    with _client(args) as client:
        i = client.json("POST", f"incidents/{args.incident_id}/ack")
    print(f"incident {i.get('id')} {i.get('status')} by {i.get('acknowledged_by')}")
    return EXIT_OK


def _incidents_close(args: argparse.Namespace) -> int:
    with _client(args) as client:
        i = client.json("POST", f"incidents/{args.incident_id}/close", json={"notes": args.notes})
    print(f"incident {i.get('id')} closed by {i.get('closed_by')}")
    return EXIT_OK


def _incidents_restore(args: argparse.Namespace) -> int:
    with _client(args) as client:
        answer = client.json("POST", f"incidents/{args.incident_id}/restore")
    placed = answer.get("orders") or {}
    print(
        f"{len(placed)} connect order(s) in batch {answer.get('batch_id')}, waiting for a "
        f"second person: rcd campaign approve {answer.get('batch_id')}"
    )
    for meter, order in sorted(placed.items()):
        print(f"  {meter}  {order}")
    return EXIT_OK


# ------------------------------------------------------------------ alarms
def _alarms_list(args: argparse.Namespace) -> int:
    # without a status the API answers only active ones: --all asks for each status
    statuses = ("active", "closed") if args.all else ("active",)
    rows: list[dict[str, Any]] = []
    with _client(args) as client:
        for status in statuses:
            params = {"status": status, **({"meter_id": args.meter} if args.meter else {})}
            rows += _list_of(client.json("GET", "relay-alarms", params=params), "alarms")
    body = [
        (
            a.get("id"),
            _short_time(a.get("raised_at")),
            a.get("severity"),
            a.get("kind"),
            a.get("meter_id"),
            f"WO-{a['work_order_id']}" if a.get("work_order_id") else "",
            a.get("order_id") or "",
            a.get("status"),
        )
        for a in rows
    ]
    print(
        table(("id", "raised", "severity", "kind", "meter", "work order", "order", "status"), body)
    )
    return EXIT_OK


def _alarms_act(args: argparse.Namespace) -> int:
    with _client(args) as client:
        a = client.json("POST", f"relay-alarms/{args.alarm_id}/{args.verb}")
    print(f"alarm {a.get('id')} ({a.get('kind')} on {a.get('meter_id')}) {a.get('status')}")
    return EXIT_OK


# ------------------------------------------------------------------ a meter's relay
def _meter_relay(args: argparse.Namespace) -> int:
    with _client(args) as client:
        h = client.json("GET", f"meters/{args.meter}/relay-history", params={"limit": args.limit})
    print(
        f"{h.get('meter_id')}: relay {h.get('relay_state')} since "
        f"{_short_time(h.get('relay_state_at')) or '-'} ({h.get('relay_state_source') or '-'}); "
        f"last audit {_short_time(h.get('audited_at')) or '-'}"
        + ("; protected customer (Ley 21.304)" if h.get("protected_customer") else "")
    )
    lines: list[tuple[str, str, str, str]] = []
    for o in h.get("orders") or []:
        lines.append(
            (
                str(o.get("created_at")),
                "order",
                str(o.get("action")),
                f"{o.get('state')} {o.get('id')}",
            )
        )
    for ob in h.get("observations") or []:
        energy = f", {ob['energy_wh']:.0f} Wh" if ob.get("energy_wh") is not None else ""
        lines.append(
            (
                str(ob.get("observed_at")),
                "seen",
                str(ob.get("source")),
                f"{ob.get('relay_state')}{energy}",
            )
        )
    for e in h.get("events") or []:
        lines.append((str(e.get("at")), "event", str(e.get("kind")), str(e.get("detail"))))
    for a in h.get("alarms") or []:
        lines.append(
            (
                str(a.get("raised_at")),
                "alarm",
                str(a.get("kind")),
                f"{a.get('severity')} {a.get('status')}",
            )
        )
    lines.sort(key=lambda line: line[0], reverse=True)
    print(
        table(("at", "what", "kind", "detail"), [(_short_time(t), w, k, d) for t, w, k, d in lines])
    )
    return EXIT_OK
