"""Agent configuration: one TOML file, overridden by environment variables.

Every setting has a dotted name (``broker.url``, ``executor.tcp_concurrency``,
``lines.plc1.port`` ...). An environment variable ``RCD_EDGE_<SECTION>_<KEY>``
overrides a scalar of the sections ``agent``, ``broker``, ``coordinator``,
``executor``, ``protect`` and ``audit``; e.g. ``RCD_EDGE_BROKER_PASSWORD=...`` or
``RCD_EDGE_AGENT_CONCENTRATOR_ID=conc-7``. A missing or wrong setting raises
:class:`edge_agent.errors.ConfigError` whose message starts with the setting's
name, and the agent does not start. See ``deploy/edge/agent.example.toml``.

The settings are msgspec Structs, converted one table at a time (so that a
problem in ``lines.plc1`` is named with its table), not pydantic models: the
agent's process never imports pydantic (docs/edge_agent.md, "Memory").
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, get_args
from urllib.parse import urlparse

import msgspec
from msgspec import Meta, field

from edge_agent.errors import ConfigError
from shared import topics
from shared.contracts import error_path

ENV_PREFIX = "RCD_EDGE_"
ENV_SECTIONS = ("agent", "broker", "coordinator", "executor", "protect", "audit")


class _Section(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    pass


class AgentSettings(_Section, frozen=True, kw_only=True):
    # "\Z", not "$": Python's "$" also matches before a final newline
    concentrator_id: Annotated[
        str,
        Meta(
            min_length=1,
            max_length=topics.IDENTIFIER_MAX_LENGTH,
            pattern=rf"^{topics.IDENTIFIER_CHARS}\Z",
        ),
    ]
    data_dir: Path
    status_interval_s: Annotated[float, Meta(gt=0, le=3600)] = 60.0
    log_format: Literal["kv", "json"] = "kv"
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    modem_status_file: Path | None = None  # written by the router's modem daemon, if any
    # an outbox message without the coordinator's ack is sent again after resend_initial_s,
    # then twice as long each time up to resend_max_s (and at once after a reconnect)
    resend_initial_s: Annotated[float, Meta(gt=0, le=3600)] = 10.0
    resend_max_s: Annotated[float, Meta(gt=0, le=86400)] = 120.0


class BrokerSettings(_Section, frozen=True, kw_only=True):
    url: str  # mqtt://host:1883 or mqtts://host:8883, checked by parse_config
    # The other nodes of a clustered broker (NATS), tried in turn after ``url`` when a
    # connection fails or is lost; same scheme as ``url``. In the environment: commas.
    failover_urls: list[str] = field(default_factory=list)
    username: str | None = None  # default: the concentrator id (the ACL needs it)
    password: str | None = None
    password_file: Path | None = None
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    keepalive_s: Annotated[int, Meta(ge=5, le=3600)] = 30
    reconnect_min_s: Annotated[float, Meta(gt=0, le=600)] = 1.0
    reconnect_max_s: Annotated[float, Meta(gt=0, le=3600)] = 60.0
    session_expiry_s: Annotated[int, Meta(ge=0)] = 14 * 86400
    # "5" in the field; "3.1.1" only for the demo's embedded broker (no MQTT 5 there)
    protocol: Literal["5", "3.1.1"] = "5"

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

    @property
    def addresses(self) -> list[tuple[str, int]]:
        """(host, port) of ``url`` then of every failover node."""
        result = []
        for url in (self.url, *self.failover_urls):
            parsed = urlparse(url)
            result.append((parsed.hostname or "", parsed.port or (8883 if parsed.scheme == "mqtts" else 1883)))
        return result


class CoordinatorSettings(_Section, frozen=True, kw_only=True):
    public_key_file: Path
    clock_skew_s: Annotated[float, Meta(ge=0, le=3600)] = 300.0


class ProtectSettings(_Section, frozen=True, kw_only=True):
    # The protect authority's public key (``rcd protect keygen``): a separate key from
    # the coordinator's; the agent accepts protected lists (Ley 21.304) signed with it only.
    public_key_file: Path | None = None
    # On: until a valid list is held, disconnects wait (reconnects do not). Off only for
    # a bench or test without a protect authority.
    require_list: bool = True


class ExecutorSettings(_Section, frozen=True, kw_only=True):
    tcp_concurrency: Annotated[int, Meta(ge=1, le=64)] = 4
    dlms_timeout_s: Annotated[float, Meta(gt=0, le=120)] = 5.0
    client_address: Annotated[int, Meta(ge=1, le=0x7F)] = 1
    counter_block: Annotated[int, Meta(ge=10, le=1_000_000)] = 1000
    # control_mode and scaler_unit are read again at least this often (the audit cycle)
    meter_facts_max_age_s: Annotated[float, Meta(ge=0, le=30 * 86400)] = 86400.0
    idle_poll_s: Annotated[float, Meta(gt=0, le=60)] = 1.0


class AuditSettings(_Section, frozen=True, kw_only=True):
    """The relay audit and the disconnector log reads (edge_agent/relay_audit.py): both
    at the lowest priority on each line, within ``max_airtime_share`` of its airtime."""

    enabled: bool = True
    # every meter's relay state, energy and log once per cycle, spread over it
    cycle_s: Annotated[float, Meta(ge=1, le=30 * 86400)] = 86400.0
    # the disconnector log of every meter is read at least this often
    log_poll_s: Annotated[float, Meta(ge=1, le=30 * 86400)] = 3600.0
    after_order: bool = True  # read the meter's log after every order on it
    # share of a line's time the audit may take (measured per line; it backs off)
    max_airtime_share: Annotated[float, Meta(gt=0, le=0.9)] = 0.1
    airtime_window_s: Annotated[float, Meta(ge=1, le=86400)] = 300.0
    idle_poll_s: Annotated[float, Meta(gt=0, le=60)] = 0.5


class LineSettings(_Section, frozen=True, kw_only=True):
    port: str
    baudrate: Annotated[int, Meta(ge=300, le=921600)] = 9600
    bytesize: Literal[7, 8] = 8
    parity: Literal["N", "E", "O"] = "N"
    stopbits: Literal[1, 2] = 1
    concurrency: Annotated[int, Meta(ge=1, le=8)] = 1  # one on a PLC line
    # The first estimate of a relay method's round trip on this line (request, the
    # meter's work, response), until measured ones replace it; None: from the baud rate.
    # The agent does not invoke the method with less time than this left to the deadline.
    method_transit_s: Annotated[float, Meta(gt=0, le=600)] | None = None

    def initial_transit_s(self) -> float:
        # two ~128-byte HDLC frames each way at 10 bits a byte, plus half a second for
        # the meter and the PLC modem
        return self.method_transit_s or 0.5 + 4 * 128 * 10 / self.baudrate


class KeySettings(_Section, frozen=True, kw_only=True):
    block_key: Annotated[str, Meta(pattern=r"^[0-9a-fA-F]{32}\Z")]
    auth_key: Annotated[str, Meta(pattern=r"^[0-9a-fA-F]{32}\Z")]
    system_title: Annotated[str, Meta(min_length=8, max_length=8)] = "RCDAGENT"


class EdgeConfig(_Section, frozen=True, kw_only=True):
    agent: AgentSettings
    broker: BrokerSettings
    coordinator: CoordinatorSettings
    executor: ExecutorSettings = field(default_factory=ExecutorSettings)
    protect: ProtectSettings = field(default_factory=ProtectSettings)
    audit: AuditSettings = field(default_factory=AuditSettings)
    lines: dict[str, LineSettings] = field(default_factory=dict)
    keys: dict[str, KeySettings] = field(default_factory=dict)

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


# The sections of the file: one table each, or a table of named tables.
_SECTIONS: dict[str, type[_Section]] = {
    "agent": AgentSettings,
    "broker": BrokerSettings,
    "coordinator": CoordinatorSettings,
    "executor": ExecutorSettings,
    "protect": ProtectSettings,
    "audit": AuditSettings,
}
_NAMED: dict[str, type[_Section]] = {"lines": LineSettings, "keys": KeySettings}
_OPTIONAL = frozenset({"executor", "protect", "audit", "lines", "keys"})


def _path(kind: type, value: Any) -> Any:
    """msgspec's hook for ``Path`` settings: written as text."""
    if kind is Path and isinstance(value, str):
        return Path(value)
    raise TypeError(f"Expected a path (text), got `{type(value).__name__}`")


