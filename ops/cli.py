"""``rcd order|campaign|meters|workorders|incidents|alarms``: operations over the coordinator's REST API.

Every command takes ``--url`` and ``--token`` (environment ``RCD_URL`` and
``RCD_TOKEN``). An error from the API prints one line with the HTTP status and
the API's message on stderr and exits non-zero (see ``EXIT_*``).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any, Final

from ops.client import DEFAULT_URL, ApiError, RcdClient
from ops.render import table

EXIT_OK: Final = 0
EXIT_API: Final = 1  # the API refused or could not be reached
EXIT_USAGE: Final = 2  # bad input file or arguments (argparse uses 2 as well)
EXIT_INCOMPLETE: Final = 3  # a campaign did not end (timeout, waiting for approval)
EXIT_FAILURES: Final = 4  # a campaign ended with failed/expired/rejected orders (--strict)

ACTIVE_STATES: Final = frozenset(
    {"received", "validated", "quarantined", "dispatched", "delivered"}
)
SUCCESS_OUTCOMES: Final = frozenset({"connected", "disconnected", "armed"})
# What an operator means by "connect" is what the API calls an action.
ACTIONS: Final = ("disconnect", "connect", "arm")
REASONS: Final = ("non_payment", "payment_restored", "losses", "customer_request")
STATES: Final = (
    "received",
    "validated",
    "quarantined",
    "dispatched",
    "delivered",
    "completed_connected",
    "completed_disconnected",
    "completed_armed",
    "failed",
    "expired",
    "cancelled",
    "rejected",
    "reported",
)
OUTCOMES: Final = ("connected", "disconnected", "armed", "failed", "expired", "cancelled", "rejected")
BATCH_CHUNK: Final = 500
DEFAULT_WAIT_S: Final = 120.0

Handler = Callable[[argparse.Namespace], int]


class UsageError(Exception):
    """Bad input the user can fix (CSV columns, files); one line per problem."""

    def __init__(self, *lines: str) -> None:
        super().__init__("\n".join(lines))
        self.lines = lines


# ------------------------------------------------------------------ registration
def _common() -> argparse.ArgumentParser:
    parent = argparse.ArgumentParser(add_help=False)
    parent.add_argument(
        "--url", default=None, help=f"coordinator base URL (env RCD_URL, default {DEFAULT_URL})"
    )
    parent.add_argument("--token", default=None, help="API token (env RCD_TOKEN)")
    parent.add_argument(
        "--timeout", type=float, default=30.0, help="seconds per HTTP request (default 30)"
    )
    return parent


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    common = _common()

    order = subparsers.add_parser("order", help="create, show or cancel one order")
    order_sub = order.add_subparsers(dest="order_command", metavar="ACTION")
    order_sub.required = True
    for action in ("disconnect", "connect", "arm"):
        p = order_sub.add_parser(action, parents=[common], help=f"{action} one meter")
        p.add_argument("meter", help="meter id")
        default_reason = "non_payment" if action == "disconnect" else "payment_restored"
        p.add_argument(
            "--reason", choices=REASONS, default=default_reason, help=f"default {default_reason}"
        )
        p.add_argument(
            "--special", action="store_true", help="allowed outside working days (weekend rule)"
        )
        p.add_argument("--priority", type=int, default=None, help="0..9, higher runs first")
        p.add_argument("--ref", default=None, help="external reference (idempotency)")
        p.add_argument(
            "--wait",
            type=float,
            nargs="?",
            const=DEFAULT_WAIT_S,
            default=0.0,
            metavar="SECONDS",
            help="wait for the order to end (up to SECONDS, default "
            f"{DEFAULT_WAIT_S:.0f}), then show its timeline",
        )
        p.set_defaults(handler=_guard(_order_create), action=action)
    show = order_sub.add_parser("show", parents=[common], help="an order and its timeline")
    show.add_argument("order_id", help="the id, or its first characters (at least 4)")
    show.set_defaults(handler=_guard(_order_show))
    cancel = order_sub.add_parser("cancel", parents=[common], help="cancel an order")
    cancel.add_argument("order_id")
    cancel.add_argument("--detail", default="", help="why (kept in the timeline)")
    cancel.set_defaults(handler=_guard(_order_cancel))
    lst = order_sub.add_parser("list", parents=[common], help="the newest orders")
    lst.add_argument(
        "--state", choices=STATES, default=None, help="also finds reported orders that ended so"
    )
    lst.add_argument("--outcome", choices=OUTCOMES, default=None, help="how the order ended")
    lst.add_argument("--meter", default=None)
    lst.add_argument("--limit", type=int, default=50)
    lst.set_defaults(handler=_guard(_order_list))

    from ops import cli_campaign, cli_fleet, cli_held  # they build on this module

    cli_campaign.register(subparsers, common)
    cli_held.register(order_sub, common)  # rcd order approve / wait
    cli_fleet.register(subparsers, common)
    from ops import cli_relay  # incidents and relay alarms (issue 16)

    cli_relay.register(subparsers, common)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rcd", description="ami-rcd operations over the REST API")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    register(sub)
    return parser


def parse(argv: Sequence[str]) -> argparse.Namespace:
    """The parsed arguments of an ops command line (without running it)."""
    return _parser().parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Only the ops commands (``python -m ops.cli``); ``rcd`` is the usual way in."""
    args = _parser().parse_args(argv)
    handler: Handler = args.handler
    return handler(args)


