"""Legacy's result endpoint as its own process, recording every delivery to a file.

``python -m tests.fault.legacy_receiver --port P --control-port C --record FILE``

Each POST of a ``created EndDeviceEvents`` message is appended to FILE as one JSON
line per event (MessageID, CorrelationID, event code, meter, order id, outcome, the
HTTP status answered), written before the answer goes out. The control port switches
how Legacy behaves (``POST /mode {"mode": "ok"|"503"|"refuse"|"slow", "delay_s": 3}``):
answering 503, refusing connections (the listening socket is closed), or answering
late. Events are parsed with ``ops.legacy.parse_events``, the demo's Legacy stand-in.
"""

from __future__ import annotations

import argparse
import json
import signal
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from lxml import etree

from ops.legacy import ACK, parse_events

MODES = ("ok", "503", "refuse", "slow")


class Receiver:
    def __init__(self, port: int, record: Path) -> None:
        self.port = port
        self.record = record
        self.mode = "ok"
        self.delay_s = 0.0
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- the results endpoint
    def listen(self) -> None:
        server = ThreadingHTTPServer(("127.0.0.1", self.port), self._handler())
        server.daemon_threads = True
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
        self._thread.start()

    def close(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()

    def set_mode(self, mode: str, delay_s: float) -> None:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}")
        with self._lock:
            was, self.mode, self.delay_s = self.mode, mode, delay_s
        if mode == "refuse" and was != "refuse":
            self.close()
        elif mode != "refuse" and was == "refuse":
            self.listen()

    def _write(self, rows: list[dict[str, Any]]) -> None:
        with self._lock, self.record.open("a") as f:
            for row in rows:
                f.write(json.dumps(row) + "\n")
            f.flush()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: object) -> None:
                return

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                mode, delay = receiver.mode, receiver.delay_s
                status = 503 if mode == "503" else 200
                try:
                    events = parse_events(body)
                except etree.XMLSyntaxError:
                    events, status = [], 400
                at = time.time()
                receiver._write([
                    {
                        "at": at, "status": status, "mode": mode,
                        "message_id": e.message_id, "correlation_id": e.correlation_id,
                        "meter_id": e.meter_id, "event_code": e.event_code,
                        "order_id": e.details.get("orderId", ""),
                        "outcome": e.details.get("outcome", ""),
                    }
                    for e in events
                ])
                if mode == "slow":
                    time.sleep(delay)
                self.send_response(status)
                if status == 200:
                    self.send_header("Content-Type", "text/xml; charset=utf-8")
                    self.send_header("Content-Length", str(len(ACK)))
                    self.end_headers()
                    self.wfile.write(ACK)
                else:
                    self.send_header("Content-Length", "0")
                    self.end_headers()

        return Handler


def control_server(receiver: Receiver, port: int) -> ThreadingHTTPServer:
    class Control(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: object) -> None:
            return

        def do_POST(self) -> None:
            raw = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            try:
                body = json.loads(raw or b"{}")
                receiver.set_mode(str(body["mode"]), float(body.get("delay_s", 0)))
                code = 200
            except (ValueError, KeyError, TypeError):
                code = 400
            self.send_response(code)
            self.send_header("Content-Length", "0")
            self.end_headers()

    server = ThreadingHTTPServer(("127.0.0.1", port), Control)
    server.daemon_threads = True
    return server


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--control-port", type=int, required=True)
    p.add_argument("--record", type=Path, required=True)
    args = p.parse_args()
    receiver = Receiver(args.port, args.record)
    receiver.listen()
    control = control_server(receiver, args.control_port)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    threading.Thread(target=control.serve_forever, args=(0.05,), daemon=True).start()
    print("ready", flush=True)
    stop.wait()
    control.shutdown()
    receiver.close()


if __name__ == "__main__":
    main()
