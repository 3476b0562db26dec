"""A stand-in for Legacy's result endpoint (step 9), for the demo and tests.

It accepts the coordinator's standard ``CreatedEndDeviceEvents`` SOAP messages
(IEC 61968-9, the meter in ``Assets``) over HTTP, records what each one says
(meter, event code, reason, work order, energy, CorrelationID, MessageID), drops
duplicates by MessageID as Legacy should, and acknowledges with the standard
``EndDeviceEventsResponseMessage`` whose ``Reply/Result`` is OK, or, as many times
as :meth:`LegacyStandIn.refuse` asked, FAILED with a coded Error.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType

from lxml import etree

MSG_NS = "http://iec.ch/TC57/2011/schema/message"
EVENTS_NS = "http://iec.ch/TC57/2011/EndDeviceEvents#"

ACK_TEMPLATE = """<?xml version="1.0" encoding="UTF-8"?>
<soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/">
<soapenv:Body>
<m:EndDeviceEventsResponseMessage xmlns:m="http://iec.ch/TC57/2011/EndDeviceEventsMessage"
    xmlns:msg="http://iec.ch/TC57/2011/schema/message">
<m:Header><msg:Verb>reply</msg:Verb><msg:Noun>EndDeviceEvents</msg:Noun></m:Header>
<m:Reply><msg:Result>{result}</msg:Result>{errors}</m:Reply>
</m:EndDeviceEventsResponseMessage>
</soapenv:Body></soapenv:Envelope>"""
REFUSAL_ERROR = (
    "<msg:Error><msg:code>5.1</msg:code><msg:level>FATAL</msg:level>"
    "<msg:reason>Legacy could not store the result</msg:reason></msg:Error>"
)


def acknowledgement(result: str = "OK") -> bytes:
    errors = "" if result == "OK" else REFUSAL_ERROR
    return ACK_TEMPLATE.format(result=result, errors=errors).encode()


ACK = acknowledgement()


@dataclass(frozen=True)
class LegacyEvent:
    message_id: str
    correlation_id: str
    meter_id: str
    event_code: str
    reason: str
    details: dict[str, str]

    @property
    def work_order(self) -> str:
        return self.details.get("fieldWorkOrder", "")


def parse_events(body: bytes) -> list[LegacyEvent]:
    parser = etree.XMLParser(resolve_entities=False, no_network=True, huge_tree=False)
    root = etree.fromstring(body, parser)
    message_id = root.findtext(f".//{{{MSG_NS}}}MessageID") or ""
    correlation_id = root.findtext(f".//{{{MSG_NS}}}CorrelationID") or ""
    events = []
    for event in root.iter(f"{{{EVENTS_NS}}}EndDeviceEvent"):
        code = event.find(f"{{{EVENTS_NS}}}EndDeviceEventType")
        details = {
            d.findtext(f"{{{EVENTS_NS}}}name") or "": d.findtext(f"{{{EVENTS_NS}}}value") or ""
            for d in event.findall(f"{{{EVENTS_NS}}}EndDeviceEventDetails")
        }
        events.append(
            LegacyEvent(
                message_id=message_id,
                correlation_id=correlation_id,
                meter_id=event.findtext(f"{{{EVENTS_NS}}}Assets/{{{EVENTS_NS}}}mRID")
                or event.findtext(f"{{{EVENTS_NS}}}Assets/{{{EVENTS_NS}}}Names/{{{EVENTS_NS}}}name")
                or "",
                event_code=code.get("ref", "") if code is not None else "",
                reason=event.findtext(f"{{{EVENTS_NS}}}reason") or "",
                details=details,
            )
        )
    return events


class LegacyStandIn:
    """HTTP server on 127.0.0.1 that records result messages.

    ``received`` keeps every accepted POST body as sent (duplicates included), so a
    test can count deliveries; ``recorded`` keeps each event once. While ``up`` is
    False it answers 503 and records nothing, as a Legacy that is down.
    """

    def __init__(self, port: int = 0) -> None:
        self._lock = threading.Condition()
        self.up = True
        self.received: list[bytes] = []
        self.recorded: list[LegacyEvent] = []
        self.message_ids: set[str] = set()
        self.duplicates = 0
        self.malformed = 0
        self.refused = 0  # how many posts were answered with a Result that is not OK
        self._refusals: list[str] = []
        self._httpd = ThreadingHTTPServer(("127.0.0.1", port), self._handler())
        self._httpd.daemon_threads = True
        self.port = int(self._httpd.server_address[1])
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/legacy/results"

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        standin = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                body = self.rfile.read(min(length, 10 * 1024 * 1024))
                if not standin.up:
                    self.send_response(503)
                    self.end_headers()
                    return
                try:
                    events = parse_events(body)
                except etree.XMLSyntaxError:
                    with standin._lock:
                        standin.malformed += 1
                    self.send_response(400)
                    self.end_headers()
                    return
                answer = standin._answer(body, events)
                self.send_response(200)
                self.send_header("Content-Type", "text/xml; charset=utf-8")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, format: str, *args: object) -> None:
                return

        return Handler

    def refuse(self, times: int, result: str = "FAILED") -> None:
        """Answer the next ``times`` posts with ``result`` (PARTIAL or FAILED) and an
        Error, recording nothing, as a Legacy that could not take the result."""
        with self._lock:
            self._refusals.extend([result] * times)

    def _answer(self, body: bytes, events: list[LegacyEvent]) -> bytes:
        with self._lock:
            if self._refusals:
                self.refused += 1
                self.received.append(body)
                self._lock.notify_all()
                return acknowledgement(self._refusals.pop(0))
        self._record(body, events)
        return ACK

    def _record(self, body: bytes, events: list[LegacyEvent]) -> None:
        with self._lock:
            self.received.append(body)
            for event in events:
                key = f"{event.message_id}/{event.meter_id}"
                if event.message_id and key in self.message_ids:
                    self.duplicates += 1
                    continue
                self.message_ids.add(key)
                self.recorded.append(event)
            self._lock.notify_all()

    def by_meter(self) -> dict[str, LegacyEvent]:
        with self._lock:
            return {event.meter_id: event for event in self.recorded}

    def wait_for_meters(self, meters: set[str], timeout: float) -> bool:
        """True once an event for every one of ``meters`` has arrived."""
        with self._lock:
            return self._lock.wait_for(
                lambda: meters <= {event.meter_id for event in self.recorded}, timeout
            )

    def wait_for_posts(self, count: int, timeout: float) -> list[bytes]:
        """The bodies received once ``count`` have arrived, or what arrived by then."""
        with self._lock:
            self._lock.wait_for(lambda: len(self.received) >= count, timeout)
            return list(self.received)

    def start(self) -> LegacyStandIn:
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, name="legacy", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> LegacyStandIn:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
