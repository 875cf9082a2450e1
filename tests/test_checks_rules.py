"""Analysts' rules evaluated in SQL by :func:`quality.checks.run_checks`, on SQLite and
PostgreSQL, over the hand-made DB of ``test_checks`` (its docstring lists the rows).

Per image of version v1: kVp I1 100, I2 110, I3 120 (CR), I4 130, I5 90, I6 100; sources
Alpha (I1, I2, I6) and Beta (I3 MONOCHROME1, I4, I5); annotators in ``finding``: two on I1
and I2, one on I3-I6.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import DB_KINDS
from sqlalchemy.orm import Session
from test_checks import add_check_rows, failing_keys, shared_db

from quality.checks import CheckOutcome, run_checks
from quality.errors import RulesError
from quality.rules import parse_rules


@pytest.fixture(scope="module", params=DB_KINDS)
def shared(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Session, dict[str, int], Path]]:
    yield from shared_db(request, tmp_path_factory, add_check_rows)


@pytest.fixture
def ro(shared: tuple[Session, dict[str, int], Path]) -> Iterator[Session]:
    yield shared[0]
    shared[0].rollback()


def evaluate(session: Session, text: str) -> list[CheckOutcome]:
    """Only the rules: no built-in check (``checks=[]``), no distribution."""
    report = run_checks(session, "chest", rules=parse_rules(text, "t.yaml"), checks=[], save=False)
    return [o for o in report.outcomes if o.category == "rule"]


def one(session: Session, body: str) -> CheckOutcome:
    (o,) = evaluate(session, "rules:\n  - " + body.replace("\n", "\n    ") + "\n")
    return o


def test_between_and_where(ro: Session) -> None:
    o = one(ro, "column: kvp\nbetween: [95, 125]")
    assert (o.passed, o.n_checked, o.n_failed) == (False, 6, 2)
    assert failing_keys(o) == {"I4", "I5"}
    assert set(o.failing["value"]) == {130.0, 90.0} and set(o.failing["field"]) == {"kvp"}
    assert (o.name, o.line, o.category, o.severity) == (
        "rule.kvp between 95 and 125",
        2,
        "rule",
        "error",
    )
    cr = one(ro, "column: kvp\nbetween: [40, 150]\nwhere: {modality: CR}")
    assert (cr.passed, cr.n_checked) == (True, 1)


def test_bounds_with_a_list_filter(ro: Session) -> None:
    o = one(ro, "column: kvp\nat_most: 105\nwhere: {modality: [DX]}")
    assert (o.n_checked, o.n_failed) == (4, 2) and failing_keys(o) == {"I2", "I4"}
    o = one(ro, "column: kvp\ngreater_than: 90\nless_than: 130")
    assert failing_keys(o) == {"I4", "I5"}  # strict bounds


def test_date_bound(ro: Session) -> None:
    o = one(ro, "column: study_date\nless_than: 2024-01-04")
    assert failing_keys(o) == {"I4", "I5"}


def test_in_judges_present_values_only(ro: Session) -> None:
    o = one(ro, "column: body_part\nin: [CHEST]")
    assert (o.passed, o.n_checked) == (True, 5)
    assert o.details["n_missing_not_judged"] == 1
    o = one(ro, "column: split\nin: [train, val]")
    assert failing_keys(o) == {"I4"} and o.failing["value"].tolist() == ["test"]
    o = one(ro, "column: header.PatientSex\nin: [M, F]")
    assert failing_keys(o) == {"I5"}


def test_not_null_and_missing_share(ro: Session) -> None:
    o = one(ro, "column: modality\nnot_null: true")
    assert (o.n_checked, o.n_failed) == (6, 1) and failing_keys(o) == {"I5"}
    strict = one(ro, "column: spacing_row\nmax_missing_share: 0.2")
    loose = one(ro, "column: spacing_row\nmax_missing_share: 0.5")
    assert not strict.passed and loose.passed
    assert strict.n_failed == loose.n_failed == 2
    assert strict.details["missing_share"] == pytest.approx(2 / 6)
    assert failing_keys(strict) == {"I4", "I6"}


def test_unique(ro: Session) -> None:
    o = one(ro, "column: pixel_sha256\nunique: true")
    assert (o.n_checked, o.n_failed) == (6, 2) and failing_keys(o) == {"I1", "I2"}
    assert one(ro, "column: sop_uid\nunique: true").passed


def test_matches_is_a_whole_match(ro: Session) -> None:
    o = one(ro, "column: header.PatientAge\nmatches: '\\d{3}Y'")
    assert (o.n_checked, o.n_failed) == (6, 1) and failing_keys(o) == {"I5"}
    o = one(ro, "column: photometric\nmatches: MONOCHROME")  # not a prefix match
    assert o.n_failed == 5  # every present photometric (I6 has none)


def test_share_per_group(ro: Session) -> None:
    o = one(ro, "share: {column: photometric, value: MONOCHROME1, at_most: 0.3, per: source}")
    assert (o.passed, o.n_checked, o.n_failed) == (False, 2, 1)
    bad = o.failing.iloc[0]
    assert (bad["group"], bad["n"], bad["n_match"]) == ("Beta", 3, 1)
    assert bad["value"] == pytest.approx(1 / 3)
    whole = one(ro, "share: {column: photometric, value: MONOCHROME1, at_most: 0.2}")
    assert whole.passed and whole.details["shares"][0]["value"] == pytest.approx(1 / 6)
    low = one(ro, "share: {column: split, value: test, at_least: 0.5}")
    assert not low.passed


def test_annotations_per_image(ro: Session) -> None:
    o = one(ro, "annotations_per_image: {task: finding, at_least: 2}")
    assert (o.n_checked, o.n_failed) == (6, 4)
    assert failing_keys(o) == {"I3", "I4", "I5", "I6"}
    assert set(o.failing["value"]) == {1}
    o = one(ro, "annotations_per_image: {task: finding, at_most: 1}")
    assert failing_keys(o) == {"I1", "I2"}
    o = one(ro, "annotations_per_image: {task: notes, at_least: 1}\nwhere: {split: train}")
    assert (o.n_checked, o.n_failed) == (4, 3)  # only I1 has a note


def test_unknown_task_names_line_and_field(ro: Session) -> None:
    text = "rules:\n  - name: readers\n    annotations_per_image:\n      task: findings\n      at_least: 2\n"
    with pytest.raises(RulesError) as info:
        evaluate(ro, text)
    err = info.value
    assert (err.path, err.line, err.field) == ("t.yaml", 4, "annotations_per_image.task")
    assert "tasks of dataset 'chest': finding, box, notes" in str(err)


def test_rule_severity_decides_the_run(ro: Session) -> None:
    text = "rules:\n  - column: kvp\n    at_most: 105\n    severity: {}\n"
    warn = run_checks(ro, "chest", rules=parse_rules(text.format("warning")), checks=[], save=False)
    err = run_checks(ro, "chest", rules=parse_rules(text.format("error")), checks=[], save=False)
    assert warn.passed and not err.passed
    assert warn.rules_sha256 != err.rules_sha256


def test_rules_file_path_and_history(session: Session, tmp_path: Path) -> None:
    add_check_rows(session, tmp_path)
    path = tmp_path / "r.yaml"
    path.write_text("rules:\n  - column: modality\n    not_null: true\n", encoding="utf-8")
    report = run_checks(session, "chest", rules=path, checks=[])
    assert report.rules_path == str(path) and report.rules_sha256 is not None
    from quality.checks import check_run_results

    results = check_run_results(session, report.run_id).set_index("check_name")
    stored = results.loc["rule.modality not null"]
    assert (stored["line"], stored["status"], stored["n_failed"]) == (2, "failed", 1)
    assert stored["failing"][0]["sop_uid"].endswith(".5")
