"""Protected lists (issue 17): the store rule and the verification, pure logic."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime, timedelta

import pytest

from shared.codes import ReasonCode
from shared.contracts import AckedMessage, MessageAck
from shared.errors import (
    BadSignature,
    CommandRejected,
    InvalidPayload,
    UnknownSigningKey,
    WrongRecipient,
)
from shared.protect import ProtectedListVerifier, ProtectSigner, judge, make_list, meters_digest
from shared.signing import (
    CommandSigner,
    CommandVerifier,
    MemorySeenCommands,
    generate_keypair,
    load_private_key,
)


def _keys() -> tuple[ProtectSigner, ProtectedListVerifier]:
    private, _ = generate_keypair()
    key = load_private_key(private)
    return ProtectSigner(key), ProtectedListVerifier(key.public_key(), "DC-01")


def test_a_higher_version_replaces_the_held_list() -> None:
    assert judge(None, None, make_list("DC-01", 1, [])) == "apply"
    digest = meters_digest(["m1", "m2"])
    assert judge(3, digest, make_list("DC-01", 4, ["m1"])) == "apply"  # removal: newer list


def test_the_same_list_again_is_a_copy_and_order_does_not_matter() -> None:
    digest = meters_digest(["m1", "m2"])
    assert judge(3, digest, make_list("DC-01", 3, ["m2", "m1", "m1"])) == "same"


@pytest.mark.parametrize(("version", "meters"), [(2, ["m1", "m2"]), (2, []), (3, ["m1"]),
                                                 (3, ["m1", "m2", "m3"])])
def test_older_or_same_version_with_other_meters_is_stale(version: int, meters: list[str]) -> None:
    assert judge(3, meters_digest(["m1", "m2"]), make_list("DC-01", version, meters)) == "stale"


def test_verifier_accepts_the_protect_key_for_its_concentrator() -> None:
    signer, verifier = _keys()
    plist = verifier.verify(signer.sign(make_list("DC-01", 7, ["m2", "m1"])))
    assert plist.version == 7 and plist.meters == ["m1", "m2"]


def test_a_list_signed_with_the_coordinators_key_is_refused() -> None:
    _, verifier = _keys()
    coordinator_private, _ = generate_keypair()
    coordinator = ProtectSigner(load_private_key(coordinator_private))  # same envelope, other key
    with pytest.raises(UnknownSigningKey) as info:
        verifier.verify(coordinator.sign(make_list("DC-01", 99, [])))
    assert info.value.reason is ReasonCode.BAD_SIGNATURE


def test_a_changed_list_under_the_right_key_id_is_refused() -> None:
    signer, verifier = _keys()
    envelope = json.loads(signer.sign(make_list("DC-01", 2, ["m1"])))
    body = json.loads(envelope["body"])
    body["meters"] = []  # someone on the path tries to unprotect m1
    envelope["body"] = json.dumps(body)
    with pytest.raises(BadSignature):
        verifier.verify(json.dumps(envelope).encode())
    envelope["signature"] = base64.b64encode(b"\0" * 64).decode()
    with pytest.raises(BadSignature):
        verifier.verify(json.dumps(envelope).encode())


def test_a_list_for_another_concentrator_is_refused() -> None:
    signer, verifier = _keys()
    with pytest.raises(WrongRecipient):
        verifier.verify(signer.sign(make_list("DC-02", 2, ["m1"])))


def test_a_command_under_the_protect_key_is_not_a_list_and_not_a_command() -> None:
    private, _ = generate_keypair()
    key = load_private_key(private)
    now = datetime.now(UTC)
    ack = MessageAck(command_id="ack-1", concentrator_id="DC-01", issued_at=now,
                     deadline=now + timedelta(hours=1),
                     acks=[AckedMessage(kind="result", id="o1")])
    envelope = CommandSigner(key).sign(ack)  # the protect key signing a command
    with pytest.raises(InvalidPayload):
        ProtectedListVerifier(key.public_key(), "DC-01").verify(envelope)
    coordinator_private, _ = generate_keypair()
    commands = CommandVerifier(load_private_key(coordinator_private).public_key(), "DC-01",
                               MemorySeenCommands())
    with pytest.raises(CommandRejected):  # the agent's command verifier knows only its key
        commands.verify(ProtectSigner(key).sign(make_list("DC-01", 1, [])))
