"""Spot-check sampling, review sessions, verdicts and the summary (``quality.review``).

The fixture DB (:func:`seed_review_db`) is small enough to check by hand, and every DB test
runs on SQLite and on PostgreSQL:

- 20 chest images ``img1`` … ``img20`` (100 × 100 px): sources ``A`` (1–10), ``B`` (11–18),
  none (19–20, source ``(unknown)``); dataset ``ds`` v1 holds images 1–15.
- Model ``m`` (task ``finding``: normal, nodule, opacity) with ``v1`` and ``v2``; model
  ``m2`` (no task) with a ``v1``.
- ``m:v1`` predicts every image (:data:`V1_LABELS`, scores ``0.5 ± MARGINS``), plus a
  prediction with no label on ``img20`` (a missing output, never sampled); ``img19``'s
  prediction has no score.
- Annotations of images 1–6 (:data:`ANNOTATIONS`) make exactly images 1, 4 and 6
  disagreements for ``m:v1``: 2 is agreed, 3 is a tie, 5 has a single label, and on 6 the
  newest label of ``D1`` overrides an older one.
- Image-quality scores (``iqa-v1``) flag images 2, 9 and 12 out of distribution.
"""

from __future__ import annotations

import datetime as dt
import doctest
import io
import json
from collections.abc import Iterator

import numpy as np
import pandas as pd
import pytest
from conftest import DB_KINDS, service_missing
from hypothesis import given
from hypothesis import strategies as st
from sklearn.metrics import cohen_kappa_score
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from quality import review as rv
from quality.db.schema import (
    Annotation,
    Annotator,
    Dataset,
    DatasetItem,
    DatasetVersion,
    Image,
    ImageQuality,
    LabelingTask,
    Model,
    ModelVersion,
    Prediction,
    Review,
    ReviewSession,
    ReviewSessionItem,
    Series,
    Source,
    Study,
    User,
)
from quality.db.session import make_engine, upgrade
from quality.errors import ReviewInputError, SchemaOutdatedError

CLASSES = ["normal", "nodule", "opacity"]
V1_LABELS = {
    1: "nodule",
    2: "opacity",
    3: "normal",
    4: "nodule",
    5: "opacity",
    6: "normal",
    **{i: CLASSES[i % 3] for i in range(7, 20)},
}
# |score - 0.5| of m:v1's prediction on image i: three-way tie at the bottom (3, 8, 14).
MARGINS = {
    **{i: 0.2 + 0.01 * i for i in range(1, 19)},
    3: 0.01,
    8: 0.01,
    14: 0.01,
    5: 0.05,
    11: 0.10,
}
ANNOTATIONS = [  # (image, annotator, label, day)
    (1, "D1", "normal", 1),
    (1, "D2", "normal", 1),
    (2, "D1", "opacity", 1),
    (2, "D2", "opacity", 1),
    (3, "D1", "nodule", 1),
    (3, "D2", "opacity", 1),
    (4, "D1", "opacity", 1),
    (4, "D2", "opacity", 1),
    (4, "D3", "nodule", 1),
    (5, "D1", "normal", 1),
    (6, "D1", "normal", 1),
    (6, "D1", "nodule", 5),  # D1 changed their mind: the newest label counts
    (6, "D2", "nodule", 1),
    (6, "D3", "nodul", 1),  # outside the task's classes: ignored
]
OOD_IMAGES = {2, 9, 12}
DISAGREEING_IMAGES = {1, 4, 6}


def _day(d: int) -> dt.datetime:
    return dt.datetime(2024, 1, 1, tzinfo=dt.UTC) + dt.timedelta(days=d)


