"""The large demo (``quality demo --size large``) at a small scale, on PostgreSQL and SQLite.

Built on the tiny base demo at ``scale = 0.01`` (10³ studies, 2·10³ images, 10⁴
annotations, 4·10³ predictions) so that the whole module runs in well under a minute; the
full size is a benchmark (``bench/large_db.py``), not a test.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pydicom
import pytest
from conftest import service_missing
from sqlalchemy import func, select
from sqlalchemy.orm import Session
from typer.testing import CliRunner

from quality.cli import app
from quality.db.schema import (
    Annotation,
    Annotator,
    Image,
    ImageQuality,
    LabelingTask,
    ModelVersion,
    Prediction,
    ReferenceLabel,
    Series,
    Study,
)
from quality.db.session import make_engine, upgrade
from quality.demo import SIZES, TRUTH_FILE, DemoSummary, build_large, db_content_hash
from quality.demo.large import LARGE_SPEC, N_DAYS_LARGE, N_DOCTORS
from quality.demo.plan import START
from quality.doctors import build_doctor_report
from quality.drift import build_drift_report
from quality.errors import QualityError

SALT = "test-salt"
SCALE = 0.01
BASE = "tiny"
PG_MISSING = "PostgreSQL (initdb/pg_ctl under /usr/lib/postgresql/*/bin)"


class Built:
    """A large demo built once for the module: its URL, folder, summary and truth."""

    def __init__(self, url: str, out: Path, summary: DemoSummary) -> None:
        self.url = url
        self.out = out
        self.summary = summary
        self.truth: dict[str, Any] = json.loads((out / TRUTH_FILE).read_text())
        self.engine = make_engine(url)

    def session(self) -> Session:
        return Session(self.engine)


def _build(url: str, out: Path) -> DemoSummary:
    """The large demo without the pages' precomputed results (``quality.db.aggregates``,
    which ingest and score refresh too): they are the aggregates' tests, and slow."""
    engine = make_engine(url)
    upgrade(engine)
    with pytest.MonkeyPatch.context() as mp, Session(engine) as s:
        mp.setattr("quality.db.aggregates.refresh", lambda session, **kw: [])
        summary = build_large(
            s, out, seed=0, salt=SALT, scale=SCALE, base=BASE, workers=1, refresh_aggregates=False
        )
    engine.dispose()
    return summary


@pytest.fixture(scope="module")
def pg_large(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Built]:
    cluster = request.getfixturevalue("pg_cluster")
    if cluster is None:
        service_missing(PG_MISSING)
    url = cluster.new_database()
    out = tmp_path_factory.mktemp("large_pg")
    built = Built(url, out, _build(url, out))
    yield built
    built.engine.dispose()
    cluster.drop_database(url)


def _expected() -> dict[str, Any]:
    return LARGE_SPEC.scaled(SCALE)


def test_large_is_a_public_size() -> None:
    assert "large" in SIZES


def test_counts_are_exact(pg_large: Built) -> None:
    want = _expected()
    assert want["studies"] == 1000 and want["images"] == 2000 and want["annotations"] == 10_000
    with pg_large.session() as s:
        assert s.scalar(select(func.count()).select_from(Study)) == want["studies"]
        assert s.scalar(select(func.count()).select_from(Image)) == want["images"]
        # one series per new image; the base demo's CT series hold several images
        n_series = s.scalar(select(func.count()).select_from(Series))
        assert n_series == pg_large.truth["large"]["counts"]["series"]
        assert s.scalar(select(func.count()).select_from(Annotation)) == want["annotations"]
        doctors = s.scalar(
            select(func.count()).select_from(Annotator).where(Annotator.kind == "doctor")
        )
        assert doctors == N_DOCTORS
        by_version = dict(
            s.execute(
                select(ModelVersion.version, func.count(Prediction.id))
                .join(Prediction, Prediction.model_version_id == ModelVersion.id)
                .group_by(ModelVersion.version)
            ).all()
        )
        statuses = dict(s.execute(select(ModelVersion.version, ModelVersion.status)).all())
    assert by_version == {"v1": 1800, "v2": 1400, "v3": 800} == want["predictions"]
    assert statuses == {"v1": "production", "v2": "shadow", "v3": "candidate"}
    payload = pg_large.summary.as_dict()
    assert payload["studies"] == 1000 and payload["images"] == 2000
    assert payload["annotations"] == 10_000 and payload["predictions"] == 4000
    assert payload["doctors"] == 60 and payload["predictions_by_version"] == by_version
    assert set(payload["phase_seconds"]) == {
        "base_demo", "score", "plan_and_links", "images", "annotations", "predictions",
        "analyze", "aggregates", "truth",
    }  # fmt: skip