def _guard(handler: Handler) -> Handler:
    """One clear line on stderr and a non-zero exit instead of a traceback."""

    def run(args: argparse.Namespace) -> int:
        try:
            return handler(args)
        except ApiError as exc:
            print(exc.one_line(), file=sys.stderr)
            return EXIT_API
        except UsageError as exc:
            for line in exc.lines:
                print(f"error: {line}", file=sys.stderr)
            return EXIT_USAGE
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            return 130

    run.__name__ = handler.__name__
    return run


def _client(args: argparse.Namespace) -> RcdClient:
    return RcdClient(args.url, args.token, timeout=args.timeout)


# ------------------------------------------------------------------ orders
def outcome_of(order: dict[str, Any]) -> str:
    """connected / disconnected / armed / failed / expired / cancelled / rejected, or ''."""
    if order.get("outcome"):
        return str(order["outcome"])
    state = str(order.get("final_state") or order.get("state") or "")
    if state.startswith("completed_"):
        return state.removeprefix("completed_")
    if state in ("failed", "expired", "cancelled", "rejected"):
        return state
    return ""


def reason_of(order: dict[str, Any]) -> str:
    return str(order.get("result_reason") or order.get("refusal_code") or "")


def is_active(order: dict[str, Any]) -> bool:
    return str(order.get("state")) in ACTIVE_STATES


def _short_time(value: Any) -> str:
    if not value:
        return ""
    try:
        moment = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        return str(value)
    return moment.strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]


def _seconds_between(start: Any, end: Any) -> float | None:
    try:
        a = datetime.fromisoformat(str(start).replace("Z", "+00:00"))
        b = datetime.fromisoformat(str(end).replace("Z", "+00:00"))
    except ValueError:
        return None
    return (b - a).total_seconds()


def _order_create(args: argparse.Namespace) -> int:
    body: dict[str, Any] = {"meter_id": args.meter, "action": args.action, "reason": args.reason}
    if args.special:
        body["special"] = True
    if args.priority is not None:
        body["priority"] = args.priority
    if args.ref:
        body["external_ref"] = args.ref
        body["idempotency_key"] = args.ref
    with _client(args) as client:
        answer = client.json("POST", "orders", json=body)
        order = _order_from_answer(answer)
        order_id = str(order.get("id") or order.get("order_id") or "")
        state = str(order.get("state") or "")
        if state == "rejected" or order.get("accepted") is False:
            code = order.get("refusal_code") or order.get("code") or "refused"
            message = order.get("refusal_detail") or order.get("message") or ""
            print(f"order {order_id} refused: {code}: {message}".rstrip(": "), file=sys.stderr)
            return EXIT_FAILURES
        note = " (duplicate: the existing order)" if order.get("duplicate") else ""
        print(f"order {order_id} {state}{note}")
        if order.get("needs_approval"):
            print("waiting for a second person's approval", file=sys.stderr)
        if args.wait and args.wait > 0 and order_id:
            final = _wait_for(client, order_id, args.wait)
            _print_order(final)
            if is_active(final):
                print(
                    f"order {order_id} is still running (state {final.get('state')}) after "
                    f"{args.wait:.0f}s; it goes on: follow it with rcd order show {order_id}",
                    file=sys.stderr,
                )
                return EXIT_INCOMPLETE
            return EXIT_OK if outcome_of(final) in SUCCESS_OUTCOMES else EXIT_FAILURES
    return EXIT_OK