def seed_review_db(session: Session) -> dict[str, object]:
    """Insert the fixture DB of the module docstring; return ids by name."""
    sources = {"A": Source(name="A"), "B": Source(name="B")}
    session.add_all(sources.values())
    session.flush()
    images: dict[int, int] = {}
    for i in range(1, 21):
        src = "A" if i <= 10 else "B" if i <= 18 else None
        study = Study(
            study_uid=f"1.2.3.{i}",
            patient_key=f"p{i:03d}",
            modality="DX",
            source_id=sources[src].id if src else None,
        )
        session.add(study)
        session.flush()
        series = Series(series_uid=f"1.2.4.{i}", study_id=study.id)
        session.add(series)
        session.flush()
        img = Image(
            sop_uid=f"1.2.5.{i}",
            series_id=series.id,
            uri=f"/nowhere/img{i}.dcm",
            rows=100,
            cols=100,
        )
        session.add(img)
        session.flush()
        images[i] = img.id
    ds = Dataset(name="ds")
    session.add(ds)
    session.flush()
    ver = DatasetVersion(dataset_id=ds.id, version="v1", content_hash="x")
    session.add(ver)
    session.flush()
    session.add_all(
        DatasetItem(version_id=ver.id, image_id=images[i], split="train") for i in range(1, 16)
    )
    task = LabelingTask(dataset_id=ds.id, name="finding", kind="classification", classes=CLASSES)
    session.add(task)
    session.flush()
    annotators = {c: Annotator(code=c, kind="doctor") for c in ("D1", "D2", "D3")}
    session.add_all(annotators.values())
    session.flush()
    session.add_all(
        Annotation(
            task_id=task.id,
            image_id=images[i],
            annotator_id=annotators[code].id,
            label=label,
            created_at=_day(day),
        )
        for i, code, label, day in ANNOTATIONS
    )
    m = Model(name="m", task_id=task.id)
    m2 = Model(name="m2")
    session.add_all([m, m2])
    session.flush()
    v1 = ModelVersion(model_id=m.id, version="v1", status="production")
    v2 = ModelVersion(model_id=m.id, version="v2", status="shadow")
    m2v1 = ModelVersion(model_id=m2.id, version="v1", status="candidate")
    session.add_all([v1, v2, m2v1])
    session.flush()
    preds: dict[int, int] = {}
    for i in range(1, 20):
        label = V1_LABELS[i]
        score = None if i == 19 else 0.5 + (-MARGINS[i] if label == "normal" else MARGINS[i])
        p = Prediction(
            model_version_id=v1.id, image_id=images[i], label=label, score=score, created_at=_day(2)
        )
        session.add(p)
        session.flush()
        preds[i] = p.id
    missing = Prediction(
        model_version_id=v1.id, image_id=images[20], label=None, score=None, created_at=_day(2)
    )
    session.add(missing)
    for i in range(1, 21):
        session.add(
            Prediction(
                model_version_id=v2.id, image_id=images[i], label="normal", score=0.2,
                created_at=_day(2),
            )
        )  # fmt: skip
        session.add(
            Prediction(model_version_id=m2v1.id, image_id=images[i], label="x", created_at=_day(2))
        )
    session.add_all(
        ImageQuality(
            image_id=images[i], scorer_version="iqa-v1", is_ood=i in OOD_IMAGES,
            ood_score=10.0 if i in OOD_IMAGES else 1.0,
        )
        for i in range(1, 21)
    )  # fmt: skip
    session.flush()
    session.commit()
    return {
        "images": images,
        "preds": preds,
        "missing": missing.id,
        "v1": v1.id,
        "v2": v2.id,
        "m2v1": m2v1.id,
        "dataset": ds.id,
        "task": task.id,
    }


Shared = tuple[Session, dict[str, object]]


@pytest.fixture
def db(session: Session) -> dict[str, object]:
    """The fixture DB on a fresh database, for tests that write."""
    return seed_review_db(session)


@pytest.fixture(scope="module", params=DB_KINDS)
def ro(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Shared]:
    """The fixture DB built once per module and DB kind, for tests that only read (and
    writes that fail validation); a reviewer ``dr-ro`` is ``db["reviewer"]``."""
    cluster = None
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path_factory.mktemp('review_ro') / 'ro.db'}"
    else:
        cluster = request.getfixturevalue("pg_cluster")
        if cluster is None:
            service_missing("PostgreSQL (initdb/pg_ctl under /usr/lib/postgresql/*/bin)")
        url = cluster.new_database()
    engine = make_engine(url)
    upgrade(engine)
    with Session(engine, expire_on_commit=False) as s:
        ids = seed_review_db(s)
        ids["reviewer"] = rv.ensure_reviewer(s, "dr-ro")
        s.commit()
        yield s, ids
    engine.dispose()
    if cluster is not None:
        cluster.drop_database(url)


def _image_of(db: dict[str, object]) -> dict[int, int]:
    """prediction id → image number (1..20) for m:v1."""
    return {pid: i for i, pid in db["preds"].items()}  # type: ignore[union-attr]


# --------------------------------------------------------------------------- pure statistics


