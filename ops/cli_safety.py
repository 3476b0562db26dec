"""``rcd quarantine ...`` and ``rcd hold ...`` (issue 17): the anomaly detector's
quarantines, decided by a second person, and holds on disconnects, over the REST API
(see docs/operations.md)."""

from __future__ import annotations

import argparse
import re
import sys
from datetime import UTC, datetime, timedelta
from typing import Any, Final

from ops.cli import EXIT_OK, UsageError, _client, _guard, _list_of, _short_time
from ops.render import table

QUARANTINE_STATES: Final = ("open", "released", "deleted")
_DURATION: Final = re.compile(r"^(\d+)([smhd])$")
_UNIT_S: Final = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def register(
    subparsers: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser
) -> None:
    quarantine = subparsers.add_parser(
        "quarantine", help="disconnects the anomaly detector held for a second person"
    )
    qsub = quarantine.add_subparsers(dest="quarantine_command", metavar="ACTION")
    qsub.required = True
    qlist = qsub.add_parser("list", parents=[common], help="quarantines, newest first")
    qlist.add_argument("--state", choices=(*QUARANTINE_STATES, "all"), default="open")
    qlist.set_defaults(handler=_guard(_quarantine_list))
    qshow = qsub.add_parser("show", parents=[common], help="one quarantine and its orders")
    qshow.add_argument("quarantine_id")
    qshow.set_defaults(handler=_guard(_quarantine_show))
    for verb, text in (
        ("release", "let its disconnects go on (approver, not a placer)"),
        ("delete", "end its disconnects rejected; Legacy is told (approver, not a placer)"),
    ):
        decide = qsub.add_parser(verb, parents=[common], help=text)
        decide.add_argument("quarantine_id")
        decide.add_argument("--note", default="", help="why (kept on the quarantine)")
        decide.set_defaults(handler=_guard(_quarantine_decide), verb=verb)

    hold = subparsers.add_parser("hold", help="holds on disconnects (emergency, weather)")
    hsub = hold.add_subparsers(dest="hold_command", metavar="ACTION")
    hsub.required = True
    hlist = hsub.add_parser("list", parents=[common], help="declared holds, newest first")
    hlist.add_argument("--active", action="store_true", help="only those in force")
    hlist.set_defaults(handler=_guard(_hold_list))
    declare = hsub.add_parser("declare", parents=[common], help="hold disconnects in a scope")
    declare.add_argument("--kind", choices=("emergency", "weather"), required=True)
    where = declare.add_mutually_exclusive_group(required=True)
    for scope in ("region", "comuna", "concentrator"):
        where.add_argument(f"--{scope}", default=None)
    declare.add_argument("--reason", required=True)
    until = declare.add_mutually_exclusive_group(required=True)
    until.add_argument("--until", default=None, help="end, ISO 8601 with a time zone")
    until.add_argument("--for", dest="duration", default=None, help="e.g. 90m, 6h, 2d")
    declare.set_defaults(handler=_guard(_hold_declare))
    end = hsub.add_parser("end", parents=[common], help="end a hold early")
    end.add_argument("hold_id", type=int)
    end.set_defaults(handler=_guard(_hold_end))
    orders = hsub.add_parser("orders", parents=[common], help="disconnects held now")
    orders.add_argument("--reason", default=None, help="e.g. concentrator_offline, supply_off")
    orders.add_argument("--limit", type=int, default=100)
    orders.set_defaults(handler=_guard(_hold_orders))


# ------------------------------------------------------------------ quarantines
def _quarantine_list(args: argparse.Namespace) -> int:
    params = {} if args.state == "all" else {"state": args.state}
    with _client(args) as client:
        rows = _list_of(client.json("GET", "quarantines", params=params), "quarantines")
    print(
        table(
            ("opened", "id", "scope", "state", "held", "counted", "threshold", "placed by"),
            [
                (
                    _short_time(q.get("opened_at")),
                    q.get("id"),
                    f"{q.get('scope_kind')} {q.get('scope_value')}",
                    q.get("state"),
                    q.get("held"),
                    q.get("counted"),
                    q.get("threshold"),
                    ", ".join(q.get("placed_by") or []),
                )
                for q in rows
            ],
        )
    )
    return EXIT_OK


def _quarantine_show(args: argparse.Namespace) -> int:
    with _client(args) as client:
        row = client.json("GET", f"quarantines/{args.quarantine_id}")
    _print_quarantine(row)
    for order_id in row.get("order_ids") or []:
        print(f"  held order {order_id}")
    return EXIT_OK


