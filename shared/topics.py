"""Every MQTT topic ami-rcd uses, in one place.

One topic tree per concentrator, so that the broker's ACL can give each agent
its own branch and nothing else (see ``deploy/mosquitto/acl``)::

    rcd/v1/c/<concentrator>/cmd      coordinator → agent   signed orders, cancels and acks (QoS 1, never retained)
    rcd/v1/c/<concentrator>/meters   coordinator → agent   signed meter table (QoS 1, retained)
    rcd/v1/c/<concentrator>/result   agent → coordinator   receipts, results, refusal reports (QoS 1)
    rcd/v1/c/<concentrator>/status   agent → coordinator   status and last will (QoS 1, retained)
    rcd/v1/c/<concentrator>/protected protect authority → agent  signed protected list (QoS 1, retained)
"""

from __future__ import annotations

import re
from typing import Final, Literal

from shared.errors import TopicError

ROOT: Final = "rcd/v1"
_PREFIX: Final = f"{ROOT}/c"
# An identifier (concentrator, meter, order, command, line) ends up in topics, file
# names and logs. The one rule for it, used by the contracts, the agent's configuration
# and the coordinator's registry. No anchors here: each regex engine anchors its own way
# (Python's "$" also matches before a final newline; use fullmatch or "\Z").
IDENTIFIER_CHARS: Final = r"[A-Za-z0-9][A-Za-z0-9_.:-]*"
IDENTIFIER_MAX_LENGTH: Final = 64
_ID = re.compile(IDENTIFIER_CHARS)

Leaf = Literal["cmd", "meters", "result", "status", "protected"]
LEAVES: Final[tuple[Leaf, ...]] = ("cmd", "meters", "result", "status", "protected")

# Subscriptions of the coordinator, across every concentrator.
ALL_RESULTS: Final = f"{_PREFIX}/+/result"
ALL_STATUS: Final = f"{_PREFIX}/+/status"

# QoS used for everything: at-least-once; receivers are idempotent.
QOS: Final = 1


def is_identifier(value: object) -> bool:
    """Whether ``value`` is an identifier by the one rule above."""
    return (
        isinstance(value, str)
        and len(value) <= IDENTIFIER_MAX_LENGTH
        and _ID.fullmatch(value) is not None
    )


def check_concentrator_id(concentrator_id: str) -> str:
    if not is_identifier(concentrator_id):
        raise TopicError(
            f"concentrator id {concentrator_id!r} is not usable in a topic "
            "(letters, digits, '_', '.', ':', '-'; at most 64)"
        )
    return concentrator_id


def commands(concentrator_id: str) -> str:
    return f"{_PREFIX}/{check_concentrator_id(concentrator_id)}/cmd"


def meter_table(concentrator_id: str) -> str:
    return f"{_PREFIX}/{check_concentrator_id(concentrator_id)}/meters"


def protected_list(concentrator_id: str) -> str:
    return f"{_PREFIX}/{check_concentrator_id(concentrator_id)}/protected"


def results(concentrator_id: str) -> str:
    return f"{_PREFIX}/{check_concentrator_id(concentrator_id)}/result"


def status(concentrator_id: str) -> str:
    return f"{_PREFIX}/{check_concentrator_id(concentrator_id)}/status"


def shared_subscription(group: str, topic_filter: str) -> str:
    """A shared subscription so that several coordinator replicas split the load."""
    if not is_identifier(group):
        raise TopicError(f"shared subscription group {group!r} is not a plain name")
    return f"$share/{group}/{topic_filter}"


def parse(topic: str) -> tuple[str, Leaf]:
    """Split a concrete topic into (concentrator id, leaf); refuse anything else."""
    parts = topic.split("/")
    if len(parts) != 5 or "/".join(parts[:3]) != _PREFIX:
        raise TopicError(f"topic {topic!r} is not in the {_PREFIX}/<concentrator>/<leaf> tree")
    concentrator_id, leaf = parts[3], parts[4]
    check_concentrator_id(concentrator_id)
    for known in LEAVES:
        if leaf == known:
            return concentrator_id, known
    raise TopicError(f"topic {topic!r} ends in unknown leaf {leaf!r}")
