"""The relay audit's pure parts and its table: settings, schedule, airtime bound, the read
of one meter (with a scripted link), and the durable last entry read."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from edge_agent import relay_store
from edge_agent.config import AuditSettings, parse_config
from edge_agent.errors import ConfigError
from edge_agent.executor import Executor
from edge_agent.meter_table import Meter
from edge_agent.relay_audit import Airtime, RelayAuditor, due_job, observe, slot
from edge_agent.relay_store import AuditRow, RelayStore, audit_summary
from edge_agent.store import Store
from shared.codes import ControlState
from shared.contracts import ConcentratorStatus, MeterEntry, RelayReport, decode, validate
from shared.dlms import profile as P
from shared.dlms.errors import MalformedResponse

from .helpers import config_dict, make_signer

WHEN = bytes.fromhex("07EA0C02030A1E00FF000000")  # 2026-12-02 10:30:00 UTC


class ScriptedLink:
    """A meter's answers: relay state and a log of ``rows`` codes."""

    def __init__(self, codes: list[int], control_state: int = 1) -> None:
        self.codes = codes
        self.control_state = control_state
        self.asked: list[bytes] = []

    def read_values(self, items: list[tuple[str, int, int]]) -> list[Any]:
        return [self.control_state == 1, self.control_state, 1, 1234, [1, 30], WHEN,
                len(self.codes), 500]

    def read_selective(self, obis: str, class_id: int, attribute: int, access: bytes) -> Any:
        self.asked.append(access)
        first = int.from_bytes(access[4:8], "big")
        last = int.from_bytes(access[9:13], "big") or len(self.codes)
        return [[WHEN, code] for code in self.codes[first - 1 : last]]


def test_audit_settings_defaults_and_validation(tmp_path: Path) -> None:
    _, pub = make_signer(tmp_path)
    config = parse_config(config_dict(tmp_path, pub, "c1"), environ={})
    assert config.audit == AuditSettings()
    assert (config.audit.cycle_s, config.audit.log_poll_s, config.audit.max_airtime_share) == (
        86400.0, 3600.0, 0.1)
    env = {"RCD_EDGE_AUDIT_CYCLE_S": "600", "RCD_EDGE_AUDIT_LOG_POLL_S": "60"}
    assert parse_config(config_dict(tmp_path, pub, "c1"), environ=env).audit.cycle_s == 600
    for bad, name in (({"max_airtime_share": 0.95}, "audit.max_airtime_share"),
                      ({"cycle_s": 60, "log_poll_s": 120}, "audit.log_poll_s"),
                      ({"cadence": 1}, "audit.cadence")):
        data = config_dict(tmp_path, pub, "c1")
        data["audit"] = bad
        with pytest.raises(ConfigError, match=rf"^{name}"):
            parse_config(data, environ={})


def test_the_schedule_puts_after_order_first_and_spreads_audits_over_the_cycle() -> None:
    settings = AuditSettings(cycle_s=100, log_poll_s=10)
    start = 1000.0
    offset = slot("M1", 100)
    assert 0 <= offset < 100 and slot("M1", 100) == offset  # stable per meter
    assert len({round(slot(f"M{n}", 100)) for n in range(50)}) > 30  # spread, not bunched
    fresh = AuditRow("M1")
    assert due_job(fresh, settings, start, start + offset + 0.1) == ("audit", None, start + offset)
    assert due_job(AuditRow("M1", after_order="o1", after_order_at=7), settings, start,
                   start) == ("after_order", "o1", 7)
    audited = AuditRow("M1", audited_at=start, log_read_at=start)
    assert due_job(audited, settings, start, start + 5) is None
    assert due_job(audited, settings, start, start + 10) == ("log_poll", None, start + 10)
    assert due_job(audited, settings, start, start + 100) == ("audit", None, start + 100)
    off = AuditSettings(cycle_s=100, log_poll_s=10, after_order=False)
    assert due_job(AuditRow("M1", after_order="o1", audited_at=start, log_read_at=start),
                   off, start, start + 1) is None


