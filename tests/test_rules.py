"""Parsing of analysts' rules files (:mod:`quality.rules`): what is read, and exactly which
line and field a bad file is blamed on."""

from __future__ import annotations

import datetime as dt
import hashlib
from pathlib import Path

import pytest

from quality.checks import RULES_DIR, shipped_rules
from quality.db.schema import Series
from quality.errors import RulesError
from quality.rules import COLUMNS, column_expression, column_spec, load_rules, parse_rules

EXAMPLE = """\
rules:
  - name: kVp in range for CR
    column: kvp
    between: [40, 150]
    where: {modality: CR}
  - name: at least two readers per image
    annotations_per_image: {task: finding, at_least: 2}
  - name: few MONOCHROME1 images per source
    share: {column: photometric, value: MONOCHROME1, at_most: 0.05, per: source}
  - column: body_part
    in: [CHEST]
"""


def test_the_example_of_the_issue() -> None:
    rs = parse_rules(EXAMPLE, "example.yaml")
    assert [r.kind for r in rs.rules] == ["between", "annotations_per_image", "share", "in"]
    kvp, readers, share, body = rs.rules
    assert (kvp.column, dict(kvp.params), kvp.where) == (
        "kvp",
        {"low": 40, "high": 150},
        (("modality", ("CR",)),),
    )
    assert [r.line for r in rs.rules] == [2, 6, 8, 10]
    assert dict(readers.params) == {"task": "finding", "at_least": 2, "at_most": None}
    assert readers.lines["task"] == 7
    assert dict(share.params) == {
        "column": "photometric",
        "value": "MONOCHROME1",
        "per": "source",
        "at_most": 0.05,
        "at_least": None,
    }
    assert body.name == "body_part in [CHEST]" and body.severity == "error"
    assert rs.sha256 == hashlib.sha256(EXAMPLE.encode()).hexdigest()
    assert rs.path == "example.yaml" and len(rs) == 4


def test_text_values_are_read_as_written() -> None:
    """YAML 1.1 would read NO as False and 2024-01-01 as a date; a text column keeps text."""
    rs = parse_rules("rules:\n  - column: patient_sex\n    in: [NO, yes, 2024-01-01, 01]\n")
    assert rs.rules[0].params["values"] == ("NO", "yes", "2024-01-01", "01")


def test_dates_numbers_and_bounds() -> None:
    rs = parse_rules(
        "rules:\n"
        "  - column: study_date\n    at_least: 2024-01-01\n    less_than: '2025-01-01'\n"
        "  - column: rows\n    greater_than: 64\n    severity: warning\n"
    )
    dates, rows = rs.rules
    assert dict(dates.params) == {"at_least": dt.date(2024, 1, 1), "less_than": dt.date(2025, 1, 1)}
    assert dates.kind == rows.kind == "compare"
    assert rows.severity == "warning" and rows.name == "rows > 64"


def test_other_checks_and_header_columns() -> None:
    rs = parse_rules(
        "version: 1\ndataset: chest\n"
        "rules:\n"
        "  - {column: sop_uid, unique: true}\n"
        "  - {column: header.PatientAge, matches: '\\d{3}Y'}\n"
        "  - {column: spacing_row, max_missing_share: 0.1}\n"
        "  - {column: modality, not_null: true, description: every image}\n"
        "  - share: {column: split, value: test, at_least: 0.1}\n"
    )
    kinds = [r.kind for r in rs.rules]
    assert kinds == ["unique", "matches", "max_missing_share", "not_null", "share"]
    assert rs.dataset == "chest"
    assert rs.rules[1].params["pattern"] == "\\d{3}Y"
    assert rs.rules[3].description == "every image"
    assert rs.rules[4].params["per"] is None


def test_column_whitelist() -> None:
    assert column_spec("kvp") == COLUMNS["kvp"] and COLUMNS["kvp"].kind == "num"
    assert column_spec("header.BodyPartExamined").kind == "text"
    assert column_spec("header.not a keyword") is None and column_spec("nope") is None
    assert column_expression("kvp") is Series.kvp
    with pytest.raises(KeyError):
        column_expression("nope")