def test_doctests() -> None:
    assert doctest.testmod(rv, raise_on_error=False).failed == 0


@pytest.mark.parametrize(
    ("k", "n", "low", "high"),
    [
        (2, 20, 0.0279, 0.3010),
        (0, 10, 0.0, 0.2775),
        (10, 10, 0.7225, 1.0),
        (81, 263, 0.2553, 0.3662),
    ],
)
def test_wilson_interval_known_values(k: int, n: int, low: float, high: float) -> None:
    got = rv.wilson_interval(k, n)
    assert got == pytest.approx((low, high), abs=1e-4)


def test_wilson_interval_edges() -> None:
    assert all(np.isnan(rv.wilson_interval(0, 0)))
    with pytest.raises(ValueError, match="0 <= k <= n"):
        rv.wilson_interval(3, 2)


@given(
    sizes=st.lists(st.integers(min_value=0, max_value=60), min_size=1, max_size=12),
    n=st.integers(min_value=0, max_value=400),
)
def test_largest_remainder_holds_proportions(sizes: list[int], n: int) -> None:
    seats = rv.largest_remainder(sizes, n)
    total = sum(sizes)
    assert sum(seats) == min(n, total)
    assert all(0 <= s <= size for s, size in zip(seats, sizes, strict=True))
    if n < total:
        assert all(abs(s - n * size / total) < 1 for s, size in zip(seats, sizes, strict=True))


def test_largest_remainder_by_hand() -> None:
    # quotas 3.5, 2.1, 1.4 → floors 3, 2, 1 and the last seat to the largest remainder (.5).
    assert rv.largest_remainder([50, 30, 20], 7) == [4, 2, 1]
    # quotas 0.5, 1, 0.5: the last seat goes to the earlier of the two equal remainders.
    assert rv.largest_remainder([10, 20, 10], 2) == [1, 1, 0]
    # quotas 1.5, 0.75, 0.75: the two remainders of .75 beat .5.
    assert rv.largest_remainder([20, 10, 10], 3) == [1, 1, 1]
    # quotas 0.5, 3, 1.5: equal remainders, the larger stratum (3 > 1) wins over the earlier.
    assert rv.largest_remainder([1, 6, 3], 5) == [0, 3, 2]
    assert rv.largest_remainder([1, 1, 1], 2) == [1, 1, 0]
    assert rv.largest_remainder([3, 4], 10) == [3, 4]


def test_strategies_match_the_schema_constraint() -> None:
    from typing import get_args

    assert rv.STRATEGIES == get_args(rv.Strategy)


# --------------------------------------------------------------------------- sampling


@pytest.mark.parametrize("strategy", rv.STRATEGIES)
def test_sampling_is_reproducible_by_seed(ro: Shared, strategy: str) -> None:
    session, db = ro
    a = rv.sample_predictions(session, db["v1"], strategy, 8, seed=7)
    b = rv.sample_predictions(session, db["v1"], strategy, 8, seed=7)
    pd.testing.assert_frame_equal(a, b)
    assert list(a.columns) == rv.SAMPLE_COLUMNS
    assert list(a["position"]) == list(range(len(a)))
    assert a["prediction_id"].is_unique
    assert db["missing"] not in set(a["prediction_id"])  # a prediction without label


def test_random_sample_depends_on_seed_and_stays_in_pool(ro: Shared) -> None:
    session, db = ro
    draws = {
        seed: tuple(rv.sample_predictions(session, db["v1"], "random", 10, seed)["prediction_id"])
        for seed in range(4)
    }
    assert len(set(draws.values())) > 1
    pool = set(db["preds"].values())  # type: ignore[union-attr]
    assert all(set(d) <= pool and len(d) == 10 for d in draws.values())
    # A sample larger than the pool is the whole pool (19 labelled predictions).
    everything = rv.sample_predictions(session, db["v1"], "random", 100, 0)
    assert set(everything["prediction_id"]) == pool


def test_sample_columns_carry_label_score_source(ro: Shared) -> None:
    session, db = ro
    df = rv.sample_predictions(session, db["v1"], "random", 19, 3)
    image_of = _image_of(db)
    for row in df.itertuples():
        i = image_of[row.prediction_id]
        assert row.label == V1_LABELS[i]
        assert row.source == ("A" if i <= 10 else "B" if i <= 18 else rv.UNKNOWN_SOURCE)
        assert row.image_id == db["images"][i]  # type: ignore[index]
        assert np.isnan(row.score) if i == 19 else abs(abs(row.score - 0.5) - MARGINS[i]) < 1e-9


