"""Where a line's time goes during a campaign: reads the frame times the simulator writes
with ``RCD_SIM_TRACE=<dir>`` (``bench_campaign.py --trace DIR``), cuts them into sessions
(each starts with a SNRM) and, per line, splits the time from the batch request to the
line's last order into:

* ``first``: from the request to the line's first order's SNRM (the coordinator's
  intake and dispatch, the agent's receipt);
* ``orders``: time on the channel of the order sessions (7 requests each);
* ``other``: time on the channel of other sessions in that span (relay audit reads; an
  audit leaves at the next frame when an order waits);
* ``between``: the line idle between two sessions (the agent's work from one order's
  end to the next order's SNRM);
* ``inside``: the line idle between the requests of one order session (the agent's
  work per frame).

With ``campaign.times`` (written by bench_campaign) only the sessions of the campaign
count: an ``--audited`` warm-up is left out. Without it, the whole trace.

    .venv/bin/python bench/line_gaps.py DIR
"""

from __future__ import annotations

import itertools
import statistics
import sys
from pathlib import Path

SNRM = 0x93
ORDER_REQUESTS = 7  # SNRM, AARQ, GET-with-list, ACTION, GET-with-list, RLRQ, DISC: 7 requests

Frame = tuple[float, float, int]  # arrived, answered (monotonic s), HDLC control byte


def sessions(path: Path) -> list[list[Frame]]:
    frames = []
    for text in path.read_text().splitlines():
        arrived, done, _dst, control, _size = text.split()
        frames.append((float(arrived), float(done), int(control, 16)))
    frames.sort()
    out: list[list[Frame]] = []
    for frame in frames:
        if frame[2] | 0x10 == SNRM or not out:
            out.append([frame])
        else:
            out[-1].append(frame)
    return out


def on_air(session: list[Frame]) -> float:
    """The session's time on the channel: each request until its answer."""
    return sum(answered - arrived for arrived, answered, _ in session)


def line_figures(path: Path, window: tuple[float, float] | None) -> dict[str, float]:
    found = sessions(path)
    if window is not None:
        start, end = window
        found = [s for s in found if s[-1][1] >= start and s[0][0] <= end]
    orders = [s for s in found if len(s) == ORDER_REQUESTS]
    if not orders:
        return {}
    last = orders[-1][-1][1]
    span = [s for s in found if s[0][0] < last]
    begin = window[0] if window is not None else span[0][0][0]
    return {
        "first": orders[0][0][0] - begin,
        "orders": sum(on_air(s) for s in orders),
        "other": sum(on_air(s) for s in span if len(s) != ORDER_REQUESTS),
        "between": sum(b[0][0] - a[-1][1] for a, b in itertools.pairwise(span)),
        "inside": sum(b[0] - a[1] for s in orders for a, b in itertools.pairwise(s)),
        "to_last_order": last - begin,
        "order_sessions": len(orders),
        "other_sessions": len(span) - len(orders),
    }


def main() -> int:
    directory = Path(sys.argv[1])
    times = directory / "campaign.times"
    window = None
    if times.exists():
        start, end = (float(x) for x in times.read_text().split())
        window = (start, end)
    every: dict[str, list[float]] = {}
    for path in sorted(directory.glob("*.trace")):
        figures = line_figures(path, window)
        if not figures:
            continue
        print(f"{path.stem}: " + ", ".join(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}"
                                          for k, v in figures.items()))
        for key, value in figures.items():
            every.setdefault(key, []).append(value)
    if not every:
        print("no order sessions in the trace")
        return 1
    n = statistics.mean(every["order_sessions"])
    print("mean per line (s): " + ", ".join(f"{k} {statistics.mean(v):.3f}"
                                             for k, v in every.items()))
    print(f"per order (ms): between sessions {1000 * statistics.mean(every['between']) / n:.1f}, "
          f"inside a session {1000 * statistics.mean(every['inside']) / n:.1f}, "
          f"on the channel {1000 * statistics.mean(every['orders']) / n:.1f}")
    if window is not None:
        print(f"campaign {window[1] - window[0]:.3f} s; the latest line's last order answered "
              f"{max(every['to_last_order']):.3f} s after the request")
    return 0


if __name__ == "__main__":
    sys.exit(main())
