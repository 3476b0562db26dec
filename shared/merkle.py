"""One Ed25519 signature for a batch of commands: a Merkle tree over their bodies.

Signing is the coordinator's largest single cost per order (about 40 us of Ed25519 per
command on this project's 2-core machine, twice that while the cores are shared; issue
14). A claim sends many commands to one concentrator at once, so the coordinator signs
the root of a hash tree over their bodies once, and each command travels alone, in its
own envelope, with the path from its body to that root (``proof``). The agent checks a
command exactly as before (recipient, deadline, replay), only what the signature covers
differs: the root its body leads to, not the body itself.

The construction is the one of Certificate Transparency (RFC 6962, section 2.1): a leaf
is ``SHA-256(0x00 || body)``, an inner node ``SHA-256(0x01 || left || right)``, so that
no inner node can be passed off as a leaf. A level with an odd number of nodes lifts its
last one unchanged to the level above. The signature covers ``ROOT_PREFIX || root``:
a command body is a JSON object (it begins with ``{``), so no signature over a body can
serve as a signature over a root, nor the reverse.

A proof is the concatenation of the path's steps from the leaf up, 33 bytes each: one
byte saying on which side the sibling hash is (``LEFT`` or ``RIGHT``), then that hash.

Bytes in, bytes out; no keys here (``shared.signing`` signs and verifies).
"""

from __future__ import annotations

import hashlib
from typing import Final

ROOT_PREFIX: Final = b"ami-rcd command batch root v1\n"
LEFT: Final = 0  # the sibling hash goes before the running hash
RIGHT: Final = 1  # the sibling hash goes after it
STEP_BYTES: Final = 33
MAX_DEPTH: Final = 16  # 65,536 commands under one root: far more than a claim signs at once

_LEAF = b"\x00"
_NODE = b"\x01"


class BadProof(ValueError):
    """A proof that is not a sequence of well-formed steps."""


def leaf_hash(body: bytes) -> bytes:
    return hashlib.sha256(_LEAF + body).digest()


def _node(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(_NODE + left + right).digest()


def build(bodies: list[bytes]) -> tuple[bytes, list[bytes]]:
    """The root over ``bodies`` (at least one) and each body's proof, in their order."""
    if not bodies:
        raise ValueError("a Merkle tree needs at least one leaf")
    if len(bodies) > 1 << MAX_DEPTH:
        raise ValueError(f"at most {1 << MAX_DEPTH} leaves under one root, not {len(bodies)}")
    level = [leaf_hash(body) for body in bodies]
    # the node each leaf's path has reached, by leaf; the steps found so far
    position = list(range(len(bodies)))
    steps: list[list[bytes]] = [[] for _ in bodies]
    while len(level) > 1:
        above = [_node(level[i], level[i + 1]) for i in range(0, len(level) - 1, 2)]
        if len(level) % 2:
            above.append(level[-1])  # lifted unchanged: no step for it at this level
        for leaf, at in enumerate(position):
            sibling = at ^ 1
            if sibling < len(level):
                side = RIGHT if at % 2 == 0 else LEFT
                steps[leaf].append(bytes((side,)) + level[sibling])
            position[leaf] = at // 2
        level = above
    return level[0], [b"".join(path) for path in steps]


def root_of(body: bytes, proof: bytes) -> bytes:
    """The root that ``body`` leads to along ``proof`` (:func:`check_shape` first)."""
    check_shape(proof)
    running = leaf_hash(body)
    for start in range(0, len(proof), STEP_BYTES):
        sibling = proof[start + 1 : start + STEP_BYTES]
        if proof[start] == LEFT:
            running = _node(sibling, running)
        else:
            running = _node(running, sibling)
    return running


def check_shape(proof: bytes) -> None:
    """:class:`BadProof` if the proof is not whole steps, names a side that does not
    exist, or is deeper than any tree; no hashing."""
    if len(proof) % STEP_BYTES:
        raise BadProof(f"a proof is steps of {STEP_BYTES} bytes; this one has {len(proof)}")
    if len(proof) // STEP_BYTES > MAX_DEPTH:
        raise BadProof(f"a proof has at most {MAX_DEPTH} steps, this one {len(proof) // STEP_BYTES}")
    for start in range(0, len(proof), STEP_BYTES):
        if proof[start] not in (LEFT, RIGHT):
            raise BadProof(f"step {start // STEP_BYTES + 1} names side {proof[start]}, not 0 or 1")


def signed_message(root: bytes) -> bytes:
    """The bytes a batch signature covers."""
    return ROOT_PREFIX + root