def test_two_or_three_doctors_per_new_image(pg_large: Built) -> None:
    large = pg_large.truth["large"]
    new_root = str(pg_large.out / "large")
    with pg_large.session() as s:
        rows = s.execute(
            select(LabelingTask.name, Annotation.image_id, func.count())
            .join(LabelingTask, LabelingTask.id == Annotation.task_id)
            .join(Image, Image.id == Annotation.image_id)
            .join(Annotator, Annotator.id == Annotation.annotator_id)
            .where(Annotator.kind == "doctor", Image.uri.startswith(new_root))
            .group_by(LabelingTask.name, Annotation.image_id)
        ).all()
    per_task = {
        t: Counter(n for task, _, n in rows if task == t) for t in ("finding", "finding-box")
    }
    n_new = large["new"]["images"]
    assert per_task["finding"] == {
        2: n_new - large["new"]["images_with_three_doctors"],
        3: large["new"]["images_with_three_doctors"],
    }
    # The box task has a row per doctor and image too (``normal`` without a box), except
    # the one left out when the total is odd.
    assert sum(per_task["finding-box"].values()) == n_new
    assert large["new"]["box_rows_left_out"] == 0


def test_dates_span_180_days(pg_large: Built) -> None:
    last = START + dt.timedelta(days=N_DAYS_LARGE - 1)
    with pg_large.session() as s:
        lo, hi = s.execute(select(func.min(Study.study_date), func.max(Study.study_date))).one()
        a_lo, a_hi = s.execute(
            select(func.min(Annotation.created_at), func.max(Annotation.created_at))
        ).one()
        p_hi = s.scalar(select(func.max(Prediction.created_at)))
    assert (lo, hi) == (START, last)
    assert a_lo.date() >= START and a_hi.date() == last
    assert (a_hi.date() - a_lo.date()).days >= N_DAYS_LARGE - 2
    assert p_hi.date() == last
    assert pg_large.truth["large"]["date_range"] == {
        "start": START.isoformat(), "end": last.isoformat()
    }  # fmt: skip


def test_new_images_reuse_real_files(pg_large: Built) -> None:
    new_root = str(pg_large.out / "large")
    with pg_large.session() as s:
        real = dict(
            s.execute(select(Image.sop_uid, Image.uri).where(~Image.uri.startswith(new_root))).all()
        )
        clones = s.execute(
            select(Image.id, Image.sop_uid, Image.uri, Image.pixel_sha256, Image.header).where(
                Image.uri.startswith(new_root)
            )
        ).all()
        real_ids = dict(s.execute(select(Image.sop_uid, Image.id)).all())
        iq = {
            i: (q, sharp)
            for i, q, sharp in s.execute(
                select(ImageQuality.image_id, ImageQuality.quality_score, ImageQuality.sharpness)
            )
        }
    assert len(clones) == pg_large.truth["large"]["new"]["images"] == 2000 - len(real)
    for _, sop, uri, sha, header in clones:
        original = header["_demo"]["reused_pixels_of"]
        assert os.path.samefile(uri, real[original]), uri
        assert (
            sha == hashlib.sha256(f"{header['_demo']['pixel_sha256']}:{sop}".encode()).hexdigest()
        )
        assert header["SOPInstanceUID"] == sop
    # Surrogate hashes: no exact-duplicate flood.
    assert len({c.pixel_sha256 for c in clones}) == len(clones)
    # The true hash in the header is the file's PixelData hash; the scores are the original's.
    for image_id, _, uri, _, header in clones[:5]:
        ds = pydicom.dcmread(uri)
        assert hashlib.sha256(ds.PixelData).hexdigest() == header["_demo"]["pixel_sha256"]
        assert iq[image_id] == iq[real_ids[header["_demo"]["reused_pixels_of"]]]
    assert all(c.id in iq for c in clones)