def test_airtime_backs_off_to_its_share_and_measures_it() -> None:
    air = Airtime(share=0.2, window_s=10)
    air.record(0.0, 1.0)
    assert air.next_at == pytest.approx(5.0)  # 1 s busy, 4 s quiet: 20 %
    air.record(5.0, 6.0)
    assert air.measured(10.0) == (pytest.approx(0.2), pytest.approx(2.0))
    assert air.measured(15.5) == (pytest.approx(0.05), pytest.approx(0.5))


def test_a_read_returns_only_new_entries_and_starts_over_on_a_restarted_log() -> None:
    link = ScriptedLink([61, 62, 60])
    seen = observe(link, 0)
    assert [(e.index, e.code) for e in seen.events] == [(1, 61), (2, 62), (3, 60)]
    assert seen.relay.control_state is ControlState.CONNECTED and seen.log_index == 3
    assert seen.energy is not None and seen.energy.value == 12340 and seen.energy.unit == "Wh"
    assert observe(link, 3).events == [] and len(link.asked) == 1  # nothing new: no log GET
    link.codes.append(63)
    assert [e.index for e in observe(link, 3).events] == [4]
    assert link.asked[-1] == P.encode_access(P.EntrySelector(4, 4))
    link.codes = [59]  # the meter's log was cleared
    assert [(e.index, e.code) for e in observe(link, 4).events] == [(1, 59)]
    link.codes = [61] * 120  # at most 50 a read; the rest next time
    first = observe(link, 0)
    assert len(first.events) == 50 and observe(link, first.log_index).events[0].index == 51
    with pytest.raises(MalformedResponse, match="out of range"):
        observe(ScriptedLink([], control_state=7), 0)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    with Store(tmp_path / "agent.sqlite3") as opened:
        opened.import_meters([
            MeterEntry(meter_id="M1", transport="hdlc", line_id="plc1", hdlc_address=17),
            MeterEntry(meter_id="M2", transport="hdlc", line_id="plc1", hdlc_address=18),
        ])
        yield opened


def test_reports_go_to_the_outbox_and_the_last_entry_survives_a_restart(
    store: Store, tmp_path: Path
) -> None:
    link = ScriptedLink([61, 62])

    @contextmanager
    def sessions(meter: Meter, preempt: Any) -> Iterator[ScriptedLink]:
        yield link

    executor = Executor(store, driver=None)  # type: ignore[arg-type]
    settings = AuditSettings(cycle_s=10, log_poll_s=5)
    auditor = RelayAuditor(store, executor, sessions, settings, "c1", clock=lambda: 1e9)
    auditor.rows.after_order("M1", "o-7", 1e9)
    assert auditor.run_once()  # M1's after-order read first
    rows = store._query("SELECT order_id, kind, payload FROM outbox")
    assert [(r["kind"]) for r in rows] == ["relay_report"]
    report = decode(RelayReport, bytes(rows[0]["payload"]))
    assert (report.trigger, report.order_id, report.meter_id) == ("after_order", "o-7", "M1")
    assert [e.code for e in report.events] == [61, 62] and rows[0]["order_id"] == report.report_id
    row = auditor.rows.row("M1")
    assert (row.log_index, row.after_order) == (2, None)
    assert store.outbox_acknowledge("relay_report", report.report_id) == 1
    with Store(tmp_path / "agent.sqlite3") as again:
        assert RelayStore(again).row("M1").log_index == 2  # survives a restart
    summary = audit_summary(store, 10, now=1e9)
    assert summary["line:plc1"]["meters"] == 2 and summary["line:plc1"]["audited_last_cycle"] == 0
    executor.stop()


def test_the_audit_leaves_a_line_where_an_order_waits(store: Store) -> None:
    from .fakes import order

    @contextmanager
    def sessions(meter: Meter, preempt: Any) -> Iterator[ScriptedLink]:
        raise AssertionError("no read while an order waits")
        yield ScriptedLink([])

    executor = Executor(store, driver=None)  # type: ignore[arg-type]
    auditor = RelayAuditor(store, executor, sessions, AuditSettings(cycle_s=1, log_poll_s=1),
                           "c1", clock=lambda: datetime.now(UTC).timestamp() + 10)
    store.store_order(order("o1", "M2"), datetime.now(UTC))
    auditor.rows.after_order("M1", "o0", 0)
    assert auditor.run_once() is False  # M1 shares plc1 with M2's order
    meter = store.meter("M1")
    assert meter is not None and executor.borrow_line(meter)
    assert not executor.borrow_line(meter)  # one exchange on a line at a time
    executor.give_back_line(meter)
    executor.stop()


