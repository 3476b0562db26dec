"""What operators reach for, against the real coordinator over real HTTP (issue 15):
outcomes kept once reported (4), ``--wait`` (5), ids by prefix (8), one-line errors
for every bad CSV row and unknown filter values (11), meters and work orders
commands and the field crew's details (12)."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import httpx
import pytest

from central.services.orders import mark_reported
from ops.cli import main, parse

from .live import ADMIN, OPERATOR, VIEWER, LiveServer, dispatch_all, report_result, report_status

EXAMPLE_CSV = Path(__file__).resolve().parents[2] / "deploy" / "central" / "meters.example.csv"
PLACE_CSV = (
    "meter,concentrator_id,line_id,hdlc_address,service_address,comuna,region,latitude,"
    "longitude,customer_ref,access_notes\n"
    "FLD-1,conc-field,line1,16,Los Aromos 77,Ñuñoa,Metropolitana,-33.4569,-70.5978,"
    "SUM-777,key at the neighbour's (no. 79)\n"
    "FLD-2,conc-field,line1,17,Los Aromos 81,Ñuñoa,Metropolitana,,,SUM-778,\n"
)


def rcd(live: LiveServer, token: str, *args: str) -> int:
    return main([*args[:2], "--url", live.url, "--token", token, *args[2:]])


def created_id(out: str) -> str:
    return out.strip().splitlines()[0].split()[1]


def _import(live: LiveServer, text: str) -> None:
    response = httpx.post(
        f"{live.url}/api/v1/meters/import",
        content=text.encode(),
        headers={"Authorization": f"Bearer {ADMIN}", "Content-Type": "text/csv"},
    )
    response.raise_for_status()
    assert response.json()["errors"] == []


def _ended_and_reported(live: LiveServer, meter: str, outcome: str, reason: str | None) -> str:
    """An order of ``meter`` that ended ``outcome`` and that Legacy then acknowledged."""
    assert rcd(live, OPERATOR, "order", "disconnect", meter, "--special") == 0
    order_id = ""
    for order in httpx.get(
        f"{live.url}/api/v1/orders",
        params={"meter_id": meter},
        headers={"Authorization": f"Bearer {VIEWER}"},
    ).json():
        order_id = order["id"]
        break
    assert dispatch_all(live.app) >= 1
    report_result(live.app, order_id, meter, "conc-field", outcome, reason=reason, attempts=2)
    with live.app.state.context.factory() as session:
        mark_reported(session, order_id, "legacy")
        session.commit()
    return order_id


def test_reported_orders_keep_their_outcome(
    live: LiveServer, capsys: pytest.CaptureFixture[str]
) -> None:
    """Item 4: state and outcome are two fields; outcome filters find reported orders."""
    _import(live, PLACE_CSV)
    failed = _ended_and_reported(live, "FLD-1", "failed", "meter_not_responding")
    capsys.readouterr()
    viewer = {"Authorization": f"Bearer {VIEWER}"}
    order = httpx.get(f"{live.url}/api/v1/orders/{failed}", headers=viewer).json()
    assert order["state"] == "reported"
    assert order["outcome"] == "failed" and order["final_state"] == "failed"
    for params in ({"state": "failed"}, {"outcome": "failed"}):
        found = httpx.get(f"{live.url}/api/v1/orders", params=params, headers=viewer).json()
        assert failed in [o["id"] for o in found], params
    done = httpx.get(f"{live.url}/api/v1/orders", params={"outcome": "disconnected"},
                     headers=viewer).json()
    assert failed not in [o["id"] for o in done]

    assert rcd(live, VIEWER, "order", "list", "--state", "failed") == 0
    out = capsys.readouterr().out
    line = next(row for row in out.splitlines() if failed in row)
    assert "reported" in line and "failed" in line and "meter_not_responding" in line
    assert rcd(live, VIEWER, "order", "list", "--outcome", "failed") == 0
    assert failed in capsys.readouterr().out
    assert rcd(live, VIEWER, "order", "show", failed) == 0
    out = capsys.readouterr().out
    facts = dict(line.split(None, 1) for line in out.splitlines()[:12] if line.strip())
    assert facts["state"].strip() == "reported"
    assert facts["outcome"].strip() == "failed"

    # the work order's CSV export and the timeline's actor for it
    timeline = httpx.get(f"{live.url}/api/v1/orders/{failed}", headers=viewer).json()["events"]
    created = [e for e in timeline if e["event"] == "work_order_created"]
    assert [e["actor"] for e in created] == ["central"]
    assert created[0]["label"] == "field work order created"


def test_unknown_filter_values_are_refused_with_the_valid_ones(
    live: LiveServer, capsys: pytest.CaptureFixture[str]
) -> None:
    """Item 11: ``--state done`` and ``?state=bogus`` are errors, not empty lists."""
    viewer = {"Authorization": f"Bearer {VIEWER}"}
    for name in ("state", "outcome", "action"):
        response = httpx.get(f"{live.url}/api/v1/orders", params={name: "bogus"}, headers=viewer)
        assert response.status_code == 400, name
        detail = response.json()["detail"]
        assert f"{name} 'bogus' is not one of" in detail
    assert "completed_connected" in httpx.get(
        f"{live.url}/api/v1/orders", params={"state": "done"}, headers=viewer
    ).json()["detail"]
    with pytest.raises(SystemExit) as exit_info:
        rcd(live, VIEWER, "order", "list", "--state", "done")
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "invalid choice: 'done'" in err and "completed_connected" in err


def test_wait_without_seconds_and_a_clear_timeout(
    live: LiveServer, capsys: pytest.CaptureFixture[str]
) -> None:
    """Item 5: ``--wait`` alone waits a default time; a timeout says the order runs on."""
    _import(live, "meter_id,concentrator_id,line_id,hdlc_address\nWAIT-1,conc-wait,line1,16\n")
    args = parse(["order", "disconnect", "WAIT-1", "--wait"])
    assert args.wait == 120.0
    code = rcd(live, OPERATOR, "order", "disconnect", "WAIT-1", "--special", "--wait", "1")
    out, err = capsys.readouterr()
    assert code == 3
    order_id = created_id(out)
    assert f"order {order_id} is still running" in err
    assert f"rcd order show {order_id}" in err


def test_order_ids_by_prefix(live: LiveServer, capsys: pytest.CaptureFixture[str]) -> None:
    """Item 8: the dashboard's 8 characters work in ``rcd order show``."""
    _import(live, "meter_id,concentrator_id,line_id,hdlc_address\nPFX-1,conc-pfx,line1,16\n")
    assert rcd(live, OPERATOR, "order", "connect", "PFX-1") == 0
    order_id = created_id(capsys.readouterr().out)
    assert rcd(live, VIEWER, "order", "show", order_id[:8]) == 0
    out = capsys.readouterr().out
    assert order_id in out and "PFX-1" in out
    assert rcd(live, OPERATOR, "order", "cancel", order_id[:8]) == 0
    assert f"order {order_id} cancelled" in capsys.readouterr().out
    assert rcd(live, VIEWER, "order", "show", "ffffffffzz") == 1
    assert "HTTP 404" in capsys.readouterr().err


