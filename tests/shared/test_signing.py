"""Signed commands: only the coordinator's key, for this concentrator, in time, once."""

from __future__ import annotations

import base64
import json
from datetime import timedelta
from pathlib import Path

import pytest

from shared import codes
from shared import contracts as c
from shared.cli import main
from shared.errors import (
    BadSignature,
    CommandExpired,
    CommandReplayed,
    InvalidPayload,
    UnknownSigningKey,
    Unsigned,
    WrongRecipient,
)
from shared.signing import (
    CommandSigner,
    CommandVerifier,
    MemorySeenCommands,
    generate_keypair,
    load_private_key,
    load_private_key_file,
    load_public_key,
    load_public_key_file,
    open_envelope,
)

from .conftest import NOW, PRIVATE_PEM, PUBLIC_PEM, make_order


def test_signed_order_is_accepted_as_sent(signer: CommandSigner, verifier: CommandVerifier) -> None:
    assert verifier.verify(signer.sign(make_order())) == make_order()


def test_every_command_kind_can_be_signed(signer: CommandSigner, verifier: CommandVerifier) -> None:
    cancel = c.CancelCommand(command_id="cmd-9", order_id="ord-1", concentrator_id="conc-a", issued_at=NOW, deadline=NOW + timedelta(minutes=5))
    table = c.MeterTableSync(command_id="cmd-10", concentrator_id="conc-a", generation=1, issued_at=NOW, deadline=NOW + timedelta(days=1), meters=[])
    assert verifier.verify(signer.sign(cancel)) == cancel
    assert verifier.verify(signer.sign(table)) == table


def tamper(envelope: bytes, **body_changes: object) -> bytes:
    outer = json.loads(envelope)
    body = json.loads(outer["body"])
    body.update(body_changes)
    outer["body"] = json.dumps(body)
    return json.dumps(outer).encode()


def test_tampered_body_is_refused(signer: CommandSigner, verifier: CommandVerifier) -> None:
    forged = tamper(signer.sign(make_order()), meter_id="MTR-2")
    with pytest.raises(BadSignature) as caught:
        verifier.verify(forged)
    assert caught.value.reason is codes.ReasonCode.BAD_SIGNATURE


def test_unsigned_command_is_refused(signer: CommandSigner, verifier: CommandVerifier) -> None:
    outer = json.loads(signer.sign(make_order()))
    outer["signature"] = ""
    with pytest.raises(Unsigned) as caught:
        verifier.verify(json.dumps(outer).encode())
    assert caught.value.reason is codes.ReasonCode.UNSIGNED_COMMAND


def test_bare_command_without_envelope_is_refused(verifier: CommandVerifier) -> None:
    with pytest.raises(InvalidPayload, match="unknown field"):
        verifier.verify(make_order().to_json())


@pytest.mark.parametrize("version", [True, 1.0, "1", 2, None])
def test_envelope_version_other_than_the_integer_1_is_refused(
    signer: CommandSigner, verifier: CommandVerifier, version: object
) -> None:
    outer = json.loads(signer.sign(make_order()))
    outer["schema_version"] = version
    with pytest.raises(InvalidPayload, match="schema_version"):
        verifier.verify(json.dumps(outer).encode())


def test_command_signed_by_another_key_is_refused(verifier: CommandVerifier) -> None:
    intruder_pem, _ = generate_keypair()
    intruder = CommandSigner(load_private_key(intruder_pem))
    with pytest.raises(UnknownSigningKey):
        verifier.verify(intruder.sign(make_order()))


def test_another_key_claiming_our_key_id_is_refused(signer: CommandSigner, verifier: CommandVerifier) -> None:
    intruder_pem, _ = generate_keypair()
    forged = json.loads(CommandSigner(load_private_key(intruder_pem)).sign(make_order()))
    forged["key_id"] = signer.key_id
    with pytest.raises(BadSignature):
        verifier.verify(json.dumps(forged).encode())


