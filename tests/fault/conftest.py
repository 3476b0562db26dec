"""The fault suite's system (one for the session: every part its own process) and the
table of verdicts printed at the end of the session."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from shared.broker import BrokerError, mosquitto_binary
from tests.conftest import POSTGRES_ADMIN_URL, _postgres_available
from tests.fault.judge import Verdict, render
from tests.fault.system import System

VERDICTS: list[Verdict] = []


@pytest.fixture(scope="session")
def system(tmp_path_factory: pytest.TempPathFactory) -> Iterator[System]:
    try:
        mosquitto_binary()
    except BrokerError as exc:
        pytest.skip(str(exc))
    if not _postgres_available():
        if os.environ.get("RCD_REQUIRE_POSTGRES"):
            pytest.fail(f"RCD_REQUIRE_POSTGRES is set but {POSTGRES_ADMIN_URL} does not answer")
        pytest.skip("the fault suite runs the coordinator on PostgreSQL; none answers")
    work: Path = tmp_path_factory.mktemp("fault-system")
    with System(work, POSTGRES_ADMIN_URL) as running:
        yield running


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not VERDICTS:
        return
    terminalreporter.section("fault suite: orders against the meters' own logs")
    terminalreporter.write_line(render(VERDICTS))
    total = sum(v.seconds for v in VERDICTS)
    terminalreporter.write_line(f"{len(VERDICTS)} scenarios, {total:.0f}s in scenarios")
