"""Ed25519 verification through the system libcrypto (shared.ed25519) agrees with
cryptography's signatures, refuses everything else, and reads only Ed25519 keys."""

from __future__ import annotations

import os

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from shared import ed25519


def _pem(private: Ed25519PrivateKey) -> bytes:
    return private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def test_the_system_libcrypto_is_used() -> None:
    # the interpreter here links OpenSSL 1.1.1 or later: no fallback to cryptography
    assert ed25519._libcrypto() is not None


def test_verifies_what_cryptography_signed_and_nothing_else() -> None:
    private = Ed25519PrivateKey.generate()
    key = ed25519.PublicKey.from_pem(_pem(private))
    other = ed25519.PublicKey.from_pem(_pem(Ed25519PrivateKey.generate()))
    for size in (0, 1, 63, 64, 1000, 70_000):
        message = os.urandom(size)
        signature = private.sign(message)
        key.verify(signature, message)
        with pytest.raises(ed25519.InvalidSignature):
            other.verify(signature, message)
        with pytest.raises(ed25519.InvalidSignature):
            key.verify(signature, message + b"x")
        tampered = signature[:5] + bytes([signature[5] ^ 0x20]) + signature[6:]
        with pytest.raises(ed25519.InvalidSignature):
            key.verify(tampered, message)
        with pytest.raises(ed25519.InvalidSignature):
            key.verify(signature[:63], message)


def test_the_fallback_agrees() -> None:
    private = Ed25519PrivateKey.generate()
    raw = ed25519.PublicKey.from_pem(_pem(private)).raw
    assert ed25519._verify_with_cryptography(raw, private.sign(b"m"), b"m")
    assert not ed25519._verify_with_cryptography(raw, private.sign(b"m"), b"n")


def test_only_ed25519_public_keys_are_read() -> None:
    ec_pem = ec.generate_private_key(ec.SECP256R1()).public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    with pytest.raises(ValueError, match="not an Ed25519"):
        ed25519.PublicKey.from_pem(ec_pem)
    with pytest.raises(ValueError):
        ed25519.PublicKey.from_pem(b"no key here")
