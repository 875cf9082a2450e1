"""The dataset card (``quality.card``): counts, coverage, class balance, agreement, quality,
checks and status on the hand-built example of ``test_snapshot`` (SQLite and PostgreSQL);
Markdown front matter; the JSON status; the free-text fields; the demo; the CLI."""

from __future__ import annotations

import datetime as dt
import json
import re
from collections.abc import Iterator
from pathlib import Path

import krippendorff
import numpy as np
import pytest
import yaml
from conftest import DB_KINDS, copy_demo_db, service_missing
from sqlalchemy import select
from sqlalchemy.orm import Session
from test_snapshot import LEGACY_HASH, T0, Example, build_example
from typer.testing import CliRunner

from quality.card import (
    CARD_FIELDS,
    COUNT_KEYS,
    MAX_FIELD_CHARS,
    STATUSES,
    build_card,
    card_markdown,
    card_status,
    save_card_fields,
)
from quality.cli import app
from quality.db.schema import CheckResult, CheckRun, Dataset, ImageQuality
from quality.db.session import make_engine, upgrade
from quality.errors import CardFieldError, VersionNotFoundError
from quality.snapshot import TIE, snapshot

FRONT_MATTER = re.compile(r"\A---\n(.*?)\n---\n", re.S)
SECTIONS = [
    "## Motivation",
    "## Composition",
    "## Collection",
    "## Labeling",
    "## Quality",
    "## Uses",
    "## Personal and sensitive information",
    "## License and maintenance",
    "## Citation",
]


TRICKY = 'chest: "v2" # not a comment'
"""A dataset name full of YAML syntax, without a version (the front matter must survive)."""


@pytest.fixture
def example(session: Session) -> Example:
    return build_example(session)


@pytest.fixture(scope="module", params=DB_KINDS)
def ro(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Session]:
    """The example, plus quality scores and a dataset without version, built once per module
    and DB kind; the tests only read it."""
    cluster = None
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path_factory.mktemp('card') / 'card.db'}"
    else:
        cluster = request.getfixturevalue("pg_cluster")
        if cluster is None:
            service_missing("PostgreSQL (initdb/pg_ctl under /usr/lib/postgresql/*/bin)")
        url = cluster.new_database()
    engine = make_engine(url)
    upgrade(engine)
    with Session(engine, expire_on_commit=False) as s:
        ex = build_example(s)
        scores = [
            ("i1", "s0", 0.2, "clean", False, T0),
            ("i1", "s1", 0.9, "clean", False, T0 + dt.timedelta(days=1)),
            ("i2", "s1", 0.5, "blur", True, T0 + dt.timedelta(days=1)),
            ("n1", "s1", 0.1, "noise", False, T0 + dt.timedelta(days=1)),  # not in v1
        ]
        for name, scorer, q, defect, ood, at in scores:
            s.add(
                ImageQuality(
                    image_id=ex.images[name], scorer_version=scorer, quality_score=q,
                    defect_type=defect, is_ood=ood, scored_at=at,
                )
            )  # fmt: skip
        s.add(Dataset(name=TRICKY))
        s.commit()
        yield s
    engine.dispose()
    if cluster is not None:
        cluster.drop_database(url)


def front_matter(markdown: str) -> dict:
    match = FRONT_MATTER.match(markdown)
    assert match, markdown[:200]
    return yaml.safe_load(match.group(1))


# --------------------------------------------------------------------------- composition


def test_counts_sources_devices_and_splits(ro):
    card = build_card(ro, "ds", n_resamples=20)
    assert card.version.version == "v1"
    assert card.counts == {
        "images": 4, "studies": 4, "series": 4, "patients": 3, "sources": 2,
        "annotations": 12, "annotators": 4, "doctors": 3, "experts": 1,
    }  # fmt: skip
    assert set(card.counts) == set(COUNT_KEYS)
    assert dict(zip(card.modalities["modality"], card.modalities["n_images"], strict=True)) == {
        "DX": 3,
        "CR": 1,
    }
    assert card.sources.to_dict("records") == [
        {"source": "A", "manufacturer": "GE", "n_images": 3, "n_studies": 3, "n_patients": 2},
        {"source": "B", "manufacturer": "Siemens", "n_images": 1, "n_studies": 1, "n_patients": 1},
    ]
    assert card.devices.values.tolist() == [["GE", "model-A", 3], ["Siemens", "model-B", 1]]
    assert (card.date_min, card.date_max) == (dt.date(2024, 1, 1), dt.date(2024, 1, 4))
    assert card.splits.values.tolist() == [["train", 2, 2, 1], ["val", 1, 1, 1], ["test", 1, 1, 1]]
    assert card.n_cross_split_patients == 0
    balance = {(r.split, r.label): r.n_images for r in card.class_balance.itertuples()}
    assert balance == {("train", "normal"): 1, ("train", "nodule"): 1, ("val", TIE): 1,
                       ("test", "nodule"): 1}  # fmt: skip
    # v1 predates label freezing: today's labels, and the card says so.
    assert card.labels_basis == "current"
    assert any("before labels were frozen" in w for w in card.warnings)
    assert card.changes is None