def _problem(setting: str, message: str, from_env: Mapping[str, str]) -> ConfigError:
    if setting in from_env:
        message += f" (set by environment variable {from_env[setting]})"
    return ConfigError(setting, message)


def _choices(kind: type[_Section], name: str) -> tuple[Any, ...]:
    """The values a ``Literal`` setting of ``kind`` allows."""
    for item in msgspec.structs.fields(kind):
        if item.name == name:
            return get_args(item.type)
    return ()


def _section(kind: type[_Section], value: Any, name: str, from_env: Mapping[str, str]) -> Any:
    """One table converted to ``kind``; text from the environment becomes numbers."""
    if not isinstance(value, dict):
        raise ConfigError(name, "must be a table")
    try:
        return msgspec.convert(value, kind, strict=False, dec_hook=_path)
    except msgspec.ValidationError as exc:
        path, message = error_path(str(exc))  # path within the table
        if message.startswith("Object missing required field"):
            message = "missing (required)"
        elif message.startswith("Object contains unknown field"):
            message = "unknown setting"
        elif message.startswith("Invalid enum value"):
            message += f"; use one of {', '.join(map(repr, _choices(kind, path)))}"
        setting = name if path == "(message)" else f"{name}.{path}"
        raise _problem(setting, message, from_env) from exc


