"""Order and command ids."""

from __future__ import annotations

import os
import threading

_RANDOM = bytearray()  # os.urandom read 4 KiB at a time: one system call per 256 ids
_RANDOM_LOCK = threading.Lock()


def _forked() -> None:  # a child never repeats its parent's ids, nor inherits a held lock
    global _RANDOM_LOCK
    _RANDOM_LOCK = threading.Lock()
    _RANDOM.clear()


os.register_at_fork(after_in_child=_forked)


def new_id() -> str:
    """A random (version 4) UUID as 32 hex digits, as ``uuid.uuid4().hex`` but without
    building a ``UUID`` object nor a system call per id (two per order on the hot path)."""
    with _RANDOM_LOCK:
        if len(_RANDOM) < 16:
            _RANDOM.extend(os.urandom(4096))
        raw = _RANDOM[-16:]
        del _RANDOM[-16:]
    raw[6] = (raw[6] & 0x0F) | 0x40
    raw[8] = (raw[8] & 0x3F) | 0x80
    return raw.hex()
