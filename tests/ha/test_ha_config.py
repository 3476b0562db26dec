"""Broker kind, failover lists and the NATS users file: settings refused with a clear
message, the generated configuration accepted by the pinned nats-server itself."""

from __future__ import annotations

import stat
import subprocess
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from central.settings import Settings
from edge_agent.config import parse_config
from edge_agent.errors import ConfigError
from shared.broker_cli import parse_users
from shared.cli import main
from shared.failover import BrokerRotation
from shared.nats_broker import DEPLOY_DIR, nats_server_binary
from shared.nats_config import render_accounts
from tests.edge.helpers import config_dict, make_signer


def _agent(tmp_path: Path, **broker: Any) -> dict[str, Any]:
    _, pub = make_signer(tmp_path)
    data = config_dict(tmp_path, pub, "DC-A", broker_url="mqtt://n1:1883")
    data["broker"].update(broker)
    return data


def test_agent_takes_a_failover_list_from_the_file_or_the_environment(tmp_path: Path) -> None:
    config = parse_config(_agent(tmp_path, failover_urls=["mqtt://n2:1883", "mqtt://n3"]), environ={})
    assert config.broker.addresses == [("n1", 1883), ("n2", 1883), ("n3", 1883)]
    config = parse_config(
        _agent(tmp_path), environ={"RCD_EDGE_BROKER_FAILOVER_URLS": "mqtt://n2:1884, mqtt://n3:1885"}
    )
    assert config.broker.addresses == [("n1", 1883), ("n2", 1884), ("n3", 1885)]


def test_agent_refuses_a_failover_node_on_another_scheme(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"broker.failover_urls.*mqtt://host:port"):
        parse_config(_agent(tmp_path, failover_urls=["mqtts://n2:8883"]), environ={})


def test_coordinator_on_nats_needs_mqtt_311_and_the_nats_addresses() -> None:
    with pytest.raises(ValueError, match=r"MQTT_PROTOCOL=3\.1\.1"):
        Settings(broker_kind="nats", nats_urls=["nats://n1:4222"])
    with pytest.raises(ValueError, match="RCD_NATS_URLS"):
        Settings(broker_kind="nats", mqtt_protocol="3.1.1")
    with pytest.raises(ValueError, match="'n1' is not host:port"):
        Settings(mqtt_brokers=["n1"])
    settings = Settings(mqtt_brokers=["n1:1883", "n2:1884"])
    assert settings.broker_addresses() == [("n1", 1883), ("n2", 1884)]
    assert Settings(mqtt_host="h", mqtt_port=1).broker_addresses() == [("h", 1)]


def test_rotation_points_the_next_reconnect_at_the_next_node() -> None:
    client = paho.Client(CallbackAPIVersion.VERSION2, client_id="x", protocol=paho.MQTTv311)
    rotation = BrokerRotation([("n1", 1), ("n2", 2), ("n3", 3)])
    assert rotation.current == ("n1", 1)
    assert [rotation.advance(client) for _ in range(3)] == [("n2", 2), ("n3", 3), ("n1", 1)]
    rotation.advance(client)
    assert (client.host, client.port) == ("n2", 2)


def test_users_file_is_checked_line_by_line() -> None:
    passwords, tls = parse_users("coordinator s1\nDC-A s2  # north\n\nDC-B\n")
    assert passwords == {"coordinator": "s1", "DC-A": "s2"} and tls == ["CN=DC-B"]
    with pytest.raises(ValueError, match="line 2: concentrator id 'DC/B'"):
        parse_users("coordinator s1\nDC/B s2\n")
    with pytest.raises(ValueError, match="line 2: DC-A is listed twice"):
        parse_users("DC-A s1\nDC-A\ncoordinator x\n")
    with pytest.raises(ValueError, match="no 'coordinator' user"):
        parse_users("DC-A s1\n")


def test_generated_accounts_and_shipped_node_conf_pass_the_servers_own_check(
    tmp_path: Path,
) -> None:
    users = tmp_path / "users.txt"
    users.write_text("coordinator c-secret\nrcd-protect p-secret\nDC-A a-secret\nDC.B\n")
    accounts = tmp_path / "accounts.conf"
    assert main(["broker", "nats-accounts", str(users), "--out", str(accounts)]) == 0
    assert stat.S_IMODE(accounts.stat().st_mode) == 0o600
    assert '"rcd.v1.c.DC//B.cmd"' in accounts.read_text()
    assert '{"publish": {"allow": ["rcd.v1.c.*.protected"]}' in accounts.read_text()
    (tmp_path / "node.conf").write_text((DEPLOY_DIR / "node.conf").read_text())
    env = {
        "RCD_NATS_NAME": "n1", "RCD_NATS_HOST": "127.0.0.1", "RCD_NATS_PORT": "4999",
        "RCD_NATS_MQTT_PORT": "1999", "RCD_NATS_CLUSTER_PORT": "6999",
        "RCD_NATS_MONITOR_PORT": "8999", "RCD_NATS_STORE": str(tmp_path / "js"),
        **{f"RCD_NATS_ROUTE_{n}": f"nats-route://127.0.0.1:{6990 + n}" for n in (1, 2, 3)},
    }
    check = subprocess.run(
        [nats_server_binary(), "-t", "-c", str(tmp_path / "node.conf")],
        env=env, capture_output=True, text=True, timeout=30,
    )
    assert check.returncode == 0, check.stdout + check.stderr
    # a broken file is refused by the same check
    accounts.write_text(render_accounts({"coordinator": "x"}).replace("users: [", "users: "))
    broken = subprocess.run(
        [nats_server_binary(), "-t", "-c", str(tmp_path / "node.conf")],
        env=env, capture_output=True, text=True, timeout=30,
    )
    assert broken.returncode != 0