def test_meter_id_did_you_mean(live: LiveServer, capsys: pytest.CaptureFixture[str]) -> None:
    """Item 11: spaces around an id are dropped; a case slip gets a "did you mean"."""
    _import(live, "meter_id,concentrator_id,line_id,hdlc_address\nDC01-M11,dc01,line1,16\n")
    assert rcd(live, OPERATOR, "order", "disconnect", "dc01-m11", "--special") == 4
    err = capsys.readouterr().err
    assert "unknown_meter" in err and "did you mean DC01-M11?" in err
    assert rcd(live, OPERATOR, "order", "disconnect", " DC01-M11 ", "--special") == 0
    out = capsys.readouterr().out
    assert "validated" in out


def test_meters_import_errors_one_line_per_field(
    live: LiveServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Item 11: every bad row at once, one line naming the field; header problems exit 2."""
    path = tmp_path / "m.csv"
    path.write_text(
        "meter,concentrator_id,line_id,hdlc_address,commissioned,latitude\n"
        "BAD-1,conc-x,line1,5,true,\n"
        "OK-1,conc-x,line1,16,true,-33.4\n"
        "BAD-2,conc-x,line1,17,maybe,-133.0\n"
        "bad id!,conc-x,line1,18,true,\n"
    )
    assert rcd(live, ADMIN, "meters", "import", str(path)) == 2
    out, err = capsys.readouterr()
    assert "created: 1" in out
    lines = err.strip().splitlines()
    assert len(lines) == 4, err
    assert all(line.startswith(f"error: {path}: line ") for line in lines)
    assert "line 2: hdlc_address:" in lines[0] and "16" in lines[0]
    assert "line 4: commissioned: must be true or false" in err
    assert "line 4: latitude:" in err
    assert "line 5: meter_id:" in err
    assert "pydantic" not in err and "https://" not in err

    path.write_text("meter_number,concentrator_id\nX,conc-x\n")
    assert rcd(live, ADMIN, "meters", "import", str(path)) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no meter_id column" in err and "meter_number" in err


def test_example_csv_imports_and_campaign_reports_every_bad_row(
    live: LiveServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert rcd(live, ADMIN, "meters", "import", str(EXAMPLE_CSV)) == 0
    assert "created: 3" in capsys.readouterr().out
    path = tmp_path / "c.csv"
    path.write_text(
        "meter,action,reason,priority\nA,disconnect,,\nB,explode,,\nC,connect,payday,\n"
        ",connect,,\nD,connect,,high\n"
    )
    assert rcd(live, OPERATOR, "campaign", "run", str(path)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        f"error: {path}:3: action: 'explode' is not one of disconnect, connect, arm",
        f"error: {path}:4: reason: 'payday' is not one of non_payment, payment_restored, "
        "losses, customer_request",
        f"error: {path}:5: meter_id: empty",
        f"error: {path}:6: priority: 'high' is not a number",
    ]


def test_meters_and_work_orders_commands(
    live: LiveServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Item 12: meters list/show/history, workorders list/show/close/export, with the
    place a crew goes to."""
    _import(live, PLACE_CSV.replace("FLD-", "WO-"))
    order_id = _ended_and_reported(live, "WO-1", "failed", "meter_unreachable")
    capsys.readouterr()

    assert rcd(live, VIEWER, "meters", "list", "--concentrator", "conc-field") == 0
    out = capsys.readouterr().out
    assert "WO-1" in out and "WO-2" in out and "Ñuñoa" in out and "Los Aromos 77" in out
    assert rcd(live, VIEWER, "meters", "show", "WO-1") == 0
    out = capsys.readouterr().out
    assert "-33.4569, -70.5978" in out and "SUM-777" in out and "neighbour" in out
    assert rcd(live, VIEWER, "meters", "show", "NOPE") == 1
    assert "HTTP 404" in capsys.readouterr().err
    assert rcd(live, VIEWER, "meters", "history", "WO-1") == 0
    out = capsys.readouterr().out
    line = next(row for row in out.splitlines() if order_id in row)
    assert "reported" in line and "failed" in line and "(open)" in line

    assert rcd(live, VIEWER, "workorders", "list") == 0
    out = capsys.readouterr().out
    line = next(row for row in out.splitlines() if "WO-1" in row)
    work_id = line.split()[0]
    assert "Los Aromos 77" in line and "Ñuñoa" in line
    assert rcd(live, VIEWER, "workorders", "show", work_id) == 0
    out = capsys.readouterr().out
    assert "Los Aromos 77" in out and "SUM-777" in out and "-33.4569" in out
    assert "meter_unreachable" in out and order_id in out

    export = tmp_path / "wo.csv"
    assert rcd(live, VIEWER, "workorders", "export", "--out", str(export)) == 0
    rows = list(csv.DictReader(io.StringIO(export.read_text(encoding="utf-8"))))
    row = next(r for r in rows if r["meter_id"] == "WO-1")
    assert row["service_address"] == "Los Aromos 77" and row["comuna"] == "Ñuñoa"
    assert row["region"] == "Metropolitana" and row["customer_ref"] == "SUM-777"
    assert float(row["latitude"]) == -33.4569 and float(row["longitude"]) == -70.5978
    assert row["access_notes"] == "key at the neighbour's (no. 79)"

    assert rcd(live, OPERATOR, "workorders", "close", work_id, "--outcome", "disconnected",
               "--notes", "cut at the pole") == 0
    assert f"work order {work_id} closed: disconnected" in capsys.readouterr().out
    assert rcd(live, VIEWER, "workorders", "list") == 0
    assert "WO-1" not in capsys.readouterr().out
    assert rcd(live, VIEWER, "workorders", "list", "--status", "closed") == 0
    assert "WO-1" in capsys.readouterr().out
    assert rcd(live, OPERATOR, "workorders", "close", work_id, "--outcome", "other") == 1
    assert "already closed" in capsys.readouterr().err


def test_reconnects_at_risk(live: LiveServer, capsys: pytest.CaptureFixture[str]) -> None:
    """Issue 17: a reconnect on an offline concentrator is listed with why, and
    ``--strict`` fails only once an SLA is breached (none here)."""
    _import(live, PLACE_CSV.replace("FLD-", "SLA-").replace("conc-field", "conc-sla"))
    assert rcd(live, OPERATOR, "order", "connect", "SLA-1") == 0
    report_status(live.app, "conc-sla", online=False, queue_depth=0)
    capsys.readouterr()
    assert rcd(live, VIEWER, "reconnects", "at-risk", "--strict") == 0
    out = capsys.readouterr().out
    line = next(row for row in out.splitlines() if "SLA-1" in row)
    assert "conc-sla" in line and "concentrator conc-sla is offline" in line
    assert "1 at risk, 0 breached, 1 with the remote path failing" in out
