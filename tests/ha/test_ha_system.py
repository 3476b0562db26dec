"""High availability on a real three-node NATS cluster (issue 18): two coordinator
replicas on PostgreSQL, three agents, the simulated meters, each its own OS process.

A wave of orders while one broker node is killed (-9) and restarted, and while one
coordinator replica is killed; judged by the meters' own relay logs (tests.fault.judge):
0 lost, 0 wrong outcomes, 0 relay operations after a deadline, 0 switched twice, every
outcome told to Legacy, duplicates only under the same MessageID.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import POSTGRES_ADMIN_URL, _postgres_available
from tests.fault.driver import Run
from tests.fault.system import wait_until
from tests.ha.system import REPLICAS, HaSystem

pytestmark = [pytest.mark.ha, pytest.mark.slow, pytest.mark.timeout(300)]


@pytest.fixture(scope="module")
def system(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HaSystem]:
    if not _postgres_available():
        if os.environ.get("RCD_REQUIRE_POSTGRES"):
            pytest.fail(f"RCD_REQUIRE_POSTGRES is set but {POSTGRES_ADMIN_URL} does not answer")
        pytest.skip("the HA test runs the coordinator replicas on PostgreSQL; none answers")
    work: Path = tmp_path_factory.mktemp("ha-system")
    with HaSystem(work, POSTGRES_ADMIN_URL) as running:
        yield running


@pytest.fixture
def run(system: HaSystem, request: pytest.FixtureRequest) -> Iterator[Run]:
    yield Run(system, request.node.name.removeprefix("test_"))
    # the next scenario starts with every part running
    for index, node in enumerate(system.cluster.nodes):
        if not node.running:
            system.broker_start(index)
    for proc in system.parts.values():
        if proc.popen is None:
            if proc.name in REPLICAS:
                system.start_replica(proc.name)
            else:
                proc.start()


def finish(system: HaSystem, run: Run, settle_s: float = 90) -> None:
    run.settle(settle_s)
    verdict = run.verdict()
    print("\n" + run.name, verdict.row())
    assert verdict.orders >= 24, "the wave is too small to show anything"
    assert verdict.ok, f"{run.name}: " + "\n".join(verdict.problems[:40]) + "\n" + "\n".join(
        f"--- {name}\n{system.log_tail(name, 15)}" for name in ("nats-1", *REPLICAS)
    )


def test_broker_node_killed_and_restarted_during_a_wave(system: HaSystem, run: Run) -> None:
    run.pick()
    run.submit()
    wait_until("relay operations under way", lambda: run.op_count() >= 3, 30)
    # node 1 carries the first agent and the first replica's MQTT link
    system.broker_kill(0)
    time.sleep(3)
    system.broker_start(0)
    finish(system, run)
    # the first agent went on through another node, with its session kept there
    log = (system.work / "agent-DC-01.log").read_text()
    assert "event=link.failover" in log
    assert "event=link.up session_present=True" in log.split("event=link.failover", 1)[1]


def test_coordinator_replica_killed_during_a_wave(system: HaSystem, run: Run) -> None:
    run.pick()
    run.submit()
    wait_until("relay operations under way", lambda: run.op_count() >= 3, 30)
    system.part(REPLICAS[0]).kill()
    finish(system, run)
    assert system.part(REPLICAS[1]).popen is not None, "the other replica kept running"
