"""Agent configuration: one TOML file, overridden by environment variables.

Every setting has a dotted name (``broker.url``, ``executor.tcp_concurrency``,
``lines.plc1.port`` ...). An environment variable ``RCD_EDGE_<SECTION>_<KEY>``
overrides a scalar of the sections ``agent``, ``broker``, ``coordinator`` and
``executor``; e.g. ``RCD_EDGE_BROKER_PASSWORD=...`` or
``RCD_EDGE_AGENT_CONCENTRATOR_ID=conc-7``. A missing or wrong setting raises
:class:`edge_agent.errors.ConfigError` whose message starts with the setting's
name, and the agent does not start. See ``deploy/edge/agent.example.toml``.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlparse

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from edge_agent.errors import ConfigError

ENV_PREFIX = "RCD_EDGE_"
ENV_SECTIONS = ("agent", "broker", "coordinator", "executor")


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class AgentSettings(_Section):
    concentrator_id: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$")
    data_dir: Path
    status_interval_s: float = Field(default=60.0, gt=0, le=3600)
    log_format: Literal["kv", "json"] = "kv"
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    modem_status_file: Path | None = None  # written by the router's modem daemon, if any


class BrokerSettings(_Section):
    url: str
    username: str | None = None  # default: the concentrator id (the ACL needs it)
    password: str | None = None
    password_file: Path | None = None
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    keepalive_s: int = Field(default=30, ge=5, le=3600)
    reconnect_min_s: float = Field(default=1.0, gt=0, le=600)
    reconnect_max_s: float = Field(default=60.0, gt=0, le=3600)
    session_expiry_s: int = Field(default=14 * 86400, ge=0)
    # "5" in the field; "3.1.1" only for the demo's embedded broker (no MQTT 5 there)
    protocol: Literal["5", "3.1.1"] = "5"

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        parsed = urlparse(value)
        if parsed.scheme not in ("mqtt", "mqtts") or not parsed.hostname:
            raise ValueError("must look like mqtt://host:1883 or mqtts://host:8883")
        return value

    @property
    def host(self) -> str:
        return urlparse(self.url).hostname or ""

    @property
    def port(self) -> int:
        parsed = urlparse(self.url)
        return parsed.port or (8883 if parsed.scheme == "mqtts" else 1883)

    @property
    def tls(self) -> bool:
        return urlparse(self.url).scheme == "mqtts"


class CoordinatorSettings(_Section):
    public_key_file: Path
    clock_skew_s: float = Field(default=300.0, ge=0, le=3600)


class ExecutorSettings(_Section):
    tcp_concurrency: int = Field(default=4, ge=1, le=64)
    dlms_timeout_s: float = Field(default=5.0, gt=0, le=120)
    client_address: int = Field(default=1, ge=1, le=0x7F)
    counter_block: int = Field(default=1000, ge=10, le=1_000_000)
    idle_poll_s: float = Field(default=1.0, gt=0, le=60)


class LineSettings(_Section):
    port: str
    baudrate: int = Field(default=9600, ge=300, le=921600)
    bytesize: Literal[7, 8] = 8
    parity: Literal["N", "E", "O"] = "N"
    stopbits: Literal[1, 2] = 1
    concurrency: int = Field(default=1, ge=1, le=8)  # one on a PLC line


class KeySettings(_Section):
    block_key: str = Field(pattern=r"^[0-9a-fA-F]{32}$")
    auth_key: str = Field(pattern=r"^[0-9a-fA-F]{32}$")
    system_title: str = Field(default="RCDAGENT", min_length=8, max_length=8)


class EdgeConfig(_Section):
    agent: AgentSettings
    broker: BrokerSettings
    coordinator: CoordinatorSettings
    executor: ExecutorSettings = ExecutorSettings()
    lines: dict[str, LineSettings] = Field(default_factory=dict)
    keys: dict[str, KeySettings] = Field(default_factory=dict)

    @property
    def database_path(self) -> Path:
        return self.agent.data_dir / "agent.sqlite3"

    @property
    def username(self) -> str:
        return self.broker.username or self.agent.concentrator_id

    def password(self) -> str | None:
        if self.broker.password is not None:
            return self.broker.password
        if self.broker.password_file is not None:
            try:
                return self.broker.password_file.read_text().strip()
            except OSError as exc:
                raise ConfigError("broker.password_file", f"cannot read: {exc}") from exc
        return None


def _apply_env(data: dict[str, Any], environ: Mapping[str, str]) -> dict[str, str]:
    """Apply overrides; returns {dotted setting: variable name} for error messages."""
    applied: dict[str, str] = {}
    for name, value in environ.items():
        if not name.startswith(ENV_PREFIX):
            continue
        rest = name[len(ENV_PREFIX) :].lower()
        for section in ENV_SECTIONS:
            if rest.startswith(section + "_"):
                key = rest[len(section) + 1 :]
                target = data.setdefault(section, {})
                if not isinstance(target, dict):
                    raise ConfigError(section, "must be a table")
                target[key] = value
                applied[f"{section}.{key}"] = name
                break
        else:
            raise ConfigError(name, f"unknown section; use one of {', '.join(ENV_SECTIONS)}")
    return applied


def _first_problem(exc: ValidationError, from_env: Mapping[str, str]) -> ConfigError:
    error = exc.errors()[0]
    setting = ".".join(str(p) for p in error["loc"]) or "(file)"
    message = error["msg"]
    if setting in from_env:
        message += f" (set by environment variable {from_env[setting]})"
    if error["type"] == "missing":
        message = "missing (required)"
    count = len(exc.errors())
    if count > 1:
        others = ", ".join(".".join(str(p) for p in e["loc"]) for e in exc.errors()[1:])
        message += f" (also wrong: {others})"
    return ConfigError(setting, message)


def parse_config(data: Mapping[str, Any], environ: Mapping[str, str] | None = None) -> EdgeConfig:
    merged: dict[str, Any] = {k: dict(v) if isinstance(v, dict) else v for k, v in data.items()}
    from_env = _apply_env(merged, os.environ if environ is None else environ)
    try:
        config = EdgeConfig.model_validate(merged)
    except ValidationError as exc:
        raise _first_problem(exc, from_env) from exc
    _check_files(config)
    return config


def _check_files(config: EdgeConfig) -> None:
    if not config.coordinator.public_key_file.is_file():
        raise ConfigError(
            "coordinator.public_key_file", f"no such file: {config.coordinator.public_key_file}"
        )
    for setting in ("ca_file", "cert_file", "key_file"):
        path = getattr(config.broker, setting)
        if path is not None and not Path(path).is_file():
            raise ConfigError(f"broker.{setting}", f"no such file: {path}")
    if (config.broker.cert_file is None) != (config.broker.key_file is None):
        raise ConfigError("broker.cert_file", "cert_file and key_file go together")


def load_config(path: str | Path, environ: Mapping[str, str] | None = None) -> EdgeConfig:
    file = Path(path)
    try:
        data = tomllib.loads(file.read_text())
    except OSError as exc:
        raise ConfigError("--config", f"cannot read {file}: {exc}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError("--config", f"{file} is not valid TOML: {exc}") from exc
    return parse_config(data, environ)
