from __future__ import annotations

import json
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from edge_agent.cli import read_meters_csv
from edge_agent.config import load_config, parse_config
from edge_agent.errors import ConfigError
from shared.cli import main

from .helpers import config_dict, dump_toml, make_protect_signer, make_signer

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def conf(tmp_path: Path) -> dict[str, object]:
    _, pub = make_signer(tmp_path)
    return config_dict(tmp_path, pub, "conc-a", lines={"plc1": "/dev/ttyS1"})


def test_example_config_parses(tmp_path: Path) -> None:
    data = tomllib.loads((ROOT / "deploy/edge/agent.example.toml").read_text())
    _, pub = make_signer(tmp_path)
    data["coordinator"]["public_key_file"] = str(pub)
    _, protect_pub = make_protect_signer(tmp_path)
    data["protect"]["public_key_file"] = str(protect_pub)
    data["broker"].pop("ca_file")
    config = parse_config(data, environ={})
    assert config.broker.tls and config.broker.port == 8883
    assert config.protect.require_list
    assert config.lines["plc1"].concurrency == 1


@pytest.mark.parametrize(
    ("mutate", "setting"),
    [
        (lambda d: d["agent"].pop("concentrator_id"), "agent.concentrator_id"),
        (lambda d: d["broker"].update(url="http://x"), "broker.url"),
        (lambda d: d["executor"].update(tcp_concurrency=0), "executor.tcp_concurrency"),
        (lambda d: d["keys"]["default"].update(block_key="zz"), "keys.default.block_key"),
        (lambda d: d["lines"]["plc1"].update(parity="X"), "lines.plc1.parity"),
        (lambda d: d["coordinator"].update(public_key_file="/nope"), "coordinator.public_key_file"),
        (lambda d: d["agent"].update(colour="red"), "agent.colour"),
        (lambda d: d["agent"].update(concentrator_id="conc-a\n"), "agent.concentrator_id"),
        (lambda d: d["keys"]["default"].update(auth_key="0" * 32 + "\n"), "keys.default.auth_key"),
    ],
)
def test_wrong_setting_is_named(conf: dict, mutate, setting: str) -> None:  # type: ignore[no-untyped-def]
    mutate(conf)
    with pytest.raises(ConfigError) as info:
        parse_config(conf, environ={})
    assert info.value.setting == setting
    assert str(info.value).startswith(setting)


def test_protect_key_is_required_while_the_list_is(conf: dict, tmp_path: Path) -> None:  # type: ignore[type-arg]
    conf["protect"] = {}  # require_list defaults to on
    with pytest.raises(ConfigError, match=r"required while protect\.require_list is on") as info:
        parse_config(conf, environ={})
    assert info.value.setting == "protect.public_key_file"
    conf["protect"] = {"public_key_file": conf["coordinator"]["public_key_file"]}
    with pytest.raises(ConfigError, match="the coordinator's key") as info:
        parse_config(conf, environ={})
    assert info.value.setting == "protect.public_key_file"
    _, protect_pub = make_protect_signer(tmp_path)
    conf["protect"] = {"public_key_file": str(protect_pub)}
    config = parse_config(conf, environ={})
    assert config.protect.require_list and config.protect.public_key_file == protect_pub
    off = parse_config(conf, environ={"RCD_EDGE_PROTECT_REQUIRE_LIST": "false"})
    assert not off.protect.require_list


def test_env_overrides(conf: dict) -> None:  # type: ignore[type-arg]
    config = parse_config(conf, environ={"RCD_EDGE_BROKER_PASSWORD": "s3cret",
                                         "RCD_EDGE_EXECUTOR_TCP_CONCURRENCY": "9",
                                         "RCD_EDGE_AGENT_CONCENTRATOR_ID": "conc-z"})
    assert config.password() == "s3cret" and config.executor.tcp_concurrency == 9
    assert config.username == "conc-z"
    with pytest.raises(ConfigError, match="variable RCD_EDGE_EXECUTOR_TCP_CONCURRENCY") as info:
        parse_config(conf, environ={"RCD_EDGE_EXECUTOR_TCP_CONCURRENCY": "many"})
    assert info.value.setting == "executor.tcp_concurrency"
    with pytest.raises(ConfigError, match="RCD_EDGE_BOGUS_X"):
        parse_config(conf, environ={"RCD_EDGE_BOGUS_X": "1"})


def test_cli_import_and_status(conf: dict, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:  # type: ignore[type-arg]
    cfg = tmp_path / "edge.toml"
    cfg.write_text(dump_toml(conf))
    assert load_config(cfg, environ={}).agent.concentrator_id == "conc-a"
    csv_file = tmp_path / "meters.csv"
    csv_file.write_text(
        "meter_id,transport,line_id,hdlc_address,host,port,commissioned,keys_ref\n"
        "M1,hdlc,plc1,17,,,true,default\n"
        "M2,tcp,,,10.0.0.2,4059,false,\n"
    )
    assert main(["edge", "meters", "import", "--config", str(cfg), str(csv_file)]) == 0
    assert "imported 2 meters" in capsys.readouterr().out
    assert main(["edge", "status", "--config", str(cfg)]) == 0
    out = capsys.readouterr().out
    assert "meters" in out and "2" in out and "never connected" in out
    # the relay audit per line (issue 16): coverage of the last cycle and airtime share
    assert "relay_audit              on, cycle 86400s, airtime bound 10%" in out
    assert "line:plc1" in out and "coverage 0% (0/1)" in out
    assert main(["edge", "status", "--config", str(cfg), "--json"]) == 0
    lines = json.loads(capsys.readouterr().out)["relay_audit"]["lines"]
    assert lines["tcp:10.0.0.2:4059"] == {"meters": 1, "audited_last_cycle": 0, "coverage": 0.0,
                                          "failing": 0, "airtime_share": None}

    bad = tmp_path / "bad.csv"
    bad.write_text("meter_id,transport,host\nM3,tcp,10.0.0.3\n")
    with pytest.raises(ConfigError, match=r"bad.csv:2.*tcp meter needs host and port"):
        read_meters_csv(bad)
    assert main(["edge", "meters", "import", "--config", str(cfg), str(bad)]) == 2


def test_run_with_bad_config_exits_2_naming_setting(conf: dict, tmp_path: Path) -> None:  # type: ignore[type-arg]
    conf["broker"].pop("url")  # type: ignore[attr-defined]
    cfg = tmp_path / "edge.toml"
    cfg.write_text(dump_toml(conf))
    proc = subprocess.run([sys.executable, "-m", "shared.cli", "edge", "run", "--config", str(cfg)],
                          capture_output=True, text=True, timeout=30, cwd=ROOT)
    assert proc.returncode == 2
    assert "broker.url: missing" in proc.stderr


def test_empty_file_setting_means_not_set(conf: dict) -> None:  # type: ignore[type-arg]
    """Issue 15 item 2: ``ca_file = ""`` is the system's CA store, not "no such file: ."."""
    conf["broker"].update(url="mqtts://broker.example:8883", ca_file="", cert_file="",
                          key_file="")
    config = parse_config(conf, environ={})
    assert config.broker.ca_file is None and config.broker.cert_file is None
    assert config.broker.tls
