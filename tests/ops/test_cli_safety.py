"""``rcd quarantine`` and ``rcd hold`` (issue 17) against the real coordinator over real
HTTP (SQLite, MQTT off)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from central.services import validation
from central.settings import AnomalySettings, ScopeLimits
from ops.cli import main

from .live import (
    ADMIN,
    APPROVER,
    METERS_CSV,
    OPERATOR,
    VIEWER,
    LiveServer,
    make_app,
    make_settings,
    serve,
)


@pytest.fixture(scope="module")
def safety_live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    tmp: Path = tmp_path_factory.mktemp("ops-safety")
    anomaly = AnomalySettings(limits=ScopeLimits(source=1), baseline_weeks=0)
    app = make_app(make_settings(tmp, anomaly=anomaly, approval_threshold=1000))
    with serve(app) as server:
        httpx.post(
            f"{server.url}/api/v1/meters/import",
            content=METERS_CSV.encode(),
            headers={"Authorization": f"Bearer {ADMIN}", "Content-Type": "text/csv"},
        ).raise_for_status()
        yield server


def rcd(live: LiveServer, token: str, *args: str) -> int:
    return main([*args[:2], "--url", live.url, "--token", token, *args[2:]])


def test_hold_declare_list_end(safety_live: LiveServer, capsys: pytest.CaptureFixture[str]) -> None:
    declare = ("hold", "declare", "--kind", "weather", "--region", "Maule", "--reason", "storm")
    assert rcd(safety_live, OPERATOR, *declare, "--for", "2h") == 0
    out = capsys.readouterr().out
    assert out.startswith("hold ") and "weather on region Maule until" in out
    hold_id = out.split()[1].rstrip(":")
    assert rcd(safety_live, VIEWER, "hold", "list", "--active") == 0
    listed = capsys.readouterr().out
    assert "region Maule" in listed and "storm" in listed and " yes " in listed
    assert rcd(safety_live, VIEWER, *declare, "--for", "2h") == 1  # a viewer may not
    assert "403" in capsys.readouterr().err
    assert rcd(safety_live, OPERATOR, *declare, "--for", "2 hours") == 2
    assert "not a duration" in capsys.readouterr().err
    assert rcd(safety_live, OPERATOR, *declare, "--until", "2099-01-01T00:00") == 2
    assert "no time zone" in capsys.readouterr().err
    assert rcd(safety_live, OPERATOR, "hold", "end", hold_id) == 0
    assert f"hold {hold_id} ended by dev-operator" in capsys.readouterr().out
    assert rcd(safety_live, OPERATOR, "hold", "end", hold_id) == 1
    assert "already ended" in capsys.readouterr().err
    assert rcd(safety_live, VIEWER, "hold", "orders") == 0


def test_quarantine_list_show_and_decide(
    safety_live: LiveServer, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(validation, "is_working_day", lambda day, country="CL": True)
    body = {
        "orders": [
            {"meter_id": m, "action": "disconnect", "reason": "non_payment"}
            for m in ("MTR-001", "MTR-002", "MTR-004")
        ]
    }
    answer = httpx.post(
        f"{safety_live.url}/api/v1/orders/batch",
        json=body,
        headers={"Authorization": f"Bearer {OPERATOR}"},
    ).json()
    assert {i["state"] for i in answer["items"]} == {"quarantined"}
    assert rcd(safety_live, VIEWER, "quarantine", "list") == 0
    listed = capsys.readouterr().out
    assert "source dev-operator" in listed and "dev-operator" in listed.splitlines()[-1]
    quarantine_id = listed.splitlines()[-1].split()[2]
    assert rcd(safety_live, VIEWER, "quarantine", "show", quarantine_id) == 0
    shown = capsys.readouterr().out
    assert "threshold   1 (limit 1)" in shown and shown.count("held order") == 3
    assert rcd(safety_live, OPERATOR, "quarantine", "release", quarantine_id) == 1
    assert "403" in capsys.readouterr().err
    assert rcd(safety_live, APPROVER, "quarantine", "delete", quarantine_id, "--note", "no") == 0
    assert capsys.readouterr().out.strip() == f"quarantine {quarantine_id} deleted by dev-approver"
    assert rcd(safety_live, VIEWER, "quarantine", "list", "--state", "deleted") == 0
    assert quarantine_id in capsys.readouterr().out