def test_cross_annotation_coverage(ro):
    card = build_card(ro, "ds", n_resamples=20)
    tasks = card.tasks.set_index("task")
    finding = tasks.loc["finding"]
    # Readers per image: i1 {D1, D2, D3}, i2 {D1, D2}, i3 {D1, D2, D3}, i4 {D1, E1}.
    assert finding["n_annotations"] == 11 and finding["n_images_labelled"] == 4
    assert (finding["n_annotators"], finding["n_doctors"], finding["n_experts"]) == (4, 3, 1)
    assert finding["share_multi_read"] == 1.0
    assert finding["readers_mean"] == 2.5 and finding["readers_median"] == 2.5
    assert finding["readers_max"] == 3 and finding["n_gold"] == 1
    box = tasks.loc["box"]
    assert (box["n_annotations"], box["n_images_labelled"], box["share_multi_read"]) == (1, 1, 0.0)
    assert (box["readers_mean"], box["readers_median"], box["readers_max"]) == (1.0, 1.0, 1)


def test_agreement_equals_the_krippendorff_package(ro):
    card = build_card(ro, "ds", n_resamples=50)
    [row] = card.agreement.to_dict("records")
    nan = np.nan
    # Annotators D1, D2, D3, E1 × images i1..i4; normal = 0, nodule = 1; D3's typo is dropped
    # and D1's older label on i1 is replaced by the newer one.
    reliability = np.array(
        [[0, 1, 1, 0], [0, 0, 1, nan], [nan, nan, 0, nan], [nan, nan, nan, 1]], dtype=float
    )
    expected = krippendorff.alpha(reliability_data=reliability, level_of_measurement="nominal")
    assert row["task"] == "finding" and row["n_items"] == 4 and row["n_annotators"] == 4
    assert row["estimate"] == pytest.approx(expected, abs=1e-9)
    assert row["low"] <= row["high"]
    # Agreeing pairs per image: i1 1/1, i2 0/1, i3 1/3, i4 0/1.
    assert row["percent_agreement"] == pytest.approx((1 + 0 + 1 / 3 + 0) / 4)


def test_quality_summary_uses_the_newest_scorer(ro):
    card = build_card(ro, "ds", n_resamples=20)
    q = card.quality
    assert q["scorer_version"] == "s1" and (q["n_scored"], q["n_items"]) == (2, 4)
    assert q["mean_quality"] == pytest.approx(0.7)
    assert (q["min_quality"], q["max_quality"]) == (pytest.approx(0.5), pytest.approx(0.9))
    assert (q["n_ood"], q["n_defective"], q["n_unreadable"]) == (1, 1, 0)
    assert sorted(card.defects["defect_type"]) == ["blur", "clean"]


# --------------------------------------------------------------------------- checks and status


def _add_runs(session: Session, dataset_id: int) -> int:
    old = CheckRun(dataset_id=dataset_id, started_at=T0, passed=True)
    new = CheckRun(dataset_id=dataset_id, started_at=T0 + dt.timedelta(days=1), passed=False)
    session.add_all([old, new])
    session.flush()
    session.add_all(
        [
            CheckResult(run_id=old.id, check_name="dupes", passed=True, n_failed=0),
            CheckResult(run_id=new.id, check_name="dupes", passed=False, n_failed=3),
            CheckResult(run_id=new.id, check_name="missing", passed=True, n_failed=0),
        ]
    )
    session.commit()
    return new.id


