"""XML written as text, for the gateway's large and regular messages.

A Reply to a create of 1,000 meters has about 20 elements per order; building them as
an lxml tree and serialising it cost about 80 us per order (issue 14), more than a
sixth of the SOAP path's budget. :class:`XmlText` appends the same markup as strings,
in document order, escaped as lxml escapes text and attribute values, so what it
writes is byte for byte what lxml wrote for the same elements (tests/soap check this
against lxml on hostile values). Prefixes are the caller's: it declares them on the
root element.

Characters XML 1.0 does not allow (control characters other than tab, newline and
carriage return, lone surrogates, U+FFFE/U+FFFF) are written as U+FFFD, so a stray
byte in a detail text never makes the whole message unreadable.
"""

from __future__ import annotations

import re
from typing import Final

XML_DECLARATION: Final = "<?xml version='1.0' encoding='UTF-8'?>\n"
_NOT_XML: Final = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")
# printable ASCII other than & < > " : nothing to do (ids, codes, timestamps)
_PLAIN: Final = re.compile("[\x20\x21\x23-\x25\x27-\x3b\x3d\x3f-\x7e]*")


def escape(value: str) -> str:
    """Text content, escaped as lxml does (``&``, ``<``, ``>``)."""
    if _PLAIN.fullmatch(value):
        return value
    if _NOT_XML.search(value):
        value = _NOT_XML.sub("\ufffd", value)
    return value.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def escape_attribute(value: str) -> str:
    """A double-quoted attribute value, escaped."""
    return escape(value).replace('"', "&quot;")


class XmlText:
    """Elements appended in document order; :meth:`bytes` is the UTF-8 document."""

    def __init__(self) -> None:
        self._parts: list[str] = [XML_DECLARATION]

    def start(self, tag: str, attrs: dict[str, str] | None = None) -> None:
        self._parts.append(f"<{tag}{_attributes(attrs)}>")

    def end(self, tag: str) -> None:
        self._parts.append(f"</{tag}>")

    def leaf(self, tag: str, value: str | None = None, attrs: dict[str, str] | None = None
             ) -> None:
        """An element with only text (or nothing) in it."""
        if value is None:
            self._parts.append(f"<{tag}{_attributes(attrs)}/>")
        else:
            self._parts.append(f"<{tag}{_attributes(attrs)}>{escape(value)}</{tag}>")

    def bytes(self) -> bytes:
        return "".join(self._parts).encode("utf-8")


def _attributes(attrs: dict[str, str] | None) -> str:
    if not attrs:
        return ""
    return "".join(f' {name}="{escape_attribute(value)}"' for name, value in attrs.items())
