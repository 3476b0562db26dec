"""Where results may be POSTed: Legacy's endpoints are configuration, not request data.

A SOAP ``Header/ReplyAddress`` is honoured only when it lies under one of the
configured endpoints (``reply_address_prefixes``, or the default
``legacy_endpoint`` when no prefixes are listed): same scheme (http or https),
host and port, and a path under the endpoint's path; never with user info.
With nothing configured, no ReplyAddress is honoured. The gateway refuses a
foreign one in the synchronous reply, and the notifier checks a stored one
again before it POSTs (a row written before this rule, or by hand, goes to the
default endpoint instead), so no request can make the coordinator POST to a
place an operator of Legacy did not configure.
"""

from __future__ import annotations

from urllib.parse import SplitResult, urlsplit

from central.soap.config import SoapSettings

SCHEMES = ("http", "https")


def configured_endpoints(settings: SoapSettings) -> tuple[str, ...]:
    if settings.reply_address_prefixes:
        return settings.reply_address_prefixes
    return (settings.legacy_endpoint,) if settings.legacy_endpoint else ()


def refusal(address: str, settings: SoapSettings) -> str | None:
    """Why ``address`` may not receive results, or None when it may."""
    parts = urlsplit(address.strip())
    if parts.scheme.lower() not in SCHEMES or not parts.netloc:
        return f"Header/ReplyAddress '{address}' is not an http(s) URL"
    if "@" in parts.netloc:
        return f"Header/ReplyAddress '{address}' carries user info"
    endpoints = configured_endpoints(settings)
    if not endpoints:
        return (
            f"Header/ReplyAddress '{address}' cannot be honoured: no Legacy endpoint is "
            "configured (results go to the configured default endpoint)"
        )
    if not any(under_endpoint(parts, endpoint) for endpoint in endpoints):
        return f"Header/ReplyAddress '{address}' is not one of the configured Legacy endpoints"
    return None


def delivery_target(reply_address: str | None, settings: SoapSettings) -> str | None:
    """The URL a Legacy order's result goes to: its ReplyAddress when the policy admits
    it, otherwise the configured default endpoint (None when there is none)."""
    if reply_address and refusal(reply_address, settings) is None:
        return reply_address
    return settings.legacy_endpoint


def under_endpoint(address: SplitResult, endpoint: str) -> bool:
    """Is the (parsed) address under ``endpoint``?

    Compared by parts, not as strings: ``https://legacy.example.cl`` must not admit
    ``https://legacy.example.cl.evil.net/`` or ``https://legacy.example.cl@evil.net/``,
    and ``.../rcd`` must not admit ``.../rcd-other``."""
    allowed = urlsplit(endpoint)
    if address.username is not None or address.password is not None:
        return False
    try:
        same_port = address.port == allowed.port
    except ValueError:
        return False
    if (
        address.scheme.lower() != allowed.scheme.lower()
        or (address.hostname or "") != (allowed.hostname or "")
        or not same_port
    ):
        return False
    base = allowed.path
    if not base or base == "/":
        return True
    path = address.path
    return path == base or path.startswith(base if base.endswith("/") else base + "/")