def test_careless_and_biased_doctors_are_flagged(pg_large: Built) -> None:
    truth = pg_large.truth
    with pg_large.session() as s:
        task_id = s.scalar(select(LabelingTask.id).where(LabelingTask.name == "finding"))
        report = build_doctor_report(s, task_id, n_resamples=100)
    team = report.team.set_index("code")
    careless, biased = truth["careless_doctor"], truth["biased_doctor"]
    assert truth["large"]["careless_doctors"] == [careless]
    assert truth["large"]["biased_doctors"] == [biased]
    assert "low agreement" in team.at[careless, "flags"]
    assert "too fast" in team.at[careless, "flags"]
    assert team.at[careless, "rank"] == team["rank"].max()
    assert "bias: over-calls" in team.at[biased, "flags"]
    # Every doctor took the exam: the small demo's doctors there, the new ones here.
    assert set(report.exam["code"]) >= {d["code"] for d in truth["large"]["doctors"]}
    assert len(truth["large"]["doctors"]) == N_DOCTORS


def test_drift_found_at_the_seeded_source_and_date(pg_large: Built) -> None:
    seeded = pg_large.truth["large"]["drift"]
    start = dt.date.fromisoformat(seeded["start_date"])
    with pg_large.session() as s:
        report = build_drift_report(s, "chest-xray-demo")
    tl = report.result.timeline
    at_source = tl.loc[(tl["scope"] == seeded["source"]) & tl["drift_alert"]]
    first = at_source.iloc[0]
    assert first["window_start"] <= start <= first["window_end"]
    assert (at_source["window_end"] >= start).all()
    assert {"kvp", "software_version"} <= set(first["drifted_columns"].split(", "))
    later = tl.loc[(tl["scope"] == seeded["source"]) & (tl["window_start"] > first["window_start"])]
    assert later.loc[later["status"] == "tested", "drift_alert"].all()
    # The missing-prediction stretch raises its alert over the whole dataset.
    whole = tl.loc[tl["scope"] == "(all)"]
    for stretch in pg_large.truth["large"]["missing_predictions"]:
        lo, hi = (
            dt.date.fromisoformat(stretch["start_date"]),
            dt.date.fromisoformat(stretch["end_date"]),
        )
        covering = whole.loc[(whole["window_start"] <= hi) & (whole["window_end"] >= lo)]
        assert covering["missing_alert"].all(), stretch


