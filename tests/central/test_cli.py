"""``rcd central init-db`` / ``import-meters`` and the production refusal."""

from __future__ import annotations

from pathlib import Path

import pytest

from shared.cli import main


def test_init_db_and_import(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("RCD_DATABASE_URL", f"sqlite:///{tmp_path / 'c.sqlite3'}")
    assert main(["central", "init-db"]) == 0
    csv = tmp_path / "m.csv"
    csv.write_text("meter_id,concentrator_id,line_id,hdlc_address\nq1,cq,l1,17\nq2,cq,l1,18\n")
    assert main(["central", "import-meters", str(csv)]) == 0
    assert "meters created 2" in capsys.readouterr().out


def test_run_refuses_defaults_in_production(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("RCD_DATABASE_URL", f"sqlite:///{tmp_path / 'c.sqlite3'}")
    monkeypatch.setenv("RCD_ENVIRONMENT", "production")
    assert main(["central", "run"]) == 2
    assert "refusing to start in production" in capsys.readouterr().err
