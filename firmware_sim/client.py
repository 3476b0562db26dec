"""A small client of the simulator's HTTP control interface (``rcd sim`` prints its URL).

For tests and tools that run the simulator as its own process::

    sim = SimControl("http://127.0.0.1:PORT")
    ops = sim.relay_ops()            # {meter_id: [entry, ...]}, oldest first
    sim.set_fault("DC01-M05", "no_answer")
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from datetime import datetime
from typing import Any


class SimControlError(RuntimeError):
    """The control interface answered with an error or could not be reached."""


def parse_at(text: str) -> datetime:
    """The ``at`` of a log entry as an aware UTC datetime."""
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


class SimControl:
    def __init__(self, url: str, timeout_s: float = 10.0) -> None:
        self.url = url.rstrip("/")
        self.timeout_s = timeout_s

    def _call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(
            self.url + path, data=data, method=method,
            headers={"Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as exc:
            raise SimControlError(f"{method} {path}: {exc.code} {exc.read()[:200]!r}") from exc
        except (OSError, ValueError) as exc:
            raise SimControlError(f"{method} {path}: {exc}") from exc

    def meters(self) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self._call("GET", "/meters")
        return result

    def meter(self, meter_id: str) -> dict[str, Any]:
        result: dict[str, Any] = self._call("GET", f"/meters/{meter_id}")
        return result

    def log(
        self, meter_id: str | None = None, *, kind: str | None = None, since: int = 0
    ) -> dict[str, list[dict[str, Any]]]:
        """Log entries per meter (all meters, or one), oldest first.

        Raises when a meter's log dropped entries: a partial log decides nothing.
        """
        query = f"?since={since}" + (f"&kind={kind}" if kind else "")
        if meter_id is None:
            raw: dict[str, Any] = self._call("GET", f"/log{query}")
        else:
            raw = {meter_id: self._call("GET", f"/meters/{meter_id}/log{query}")}
        out: dict[str, list[dict[str, Any]]] = {}
        for mid, body in raw.items():
            if body["dropped"]:
                raise SimControlError(f"{mid}: log dropped {body['dropped']} entries")
            out[mid] = body["entries"]
        return out

    def relay_ops(self, meter_id: str | None = None) -> dict[str, list[dict[str, Any]]]:
        return self.log(meter_id, kind="relay")

    def set_fault(self, meter_id: str, fault: str | None) -> None:
        self._call("POST", f"/meters/{meter_id}/fault", {"fault": fault})

    def inject(self, meter_id: str, event: str, *, logged: bool = False) -> dict[str, Any]:
        """A relay event no method caused: button, manual_disconnect, local_trip,
        limiter_ok, self_open (``logged``), contacts_open, weld, bypass, repair."""
        result: dict[str, Any] = self._call(
            "POST", f"/meters/{meter_id}/event", {"event": event, "logged": logged})
        return result

    def press_button(self, meter_id: str) -> dict[str, Any]:
        return self.inject(meter_id, "button")


__all__ = ["SimControl", "SimControlError", "parse_at"]
