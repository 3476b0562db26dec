"""Plain-text output for the ops commands: aligned tables and a progress bar."""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from typing import TextIO


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """An aligned text table; ``None`` prints as empty, long cells are kept whole."""
    cells = [[("" if v is None else str(v)) for v in row] for row in rows]
    widths = [len(h) for h in headers]
    for row in cells:
        for i, value in enumerate(row):
            widths[i] = max(widths[i], len(value))
    lines = [
        "  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip(),
        "  ".join("-" * w for w in widths),
    ]
    lines.extend(
        "  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip() for row in cells
    )
    return "\n".join(lines)


class Progress:
    """A progress bar on a stream (stderr by default).

    On a terminal it redraws one line; otherwise (logs, CI) it prints a line at
    most every ``every_s`` seconds and at the end, so logs stay readable.
    """

    def __init__(
        self, total: int, label: str = "", stream: TextIO | None = None, every_s: float = 2.0
    ) -> None:
        self.total = max(total, 0)
        self.label = label
        self.stream = stream if stream is not None else sys.stderr
        self.every_s = every_s
        self._tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self._last_line = ""
        self._last_at = 0.0

    def update(self, done: int, note: str = "") -> None:
        done = min(max(done, 0), self.total)
        width = 30
        filled = int(width * done / self.total) if self.total else width
        pct = 100.0 * done / self.total if self.total else 100.0
        line = (
            f"{self.label} [{'#' * filled}{'.' * (width - filled)}] {done}/{self.total} {pct:5.1f}%"
        )
        if note:
            line += f"  {note}"
        now = time.monotonic()
        if self._tty:
            self.stream.write("\r" + line.ljust(len(self._last_line)))
            self.stream.flush()
        elif line != self._last_line and (
            now - self._last_at >= self.every_s or done == self.total
        ):
            self.stream.write(line + "\n")
            self.stream.flush()
            self._last_at = now
        self._last_line = line

    def finish(self) -> None:
        if self._tty:
            self.stream.write("\n")
            self.stream.flush()