def test_dataset_scope(ro: Shared) -> None:
    session, db = ro
    df = rv.sample_predictions(session, db["v1"], "random", 100, 0, dataset_id=db["dataset"])
    assert {_image_of(db)[p] for p in df["prediction_id"]} == set(range(1, 16))


@pytest.mark.parametrize("n", [1, 4, 7, 10, 13, 19])
def test_stratification_holds_proportions(ro: Shared, n: int) -> None:
    session, db = ro
    df = rv.sample_predictions(session, db["v1"], "stratified", n, seed=n)
    assert len(df) == n
    pool = pd.DataFrame(
        [
            (V1_LABELS[i], "A" if i <= 10 else "B" if i <= 18 else rv.UNKNOWN_SOURCE)
            for i in range(1, 20)
        ],
        columns=["label", "source"],
    )
    sizes = pool.value_counts()
    got = df.value_counts(["label", "source"]).reindex(sizes.index, fill_value=0)
    quota = n * sizes / sizes.sum()
    assert ((got - quota).abs() < 1).all(), pd.DataFrame({"got": got, "quota": quota})


def test_lowest_confidence_order(ro: Shared) -> None:
    session, db = ro
    margins_of = {db["preds"][i]: MARGINS[i] for i in range(1, 19)}  # type: ignore[index]
    df = rv.sample_predictions(session, db["v1"], "lowest_confidence", 5, seed=0)
    margins = [margins_of[p] for p in df["prediction_id"]]
    assert margins == sorted(margins)
    assert margins == pytest.approx([0.01, 0.01, 0.01, 0.05, 0.10])
    # Cutting inside the three-way tie: which two is up to the seed, but always tied ones.
    tied = {db["preds"][i] for i in (3, 8, 14)}  # type: ignore[index]
    picks = {
        frozenset(
            rv.sample_predictions(session, db["v1"], "lowest_confidence", 2, s)["prediction_id"]
        )
        for s in range(12)
    }
    assert all(p <= tied and len(p) == 2 for p in picks)
    assert len(picks) > 1
    # The prediction without a score is never among them.
    everything = rv.sample_predictions(session, db["v1"], "lowest_confidence", 100, 0)
    assert len(everything) == 18 and db["preds"][19] not in set(everything["prediction_id"])  # type: ignore[index]


@pytest.mark.parametrize("method", rv.CONSENSUS_METHODS)
def test_disagreement_picks_only_disagreements(ro: Shared, method: str) -> None:
    session, db = ro
    df = rv.sample_predictions(session, db["v1"], "disagreement", 10, 0, consensus=method)
    image_of = _image_of(db)
    by_image = {
        image_of[p]: c for p, c in zip(df["prediction_id"], df["consensus_label"], strict=True)
    }
    assert (df["consensus_label"] != df["label"]).all()
    if method == "majority":
        assert by_image == {1: "normal", 4: "opacity", 6: "nodule"}
    else:
        # Dawid-Skene also settles image 3's tie (nodule vs opacity; the model said normal).
        assert {k: v for k, v in by_image.items() if k != 3} == {
            1: "normal", 4: "opacity", 6: "nodule",
        }  # fmt: skip
        assert by_image[3] in {"nodule", "opacity"}
    two = rv.sample_predictions(session, db["v1"], "disagreement", 2, 0, consensus=method)
    assert len(two) == 2 and {image_of[p] for p in two["prediction_id"]} <= set(by_image)


def test_disagreement_needs_a_task(ro: Shared) -> None:
    session, db = ro
    with pytest.raises(ReviewInputError, match="labeling task"):
        rv.sample_predictions(session, db["m2v1"], "disagreement", 5, 0)


def test_ood_picks_flagged_images(ro: Shared) -> None:
    session, db = ro
    df = rv.sample_predictions(session, db["v1"], "ood", 10, 0)
    assert {_image_of(db)[p] for p in df["prediction_id"]} == OOD_IMAGES
    assert (df["ood_score"] == 10.0).all()


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"strategy": "nope"}, "strategy"),
        ({"n": 0}, "n"),
        ({"n": rv.MAX_SAMPLE_SIZE + 1}, "n"),
        ({"n": 2.5}, "n"),
        ({"seed": -1}, "seed"),
        ({"consensus": "vote"}, "consensus"),
    ],
)
def test_sampling_validation(ro: Shared, kwargs: dict[str, object], field: str) -> None:
    session, db = ro
    args: dict[str, object] = {"strategy": "random", "n": 5, "seed": 0} | kwargs
    with pytest.raises(ReviewInputError) as info:
        rv.sample_predictions(session, db["v1"], **args)  # type: ignore[arg-type]
    assert info.value.field == field


