"""The running system of the relay truth end-to-end tests (issue 16): the simulator with
one PLC line per concentrator over HDLC on a pty, the coordinator (SQLite) on the real
broker with the meters imported, and each concentrator's agent with the test's audit
settings."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient

from edge_agent.agent import EdgeAgent
from edge_agent.config import parse_config
from firmware_sim.fleet import FleetSpec, LineSpec, MeterSpec
from firmware_sim.runner import RunningFleet, running_fleet
from shared.broker import MosquittoBroker

from ..edge.helpers import config_dict
from .test_delivery_broker import ADMIN, OPERATOR, start_app


@contextmanager
def system(broker: MosquittoBroker, keypair: tuple[bytes, bytes], tmp_path: Path,
           fleet_of: Mapping[str, tuple[MeterSpec, ...]], audit: dict[str, Any],
           protected: frozenset[str] = frozenset(), bit_rate: int = 9600, **settings: Any,
           ) -> Iterator[tuple[RunningFleet, TestClient, dict[str, EdgeAgent]]]:
    """The simulator, one PLC line per concentrator of ``fleet_of`` (concentrator id ->
    its meters, each with ``line_id`` set to the concentrator's line; 20 ms a frame at
    ``bit_rate`` bit/s), the coordinator (SQLite, ``settings`` on top of the test ones)
    with the meters imported (``protected``: Ley 21.304 customers), and an agent per
    concentrator with ``audit`` settings, all running."""
    meters = tuple(m for specs in fleet_of.values() for m in specs)
    lines = tuple(LineSpec(line_id, latency_s=0.02, bit_rate=bit_rate)
                  for line_id in sorted({str(m.line_id) for m in meters}))
    database = f"sqlite:///{tmp_path / 'rcd.sqlite3'}"
    pub = tmp_path / "coordinator.pub"
    pub.write_bytes(keypair[1])
    with running_fleet(FleetSpec(meters=meters, lines=lines)) as fleet, \
            start_app(database, broker, keypair, **settings) as client, ExitStack() as agents:
        rows = "".join(f"{m.meter_id},{cid},{m.line_id},{m.hdlc_address},"
                       f"{str(m.meter_id in protected).lower()}\n"
                       for cid, specs in fleet_of.items() for m in specs)
        csv = "meter_id,concentrator_id,line_id,hdlc_address,protected_customer\n" + rows
        client.post("/api/v1/meters/import", content=csv,
                    headers={**ADMIN, "Content-Type": "text/csv"}).raise_for_status()
        running: dict[str, EdgeAgent] = {}
        for cid, specs in fleet_of.items():
            home = tmp_path / cid
            home.mkdir()
            data: dict[str, Any] = config_dict(
                home, pub, cid, broker_url=broker.url,
                lines={str(m.line_id): fleet.serial_path(str(m.line_id)) for m in specs})
            data["executor"]["dlms_timeout_s"] = 2.0
            data["audit"] = {"max_airtime_share": 0.5, "idle_poll_s": 0.05, **audit}
            agent = EdgeAgent(parse_config(data, environ={}))
            agent.start()
            agents.callback(agent.stop)
            running[cid] = agent
        yield fleet, client, running


def history(client: TestClient, meter_id: str) -> dict[str, Any]:
    found: dict[str, Any] = client.get(f"/api/v1/meters/{meter_id}/relay-history",
                                       headers=OPERATOR).json()
    return found


def relay_states(client: TestClient) -> dict[str, str]:
    """Every meter's recorded relay state, as the coordinator's registry lists it."""
    rows = client.get("/api/v1/meters", params={"limit": 1000}, headers=OPERATOR).json()
    return {row["id"]: row["relay_state"] for row in rows}


def poll(check: Callable[[], Any], timeout: float, every: float = 0.25) -> Any:
    """``check()`` once it is truthy (then its value), else its last value after
    ``timeout`` seconds; slower than ``wait_until`` since each look is a REST call."""
    end = time.monotonic() + timeout
    while True:
        value = check()
        if value or time.monotonic() >= end:
            return value
        time.sleep(every)
