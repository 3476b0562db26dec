"""Protected lists (Ley 21.304): the second authority's word on who is never cut off.

The protect authority (``rcd protect``, its own key and role, offline or a small
service apart from the coordinator) signs a :class:`ProtectedList` per concentrator in
the same Ed25519 envelope as commands (:mod:`shared.signing`), under its own key. The
agent verifies it with the protect public key only: the coordinator's key cannot sign a
list, and the protect key cannot sign a command. So a compromised coordinator (its
database or its signing key) cannot disconnect a meter on the list, nor remove one from
it: a removal needs a newer list signed by the protect key.

Store rule (:func:`judge`, pure): a higher version replaces the held list; the same
version with the same meters is a copy (the retained list comes back on every
subscribe); anything else (lower version, or the same version with other meters) is
stale and refused.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal

from shared import ed25519
from shared.contracts import ProtectedList, decode, encode_checked
from shared.errors import BadSignature, UnknownSigningKey, WrongRecipient
from shared.signing import PublicKey, key_id_of, open_envelope

if TYPE_CHECKING:  # the agent verifies without importing cryptography (shared/ed25519.py)
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

Verdict = Literal["apply", "same", "stale"]


def meters_digest(meters: Iterable[str]) -> str:
    """SHA-256 of the list's meters as a set (order and repeats do not matter)."""
    return hashlib.sha256("\n".join(sorted(set(meters))).encode()).hexdigest()


def judge(held_version: int | None, held_digest: str | None, new: ProtectedList) -> Verdict:
    """What an agent holding (version, digest) does with ``new``."""
    if held_version is None or new.version > held_version:
        return "apply"
    if new.version == held_version and meters_digest(new.meters) == held_digest:
        return "same"
    return "stale"


def make_list(concentrator_id: str, version: int, meters: Iterable[str],
              issued_at: datetime | None = None) -> ProtectedList:
    return ProtectedList(concentrator_id=concentrator_id, version=version,
                         issued_at=issued_at or datetime.now(UTC),
                         meters=sorted(set(meters)))


class ProtectSigner:
    """Held by the protect authority only."""

    def __init__(self, private_key: Ed25519PrivateKey) -> None:
        self._key = private_key
        self.key_id = key_id_of(private_key.public_key())

    def sign(self, plist: ProtectedList) -> bytes:
        body = encode_checked(plist)  # a list that breaks its contract is never signed
        envelope = {
            "schema_version": 1,
            "key_id": self.key_id,
            "body": body.decode(),
            "signature": base64.b64encode(self._key.sign(body)).decode(),
        }
        return json.dumps(envelope, separators=(",", ":")).encode()


class ProtectedListVerifier:
    """Held by an agent: accepts lists signed by the protect key, for this concentrator."""

    def __init__(self, public_key: Any, concentrator_id: str) -> None:
        """``public_key``: a :class:`shared.signing.PublicKey` or ``cryptography``'s."""
        self.key_id = key_id_of(public_key)
        self._key = public_key if isinstance(public_key, PublicKey) else PublicKey(
            public_key.public_bytes_raw()
        )
        self._concentrator_id = concentrator_id

    def verify(self, data: bytes) -> ProtectedList:
        envelope = open_envelope(data)
        if envelope.key_id != self.key_id:
            raise UnknownSigningKey(
                f"protected list signed with key {envelope.key_id!r}, not the protect "
                f"authority's {self.key_id!r}"
            )
        try:
            self._key.verify(envelope.signature, envelope.signed_bytes())
        except ed25519.InvalidSignature as exc:
            raise BadSignature("signature does not match the protected list") from exc
        plist = decode(ProtectedList, envelope.body)
        if plist.concentrator_id != self._concentrator_id:
            raise WrongRecipient(
                f"protected list is for concentrator {plist.concentrator_id!r}, "
                f"this is {self._concentrator_id!r}"
            )
        return plist
