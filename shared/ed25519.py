"""Ed25519 signature verification for the agent, through the OpenSSL the interpreter
already has loaded (``ssl`` / ``hashlib``), instead of importing ``cryptography``.

Why: the agent only verifies. ``cryptography`` brings its own copy of OpenSSL (its
``_rust`` extension, about 8 MB resident), next to the system libcrypto that ``ssl``
(needed by paho for TLS) maps anyway; that copy was a fifth of the agent's memory on a
concentrator. Verification with the system libcrypto's ``EVP_DigestVerify`` (OpenSSL
1.1.1 or later, RFC 8032 Ed25519) costs nothing extra. Where that libcrypto or its
Ed25519 is not available, ``cryptography`` does the check, as before.

A public key is the 32 raw bytes of RFC 8032; the PEM form is the SubjectPublicKeyInfo
of RFC 8410 (a fixed 12-byte DER prefix, then the key).
"""

from __future__ import annotations

import base64
import ctypes
import hashlib
import re
from functools import cache
from typing import Any

from shared.libcrypto import candidate_paths

# RFC 8410: SEQUENCE { SEQUENCE { OID 1.3.101.112 }, BIT STRING (0 unused bits) }
_SPKI_PREFIX = bytes.fromhex("302a300506032b6570032100")
_PEM = re.compile(rb"-----BEGIN PUBLIC KEY-----\s*([A-Za-z0-9+/=\s]+?)\s*-----END PUBLIC KEY-----")
_EVP_PKEY_ED25519 = 1087  # NID_ED25519 in OpenSSL's obj_mac.h


class InvalidSignature(Exception):
    """The signature does not match the message under this key."""


class PublicKey:
    """An Ed25519 public key that can verify (``verify(signature, message)``)."""

    def __init__(self, raw: bytes) -> None:
        if len(raw) != 32:
            raise ValueError("an Ed25519 public key is 32 bytes")
        self.raw = bytes(raw)

    @classmethod
    def from_pem(cls, pem: bytes) -> PublicKey:
        match = _PEM.search(pem)
        if match is None:
            raise ValueError("not a PEM public key")
        der = base64.b64decode(b"".join(match.group(1).split()), validate=True)
        if len(der) != len(_SPKI_PREFIX) + 32 or not der.startswith(_SPKI_PREFIX):
            raise ValueError("the verification key is not an Ed25519 public key")
        return cls(der[len(_SPKI_PREFIX) :])

    def verify(self, signature: bytes, message: bytes) -> None:
        if len(signature) != 64 or not _verify(self.raw, signature, message):
            raise InvalidSignature("signature does not match")

    def __eq__(self, other: object) -> bool:
        return isinstance(other, PublicKey) and other.raw == self.raw

    def __hash__(self) -> int:
        return hash(self.raw)


def _verify(key: bytes, signature: bytes, message: bytes) -> bool:
    lib = _libcrypto()
    if lib is None:
        return _verify_with_cryptography(key, signature, message)
    return _check(lib, key, signature, message)


def _check(lib: Any, key: bytes, signature: bytes, message: bytes) -> bool:
    pkey = lib.EVP_PKEY_new_raw_public_key(_EVP_PKEY_ED25519, None, key, len(key))
    if not pkey:
        return False
    ctx = lib.EVP_MD_CTX_new()
    try:
        if not ctx or lib.EVP_DigestVerifyInit(ctx, None, None, None, pkey) != 1:
            return False
        return bool(lib.EVP_DigestVerify(ctx, signature, len(signature), message, len(message)) == 1)
    finally:
        if ctx:
            lib.EVP_MD_CTX_free(ctx)
        lib.EVP_PKEY_free(pkey)


def _verify_with_cryptography(key: bytes, signature: bytes, message: bytes) -> bool:
    from cryptography.exceptions import InvalidSignature as CryptoInvalid
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    try:
        Ed25519PublicKey.from_public_bytes(key).verify(signature, message)
    except CryptoInvalid:
        return False
    return True


@cache
def _libcrypto() -> Any:
    """The libcrypto ``hashlib`` is linked with (already mapped), with Ed25519 checked
    once against a known answer; None when there is none that works."""
    for name in candidate_paths():
        try:
            lib = ctypes.CDLL(name)
            _declare(lib)
        except (OSError, AttributeError):
            continue
        if _known_answer(lib):
            return lib
    return None


def _declare(lib: Any) -> None:
    p, c, size = ctypes.c_void_p, ctypes.c_char_p, ctypes.c_size_t
    lib.EVP_PKEY_new_raw_public_key.restype = p
    lib.EVP_PKEY_new_raw_public_key.argtypes = [ctypes.c_int, p, c, size]
    lib.EVP_PKEY_free.restype = None
    lib.EVP_PKEY_free.argtypes = [p]
    lib.EVP_MD_CTX_new.restype = p
    lib.EVP_MD_CTX_new.argtypes = []
    lib.EVP_MD_CTX_free.restype = None
    lib.EVP_MD_CTX_free.argtypes = [p]
    lib.EVP_DigestVerifyInit.restype = ctypes.c_int
    lib.EVP_DigestVerifyInit.argtypes = [p, p, p, p, p]
    lib.EVP_DigestVerify.restype = ctypes.c_int
    lib.EVP_DigestVerify.argtypes = [p, c, size, c, size]


# RFC 8032, section 7.1, TEST 2: a one-byte message.
_KAT_KEY = bytes.fromhex("3d4017c3e843895a92b70aa74d1b7ebc9c982ccf2ec4968cc0cd55f12af4660c")
_KAT_MESSAGE = bytes.fromhex("72")
_KAT_SIGNATURE = bytes.fromhex(
    "92a009a9f0d4cab8720e820b5f642540a2b27b5416503f8fb3762223ebdb69da"
    "085ac1e43e15996e458f3613d0f11d8c387b2eaeb4302aeeb00d291612bb0c00"
)


def _known_answer(lib: Any) -> bool:
    """The RFC's signature verifies and the same signature with one bit flipped does not."""
    tampered = bytes([_KAT_SIGNATURE[0] ^ 1]) + _KAT_SIGNATURE[1:]
    return _check(lib, _KAT_KEY, _KAT_SIGNATURE, _KAT_MESSAGE) and not _check(
        lib, _KAT_KEY, tampered, _KAT_MESSAGE
    )


def key_id(raw: bytes) -> str:
    return hashlib.sha256(raw).hexdigest()[:16]
