"""Configuration of the coordinator (pydantic-settings, environment prefix ``RCD_``).

Built once by the caller (``central.app.create_app(settings)`` or the CLI), never at
import time, so tests and replicas each hold their own. ``environment="production"``
refuses to start with a default secret, a default API token or an ephemeral signing key.
"""

from __future__ import annotations

from datetime import date
from pathlib import Path
from typing import Final, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from central.errors import ConfigurationError

DEFAULT_SECRET: Final = "change-me"
# Development tokens: usable only outside production.
DEFAULT_TOKENS: Final[dict[str, dict[str, str]]] = {
    "dev-viewer": {"name": "dev-viewer", "role": "viewer"},
    "dev-operator": {"name": "dev-operator", "role": "operator"},
    "dev-approver": {"name": "dev-approver", "role": "approver"},
    "dev-admin": {"name": "dev-admin", "role": "admin"},
}

Role = Literal["viewer", "operator", "approver", "admin"]


class TokenEntry(BaseModel):
    name: str
    role: Role


class RetrySettings(BaseModel):
    """The agent's retry policy per order type; the bounds are the contract's
    (``shared.contracts.RetryPolicy``), so a setting the agent would refuse stops start-up
    instead of failing every dispatch."""

    max_attempts: int = Field(default=3, ge=1, le=20)
    backoff_initial_s: float = Field(default=2.0, ge=0, le=3600)
    backoff_max_s: float = Field(default=60.0, ge=0, le=86400)


class ScopeLimits(BaseModel):
    """Disconnects per rolling window, one number per scope the anomaly detector counts."""

    model_config = ConfigDict(extra="forbid")

    source: int = Field(default=2000, ge=1)  # one SOAP caller or one REST operator
    concentrator: int = Field(default=1000, ge=1)
    comuna: int = Field(default=2000, ge=1)
    region: int = Field(default=5000, ge=1)
    fleet: int = Field(default=10000, ge=1)


class ScopeFloors(ScopeLimits):
    """The least threshold the baseline rule gives each scope."""

    source: int = Field(default=500, ge=1)
    concentrator: int = Field(default=500, ge=1)
    comuna: int = Field(default=500, ge=1)
    region: int = Field(default=1000, ge=1)
    fleet: int = Field(default=2000, ge=1)