BAD: list[tuple[str, str, int | None, str | None, str]] = [
    # (id, text, line, field, part of the message)
    ("yaml-syntax", "rules:\n  - column: kvp\n    between: [40, 150\n  - x: 1\n", 4, None, "YAML"),
    ("tab-indent", "rules:\n\t- column: kvp\n", 2, None, "YAML"),
    ("two-documents", "rules: []\n---\nrules: []\n", 2, None, "single document"),
    ("empty-file", "", 1, "rules", "empty"),
    ("not-a-mapping", "- column: kvp\n", 1, None, "mapping"),
    ("no-rules-key", "version: 1\n", 1, "rules", "needs a `rules:` list"),
    ("unknown-top-key", "rules: []\nrulez: []\n", 2, "rulez", "unknown top-level key"),
    ("bad-version", "version: 2\nrules: []\n", 1, "version", "version 1"),
    ("rules-not-list", "rules:\n  column: kvp\n", 2, "rules", "must be a list"),
    ("rule-not-mapping", "rules:\n  - kvp between 40 and 150\n", 2, None, "mapping"),
    ("unknown-key", "rules:\n  - column: kvp\n    betwen: [40, 150]\n", 3, "betwen", "unknown key"),
    ("no-check", "rules:\n  - name: nothing\n    column: kvp\n", 2, None, "has no check"),
    (
        "two-checks",
        "rules:\n  - column: kvp\n    not_null: true\n    between: [1, 2]\n",
        4,
        "between",
        "one check",
    ),
    (
        "two-lower-bounds",
        "rules:\n  - column: kvp\n    at_least: 1\n    greater_than: 2\n",
        4,
        "greater_than",
        "one lower",
    ),
    ("no-column", "rules:\n  - between: [1, 2]\n", 2, "column", "needs a column"),
    (
        "unknown-column",
        "rules:\n  - column: kvpp\n    not_null: true\n",
        2,
        "column",
        "valid columns: sop_uid",
    ),
    (
        "between-one-value",
        "rules:\n  - column: kvp\n    between: [40]\n",
        3,
        "between",
        "two values",
    ),
    ("between-not-list", "rules:\n  - column: kvp\n    between: 40\n", 3, "between", "two values"),
    (
        "between-text",
        "rules:\n  - column: kvp\n    between: [forty, 150]\n",
        3,
        "between",
        "number",
    ),
    (
        "between-reversed",
        "rules:\n  - column: kvp\n    between: [150, 40]\n",
        3,
        "between",
        "low is above high",
    ),
    (
        "between-on-text",
        "rules:\n  - column: modality\n    between: [1, 2]\n",
        3,
        "between",
        "number or date",
    ),
    ("between-bool", "rules:\n  - column: kvp\n    between: [true, 2]\n", 3, "between", "number"),
    (
        "between-multiline",
        "rules:\n  - column: kvp\n    between:\n      - 40\n      - lots\n",
        5,
        "between",
        "number",
    ),
    ("in-not-list", "rules:\n  - column: modality\n    in: CR\n", 3, "in", "must be a list"),
    ("in-empty", "rules:\n  - column: modality\n    in: []\n", 3, "in", "at least one"),
    ("in-null", "rules:\n  - column: modality\n    in: [CR, null]\n", 3, "in", "not_null"),
    (
        "not-null-false",
        "rules:\n  - column: kvp\n    not_null: false\n",
        3,
        "not_null",
        "not_null: true",
    ),
    (
        "unique-text",
        "rules:\n  - column: kvp\n    unique: yes please\n",
        3,
        "unique",
        "unique: true",
    ),
    ("bound-text", "rules:\n  - column: rows\n    at_least: many\n", 3, "at_least", "number"),
    (
        "bounds-crossed",
        "rules:\n  - column: rows\n    at_least: 10\n    at_most: 5\n",
        4,
        "at_most",
        "below the lower",
    ),
    (
        "bad-date",
        "rules:\n  - column: study_date\n    at_least: yesterday\n",
        3,
        "at_least",
        "YYYY-MM-DD",
    ),
    (
        "bad-regex",
        "rules:\n  - column: modality\n    matches: '[A-'\n",
        3,
        "matches",
        "regular expression",
    ),
    (
        "regex-on-number",
        "rules:\n  - column: kvp\n    matches: '1.*'\n",
        3,
        "matches",
        "text column",
    ),
    (
        "missing-share-big",
        "rules:\n  - column: kvp\n    max_missing_share: 5\n",
        3,
        "max_missing_share",
        "between 0 and 1",
    ),
    (
        "bad-severity",
        "rules:\n  - column: kvp\n    not_null: true\n    severity: fatal\n",
        4,
        "severity",
        "error or warning",
    ),
    (
        "where-unknown",
        "rules:\n  - column: kvp\n    not_null: true\n    where: {modaliti: CR}\n",
        4,
        "where.modaliti",
        "unknown column",
    ),
    (
        "where-not-mapping",
        "rules:\n  - column: kvp\n    not_null: true\n    where: CR\n",
        4,
        "where",
        "mapping",
    ),
    (
        "share-unknown-key",
        "rules:\n  - share:\n      column: photometric\n      value: M\n      at_mots: 0.1\n",
        5,
        "share.at_mots",
        "unknown key",
    ),
    (
        "share-no-value",
        "rules:\n  - share: {column: photometric, at_most: 0.1}\n",
        2,
        "share.value",
        "needs the value",
    ),
    (
        "share-no-bound",
        "rules:\n  - share: {column: photometric, value: M}\n",
        2,
        "share.at_most",
        "at_most or at_least",
    ),
    (
        "share-bad-per",
        "rules:\n  - share:\n      column: photometric\n      value: M\n      at_most: 0.1\n      per: site\n",
        6,
        "share.per",
        "unknown column",
    ),
    (
        "share-no-column",
        "rules:\n  - share: {value: M, at_most: 0.1}\n",
        2,
        "share.column",
        "needs a column",
    ),
    (
        "share-two-columns",
        "rules:\n  - column: modality\n    share: {column: photometric, value: M, at_most: 0.1}\n",
        3,
        "share.column",
        "once",
    ),
    (
        "app-no-task",
        "rules:\n  - annotations_per_image: {at_least: 2}\n",
        2,
        "annotations_per_image.task",
        "needs a task",
    ),
    (
        "app-no-bound",
        "rules:\n  - annotations_per_image: {task: finding}\n",
        2,
        "annotations_per_image.at_least",
        "at_least or at_most",
    ),
    (
        "app-fraction",
        "rules:\n  - annotations_per_image:\n      task: finding\n      at_least: 1.5\n",
        4,
        "annotations_per_image.at_least",
        "whole number",
    ),
    (
        "app-column",
        "rules:\n  - column: kvp\n    annotations_per_image: {task: f, at_least: 1}\n",
        2,
        "column",
        "takes no column",
    ),
    (
        "duplicate-key",
        "rules:\n  - column: kvp\n    not_null: true\n    column: rows\n",
        4,
        "column",
        "given twice",
    ),
    (
        "duplicate-name",
        "rules:\n  - {name: a, column: kvp, not_null: true}\n  - {name: a, column: rows, not_null: true}\n",
        3,
        "name",
        "line 2",
    ),
    (
        "empty-name",
        "rules:\n  - name: ''\n    column: kvp\n    not_null: true\n",
        2,
        "name",
        "must not be empty",
    ),
    ("list-key", "rules:\n  - [a, b]: 1\n", 2, None, "plain words"),
]


