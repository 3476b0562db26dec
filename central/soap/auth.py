"""Authentication of SOAP callers, with the same roles as the REST API.

HTTP Basic (over TLS) or a WS-Security UsernameToken with a PasswordText in the
SOAP header. The password is an API token of the coordinator's configuration
(``Settings.api_tokens``: token -> name, role) and the user name must be that
token's name.
"""

from __future__ import annotations

import base64
import binascii
import hmac
from collections.abc import Mapping

from lxml import etree

from central.soap.faults import SoapFault
from central.soap.service_port import Authenticator, Principal

WSSE = "http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-wssecurity-secext-1.0.xsd"
PASSWORD_TEXT = (
    "http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-username-token-profile-1.0"
    "#PasswordText"
)
ROLES = ("viewer", "operator", "approver", "admin")
# operation -> lowest role allowed (roles are ordered, as in the REST API)
REQUIRED_ROLE = {"get": "viewer", "create": "operator", "cancel": "operator"}


class TokenAuthenticator:
    """Checks (name, token) against a token table: token -> (name, role)."""

    def __init__(self, tokens: Mapping[str, tuple[str, str]]) -> None:
        self._tokens = dict(tokens)

    def authenticate(self, username: str, password: str) -> Principal | None:
        found: Principal | None = None
        for token, (name, role) in self._tokens.items():
            # compare every entry, so timing does not tell which token is near
            same_token = hmac.compare_digest(token.encode(), password.encode())
            if same_token and hmac.compare_digest(name.encode(), username.encode()):
                found = Principal(name=name, role=role)
        return found


def _unauthorized(message: str) -> SoapFault:
    return SoapFault(message, problem="unauthenticated", http_status=401)


def basic_credentials(authorization: str | None) -> tuple[str, str] | None:
    if not authorization:
        return None
    scheme, _, value = authorization.partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(value.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        raise _unauthorized("malformed HTTP Basic credentials") from None
    user, sep, password = decoded.partition(":")
    if not sep:
        raise _unauthorized("malformed HTTP Basic credentials")
    return user, password


def wsse_credentials(soap_header: etree._Element | None) -> tuple[str, str] | None:
    if soap_header is None:
        return None
    token = soap_header.find(f"{{{WSSE}}}Security/{{{WSSE}}}UsernameToken")
    if token is None:
        return None
    user = token.findtext(f"{{{WSSE}}}Username")
    password_node = token.find(f"{{{WSSE}}}Password")
    if user is None or password_node is None or password_node.text is None:
        raise _unauthorized("WS-Security UsernameToken needs Username and Password")
    kind = password_node.get("Type", PASSWORD_TEXT)
    if kind != PASSWORD_TEXT:
        raise _unauthorized(
            "only the PasswordText UsernameToken profile is accepted (use it over TLS)"
        )
    return user.strip(), password_node.text


def authenticate(
    authenticator: Authenticator,
    modes: tuple[str, ...],
    authorization: str | None,
    soap_header: etree._Element | None,
) -> Principal:
    candidates: list[tuple[str, str]] = []
    if "basic" in modes:
        basic = basic_credentials(authorization)
        if basic:
            candidates.append(basic)
    if "wsse" in modes:
        wsse = wsse_credentials(soap_header)
        if wsse:
            candidates.append(wsse)
    if not candidates:
        raise _unauthorized(
            "authentication required: "
            + " or ".join(
                {"basic": "HTTP Basic", "wsse": "a WS-Security UsernameToken"}[m] for m in modes
            )
        )
    for user, password in candidates:
        principal = authenticator.authenticate(user, password)
        if principal is not None:
            return principal
    raise _unauthorized("invalid credentials")


def authorize(principal: Principal, operation: str) -> None:
    needed = REQUIRED_ROLE[operation]
    have = ROLES.index(principal.role) if principal.role in ROLES else -1
    if have < ROLES.index(needed):
        raise SoapFault(
            f"{principal.name} (role {principal.role}) may not {operation} EndDeviceControls; "
            f"role {needed} or higher is needed",
            problem="forbidden",
            http_status=403,
        )
