"""``rcd order approve ID`` and ``rcd order wait ID``: the second person's step for an
order the coordinator holds, and following an order until it ends.

A special disconnect that would switch on a weekend or a Chilean holiday, or one
that brings a person over the approval threshold, waits for someone with the
approver role other than its requester (issue 12). ``approve`` releases it; on a
working day nothing is held, and ``approve`` says so and changes nothing, so a runbook
may always carry the step (docs/deployment.md section 5 does)."""

from __future__ import annotations

import argparse
import sys

from ops.cli import (
    DEFAULT_WAIT_S,
    EXIT_FAILURES,
    EXIT_INCOMPLETE,
    EXIT_OK,
    SUCCESS_OUTCOMES,
    _client,
    _get_order,
    _guard,
    _print_order,
    _wait_for,
    is_active,
    outcome_of,
)


def register(order_sub: argparse._SubParsersAction[argparse.ArgumentParser],
             common: argparse.ArgumentParser) -> None:
    approve = order_sub.add_parser(
        "approve", parents=[common],
        help="approve an order held for a second person (approver role); "
        "says so when it is not held",
    )
    approve.add_argument("order_id")
    approve.set_defaults(handler=_guard(_order_approve))
    wait = order_sub.add_parser(
        "wait", parents=[common], help="follow an order until it ends, then show its timeline"
    )
    wait.add_argument("order_id")
    wait.add_argument(
        "--seconds", type=float, default=DEFAULT_WAIT_S,
        help=f"give up waiting after this long (default {DEFAULT_WAIT_S:.0f}); the order goes on",
    )
    wait.set_defaults(handler=_guard(_order_wait))


def _order_approve(args: argparse.Namespace) -> int:
    with _client(args) as client:
        order = _get_order(client, args.order_id)
        order_id = str(order.get("id") or args.order_id)
        if not order.get("needs_approval"):
            print(f"order {order_id} is not held: it needs no second person's approval")
            return EXIT_OK
        if order.get("approved_by"):
            print(f"order {order_id} was already approved by {order['approved_by']}")
            return EXIT_OK
        batch = client.json("POST", f"orders/{order_id}/approve")
    print(f"order {order_id} approved by {batch.get('approved_by')}")
    return EXIT_OK


def _order_wait(args: argparse.Namespace) -> int:
    with _client(args) as client:
        final = _wait_for(client, args.order_id, args.seconds)
    _print_order(final)
    if is_active(final):
        held = " (held for a second person: rcd order approve)" if (
            final.get("needs_approval") and not final.get("approved_by")
        ) else ""
        print(
            f"order {final.get('id')} is still running (state {final.get('state')}){held} after "
            f"{args.seconds:.0f}s; it goes on: follow it with rcd order show {final.get('id')}",
            file=sys.stderr,
        )
        return EXIT_INCOMPLETE
    return EXIT_OK if outcome_of(final) in SUCCESS_OUTCOMES else EXIT_FAILURES
