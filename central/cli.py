"""``rcd central ...``: run the coordinator and manage its database.

::

    rcd central run [--host 127.0.0.1] [--port 8080]     uvicorn serving create_app(Settings())
    rcd central init-db                                   apply the Alembic migrations
    rcd central import-meters FILE.csv                    create/update meters from CSV

Configuration comes from the environment (prefix ``RCD_``, see central/settings.py),
optionally from an env file given with ``--env-file``.
"""

from __future__ import annotations

import argparse
import gc
import logging
import sys
from pathlib import Path

EXIT_CONFIG = 2  # configuration error: the units' RestartPreventExitStatus, no restart loop
EXIT_UNAVAILABLE = 1  # something it needs is down (broker, database): systemd restarts it
SWITCH_INTERVAL_S = 0.0005  # the GIL hand-over interval of the coordinator process (see _run)
GC_THRESHOLDS = (20_000, 10, 10)  # the collector's generations in the coordinator (default 700)


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    central = subparsers.add_parser(
        "central",
        help="coordinator",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    central.add_argument("--env-file", type=Path, default=None, help="file of RCD_* settings")
    sub = central.add_subparsers(dest="central_command", metavar="COMMAND")
    sub.required = True
    run = sub.add_parser("run", help="serve the REST API and run the dispatcher")
    run.add_argument("--host", default="127.0.0.1")
    run.add_argument("--port", type=int, default=8080)
    run.add_argument("--log-level", default="info")
    run.set_defaults(handler=_run)
    init = sub.add_parser("init-db", help="create or upgrade the database schema")
    init.set_defaults(handler=_init_db)
    imp = sub.add_parser("import-meters", help="create/update meters from a CSV file")
    imp.add_argument("csv", type=Path)
    imp.set_defaults(handler=_import_meters)


def _settings(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    from pydantic import ValidationError

    from central.errors import ConfigurationError
    from central.settings import Settings

    try:
        if args.env_file is not None:
            return Settings(_env_file=args.env_file)  # type: ignore[call-arg]
        return Settings()
    except ValidationError as exc:
        for error in exc.errors(include_url=False):
            name = "RCD_" + "_".join(str(p) for p in error.get("loc", ())).upper()
            message = str(error.get("msg", "invalid")).removeprefix("Value error, ")
            print(f"configuration error: {name}: {message}", file=sys.stderr)
        return None
    except (ConfigurationError, ValueError) as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return None


def _run(args: argparse.Namespace) -> int:
    import uvicorn

    from central.app import create_app
    from central.errors import BrokerRefused, CentralError

    settings = _settings(args)
    if settings is None:
        return EXIT_CONFIG
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        app = create_app(settings)
    except CentralError as exc:
        print(f"cannot start: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    coordinator = app.state.context.coordinator
    try:
        coordinator.start()
    except BrokerRefused as exc:
        # Credentials or certificate: retrying cannot help. Exit 2 is the units'
        # RestartPreventExitStatus; a broker that is down (DispatchError) exits 1.
        print(f"cannot start: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except CentralError as exc:
        print(f"cannot start: {exc}", file=sys.stderr)
        return EXIT_UNAVAILABLE
    app.state.coordinator_started = True
    # The SOAP/REST request threads, the dispatcher, the publishers and paho's network
    # thread share one GIL, and each releases it for every signature, statement and
    # socket call; taking it back waits for a busy thread's switch interval (5 ms by
    # default), which was most of a claim's wall time under a SOAP intake (issue 14).
    sys.setswitchinterval(SWITCH_INTERVAL_S)
    # What start-up built (modules, ORM mappings, settings) lives as long as the process:
    # frozen, the full collections a batch's garbage triggers no longer walk it, and a
    # larger first generation collects a 1,000-order request's objects in fewer passes.
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level)
    return 0


def _init_db(args: argparse.Namespace) -> int:
    from central.db import make_engine, migrate

    settings = _settings(args)
    if settings is None:
        return EXIT_CONFIG
    engine = make_engine(settings.database_url)
    try:
        migrate(engine)
    finally:
        engine.dispose()
    print(f"database ready: {engine.url.render_as_string(hide_password=True)}")
    return 0


def _import_meters(args: argparse.Namespace) -> int:
    from central.db import make_engine, make_session_factory, migrate, session_scope
    from central.errors import CentralError
    from central.services.registry import import_meters_csv

    settings = _settings(args)
    if settings is None:
        return EXIT_CONFIG
    try:
        text = args.csv.read_text(encoding="utf-8-sig")
    except OSError as exc:
        print(f"cannot read {args.csv}: {exc}", file=sys.stderr)
        return 1
    engine = make_engine(settings.database_url)
    try:
        migrate(engine)
        with session_scope(make_session_factory(engine)) as session:
            report = import_meters_csv(session, text)
    except CentralError as exc:
        print(f"import failed: {exc}", file=sys.stderr)
        return 1
    finally:
        engine.dispose()
    print(
        f"meters created {report.created}, updated {report.updated}, "
        f"concentrators created {report.concentrators_created}, errors {len(report.errors)}"
    )
    for error in report.errors:
        print(f"  {error}", file=sys.stderr)
    return 1 if report.errors else 0
