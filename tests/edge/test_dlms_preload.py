"""The agent loads its DLMS stack ahead of the first exchange once it has meters, on a
thread of its own (a campaign's first order no longer waits for gurux's import), and
not at all while its table is empty."""

from __future__ import annotations

from pathlib import Path

from edge_agent.agent import EdgeAgent, _LazyDlmsDriver
from edge_agent.store import Store
from shared.signing import generate_keypair

from .fakes import tcp_entry
from .helpers import make_config, wait_for


def _pub(tmp_path: Path) -> Path:
    _, public = generate_keypair()
    pub = tmp_path / "coordinator.pub"
    pub.write_bytes(public)
    return pub


def test_preload_builds_one_driver_in_the_background(tmp_path: Path) -> None:
    config = make_config(tmp_path, _pub(tmp_path), "DC01")
    store = Store(tmp_path / "s.sqlite3")
    try:
        lazy = _LazyDlmsDriver(store, config)
        lazy.preload()
        lazy.preload()
        driver = wait_for(lambda: lazy._driver, what="the DLMS driver loaded")
        assert lazy._real() is driver  # the first exchange takes the preloaded one
        lazy.preload()  # loaded: nothing more
        assert lazy._driver is driver
    finally:
        store.close()


def test_agent_preloads_only_with_meters(tmp_path: Path) -> None:
    config = make_config(tmp_path, _pub(tmp_path), "DC01")
    agent = EdgeAgent(config)
    try:
        assert agent._lazy is not None
        agent._preload_driver()
        assert agent._lazy._driver is None  # no meters: the stack stays unloaded
        agent.store.import_meters([tcp_entry("m1")])
        agent._preload_driver()
        wait_for(lambda: agent._lazy is not None and agent._lazy._driver, what="preloaded")
    finally:
        agent.stop()
