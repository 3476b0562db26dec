"""AES-GCM for the agent through the system libcrypto (the one ``ssl``/``hashlib`` map),
``cryptography`` where that is not usable.

Why not ``cryptography`` directly: the agent does not import it (its own copy of OpenSSL
costs about 8 MB resident on a concentrator; docs/edge_agent.md "Memory",
``shared.ed25519``); the interpreter's libcrypto has AES-GCM (EVP, OpenSSL 1.1.1 and
later) and is mapped anyway. The library is checked once against the DLMS Green Book's
glo-get-request vector (and a flipped tag must be refused) before it is used.

Three operations, as DLMS security suites 0-2 use GCM (12-byte nonce, 12-byte tag):
:func:`seal` (ciphertext and tag; with empty data the tag is a GMAC of the AAD),
:func:`open_tagged` (plaintext, or :class:`InvalidTag`) and :func:`ctr` (the GCM
keystream from J0 + 1 applied to data: encryption-only, no tag, both directions).
"""

from __future__ import annotations

import ctypes
from functools import cache
from typing import Any, Protocol

from shared.libcrypto import candidate_paths

_CTRL_GCM_GET_TAG = 0x10  # EVP_CTRL_AEAD_GET_TAG
_CTRL_GCM_SET_TAG = 0x11  # EVP_CTRL_AEAD_SET_TAG


class InvalidTag(Exception):
    """The authentication tag does not verify."""


class Backend(Protocol):
    name: str

    def seal(self, key: bytes, iv: bytes, aad: bytes, data: bytes, tag_len: int = 12) -> tuple[bytes, bytes]: ...
    def open_tagged(self, key: bytes, iv: bytes, aad: bytes, data: bytes, tag: bytes) -> bytes: ...
    def ctr(self, key: bytes, iv: bytes, data: bytes) -> bytes: ...


def _tail() -> Any:
    """Room for what a GCM final writes (nothing: GCM is a stream mode)."""
    return ctypes.create_string_buffer(16)


class LibcryptoGcm:
    """EVP AES-GCM through ctypes; one cipher context per call (thread-safe)."""

    name = "libcrypto"

    def __init__(self, lib: Any) -> None:
        self._lib = lib
        self._ciphers = {16: lib.EVP_aes_128_gcm(), 24: lib.EVP_aes_192_gcm(),
                         32: lib.EVP_aes_256_gcm()}

    def _start(self, key: bytes, iv: bytes, encrypt: bool) -> Any:
        if len(iv) != 12:
            raise ValueError("the GCM nonce must be 12 bytes")
        cipher = self._ciphers.get(len(key))
        if cipher is None:
            raise ValueError("an AES key is 16, 24 or 32 bytes")
        ctx = self._lib.EVP_CIPHER_CTX_new()
        if not ctx:
            raise MemoryError("EVP_CIPHER_CTX_new")
        init = self._lib.EVP_EncryptInit_ex if encrypt else self._lib.EVP_DecryptInit_ex
        if init(ctx, cipher, None, key, iv) != 1:
            self._lib.EVP_CIPHER_CTX_free(ctx)
            raise ValueError("AES-GCM initialisation failed")
        return ctx

    def _update(self, ctx: Any, encrypt: bool, data: bytes, out: Any) -> None:
        """Feed ``data``: into ``out`` (a buffer of its size), or as AAD when None."""
        if not data:
            return
        n = ctypes.c_int(0)
        update = self._lib.EVP_EncryptUpdate if encrypt else self._lib.EVP_DecryptUpdate
        if update(ctx, out, ctypes.byref(n), data, len(data)) != 1 or n.value != len(data):
            raise ValueError("AES-GCM update failed")

    def seal(self, key: bytes, iv: bytes, aad: bytes, data: bytes, tag_len: int = 12) -> tuple[bytes, bytes]:
        ctx = self._start(key, iv, True)
        try:
            self._update(ctx, True, aad, None)
            out = ctypes.create_string_buffer(len(data))
            self._update(ctx, True, data, out)
            n = ctypes.c_int(0)
            if self._lib.EVP_EncryptFinal_ex(ctx, _tail(), ctypes.byref(n)) != 1:
                raise ValueError("AES-GCM final failed")
            tag = ctypes.create_string_buffer(16)
            if self._lib.EVP_CIPHER_CTX_ctrl(ctx, _CTRL_GCM_GET_TAG, 16, tag) != 1:
                raise ValueError("AES-GCM tag failed")
            return out.raw[: len(data)], tag.raw[:tag_len]
        finally:
            self._lib.EVP_CIPHER_CTX_free(ctx)

    def open_tagged(self, key: bytes, iv: bytes, aad: bytes, data: bytes, tag: bytes) -> bytes:
        if not 12 <= len(tag) <= 16:
            raise InvalidTag("tag length")
        ctx = self._start(key, iv, False)
        try:
            if self._lib.EVP_CIPHER_CTX_ctrl(ctx, _CTRL_GCM_SET_TAG, len(tag), tag) != 1:
                raise ValueError("AES-GCM set tag failed")
            self._update(ctx, False, aad, None)
            out = ctypes.create_string_buffer(len(data))
            self._update(ctx, False, data, out)
            n = ctypes.c_int(0)
            if self._lib.EVP_DecryptFinal_ex(ctx, _tail(), ctypes.byref(n)) != 1:
                raise InvalidTag("GCM authentication tag mismatch")
            return out.raw[: len(data)]
        finally:
            self._lib.EVP_CIPHER_CTX_free(ctx)

    def ctr(self, key: bytes, iv: bytes, data: bytes) -> bytes:
        ctx = self._start(key, iv, True)
        try:
            out = ctypes.create_string_buffer(len(data))
            self._update(ctx, True, data, out)
            return out.raw[: len(data)]
        finally:
            self._lib.EVP_CIPHER_CTX_free(ctx)