def test_the_audit_waits_while_an_order_runs_and_reads_once_the_line_is_back(
    store: Store
) -> None:
    link = ScriptedLink([])

    @contextmanager
    def sessions(meter: Meter, preempt: Any) -> Iterator[ScriptedLink]:
        yield link

    executor = Executor(store, driver=None)  # type: ignore[arg-type]
    settings = AuditSettings(cycle_s=10, log_poll_s=5, idle_poll_s=0.25)
    auditor = RelayAuditor(store, executor, sessions, settings, "c1", clock=lambda: 1e9)
    auditor.rows.after_order("M1", "o-1", 1e9)
    running = store.meter("M2")
    assert running is not None and executor.borrow_line(running)  # an order runs on plc1
    assert auditor.run_once() is False and link.asked == []
    assert auditor._sleep == 0.25  # looks again at the idle poll, not at the next due time
    executor.give_back_line(running)
    assert auditor.run_once() and auditor.reads["done"] == 1  # M1's after-order read
    assert auditor.rows.row("M1").after_order is None
    executor.stop()


def test_after_a_read_the_line_rests_so_the_audit_keeps_to_its_share(store: Store) -> None:
    mono = [100.0]

    @contextmanager
    def sessions(meter: Meter, preempt: Any) -> Iterator[ScriptedLink]:
        mono[0] += 2.0  # the read holds the line for 2 s
        yield ScriptedLink([61])

    executor = Executor(store, driver=None)  # type: ignore[arg-type]
    settings = AuditSettings(cycle_s=10, log_poll_s=1, max_airtime_share=0.2)
    auditor = RelayAuditor(store, executor, sessions, settings, "c1", clock=lambda: 1e9,
                           monotonic=lambda: mono[0])
    auditor.rows.after_order("M1", "o1", 0)
    auditor.rows.after_order("M2", "o2", 0)
    assert auditor.run_once()  # M1: 2 s of plc1
    assert not auditor.run_once()  # M2 shares plc1: 8 s of rest first (2 s is 20 % of 10)
    mono[0] += 7.9
    assert not auditor.run_once()
    mono[0] += 0.2
    assert auditor.run_once()
    share, busy = auditor.airtime("line:plc1").measured(mono[0])
    assert busy == pytest.approx(4.0) and share == pytest.approx(4.0 / 300)  # default window
    assert store.get_meta("audit_airtime:line:plc1") is not None  # for `rcd edge status`
    # and for the coordinator, in the agent's status message
    shares = relay_store.airtime_shares(store)
    assert shares == {"line:plc1": pytest.approx(4.0 / 300, abs=1e-4)}
    status = validate(ConcentratorStatus, {"concentrator_id": "c1", "online": True,
                                           "at": "2026-12-02T10:00:00Z", "audit_airtime": shares})
    assert status.audit_airtime == shares
    executor.stop()


def test_a_log_poll_reports_only_new_rows_or_a_relay_that_moved(store: Store) -> None:
    link = ScriptedLink([61])

    @contextmanager
    def sessions(meter: Meter, preempt: Any) -> Iterator[ScriptedLink]:
        yield link

    now = [1e9]
    executor = Executor(store, driver=None)  # type: ignore[arg-type]
    settings = AuditSettings(cycle_s=1000, log_poll_s=1)
    auditor = RelayAuditor(store, executor, sessions, settings, "c1", clock=lambda: now[0],
                           monotonic=lambda: 0.0)
    store.db.execute("UPDATE meters SET in_table = 0 WHERE meter_id = 'M2'")  # one meter

    def poll() -> list[RelayReport]:
        now[0] += 1.5
        before = {r["order_id"] for r in store._query("SELECT order_id FROM outbox")}
        assert auditor.run_once()
        return [decode(RelayReport, bytes(r["payload"])) for r in store._query(
            "SELECT order_id, payload FROM outbox") if r["order_id"] not in before]

    auditor.rows.reported("M1", payload=None, report_id="x", log_index=0, log_at=None,
                          audited=True, at=now[0], order_id=None)  # audited: polls only
    assert [r.trigger for r in poll()] == ["log_poll"]  # a new row (and the first relay read)
    assert poll() == []  # nothing new
    link.control_state = 0  # opened, no row written
    moved = poll()
    assert len(moved) == 1 and moved[0].events == []
    assert moved[0].relay is not None and moved[0].relay.control_state is ControlState.DISCONNECTED
    assert poll() == []
    executor.stop()


