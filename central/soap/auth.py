"""Authentication of SOAP callers, with the same roles as the REST API.

HTTP Basic (over TLS) or a WS-Security UsernameToken in the SOAP header, with
PasswordText or PasswordDigest (Base64(SHA-1(nonce + created + secret))) and a
Nonce and Created that the gateway checks against replays. The secret is an API
token of the coordinator's configuration (``Settings.api_tokens``: token -> name,
role) and the user name must be that token's name.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from lxml import etree

from central.soap.faults import SoapFault
from central.soap.service_port import Authenticator, Principal

WSSE = "http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-wssecurity-secext-1.0.xsd"
WSU = "http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-wssecurity-utility-1.0.xsd"
_PROFILE = "http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-username-token-profile-1.0"
PASSWORD_TEXT = f"{_PROFILE}#PasswordText"
PASSWORD_DIGEST = f"{_PROFILE}#PasswordDigest"
ROLES = ("viewer", "operator", "approver", "admin")
# operation -> lowest role allowed (roles are ordered, as in the REST API)
REQUIRED_ROLE = {
    "get": "viewer",
    "create": "operator",
    "change": "operator",
    "cancel": "operator",
    "close": "operator",
    "delete": "operator",
}
# (nonce, created) -> None, or raises a SoapFault: the gateway's replay check
ReplayCheck = Callable[[str, str], None]


def password_digest(nonce: bytes, created: str, secret: str) -> str:
    """The UsernameToken profile's PasswordDigest."""
    raw = hashlib.sha1(nonce + created.encode() + secret.encode()).digest()
    return base64.b64encode(raw).decode()


@dataclass(frozen=True)
class UsernameToken:
    user: str
    password: str
    digest: bool
    nonce: str | None  # base64, as sent
    created: str | None


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

    def authenticate_digest(
        self, username: str, digest: str, nonce: bytes, created: str
    ) -> Principal | None:
        found: Principal | None = None
        for token, (name, role) in self._tokens.items():
            expected = password_digest(nonce, created, token)
            same = hmac.compare_digest(expected.encode(), digest.encode())
            if same and hmac.compare_digest(name.encode(), username.encode()):
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


def wsse_credentials(soap_header: etree._Element | None) -> UsernameToken | None:
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
    if kind not in (PASSWORD_TEXT, PASSWORD_DIGEST):
        raise _unauthorized(f"unknown UsernameToken password type '{kind}'")
    nonce = token.findtext(f"{{{WSSE}}}Nonce")
    created = token.findtext(f"{{{WSU}}}Created")
    return UsernameToken(
        user=user.strip(),
        password=password_node.text.strip() if kind == PASSWORD_DIGEST else password_node.text,
        digest=kind == PASSWORD_DIGEST,
        nonce=nonce.strip() if nonce else None,
        created=created.strip() if created else None,
    )


def _check_token(
    authenticator: Authenticator,
    token: UsernameToken,
    replay_check: ReplayCheck | None,
    require_nonce: bool,
) -> Principal | None:
    if token.nonce is None or token.created is None:
        if token.digest or require_nonce:
            raise _unauthorized("WS-Security UsernameToken needs a Nonce and a Created")
        return authenticator.authenticate(token.user, token.password)
    if token.digest:
        try:
            nonce = base64.b64decode(token.nonce, validate=True)
        except binascii.Error:
            raise _unauthorized("WS-Security Nonce is not base64") from None
        principal = authenticator.authenticate_digest(
            token.user, token.password, nonce, token.created
        )
    else:
        principal = authenticator.authenticate(token.user, token.password)
    if principal is not None and replay_check is not None:
        replay_check(token.nonce, token.created)  # only a valid token uses up its nonce
    return principal


def authenticate(
    authenticator: Authenticator,
    modes: tuple[str, ...],
    authorization: str | None,
    soap_header: etree._Element | None,
    *,
    replay_check: ReplayCheck | None = None,
    require_nonce: bool = False,
) -> Principal:
    basic = basic_credentials(authorization) if "basic" in modes else None
    token = wsse_credentials(soap_header) if "wsse" in modes else None
    if basic is None and token is None:
        raise _unauthorized(
            "authentication required: "
            + " or ".join(
                {"basic": "HTTP Basic", "wsse": "a WS-Security UsernameToken"}[m] for m in modes
            )
        )
    if basic is not None:
        principal = authenticator.authenticate(*basic)
        if principal is not None:
            return principal
    if token is not None:
        principal = _check_token(authenticator, token, replay_check, require_nonce)
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
