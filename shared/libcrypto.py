"""Where the system libcrypto is: the one the interpreter's own OpenSSL binding maps.

``shared.ed25519`` (command signatures) and ``shared.aesgcm`` (DLMS AES-GCM) call it
through ctypes instead of importing ``cryptography``, whose own copy of OpenSSL costs the
agent about 8 MB resident. Each checks what it loads against a known answer.
"""

from __future__ import annotations

import ctypes.util


def candidate_paths() -> list[str]:
    """Libraries to try, best first: ``_hashlib``'s (already mapped), then the linker's."""
    candidates: list[str] = []
    try:
        import _hashlib  # the interpreter's OpenSSL binding: its libcrypto is mapped

        candidates.append(str(_hashlib.__file__))
    except (ImportError, AttributeError):
        pass
    found = ctypes.util.find_library("crypto")
    if found:
        candidates.append(found)
    return candidates
