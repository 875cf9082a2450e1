"""CLI contract: --json output, exit code 2 with a message on stderr for bad input."""

from __future__ import annotations

import json
from pathlib import Path

from sqlalchemy import inspect
from typer.testing import CliRunner

from quality.cli import app
from quality.db.session import make_engine, upgrade

runner = CliRunner()


def test_help_lists_commands():
    res = runner.invoke(app, ["--help"])
    assert res.exit_code == 0
    for name in ("demo", "ingest", "db", "app"):
        assert name in res.output


def test_db_upgrade_json(db_url):
    res = runner.invoke(app, ["db", "upgrade", "--db", db_url, "--json"])
    assert res.exit_code == 0, res.output
    payload = json.loads(res.stdout)
    assert payload["revision"] == "head"
    eng = make_engine(db_url)
    assert inspect(eng).has_table("images")
    eng.dispose()


def test_db_upgrade_unreachable_exits_2():
    res = runner.invoke(
        app, ["db", "upgrade", "--db", "postgresql+psycopg://nobody:secret@127.0.0.1:1/x"]
    )
    assert res.exit_code == 2
    assert "not reachable" in res.stderr
    assert "secret" not in res.stderr  # the password is never printed


def test_demo_rejects_unknown_size(tmp_path):
    res = runner.invoke(app, ["demo", "--out", str(tmp_path), "--size", "huge"])
    assert res.exit_code == 2
    assert "--size" in res.stderr


def test_eda_command_json_and_unknown_dataset(tiny_demo: Path, tmp_path: Path) -> None:
    """`quality eda` prints the profile as JSON; an unknown dataset exits 2 naming the known ones."""
    from conftest import copy_demo_db

    url = copy_demo_db(tiny_demo, tmp_path)
    upgrade(make_engine(url))
    result = runner.invoke(app, ["eda", "chest-xray-demo", "--db", url, "--json"])
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    by_source = {r["value"]: r["n_images"] for r in payload["distributions"]["source"]}
    assert sum(by_source.values()) == payload["n_images"] > 0
    bad = runner.invoke(app, ["eda", "no-such-dataset", "--db", url])
    assert bad.exit_code == 2
    assert "chest-xray-demo" in bad.stderr