def test_checks_freshness_and_the_status_api(session, example):
    fresh = build_card(session, "ds", n_resamples=20)
    assert fresh.freshness == "fresh" and fresh.status == "no-checks"
    assert card_status(fresh)["latest_check_run"] is None
    session.add(CheckRun(dataset_id=example.dataset_id, started_at=T0, passed=True))
    session.commit()
    assert build_card(session, "ds", n_resamples=20).status == "ok"
    later = dt.datetime.now(dt.UTC) + dt.timedelta(days=400)
    stale = build_card(session, "ds", n_resamples=20, now=later)
    assert stale.freshness == "stale" and stale.status == "stale"

    run_id = _add_runs(session, example.dataset_id)
    assert build_card(session, "ds", n_resamples=20, now=later).status == "failing"
    card = build_card(session, "ds", n_resamples=20)
    assert card.check_run["id"] == run_id  # the newest run, not the passing older one
    assert (card.check_run["n_checks"], card.check_run["n_failed"]) == (2, 1)
    assert card.check_run["n_failed_rows"] == 3 and card.check_run["passed"] is False
    assert card.status == "failing"
    assert card.failing_checks["check_name"].tolist() == ["dupes"]
    assert "check `dupes` (error): 3 failing rows" in card_markdown(card)

    status = card_status(card)
    json.dumps(status)  # plain JSON types only, no default= needed
    assert set(status) == {
        "schema", "dataset", "dataset_id", "owner", "license", "version", "content_hash",
        "version_created_at", "n_versions", "last_updated", "age_days", "freshness", "counts",
        "latest_check_run", "status", "generated_at",
    }  # fmt: skip
    assert status["schema"] == "quality.card.status/1" and status["status"] == "failing"
    assert (status["dataset"], status["version"], status["content_hash"]) == (
        "ds",
        "v1",
        LEGACY_HASH,
    )
    assert set(status["counts"]) == set(COUNT_KEYS) and status["counts"]["images"] == 4
    run = status["latest_check_run"]
    assert set(run) == {
        "id",
        "at",
        "finished_at",
        "passed",
        "n_checks",
        "n_failed",
        "n_failed_rows",
    }
    assert run["passed"] is False and run["n_failed"] == 1 and run["id"] == run_id
    dt.datetime.fromisoformat(status["generated_at"])
    dt.datetime.fromisoformat(status["last_updated"])


def test_dataset_without_version_and_a_yaml_hostile_name(ro):
    card = build_card(ro, TRICKY)
    assert card.version is None and card.counts["images"] == 0 and card.status == "no-checks"
    assert any("--add-new" in w for w in card.warnings)
    md = card_markdown(card)
    fm = front_matter(md)
    assert fm["pretty_name"] == TRICKY
    assert fm["dataset_version"] is None and fm["annotations_creators"] == ["no-annotation"]
    assert card_status(card)["version"] is None
    assert "quality score --dataset" in md  # nothing scored: the card says how


# --------------------------------------------------------------------------- Markdown


def test_markdown_front_matter_and_sections(ro):
    card = build_card(ro, "ds", n_resamples=20)
    md = card_markdown(card)
    fm = front_matter(md)
    assert list(fm) == [
        "pretty_name", "license", "task_categories", "size_categories", "annotations_creators",
        "source_datasets", "tags", "dataset_version", "content_hash", "generated_at",
    ]  # fmt: skip
    assert fm["pretty_name"] == "ds"
    assert fm["license"] == "cc-by-4.0"
    assert fm["task_categories"] == ["image-classification", "object-detection"]
    assert fm["size_categories"] == ["n<1K"]
    assert fm["annotations_creators"] == ["expert-generated"]
    assert fm["source_datasets"] == ["original"]
    assert fm["tags"] == ["medical-imaging", "cr", "dx"]
    assert (fm["dataset_version"], fm["content_hash"]) == ("v1", LEGACY_HASH)
    dt.datetime.fromisoformat(fm["generated_at"])
    positions = [md.index(s) for s in SECTIONS]
    assert positions == sorted(positions)
    assert md.count("_Not documented yet._") == len(CARD_FIELDS)


def test_changes_section_after_a_snapshot(session, example):
    snapshot(session, "ds", add_new=True)
    session.commit()
    card = build_card(session, "ds", n_resamples=20)
    assert card.version.version == "v2" and card.labels_basis == "frozen"
    assert (card.changes.old, card.changes.new, card.changes.n_added) == ("v1", "v2", 2)
    md = card_markdown(card)
    assert "## Changes since v1" in md and "2 added, 0 removed, 0 moved" in md
    assert front_matter(md)["dataset_version"] == "v2"
    explicit = build_card(session, "ds", "v1", diff=("v2", "v1"), n_resamples=20)
    assert explicit.changes.n_removed == 2
    with pytest.raises(VersionNotFoundError, match="known versions: v1, v2"):
        build_card(session, "ds", "v3")


# --------------------------------------------------------------------------- free text


