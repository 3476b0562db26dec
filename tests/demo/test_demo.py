"""The main job end to end, as `make demo` runs it, checked scenario by scenario."""

from __future__ import annotations

import io
import os
import re
import threading
from pathlib import Path

import pytest

from ops.demo import run_demo
from ops.demo_scenarios import SCENARIOS


def child_processes() -> set[int]:
    me = str(os.getpid())
    children = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[1] == me:
            children.add(int(entry.name))
    return children


@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.parametrize("broker", ["mosquitto", "embedded"])
def test_demo_ends_every_scenario_as_expected_and_leaves_nothing_running(
    broker: str, tmp_path: Path
) -> None:
    before_threads = {t.ident for t in threading.enumerate()}
    before_children = child_processes()
    out = io.StringIO()

    # the relay story (button press, incident) once, with mosquitto: it adds about 20 s
    story = broker == "mosquitto"
    report = run_demo(
        work_dir=tmp_path, broker=broker, out=out, timeout_s=150, relay_story=story  # type: ignore[arg-type]
    )

    text = out.getvalue()
    by_meter = {row.scenario.meter_id: row for row in report.rows}
    assert set(by_meter) == {s.meter_id for s in SCENARIOS}
    for scenario in SCENARIOS:
        row = by_meter[scenario.meter_id]
        assert row.outcome == scenario.expect, (scenario, row, text)
        if scenario.reason and scenario.expect != "rejected":
            assert row.reason == scenario.reason, (scenario, row)
        assert row.ok, (row.problems, text)
    assert by_meter["DC02-M04"].legacy_event == "3.31.0.11"  # armed, not connected
    assert by_meter["DC01-M01"].legacy_event == "3.31.0.68"
    assert by_meter["DC01-M05"].work_order.startswith("WO-")
    assert "16 of 16 scenarios as expected" in text
    # Issue 16: the customer's button on the armed meter, and one incident, both checked
    if not story:
        assert report.relay is None and "incident    #" not in text
    else:
        assert report.relay is not None and report.relay.ok, (report.relay, text)
        assert ("button      DC02-M04 pressed by the customer: order "
                f"{by_meter['DC02-M04'].order_id[:8]} armed -> connected, Legacy told 3.31.0.42"
                in text), text
        assert re.search(r"^incident    #\d+ DC-03: 4 relays opened by themselves, "
                         r"DC03-M06, DC03-M10, DC03-M12, DC03-M20 \(", text, re.M), text
    assert report.ok
    # Issue 15 item 3: everything stops at the end, so no link to a server that is gone.
    after = text.split("scenarios as expected", 1)[1]
    assert "http://" not in after and "--serve" in after

    # Nothing it started is left: no broker process, no threads.
    assert child_processes() <= before_children
    leftover = [t for t in threading.enumerate() if t.ident not in before_threads and t.is_alive()]
    assert not leftover, leftover