def _print_quarantine(row: dict[str, Any]) -> None:
    baseline = row.get("baseline")
    facts: list[tuple[str, Any]] = [
        ("quarantine", row.get("id")),
        ("scope", f"{row.get('scope_kind')} {row.get('scope_value')}"),
        ("state", row.get("state")),
        ("opened", _short_time(row.get("opened_at"))),
        ("rule", row.get("detail")),
        ("counted", f"{row.get('counted')} in {row.get('window_s')} s"),
        ("threshold", f"{row.get('threshold')} (limit {row.get('configured_limit')})"),
        ("baseline", None if baseline is None else f"{baseline:.1f}"),
        ("held now", row.get("held")),
        ("placed by", ", ".join(row.get("placed_by") or [])),
        ("decided by", row.get("decided_by")),
        ("decided", _short_time(row.get("decided_at"))),
        ("note", row.get("decision_note")),
    ]
    width = max(len(k) for k, _ in facts)
    for key, value in facts:
        if value not in (None, ""):
            print(f"{key.ljust(width)}  {value}")


def _quarantine_decide(args: argparse.Namespace) -> int:
    with _client(args) as client:
        row = client.json(
            "POST", f"quarantines/{args.quarantine_id}/{args.verb}", json={"note": args.note}
        )
    print(f"quarantine {row.get('id')} {row.get('state')} by {row.get('decided_by')}")
    return EXIT_OK


# ------------------------------------------------------------------ holds
def end_time(until: str | None, duration: str | None, now: datetime | None = None) -> str:
    """The hold's end as ISO 8601 from ``--until`` or ``--for``; clear errors otherwise."""
    if until is not None:
        try:
            moment = datetime.fromisoformat(until.replace("Z", "+00:00"))
        except ValueError as exc:
            raise UsageError(f"--until {until!r} is not an ISO 8601 time") from exc
        if moment.tzinfo is None:
            raise UsageError(f"--until {until!r} has no time zone (add Z or +00:00)")
        return moment.isoformat()
    match = _DURATION.match(duration or "")
    if match is None:
        raise UsageError(f"--for {duration!r} is not a duration such as 90m, 6h or 2d")
    seconds = int(match.group(1)) * _UNIT_S[match.group(2)]
    return ((now or datetime.now(UTC)) + timedelta(seconds=seconds)).isoformat()


def _hold_declare(args: argparse.Namespace) -> int:
    scope = next(s for s in ("region", "comuna", "concentrator") if getattr(args, s))
    body = {
        "kind": args.kind,
        "scope": scope,
        "value": getattr(args, scope),
        "reason": args.reason,
        "ends_at": end_time(args.until, args.duration),
    }
    with _client(args) as client:
        row = client.json("POST", "holds", json=body)
    print(
        f"hold {row.get('id')}: {row.get('kind')} on {row.get('scope_kind')} "
        f"{row.get('scope_value')} until {_short_time(row.get('ends_at'))}"
    )
    return EXIT_OK


def _hold_list(args: argparse.Namespace) -> int:
    params = {"active": "true"} if args.active else {}
    with _client(args) as client:
        rows = _list_of(client.json("GET", "holds", params=params), "holds")
    print(
        table(
            ("id", "kind", "scope", "from", "until", "in force", "by", "ended by", "reason"),
            [
                (
                    h.get("id"),
                    h.get("kind"),
                    f"{h.get('scope_kind')} {h.get('scope_value')}",
                    _short_time(h.get("starts_at")),
                    _short_time(h.get("ends_at")),
                    "yes" if h.get("in_force") else "no",
                    h.get("created_by"),
                    h.get("ended_by"),
                    h.get("reason"),
                )
                for h in rows
            ],
        )
    )
    return EXIT_OK


def _hold_end(args: argparse.Namespace) -> int:
    with _client(args) as client:
        row = client.json("POST", f"holds/{args.hold_id}/end")
    print(f"hold {row.get('id')} ended by {row.get('ended_by')}", file=sys.stdout)
    return EXIT_OK


def _hold_orders(args: argparse.Namespace) -> int:
    params: dict[str, Any] = {"limit": args.limit}
    if args.reason:
        params["reason"] = args.reason
    with _client(args) as client:
        rows = _list_of(client.json("GET", "held-orders", params=params), "orders")
    print(
        table(
            ("created", "order", "meter", "concentrator", "held for"),
            [
                (
                    _short_time(o.get("created_at")),
                    o.get("id"),
                    o.get("meter_id"),
                    o.get("concentrator_id"),
                    o.get("hold_reason"),
                )
                for o in rows
            ],
        )
    )
    return EXIT_OK