def test_careless_doctor_is_the_fastest(pg_large: Built) -> None:
    with pg_large.session() as s:
        rows = s.execute(
            select(Annotator.code, Annotation.duration_s)
            .join(Annotator, Annotator.id == Annotation.annotator_id)
            .where(Annotator.kind == "doctor")
        ).all()
    durations: dict[str, list[float]] = {}
    for code, d in rows:
        durations.setdefault(code, []).append(d)
    medians = {c: sorted(v)[len(v) // 2] for c, v in durations.items()}
    assert min(medians, key=medians.__getitem__) == pg_large.truth["careless_doctor"]


def test_cli_same_seed_same_content(
    pg_large: Built,
    request: pytest.FixtureRequest,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``quality demo --size large --json`` on another DB: same counts, same content; the
    pages' precomputed results are refreshed once, after the last row is in."""
    seen: list[int] = []

    def fake_refresh(session: Session, **_kwargs: Any) -> list[Any]:
        # The real refresh is the aggregates' own test; here: when it runs.
        seen.append(session.scalar(select(func.count()).select_from(Prediction)))
        return []

    monkeypatch.setattr("quality.db.aggregates.refresh", fake_refresh)
    cluster = request.getfixturevalue("pg_cluster")
    url = cluster.new_database()
    try:
        res = CliRunner().invoke(app, [
            "demo", "--size", "large", "--scale", str(SCALE), "--base", BASE, "--seed", "0",
            "--workers", "1", "--out", str(tmp_path), "--db", url, "--json",
        ], env={"QUALITY_PHI_SALT": SALT})  # fmt: skip
        assert res.exit_code == 0, res.output
        payload = json.loads(res.stdout)
        assert {k: payload[k] for k in ("studies", "images", "annotations", "predictions")} == {
            "studies": 1000, "images": 2000, "annotations": 10_000, "predictions": 4000
        }  # fmt: skip
        assert payload["seconds"] > 0 and payload["size"] == "large"
        assert payload["aggregates_refreshed"] is True
        # (ingest and score refresh too, on the base demo; the last refresh sees every row)
        assert seen[-1:] == [4000]
        engine = make_engine(url)
        with Session(engine) as s, pg_large.session() as ref:
            assert db_content_hash(s) == db_content_hash(ref)
        engine.dispose()
        assert json.loads((tmp_path / TRUTH_FILE).read_text()) == pg_large.truth
    finally:
        cluster.drop_database(url)


def test_non_empty_db_is_refused(pg_large: Built, tmp_path: Path) -> None:
    with pg_large.session() as s, pytest.raises(QualityError, match="empty database"):
        build_large(s, tmp_path, seed=0, salt=SALT, scale=SCALE, base=BASE, workers=1)
    assert not (tmp_path / "large").exists() and not (tmp_path / "dicom").exists()


def test_sqlite_holds_the_same_content(pg_large: Built, tmp_path: Path) -> None:
    """SQLite is supported (executemany in chunks) and gives the PostgreSQL content."""
    url = f"sqlite:///{tmp_path / 'large.db'}"
    summary = _build(url, tmp_path)
    assert (summary.studies, summary.images, summary.annotations, summary.predictions) == (
        1000, 2000, 10_000, 4000
    )  # fmt: skip
    engine = make_engine(url)
    with Session(engine) as s, pg_large.session() as ref:
        assert s.scalar(select(func.count()).select_from(ReferenceLabel)) == ref.scalar(
            select(func.count()).select_from(ReferenceLabel)
        )
        assert db_content_hash(s) == db_content_hash(ref)
    engine.dispose()


def test_scale_out_of_range_is_refused(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'x.db'}")
    upgrade(engine)
    with Session(engine) as s:
        with pytest.raises(QualityError, match="scale must lie in"):
            build_large(s, tmp_path, salt=SALT, scale=0.001, base=BASE)
        with pytest.raises(QualityError, match="base must be one of"):
            build_large(s, tmp_path, salt=SALT, scale=0.01, base="medium")
    engine.dispose()
    assert not (tmp_path / "dicom").exists()


def test_cli_large_needs_a_database(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("QUALITY_DB_URL", raising=False)
    res = CliRunner().invoke(app, ["demo", "--size", "large", "--out", str(tmp_path)])
    assert res.exit_code == 2
    assert "--size large needs a database" in res.output
    res = CliRunner().invoke(app, ["demo", "--size", "small", "--scale", "0.5",
                                   "--out", str(tmp_path)])  # fmt: skip
    assert res.exit_code == 2 and "--size large only" in res.output
    assert not (tmp_path / "dicom").exists()


def test_foreign_large_folder_is_refused_before_anything(tmp_path: Path) -> None:
    (tmp_path / "large").mkdir()
    (tmp_path / "large" / "precious.dcm").write_bytes(b"x")
    engine = make_engine(f"sqlite:///{tmp_path / 'x.db'}")
    upgrade(engine)
    with Session(engine) as s:
        with pytest.raises(QualityError, match="not written by"):
            build_large(s, tmp_path, salt=SALT, scale=SCALE, base=BASE, workers=1)
        assert s.scalar(select(func.count()).select_from(Image)) == 0
    engine.dispose()
    assert (tmp_path / "large" / "precious.dcm").read_bytes() == b"x"
    assert not (tmp_path / "dicom").exists()
