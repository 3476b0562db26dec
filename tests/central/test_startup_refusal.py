"""Issue 15 item 7: a wrong MQTT password or CA file at start-up is one clear line and
exit 2, the exit code the systemd units give as RestartPreventExitStatus (no restart
loop); a broker that is merely down exits 1, which systemd restarts. Real mosquitto,
the real ``rcd central run`` in its own process."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from shared.broker import MosquittoBroker, free_port

ROOT = Path(__file__).resolve().parents[2]


def _unit_prevents_restart_on(code: int) -> None:
    for unit in ("rcd-central.service", "rcd-edge.service"):
        text = (ROOT / "deploy" / "systemd" / unit).read_text()
        assert f"RestartPreventExitStatus={code}" in text, unit


def _run_central(tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    environment = {
        **os.environ,
        "RCD_ENVIRONMENT": "test",
        "RCD_DATABASE_URL": f"sqlite:///{tmp_path / 'c.sqlite3'}",
        "RCD_MQTT_HOST": "127.0.0.1",
        **env,
    }
    return subprocess.run(
        [sys.executable, "-m", "shared.cli", "central", "run", "--port", str(free_port())],
        env=environment,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_wrong_password_is_one_line_and_exit_2(
    broker: MosquittoBroker, tmp_path: Path
) -> None:
    _unit_prevents_restart_on(2)
    done = _run_central(
        tmp_path,
        RCD_MQTT_PORT=str(broker.port),
        RCD_MQTT_USERNAME="rcd-central-1",
        RCD_MQTT_PASSWORD="not-the-password",
    )
    assert done.returncode == 2, done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    refusal = [line for line in lines if line.startswith("cannot start:")]
    assert len(refusal) == 1, done.stderr
    assert "refused user 'rcd-central-1'" in refusal[0] and "RCD_MQTT_PASSWORD" in refusal[0]
    assert "Traceback" not in done.stderr
    assert not [line for line in lines if "WARNING central.mqtt" in line or "ERROR" in line]


def test_unreadable_ca_file_is_one_line_and_exit_2(
    broker: MosquittoBroker, tmp_path: Path
) -> None:
    done = _run_central(
        tmp_path,
        RCD_MQTT_PORT=str(broker.port),
        RCD_MQTT_PASSWORD=broker.password,
        RCD_MQTT_TLS_CA=str(tmp_path / "missing-ca.pem"),
    )
    assert done.returncode in (2,), done.stderr
    assert "Traceback" not in done.stderr
    assert "RCD_MQTT_TLS_CA" in done.stderr


def test_broker_down_exits_1_so_systemd_restarts_it(tmp_path: Path) -> None:
    done = _run_central(tmp_path, RCD_MQTT_PORT=str(free_port()), RCD_MQTT_PASSWORD="x")
    assert done.returncode == 1, done.stderr
    assert "cannot reach MQTT broker" in done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize("value", ["[not json"])
def test_bad_setting_is_named(tmp_path: Path, value: str) -> None:
    done = _run_central(tmp_path, RCD_API_TOKENS=value)
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    assert "RCD_API_TOKENS" in done.stderr.upper() or "api_tokens" in done.stderr
