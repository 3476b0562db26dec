"""Byte transports for DLMS: a tiny typed interface plus serial, TCP and in-memory ones.

A transport moves raw bytes; framing (HDLC, wrapper) is the caller's business.
``receive(timeout)`` returns the bytes available (at least one) or raises
:class:`NoResponse`; every OS or serial failure becomes :class:`TransportError`.
"""

from __future__ import annotations

import queue
import socket
import threading
from abc import ABC, abstractmethod
from types import TracebackType
from typing import Any

from shared.dlms.errors import NoResponse, TransportError


class Transport(ABC):
    @abstractmethod
    def send(self, data: bytes) -> None: ...

    @abstractmethod
    def receive(self, timeout: float) -> bytes:
        """Bytes that arrived within ``timeout`` seconds (at least one); NoResponse if none."""

    @abstractmethod
    def close(self) -> None: ...

    def drain(self) -> int:
        """Discard whatever is already waiting (stale answers); return how many bytes."""
        n = 0
        while True:
            try:
                n += len(self.receive(0.0))
            except NoResponse:
                return n

    def __enter__(self) -> Transport:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class TcpTransport(Transport):
    """A TCP connection (for the IEC 62056-47 wrapper)."""

    def __init__(self, host: str, port: int, connect_timeout: float = 5.0) -> None:
        try:
            self._sock = socket.create_connection((host, port), timeout=connect_timeout)
        except OSError as exc:
            raise TransportError(f"cannot connect to {host}:{port}: {exc}") from exc
        self._sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def send(self, data: bytes) -> None:
        try:
            self._sock.sendall(data)
        except OSError as exc:
            raise TransportError(f"send failed: {exc}") from exc

    def receive(self, timeout: float) -> bytes:
        try:
            self._sock.settimeout(timeout if timeout > 0 else 0.0)
            data = self._sock.recv(65536)
        except (TimeoutError, BlockingIOError) as exc:
            raise NoResponse(f"no data within {timeout:.2f} s") from exc
        except OSError as exc:
            raise TransportError(f"receive failed: {exc}") from exc
        if not data:
            raise TransportError("connection closed by peer")
        return data

    def close(self) -> None:
        try:
            self._sock.close()
        except OSError:
            pass


class SerialTransport(Transport):
    """A serial port (RS-485, optical probe, PLC modem, or a simulator pty) via pyserial."""

    def __init__(self, port: str, baudrate: int = 9600, **serial_kwargs: Any) -> None:
        import serial

        self._serial_mod = serial
        try:
            self._port = serial.Serial(port, baudrate=baudrate, timeout=0, **serial_kwargs)
        except (serial.SerialException, OSError) as exc:
            raise TransportError(f"cannot open {port}: {exc}") from exc

    def send(self, data: bytes) -> None:
        try:
            self._port.write(data)
            self._port.flush()
        except (self._serial_mod.SerialException, OSError) as exc:
            raise TransportError(f"write failed: {exc}") from exc

    def receive(self, timeout: float) -> bytes:
        try:
            if self._port.timeout != timeout:  # each change reconfigures the port (tcsetattr)
                self._port.timeout = timeout
            first = bytes(self._port.read(1))
            if not first:
                raise NoResponse(f"no data within {timeout:.2f} s")
            waiting = self._port.in_waiting
            return first + (bytes(self._port.read(waiting)) if waiting else b"")
        except (self._serial_mod.SerialException, OSError) as exc:
            raise TransportError(f"read failed: {exc}") from exc

    def close(self) -> None:
        try:
            self._port.close()
        except (self._serial_mod.SerialException, OSError):
            pass


class LoopbackTransport(Transport):
    """In-memory transport; ``LoopbackTransport.pair()`` gives two connected ends."""

    def __init__(self) -> None:
        self._inbox: queue.Queue[bytes] = queue.Queue()
        self.peer: LoopbackTransport | None = None
        self._closed = threading.Event()

    @classmethod
    def pair(cls) -> tuple[LoopbackTransport, LoopbackTransport]:
        a, b = cls(), cls()
        a.peer, b.peer = b, a
        return a, b

    def send(self, data: bytes) -> None:
        if self._closed.is_set() or self.peer is None or self.peer._closed.is_set():
            raise TransportError("loopback closed")
        self.peer._inbox.put(bytes(data))

    def receive(self, timeout: float) -> bytes:
        if self._closed.is_set():
            raise TransportError("loopback closed")
        try:
            if timeout <= 0:
                return self._inbox.get_nowait()
            return self._inbox.get(timeout=timeout)
        except queue.Empty as exc:
            raise NoResponse(f"no data within {timeout:.2f} s") from exc

    def close(self) -> None:
        self._closed.set()
