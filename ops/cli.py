"""``rcd order|campaign|meters|workorders|incidents|alarms``: operations over the coordinator's REST API.

Every command takes ``--url`` and ``--token`` (environment ``RCD_URL`` and
``RCD_TOKEN``). An error from the API prints one line with the HTTP status and
the API's message on stderr and exits non-zero (see ``EXIT_*``).
"""

from __future__ import annotations

import argparse
import csv
import io
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, Final

from ops.client import DEFAULT_URL, ApiError, RcdClient
from ops.render import Progress, table

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

    campaign = subparsers.add_parser("campaign", help="batches of orders from a CSV file")
    campaign_sub = campaign.add_subparsers(dest="campaign_command", metavar="ACTION")
    campaign_sub.required = True
    run = campaign_sub.add_parser(
        "run",
        parents=[common],
        help="send a CSV of orders as a batch, follow it, print a summary",
        description="CSV columns: meter_id (or meter), action, reason; optional: special, "
        "priority, external_ref. A batch above the approval threshold waits for a second "
        "person (rcd exits 3 and tells you the batch id).",
    )
    run.add_argument("file", type=Path)
    run.add_argument("--no-wait", action="store_true", help="submit and print what was accepted")
    run.add_argument("--wait-timeout", type=float, default=600.0, help="seconds (default 600)")
    run.add_argument("--poll", type=float, default=1.0, help="seconds between polls (default 1)")
    run.add_argument("--strict", action="store_true", help="exit 4 when any order did not succeed")
    run.set_defaults(handler=_guard(_campaign_run))
    approve = campaign_sub.add_parser(
        "approve", parents=[common], help="approve a batch that waits (approver role)"
    )
    approve.add_argument("batch_id")
    approve.set_defaults(handler=_guard(_campaign_approve))

    from ops import cli_fleet, cli_held  # they build on this module

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


# ------------------------------------------------------------------ campaigns
_TRUE: Final = frozenset({"1", "true", "yes", "y", "si", "sí", "x"})


