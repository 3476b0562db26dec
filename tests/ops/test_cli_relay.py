"""``rcd incidents``, ``rcd alarms`` and ``rcd meters relay`` against the real coordinator
over real HTTP (issue 16); the agents' relay reports go in through the coordinator's
own result consumer, as the MQTT link hands them over."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import httpx
import pytest

from ops.cli import main
from shared import topics
from shared.codes import ControlState
from shared.contracts import RelayReading, RelayReport

from .live import ADMIN, APPROVER, OPERATOR, VIEWER, LiveServer

CSV = "meter_id,concentrator_id,line_id,hdlc_address,protected_customer\n" + "".join(
    f"REL-{n},conc-rel,l1,{16 + n},{'yes' if n == 3 else 'no'}\n" for n in range(4)
)


def rcd(live: LiveServer, token: str, *args: str) -> int:
    return main([*args[:2], "--url", live.url, "--token", token, *args[2:]])


def audit(live: LiveServer, meter: str, state: ControlState, at: datetime, key: str) -> None:
    report = RelayReport(
        report_id=key,
        concentrator_id="conc-rel",
        meter_id=meter,
        trigger="audit",
        observed_at=at,
        relay=RelayReading(control_state=state, control_mode=3),
    )
    coordinator = live.app.state.context.coordinator
    assert coordinator.handle_result(topics.results("conc-rel"), report.to_json())


def test_incident_alarm_and_relay_history_commands(
    live: LiveServer, capsys: pytest.CaptureFixture[str]
) -> None:
    response = httpx.post(
        f"{live.url}/api/v1/meters/import",
        content=CSV.encode(),
        headers={"Authorization": f"Bearer {ADMIN}", "Content-Type": "text/csv"},
    )
    response.raise_for_status()
    start = datetime.now(UTC) - timedelta(minutes=10)
    for n in range(4):
        audit(live, f"REL-{n}", ControlState.CONNECTED, start, f"a{n}")
    for n in range(4):  # four relays open by themselves within seconds
        at = start + timedelta(minutes=5, seconds=n)
        audit(live, f"REL-{n}", ControlState.DISCONNECTED, at, f"b{n}")
    capsys.readouterr()

    assert rcd(live, VIEWER, "incidents", "list") == 0
    out = capsys.readouterr().out
    line = next(row for row in out.splitlines() if "conc-rel" in row)
    incident_id = line.split()[0]
    assert " 4 " in line and "open" in line
    assert rcd(live, VIEWER, "incidents", "show", incident_id) == 0
    out = capsys.readouterr().out
    assert all(f"REL-{n}" in out for n in range(4)) and "still disconnected" in out

    # the protected customer is the urgent alarm, first in the list, a reconnect proposed
    assert rcd(live, VIEWER, "alarms", "list") == 0
    rows = [r for r in capsys.readouterr().out.splitlines() if "REL-" in r]
    assert "urgent" in rows[0] and "protected_disconnected" in rows[0] and "REL-3" in rows[0]
    alarm_id = rows[0].split()[0]
    # the dashboard puts it on top, with the counts
    stats = httpx.get(
        f"{live.url}/dashboard/api/stats", headers={"Authorization": f"Bearer {VIEWER}"}
    ).json()
    assert stats["relay_alarms_urgent"] == 1 and stats["incidents_active"] == 1
    assert stats["relay_alarms"][0]["kind"] == "protected_disconnected"
    assert stats["incidents"][0]["meters"] == 4

    assert rcd(live, OPERATOR, "incidents", "ack", incident_id) == 0
    assert "acknowledged" in capsys.readouterr().out
    assert rcd(live, OPERATOR, "incidents", "restore", incident_id) == 0
    out = capsys.readouterr().out
    # REL-3 already has its proposed reconnect: three new ones, held
    assert "3 connect order(s)" in out and "waiting for a second person" in out
    batch_id = out.split("batch ")[1].split(",")[0]
    assert rcd(live, OPERATOR, "campaign", "approve", batch_id) == 1  # an operator may not
    capsys.readouterr()
    assert rcd(live, APPROVER, "campaign", "approve", batch_id) == 0
    capsys.readouterr()

    assert rcd(live, VIEWER, "meters", "relay", "REL-0") == 0
    out = capsys.readouterr().out
    assert "relay disconnected" in out and "(audit)" in out
    assert "drift" in out and "unexplained_open" in out and "connect" in out

    assert rcd(live, OPERATOR, "alarms", "ack", alarm_id) == 0
    assert "acknowledged" in capsys.readouterr().out
    assert rcd(live, OPERATOR, "alarms", "close", alarm_id) == 0
    assert rcd(live, OPERATOR, "incidents", "close", incident_id, "--notes", "feeder") == 0
    capsys.readouterr()
    assert rcd(live, VIEWER, "incidents", "list") == 0
    assert "conc-rel" not in capsys.readouterr().out

    scrape = httpx.get(f"{live.url}/metrics", headers={"Authorization": f"Bearer {VIEWER}"}).text
    values = {
        line.split(" ")[0]: float(line.split(" ")[1])
        for line in scrape.splitlines()
        if line.startswith("rcd_relay")
    }
    assert values['rcd_relay_drift_events_total{to_state="disconnected"}'] >= 4
    assert values['rcd_relay_reports_total{effect="applied"}'] >= 8
    assert values['rcd_relay_alarms_total{kind="protected_disconnected"}'] >= 1
    # the four audited meters, out of all the module's commissioned ones
    assert 0 < values["rcd_relay_audit_coverage_ratio"] < 1
    assert values["rcd_relay_incidents_active"] == 0
