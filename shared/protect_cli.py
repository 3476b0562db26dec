"""``rcd protect``: the protect authority's tool (Ley 21.304, issue 17).

Its own key and role, apart from the coordinator: ``keygen`` writes the protect key
pair, ``sign`` makes a concentrator's signed protected list, ``push`` publishes it
retained on ``rcd/v1/c/<id>/protected`` as the broker account ``rcd-protect``
(deploy/mosquitto/acl). Agents verify it with the protect public key only.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
from pathlib import Path

from shared import topics
from shared.contracts import ProtectedList, decode
from shared.errors import SharedError
from shared.keys_cli import write_keypair
from shared.protect import ProtectSigner, make_list
from shared.signing import load_private_key_file, open_envelope

PROTECT_USER = "rcd-protect"


class PushError(Exception):
    """The list could not be published (broker refused, unreachable, timed out)."""


def sign_list(key_file: Path, concentrator_id: str, version: int, meters: list[str]) -> bytes:
    signer = ProtectSigner(load_private_key_file(key_file))
    return signer.sign(make_list(concentrator_id, version, meters))


def list_of(payload: bytes) -> ProtectedList:
    """The list inside a signed envelope (shape only; the agent verifies the signature)."""
    return decode(ProtectedList, open_envelope(payload).body)


def push(payload: bytes, *, host: str, port: int, username: str = PROTECT_USER,
         password: str | None = None, protocol: str = "5", ca_file: Path | None = None,
         timeout_s: float = 10.0) -> str:
    """Publish a signed list retained (QoS 1) on its concentrator's topic; the topic."""
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    topic = topics.protected_list(list_of(payload).concentrator_id)
    v5 = protocol == "5"
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=username,
                         protocol=mqtt.MQTTv5 if v5 else mqtt.MQTTv311)
    client.username_pw_set(username, password)
    if ca_file is not None:
        client.tls_set(ca_certs=str(ca_file))
    connected = threading.Event()
    refused: list[str] = []

    def on_connect(c: mqtt.Client, u: object, f: object, rc: object, p: object) -> None:
        if getattr(rc, "is_failure", False):
            refused.append(str(rc))
        connected.set()

    client.on_connect = on_connect
    try:
        client.connect(host, port)
        client.loop_start()
        if not connected.wait(timeout_s) or refused:
            raise PushError(f"broker {host}:{port} refused or did not answer: {refused}")
        info = client.publish(topic, payload, qos=1, retain=True)
        info.wait_for_publish(timeout_s)
        if not info.is_published():
            raise PushError(f"list not acknowledged by {host}:{port} within {timeout_s}s")
    except OSError as exc:
        raise PushError(f"cannot reach broker {host}:{port}: {exc}") from exc
    finally:
        client.disconnect()
        client.loop_stop()
    return topic


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    protect = sub.add_parser("protect", help="protect authority: signed protected lists")
    actions = protect.add_subparsers(dest="protect_command", metavar="ACTION")
    actions.required = True
    keygen = actions.add_parser("keygen", help="write the protect authority's key pair")
    keygen.add_argument("--out", type=Path, required=True, help="directory for the two files")
    keygen.add_argument("--name", default="protect", help="file name stem")
    keygen.add_argument("--force", action="store_true", help="overwrite existing files")
    keygen.set_defaults(handler=_keygen)
    sign = actions.add_parser("sign", help="sign a concentrator's protected list")
    sign.add_argument("--key", type=Path, required=True, help="the protect private key")
    sign.add_argument("--concentrator", required=True)
    sign.add_argument("--version", type=int, required=True,
                      help="higher than the last list of this concentrator")
    sign.add_argument("--meters", default="", help="comma-separated meter ids")
    sign.add_argument("--meters-file", type=Path, help="one meter id a line")
    sign.add_argument("--out", type=Path, help="file for the signed list (default: stdout)")
    sign.set_defaults(handler=_sign)
    push_ = actions.add_parser("push", help="publish a signed list, retained, to its agent")
    push_.add_argument("file", type=Path, help="a signed list from `rcd protect sign`")
    push_.add_argument("--broker", required=True, help="host:port")
    push_.add_argument("--username", default=PROTECT_USER)
    push_.add_argument("--password-file", type=Path)
    push_.add_argument("--ca-file", type=Path, help="CA for a TLS listener")
    push_.add_argument("--protocol", choices=("5", "3.1.1"), default="5",
                       help="MQTT version (3.1.1 for a NATS cluster; default 5)")
    push_.set_defaults(handler=_push)


def _keygen(args: argparse.Namespace) -> int:
    return write_keypair(args.out, args.name, args.force,
                         "keep with the protect authority only, never on the coordinator",
                         "install on every agent as protect.public_key_file")


def _sign(args: argparse.Namespace) -> int:
    meters = [m.strip() for m in args.meters.split(",") if m.strip()]
    if args.meters_file is not None:
        meters += [m.strip() for m in args.meters_file.read_text().splitlines() if m.strip()]
    try:
        payload = sign_list(args.key, args.concentrator, args.version, meters)
    except (OSError, ValueError, SharedError) as exc:
        print(f"cannot sign the list: {exc}", file=sys.stderr)
        return 2
    if args.out is None:
        sys.stdout.write(payload.decode() + "\n")
    else:
        args.out.write_bytes(payload)
        print(f"signed list {args.concentrator} version {args.version} "
              f"({len(set(meters))} meters): {args.out}")
    return 0


def _push(args: argparse.Namespace) -> int:
    host, _, port = args.broker.rpartition(":")
    password = args.password_file.read_text().strip() if args.password_file else None
    try:
        payload = args.file.read_bytes()
        topic = push(payload, host=host or "127.0.0.1", port=int(port), username=args.username,
                     password=password, protocol=args.protocol, ca_file=args.ca_file)
    except (OSError, ValueError, SharedError, PushError) as exc:
        print(f"cannot push the list: {exc}", file=sys.stderr)
        return 2
    version = json.loads(open_envelope(payload).body)["version"]
    print(f"pushed version {version} retained on {topic}")
    return 0
