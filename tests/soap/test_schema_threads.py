"""The message schema is built once, by one thread, however many SOAP requests arrive
together after a start (libxml2 must not build two schemas at once: concurrent builds
failed now and then with "the given type is not a built-in type"), and a validation's
error is its own message's."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from lxml import etree

from central.soap import cim
from central.soap.faults import SoapFault

EDCM = cim.EDCM


def test_requests_arriving_together_build_the_schema_once_one_at_a_time(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(cim, "_SCHEMA", [])
    real = cim._build_schema
    inside = 0
    most = 0
    builds = 0
    count = threading.Lock()

    def slow_build() -> etree.XMLSchema:
        nonlocal inside, most, builds
        with count:
            inside += 1
            builds += 1
            most = max(most, inside)
        try:
            time.sleep(0.05)  # a wide window for a second thread to come in
            return real()
        finally:
            with count:
                inside -= 1

    monkeypatch.setattr(cim, "_build_schema", slow_build)
    start = threading.Barrier(6)

    def first_request() -> etree.XMLSchema:
        start.wait()
        return cim.message_schema()

    with ThreadPoolExecutor(6) as pool:
        schemas = list(pool.map(lambda _: first_request(), range(6)))
    assert (builds, most) == (1, 1)
    assert all(schema is schemas[0] for schema in schemas)


def _message(control_type: str) -> etree._Element:
    return etree.fromstring(
        f'<m:CreateEndDeviceControls xmlns:m="{EDCM}"><m:Header><m:Verb>create</m:Verb>'
        f"</m:Header>{control_type}</m:CreateEndDeviceControls>"
    )


def test_concurrent_validations_each_name_their_own_problem() -> None:
    wrong_child = _message("<m:Nonsense/>")
    wrong_verb = _message("")
    wrong_verb.find(f"{{{EDCM}}}Header").append(etree.Element(f"{{{EDCM}}}Extra"))

    def problem(element: etree._Element) -> str:
        with pytest.raises(SoapFault) as caught:
            cim.validate(element)
        return str(caught.value)

    alone = {id(e): problem(e) for e in (wrong_child, wrong_verb)}
    assert alone[id(wrong_child)] != alone[id(wrong_verb)]
    with ThreadPoolExecutor(4) as pool:
        work = [wrong_child, wrong_verb] * 100
        answers = list(pool.map(problem, work))
    assert [a == alone[id(e)] for a, e in zip(answers, work, strict=True)] == [True] * len(work)