def _order_from_answer(answer: Any) -> dict[str, Any]:
    """The order in a create answer: the order itself, ``{"order": ...}`` or a one-item batch."""
    if isinstance(answer, dict):
        if isinstance(answer.get("order"), dict):
            return dict(answer["order"])
        items = answer.get("items")
        if isinstance(items, list) and items and isinstance(items[0], dict):
            return dict(items[0])
        return answer
    raise ApiError(0, f"unexpected answer: {answer!r}")


def _wait_for(client: RcdClient, order_id: str, seconds: float) -> dict[str, Any]:
    end = time.monotonic() + seconds
    order = _get_order(client, order_id)
    while is_active(order) and time.monotonic() < end:
        time.sleep(0.5)
        order = _get_order(client, order_id)
    return order


def _get_order(client: RcdClient, order_id: str) -> dict[str, Any]:
    answer = client.json("GET", f"orders/{order_id}")
    return _order_from_answer(answer) | _events_of(answer)


def _events_of(answer: Any) -> dict[str, Any]:
    if isinstance(answer, dict):
        for key in ("events", "timeline"):
            if isinstance(answer.get(key), list):
                return {"events": answer[key]}
    return {}


def _print_order(order: dict[str, Any]) -> None:
    facts = [
        ("order", order.get("id")),
        ("meter", order.get("meter_id")),
        ("concentrator", order.get("concentrator_id")),
        ("action", order.get("action")),
        ("reason", order.get("reason")),
        ("state", order.get("state")),
        ("outcome", outcome_of(order) or "- (running)"),
        ("reason code", reason_of(order)),
        ("detail", order.get("refusal_detail") or order.get("result_detail")),
        ("attempts", order.get("attempts")),
        (
            "energy",
            f"{order['energy_value']} {order.get('energy_unit') or ''}".strip()
            if order.get("energy_value") is not None
            else None,
        ),
        ("created", _short_time(order.get("created_at"))),
        ("finished", _short_time(order.get("finished_at"))),
        ("source", order.get("source")),
    ]
    width = max(len(k) for k, _ in facts)
    for key, value in facts:
        if value not in (None, ""):
            print(f"{key.ljust(width)}  {value}")
    events = order.get("events") or []
    print()
    rows = []
    for ev in events:
        step = ev.get("step")
        title = ev.get("label") or ev.get("event") or ""
        move = ""
        if ev.get("from_state") or ev.get("to_state"):
            move = f"{ev.get('from_state') or '-'} -> {ev.get('to_state') or ''}"
        rows.append(
            (
                _short_time(ev.get("at")),
                step,
                title,
                move,
                ev.get("actor"),
                ev.get("detail"),
            )
        )
    print(table(("time (UTC)", "step", "what", "state", "actor", "detail"), rows))


def _order_show(args: argparse.Namespace) -> int:
    with _client(args) as client:
        _print_order(_get_order(client, args.order_id))
    return EXIT_OK


def _order_cancel(args: argparse.Namespace) -> int:
    body = {"detail": args.detail} if args.detail else None
    with _client(args) as client:
        answer = client.json("POST", f"orders/{args.order_id}/cancel", json=body)
        order = _order_from_answer(answer) if answer else _get_order(client, args.order_id)
    state = order.get("state")
    order_id = order.get("id") or args.order_id
    if state == "cancelled":
        print(f"order {order_id} cancelled")
    else:
        print(f"order {order_id} {state}: cancel sent to the concentrator; the result ends it")
    return EXIT_OK


def _order_list(args: argparse.Namespace) -> int:
    params: dict[str, Any] = {"limit": args.limit}
    if args.state:
        params["state"] = args.state
    if args.outcome:
        params["outcome"] = args.outcome
    if args.meter:
        params["meter_id"] = args.meter
    with _client(args) as client:
        orders = _list_of(client.json("GET", "orders", params=params), "orders")
    rows = [
        (
            _short_time(o.get("created_at")),
            o.get("id"),
            o.get("meter_id"),
            o.get("action"),
            o.get("state"),
            outcome_of(o),
            reason_of(o),
        )
        for o in orders
    ]
    print(table(("created", "order", "meter", "action", "state", "outcome", "reason"), rows))
    return EXIT_OK


def _list_of(answer: Any, *keys: str) -> list[dict[str, Any]]:
    if isinstance(answer, list):
        return answer
    if isinstance(answer, dict):
        for key in (*keys, "items", "results", "data"):
            if isinstance(answer.get(key), list):
                return list(answer[key])
    raise ApiError(0, f"unexpected answer shape: {str(answer)[:200]}")


if __name__ == "__main__":
    sys.exit(main())
