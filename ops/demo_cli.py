"""``rcd demo``: run the whole system end to end and check every scenario."""

from __future__ import annotations

import argparse
import signal
import threading
from pathlib import Path
from types import FrameType


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser(
        "demo",
        help="run broker, coordinator, simulated fleet, agents and Legacy; send orders; summarise",
    )
    parser.add_argument(
        "--serve", action="store_true", help="keep everything running after the summary"
    )
    parser.add_argument("--broker", choices=["auto", "mosquitto", "embedded"], default="auto")
    parser.add_argument(
        "--port", type=int, default=0, help="coordinator port (default: a free one)"
    )
    parser.add_argument(
        "--work-dir", type=Path, help="keep databases and keys here (default: temporary)"
    )
    parser.add_argument("--json", type=Path, help="also write the summary as JSON to this file")
    parser.add_argument(
        "--no-relay-story",
        dest="relay_story",
        action="store_false",
        help="leave out the button press and the incident (about 20 s shorter)",
    )
    parser.add_argument(
        "--timeout", type=float, default=180.0, help="seconds to wait for the orders"
    )
    parser.set_defaults(handler=_run)


def _run(args: argparse.Namespace) -> int:
    from ops.demo import run_demo
    from ops.demo_console import STOPS, configure_logging
    from ops.demo_scenarios import SCENARIOS

    configure_logging(SCENARIOS)
    stop = threading.Event()

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        if stop.is_set():
            return  # already stopping
        stop.set()
        name = "Ctrl-C" if signum == signal.SIGINT else "SIGTERM"
        print(f"\n{name}: stopping {STOPS}", flush=True)
        if not args.serve:
            raise KeyboardInterrupt  # unwinds the run: each part stops in its context

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        report = run_demo(
            work_dir=args.work_dir,
            broker=args.broker,
            serve=args.serve,
            port=args.port,
            timeout_s=args.timeout,
            stop_event=stop,
            relay_story=args.relay_story,
        )
    except KeyboardInterrupt:
        print("stopped before the end of the demo", flush=True)
        return 130
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    if args.json:
        args.json.write_text(report.to_json())
    return 0 if report.ok else 1
