"""Constraint suggestion (:func:`quality.checks.suggest_rules`): the suggested rules load,
pass on the version they were derived from, and fail once a row breaks them."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import copy_demo_db
from sqlalchemy import select
from sqlalchemy.orm import Session
from test_checks import add_check_rows

from quality.checks import run_checks, suggest_rules
from quality.db.schema import DatasetItem, DatasetVersion, Image, Series, Source, Study
from quality.db.session import make_engine
from quality.rules import parse_rules


def _rules(session: Session, dataset: str, **kwargs: object) -> tuple[str, list]:
    text = suggest_rules(session, dataset, **kwargs)
    report = run_checks(
        session, dataset, rules=parse_rules(text, "suggested.yaml"), checks=[], save=False
    )
    return text, [o for o in report.outcomes if o.category == "rule"]


def test_suggested_rules_hold_on_their_version(session: Session, tmp_path: Path) -> None:
    add_check_rows(session, tmp_path)
    text, outcomes = _rules(session, "chest")
    assert text.startswith("# Rules suggested from dataset 'chest', version 'v1'")
    assert outcomes and all(o.passed for o in outcomes), [
        o.message for o in outcomes if not o.passed
    ]
    names = {o.name for o in outcomes}
    # Complete columns, a partly missing one, a category list, ranges, shares, readers.
    assert "rule.source not null" in names
    assert "rule.modality missing at most 0.17" in names  # 1 of 6 rounded up
    assert "rule.body_part in [CHEST]" in names
    assert "rule.kvp between 90 and 130" in names
    assert "rule.share of photometric = MONOCHROME1 at_most 0.34 per source" in names
    assert "rule.annotators per image in finding at_least 1" in names
    # pixel_sha256 is shared by I1 and I2: no unique rule; each rule has its comment.
    assert "unique" not in text
    assert "  # kvp: observed 90 to 130" in text


def test_suggested_rules_catch_a_breaking_row(session: Session, tmp_path: Path) -> None:
    ids = add_check_rows(session, tmp_path)
    text = suggest_rules(session, "chest")
    src = session.scalar(select(Source.id).where(Source.name == "Alpha"))
    study = Study(study_uid="9.9", patient_key="P9", modality="MR", body_part="KNEE", source_id=src)
    session.add(study)
    session.flush()
    series = Series(series_uid="9.9.1", study_id=study.id, modality="MR", kvp=500.0)
    session.add(series)
    session.flush()
    img = Image(sop_uid="9.9.1.1", series_id=series.id, uri="/x/9.dcm", rows=100, cols=100)
    session.add(img)
    session.flush()
    session.add(DatasetItem(version_id=ids["version"], image_id=img.id, split="train"))
    session.commit()
    report = run_checks(session, "chest", rules=parse_rules(text), checks=[], save=False)
    failed = {o.name for o in report.outcomes if o.status == "failed"}
    assert {
        "rule.kvp between 90 and 130",
        "rule.body_part in [CHEST]",
        "rule.modality in [CR, DX]",
    } <= failed
    assert not report.passed


def test_widen_and_validation(session: Session, tmp_path: Path) -> None:
    add_check_rows(session, tmp_path)
    text = suggest_rules(session, "chest", widen=0.5)
    rules = {r.name: r for r in parse_rules(text).rules}
    kvp = next(r for r in rules.values() if r.column == "kvp" and r.kind == "between")
    assert dict(kvp.params) == {"low": 70, "high": 150}  # 90..130 ± 0.5 · 40
    with pytest.raises(ValueError, match="widen"):
        suggest_rules(session, "chest", widen=-1)
    few = suggest_rules(session, "chest", max_categories=1)
    assert "photometric in" not in few.replace('"', "")


def test_round_trip_on_the_tiny_demo(tiny_demo: Path, tmp_path: Path) -> None:
    engine = make_engine(copy_demo_db(tiny_demo, tmp_path))
    with Session(engine) as session:
        text, outcomes = _rules(session, "chest-xray-demo")
        version = session.scalar(select(DatasetVersion.version))
    engine.dispose()
    assert f"version '{version}'" in text
    assert len(outcomes) >= 15
    assert all(o.passed for o in outcomes), [o.message for o in outcomes if not o.passed]
