"""``quality review-export`` on the fixture DB of ``test_review`` (SQLite), with the seven
verdicts of ``test_review._review_some``: six on ``m:v1`` (2 agree, 3 disagree, 1 unsure)
and one agree on ``m:v2``."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pandas as pd
import pytest
from sqlalchemy.orm import Session
from test_review import _review_some, seed_review_db
from typer.testing import CliRunner

from quality import review as rv
from quality.cli import app
from quality.db.session import make_engine, upgrade

runner = CliRunner()


@pytest.fixture(scope="module")
def db(tmp_path_factory: pytest.TempPathFactory) -> str:
    url = f"sqlite:///{tmp_path_factory.mktemp('review_cli') / 'r.db'}"
    engine = make_engine(url)
    upgrade(engine)
    with Session(engine) as s:
        ids = seed_review_db(s)
        _review_some(s, ids)
        rv.create_session(s, ids["v1"], "disagreement", 5, 0)  # session 1: images 1, 4, 6
        s.commit()
    engine.dispose()
    return url


def test_csv_to_stdout(db: str) -> None:
    res = runner.invoke(app, ["review-export", "--db", db])
    assert res.exit_code == 0, res.output
    df = pd.read_csv(io.StringIO(res.stdout))
    assert list(df.columns) == rv.EXPORT_COLUMNS
    assert len(df) == 7
    assert sorted(df["verdict"].value_counts().items()) == [
        ("agree", 3), ("disagree", 3), ("unsure", 1),
    ]  # fmt: skip


def test_json_document_with_filters(db: str) -> None:
    res = runner.invoke(app, ["review-export", "--model-version", "m:v1", "--json", "--db", db])
    assert res.exit_code == 0, res.output
    payload = json.loads(res.stdout)
    assert payload["n_reviews"] == 6 and len(payload["reviews"]) == 6
    (v1,) = payload["agreement"]
    assert (v1["version"], v1["n_agree"], v1["n_disagree"]) == ("v1", 2, 3)
    assert v1["agreement"] == pytest.approx(0.4)
    res = runner.invoke(app, ["review-export", "--session", "1", "--json", "--db", db])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["n_reviews"] == 2  # image 1's two verdicts


def test_json_format_to_file(db: str, tmp_path: Path) -> None:
    out = tmp_path / "reviews.json"
    res = runner.invoke(
        app, ["review-export", "--model-version", "v2", "--format", "json", "--out", str(out),
              "--db", db],
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    assert res.stdout == ""
    records = json.loads(out.read_text())
    assert [(r["version"], r["verdict"], r["reviewer"]) for r in records] == [
        ("v2", "agree", "dr-b")
    ]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--format", "xml"], "--format must be one of csv, json"),
        (["--model-version", "v1"], "ambiguous"),
        (["--model-version", "m:v7"], "known versions: m:v1"),
        (["--session", "99"], "no review session with id 99"),
    ],
)
def test_bad_input_exits_2(db: str, args: list[str], message: str) -> None:
    res = runner.invoke(app, ["review-export", *args, "--db", db])
    assert res.exit_code == 2
    assert message in " ".join(res.stderr.split())
    assert res.stdout == ""
