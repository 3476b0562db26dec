"""The one exception tree for everything DLMS in ami-rcd.

::

    DlmsError                    base class; catch this to catch everything below
    +-- NoResponse               the meter did not answer within the timeout
    |   +-- MeterUnreachable     not even the HDLC link layer answered (no route to it)
    +-- MalformedResponse        garbage on the line: bad HCS/FCS, bad framing, undecodable APDU
    +-- AssociationRefused       the AARE rejected the association; ``diagnostic`` says why
    +-- ActionRefused            ACTION answered with action-result != success; ``result``
    +-- DataAccessError          GET/SET answered with a data-access-result != success
    |   +-- AccessDenied         ... that result was read-write-denied (3), or a method/write
    |                            was attempted on an association that may not do it
    |                            (AccessDenied is also an ActionRefused)
    +-- TransportError           the port/socket itself failed (raised ``from`` the OSError
                                 or serial exception)

Diagnostics carried by :class:`AssociationRefused` (acse-service-user, IEC 62056-53):
``1`` no-reason-given (used by the simulator for an unknown client address),
``2`` application-context-name-not-supported (used for a meter without keys, i.e. not
commissioned), ``11`` mechanism not recognised, ``12`` mechanism required,
``13`` authentication-failure (wrong key), ``14`` authentication-required.
"""

from __future__ import annotations

DIAG_NO_REASON = 1
DIAG_CONTEXT_NOT_SUPPORTED = 2
DIAG_MECHANISM_NOT_RECOGNISED = 11
DIAG_MECHANISM_REQUIRED = 12
DIAG_AUTHENTICATION_FAILURE = 13
DIAG_AUTHENTICATION_REQUIRED = 14

_DIAG_REASON = {
    DIAG_NO_REASON: "unknown_client",
    DIAG_CONTEXT_NOT_SUPPORTED: "not_provisioned",
    DIAG_MECHANISM_NOT_RECOGNISED: "mechanism_not_recognised",
    DIAG_MECHANISM_REQUIRED: "mechanism_required",
    DIAG_AUTHENTICATION_FAILURE: "authentication_failure",
    DIAG_AUTHENTICATION_REQUIRED: "authentication_required",
}


class DlmsError(Exception):
    """Base of every DLMS failure."""


class NoResponse(DlmsError):
    """The meter did not answer in time (timeout)."""


class MeterUnreachable(NoResponse):
    """Not even the data link answered (no UA to SNRM): no route to the meter.

    A meter that answers the link layer but not the application is a plain
    :class:`NoResponse` (meter not responding); this one never heard us.
    """


class MalformedResponse(DlmsError):
    """Bytes arrived but they are not a valid frame/APDU (bad FCS, garbage, truncation)."""


class AssociationRefused(DlmsError):
    """The meter rejected the association (AARE result != accepted) or HLS pass 4 failed."""

    def __init__(self, diagnostic: int, result: int = 1, message: str = "") -> None:
        self.diagnostic = diagnostic
        self.result = result
        self.reason = _DIAG_REASON.get(diagnostic, "rejected")
        super().__init__(message or f"association refused: {self.reason} (diagnostic {diagnostic})")


class ActionRefused(DlmsError):
    """An ACTION (method invocation) was answered with a result other than success."""

    def __init__(self, result: int, message: str = "") -> None:
        self.result = result
        super().__init__(message or f"action refused: action-result {result}")


class DataAccessError(DlmsError):
    """GET/SET answered with a data-access-result other than success."""

    def __init__(self, result: int, message: str = "") -> None:
        self.result = result
        super().__init__(message or f"data access failed: data-access-result {result}")


class AccessDenied(DataAccessError, ActionRefused):
    """read-write-denied, or the association has no right to do this (e.g. a method on the
    public association). Also an :class:`ActionRefused`, so ``except ActionRefused`` sees it."""

    def __init__(self, result: int = 3, message: str = "") -> None:
        self.result = result
        self.diagnostic = result
        DlmsError.__init__(self, message or f"access denied (result {result})")


class TransportError(DlmsError):
    """The serial port or socket failed; the original exception is ``__cause__``."""


class Preempted(DlmsError):
    """The client gave the line up between two exchanges (the relay audit, when an order
    waits on the same line); nothing is wrong with the meter."""
