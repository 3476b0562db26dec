"""What ``rcd demo`` prints beside its progress: log lines that say which meter, why,
and whether the failure is one the demo provokes on purpose; the tokens and the ``rcd``
profile for acting on a running demo; what Ctrl-C stops."""

from __future__ import annotations

import logging
import shlex
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Final, Protocol


class ScenarioLike(Protocol):
    @property
    def meter_id(self) -> str: ...
    @property
    def expect(self) -> str: ...
    @property
    def reason(self) -> str | None: ...
    @property
    def what(self) -> str: ...


STOPS: Final = (
    "the coordinator, the four edge agents, the 61 simulated meters, "
    "the Legacy stand-in and the broker"
)


class DemoFormatter(logging.Formatter):
    """Agent events with their fields (meter, attempt, reason); a failure the demo
    provokes on purpose says so, with the scenario it belongs to."""

    def __init__(self, scenarios: Iterable[ScenarioLike]) -> None:
        super().__init__()
        self.expected = {s.meter_id: s for s in scenarios if s.expect in ("failed", "rejected")}

    def format(self, record: logging.LogRecord) -> str:
        fields: Mapping[str, Any] = getattr(record, "fields", {}) or {}
        message = record.getMessage()
        meter = str(fields.get("meter", ""))
        scenario = self.expected.get(meter)
        if message == "attempt.failed" and scenario is not None:
            retry = "" if fields.get("reason") == scenario.reason else " (it may still pass)"
            return (
                f"expected    {meter} attempt {fields.get('attempt')} failed: "
                f"{fields.get('reason')}{retry}; scenario: {scenario.what}"
            )
        extra = " ".join(f"{k}={v}" for k, v in fields.items() if v not in (None, ""))
        text = f"{record.levelname.lower():<11} {record.name}: {message}"
        return f"{text} {extra}".rstrip()


class QuietAudit(logging.Filter):
    """The relay audit (issue 16) reads every meter every few seconds in the demo: its
    failed reads of the meters the demo breaks on purpose would repeat all along."""

    def __init__(self, scenarios: Iterable[ScenarioLike]) -> None:
        super().__init__()
        self.broken = {s.meter_id for s in scenarios if s.expect in ("failed", "rejected")}

    def filter(self, record: logging.LogRecord) -> bool:
        fields: Mapping[str, Any] = getattr(record, "fields", {}) or {}
        return not (record.getMessage() == "audit.failed"
                    and str(fields.get("meter", "")) in self.broken)


def configure_logging(scenarios: Iterable[ScenarioLike]) -> None:
    scenarios = list(scenarios)
    handler = logging.StreamHandler()
    handler.setFormatter(DemoFormatter(scenarios))
    handler.addFilter(QuietAudit(scenarios))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(logging.WARNING)


def write_profile(work_dir: Path, url: str, tokens: Mapping[str, str]) -> Path:
    """A file to source for acting on the running demo: ``. rcd.env`` then ``rcd ...``."""
    path = work_dir / "rcd.env"
    lines = [
        "# rcd demo: source this file (. rcd.env), then e.g. rcd order list",
        f"export RCD_URL={shlex.quote(url)}",
        f"export RCD_TOKEN={shlex.quote(tokens['operator'])}   # operator",
        *(
            f"export RCD_TOKEN_{role.upper()}={shlex.quote(token)}"
            for role, token in tokens.items()
        ),
    ]
    path.write_text("\n".join(lines) + "\n")
    path.chmod(0o600)
    return path


def serving_lines(url: str, tokens: Mapping[str, str], profile: Path) -> list[str]:
    roles = "  ".join(f"{role} {token}" for role, token in tokens.items())
    return [
        f"dashboard   {url}/dashboard  (opens with the viewer token)",
        f"tokens      {roles}",
        f"rcd         . {profile}   then e.g.: rcd order list; "
        # a reconnect goes any day; a disconnect on a Chilean non-working day would wait
        # for a second person's approval
        "rcd order connect DC01-M01 --wait",
        f"serving     until Ctrl-C, which stops {STOPS} and removes {profile.parent}",
    ]