def test_unknown_model_version_lists_known(ro: Shared) -> None:
    session, _ = ro
    with pytest.raises(ReviewInputError, match=r"m:v1 \(id \d+\), m:v2"):
        rv.sample_predictions(session, 999, "random", 5, 0)


def test_resolve_model_version(ro: Shared) -> None:
    session, db = ro
    assert rv.resolve_model_version(session, "m:v2") == db["v2"]
    assert rv.resolve_model_version(session, "v2") == db["v2"]
    assert rv.resolve_model_version(session, str(db["v1"])) == db["v1"]
    assert rv.resolve_model_version(session, db["m2v1"]) == db["m2v1"]
    with pytest.raises(ReviewInputError, match="ambiguous"):
        rv.resolve_model_version(session, "v1")
    with pytest.raises(ReviewInputError, match="known versions: m:v1"):
        rv.resolve_model_version(session, "m:v9")


def test_model_versions_and_classes(ro: Shared) -> None:
    session, db = ro
    versions = rv.list_model_versions(session).set_index("model_version_id")
    assert versions.loc[db["v1"], "n_predictions"] == 20
    assert versions.loc[db["v1"], "status"] == "production"
    assert rv.version_classes(session, db["v1"]) == CLASSES
    assert rv.version_classes(session, db["m2v1"]) == ["x"]  # no task: the predicted labels


# --------------------------------------------------------------------------- sessions


def test_session_save_and_resume(session: Session, db: dict[str, object]) -> None:
    uid = rv.ensure_reviewer(session, "dr-who")
    info = rv.create_session(session, db["v1"], "stratified", 6, 3, created_by=uid)
    session.commit()
    assert not info.reused and info.sample_size == 6 and info.created_by == uid
    sample = rv.sample_predictions(session, db["v1"], "stratified", 6, 3)
    items = rv.session_items(session, info.id)
    assert list(items["prediction_id"]) == list(sample["prediction_id"])
    assert list(items.columns) == rv.ITEM_COLUMNS
    assert (items["rows"] == 100).all() and items["uri"].str.startswith("/nowhere/").all()
    # Starting the same draw again resumes the saved session; another seed makes a new one.
    again = rv.create_session(session, db["v1"], "stratified", 6, 3)
    assert again.reused and again.id == info.id
    other = rv.create_session(session, db["v1"], "stratified", 6, 4)
    session.commit()
    assert other.id != info.id
    listed = rv.list_sessions(session, db["v1"])
    assert list(listed["session_id"]) == [other.id, info.id]  # newest first
    row = listed.set_index("session_id").loc[info.id]
    assert row["created_by"] == "dr-who" and row["n_reviewed"] == 0 and row["sample_size"] == 6
    assert session.scalar(select(func.count(ReviewSessionItem.id))) == 12
    assert rv.get_session(session, info.id).params == {"n_requested": 6}


def test_session_keeps_its_sample_when_predictions_change(
    session: Session, db: dict[str, object]
) -> None:
    info = rv.create_session(session, db["v1"], "random", 5, 0)
    session.commit()
    before = list(rv.session_items(session, info.id)["prediction_id"])
    session.add(
        Prediction(
            model_version_id=db["v1"], image_id=db["images"][20], label="normal", score=0.1,  # type: ignore[index]
            created_at=_day(3),
        )
    )  # fmt: skip
    session.commit()
    assert list(rv.session_items(session, info.id)["prediction_id"]) == before


def test_disagreement_session_params(session: Session, db: dict[str, object]) -> None:
    info = rv.create_session(session, db["v1"], "disagreement", 5, 0, consensus="dawid_skene")
    assert info.params == {"n_requested": 5, "consensus": "dawid_skene"}
    assert info.sample_size == 4  # images 1, 3, 4 and 6
    same = rv.create_session(session, db["v1"], "disagreement", 5, 0, consensus="majority")
    assert not same.reused  # another consensus method is another draw