def test_save_card_fields_merges_and_renders(session, example):
    saved = save_card_fields(
        session, "ds", {"motivation": " Find nodules.\r\nEarly. ", "citation": "@misc{ds}"}
    )
    session.commit()
    assert saved == {"motivation": "Find nodules.\nEarly.", "citation": "@misc{ds}"}
    updated = session.scalar(select(Dataset.updated_at).where(Dataset.id == example.dataset_id))
    assert updated is not None
    saved = save_card_fields(session, "ds", {"citation": "", "intended_uses": "Research."})
    session.commit()
    assert saved == {"motivation": "Find nodules.\nEarly.", "intended_uses": "Research."}
    assert list(saved) == [k for k in CARD_FIELDS if k in saved]  # card order
    md = card_markdown(build_card(session, "ds", n_resamples=20))
    assert "Find nodules.\nEarly." in md and "Research." in md
    assert md.count("_Not documented yet._") == len(CARD_FIELDS) - 2


def test_save_card_fields_rejects_bad_input(session, example):
    cases = [
        (
            {"motivation": "ok", "purpose": "x"},
            "card field 'purpose': unknown field; valid fields: motivation",
        ),
        ({"motivation": 3}, "must be text, not int"),
        ({"motivation": "x" * (MAX_FIELD_CHARS + 1)}, "at most 20,000"),
    ]
    for fields, match in cases:
        with pytest.raises(CardFieldError, match=match):
            save_card_fields(session, "ds", fields)
        session.rollback()
        assert session.scalar(select(Dataset.card_fields).where(Dataset.name == "ds")) == {}


# --------------------------------------------------------------------------- demo


@pytest.fixture(scope="module")
def demo_url(tiny_demo: Path, tmp_path_factory: pytest.TempPathFactory) -> str:
    return copy_demo_db(tiny_demo, tmp_path_factory.mktemp("card_demo"))


def test_demo_card_matches_the_truth_file(tiny_demo, demo_url):
    truth = json.loads((tiny_demo / "demo_truth.json").read_text())
    in_dataset = [v for v in truth["images"].values() if v["in_dataset"]]
    engine = make_engine(demo_url)
    try:
        with Session(engine) as s:
            card = build_card(s, truth["dataset"]["name"], n_resamples=20)
    finally:
        engine.dispose()
    assert card.counts["images"] == len(in_dataset)
    assert card.counts["patients"] == len({v["patient_id"] for v in in_dataset})
    assert set(card.sources["source"]) == {v["source"] for v in in_dataset}
    splits = dict(zip(card.splits["split"], card.splits["n_images"], strict=True))
    assert splits == {s: sum(v["split"] == s for v in in_dataset) for s in splits}
    # The seeded patient leak is the one patient in two splits.
    assert card.n_cross_split_patients == len(truth["defects"]["patient_leak"]) == 1
    alpha = card.agreement.set_index("task").loc["finding", "estimate"]
    assert 0 < alpha < 1


def test_demo_snapshot_and_cli(demo_url, tmp_path):
    runner = CliRunner()
    ds = "chest-xray-demo"
    first = runner.invoke(app, ["dataset", "snapshot", ds, "--json", "--db", demo_url])
    assert first.exit_code == 0, first.output
    # The demo's v1 hash covers items only (see quality.snapshot): the first snapshot is v2.
    assert json.loads(first.stdout)["version"] == "v2"
    again = runner.invoke(app, ["dataset", "snapshot", ds, "--json", "--db", demo_url])
    assert json.loads(again.stdout)["status"] == "unchanged"

    status = runner.invoke(app, ["card", ds, "--json", "--db", demo_url])
    assert status.exit_code == 0, status.output
    payload = json.loads(status.stdout)
    assert payload["version"] == "v2" and payload["diff"]["old"] == "v1"
    assert payload["diff"]["n_added"] == 0 and payload["status"] in STATUSES

    out = tmp_path / "card.md"
    md = runner.invoke(
        app, ["card", ds, "--version", "v1", "--diff", "v1:v2", "--out", str(out), "--db", demo_url]
    )
    assert md.exit_code == 0, md.output
    text = out.read_text()
    assert front_matter(text)["dataset_version"] == "v1" and "## Changes since v1" in text

    for args, message in (
        (["card", "nope"], "known datasets: chest-xray-demo"),
        (["card", ds, "--version", "v9"], "known versions: v1, v2"),
        (["card", ds, "--diff", "v1"], "--diff must be OLD:NEW"),
        (["card", ds, "--format", "xml"], "--format must be one of md, json"),
    ):
        bad = runner.invoke(app, [*args, "--db", demo_url])
        assert bad.exit_code == 2, (args, bad.output)
        assert message in bad.stderr