@pytest.mark.parametrize(
    ("text", "line", "field", "part"), [b[1:] for b in BAD], ids=[b[0] for b in BAD]
)
def test_bad_rules_name_file_line_and_field(
    text: str, line: int | None, field: str | None, part: str
) -> None:
    with pytest.raises(RulesError) as info:
        parse_rules(text, "analyst.yaml")
    err = info.value
    assert (err.path, err.line, err.field) == ("analyst.yaml", line, field), str(err)
    assert part in str(err)
    assert str(err).startswith(f"analyst.yaml, line {line}")


def test_load_rules_reads_files(tmp_path: Path) -> None:
    path = tmp_path / "r.yaml"
    path.write_text(EXAMPLE, encoding="utf-8")
    assert len(load_rules(path)) == 4
    with pytest.raises(RulesError, match="file not found") as info:
        load_rules(tmp_path / "missing.yaml")
    assert info.value.line is None
    path.write_bytes(b"\xff\xfe rules")
    with pytest.raises(RulesError, match="cannot read"):
        load_rules(path)


def test_shipped_demo_rules_parse() -> None:
    path = shipped_rules("chest-xray-demo")
    assert path == RULES_DIR / "chest-xray-demo.yaml"
    rs = load_rules(path)
    assert rs.dataset == "chest-xray-demo" and len(rs) >= 10
    body = next(r for r in rs.rules if r.column == "body_part")
    assert body.params["values"] == ("CHEST",)
    assert shipped_rules("no-such-dataset") is None