def test_empty_or_unscored_ood_sample_is_not_saved(session: Session, db: dict[str, object]) -> None:
    session.execute(ImageQuality.__table__.update().values(is_ood=False))
    session.commit()
    with pytest.raises(ReviewInputError, match="nothing to review"):
        rv.create_session(session, db["v1"], "ood", 5, 0)
    session.execute(ImageQuality.__table__.delete())
    session.commit()
    with pytest.raises(ReviewInputError, match="quality score"):
        rv.create_session(session, db["v1"], "ood", 5, 0)
    assert session.scalar(select(func.count(ReviewSession.id))) == 0


def test_unknown_session(ro: Shared) -> None:
    session, _ = ro
    with pytest.raises(ReviewInputError, match="no review session with id 42"):
        rv.session_items(session, 42)


def test_ensure_reviewer(session: Session, db: dict[str, object]) -> None:
    a = rv.ensure_reviewer(session, "  dr-a ")
    assert rv.ensure_reviewer(session, "dr-a") == a
    session.commit()
    assert session.scalar(select(func.count(User.id))) == 1
    assert session.get(User, a).role == "clinician"  # type: ignore[union-attr]
    for bad in ("", "   ", "x" * 65):
        with pytest.raises(ReviewInputError, match="reviewer"):
            rv.ensure_reviewer(session, bad)
    assert list(rv.list_reviewers(session)["username"]) == ["dr-a"]


# --------------------------------------------------------------------------- verdicts


def test_resubmission_updates_never_duplicates(session: Session, db: dict[str, object]) -> None:
    uid = rv.ensure_reviewer(session, "dr-a")
    pid = db["preds"][1]  # type: ignore[index]
    first = rv.submit_verdict(session, pid, uid, "agree", comment="  looks right ")
    assert first.comment == "looks right" and first.corrected_bbox is None
    second = rv.submit_verdict(
        session, pid, uid, "disagree", corrected_label="normal", corrected_bbox=[10, 10, 50, 60]
    )
    assert second.review_id == first.review_id
    assert second.created_at == first.created_at
    assert second.updated_at is not None and first.updated_at is not None
    assert second.updated_at > first.updated_at
    rows = session.scalars(select(Review)).all()
    assert len(rows) == 1
    stored = rv.get_review(session, pid, uid)
    assert stored is not None
    assert (stored.verdict, stored.corrected_label, stored.corrected_bbox, stored.comment) == (
        "disagree", "normal", [10.0, 10.0, 50.0, 60.0], None,
    )  # fmt: skip
    # The bbox column holds SQL NULL (not JSON 'null') after a resubmission without a box.
    rv.submit_verdict(session, pid, uid, "unsure")
    assert session.scalar(select(func.count(Review.id)).where(Review.corrected_bbox.is_(None))) == 1
    assert rv.get_review(session, pid, 999) is None


@pytest.mark.parametrize(
    ("kwargs", "field", "match"),
    [
        ({"verdict": "maybe"}, "verdict", "valid: agree, disagree, unsure"),
        ({"corrected_label": "nodul"}, "corrected_label", "valid: normal, nodule, opacity"),
        ({"corrected_bbox": [1, 2, 3]}, "corrected_bbox", "four"),
        ({"corrected_bbox": ["a", 2, 3, 4]}, "corrected_bbox", "four"),
        ({"corrected_bbox": [10, 10, 5, 20]}, "corrected_bbox", "x0 < x1"),
        ({"corrected_bbox": [-1, 0, 5, 5]}, "corrected_bbox", ">= 0"),
        ({"corrected_bbox": [0, 0, 101, 50]}, "corrected_bbox", "outside the 100×100"),
        ({"corrected_bbox": [0, 0, float("nan"), 5]}, "corrected_bbox", "finite"),
        ({"verdict": "agree", "corrected_label": "normal"}, "corrected_label", "contradicts"),
        ({"verdict": "agree", "corrected_bbox": [0, 0, 5, 5]}, "corrected_bbox", "no corrected"),
        ({"comment": "x" * (rv.MAX_COMMENT_CHARS + 1)}, "comment", "at most"),
        ({"prediction_id": 10**6}, "prediction_id", "no prediction"),
        ({"reviewer_id": 10**6}, "reviewer_id", "no user"),
    ],
)
def test_verdict_validation(ro: Shared, kwargs: dict[str, object], field: str, match: str) -> None:
    session, db = ro
    uid = db["reviewer"]
    args: dict[str, object] = {
        "prediction_id": db["preds"][1],  # type: ignore[index]  # the model said nodule
        "reviewer_id": uid,
        "verdict": "disagree",
    } | kwargs
    with pytest.raises(ReviewInputError, match=match) as info:
        rv.submit_verdict(session, **args)  # type: ignore[arg-type]
    assert info.value.field == field
    assert session.scalar(select(func.count(Review.id))) == 0