def test_a_full_log_is_read_by_clock_from_the_last_row_reported() -> None:
    from datetime import timedelta

    from firmware_sim.relay_log import DisconnectorLog

    log = DisconnectorLog(capacity=5)
    base = datetime(2026, 12, 2, 8, 0, tzinfo=UTC)
    for n in range(5):
        log.append(base + timedelta(minutes=n), 61 if n % 2 else 62)

    class FullLink(ScriptedLink):
        def read_values(self, items: list[tuple[str, int, int]]) -> list[Any]:
            return [True, 1, 2, 1, [0, 30], WHEN, len(log.rows), log.capacity]

        def read_selective(self, obis: str, class_id: int, attribute: int, access: bytes) -> Any:
            from shared.dlms import axdr

            self.asked.append(access)
            value, _ = axdr.decode(access, 1)
            return log.select(P.decode_access(access[0], value)).py()

    link = FullLink([])
    first = observe(link, 0)  # the first read: positions, from the top
    assert [e.index for e in first.events] == [1, 2, 3, 4, 5]
    for n in range(5, 8):  # three more: the three oldest go, positions shift
        log.append(base + timedelta(minutes=n), 63)
    later = observe(link, first.log_index, first.events[-1].at)
    assert link.asked[-1][0] == P.SELECT_RANGE
    assert [(e.index, e.code, e.at.minute) for e in later.events] == [
        (6, 63, 5), (7, 63, 6), (8, 63, 7)]
    assert later.log_index == 8
    assert observe(link, 8, later.events[-1].at).events == []


def test_an_idle_audit_sleeps_until_the_next_read_falls_due(store: Store) -> None:
    @contextmanager
    def sessions(meter: Meter, preempt: Any) -> Iterator[ScriptedLink]:
        yield ScriptedLink([])

    executor = Executor(store, driver=None)  # type: ignore[arg-type]
    settings = AuditSettings(cycle_s=1000, log_poll_s=100)
    auditor = RelayAuditor(store, executor, sessions, settings, "c1", clock=lambda: 1e9,
                           monotonic=lambda: 0.0)
    for mid in ("M1", "M2"):
        auditor.rows.reported(mid, payload=None, report_id="x", log_index=0, log_at=None,
                              audited=True, at=1e9 - 90, order_id=None)
    assert auditor.run_once() is False
    assert auditor._sleep == pytest.approx(10.0)  # the first poll falls due in 10 s
    auditor.rows.after_order("M1", "o1", 1e9)
    assert auditor.run_once() is True  # an order ended: at once
    executor.stop()


def test_a_silent_meter_is_tried_later_and_later_and_an_unreadable_one_never(store: Store) -> None:
    now = [1e9]
    opened: list[str] = []

    @contextmanager
    def sessions(meter: Meter, preempt: Any) -> Iterator[ScriptedLink]:
        opened.append(meter.meter_id)
        raise TimeoutError("no answer")
        yield ScriptedLink([])

    executor = Executor(store, driver=None)  # type: ignore[arg-type]
    settings = AuditSettings(cycle_s=10_000, log_poll_s=1000)
    auditor = RelayAuditor(store, executor, sessions, settings, "c1", clock=lambda: now[0],
                           monotonic=lambda: 0.0, readable=lambda m: m.meter_id == "M1")
    for mid in ("M1", "M2"):  # both long overdue; M2 is on a line this agent cannot open
        auditor.rows.reported(mid, payload=None, report_id="x", log_index=0, log_at=None,
                              audited=True, at=now[0] - 20_000, order_id=None)
    assert auditor.run_once() and opened == ["M1"]
    assert auditor.rows.row("M1").failures == 1
    for wait in (59.0, 2.0, 119.0, 2.0):  # 60 s, then 120 s
        now[0] += wait
        auditor.run_once()
    assert opened == ["M1", "M1", "M1"]
    executor.stop()