class AnomalySettings(BaseModel):
    """Anomaly detection with quarantine (central/services/anomaly.py, docs/security.md):
    a scope is over its threshold when the disconnects accepted in the last ``window_s``
    (the new ones included) exceed min(limit, max(floor, factor x baseline)), the
    baseline being the mean count of the same window at the same weekday and hour over
    the last ``baseline_weeks`` weeks (0: limits only)."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = True
    window_s: int = Field(default=3600, ge=60, le=7 * 86400)
    limits: ScopeLimits = Field(default_factory=ScopeLimits)
    baseline_weeks: int = Field(default=4, ge=0, le=26)
    baseline_factor: float = Field(default=3.0, ge=1.0, le=100.0)
    # never below this, whatever the baseline: a quiet hour must not quarantine everything
    # (a floor above its limit only means that the limit decides)
    baseline_floor: ScopeFloors = Field(default_factory=ScopeFloors)


class DateWindow(BaseModel):
    start: date
    end: date  # inclusive


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="RCD_", env_nested_delimiter="__", extra="ignore")

    environment: Literal["development", "production", "test"] = "development"
    database_url: str = "sqlite:///var/rcd-central.sqlite3"
    secret_key: str = DEFAULT_SECRET
    # token -> {name, role}; JSON in RCD_API_TOKENS
    api_tokens: dict[str, TokenEntry] = Field(
        default_factory=lambda: {k: TokenEntry.model_validate(v) for k, v in DEFAULT_TOKENS.items()}
    )

    # MQTT
    mqtt_enabled: bool = True
    mqtt_host: str = "127.0.0.1"
    mqtt_port: int = 1883
    # One broker account per replica (rcd-central-<n>, deploy/mosquitto/acl): the broker
    # makes the account name the client id, so no other account can take this
    # replica's session. The client id defaults to the account name.
    mqtt_username: str = "rcd-central-1"
    mqtt_password: str = DEFAULT_SECRET
    mqtt_client_id: str | None = None
    mqtt_share_group: str = "central"
    # "5" always in production; "3.1.1" only for the demo's embedded broker (amqtt), where
    # results are consumed with a plain subscription (one coordinator, no shared groups)
    mqtt_protocol: Literal["5", "3.1.1"] = "5"
    mqtt_puback_timeout_s: float = 30.0
    # QoS 1 messages in flight to the broker: at most its Receive Maximum (mosquitto's
    # max_inflight_messages, 100 in deploy/mosquitto/mosquitto.conf)
    mqtt_inflight_window: int = Field(default=100, ge=1, le=65535)
    # Failover: "host:port" of every broker node, tried in turn (empty: mqtt_host:mqtt_port)
    mqtt_brokers: list[str] = Field(default_factory=list)
    # "mosquitto" (or any MQTT 5 broker): results through the shared subscription.
    # "nats": a NATS cluster; MQTT 3.1.1 (NATS refuses MQTT 5), results from the
    # JetStream stream through one durable consumer the replicas share (central/jetstream.py)
    broker_kind: Literal["mosquitto", "nats"] = "mosquitto"
    nats_urls: list[str] = Field(default_factory=list)  # nats://host:4222 of every node
    nats_durable: str = "central"  # the same on every replica
    nats_ack_wait_s: float = Field(default=30.0, gt=0)  # a dead replica's results move on after this
    nats_retry_s: float = Field(default=2.0, gt=0)  # a result whose handler failed, again after this
    nats_replicas: int = Field(default=3, ge=1, le=5)
    mqtt_tls_ca: Path | None = None
    # client certificate and key for a listener with require_certificate (the shipped
    # tls-listener.conf); the certificate's CN is the account (use_identity_as_username)
    mqtt_tls_cert: Path | None = None
    mqtt_tls_key: Path | None = None
    signing_key_path: Path | None = None
    signing_key_pem: str | None = None  # for tests/demo; a file is preferred

    # Orders
    deadline_s: dict[str, int] = Field(
        default_factory=lambda: {"disconnect": 4 * 3600, "connect": 2 * 3600, "arm": 2 * 3600}
    )
    retry: dict[str, RetrySettings] = Field(
        default_factory=lambda: {
            "disconnect": RetrySettings(),
            "connect": RetrySettings(max_attempts=5),
            "arm": RetrySettings(max_attempts=5),
        }
    )
    priority: dict[str, int] = Field(
        default_factory=lambda: {"disconnect": 5, "connect": 8, "arm": 8}
    )
    max_inflight_per_concentrator: int = Field(default=50, ge=1)  # disconnects
    # connects and arms, apart from the disconnects: a concentrator full of in-flight
    # disconnects still takes a reconnect at once (issue 17: reconnects never wait)
    max_inflight_reconnects_per_concentrator: int = Field(default=20, ge=1)
    # Reconnection SLA (Chile: 24 h from the order): warnings on the order's timeline at
    # these fractions of it, and a field work order proposed this long before its end
    # (the crew's travel time) when the remote path is failing
    reconnect_sla_s: int = Field(default=24 * 3600, ge=60)
    reconnect_sla_warn_at: list[float] = Field(default_factory=lambda: [0.5, 0.8])
    reconnect_sla_field_lead_s: int = Field(default=4 * 3600, ge=0)
    # the remote path counts as failing once a reconnect went this many times without
    # the agent's receipt, or its concentrator is offline
    reconnect_sla_failing_sends: int = Field(default=3, ge=1)
    reconnect_sla_sweep_s: float = Field(default=30.0, ge=0)  # how often the clock is read
    disconnects_per_minute: int = Field(default=600, ge=1)  # fleet-wide
    # seconds per order on a line with no measured orders yet (a PLC disconnect: about
    # 1 s of airtime at 9.6 kbit/s), for the campaign estimate
    campaign_assumed_order_s: float = Field(default=1.0, gt=0)
    approval_threshold: int = Field(default=100, ge=1)  # disconnects per batch ...
    # ... and per rolling window, fleet-wide: a batch that would bring the disconnects
    # accepted without approval in the last ``approval_window_s`` over the threshold is
    # held for a second person too (splitting a mass disconnect into small batches or
    # single orders does not bypass the approval)
    approval_window_s: int = Field(default=3600, ge=0)
    timezone: str = "America/Santiago"
    holiday_country: str = "CL"
    nonpayment_moratorium: list[DateWindow] = Field(default_factory=list)
    nonpayment_moratorium_active: bool = False
    # Issue 17: anomaly detection with quarantine (RCD_ANOMALY__LIMITS__SOURCE=...)
    anomaly: AnomalySettings = Field(default_factory=AnomalySettings)
    # Issue 17: a disconnect waits (held) while its concentrator's last status says it is
    # offline or its modem is down, and while its meter's supply is already off
    hold_offline_concentrators: bool = True
    hold_supply_off: bool = True

    # Background loops
    sweep_interval_s: float = 5.0
    # A dispatch asked for only because results freed in-flight slots waits until this
    # long after the previous one: a campaign's results then share a claim (each claim
    # reads the limits, the holds and the protected meters; per result, that was most of
    # the coordinator's CPU), while each agent still has its queue. New orders, approvals
    # and button presses never wait for it.
    dispatch_settle_s: float = Field(default=0.25, ge=0.0, le=5.0)
    # A command without the agent's receipt is sent again after republish_after_s, then
    # twice as long each time up to republish_max_s (never after its deadline); a cancel
    # without the agent's result every republish_after_s.
    republish_after_s: float = Field(default=60.0, gt=0)
    republish_max_s: float = Field(default=600.0, gt=0)
    # How results are consumed: "shared" ($share/<group>/..., replicas split them) or
    # "plain" (every replica gets every result; handling is idempotent, so both are
    # correct; plain also survives mosquitto's loss of an offline $share subscriber's
    # queue on restart, though the agents' re-sending covers that too)
    mqtt_results_subscription: Literal["shared", "plain"] = "shared"
    expiry_grace_s: float = 60.0  # in-flight orders get this long past the deadline

    # issue 16: relay truth from the meters (see docs/central.md, "Relay truth")
    # energy (Wh) a disconnected meter may still register before it is a tamper/welded alarm
    relay_tamper_threshold_wh: float = Field(default=50.0, gt=0)
    # unexplained openings on one concentrator / firmware within this many seconds of
    # each other are one incident, once there are at least relay_incident_min_meters
    relay_incident_window_s: float = Field(default=60.0, gt=0)
    relay_incident_min_meters: int = Field(default=3, ge=1)
    # an order on the meter that ended within this many seconds before a relay change
    # explains it (the meter's clock and ours differ; the agent reads the log later)
    relay_order_match_s: float = Field(default=900.0, ge=0)
    # the agents' audit cycle: "audit coverage" is the share of meters audited within it
    relay_audit_cycle_s: float = Field(default=86400.0, gt=0)
    # a protected customer (Ley 21.304) seen disconnected without an order: propose a
    # reconnect order at once (held for a second person's approval)
    relay_protected_reconnect: bool = True

    @model_validator(mode="after")
    def _check_broker(self) -> Settings:
        if self.broker_kind == "nats":
            if self.mqtt_protocol != "3.1.1":
                raise ConfigurationError(
                    "RCD_BROKER_KIND=nats needs RCD_MQTT_PROTOCOL=3.1.1 (NATS refuses MQTT 5)"
                )
            if self.mqtt_enabled and not self.nats_urls:
                raise ConfigurationError("RCD_BROKER_KIND=nats needs RCD_NATS_URLS")
        for address in self.mqtt_brokers:
            host, _, port = address.rpartition(":")
            if not host or not port.isdigit() or not 0 < int(port) < 65536:
                raise ConfigurationError(f"RCD_MQTT_BROKERS: {address!r} is not host:port")
        return self

    @model_validator(mode="after")
    def _check_sla(self) -> Settings:
        bad = [f for f in self.reconnect_sla_warn_at if not 0.0 < f < 1.0]
        if bad:
            raise ConfigurationError(
                f"RCD_RECONNECT_SLA_WARN_AT: {bad} are not fractions between 0 and 1"
            )
        if self.reconnect_sla_field_lead_s >= self.reconnect_sla_s:
            raise ConfigurationError(
                "RCD_RECONNECT_SLA_FIELD_LEAD_S must be shorter than RCD_RECONNECT_SLA_S"
            )
        return self

    def broker_addresses(self) -> list[tuple[str, int]]:
        """Every broker node to try, in order."""
        if not self.mqtt_brokers:
            return [(self.mqtt_host, self.mqtt_port)]
        return [(a.rpartition(":")[0], int(a.rpartition(":")[2])) for a in self.mqtt_brokers]

    @model_validator(mode="after")
    def _refuse_defaults_in_production(self) -> Settings:
        if self.environment != "production":
            return self
        problems = []
        if self.secret_key == DEFAULT_SECRET or len(self.secret_key) < 16:
            problems.append("RCD_SECRET_KEY is the default or shorter than 16 characters")
        if any(token in DEFAULT_TOKENS or len(token) < 16 for token in self.api_tokens):
            problems.append("RCD_API_TOKENS holds a default or short (<16) token")
        if self.mqtt_enabled and self.mqtt_password == DEFAULT_SECRET:
            problems.append("RCD_MQTT_PASSWORD is the default")
        if self.mqtt_enabled and self.signing_key_path is None and self.signing_key_pem is None:
            problems.append("RCD_SIGNING_KEY_PATH is not set")
        if problems:
            raise ConfigurationError("refusing to start in production: " + "; ".join(problems))
        return self

    def deadline_for(self, action: str) -> int:
        return self.deadline_s.get(action, 3600)

    def retry_for(self, action: str) -> RetrySettings:
        return self.retry.get(action, RetrySettings())
