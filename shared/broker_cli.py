"""``rcd broker nats-accounts``: the NATS cluster's users and permissions
(``accounts.conf`` for ``deploy/nats/node.conf``) from a list of users."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from shared.errors import TopicError
from shared.nats_config import COORDINATOR_USER, PROTECT_USER, render_accounts
from shared.topics import check_concentrator_id


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    broker = sub.add_parser("broker", help="broker configuration")
    broker_sub = broker.add_subparsers(dest="broker_command", metavar="ACTION")
    broker_sub.required = True
    accounts = broker_sub.add_parser(
        "nats-accounts",
        help="write accounts.conf (users, per-concentrator permissions) for a NATS cluster",
        description=(
            "USERS has one user a line: 'coordinator PASSWORD' and 'CONCENTRATOR_ID PASSWORD'; "
            "a line with a name only is a user authenticated by its TLS client certificate "
            "(subject CN=<name>, with verify_and_map). '#' starts a comment."
        ),
    )
    accounts.add_argument("users", type=Path, help="the user list")
    accounts.add_argument("--out", type=Path, required=True, help="accounts.conf to write (0600)")
    accounts.set_defaults(handler=_nats_accounts)


def parse_users(text: str) -> tuple[dict[str, str], list[str]]:
    """(user -> password, TLS users as certificate subjects); raises ValueError naming the line."""
    passwords: dict[str, str] = {}
    tls: list[str] = []
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        parts = line.split()
        if len(parts) > 2:
            raise ValueError(f"line {number}: expected 'name [password]', got {len(parts)} fields")
        name = parts[0]
        if name not in (COORDINATOR_USER, PROTECT_USER):
            try:
                check_concentrator_id(name)
            except TopicError as exc:
                raise ValueError(f"line {number}: {exc}") from exc
        if name in passwords or f"CN={name}" in tls:
            raise ValueError(f"line {number}: {name} is listed twice")
        if len(parts) == 2:
            passwords[name] = parts[1]
        else:
            tls.append(f"CN={name}")
    if COORDINATOR_USER not in passwords and f"CN={COORDINATOR_USER}" not in tls:
        raise ValueError(f"no '{COORDINATOR_USER}' user")
    return passwords, tls


def _nats_accounts(args: argparse.Namespace) -> int:
    try:
        passwords, tls = parse_users(args.users.read_text(encoding="utf-8"))
    except OSError as exc:
        print(f"cannot read {args.users}: {exc}", file=sys.stderr)
        return 1
    except ValueError as exc:
        print(f"{args.users}: {exc}", file=sys.stderr)
        return 2
    fd = os.open(args.out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(render_accounts(passwords, tls_subjects=tls))
    names = {*passwords, *(t.removeprefix("CN=") for t in tls)}
    extra = " and the protect authority" if PROTECT_USER in names else ""
    count = len(names - {COORDINATOR_USER, PROTECT_USER})
    print(f"{args.out}: {count} concentrators, the coordinator{extra}")
    return 0