def test_garbage_signature_is_refused(signer: CommandSigner, verifier: CommandVerifier) -> None:
    outer = json.loads(signer.sign(make_order()))
    outer["signature"] = "not base64 !!"
    with pytest.raises(BadSignature, match="base64"):
        verifier.verify(json.dumps(outer).encode())
    outer["signature"] = base64.b64encode(b"\x00" * 64).decode()
    with pytest.raises(BadSignature, match="does not match"):
        verifier.verify(json.dumps(outer).encode())


def test_expired_command_is_refused(signer: CommandSigner, seen: MemorySeenCommands) -> None:
    late = CommandVerifier(load_public_key(PUBLIC_PEM), "conc-a", seen, clock=lambda: NOW + timedelta(hours=2))
    with pytest.raises(CommandExpired) as caught:
        late.verify(signer.sign(make_order()))
    assert caught.value.reason is codes.ReasonCode.EXPIRED
    assert caught.value.command_id == "cmd-1"


def test_replayed_command_is_refused(signer: CommandSigner, verifier: CommandVerifier, seen: MemorySeenCommands) -> None:
    envelope = signer.sign(make_order())
    command = verifier.verify(envelope)
    seen.remember(command.command_id, command.deadline)
    with pytest.raises(CommandReplayed) as caught:
        verifier.verify(envelope)
    assert caught.value.reason is codes.ReasonCode.REPLAYED_COMMAND


def test_command_for_another_concentrator_is_refused(signer: CommandSigner, verifier: CommandVerifier) -> None:
    with pytest.raises(WrongRecipient, match="conc-b"):
        verifier.verify(signer.sign(make_order(concentrator_id="conc-b")))


def test_signed_but_invalid_body_names_the_field(signer: CommandSigner, verifier: CommandVerifier) -> None:
    envelope = json.loads(signer.sign(make_order()))
    body = json.loads(envelope["body"])
    body["priority"] = 99
    raw = json.dumps(body)
    envelope["body"] = raw
    envelope["signature"] = base64.b64encode(load_private_key(PRIVATE_PEM).sign(raw.encode())).decode()
    with pytest.raises(InvalidPayload, match="priority"):
        verifier.verify(json.dumps(envelope).encode())


def test_rcd_keys_generate_writes_a_usable_private_only_key_pair(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["keys", "generate", "--out", str(tmp_path)]) == 0
    private = tmp_path / "coordinator.key"
    assert private.stat().st_mode & 0o077 == 0
    signer = CommandSigner(load_private_key_file(private))
    verifier = CommandVerifier(load_public_key_file(tmp_path / "coordinator.pub"), "conc-a", MemorySeenCommands(), clock=lambda: NOW)
    assert verifier.verify(signer.sign(make_order())).order_id == "ord-1"
    assert signer.key_id in capsys.readouterr().out
    assert main(["keys", "generate", "--out", str(tmp_path)]) == 2  # never overwrites silently


def test_deeply_nested_envelope_is_invalid_payload_not_recursion_error() -> None:
    # Within the size limit, but deep enough to exhaust json's recursion: must be a
    # ContractError (refused and reported), never a RecursionError out of the verifier.
    with pytest.raises(InvalidPayload, match="nested too deeply"):
        open_envelope(b"[" * 100_000)


@pytest.mark.parametrize(
    ("change", "field"),
    [({"priority": 12}, "priority"), ({"meter_id": "MTR 1/#"}, "meter_id"),
     ({"retry": c.RetryPolicy(backoff_initial_s=7200)}, "retry.backoff_initial_s")],
)
def test_command_that_breaks_its_contract_is_never_signed(
    signer: CommandSigner, change: dict[str, object], field: str
) -> None:
    # construction does not check types and ranges (msgspec checks on decoding): the
    # coordinator builds commands from its rows, so the signer checks what it signs
    bad = c.replace(make_order(), **change)
    with pytest.raises(InvalidPayload) as caught:
        signer.sign(bad)
    assert caught.value.fields == [field]
