"""The demo's MQTT broker: mosquitto with the shipped configuration and ACL, else amqtt.

mosquitto is used when it is installed (``auto``), so the demo runs with the ACL and
one password per account as in production; the embedded amqtt broker lets ``rcd demo``
run where only pip was available. Apart from :mod:`ops.demo` because its account
handling is tested on its own (``tests/demo/test_demo_broker.py``).
"""

from __future__ import annotations

import contextlib
import secrets
from collections.abc import Iterator
from typing import Literal

BrokerKind = Literal["auto", "mosquitto", "embedded"]


@contextlib.contextmanager
def start_broker(
    kind: BrokerKind, users: list[str]
) -> Iterator[tuple[str, int, dict[str, str], str]]:
    """Yield (host, port, password per account, description).

    Every account (the coordinator's, each concentrator's) has its own random
    password, so one concentrator's credentials cannot log in as another or as
    the coordinator. The embedded broker has no accounts: every password is "".
    """
    from shared.broker import (
        COORDINATOR_USER,
        BrokerError,
        EmbeddedBroker,
        MosquittoBroker,
        mosquitto_binary,
    )

    use_mosquitto = kind == "mosquitto"
    if kind == "auto":
        try:
            mosquitto_binary()
            use_mosquitto = True
        except BrokerError:
            use_mosquitto = False
    if use_mosquitto:
        passwords = {name: secrets.token_urlsafe(12) for name in [COORDINATOR_USER, *users]}
        broker = MosquittoBroker(password=passwords[COORDINATOR_USER])
        for name in users:
            broker.add_user(name, passwords[name])
        with broker:
            yield broker.host, broker.port, passwords, "mosquitto (shipped config and ACL)"
    else:
        no_accounts = {name: "" for name in [COORDINATOR_USER, *users]}
        with EmbeddedBroker() as embedded:
            yield (
                embedded.host,
                embedded.port,
                no_accounts,
                "embedded amqtt (MQTT 3.1.1, no ACL: demo only)",
            )