def test_agree_with_the_models_own_label_is_fine(session: Session, db: dict[str, object]) -> None:
    uid = rv.ensure_reviewer(session, "dr-a")
    v = rv.submit_verdict(session, db["preds"][1], uid, "agree", corrected_label="nodule")  # type: ignore[index]
    assert v.verdict == "agree" and v.corrected_label == "nodule"


# --------------------------------------------------------------------------- progress


def test_progress_and_navigation(session: Session, db: dict[str, object]) -> None:
    a = rv.ensure_reviewer(session, "dr-a")
    b = rv.ensure_reviewer(session, "dr-b")
    info = rv.create_session(session, db["v1"], "random", 5, 0, created_by=a)
    session.commit()
    items = rv.session_items(session, info.id)
    pid = dict(zip(items["position"], items["prediction_id"], strict=True))
    assert rv.progress(session, info.id, a) == rv.ReviewProgress(done=0, total=5)
    assert rv.next_unreviewed(session, info.id, a) == 0
    for pos in (0, 2):
        rv.submit_verdict(session, pid[pos], a, "agree")
    rv.submit_verdict(session, pid[1], b, "unsure")  # another reviewer's work is not a's
    prog = rv.progress(session, info.id, a)
    assert (prog.done, prog.total, prog.remaining) == (2, 5, 3)
    assert prog.fraction == pytest.approx(0.4)
    assert rv.next_unreviewed(session, info.id, a) == 1
    assert rv.next_unreviewed(session, info.id, a, 1) == 3
    assert rv.next_unreviewed(session, info.id, a, 3, backwards=True) == 1
    assert rv.next_unreviewed(session, info.id, a, 4) == 1  # wraps round
    assert rv.next_unreviewed(session, info.id, a, 4, wrap=False) is None
    assert rv.next_unreviewed(session, info.id, a, 1, backwards=True) == 4  # wraps to the end
    for pos in (1, 3, 4):
        rv.submit_verdict(session, pid[pos], a, "disagree")
    assert rv.next_unreviewed(session, info.id, a) is None
    assert rv.progress(session, info.id, a).fraction == 1.0
    assert rv.list_sessions(session).set_index("session_id").loc[info.id, "n_reviewed"] == 5


# --------------------------------------------------------------------------- summary & export


def _review_some(session: Session, db: dict[str, object]) -> dict[str, int]:
    """m:v1 reviews: image 1 (nodule, A): a agrees, b disagrees → normal; image 2 (opacity, A):
    a agrees; image 11 (opacity, B): a disagrees without a label; image 12 (normal, B): a is
    unsure; image 13 (nodule, B): a disagrees → opacity. m:v2: image 1 (normal): b agrees."""
    a = rv.ensure_reviewer(session, "dr-a")
    b = rv.ensure_reviewer(session, "dr-b")
    p = db["preds"]
    rv.submit_verdict(session, p[1], a, "agree")  # type: ignore[index]
    rv.submit_verdict(session, p[1], b, "disagree", corrected_label="normal", comment="no nodule")  # type: ignore[index]
    rv.submit_verdict(session, p[2], a, "agree")  # type: ignore[index]
    rv.submit_verdict(session, p[11], a, "disagree")  # type: ignore[index]
    rv.submit_verdict(session, p[12], a, "unsure")  # type: ignore[index]
    rv.submit_verdict(
        session, p[13], a, "disagree", corrected_label="opacity", corrected_bbox=[1, 2, 3, 4]
    )  # type: ignore[index]
    v2_pred = session.scalar(
        select(Prediction.id).where(
            Prediction.model_version_id == db["v2"],
            Prediction.image_id == db["images"][1],  # type: ignore[index]
        )
    )
    rv.submit_verdict(session, int(v2_pred), b, "agree")  # type: ignore[arg-type]
    return {"a": a, "b": b}


