"""Hostile-input checks and hardened parsing of SOAP requests.

Two passes, both bounded:

1. an expat scan that refuses any DTD (naming external entities and entity
   declarations, the entity-expansion attack, specifically), counts nesting depth and
   elements, and reports malformed XML with its line and column; expat never
   expands or fetches anything here because we refuse at the declaration;
2. an lxml parse with ``resolve_entities=False``, ``no_network=True``,
   ``huge_tree=False``, ``load_dtd=False`` for the tree we work on.

The body size is checked by the caller before any of this (see ``router``).
"""

from __future__ import annotations

import xml.parsers.expat
from dataclasses import dataclass

from lxml import etree

from central.soap.faults import SoapFault


@dataclass(frozen=True)
class XmlLimits:
    max_bytes: int = 1024 * 1024
    max_depth: int = 40
    max_elements: int = 50_000


class _Refused(Exception):
    def __init__(self, fault: SoapFault) -> None:
        super().__init__(fault.message)
        self.fault = fault


def _scan(data: bytes, limits: XmlLimits) -> None:
    parser = xml.parsers.expat.ParserCreate(namespace_separator=" ")
    depth = 0
    count = 0

    def on_doctype(name: str, sysid: str | None, pubid: str | None, has_internal: int) -> None:
        if sysid or pubid:
            raise _Refused(
                SoapFault(
                    f"DTD refused: the document type '{name}' names an external DTD "
                    f"({sysid or pubid}); DTDs and external entities are not accepted",
                    problem="external_entity",
                )
            )

    def on_doctype_end() -> None:
        raise _Refused(
            SoapFault("DTD refused: a document type declaration is not accepted", problem="dtd")
        )

    def on_entity(
        name: str,
        is_parameter: int,
        value: str | None,
        base: str | None,
        sysid: str | None,
        pubid: str | None,
        notation: str | None,
    ) -> None:
        if sysid or pubid:
            raise _Refused(
                SoapFault(
                    f"external entity refused: entity '{name}' points to {sysid or pubid}",
                    problem="external_entity",
                )
            )
        raise _Refused(
            SoapFault(
                f"entity declaration refused: entity '{name}' (entity expansion is not accepted)",
                problem="entity_expansion",
            )
        )

    def on_start(name: str, attrs: object) -> None:
        nonlocal depth, count
        depth += 1
        count += 1
        if depth > limits.max_depth:
            raise _Refused(
                SoapFault(
                    f"nesting too deep: more than {limits.max_depth} levels of elements",
                    problem="too_deep",
                )
            )
        if count > limits.max_elements:
            raise _Refused(
                SoapFault(f"too many elements: more than {limits.max_elements}", problem="too_many")
            )

    def on_end(name: str) -> None:
        nonlocal depth
        depth -= 1

    def on_external_ref(
        context: str, base: str | None, sysid: str | None, pubid: str | None
    ) -> int:
        raise _Refused(
            SoapFault(f"external entity refused: {sysid or pubid}", problem="external_entity")
        )

    parser.StartDoctypeDeclHandler = on_doctype
    parser.EndDoctypeDeclHandler = on_doctype_end
    parser.EntityDeclHandler = on_entity
    parser.ExternalEntityRefHandler = on_external_ref
    parser.StartElementHandler = on_start
    parser.EndElementHandler = on_end
    try:
        parser.Parse(data, True)
    except _Refused as refused:
        raise refused.fault from None
    except xml.parsers.expat.ExpatError as exc:
        raise SoapFault(
            f"malformed XML: {xml.parsers.expat.ErrorString(exc.code)} "
            f"at line {exc.lineno}, column {exc.offset}",
            problem="malformed",
        ) from None


def _parser() -> etree.XMLParser:
    return etree.XMLParser(
        resolve_entities=False,
        no_network=True,
        huge_tree=False,
        load_dtd=False,
        dtd_validation=False,
        remove_comments=True,
        remove_pis=True,
    )


def parse_request(data: bytes, limits: XmlLimits) -> etree._Element:
    """The root element of a checked request, or a :class:`SoapFault`."""
    if len(data) > limits.max_bytes:
        raise SoapFault(
            f"request body of {len(data)} bytes is over the limit of {limits.max_bytes} bytes",
            problem="too_large",
            http_status=413,
        )
    if not data.strip():
        raise SoapFault("empty request body", problem="malformed")
    _scan(data, limits)
    try:
        root = etree.fromstring(data, parser=_parser())
    except etree.XMLSyntaxError as exc:
        raise SoapFault(f"malformed XML: {exc}", problem="malformed") from None
    docinfo = root.getroottree().docinfo
    if docinfo.doctype or docinfo.internalDTD is not None:
        raise SoapFault("DTD refused: a document type declaration is not accepted", problem="dtd")
    return root


def parse_trusted(data: bytes) -> etree._Element:
    """Parse XML we produced ourselves (stored replies), with the same safe parser."""
    return etree.fromstring(data, parser=_parser())