def read_campaign(path: Path) -> list[dict[str, Any]]:
    """Rows of a campaign CSV as order requests; raises UsageError with one line per
    bad row (``FILE:LINE: field ...``), every bad row of the file at once."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror or exc}") from exc
    reader = csv.DictReader(io.StringIO(text))
    fields = {(f or "").strip().lower() for f in reader.fieldnames or []}
    if not fields & {"meter_id", "meter"} or "action" not in fields:
        raise UsageError(f"{path}: the header must name meter_id (or meter) and action")
    requests: list[dict[str, Any]] = []
    problems: list[str] = []
    for line_no, raw in enumerate(reader, start=2):
        row = {(k or "").strip().lower(): (v or "").strip() for k, v in raw.items()}
        if not any(row.values()):
            continue  # blank line
        request, problem = _campaign_row(row)
        if problem:
            problems.append(f"{path}:{line_no}: {problem}")
        else:
            requests.append(request)
    if problems:
        raise UsageError(*problems)
    if not requests:
        raise UsageError(f"{path}: no orders in the file")
    return requests


def _campaign_row(row: dict[str, str]) -> tuple[dict[str, Any], str]:
    """One CSV row as an order request, or the problem with it (naming the field)."""
    meter = row.get("meter_id") or row.get("meter") or ""
    action = row.get("action", "").lower()
    if not meter:
        return {}, "meter_id: empty"
    if action not in ACTIONS:
        return {}, f"action: {action!r} is not one of {', '.join(ACTIONS)}"
    reason = row.get("reason") or ("non_payment" if action == "disconnect" else "payment_restored")
    if reason not in REASONS:
        return {}, f"reason: {reason!r} is not one of {', '.join(REASONS)}"
    request: dict[str, Any] = {"meter_id": meter, "action": action, "reason": reason}
    if row.get("special", "").lower() in _TRUE:
        request["special"] = True
    if row.get("priority"):
        try:
            request["priority"] = int(row["priority"])
        except ValueError:
            return {}, f"priority: {row['priority']!r} is not a number"
    if row.get("external_ref"):
        request["external_ref"] = row["external_ref"]
    return request, ""


def _campaign_run(args: argparse.Namespace) -> int:
    requests = read_campaign(args.file)
    with _client(args) as client:
        # The time it will take, stated before anything starts (the rate limits and the
        # lines' measured airtime decide it, not the size of the file alone).
        planned = client.json("POST", "orders/estimate", json={"orders": requests})
        if isinstance(planned, dict) and planned.get("text"):
            print(f"estimate: {planned['text']}", file=sys.stderr)
        # One batch, never split: the approval threshold applies to what is sent together.
        answer = client.json("POST", "orders/batch", json={"orders": requests})
        items = _list_of(answer, "items", "results", "orders")
        batch_id = answer.get("batch_id") if isinstance(answer, dict) else None
        needs_approval = bool(isinstance(answer, dict) and answer.get("needs_approval"))
        accepted = [
            i for i in items if i.get("accepted", True) and (i.get("order_id") or i.get("id"))
        ]
        print(
            f"batch {batch_id or '-'}: {len(requests)} orders sent, "
            f"{sum(1 for i in items if i.get('accepted', True))} accepted, "
            f"{sum(1 for i in items if i.get('accepted') is False)} refused",
            file=sys.stderr,
        )
        if needs_approval:
            print(
                f"batch {batch_id} waits for a second person's approval "
                f"(another person, role approver: rcd campaign approve {batch_id})",
                file=sys.stderr,
            )
        ids = [str(i.get("order_id") or i.get("id")) for i in accepted]
        orders: dict[str, dict[str, Any]] = {}
        complete = True
        if not args.no_wait and not needs_approval and ids:
            orders, complete = _follow(client, ids, args.wait_timeout, args.poll)
        else:
            complete = not needs_approval
        for item in items:  # the API's items say nothing of the action: take it from the file
            index = item.get("index")
            if isinstance(index, int) and 0 <= index < len(requests):
                item.setdefault("action", requests[index]["action"])
        rows = _summary_rows(client, items, orders)
    print(table(SUMMARY_HEADERS, rows))
    tally: dict[str, int] = {}
    for row in rows:
        tally[str(row[3] or "pending")] = tally.get(str(row[3] or "pending"), 0) + 1
    print("\n" + ", ".join(f"{k}: {v}" for k, v in sorted(tally.items())))
    if not complete:
        if not needs_approval:
            print("error: not every order ended before the timeout", file=sys.stderr)
        return EXIT_INCOMPLETE
    bad = sum(v for k, v in tally.items() if k not in SUCCESS_OUTCOMES)
    return EXIT_FAILURES if args.strict and bad else EXIT_OK


SUMMARY_HEADERS: Final = (
    "meter",
    "action",
    "order",
    "outcome",
    "reason",
    "energy",
    "attempts",
    "time",
    "work order",
)


def _follow(
    client: RcdClient, ids: Sequence[str], timeout_s: float, poll_s: float
) -> tuple[dict[str, dict[str, Any]], bool]:
    """Poll until every order ended or the timeout passed; progress on stderr."""
    progress = Progress(len(ids), "orders")
    orders: dict[str, dict[str, Any]] = {}
    pending = list(ids)
    deadline = time.monotonic() + timeout_s
    while True:
        for order_id in pending:
            orders[order_id] = _get_order(client, order_id)
        pending = [i for i in pending if is_active(orders[i])]
        done = len(ids) - len(pending)
        counts: dict[str, int] = {}
        for order in orders.values():
            key = outcome_of(order) or "running"
            counts[key] = counts.get(key, 0) + 1
        progress.update(done, " ".join(f"{k}={v}" for k, v in sorted(counts.items())))
        if not pending or time.monotonic() >= deadline:
            break
        time.sleep(poll_s)
    progress.finish()
    return orders, not pending


def _summary_rows(
    client: RcdClient, items: Iterable[dict[str, Any]], orders: dict[str, dict[str, Any]]
) -> list[tuple[object, ...]]:
    work_orders = (
        _work_orders_by_order(client)
        if any(outcome_of(o) in ("failed", "expired") for o in orders.values())
        else {}
    )
    rows: list[tuple[object, ...]] = []
    for item in items:
        order_id = str(item.get("order_id") or item.get("id") or "")
        order = orders.get(order_id, {})
        if not order:
            outcome = "rejected" if item.get("accepted") is False else str(item.get("state") or "")
            rows.append(
                (
                    item.get("meter_id"),
                    item.get("action", ""),
                    order_id,
                    outcome,
                    item.get("code") or item.get("refusal_code") or "",
                    "",
                    "",
                    "",
                    "",
                )
            )
            continue
        seconds = _seconds_between(order.get("created_at"), order.get("finished_at"))
        energy = order.get("energy_value")
        rows.append(
            (
                order.get("meter_id"),
                order.get("action"),
                order_id,
                outcome_of(order) or order.get("state"),
                reason_of(order),
                "" if energy is None else f"{energy} {order.get('energy_unit') or ''}".strip(),
                order.get("attempts"),
                "" if seconds is None else f"{seconds:.1f}s",
                work_orders.get(order_id, ""),
            )
        )
    return rows


def _work_orders_by_order(client: RcdClient) -> dict[str, str]:
    found: dict[str, str] = {}
    for wo in _list_of(client.json("GET", "work-orders", params={"limit": 1000}), "work_orders"):
        if wo.get("order_id"):
            found[str(wo["order_id"])] = str(wo.get("id"))
    return found


def _campaign_approve(args: argparse.Namespace) -> int:
    with _client(args) as client:
        batch = client.json("POST", f"batches/{args.batch_id}/approve")
    print(
        f"batch {args.batch_id} approved by {batch.get('approved_by')} ({batch.get('size')} orders)"
    )
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
