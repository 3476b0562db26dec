"""Commands signed as a batch: one Ed25519 signature over a Merkle root, each command
checked alone by the agent exactly as a singly signed one (issue 14)."""

from __future__ import annotations

import base64
import hashlib
import json

import msgspec
import pytest

from shared import merkle
from shared.errors import BadSignature, CommandReplayed, InvalidPayload, WrongRecipient
from shared.signing import BATCH_LEAVES, CommandSigner, CommandVerifier, MemorySeenCommands

from .conftest import make_order


def orders(n: int, concentrator: str = "conc-a") -> list:
    return [
        make_order(command_id=f"cmd-{i}", order_id=f"ord-{i}", meter_id=f"MTR-{i}",
                   concentrator_id=concentrator)
        for i in range(n)
    ]


def fields(envelope: bytes) -> dict:
    return json.loads(envelope)


def rebuilt(envelope: bytes, **changes: object) -> bytes:
    obj = fields(envelope)
    obj.update(changes)
    for name in [k for k, v in changes.items() if v is None]:
        del obj[name]
    return json.dumps(obj).encode()


# --- the tree itself: bytes in, bytes out ---------------------------------------------


def test_two_leaves_make_the_root_rfc_6962_describes() -> None:
    left = hashlib.sha256(b"\x00" + b'{"a":1}').digest()
    right = hashlib.sha256(b"\x00" + b'{"b":2}').digest()
    expected = hashlib.sha256(b"\x01" + left + right).digest()

    root, proofs = merkle.build([b'{"a":1}', b'{"b":2}'])

    assert root == expected
    assert proofs == [bytes([merkle.RIGHT]) + right, bytes([merkle.LEFT]) + left]


def test_a_lone_last_node_is_lifted_without_a_step() -> None:
    bodies = [b"x", b"y", b"z"]
    root, proofs = merkle.build(bodies)

    xy = hashlib.sha256(b"\x01" + merkle.leaf_hash(b"x") + merkle.leaf_hash(b"y")).digest()
    assert root == hashlib.sha256(b"\x01" + xy + merkle.leaf_hash(b"z")).digest()
    assert proofs[2] == bytes([merkle.LEFT]) + xy  # one step: z was lifted past level 0


@pytest.mark.parametrize("n", [1, 2, 3, 5, 8, 13, 32, 33])
def test_every_leaf_leads_to_the_root(n: int) -> None:
    bodies = [f'{{"n":{i}}}'.encode() for i in range(n)]
    root, proofs = merkle.build(bodies)
    assert [merkle.root_of(body, proof) for body, proof in zip(bodies, proofs, strict=True)] == [root] * n
    # and no leaf leads there along another leaf's path
    if n > 1:
        assert merkle.root_of(bodies[0], proofs[1]) != root


@pytest.mark.parametrize(
    ("proof", "names"),
    [
        (b"\x00" * 32, "steps of 33 bytes"),
        (b"\x02" + b"\x00" * 32, "names side 2"),
        ((b"\x00" + b"\x00" * 32) * (merkle.MAX_DEPTH + 1), "at most 16 steps"),
    ],
)
def test_a_malformed_proof_is_named(proof: bytes, names: str) -> None:
    with pytest.raises(merkle.BadProof, match=names):
        merkle.root_of(b"{}", proof)


def test_a_tree_needs_a_leaf() -> None:
    with pytest.raises(ValueError, match="at least one leaf"):
        merkle.build([])


# --- signing and verifying ------------------------------------------------------------


def test_a_batch_is_accepted_command_by_command(
    signer: CommandSigner, verifier: CommandVerifier
) -> None:
    commands = orders(5)
    envelopes = signer.sign_many(commands)

    assert [verifier.verify(e) for e in envelopes] == commands
    assert len({fields(e)["signature"] for e in envelopes}) == 1
    assert all("proof" in fields(e) for e in envelopes)


