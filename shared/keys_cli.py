"""``rcd keys generate``: the coordinator's Ed25519 signing key pair."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from shared.signing import generate_keypair, key_id_of, load_public_key


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    keys = sub.add_parser("keys", help="command-signing keys")
    keys_sub = keys.add_subparsers(dest="keys_command", metavar="ACTION")
    keys_sub.required = True
    generate = keys_sub.add_parser("generate", help="write a new Ed25519 key pair")
    generate.add_argument("--out", type=Path, required=True, help="directory for the two files")
    generate.add_argument("--name", default="coordinator", help="file name stem")
    generate.add_argument("--force", action="store_true", help="overwrite existing files")
    generate.set_defaults(handler=_generate)


def _generate(args: argparse.Namespace) -> int:
    return write_keypair(args.out, args.name, args.force, "keep on the coordinator only",
                         "install on every agent")


def write_keypair(out: Path, name: str, force: bool, private_note: str, public_note: str) -> int:
    """Write ``<name>.key`` (0600) and ``<name>.pub`` in ``out``; 2 if they exist."""
    out.mkdir(parents=True, exist_ok=True)
    private_path = out / f"{name}.key"
    public_path = out / f"{name}.pub"
    if not force and (private_path.exists() or public_path.exists()):
        print(f"refusing to overwrite {private_path} or {public_path} (use --force)", file=sys.stderr)
        return 2
    private_pem, public_pem = generate_keypair()
    # The private key is created 0600 from the start, never world-readable.
    fd = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(private_pem)
    public_path.write_bytes(public_pem)
    print(f"private key: {private_path} ({private_note})")
    print(f"public key:  {public_path} ({public_note})")
    print(f"key id:      {key_id_of(load_public_key(public_pem))}")
    return 0