class CryptographyGcm:
    """The fallback: ``cryptography`` (imported only when this is used)."""

    name = "cryptography"

    def __init__(self) -> None:
        from cryptography.exceptions import InvalidTag as CryptoInvalidTag
        from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

        self._invalid, self._cipher, self._aes, self._gcm = (
            CryptoInvalidTag, Cipher, algorithms.AES, modes.GCM)

    def seal(self, key: bytes, iv: bytes, aad: bytes, data: bytes, tag_len: int = 12) -> tuple[bytes, bytes]:
        enc = self._cipher(self._aes(key), self._gcm(iv)).encryptor()
        enc.authenticate_additional_data(aad)
        out = enc.update(data) + enc.finalize()
        return out, enc.tag[:tag_len]

    def open_tagged(self, key: bytes, iv: bytes, aad: bytes, data: bytes, tag: bytes) -> bytes:
        if not 12 <= len(tag) <= 16:
            raise InvalidTag("tag length")
        dec = self._cipher(self._aes(key), self._gcm(iv, tag, min_tag_length=12)).decryptor()
        dec.authenticate_additional_data(aad)
        try:
            return dec.update(data) + dec.finalize()
        except self._invalid:
            raise InvalidTag("GCM authentication tag mismatch") from None

    def ctr(self, key: bytes, iv: bytes, data: bytes) -> bytes:
        return self._cipher(self._aes(key), self._gcm(iv)).encryptor().update(data)


def _declare(lib: Any) -> None:
    p, c, i, ip = ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int, ctypes.POINTER(ctypes.c_int)
    for name in ("EVP_aes_128_gcm", "EVP_aes_192_gcm", "EVP_aes_256_gcm"):
        getattr(lib, name).restype = p
        getattr(lib, name).argtypes = []
    lib.EVP_CIPHER_CTX_new.restype = p
    lib.EVP_CIPHER_CTX_new.argtypes = []
    lib.EVP_CIPHER_CTX_free.restype = None
    lib.EVP_CIPHER_CTX_free.argtypes = [p]
    for name in ("EVP_EncryptInit_ex", "EVP_DecryptInit_ex"):
        getattr(lib, name).restype = i
        getattr(lib, name).argtypes = [p, p, p, c, c]
    for name in ("EVP_EncryptUpdate", "EVP_DecryptUpdate"):
        getattr(lib, name).restype = i
        getattr(lib, name).argtypes = [p, p, ip, c, i]
    for name in ("EVP_EncryptFinal_ex", "EVP_DecryptFinal_ex"):
        getattr(lib, name).restype = i
        getattr(lib, name).argtypes = [p, p, ip]
    lib.EVP_CIPHER_CTX_ctrl.restype = i
    lib.EVP_CIPHER_CTX_ctrl.argtypes = [p, i, i, p]


# DLMS UA 1000-2 (Green Book) glo-get-request example: SC 0x30, AAD = SC || AK.
_KAT_KEY = bytes.fromhex("000102030405060708090A0B0C0D0E0F")
_KAT_IV = bytes.fromhex("4D4D4D0000BC614E01234567")
_KAT_AAD = bytes.fromhex("30D0D1D2D3D4D5D6D7D8D9DADBDCDDDEDF")
_KAT_PLAIN = bytes.fromhex("C0010000080000010000FF0200")
_KAT_CIPHER = bytes.fromhex("411312FF935A47566827C467BC")
_KAT_TAG = bytes.fromhex("7D825C3BE4A77C3FCC056B6B")


def _known_answer(gcm: Backend) -> bool:
    """The vector ciphers and deciphers, and the same APDU with a flipped tag bit is refused."""
    if gcm.seal(_KAT_KEY, _KAT_IV, _KAT_AAD, _KAT_PLAIN, 12) != (_KAT_CIPHER, _KAT_TAG):
        return False
    if gcm.open_tagged(_KAT_KEY, _KAT_IV, _KAT_AAD, _KAT_CIPHER, _KAT_TAG) != _KAT_PLAIN:
        return False
    try:
        gcm.open_tagged(_KAT_KEY, _KAT_IV, _KAT_AAD, _KAT_CIPHER, bytes([_KAT_TAG[0] ^ 1]) + _KAT_TAG[1:])
    except InvalidTag:
        return gcm.ctr(_KAT_KEY, _KAT_IV, _KAT_PLAIN) == _KAT_CIPHER
    return False


def _libcrypto_backend() -> LibcryptoGcm | None:
    for name in candidate_paths():
        try:
            lib = ctypes.CDLL(name)
            _declare(lib)
            gcm = LibcryptoGcm(lib)
            if _known_answer(gcm):
                return gcm
        except (OSError, AttributeError, ValueError, InvalidTag):
            continue
    return None


@cache
def backend() -> Backend:
    """The libcrypto when it passes the known answer, else ``cryptography``."""
    return _libcrypto_backend() or CryptographyGcm()


def seal(key: bytes, iv: bytes, aad: bytes, data: bytes, tag_len: int = 12) -> tuple[bytes, bytes]:
    return backend().seal(key, iv, aad, data, tag_len)


def open_tagged(key: bytes, iv: bytes, aad: bytes, data: bytes, tag: bytes) -> bytes:
    return backend().open_tagged(key, iv, aad, data, tag)


def ctr(key: bytes, iv: bytes, data: bytes) -> bytes:
    return backend().ctr(key, iv, data)
