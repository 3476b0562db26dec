"""``rcd reconnects at-risk``: unfinished reconnects whose SLA is at risk (issue 17),
the most urgent first, over the REST API (``GET /api/v1/reconnects/sla-at-risk``)."""

from __future__ import annotations

import argparse

from ops.cli import EXIT_FAILURES, EXIT_OK, _client, _guard, _short_time
from ops.render import table


def register(
    subparsers: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser
) -> None:
    reconnects = subparsers.add_parser("reconnects", help="the reconnection SLA clock")
    sub = reconnects.add_subparsers(dest="reconnects_command", metavar="ACTION")
    sub.required = True
    risk = sub.add_parser(
        "at-risk", parents=[common], help="reconnects whose SLA is at risk, most urgent first"
    )
    risk.add_argument(
        "--strict", action="store_true", help=f"exit {EXIT_FAILURES} if any SLA is breached"
    )
    risk.set_defaults(handler=_guard(_at_risk))


def _at_risk(args: argparse.Namespace) -> int:
    with _client(args) as client:
        answer = client.json("GET", "reconnects/sla-at-risk")
    summary = answer.get("summary", {})
    rows = [
        (
            o.get("order_id"),
            o.get("meter_id"),
            o.get("concentrator_id") or "-",
            o.get("state"),
            _short_time(o.get("sla_due_at")),
            f"{round(100 * float(o.get('sla_used', 0)))}%",
            "yes" if o.get("breached") else "no",
            o.get("remote_path_failing") or "-",
            o.get("work_order_id") or "-",
        )
        for o in answer.get("orders", [])
    ]
    header = ("order", "meter", "concentrator", "state", "sla ends", "used", "breached",
              "remote path", "work order")  # fmt: skip
    print(table(header, rows))
    print(
        f"{summary.get('at_risk', 0)} at risk, {summary.get('breached', 0)} breached, "
        f"{summary.get('remote_failing', 0)} with the remote path failing, "
        f"{summary.get('work_orders', 0)} with a field work order"
    )
    if args.strict and summary.get("breached", 0):
        return EXIT_FAILURES
    return EXIT_OK
