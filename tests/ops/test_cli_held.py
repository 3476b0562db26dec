"""``rcd order approve`` and ``rcd order wait`` (ops/cli_held.py) against the real
coordinator: the second person's step that docs/deployment.md section 5 carries, held
or not, so that the document works on any day."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from ops.cli import main

from .live import ADMIN, APPROVER, OPERATOR, LiveServer


def rcd(live: LiveServer, token: str, *args: str) -> int:
    return main([*args[:2], "--url", live.url, "--token", token, *args[2:]])


def test_approve_releases_a_held_order_and_says_so_when_none_is_held(
    live: LiveServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    meters = tmp_path / "m.csv"
    meters.write_text(
        "meter_id,concentrator_id,line_id,hdlc_address\n"
        + "".join(f"HELD-{n},conc-east,line1,{16 + n}\n" for n in range(7))
    )
    assert rcd(live, ADMIN, "meters", "import", str(meters)) == 0
    # six disconnects in one batch: over the fixture's threshold of five, held
    batch = httpx.post(
        f"{live.url}/api/v1/orders/batch",
        json={"orders": [{"meter_id": f"HELD-{n}", "action": "disconnect", "reason": "losses"}
                         for n in range(6)]},
        headers={"Authorization": f"Bearer {OPERATOR}"},
        timeout=10,
    )
    batch.raise_for_status()
    held = batch.json()["items"][0]["order_id"]
    capsys.readouterr()

    # waiting on it says why it does not move, and that it goes on
    assert rcd(live, OPERATOR, "order", "wait", held, "--seconds", "0.2") == 3
    assert "held for a second person" in capsys.readouterr().err
    # the requester is not a second person
    assert rcd(live, OPERATOR, "order", "approve", held) == 1
    assert "HTTP 403" in capsys.readouterr().err
    assert rcd(live, APPROVER, "order", "approve", held) == 0
    assert f"order {held} approved by" in capsys.readouterr().out
    assert rcd(live, APPROVER, "order", "approve", held) == 0
    assert "already approved" in capsys.readouterr().out

    # an order nothing holds (a connect): the step changes nothing and says so
    assert rcd(live, OPERATOR, "order", "connect", "HELD-6") == 0
    free = capsys.readouterr().out.split()[1]
    assert rcd(live, ADMIN, "order", "approve", free) == 0
    assert f"order {free} is not held" in capsys.readouterr().out
    order = httpx.get(f"{live.url}/api/v1/orders/{free}",
                      headers={"Authorization": f"Bearer {ADMIN}"}, timeout=10).json()
    assert order["approved_by"] is None
