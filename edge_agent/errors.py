"""Exceptions raised by the edge agent.

The tree::

    EdgeError                      anything the agent raises on purpose
    ├── ConfigError                a setting is missing or wrong; ``setting`` names it
    │                              (e.g. ``broker.url``); start-up stops with the message
    ├── StoreError                 the local SQLite store failed (raised from sqlite3.Error)
    ├── TransitionRefused          an order lifecycle event that is not allowed in the
    │                              order's current state (``state``, ``event``)
    ├── LinkError                  the MQTT link could not be set up or used
    │                              (raised from paho / OSError / ssl errors)
    └── MeterError                 one exchange with a meter failed; ``reason`` is the
        │                          contract's ReasonCode to report
        └── LineFault              the concentrator's own serial port / modem failed
                                   (raised from serial.SerialException / OSError)

Library errors (sqlite3, paho, pyserial, shared.dlms) are mapped at the boundary
with ``raise ... from`` so that callers catch only these; the original error
stays available as ``__cause__`` for the logs.
"""

from __future__ import annotations

from shared.codes import ReasonCode


class EdgeError(Exception):
    """Base of every error the edge agent raises."""


class ConfigError(EdgeError):
    """A missing or invalid setting; the message starts with the setting's name."""

    def __init__(self, setting: str, message: str) -> None:
        super().__init__(f"{setting}: {message}")
        self.setting = setting


class StoreError(EdgeError):
    """The local database could not be read or written."""


class TransitionRefused(EdgeError):
    """Event ``event`` is not allowed for an order in state ``state``."""

    def __init__(self, order_id: str, state: str, event: str) -> None:
        super().__init__(f"order {order_id!r}: event {event!r} is not allowed in state {state!r}")
        self.order_id = order_id
        self.state = state
        self.event = event


class LinkError(EdgeError):
    """The MQTT link failed (connect, subscribe, publish)."""


class MeterError(EdgeError):
    """An exchange with a meter failed for ``reason``."""

    def __init__(self, reason: ReasonCode, detail: str = "") -> None:
        super().__init__(f"{reason.value}: {detail}" if detail else reason.value)
        self.reason = reason
        self.detail = detail


class LineFault(MeterError):
    """The concentrator's serial line or modem itself failed."""

    def __init__(self, detail: str = "") -> None:
        super().__init__(ReasonCode.CONCENTRATOR_SERIAL_FAULT, detail)
