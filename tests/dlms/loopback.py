"""A SimulatedMeter served on the far end of an in-memory loopback pair (no port opened)."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator

from firmware_sim.meter import Association, SimulatedMeter
from shared.dlms import wrapper
from shared.dlms.errors import NoResponse, TransportError
from shared.dlms.transport import LoopbackTransport

# (client address, the meter's answer APDU) -> the bytes put on the wire
Frame = Callable[[int, bytes], bytes]


def wrapped(source: int, answer: bytes) -> bytes:
    """The answer as the meter sends it: one wrapper PDU to the client."""
    return wrapper.encode(1, source, answer)


@contextlib.contextmanager
def served_meter(meter: SimulatedMeter, frame: Frame = wrapped) -> Iterator[LoopbackTransport]:
    """Yield the near end; ``frame`` may alter what goes back (garbage, a flipped tag)."""
    near, far = LoopbackTransport.pair()
    stop = threading.Event()

    def serve() -> None:
        reader = wrapper.WrapperReader()
        assocs: dict[int, Association] = {}
        while not stop.is_set():
            try:
                data = far.receive(0.05)
            except NoResponse:
                continue
            except TransportError:
                return
            for pdu in reader.feed(data):
                answer = meter.handle(assocs.setdefault(pdu.source, Association(pdu.source)), pdu.apdu)
                far.send(frame(pdu.source, answer))

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield near
    finally:
        stop.set()
        far.close()
        thread.join(timeout=5)
        near.close()
