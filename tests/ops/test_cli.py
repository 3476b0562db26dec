"""The ``rcd`` ops commands against the real coordinator over real HTTP (no mocks).

Most tests call ``shared.cli.main`` in-process (fast); the campaign test runs the
installed entry point in a subprocess, as an operator would, while the test plays
the concentrators through the coordinator's own result consumer.
"""

from __future__ import annotations

import csv
import io
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from ops.cli import main

from .live import (
    ADMIN,
    APPROVER,
    OPERATOR,
    VIEWER,
    LiveServer,
    dispatch_all,
    release_held,
    report_result,
)


def rcd(live: LiveServer, token: str, *args: str) -> int:
    return main([*args[:2], "--url", live.url, "--token", token, *args[2:]])


def created_id(out: str) -> str:
    # "order <id> <state>"
    first = out.strip().splitlines()[0].split()
    assert first[0] == "order", out
    return first[1]


def test_disconnect_then_show_timeline(
    live: LiveServer, capsys: pytest.CaptureFixture[str]
) -> None:
    code = rcd(
        live, OPERATOR, "order", "disconnect", "MTR-001", "--reason", "non_payment", "--special"
    )
    out, err = capsys.readouterr()
    assert code == 0, err
    order_id = created_id(out)
    assert "validated" in out
    release_held(f"{live.url}/api/v1", order_id)

    assert dispatch_all(live.app) >= 1
    report_result(live.app, order_id, "MTR-001", "conc-north", "disconnected", energy_kwh=812.25)

    code = rcd(live, VIEWER, "order", "show", order_id)
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "completed_disconnected" in out
    assert "812.25 kWh" in out
    # the timeline table: one line per event with its step of the brief, labelled by
    # what it holds (the same labels as the API's and the dashboard's)
    assert "time (UTC)" in out and "step" in out
    lines = out.splitlines()
    for step, label in (
        ("3", "meter validated"),
        ("4", "signed and sent to the concentrator"),
        ("5", "stored by the edge agent (receipt)"),
        ("6", "DLMS attempt on the meter"),
        ("8", "result: disconnected"),
    ):
        assert any(line.split()[2:3] == [step] and label in line for line in lines), out
    assert "executed on meter" not in out
    # recorded order: the receipt comes after the dispatch, whatever the agent's clock says
    assert out.index("signed and sent") < out.index("stored by the edge agent")


def test_refused_order_says_why(live: LiveServer, capsys: pytest.CaptureFixture[str]) -> None:
    code = rcd(live, OPERATOR, "order", "disconnect", "MTR-005", "--special")  # Ley 21.304
    _, err = capsys.readouterr()
    assert code == 4
    assert "refused" in err and "protected" in err


def test_api_errors_are_one_clear_line(
    live: LiveServer, capsys: pytest.CaptureFixture[str]
) -> None:
    assert rcd(live, VIEWER, "order", "show", "no-such-order") == 1
    _, err = capsys.readouterr()
    assert err.count("\n") == 1
    assert "HTTP 404" in err and "no-such-order" in err

    assert rcd(live, "wrong-token", "order", "show", "x") == 1
    _, err = capsys.readouterr()
    assert "HTTP 401" in err and "unknown API token" in err

    # a viewer may not create orders
    assert rcd(live, VIEWER, "order", "connect", "MTR-002") == 1
    _, err = capsys.readouterr()
    assert "HTTP 403" in err

    # request validation errors (422) name the field
    assert rcd(live, OPERATOR, "order", "connect", "MTR-002", "--priority", "99") == 1
    _, err = capsys.readouterr()
    assert err.startswith("error: HTTP 422") and "priority" in err and err.count("\n") == 1

    assert main(["order", "show", "x", "--url", "http://127.0.0.1:9", "--token", VIEWER]) == 1
    _, err = capsys.readouterr()
    assert "cannot reach the coordinator" in err


def test_cancel(live: LiveServer, capsys: pytest.CaptureFixture[str]) -> None:
    assert rcd(live, OPERATOR, "order", "connect", "MTR-003", "--reason", "payment_restored") == 0
    order_id = created_id(capsys.readouterr().out)
    assert rcd(live, OPERATOR, "order", "cancel", order_id, "--detail", "paid at the counter") == 0
    out, _ = capsys.readouterr()
    assert f"order {order_id} cancelled" in out
    # cancelling an ended order: the API's 409 in one line
    assert rcd(live, OPERATOR, "order", "cancel", order_id) == 1
    _, err = capsys.readouterr()
    assert "HTTP 409" in err and "cancel" in err


