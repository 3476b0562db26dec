"""What the machine itself did during a benchmark, printed next to its figures.

The load average says how many processes wanted a core; it does not say how much of
the cores the hypervisor gave to other guests. On a shared virtual machine that share
("steal" in ``/proc/stat``) changes from minute to minute and moves every figure of a
CPU-bound benchmark with it, so the benchmarks print it for their measured interval.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class CpuTimes:
    """The machine's CPU counters (all cores, clock ticks) at one moment."""

    busy: int
    idle: int
    steal: int

    @classmethod
    def now(cls) -> CpuTimes:
        try:
            fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
        except OSError:  # not Linux: nothing to say
            return cls(0, 0, 0)
        user, nice, system, idle, iowait, irq, softirq, steal = (int(v) for v in fields[:8])
        return cls(busy=user + nice + system + irq + softirq, idle=idle + iowait, steal=steal)

    def since(self, start: CpuTimes) -> str:
        """``busy 61 %, steal 4.0 %`` of the cores' time between ``start`` and this."""
        busy, idle, steal = (self.busy - start.busy, self.idle - start.idle,
                             self.steal - start.steal)
        total = busy + idle + steal
        if total <= 0:
            return "CPU counters not available"
        return (f"cores busy {100 * busy / total:.0f} %, idle {100 * idle / total:.0f} %, "
                f"taken by the hypervisor (steal) {100 * steal / total:.1f} %")
