"""gurux-dlms's AES-GCM done by OpenSSL (:mod:`shared.aesgcm`) instead of gurux's pure Python.

Workaround for gurux-dlms 1.0.203: every ciphered APDU (glo-get/set/action and their
responses, the ciphered initiate request/response in the AARQ/AARE) and the HLS-GMAC
f(challenge) of pass 3/4 go through ``GXDLMSChippering.encryptAesGcm`` /
``decryptAesGcm``, which build a ``GXDLMSChipperingStream``: AES and GHASH written in
Python, a key schedule and a 32 x 16 GHASH table built per APDU. That was most of the
agent's CPU per exchange (docs/performance.md). :func:`install` rebinds the name
``GXDLMSChipperingStream`` *inside the GXDLMSChippering module only* to
:class:`CGcmStream`, which offers the three calls that module makes (construct, ``write``,
``flushFinalBlock``; the ``tag`` attribute and ``tagsEquals``) and gives the same bytes
through the system libcrypto (``cryptography`` where that is not usable; the agent does
not import cryptography otherwise, for its memory).
gurux's framing, AAD and nonce building are untouched; the key wrap of
``GXDLMSSecureClient`` (its own binding of the stream) is not used by us and stays as is.

How ``GXDLMSChippering`` drives the stream (always with ``forEncrypt=True``):

* cipher: tag ``None``; AUTHENTICATION (SC 0x10) writes nothing, the AAD carries the
  plaintext, and the 12-byte GMAC ends up in ``.tag``; ENCRYPTION (0x20) gives the CTR
  output only; AUTHENTICATED_ENCRYPTION (0x30) gives the ciphertext and ``.tag``.
* decipher: the received tag is passed (12 zero bytes for 0x20, where none is sent).
  For 0x10 gurux ciphers again and compares the tags itself (``tagsEquals``), raising
  ``ValueError("Decrypt failed. Invalid tag.")``. For 0x30 gurux 1.0.203's stream, run in
  its encrypt mode, never compares the received tag: a tampered glo-response deciphers to
  altered plaintext and is taken. Here the tag is verified, and a mismatch
  raises the same ``ValueError`` gurux raises for its own tag failures, so the agent maps
  it as before (``shared.dlms.client``: MalformedResponse, session broken; in the
  association, MalformedResponse or AssociationRefused by where it happened).

Anything outside that (another security value, a nonce not 12 bytes, a missing or odd
key, decrypt mode) is handed to gurux's own stream, unchanged.
"""

from __future__ import annotations

import hmac
import importlib
from typing import Any

from shared import aesgcm

TAG_LEN = 12
AUTHENTICATION = 0x10
ENCRYPTION = 0x20
AUTHENTICATION_ENCRYPTION = 0x30
_HANDLED = (AUTHENTICATION, ENCRYPTION, AUTHENTICATION_ENCRYPTION)

_chippering: Any = importlib.import_module("gurux_dlms.GXDLMSChippering")
# gurux's own class, kept for the fallback, for uninstall() and for the tests.
ORIGINAL_STREAM: Any = _chippering.GXDLMSChipperingStream


def _tags_equal(tag1: Any, tag2: Any) -> bool:
    """gurux compares the first 12 bytes; so do we (in constant time)."""
    if tag1 is None or tag2 is None or len(tag1) < TAG_LEN or len(tag2) < TAG_LEN:
        raise ValueError("Invalid tag.")
    return hmac.compare_digest(bytes(tag1[:TAG_LEN]), bytes(tag2[:TAG_LEN]))


def _handled(security: Any, encrypt: Any, key: Any, iv: Any) -> bool:
    return (
        encrypt is True
        and security in _HANDLED
        and key is not None and len(key) in (16, 24, 32)
        and iv is not None and len(iv) == 12
    )


class CGcmStream:
    """Stands in for ``GXDLMSChipperingStream`` as ``GXDLMSChippering`` uses it."""

    tagsEquals = staticmethod(_tags_equal)  # gurux's name

    def __new__(
        cls, security: Any, encrypt: Any, key: Any, aad: Any, iv: Any, tag: Any
    ) -> Any:
        if not _handled(security, encrypt, key, iv):
            return ORIGINAL_STREAM(security, encrypt, key, aad, iv, tag)
        return super().__new__(cls)

    def __init__(
        self, security: Any, encrypt: Any, key: Any, aad: Any, iv: Any, tag: Any
    ) -> None:
        if tag and len(tag) != TAG_LEN:
            raise ValueError("Invalid tag.")
        self.security = int(security)
        self._key = bytes(key)
        self._aad = bytes(aad) if aad else b""
        self._iv = bytes(iv)
        self._received = bytes(tag) if tag else None  # given only when deciphering
        self.tag = bytearray(tag) if tag else bytearray(TAG_LEN)
        self._data = bytearray()

    def write(self, data: Any) -> None:
        self._data += data

    def flushFinalBlock(self) -> bytearray:  # gurux's name
        data = bytes(self._data)
        self._data = bytearray()
        if self.security == ENCRYPTION:
            # CTR from J0 + 1, no tag: the same keystream ciphers and deciphers.
            return bytearray(aesgcm.ctr(self._key, self._iv, data))
        if self.security == AUTHENTICATION_ENCRYPTION and self._received is not None:
            try:
                return bytearray(
                    aesgcm.open_tagged(self._key, self._iv, self._aad, data, self._received)
                )
            except aesgcm.InvalidTag:
                raise ValueError("Decrypt failed. Invalid tag.") from None
        out, tag = aesgcm.seal(self._key, self._iv, self._aad, data, TAG_LEN)
        self.tag = bytearray(tag)
        return bytearray(out)


def install() -> None:
    """Route gurux's AES-GCM through :class:`CGcmStream` (idempotent)."""
    _chippering.GXDLMSChipperingStream = CGcmStream


def uninstall() -> None:
    """Give gurux its own Python AES-GCM back (the benches' "before" figure)."""
    _chippering.GXDLMSChipperingStream = ORIGINAL_STREAM


def installed() -> bool:
    return _chippering.GXDLMSChipperingStream is CGcmStream
