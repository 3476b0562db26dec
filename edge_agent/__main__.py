"""``python -m edge_agent run --config FILE``: the same as ``rcd edge run``, without
loading the other parts' command modules (a few MB less on the concentrator)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from edge_agent.cli import register


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m edge_agent")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    register(sub)
    args = parser.parse_args(["edge", *(sys.argv[1:] if argv is None else argv)])
    handler: Callable[[argparse.Namespace], int | None] = args.handler
    return int(handler(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
