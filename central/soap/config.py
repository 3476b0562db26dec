"""Settings of the SOAP gateway (environment prefix ``RCD_SOAP_``)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class SoapSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="RCD_SOAP_", extra="ignore")

    # Where results go when an order has no ReplyAddress (and for non-SOAP orders
    # when notify_all_orders is set).
    legacy_endpoint: str | None = None
    legacy_username: str | None = None
    legacy_password: str | None = None
    legacy_timeout_s: float = Field(default=10.0, gt=0)
    # ReplyAddress values accepted from requests: Legacy's endpoints as URL prefixes
    # (scheme, host, port, path prefix; central/soap/reply_policy.py). Empty: only
    # legacy_endpoint itself; with neither, every ReplyAddress is refused.
    reply_address_prefixes: tuple[str, ...] = ()
    notify_all_orders: bool = False

    # Hostile-input limits
    max_body_bytes: int = Field(default=1024 * 1024, ge=1024)
    max_depth: int = Field(default=40, ge=8)
    max_elements: int = Field(default=50_000, ge=100)
    max_devices_per_message: int = Field(default=10_000, ge=1)

    # Authentication: HTTP Basic (user name + API token as password), and/or a
    # WS-Security UsernameToken (PasswordText or PasswordDigest) in the SOAP header.
    auth_modes: tuple[Literal["basic", "wsse"], ...] = ("basic", "wsse")
    realm: str = "ami-rcd"
    # A UsernameToken must carry Nonce and Created (a captured one cannot be re-sent).
    wsse_require_nonce: bool = True
    # Nonce/Created (WS-Security and Header/ReplayDetection): Created must be within
    # this many seconds of now, and a nonce is accepted once.
    replay_window_s: float = Field(default=300.0, gt=0)

    # CIM: which Names/NameType/name names the meter number (Names without a
    # NameType count too); what we send carries this NameType.
    meter_name_type: str = "MeterNumber"
    # Accept the gateway's pre-standard request shapes and acknowledgements without
    # Reply (see central/soap/legacy_shapes.py). Off: standard shapes only.
    compat_legacy_shapes: bool = False

    # Outbox delivery (the notifier runs with the app unless disabled)
    notifier_enabled: bool = True
    retry_initial_s: float = Field(default=2.0, gt=0)
    retry_max_s: float = Field(default=600.0, gt=0)
    retry_jitter: float = Field(default=0.2, ge=0, le=1)
    poll_interval_s: float = Field(default=1.0, gt=0)
    claim_s: float = Field(default=60.0, gt=0)  # a claimed row is left alone this long
    batch_size: int = Field(default=50, ge=1)
    # A result Legacy has not acknowledged after this many attempts is given up
    # (kept undelivered, on the order's timeline and counted on the dashboard); 0: never.
    max_attempts: int = Field(default=200, ge=0)

    # Header/Source of what we send
    source: str = "ami-rcd"
    # A MessageID being processed by another request is waited for this long.
    in_progress_wait_s: float = Field(default=10.0, gt=0)
    # A claim with no reply after this long belongs to a request that died: retaken.
    stale_claim_s: float = Field(default=120.0, gt=0)
