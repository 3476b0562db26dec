"""PLC/serial channel model: per-frame latency, bit rate, loss, per-meter reachability.

Time on the channel for a frame of ``n`` bytes is ``latency_s + 8 * n / bit_rate``; the
line is busy for that long (one frame at a time, as on a PLC segment or an RS-485 bus).
Loss and reachability are drawn from a seeded RNG so a run is reproducible.
"""

from __future__ import annotations

import random
import threading
from dataclasses import asdict, dataclass

from firmware_sim.fleet import LineSpec


@dataclass
class LineCounters:
    frames: int = 0
    bytes: int = 0
    channel_time_s: float = 0.0
    lost_frames: int = 0
    malformed_frames: int = 0

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


class Channel:
    def __init__(self, spec: LineSpec, stop: threading.Event) -> None:
        self.spec = spec
        self._rng = random.Random(spec.seed)
        self._stop = stop
        self._lock = threading.Lock()
        self.counters = LineCounters()

    def frame_time(self, nbytes: int) -> float:
        t = self.spec.latency_s
        if self.spec.bit_rate > 0:
            t += 8.0 * nbytes / self.spec.bit_rate
        return t

    def transmit(self, nbytes: int, reachability: float = 1.0, *, wait: bool = True
                 ) -> tuple[bool, float]:
        """Occupy the channel for one frame; return (delivered, seconds on the channel).
        ``wait=False``: count the frame but leave the waiting to the caller."""
        t = self.frame_time(nbytes)
        with self._lock:
            self.counters.frames += 1
            self.counters.bytes += nbytes
            self.counters.channel_time_s += t
            lost = (self.spec.loss > 0 and self._rng.random() < self.spec.loss) or (
                reachability < 1.0 and self._rng.random() >= reachability
            )
            if lost:
                self.counters.lost_frames += 1
        if wait and t > 0:
            self._stop.wait(t)
        return not lost, t