def _build(data: Mapping[str, Any], from_env: Mapping[str, str]) -> EdgeConfig:
    for name in data:
        if name not in _SECTIONS and name not in _NAMED:
            raise ConfigError(name, f"unknown section; use {', '.join([*_SECTIONS, *_NAMED])}")
    sections: dict[str, Any] = {}
    broker = data.get("broker")
    if isinstance(broker, dict) and isinstance(broker.get("failover_urls"), str):
        broker["failover_urls"] = [u.strip() for u in broker["failover_urls"].split(",") if u.strip()]
    for name, kind in _SECTIONS.items():
        if name in data:
            sections[name] = _section(kind, data[name], name, from_env)
        elif name not in _OPTIONAL:
            raise ConfigError(name, "missing (required)")
    for name, kind in _NAMED.items():
        tables = data.get(name, {})
        if not isinstance(tables, dict):
            raise ConfigError(name, "must be a table of named tables")
        sections[name] = {
            str(key): _section(kind, value, f"{name}.{key}", from_env) for key, value in tables.items()
        }
    config = EdgeConfig(**sections)
    parsed = urlparse(config.broker.url)
    if parsed.scheme not in ("mqtt", "mqtts") or not parsed.hostname:
        raise _problem("broker.url", "must look like mqtt://host:1883 or mqtts://host:8883", from_env)
    if config.audit.log_poll_s > config.audit.cycle_s:
        raise _problem("audit.log_poll_s", f"must not exceed audit.cycle_s ({config.audit.cycle_s})",
                       from_env)
    for url in config.broker.failover_urls:
        other = urlparse(url)
        if other.scheme != parsed.scheme or not other.hostname:
            raise _problem(
                "broker.failover_urls",
                f"{url!r} must look like {parsed.scheme}://host:port (the scheme of broker.url)",
                from_env,
            )
    return config


def parse_config(data: Mapping[str, Any], environ: Mapping[str, str] | None = None) -> EdgeConfig:
    merged: dict[str, Any] = {k: dict(v) if isinstance(v, dict) else v for k, v in data.items()}
    from_env = _apply_env(merged, os.environ if environ is None else environ)
    broker = merged.get("broker")
    if isinstance(broker, dict):
        # An empty file setting means "not set" (ca_file = "": the system's CA store),
        # not the current directory.
        for name in ("password_file", "ca_file", "cert_file", "key_file"):
            if broker.get(name) == "":
                del broker[name]
    config = _build(merged, from_env)
    _check_files(config)
    return config


def _check_files(config: EdgeConfig) -> None:
    if not config.coordinator.public_key_file.is_file():
        raise ConfigError(
            "coordinator.public_key_file", f"no such file: {config.coordinator.public_key_file}"
        )
    protect = config.protect.public_key_file
    if protect is None and config.protect.require_list:
        raise ConfigError(
            "protect.public_key_file",
            "missing: required while protect.require_list is on (the protect authority's "
            "public key, from `rcd protect keygen`)",
        )
    if protect is not None and not protect.is_file():
        raise ConfigError("protect.public_key_file", f"no such file: {protect}")
    if protect is not None and protect.read_bytes() == config.coordinator.public_key_file.read_bytes():
        raise ConfigError("protect.public_key_file",
                          "is the coordinator's key; the protect authority needs its own")
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
