"""Run a fleet: TCP wrapper servers, HDLC lines on ptys, the HTTP control interface.

``with running_fleet(spec) as fleet:`` starts everything on daemon threads and stops and
joins them on exit. ``fleet`` is a :class:`RunningFleet`.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import socket
import threading
import time
import tty
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from firmware_sim.channel import Channel
from firmware_sim.fleet import SERVER_LOGICAL_ADDRESS, FleetSpec, LineSpec, MeterSpec
from firmware_sim.meter import Association, SimulatedMeter
from firmware_sim.relay_events import inject
from shared.dlms import hdlc, wrapper
from shared.dlms.errors import MalformedResponse


def _garbage(meter: SimulatedMeter, data: bytes, framing: str) -> bytes:
    """A damaged answer the client must reject: an HDLC frame whose body (and so its
    HCS/FCS check) is scrambled, or a wrapper PDU with an impossible version."""
    noise = meter._random(max(len(data), 16))
    if framing == "hdlc" and len(data) >= 9:
        body = bytes(a ^ (b | 1) for a, b in zip(data[3:-3], noise, strict=False))
        return data[:3] + body + data[-3:]
    return b"\x00\x07" + noise


class _LinkDriver:
    """Applies link-level faults and the channel around one meter exchange.

    Timing: the answer leaves when the request's and the answer's frame times have run
    from the request's arrival; the simulated meter does its work while the request is
    on the channel. A modelled meter therefore answers in no time beyond the channel (the
    benchmarks' channel bound assumes exactly that), and the simulator's own CPU time,
    2-3 ms a request in Python, no longer adds to every exchange.
    """

    def __init__(
        self, meter: SimulatedMeter, channel: Channel | None, stop: threading.Event,
        framing: str = "wrapper",
    ) -> None:
        self.meter = meter
        self.channel = channel
        self.stop = stop
        self.framing = framing
        self._due = 0.0  # monotonic time at which the frames so far have left the channel

    def _occupy(self, nbytes: int) -> bool:
        """Count a frame on the channel; the line stays busy until ``_due``."""
        m = self.meter
        assert self.channel is not None
        ok, t = self.channel.transmit(nbytes, m.spec.reachability, wait=False)
        m.counters.channel_time_s += t
        self._due = max(self._due, time.monotonic()) + t
        return ok

    def _wait_due(self) -> None:
        rest = self._due - time.monotonic()
        if rest > 0:
            self.stop.wait(rest)

    def inbound(self, nbytes: int, *, link_layer: bool = False) -> bool:
        """A frame travels to the meter; False when it never arrives or is ignored.

        ``link_layer`` marks HDLC link management (SNRM, DISC): a meter whose
        application hangs (``no_answer``) still answers those from its
        communication module, which is how the concentrator tells a silent
        meter from one it cannot reach (``unreachable``: nothing gets through).
        """
        m = self.meter
        self._wait_due()  # a frame nobody answered still held the line
        if self.channel is not None and not self._occupy(nbytes):
            self._wait_due()
            return False
        if m.has_fault("unreachable"):
            self._wait_due()
            return False
        with m.lock:
            m.counters.frames_rx += 1
            m.counters.bytes_rx += nbytes
        if m.has_fault("no_answer") and not link_layer:
            self._wait_due()
            return False
        return True

    def outbound(self, data: bytes) -> bytes | None:
        """The meter's answer travels back; None when lost. Applies garbage/late faults."""
        m = self.meter
        if m.has_fault("late_answer"):
            if self.stop.wait(m.late_answer_s):
                return None
        if m.has_fault("garbage"):
            data = _garbage(m, data, self.framing)
        if self.channel is not None:
            ok = self._occupy(len(data))
            self._wait_due()
            if not ok:
                return None
        with m.lock:
            m.counters.frames_tx += 1
            m.counters.bytes_tx += len(data)
        return data


# ---------------------------------------------------------------- TCP wrapper


class TcpMeterServer:
    """One listening port per meter; one association per connection and client wport."""

    def __init__(
        self, meter: SimulatedMeter, channel: Channel | None, stop: threading.Event
    ) -> None:
        self.meter = meter
        self.driver = _LinkDriver(meter, channel, stop)
        self.stop = stop
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", meter.spec.tcp_port))
        self.sock.listen(64)
        self.port: int = self.sock.getsockname()[1]
        self._threads: list[threading.Thread] = []
        self._conns: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._accept = threading.Thread(
            target=self._accept_loop, name=f"tcp-{meter.meter_id}", daemon=True
        )

    def start(self) -> None:
        self._accept.start()

    def _accept_loop(self) -> None:
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            t = threading.Thread(target=self._serve, args=(conn,), daemon=True)
            with self._lock:
                self._conns.add(conn)
                self._threads = [x for x in self._threads if x.is_alive()] + [t]
            t.start()

    def _serve(self, conn: socket.socket) -> None:
        reader = wrapper.WrapperReader()
        assocs: dict[int, Association] = {}
        try:
            while not self.stop.is_set():
                try:
                    data = conn.recv(65536)
                except OSError:
                    return
                if not data:
                    return
                try:
                    pdus = reader.feed(data)
                except MalformedResponse:
                    continue
                for pdu in pdus:
                    if not self.driver.inbound(wrapper.HEADER_LEN + len(pdu.apdu)):
                        continue
                    if pdu.destination != SERVER_LOGICAL_ADDRESS:
                        continue
                    assoc = assocs.setdefault(pdu.source, Association(pdu.source))
                    answer = self.meter.handle(assoc, pdu.apdu)
                    out = self.driver.outbound(
                        wrapper.encode(SERVER_LOGICAL_ADDRESS, pdu.source, answer)
                    )
                    if out is not None:
                        conn.sendall(out)
        except OSError:
            return
        finally:
            for assoc in assocs.values():
                self.meter.release(assoc)  # the connection was the association's lifetime
            with self._lock:
                self._conns.discard(conn)
            conn.close()

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()
        with self._lock:
            conns = list(self._conns)
            threads = list(self._threads)
        for c in conns:
            with contextlib.suppress(OSError):
                c.shutdown(socket.SHUT_RDWR)
        self._accept.join(timeout=5)
        for t in threads:
            t.join(timeout=5)


# ---------------------------------------------------------------- HDLC line


@dataclass
class _HdlcLink:
    association: Association
    connected: bool = False
    vs: int = 0
    vr: int = 0
    max_info_tx: int = hdlc.DEFAULT_MAX_INFO
    rx: bytearray = field(default_factory=bytearray)
    tx: list[bytes] = field(default_factory=list)


class HdlcLine:
    """A pty pair: the agent opens ``path``; every meter on the line answers its address."""

    def __init__(
        self, spec: LineSpec, meters: list[SimulatedMeter], stop: threading.Event
    ) -> None:
        self.spec = spec
        self.stop = stop
        self.channel = Channel(spec, stop)
        self.meters: dict[int, SimulatedMeter] = {}
        for m in meters:
            assert m.spec.hdlc_address is not None
            self.meters[m.spec.hdlc_address] = m
        self.drivers = {
            a: _LinkDriver(m, self.channel, stop, "hdlc") for a, m in self.meters.items()
        }
        self.links: dict[tuple[int, bytes], _HdlcLink] = {}
        self.master, self.slave = os.openpty()
        tty.setraw(self.slave)
        tty.setraw(self.master)
        self.path = os.ttyname(self.slave)
        self._wake_r, self._wake_w = os.pipe()
        self._thread = threading.Thread(target=self._loop, name=f"hdlc-{spec.line_id}", daemon=True)
        # RCD_SIM_TRACE=<dir>: per frame, when it arrived and when its answer was written
        # (monotonic seconds), to see where the line sits idle (bench_campaign --trace)
        trace_dir = os.environ.get("RCD_SIM_TRACE")
        self._trace = (open(os.path.join(trace_dir, f"{spec.line_id}.trace"), "w", buffering=1)
                       if trace_dir else None)

    def start(self) -> None:
        self._thread.start()

    def _loop(self) -> None:
        reader = hdlc.FrameReader()
        while not self.stop.is_set():
            try:
                ready, _, _ = select.select([self.master, self._wake_r], [], [], 1.0)
            except (OSError, ValueError):
                return
            if self._wake_r in ready or self.stop.is_set():
                return
            if not ready:
                continue
            try:
                data = os.read(self.master, 4096)
            except OSError:
                continue
            for item in reader.feed(data):
                if isinstance(item, MalformedResponse):
                    self.channel.counters.malformed_frames += 1
                    continue
                self._frame(item)

    def _write(self, data: bytes) -> None:
        with contextlib.suppress(OSError):
            os.write(self.master, data)

    def _frame(self, f: hdlc.Frame) -> None:
        if self._trace is None:
            self._answer(f)
            return
        arrived = time.monotonic()
        self._answer(f)
        self._trace.write(f"{arrived:.6f} {time.monotonic():.6f} {f.dst.hex()} {f.control:02x} "
                          f"{len(f.info)}\n")

    def _answer(self, f: hdlc.Frame) -> None:
        try:
            upper, lower = hdlc.decode_address(f.dst)
        except MalformedResponse:
            return
        meter = self.meters.get(lower) if lower is not None else None
        raw_len = len(hdlc.encode_frame(f))
        if meter is None or upper != SERVER_LOGICAL_ADDRESS:
            # nobody answers; the frame still occupied the channel
            self.channel.transmit(raw_len)
            return
        driver = self.drivers[lower]  # type: ignore[index]
        link_layer = (f.control | 0x10) in (hdlc.SNRM, hdlc.DISC)
        if not driver.inbound(raw_len, link_layer=link_layer):
            return
        client = hdlc.decode_address(f.src)[0]
        key = (lower or 0, f.src)
        link = self.links.get(key)
        if link is None:
            link = self.links[key] = _HdlcLink(Association(client))
        answer = self._link_step(meter, link, f)
        if answer is None:
            return
        frame = hdlc.Frame(f.src, f.dst, answer[0], answer[1], answer[2])
        out = driver.outbound(hdlc.encode_frame(frame))
        if out is not None:
            self._write(out)

    def _next_segment(self, link: _HdlcLink) -> tuple[int, bytes, bool]:
        info = link.tx.pop(0)
        ctrl = hdlc.i_control(link.vs, link.vr)
        link.vs = (link.vs + 1) & 7
        return ctrl, info, bool(link.tx)

    def _link_step(
        self, meter: SimulatedMeter, link: _HdlcLink, f: hdlc.Frame
    ) -> tuple[int, bytes, bool] | None:
        ctrl = f.control
        if ctrl | 0x10 in (hdlc.SNRM, hdlc.DISC):
            meter.trace.append("SNRM" if ctrl | 0x10 == hdlc.SNRM else "DISC")
        if ctrl | 0x10 == hdlc.SNRM:
            params = hdlc.parse_snrm_info(f.info)
            meter.release(link.association)
            link.connected, link.vs, link.vr = True, 0, 0
            link.rx.clear()
            link.tx.clear()
            link.max_info_tx = min(params.get(0x06, hdlc.DEFAULT_MAX_INFO), 2030)
            max_rx = hdlc.DEFAULT_MAX_INFO
            return hdlc.UA, hdlc.ua_info(link.max_info_tx, max_rx), False
        if ctrl | 0x10 == hdlc.DISC:
            was = link.connected
            meter.release(link.association)
            link.connected = False
            link.rx.clear()
            link.tx.clear()
            return (hdlc.UA if was else hdlc.DM), b"", False
        if not link.connected:
            return hdlc.DM, b"", False
        if f.is_rr:
            if link.tx:
                return self._next_segment(link)
            return hdlc.rr_control(link.vr), b"", False
        if not f.is_i_frame:
            return hdlc.FRMR, b"", False
        if f.send_seq != link.vr:
            # repeated frame: answer RR with what we expect; do not process twice
            return hdlc.rr_control(link.vr), b"", False
        link.vr = (link.vr + 1) & 7
        info = f.info
        if not link.rx and info[:3] == hdlc.LLC_REQUEST:
            info = info[3:]
        link.rx += info
        if f.segmented:
            return hdlc.rr_control(link.vr), b"", False
        request = bytes(link.rx)
        link.rx.clear()
        answer = meter.handle(link.association, request)
        link.tx = hdlc.segment(hdlc.LLC_RESPONSE + answer, link.max_info_tx)
        return self._next_segment(link)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            os.write(self._wake_w, b"x")
        self._thread.join(timeout=5)
        if self._trace is not None:
            self._trace.close()
        for fd in (self.master, self.slave, self._wake_r, self._wake_w):
            with contextlib.suppress(OSError):
                os.close(fd)


# ---------------------------------------------------------------- control interface


class RunningFleet:
    def __init__(self, spec: FleetSpec) -> None:
        self.spec = spec
        self._stop = threading.Event()
        self._meters = {m.meter_id: SimulatedMeter(m) for m in spec.meters}
        self._tcp: dict[str, TcpMeterServer] = {}
        self._lines: dict[str, HdlcLine] = {}
        self._tcp_channels: dict[str, Channel] = {}
        self._http: ThreadingHTTPServer | None = None
        self._http_thread: threading.Thread | None = None

    # -- lifecycle
    def start(self) -> None:
        try:
            by_line: dict[str, list[SimulatedMeter]] = {}
            for ms in self.spec.meters:
                m = self._meters[ms.meter_id]
                if ms.transport == "tcp":
                    ch = None
                    if ms.line_id is not None:
                        ch = self._tcp_channels.setdefault(
                            ms.line_id, Channel(self.spec.line(ms.line_id), self._stop)
                        )
                    srv = TcpMeterServer(m, ch, self._stop)
                    self._tcp[ms.meter_id] = srv
                    srv.start()
                else:
                    assert ms.line_id is not None
                    by_line.setdefault(ms.line_id, []).append(m)
            for line_id, meters in by_line.items():
                line = HdlcLine(self.spec.line(line_id), meters, self._stop)
                self._lines[line_id] = line
                line.start()
            self._start_http()
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        self._stop.set()
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
        if self._http_thread is not None:
            self._http_thread.join(timeout=5)
        for srv in self._tcp.values():
            srv.close()
        for line in self._lines.values():
            line.close()

    # -- Python API
    def tcp_port(self, meter_id: str) -> int:
        return self._tcp[meter_id].port

    def serial_path(self, line_id: str) -> str:
        return self._lines[line_id].path

    def meter(self, meter_id: str) -> SimulatedMeter:
        return self._meters[meter_id]

    def meters(self) -> list[SimulatedMeter]:
        return list(self._meters.values())

    def set_fault(self, meter_id: str, fault: str | None) -> None:
        self._meters[meter_id].set_fault(fault)

    def press_button(self, meter_id: str) -> bool:
        return self._meters[meter_id].press_button()

    def inject(self, meter_id: str, event: str, *, logged: bool = False) -> dict[str, Any]:
        """A relay event no method caused (``firmware_sim.relay_events``)."""
        return inject(self._meters[meter_id], event, logged=logged)

    def line_counters(self, line_id: str) -> dict[str, float]:
        if line_id in self._lines:
            return self._lines[line_id].channel.counters.as_dict()
        return self._tcp_channels[line_id].counters.as_dict()

    @property
    def control_url(self) -> str:
        assert self._http is not None
        return f"http://127.0.0.1:{self._http.server_address[1]}"

    def describe(self) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for ms in self.spec.meters:
            d: dict[str, Any] = {"meter_id": ms.meter_id, "transport": ms.transport}
            if ms.transport == "tcp":
                d["tcp_port"] = self.tcp_port(ms.meter_id)
            else:
                d["serial_path"] = self.serial_path(ms.line_id or "")
                d["line_id"] = ms.line_id
                d["hdlc_address"] = ms.hdlc_address
            out.append(d)
        return out

    def _start_http(self) -> None:
        fleet = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def _reply(self, code: int, body: object) -> None:
                raw = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)

            def do_GET(self) -> None:
                url = urlsplit(self.path)
                parts = [p for p in url.path.split("/") if p]
                if parts == ["log"] or (parts[-1:] == ["log"] and len(parts) == 3):
                    return self._log(parts, parse_qs(url.query))
                if parts == ["health"]:
                    return self._reply(200, {"ok": True})
                if parts == ["meters"]:
                    return self._reply(200, [m.state() for m in fleet.meters()])
                if parts == ["lines"]:
                    ids = list(fleet._lines) + list(fleet._tcp_channels)
                    return self._reply(200, {i: fleet.line_counters(i) for i in ids})
                if len(parts) == 2 and parts[0] == "meters" and parts[1] in fleet._meters:
                    return self._reply(200, fleet.meter(parts[1]).state())
                return self._reply(404, {"error": "not found"})

            def _log(self, parts: list[str], query: dict[str, list[str]]) -> None:
                # GET /log (every meter) or /meters/<id>/log; ?since=<seq>&kind=relay|association
                try:
                    since = int(query.get("since", ["0"])[0])
                except ValueError:
                    return self._reply(400, {"error": "since must be an integer"})
                kind = query.get("kind", [None])[0]
                if kind not in (None, "relay", "association", "event", "log_read"):
                    return self._reply(
                        400, {"error": "kind must be relay, association, event or log_read"})
                if len(parts) == 3:
                    if parts[0] != "meters" or parts[1] not in fleet._meters:
                        return self._reply(404, {"error": "not found"})
                    return self._reply(200, fleet.meter(parts[1]).oplog.as_json(since, kind))
                return self._reply(
                    200, {m.meter_id: m.oplog.as_json(since, kind) for m in fleet.meters()}
                )

            def do_POST(self) -> None:
                parts = [p for p in self.path.split("/") if p]
                length = int(self.headers.get("Content-Length") or 0)
                try:
                    body = json.loads(self.rfile.read(length) or b"{}")
                except json.JSONDecodeError:
                    return self._reply(400, {"error": "bad JSON"})
                if len(parts) != 3 or parts[0] != "meters" or parts[1] not in fleet._meters:
                    return self._reply(404, {"error": "not found"})
                m = fleet.meter(parts[1])
                try:
                    if parts[2] == "fault":
                        m.set_fault(body.get("fault"))
                    elif parts[2] == "button":
                        return self._reply(200, {"closed": m.press_button(), **m.state()})
                    elif parts[2] == "event":
                        return self._reply(200, inject(
                            m, str(body.get("event")), logged=bool(body.get("logged", False))))
                    elif parts[2] == "advance":
                        m.advance(float(body.get("seconds", 0)))
                    else:
                        return self._reply(404, {"error": "not found"})
                except (ValueError, TypeError) as exc:
                    return self._reply(400, {"error": str(exc)})
                return self._reply(200, m.state())

        self._http = ThreadingHTTPServer(("127.0.0.1", self.spec.control_port), Handler)
        self._http.daemon_threads = True
        self._http_thread = threading.Thread(
            target=self._http.serve_forever, args=(0.05,), name="sim-control", daemon=True
        )
        self._http_thread.start()


@contextlib.contextmanager
def running_fleet(spec: FleetSpec) -> Iterator[RunningFleet]:
    fleet = RunningFleet(spec)
    fleet.start()
    try:
        yield fleet
    finally:
        fleet.close()


__all__ = ["MeterSpec", "RunningFleet", "running_fleet"]
