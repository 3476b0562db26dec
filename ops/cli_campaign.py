"""``rcd campaign run FILE`` and ``rcd campaign approve BATCH``: batches of orders from a CSV.

``run`` reads the file (every bad row reported at once), states the coordinator's
estimate of the duration, sends the rows as one batch (the approval threshold applies
to what is sent together), follows the orders with a progress bar and prints a summary
with each order's outcome, energy read and work order. Builds on :mod:`ops.cli`.
"""

from __future__ import annotations

import argparse
import csv
import io
import sys
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Final

from ops.cli import (
    ACTIONS,
    EXIT_FAILURES,
    EXIT_INCOMPLETE,
    EXIT_OK,
    REASONS,
    SUCCESS_OUTCOMES,
    UsageError,
    _client,
    _get_order,
    _guard,
    _list_of,
    _seconds_between,
    is_active,
    outcome_of,
    reason_of,
)
from ops.client import RcdClient
from ops.render import Progress, table


def register(
    subparsers: argparse._SubParsersAction[argparse.ArgumentParser],
    common: argparse.ArgumentParser,
) -> None:
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
