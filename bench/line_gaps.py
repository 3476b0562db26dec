"""Where a line sits idle: reads the frame times the simulator writes with
``RCD_SIM_TRACE=<dir>`` (``bench_campaign.py --trace DIR``) and splits the time between
one frame's answer and the next frame's arrival into the gap between orders (before a
SNRM) and the gaps between the exchanges of one order (by position in the order).

    .venv/bin/python bench/line_gaps.py DIR
"""

from __future__ import annotations

import itertools
import statistics
import sys
from pathlib import Path

SNRM, DISC = 0x93, 0x53


def kind(control: int) -> str:
    if control | 0x10 == SNRM:
        return "SNRM"
    if control | 0x10 == DISC:
        return "DISC"
    if control & 1 == 0:
        return "I"
    return "RR" if control & 0x0F == 0x01 else f"{control:02x}"


def line_report(path: Path, campaign: tuple[float, float] | None) -> None:
    rows = []
    for text in path.read_text().splitlines():
        arrived, done, dst, control, size = text.split()
        rows.append((float(arrived), float(done), dst, kind(int(control, 16)), int(size)))
    rows.sort()
    between: list[float] = []
    within: dict[int, list[float]] = {}
    frames: list[int] = []
    busy = sum(done - arrived for arrived, done, *_ in rows)
    position = 0
    for prev, row in itertools.pairwise(rows):
        gap = row[0] - prev[1]
        if row[3] == "SNRM":
            between.append(gap)
            frames.append(position + 1)
            position = 0
        else:
            position += 1
            within.setdefault(position, []).append(gap)
    frames.append(position + 1)
    span = rows[-1][1] - rows[0][0]
    idle = span - busy
    print(f"{path.stem}: {len(rows)} requests, {len(frames)} sessions, span {span:.3f} s, "
          f"busy {busy:.3f} s, idle {idle:.3f} s ({1000 * idle / max(len(frames), 1):.1f} ms "
          "per session)")
    print(f"  requests per session: {dict(sorted(_count(frames).items()))}")
    if between:
        print(f"  before SNRM (between orders): mean {1000 * statistics.mean(between):6.1f} ms, "
              f"median {1000 * statistics.median(between):6.1f}, max {1000 * max(between):6.1f}, "
              f"sum {sum(between):.3f} s")
    for pos, gaps in sorted(within.items()):
        print(f"  before request {pos + 1} of a session: mean {1000 * statistics.mean(gaps):6.1f} "
              f"ms, median {1000 * statistics.median(gaps):6.1f}, max {1000 * max(gaps):6.1f}, "
              f"n {len(gaps)}, sum {sum(gaps):.3f} s")
    if campaign is not None:
        start, end = campaign
        last = max((r[1] for r in rows if r[3] == "DISC" and r[1] <= end), default=end)
        print(f"  campaign start to first SNRM {1000 * (rows[0][0] - start):.0f} ms; last "
              f"order's DISC answered to the campaign's end {1000 * (end - last):.0f} ms "
              "(the result's way to the coordinator and the bench's 0.2 s poll)")
    odd = [i for i, n in enumerate(frames) if n != 7]
    for i in odd[:5]:
        print(f"  session {i}: {frames[i]} requests")


def _count(values: list[int]) -> dict[int, int]:
    out: dict[int, int] = {}
    for v in values:
        out[v] = out.get(v, 0) + 1
    return out


def main() -> int:
    times = Path(sys.argv[1], "campaign.times")
    campaign = None
    if times.exists():
        start, end = (float(x) for x in times.read_text().split())
        campaign = (start, end)
    for path in sorted(Path(sys.argv[1]).glob("*.trace")):
        line_report(path, campaign)
    return 0


if __name__ == "__main__":
    sys.exit(main())
