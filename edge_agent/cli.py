"""``rcd edge ...``: run the agent, show its state, import meters.

::

    rcd edge run --config /etc/rcd/edge.toml
    rcd edge status --config /etc/rcd/edge.toml [--json]
    rcd edge meters import --config /etc/rcd/edge.toml meters.csv

The meters CSV has a header with the fields of ``shared.contracts.MeterEntry``:
``meter_id,transport,line_id,hdlc_address,host,port,logical_server,commissioned,keys_ref``
(empty cells mean "not set"; ``commissioned`` is true/false/1/0).
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path
from typing import Any

from edge_agent.errors import ConfigError, EdgeError

EXIT_CONFIG = 2
EXIT_FAILED = 1


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    edge = subparsers.add_parser("edge", help="concentrator agent", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = edge.add_subparsers(dest="edge_command", metavar="COMMAND")
    sub.required = True

    run = sub.add_parser("run", help="run the agent until SIGTERM")
    run.add_argument("--config", required=True, type=Path, help="agent TOML file")
    run.set_defaults(handler=_run)

    status = sub.add_parser("status", help="queue, outbox, meters and link of the local agent")
    status.add_argument("--config", required=True, type=Path)
    status.add_argument("--json", action="store_true", help="machine-readable output")
    status.set_defaults(handler=_status)

    meters = sub.add_parser("meters", help="local meter table")
    msub = meters.add_subparsers(dest="meters_command", metavar="COMMAND")
    msub.required = True
    imp = msub.add_parser("import", help="add/update meters from a CSV file")
    imp.add_argument("--config", required=True, type=Path)
    imp.add_argument("csv", type=Path, help="CSV file with a header row")
    imp.set_defaults(handler=_import)


def _load(path: Path) -> Any:
    from edge_agent.config import load_config

    return load_config(path)


def _fail(message: str, code: int) -> int:
    print(f"rcd edge: {message}", file=sys.stderr)
    return code


def _run(args: argparse.Namespace) -> int:
    from edge_agent import logs
    from edge_agent.agent import EdgeAgent

    try:
        config = _load(args.config)
        logs.configure(config.agent.log_format, config.agent.log_level)
        agent = EdgeAgent(config)
    except ConfigError as exc:
        return _fail(f"configuration error: {exc}", EXIT_CONFIG)
    except EdgeError as exc:
        return _fail(str(exc), EXIT_FAILED)
    agent.run_forever()
    return 0


def _status(args: argparse.Namespace) -> int:
    from edge_agent.relay_store import audit_summary
    from edge_agent.store import Store

    try:
        config = _load(args.config)
        with Store(config.database_path) as store:
            info = {
                "concentrator_id": config.agent.concentrator_id,
                "database": str(config.database_path),
                "link": store.get_meta("link") or "never connected",
                "orders": store.counts_by_state(),
                "queue_depth": store.queue_depth(),
                "outbox_depth": store.outbox_depth(),
                "meters": store.meter_count(),
                "meter_table_generation": store.get_meta("meter_generation"),
                "protected_list_version": store.protected_version(),
                "relay_audit": {"enabled": config.audit.enabled,
                                "cycle_s": config.audit.cycle_s,
                                "max_airtime_share": config.audit.max_airtime_share,
                                "lines": audit_summary(store, config.audit.cycle_s)},
            }
    except ConfigError as exc:
        return _fail(f"configuration error: {exc}", EXIT_CONFIG)
    except EdgeError as exc:
        return _fail(str(exc), EXIT_FAILED)
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        audit = info.pop("relay_audit")
        for key, value in info.items():
            if isinstance(value, dict):
                value = ", ".join(f"{k}={v}" for k, v in sorted(value.items())) or "none"
            print(f"{key:24} {value}")
        print(f"{'relay_audit':24} {'on' if audit['enabled'] else 'off'}, cycle "
              f"{audit['cycle_s']:g}s, airtime bound {audit['max_airtime_share']:.0%}")
        for line, figures in audit["lines"].items():
            share = figures["airtime_share"]
            print(f"  {line:22} coverage {figures['coverage']:.0%} "
                  f"({figures['audited_last_cycle']}/{figures['meters']}), airtime "
                  f"{'-' if share is None else f'{share:.1%}'}, failing {figures['failing']}")
    return 0


def _cell(value: str | None) -> str | None:
    return None if value is None or value.strip() == "" else value.strip()


def read_meters_csv(path: Path) -> list[Any]:
    from shared.contracts import MeterEntry, validate
    from shared.errors import InvalidPayload

    entries = []
    try:
        with path.open(newline="") as fh:
            reader = csv.DictReader(fh)
            for line_no, row in enumerate(reader, start=2):
                data: dict[str, Any] = {
                    k.strip(): _cell(v) for k, v in row.items() if k and _cell(v) is not None
                }
                if "commissioned" in data:
                    data["commissioned"] = str(data["commissioned"]).lower() in ("1", "true", "yes")
                try:
                    entries.append(validate(MeterEntry, data, strict=False))  # CSV: all text
                except InvalidPayload as exc:
                    raise ConfigError(f"{path}:{line_no}", str(exc)) from exc
    except OSError as exc:
        raise ConfigError(str(path), f"cannot read: {exc}") from exc
    return entries


def _import(args: argparse.Namespace) -> int:
    from edge_agent.store import Store

    try:
        config = _load(args.config)
        entries = read_meters_csv(args.csv)
        with Store(config.database_path) as store:
            count = store.import_meters(entries)
            total = store.meter_count()
    except ConfigError as exc:
        return _fail(str(exc), EXIT_CONFIG)
    except EdgeError as exc:
        return _fail(str(exc), EXIT_FAILED)
    print(f"imported {count} meters; the table now holds {total}")
    return 0
