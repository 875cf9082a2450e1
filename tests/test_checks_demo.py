"""The data tests on the small demo (seed 0): every seeded defect that a data test is meant
to catch is reported, matched by SOP UID against ``demo_truth.json``.

The demo DB is opened in place and nothing is written (``save=False``). The store is the
demo's ``dicom`` folder, so the file and near-duplicate checks run; the shipped rules file
catches the KNEE body part.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.orm import Session

from quality.checks import CheckReport, run_checks, shipped_rules
from quality.db.session import make_engine
from quality.store import open_store


@pytest.fixture(scope="module")
def demo(small_demo_dir: Path) -> tuple[CheckReport, dict[str, Any]]:
    truth = json.loads((small_demo_dir / "demo_truth.json").read_text())
    engine = make_engine(f"sqlite:///{small_demo_dir / 'demo.db'}")
    with Session(engine) as session:
        report = run_checks(
            session,
            truth["dataset"]["name"],
            rules=shipped_rules(truth["dataset"]["name"]),
            store=open_store(str(small_demo_dir / truth["dicom_root"])),
            save=False,
            max_failing=1000,
            workers=2,
        )
    engine.dispose()
    return report, truth


def _flagged(report: CheckReport, name: str) -> set[str]:
    outcome = next(o for o in report.outcomes if o.name == name)
    assert outcome.ran, outcome.message
    return set(outcome.failing["sop_uid"].dropna())


def _uids(truth: dict[str, Any], kind: str) -> set[str]:
    return {r["sop_uid"] for r in truth["defects"][kind]}


def test_semantic_defects_are_all_reported(demo: tuple[CheckReport, dict[str, Any]]) -> None:
    report, truth = demo
    wrong = {r["tag"]: r["sop_uid"] for r in truth["defects"]["wrong_tags"]}
    assert wrong["PatientAge"] in _flagged(report, "semantic.impossible_age")
    assert wrong["PixelSpacing"] in _flagged(report, "semantic.zero_spacing")
    assert wrong["BodyPartExamined"] in _flagged(report, "rule.chest images only")
    assert _uids(truth, "box_outside_image") <= _flagged(report, "semantic.box_outside_image")
    assert _uids(truth, "label_not_in_schema") <= _flagged(report, "semantic.label_not_in_schema")


def test_integrity_defects_are_all_reported(demo: tuple[CheckReport, dict[str, Any]]) -> None:
    report, truth = demo
    (leak,) = truth["defects"]["patient_leak"]
    flagged = next(o for o in report.outcomes if o.name == "integrity.patient_in_two_splits")
    assert set(leak["sop_uids"]) <= set(flagged.failing["sop_uid"])
    assert set(flagged.failing["patient_key"]) == {leak["patient_key"]}
    assert _uids(truth, "missing_file") == _flagged(report, "integrity.missing_files")


def test_syntax_missing_and_duplicate_defects(demo: tuple[CheckReport, dict[str, Any]]) -> None:
    report, truth = demo
    ingest = next(o for o in report.outcomes if o.name == "syntax.ingest_errors")
    truncated = {r["path"] for r in truth["defects"]["truncated"]}
    assert {u.split("/dicom/", 1)[1] for u in ingest.failing["uri"]} == truncated
    missing = next(o for o in report.outcomes if o.name == "missing.required_fields")
    assert set(missing.failing["sop_uid"]) == _uids(truth, "missing_tags")
    by_tags = {frozenset(r["tags"]): r["sop_uid"] for r in truth["defects"]["missing_tags"]}
    fields = missing.failing.groupby("sop_uid")["field"].apply(set)
    assert fields[by_tags[frozenset({"Modality", "BodyPartExamined"})]] == {"modality", "body_part"}
    assert fields[by_tags[frozenset({"PixelSpacing", "ImagerPixelSpacing"})]] == {"pixel_spacing"}
    for kind, check in (
        ("exact_duplicate", "duplicates.exact"),
        ("near_duplicate", "duplicates.near"),
    ):
        flagged = _flagged(report, check)
        for rec in truth["defects"][kind]:
            assert {rec["sop_uid"], rec["duplicate_of"]} <= flagged, (kind, rec["sop_uid"])


def test_no_false_alarms_from_precise_checks(demo: tuple[CheckReport, dict[str, Any]]) -> None:
    """Checks that judge single values flag exactly the seeded images, nothing more."""
    report, truth = demo
    wrong = {r["tag"]: r["sop_uid"] for r in truth["defects"]["wrong_tags"]}
    assert _flagged(report, "semantic.impossible_age") == {wrong["PatientAge"]}
    assert _flagged(report, "semantic.zero_spacing") == {wrong["PixelSpacing"]}
    assert _flagged(report, "semantic.box_outside_image") == _uids(truth, "box_outside_image")
    assert _flagged(report, "semantic.label_not_in_schema") == _uids(truth, "label_not_in_schema")
    assert _flagged(report, "duplicates.exact") == _uids(truth, "exact_duplicate") | {
        r["duplicate_of"] for r in truth["defects"]["exact_duplicate"]
    }
    by_name = {o.name: o for o in report.outcomes}
    assert by_name["syntax.bbox_format"].passed and by_name["integrity.orphans"].passed
    assert by_name["rule.at least two readers per image"].passed
    assert not report.passed
