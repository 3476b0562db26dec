"""The ``rcd`` command: one entry point, one subcommand group per part.

Each part owns its subcommands in its own ``cli`` module exposing
``register(subparsers)``; this module only wires them together, importing
each part lazily so that ``rcd sim`` does not pay for FastAPI and friends.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable, Sequence

# (module, help) per part; a module registers its own subcommands.
_PARTS: tuple[tuple[str, str], ...] = (
    ("shared.keys_cli", "signing keys"),
    ("shared.broker_cli", "broker configuration"),
    ("shared.protect_cli", "protect authority (Ley 21.304 lists)"),
    ("firmware_sim.cli", "simulated meters"),
    ("edge_agent.cli", "concentrator agent"),
    ("central.cli", "coordinator"),
    ("ops.cli", "operations over the REST API"),
    ("ops.demo_cli", "the end-to-end demo"),
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rcd", description="ami-rcd: remote connect/disconnect of smart meters"
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for module_name, _help in _PARTS:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            # A part not installed yet is skipped; a broken import inside it is not.
            if exc.name is None or not module_name.startswith(exc.name):
                raise
            continue
        register: Callable[[argparse._SubParsersAction[argparse.ArgumentParser]], None]
        register = module.register
        register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    handler: Callable[[argparse.Namespace], int | None] = args.handler
    code = handler(args)
    return int(code or 0)


if __name__ == "__main__":
    sys.exit(main())
