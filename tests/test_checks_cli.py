"""``quality check``: exit codes, JSON output, bad rules files, suggestion, history writes."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pytest
from conftest import copy_demo_db
from sqlalchemy import func, select
from sqlalchemy.orm import Session
from typer.testing import CliRunner

from quality.checks import shipped_rules
from quality.cli import app
from quality.db.schema import (
    CheckRun,
    Dataset,
    DatasetItem,
    DatasetVersion,
    Image,
    Series,
    Source,
    Study,
)
from quality.db.session import make_engine, upgrade

runner = CliRunner()


@pytest.fixture
def demo_url(tiny_demo: Path, tmp_path: Path) -> str:
    return copy_demo_db(tiny_demo, tmp_path)


def _runs(url: str) -> int:
    engine = make_engine(url)
    with Session(engine) as s:
        n = int(s.scalar(select(func.count(CheckRun.id))) or 0)
    engine.dispose()
    return n


def test_json_run_on_the_demo_exits_1(tiny_demo: Path, demo_url: str) -> None:
    res = runner.invoke(
        app,
        [
            "check", "chest-xray-demo", "--db", demo_url, "--json",
            "--rules", str(shipped_rules("chest-xray-demo")),
            "--store", str(tiny_demo / "dicom"),
        ],
    )  # fmt: skip
    assert res.exit_code == 1, res.output
    payload = json.loads(res.stdout)
    assert payload["passed"] is False and payload["run_id"] == 1
    by = {c["name"]: c for c in payload["checks"]}
    assert by["semantic.box_outside_image"]["status"] == "failed"
    assert by["integrity.missing_files"]["n_failed"] == 1
    assert by["rule.chest images only"]["line"] == 12
    assert by["semantic.box_outside_image"]["failing"][0]["sop_uid"]
    assert _runs(demo_url) == 1


def test_human_table_and_no_save(demo_url: str, tmp_path: Path) -> None:
    res = runner.invoke(
        app, ["check", "chest-xray-demo", "--db", demo_url, "--no-save", "--store", str(tmp_path)]
    )
    assert res.exit_code == 1, res.output
    assert "FAILED" in res.stdout and "(not saved)" in res.stdout
    assert "semantic.zero_spacing" in res.stdout
    assert _runs(demo_url) == 0


def test_bad_rules_file_exits_2_with_line_and_field(demo_url: str, tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("rules:\n  - column: kvp\n    between: [150]\n", encoding="utf-8")
    res = runner.invoke(app, ["check", "chest-xray-demo", "--db", demo_url, "--rules", str(bad)])
    assert res.exit_code == 2
    assert "line 3" in res.stderr and "'between'" in res.stderr and "bad.yaml" in res.stderr
    task = tmp_path / "task.yaml"
    task.write_text(
        "rules:\n  - annotations_per_image: {task: nope, at_least: 2}\n", encoding="utf-8"
    )
    res = runner.invoke(app, ["check", "chest-xray-demo", "--db", demo_url, "--rules", str(task)])
    assert res.exit_code == 2 and "line 2" in res.stderr and "unknown task 'nope'" in res.stderr
    assert _runs(demo_url) == 0


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["check", "nope"], "unknown dataset 'nope'"),
        (["check", "chest-xray-demo", "--version", "v9"], "no version 'v9'"),
        (["check", "chest-xray-demo", "--reference", "x..y"], "YYYY-MM-DD"),
        (["check", "chest-xray-demo", "--store", "/no/such/folder"], "does not exist"),
        (["check", "chest-xray-demo", "--rules", "/no/such.yaml"], "file not found"),
    ],
)
def test_bad_input_exits_2(demo_url: str, args: list[str], message: str) -> None:
    res = runner.invoke(app, [*args, "--db", demo_url])
    assert res.exit_code == 2, res.output
    assert message in res.stderr


def test_suggest_rules_writes_a_file_that_passes(demo_url: str, tmp_path: Path) -> None:
    out = tmp_path / "suggested.yaml"
    res = runner.invoke(
        app,
        ["check", "chest-xray-demo", "--db", demo_url, "--suggest-rules", str(out), "--json"],
    )
    assert res.exit_code == 1  # the built-in checks still fail on the demo
    assert out.read_text(encoding="utf-8").startswith("# Rules suggested")
    rules = [c for c in json.loads(res.stdout)["checks"] if c["category"] == "rule"]
    assert rules == []  # suggesting does not apply the rules
    again = runner.invoke(
        app, ["check", "chest-xray-demo", "--db", demo_url, "--rules", str(out), "--json"]
    )
    applied = [c for c in json.loads(again.stdout)["checks"] if c["category"] == "rule"]
    assert applied and all(c["status"] == "passed" for c in applied)


def test_clean_dataset_exits_0(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'clean.db'}"
    engine = make_engine(url)
    upgrade(engine)
    with Session(engine) as s:
        src = Source(name="A")
        s.add(src)
        s.flush()
        study = Study(
            study_uid="1.1", patient_key="P", modality="DX", body_part="CHEST",
            study_date=dt.date(2024, 1, 1), source_id=src.id,
        )  # fmt: skip
        s.add(study)
        s.flush()
        series = Series(series_uid="1.2", study_id=study.id, kvp=110.0)
        s.add(series)
        s.flush()
        img = Image(
            sop_uid="1.3", series_id=series.id, uri=str(tmp_path / "a.dcm"), rows=8, cols=8,
            photometric="MONOCHROME2", pixel_sha256="a" * 64,
            header={"PixelSpacing": [0.5, 0.5], "PatientAge": "040Y"},
        )  # fmt: skip
        s.add(img)
        ds = Dataset(name="clean")
        s.add(ds)
        s.flush()
        v = DatasetVersion(dataset_id=ds.id, version="v1", content_hash="0" * 64)
        s.add(v)
        s.flush()
        s.add(DatasetItem(version_id=v.id, image_id=img.id, split="train"))
        s.commit()
    engine.dispose()
    (tmp_path / "a.dcm").write_bytes(b"not read by the file check")
    res = runner.invoke(app, ["check", "clean", "--db", url, "--store", str(tmp_path), "--json"])
    assert res.exit_code == 0, res.output
    payload = json.loads(res.stdout)
    assert payload["passed"] is True
    statuses = {c["name"]: c["status"] for c in payload["checks"]}
    assert statuses["integrity.missing_files"] == "passed"
    assert statuses["distribution"] == "not_run"
