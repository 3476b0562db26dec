from __future__ import annotations

import pytest

from shared import topics
from shared.errors import TopicError


def test_each_concentrator_has_its_own_branch() -> None:
    assert topics.commands("conc-a") == "rcd/v1/c/conc-a/cmd"
    assert topics.meter_table("conc-a") == "rcd/v1/c/conc-a/meters"
    assert topics.results("conc-a") == "rcd/v1/c/conc-a/result"
    assert topics.status("conc-a") == "rcd/v1/c/conc-a/status"


@pytest.mark.parametrize("leaf", topics.LEAVES)
def test_parse_inverts_the_builders(leaf: str) -> None:
    builder = {"cmd": topics.commands, "meters": topics.meter_table, "result": topics.results, "status": topics.status,
               "protected": topics.protected_list}[leaf]
    assert topics.parse(builder("DC-0042")) == ("DC-0042", leaf)


@pytest.mark.parametrize("bad", ["", "a/b", "+", "#", "a b", "x" * 65, "-lead", "conc-a\n"])
def test_ids_that_would_escape_the_branch_are_refused(bad: str) -> None:
    with pytest.raises(TopicError):
        topics.commands(bad)


@pytest.mark.parametrize("topic", ["rcd/v1/c/a/other", "rcd/v2/c/a/cmd", "rcd/v1/c/a/cmd/extra", "x"])
def test_foreign_topics_are_refused(topic: str) -> None:
    with pytest.raises(TopicError):
        topics.parse(topic)


def test_shared_subscription_for_replicas() -> None:
    assert topics.shared_subscription("central", topics.ALL_RESULTS) == "$share/central/rcd/v1/c/+/result"


@pytest.mark.parametrize("bad", ["", "a/b", "g+", "g\n", "x" * 65])
def test_shared_subscription_group_must_be_a_plain_name(bad: str) -> None:
    with pytest.raises(TopicError):
        topics.shared_subscription(bad, topics.ALL_RESULTS)
