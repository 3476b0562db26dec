"""Security suite 0 (AES-GCM-128) ciphering of xDLMS APDUs and HLS-GMAC, without I/O.

* IV = system title (8) || invocation counter (4, big endian).
* Security control byte: 0x10 authentication only, 0x20 encryption only, 0x30 both
  (suite id in the low nibble: 0 here).
* Additional authenticated data: SC || AK (|| plaintext when authentication only).
* Authentication tag: the first 12 bytes of the GCM tag.
* glo-ciphering: ``glo-tag | len | SC | IC | ciphertext | tag`` (the sender's system title
  is known from the association); general-glo-ciphering (0xDB) also carries the system title.
* HLS-GMAC (mechanism 5): f(challenge) = 0x10 || IC || GMAC(SC || AK || challenge),
  computed with the responder's own system title and invocation counter.
"""

from __future__ import annotations

from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from shared.dlms.axdr import decode_length, encode_length
from shared.dlms.errors import MalformedResponse

SC_AUTH = 0x10
SC_ENC = 0x20
SC_AUTH_ENC = 0x30
TAG_LEN = 12
GENERAL_GLO = 0xDB

# plain APDU tag -> glo-ciphered tag
GLO_TAGS: dict[int, int] = {
    0x01: 0x21,  # initiateRequest
    0x08: 0x28,  # initiateResponse
    0x0E: 0x2E,  # confirmedServiceError
    0xC0: 0xC8,  # get-request
    0xC1: 0xC9,  # set-request
    0xC3: 0xCB,  # action-request
    0xC4: 0xCC,  # get-response
    0xC5: 0xCD,  # set-response
    0xC7: 0xCF,  # action-response
}
PLAIN_TAGS: dict[int, int] = {v: k for k, v in GLO_TAGS.items()}


class AuthenticationFailed(MalformedResponse):
    """The GCM tag did not verify: wrong key, wrong system title or tampered bytes."""


@dataclass(frozen=True)
class Keys:
    block_key: bytes
    auth_key: bytes


def _iv(system_title: bytes, ic: int) -> bytes:
    if len(system_title) != 8:
        raise ValueError("system title must be 8 bytes")
    return system_title + ic.to_bytes(4, "big")


def encrypt(sc: int, system_title: bytes, ic: int, keys: Keys, plaintext: bytes) -> bytes:
    """Return the protected payload (without SC/IC): ciphertext||tag, or plaintext||tag."""
    enc = Cipher(algorithms.AES(keys.block_key), modes.GCM(_iv(system_title, ic))).encryptor()
    sec = sc & 0x30
    if sec == SC_AUTH:
        enc.authenticate_additional_data(bytes((sc,)) + keys.auth_key + plaintext)
        enc.finalize()
        return plaintext + enc.tag[:TAG_LEN]
    if sec == SC_AUTH_ENC:
        enc.authenticate_additional_data(bytes((sc,)) + keys.auth_key)
        ct = enc.update(plaintext) + enc.finalize()
        return ct + enc.tag[:TAG_LEN]
    if sec == SC_ENC:
        return enc.update(plaintext) + enc.finalize()
    raise ValueError(f"unsupported security control {sc:#x}")


def decrypt(sc: int, system_title: bytes, ic: int, keys: Keys, payload: bytes) -> bytes:
    """Inverse of :func:`encrypt`; raises AuthenticationFailed when the tag does not verify."""
    sec = sc & 0x30
    iv = _iv(system_title, ic)
    try:
        if sec == SC_ENC:
            dec = Cipher(algorithms.AES(keys.block_key), modes.GCM(iv)).decryptor()
            return dec.update(payload)  # no tag to verify; finalize would demand one
        if len(payload) < TAG_LEN:
            raise MalformedResponse("ciphered payload shorter than its tag")
        body, tag = payload[:-TAG_LEN], payload[-TAG_LEN:]
        dec = Cipher(
            algorithms.AES(keys.block_key), modes.GCM(iv, tag, min_tag_length=TAG_LEN)
        ).decryptor()
        if sec == SC_AUTH:
            dec.authenticate_additional_data(bytes((sc,)) + keys.auth_key + body)
            dec.finalize()
            return body
        if sec == SC_AUTH_ENC:
            dec.authenticate_additional_data(bytes((sc,)) + keys.auth_key)
            return dec.update(body) + dec.finalize()
    except InvalidTag as exc:
        raise AuthenticationFailed("GCM authentication tag mismatch") from exc
    raise MalformedResponse(f"unsupported security control {sc:#x}")


def gmac_hls(system_title: bytes, ic: int, keys: Keys, challenge: bytes) -> bytes:
    """HLS-GMAC f(challenge) = SC(0x10) || IC || GMAC tag (17 bytes)."""
    tag = encrypt(SC_AUTH, system_title, ic, keys, challenge)[-TAG_LEN:]
    return bytes((SC_AUTH,)) + ic.to_bytes(4, "big") + tag


def verify_hls(system_title: bytes, keys: Keys, challenge: bytes, response: bytes) -> int:
    """Check an f(challenge) answer; return its invocation counter; raise on mismatch."""
    if len(response) != 5 + TAG_LEN or response[0] != SC_AUTH:
        raise AuthenticationFailed("malformed HLS-GMAC response")
    ic = int.from_bytes(response[1:5], "big")
    if gmac_hls(system_title, ic, keys, challenge) != response:
        raise AuthenticationFailed("HLS-GMAC response does not verify")
    return ic


def wrap(
    apdu: bytes, sc: int, system_title: bytes, ic: int, keys: Keys, *, general: bool = False
) -> bytes:
    """Cipher a plain xDLMS APDU into glo-ciphering (or general-glo-ciphering) form."""
    body = bytes((sc,)) + ic.to_bytes(4, "big") + encrypt(sc, system_title, ic, keys, apdu)
    if general:
        return (
            bytes((GENERAL_GLO, len(system_title))) + system_title
            + encode_length(len(body)) + body
        )
    return bytes((GLO_TAGS[apdu[0]],)) + encode_length(len(body)) + body


@dataclass(frozen=True)
class Ciphered:
    """A parsed (not yet deciphered) ciphered APDU."""

    tag: int
    sc: int
    ic: int
    payload: bytes
    system_title: bytes | None = None


def parse(apdu: bytes) -> Ciphered:
    """Split a glo or general-glo ciphered APDU into its parts."""
    if not apdu:
        raise MalformedResponse("empty APDU")
    tag = apdu[0]
    pos = 1
    title: bytes | None = None
    if tag == GENERAL_GLO:
        n = apdu[pos]
        title = bytes(apdu[pos + 1 : pos + 1 + n])
        pos += 1 + n
    elif tag not in PLAIN_TAGS:
        raise MalformedResponse(f"not a ciphered APDU: tag {tag:#x}")
    length, pos = decode_length(apdu, pos)
    body = apdu[pos : pos + length]
    if len(body) != length or length < 5:
        raise MalformedResponse("truncated ciphered APDU")
    return Ciphered(tag, body[0], int.from_bytes(body[1:5], "big"), bytes(body[5:]), title)


def unwrap(c: Ciphered, system_title: bytes, keys: Keys) -> bytes:
    """Decipher a parsed APDU with the sender's system title."""
    return decrypt(c.sc, c.system_title or system_title, c.ic, keys, c.payload)
