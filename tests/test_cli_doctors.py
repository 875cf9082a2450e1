"""``quality doctors`` and ``quality agreement`` on the tiny demo."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import copy_demo_db
from typer.testing import CliRunner

from quality.cli import app

runner = CliRunner()


@pytest.fixture(scope="module")
def db(tiny_demo: Path, tmp_path_factory: pytest.TempPathFactory) -> str:
    return copy_demo_db(tiny_demo, tmp_path_factory.mktemp("cli_demo"))


def test_doctors_json(db):
    res = runner.invoke(app, ["doctors", "--task", "finding", "--json", "--db", db])
    assert res.exit_code == 0, res.output
    payload = json.loads(res.stdout)
    assert {"task", "reference", "team", "confusion", "exam", "weekly"} <= set(payload)
    assert payload["task"]["name"] == "finding"
    assert len(payload["team"]) == 14


def test_doctors_markdown_by_id(db):
    res = runner.invoke(app, ["doctors", "--task", "2", "--db", db])
    assert res.exit_code == 0, res.output
    assert res.stdout.startswith("# Doctor-quality report: task 'finding-box'")
    assert "| D01 |" in res.stdout


def test_doctors_html_to_file(db, tmp_path: Path):
    out = tmp_path / "f.html"
    res = runner.invoke(
        app, ["doctors", "--task", "finding", "--format", "html", "--out", str(out), "--db", db]
    )
    assert res.exit_code == 0, res.output
    assert "<table" in out.read_text()
    assert res.stdout == ""


def test_doctors_csv(db):
    res = runner.invoke(app, ["doctors", "--task", "finding", "--format", "csv", "--db", db])
    assert res.exit_code == 0, res.output
    assert res.stdout.splitlines()[0].startswith("code,kind,n_annotations")


def test_unknown_task_exits_2(db):
    res = runner.invoke(app, ["doctors", "--task", "nope", "--db", db])
    assert res.exit_code == 2
    assert "nope" in res.stderr and "finding-box" in res.stderr
    assert res.stdout == ""


def test_bad_format_exits_2(db):
    res = runner.invoke(app, ["doctors", "--task", "finding", "--format", "pdf", "--db", db])
    assert res.exit_code == 2
    assert "--format" in res.stderr


def test_agreement(db):
    res = runner.invoke(app, ["agreement", "--task", "finding", "--json", "--db", db])
    assert res.exit_code == 0, res.output
    payload = json.loads(res.stdout)
    assert payload["alpha"]["low"] <= payload["alpha"]["estimate"] <= payload["alpha"]["high"]
    res = runner.invoke(app, ["agreement", "--task", "finding", "--db", db])
    assert res.exit_code == 0, res.output
    assert "Krippendorff alpha" in res.stdout
    res = runner.invoke(app, ["agreement", "--task", "42", "--db", db])
    assert res.exit_code == 2 and "42" in res.stderr
