"""Exceptions raised by ``central``; callers catch these, never library errors.

The tree::

    CentralError                      anything raised by the coordinator
    ├── ConfigurationError            settings refused (e.g. default secret in production)
    │   └── BrokerRefused             the broker refused our credentials or certificate
    ├── NotFound                      an order, meter, concentrator or work order id unknown
    ├── Conflict                      request clashes with current data (duplicate id, ...)
    │   └── InvalidTransition         "event X in state Y" refused by central.state
    ├── PermissionDenied              role too low, or approver == requester
    ├── BadRequest                    input that cannot be used (bad CSV row, bad filter)
    ├── StorageError                  the database failed (wraps sqlalchemy errors)
    └── DispatchError                 MQTT failed (wraps paho errors / missing PUBACK)

Library errors are mapped where they happen with ``raise ... from``.
"""

from __future__ import annotations


class CentralError(Exception):
    """Base of every coordinator error."""


class ConfigurationError(CentralError, ValueError):
    """Settings that must not be used (ValueError so pydantic reports it)."""


class BrokerRefused(ConfigurationError):
    """The MQTT broker refused the coordinator's user name, password or certificate, or
    its TLS certificate failed: retrying cannot help, someone must fix the settings."""


class NotFound(CentralError):
    pass


class Conflict(CentralError):
    pass


class InvalidTransition(Conflict):
    def __init__(self, event: str, state: str) -> None:
        super().__init__(f"event {event!r} is not allowed in state {state!r}")
        self.event = event
        self.state = state


class PermissionDenied(CentralError):
    pass


class BadRequest(CentralError):
    pass


class StorageError(CentralError):
    pass


class DispatchError(CentralError):
    pass