def test_summary_by_version_class_source(session: Session, db: dict[str, object]) -> None:
    _review_some(session, db)
    s = rv.review_summary(session)
    assert s.n_reviews == 7
    v = s.by_version.set_index("version")
    assert v.loc["v1", ["n_reviews", "n_agree", "n_disagree", "n_unsure"]].tolist() == [6, 2, 3, 1]
    assert v.loc["v1", "agreement"] == pytest.approx(2 / 5)
    low, high = rv.wilson_interval(2, 5)
    assert (v.loc["v1", "agreement_low"], v.loc["v1", "agreement_high"]) == pytest.approx(
        (low, high)
    )
    assert v.loc["v2", "agreement"] == 1.0 and v.loc["v2", "n_reviews"] == 1
    # κ over the pairs with a reviewer label: (nodule, nodule), (nodule, normal),
    # (opacity, opacity), (nodule, opacity); image 11's label-less disagree is left out.
    expected = cohen_kappa_score(
        ["nodule", "nodule", "opacity", "nodule"], ["nodule", "normal", "opacity", "opacity"]
    )
    assert v.loc["v1", "kappa"] == pytest.approx(expected)
    assert v.loc["v1", "n_kappa"] == 4
    assert np.isnan(v.loc["v2", "kappa"])  # one category on both sides: κ does not apply
    c = s.by_class.loc[s.by_class["version"] == "v1"].set_index("label")
    assert c.loc["nodule", ["n_reviews", "n_agree", "n_disagree"]].tolist() == [3, 1, 2]
    assert c.loc["opacity", ["n_agree", "n_disagree"]].tolist() == [1, 1]
    assert np.isnan(c.loc["normal", "agreement"]) and c.loc["normal", "n_unsure"] == 1
    src = s.by_source.loc[s.by_source["version"] == "v1"].set_index("source")
    assert src.loc["A", ["n_agree", "n_disagree"]].tolist() == [2, 1]
    assert src.loc["B", ["n_agree", "n_disagree", "n_unsure"]].tolist() == [0, 2, 1]
    assert len(s.disagreements) == 3 and set(s.disagreements["verdict"]) == {"disagree"}
    assert list(s.disagreements.columns) == rv.DISAGREEMENT_COLUMNS
    json.dumps(s.as_dict())  # JSON-ready


def test_summary_filters(session: Session, db: dict[str, object]) -> None:
    who = _review_some(session, db)
    only_b = rv.review_summary(session, reviewer_id=who["b"])
    assert only_b.n_reviews == 2
    only_v2 = rv.review_summary(session, model_version_id=db["v2"])
    assert list(only_v2.by_version["version"]) == ["v2"]
    info = rv.create_session(session, db["v1"], "disagreement", 5, 0)
    session.commit()
    in_session = rv.review_summary(session, review_session_id=info.id)
    # The disagreement session holds images 1, 4, 6: only image 1's two reviews are in it.
    assert in_session.n_reviews == 2
    empty = rv.review_summary(session, model_version_id=db["m2v1"])
    assert empty.n_reviews == 0 and empty.by_version.empty
    with pytest.raises(ReviewInputError):
        rv.review_summary(session, review_session_id=999)


def test_export_reviews_and_csv(session: Session, db: dict[str, object]) -> None:
    _review_some(session, db)
    df = rv.export_reviews(session, model_version_id=db["v1"])
    assert list(df.columns) == rv.EXPORT_COLUMNS
    assert len(df) == 6 and df["review_id"].is_unique
    assert set(df["reviewer"]) == {"dr-a", "dr-b"}
    assert "patient_key" not in df.columns
    back = pd.read_csv(io.StringIO(rv.reviews_to_csv(df)))
    assert len(back) == 6
    boxed = back.loc[back["corrected_bbox"].notna(), "corrected_bbox"]
    assert [json.loads(b) for b in boxed] == [[1.0, 2.0, 3.0, 4.0]]
    recs = rv.reviews_to_records(df)
    json.dumps(recs)
    assert recs[0]["created_at"].endswith("+00:00")


# --------------------------------------------------------------------------- schema


def test_outdated_schema_is_named(tmp_path) -> None:  # type: ignore[no-untyped-def]
    engine = make_engine(f"sqlite:///{tmp_path / 'old.db'}")
    upgrade(engine, "0002")
    with Session(engine) as s, pytest.raises(SchemaOutdatedError, match="review_sessions"):
        rv.list_sessions(s)
    engine.dispose()