def test_one_signature_per_batch_leaves(signer: CommandSigner) -> None:
    envelopes = signer.sign_many(orders(BATCH_LEAVES + 1))
    signatures = [fields(e)["signature"] for e in envelopes]
    assert len(set(signatures[:BATCH_LEAVES])) == 1
    assert signatures[BATCH_LEAVES] != signatures[0]
    assert "proof" not in fields(envelopes[BATCH_LEAVES])  # alone in its chunk: signed as ever


def test_a_single_command_is_signed_as_before(
    signer: CommandSigner, verifier: CommandVerifier
) -> None:
    [envelope] = signer.sign_many(orders(1))
    assert set(fields(envelope)) == {"schema_version", "key_id", "body", "signature"}
    assert verifier.verify(envelope) == orders(1)[0]


def test_a_changed_body_in_a_batch_is_refused(
    signer: CommandSigner, verifier: CommandVerifier
) -> None:
    envelope = signer.sign_many(orders(4))[1]
    body = fields(envelope)["body"].replace("disconnect", "connect")
    with pytest.raises(BadSignature, match="does not match"):
        verifier.verify(rebuilt(envelope, body=body))


def test_another_members_proof_is_refused(signer: CommandSigner, verifier: CommandVerifier) -> None:
    first, second = signer.sign_many(orders(2))
    with pytest.raises(BadSignature, match="does not match"):
        verifier.verify(rebuilt(first, proof=fields(second)["proof"]))


def test_a_root_signature_without_its_proof_is_refused(
    signer: CommandSigner, verifier: CommandVerifier
) -> None:
    envelope = signer.sign_many(orders(3))[0]
    with pytest.raises(BadSignature, match="does not match"):
        verifier.verify(rebuilt(envelope, proof=None))


def test_a_body_signature_with_a_proof_is_refused(
    signer: CommandSigner, verifier: CommandVerifier
) -> None:
    # a genuine single signature, given a proof: the signature covers the body, not a root
    single = signer.sign(orders(1)[0])
    proof = base64.b64encode(bytes([merkle.RIGHT]) + b"\x00" * 32).decode()
    with pytest.raises(BadSignature, match="does not match"):
        verifier.verify(rebuilt(single, proof=proof))


@pytest.mark.parametrize(
    ("proof", "names"),
    [
        ("", "non-empty string"),
        (7, "non-empty string"),
        ("not base64!", "malformed"),
        (base64.b64encode(b"\x00" * 10).decode(), "malformed: a proof is steps of 33 bytes"),
        (base64.b64encode(b"\x05" + b"\x00" * 32).decode(), "names side 5"),
    ],
)
def test_a_malformed_proof_field_is_refused_by_name(
    signer: CommandSigner, verifier: CommandVerifier, proof: object, names: str
) -> None:
    envelope = signer.sign_many(orders(2))[0]
    with pytest.raises(BadSignature, match=names):
        verifier.verify(rebuilt(envelope, proof=proof))


def test_a_batch_member_is_still_checked_for_recipient_and_replay(
    signer: CommandSigner, seen: MemorySeenCommands
) -> None:
    mixed = orders(2) + orders(1, concentrator="conc-b")
    envelopes = signer.sign_many(mixed)
    verifier = CommandVerifier(
        signer._key.public_key(), "conc-a", seen, clock=lambda: mixed[0].issued_at
    )
    with pytest.raises(WrongRecipient):
        verifier.verify(envelopes[2])
    command = verifier.verify(envelopes[0])
    seen.remember(command.command_id, command.deadline)
    with pytest.raises(CommandReplayed):
        verifier.verify(envelopes[0])


def test_a_batch_with_an_invalid_command_signs_nothing(signer: CommandSigner) -> None:
    bad = orders(2)
    bad[1] = msgspec.structs.replace(bad[1], meter_id="")  # construction does not check
    with pytest.raises(InvalidPayload):
        signer.sign_many(bad)
