"""Broker failover for a paho client: a list of broker nodes tried in turn.

paho reconnects on its own, but always to the address it was given. A
clustered broker (NATS) keeps the session, retained messages and QoS 1
messages in flight on every node, so a client whose node died may continue on
any other: after each failed connection attempt or lost connection, the next
reconnect goes to the next node in the list.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence

import paho.mqtt.client as paho


class BrokerRotation:
    def __init__(self, addresses: Sequence[tuple[str, int]]) -> None:
        if not addresses:
            raise ValueError("no broker address")
        self._addresses = list(addresses)
        self._index = 0
        self._lock = threading.Lock()

    @property
    def current(self) -> tuple[str, int]:
        with self._lock:
            return self._addresses[self._index]

    @property
    def several(self) -> bool:
        return len(self._addresses) > 1

    def advance(self, client: paho.Client) -> tuple[str, int]:
        """Point ``client``'s next reconnect at the next node; return it."""
        with self._lock:
            if len(self._addresses) == 1:
                return self._addresses[0]
            self._index = (self._index + 1) % len(self._addresses)
            host, port = self._addresses[self._index]
        # paho's reconnect() reads these two fields; its public setters refuse while
        # a lost connection is not yet fully closed, which is exactly when we switch.
        client._host = host
        client._port = port
        return host, port