def test_meters_import(
    live: LiveServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "meters.csv"
    path.write_text(
        "meter_id,concentrator_id,line_id,hdlc_address\n"
        "IMP-1,conc-east,line1,16\nIMP-2,conc-east,line1,17\n"
    )
    assert rcd(live, ADMIN, "meters", "import", str(path)) == 0
    out, _ = capsys.readouterr()
    assert "created: 2" in out
    assert rcd(live, OPERATOR, "meters", "import", str(path)) == 1  # admin only
    assert "HTTP 403" in capsys.readouterr().err
    assert rcd(live, ADMIN, "meters", "import", str(tmp_path / "missing.csv")) == 2


def test_campaign_bad_file(
    live: LiveServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "c.csv"
    path.write_text("meter_id,action\nMTR-002,disconnect\nMTR-003,explode\n")
    assert rcd(live, OPERATOR, "campaign", "run", str(path)) == 2
    assert f"{path}:3" in capsys.readouterr().err


def _finish_when_dispatched(live: LiveServer, outcomes: dict[str, tuple[str, str | None]]) -> None:
    """Play the concentrators: answer every dispatched order of these meters."""
    headers = {"Authorization": f"Bearer {VIEWER}"}
    done: set[str] = set()
    deadline = time.monotonic() + 20
    while len(done) < len(outcomes) and time.monotonic() < deadline:
        dispatch_all(live.app)
        for order in httpx.get(
            f"{live.url}/api/v1/orders", params={"state": "dispatched"}, headers=headers
        ).json():
            meter = order["meter_id"]
            if meter in outcomes and order["id"] not in done:
                outcome, reason = outcomes[meter]
                report_result(
                    live.app,
                    order["id"],
                    meter,
                    order["concentrator_id"],
                    outcome,
                    reason=reason,
                    attempts=3 if reason else 1,
                )
                done.add(order["id"])
        time.sleep(0.2)
    assert len(done) == len(outcomes)


def test_campaign_run_with_progress_and_summary(live: LiveServer, tmp_path: Path) -> None:
    path = tmp_path / "campaign.csv"
    path.write_text(
        "meter_id,action,reason,special\n"
        "MTR-002,disconnect,non_payment,yes\n"
        "MTR-003,disconnect,losses,yes\n"
        "MTR-004,connect,payment_restored,\n"
        "MTR-005,disconnect,non_payment,yes\n"  # protected customer: refused
        "MTR-006,connect,payment_restored,\n"  # not commissioned: refused
    )
    env = {**os.environ, "RCD_URL": live.url, "RCD_TOKEN": OPERATOR}
    proc = subprocess.Popen(
        [sys.executable, "-m", "shared.cli", "campaign", "run", str(path), "--poll", "0.2"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        _finish_when_dispatched(
            live,
            {
                "MTR-002": ("disconnected", None),
                "MTR-003": ("failed", "meter_not_responding"),
                "MTR-004": ("armed", None),
            },
        )
        out, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    assert "5 orders sent, 3 accepted, 2 refused" in err
    assert "3/3" in err and "[####" in err  # the progress bar, on stderr
    lines = out.splitlines()
    assert lines[0].split()[:4] == ["meter", "action", "order", "outcome"]
    rows = {line.split()[0]: line for line in lines[2:] if line.startswith("MTR-")}
    assert "disconnected" in rows["MTR-002"]
    assert "failed" in rows["MTR-003"] and "meter_not_responding" in rows["MTR-003"]
    assert "armed" in rows["MTR-004"]
    assert rows["MTR-005"].split()[1] == "disconnect"
    assert "rejected" in rows["MTR-005"] and "protected" in rows["MTR-005"]
    assert "rejected" in rows["MTR-006"] and "commission" in rows["MTR-006"]
    assert rows["MTR-003"].split()[-1].isdigit()  # its field work order


def test_campaign_above_threshold_waits_for_approval(
    live: LiveServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    meters = tmp_path / "m.csv"
    meters.write_text(
        "meter_id,concentrator_id,line_id,hdlc_address\n"
        + "".join(f"BIG-{n},conc-west,line1,{16 + n}\n" for n in range(6))
    )
    assert rcd(live, ADMIN, "meters", "import", str(meters)) == 0
    path = tmp_path / "big.csv"
    path.write_text("meter,action,special\n" + "".join(f"BIG-{n},disconnect,1\n" for n in range(6)))
    capsys.readouterr()
    assert rcd(live, OPERATOR, "campaign", "run", str(path)) == 3
    _, err = capsys.readouterr()
    assert "approval" in err
    # the time it will take, stated before it starts (six orders on one line)
    assert "estimate: about" in err and "concentrator conc-west: 6 orders" in err
    batch_id = err.split("batch ")[1].split(":")[0]
    assert rcd(live, APPROVER, "campaign", "approve", batch_id) == 0
    assert "approved" in capsys.readouterr().out
    # the requester cannot approve their own batch
    assert rcd(live, OPERATOR, "campaign", "approve", batch_id) == 1
    assert "HTTP 403" in capsys.readouterr().err


def test_workorders_export(
    live: LiveServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert rcd(live, OPERATOR, "order", "disconnect", "MTR-004", "--special") == 0
    order_id = created_id(capsys.readouterr().out)
    dispatch_all(live.app)
    report_result(
        live.app, order_id, "MTR-004", "conc-south", "failed", reason="relay_did_not_switch"
    )
    out_file = tmp_path / "wo.csv"
    assert rcd(live, VIEWER, "workorders", "export", "--out", str(out_file)) == 0
    rows = list(csv.DictReader(io.StringIO(out_file.read_text())))
    assert any(r.get("order_id") == order_id for r in rows), rows
    assert "written to" in capsys.readouterr().err
    assert rcd(live, VIEWER, "workorders", "export", "--status", "open") == 0
    assert order_id in capsys.readouterr().out


def test_meters_import_reports_bad_lines(
    live: LiveServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "bad.csv"
    path.write_text("meter_id,concentrator_id,hdlc_address\nOK-1,conc-east,16\nBAD-1,conc-east,x\n")
    assert rcd(live, ADMIN, "meters", "import", str(path)) == 2
    out, err = capsys.readouterr()
    assert "created: 1" in out
    assert "line 3" in err
