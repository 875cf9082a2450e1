"""Shadow-model comparison and release checklist (:mod:`quality.models`).

The DB tests run on SQLite and PostgreSQL (the ``session`` fixture) over a hand-built example
small enough to check by hand (:func:`add_model_rows`):

=====  ======  =======  ===========  ===========  ==========  =================
image  source  gold     v1 (prod.)   v2 (shadow)  doctors     note
=====  ======  =======  ===========  ===========  ==========  =================
i0     A       nodule   0.80 nodule  0.90 nodule  nodule ×3   v1 also has an older row
i1     A       normal   0.30 normal  0.10 normal  normal ×3
i2     A       opacity  0.40 normal  0.70 opacity opacity ×3  flipped
i3     A       normal   0.60 nodule  0.40 normal  normal ×3   flipped
i4     B       nodule   0.90 nodule  0.95 nodule  nodule ×3
i5     B       normal   0.20 normal  0.30 normal  nodule ×3   consensus ≠ gold
i6     B       normal   0.70 opacity 0.20 normal  —           flipped
i7     B       opacity  0.65 opacity 0.80 opacity —
i9     B       —        0.50 normal  NULL (empty) —           not paired
i8     A       —        0.50 normal  0.50 normal  —           not in the dataset
=====  ======  =======  ===========  ===========  ==========  =================

A third version ``v3`` (candidate) scores i6, i7 and i9, for committee tests in
``test_rank.py``. v1 latencies are 10, 20, ..., v2 latencies 100, 110, ....
"""

from __future__ import annotations

import datetime as dt
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import (
    average_precision_score,
    cohen_kappa_score,
    roc_auc_score,
)
from sklearn.metrics import precision_recall_curve as sk_pr_curve
from sklearn.metrics import roc_curve as sk_roc_curve
from sqlalchemy.orm import Session

from quality import models
from quality.agreement.categorical import CI
from quality.db.schema import (
    Annotation,
    Annotator,
    Dataset,
    DatasetItem,
    DatasetVersion,
    Image,
    LabelingTask,
    Model,
    ModelVersion,
    Prediction,
    ReferenceLabel,
    Series,
    Source,
    Study,
)
from quality.errors import LabelDataError, ModelInputError

T0 = dt.datetime(2024, 3, 1, tzinfo=dt.UTC)
# image: (source, gold, (v1 score, label), (v2 score, label) or None, doctors' label)
ROWS = {
    "i0": ("A", "nodule", (0.80, "nodule"), (0.90, "nodule"), "nodule"),
    "i1": ("A", "normal", (0.30, "normal"), (0.10, "normal"), "normal"),
    "i2": ("A", "opacity", (0.40, "normal"), (0.70, "opacity"), "opacity"),
    "i3": ("A", "normal", (0.60, "nodule"), (0.40, "normal"), "normal"),
    "i4": ("B", "nodule", (0.90, "nodule"), (0.95, "nodule"), "nodule"),
    "i5": ("B", "normal", (0.20, "normal"), (0.30, "normal"), "nodule"),
    "i6": ("B", "normal", (0.70, "opacity"), (0.20, "normal"), None),
    "i7": ("B", "opacity", (0.65, "opacity"), (0.80, "opacity"), None),
    "i9": ("B", None, (0.50, "normal"), (None, None), None),
    "i8": ("A", None, (0.50, "normal"), (0.50, "normal"), None),
}
PAIRED = ["i0", "i1", "i2", "i3", "i4", "i5", "i6", "i7"]
V3 = {"i6": 0.9, "i7": 0.7, "i9": 0.45}


def add_model_rows(session: Session, root: Path | None = None) -> dict[str, int]:
    """Insert the example of the module docstring; return ids by name (images by key)."""
    root = root or Path("/nonexistent")
    sources = {n: Source(name=n) for n in ("A", "B")}
    session.add_all(sources.values())
    session.flush()
    ids: dict[str, int] = {}
    for k, key in enumerate(ROWS):
        study = Study(study_uid=f"1.2.9.1.{k}", patient_key=f"p{k}", modality="DX",
                      source_id=sources[ROWS[key][0]].id)  # fmt: skip
        session.add(study)
        session.flush()
        series = Series(series_uid=f"1.2.9.2.{k}", study_id=study.id, modality="DX")
        session.add(series)
        session.flush()
        img = Image(sop_uid=f"1.2.9.3.{k}", series_id=series.id, uri=str(root / f"{key}.dcm"),
                    rows=32, cols=32)  # fmt: skip
        session.add(img)
        session.flush()
        ids[key] = img.id
    ds = Dataset(name="chest-models")
    session.add(ds)
    session.flush()
    ver = DatasetVersion(dataset_id=ds.id, version="v1", content_hash="c" * 64)
    session.add(ver)
    session.flush()
    for key in ROWS:
        if key != "i8":
            session.add(DatasetItem(version_id=ver.id, image_id=ids[key], split="train"))
    task = LabelingTask(dataset_id=ds.id, name="finding", kind="classification",
                        classes=["normal", "nodule", "opacity"])  # fmt: skip
    docs = [Annotator(code=f"D{i}", kind="doctor") for i in range(1, 4)]
    session.add_all([task, *docs])
    session.flush()
    model = Model(name="m", task_id=task.id)
    session.add(model)
    session.flush()
    versions = {
        v: ModelVersion(model_id=model.id, version=v, status=s)
        for v, s in (("v1", "production"), ("v2", "shadow"), ("v3", "candidate"))
    }
    session.add_all(versions.values())
    session.flush()
    for k, (key, (_, gold, p1, p2, doctor)) in enumerate(ROWS.items()):
        if gold is not None:
            session.add(ReferenceLabel(task_id=task.id, image_id=ids[key], kind="gold", label=gold))
        if doctor is not None:
            for d in docs:
                session.add(Annotation(task_id=task.id, image_id=ids[key], annotator_id=d.id,
                                       label=doctor, created_at=T0))  # fmt: skip
        session.add(Prediction(model_version_id=versions["v1"].id, image_id=ids[key],
                               score=p1[0], label=p1[1], latency_ms=10.0 * (k + 1),
                               created_at=T0 + dt.timedelta(days=1)))  # fmt: skip
        session.add(Prediction(model_version_id=versions["v2"].id, image_id=ids[key],
                               score=p2[0], label=p2[1], latency_ms=100.0 + 10 * k,
                               created_at=T0 + dt.timedelta(days=1)))  # fmt: skip
    # An older v1 output on i0 that the newest one replaces (no latency: left out of it).
    session.add(Prediction(model_version_id=versions["v1"].id, image_id=ids["i0"], score=0.1,
                           label="normal", created_at=T0))  # fmt: skip
    for key, score in V3.items():
        session.add(Prediction(model_version_id=versions["v3"].id, image_id=ids[key],
                               score=score, label="nodule" if score >= 0.5 else "normal",
                               created_at=T0))  # fmt: skip
    session.commit()
    ids.update(
        dataset=ds.id, version=ver.id, task=task.id, model=model.id,
        v1=versions["v1"].id, v2=versions["v2"].id, v3=versions["v3"].id,
    )  # fmt: skip
    return ids


@pytest.fixture
def example(session: Session) -> dict[str, int]:
    return add_model_rows(session)


def _y(keys: list[str], truth: str = "gold") -> np.ndarray:
    col = 1 if truth == "gold" else 4
    return np.array([ROWS[k][col] != "normal" for k in keys], dtype=int)


def _scores(keys: list[str], version: int) -> np.ndarray:
    return np.array([ROWS[k][version][0] for k in keys])


# --------------------------------------------------------------------------- pure metrics


def test_auc_by_hand_and_ties() -> None:
    # Positives {0.8, 0.4} vs negatives {0.3, 0.6}: 3 of 4 pairs ordered right.
    assert models.roc_auc([1, 0, 1, 0], [0.8, 0.3, 0.4, 0.6]) == 0.75
    # A tie between a positive and a negative counts one half.
    assert models.roc_auc([1, 0], [0.5, 0.5]) == 0.5
    assert math.isnan(models.roc_auc([1, 1], [0.2, 0.3]))


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(st.booleans(), st.sampled_from([0.0, 0.1, 0.25, 0.5, 0.5, 0.75, 0.9, 1.0])),
        min_size=2,
        max_size=40,
    )
)
def test_metrics_equal_sklearn(rows: list[tuple[bool, float]]) -> None:
    y = np.array([r[0] for r in rows], dtype=int)
    s = np.array([r[1] for r in rows])
    if y.min() == y.max():
        assert math.isnan(models.roc_auc(y, s))
        return
    assert models.roc_auc(y, s) == pytest.approx(roc_auc_score(y, s), abs=1e-12)
    assert models.average_precision(y, s) == pytest.approx(average_precision_score(y, s), abs=1e-12)
    for drop in (True, False):
        ours = models.roc_curve(y, s, drop_intermediate=drop)
        theirs = sk_roc_curve(y, s, drop_intermediate=drop)
        for a, b in zip(ours, theirs, strict=True):
            np.testing.assert_allclose(a, b)
    for a, b in zip(models.precision_recall_curve(y, s), sk_pr_curve(y, s), strict=True):
        np.testing.assert_allclose(a, b)


def test_metrics_equal_sklearn_on_continuous_scores() -> None:
    rng = np.random.default_rng(3)
    y = rng.random(500) < 0.3
    s = np.round(rng.random(500) + 0.4 * y, 2)  # rounding makes ties
    assert models.roc_auc(y, s) == pytest.approx(roc_auc_score(y, s), abs=1e-12)
    assert models.average_precision(y, s) == pytest.approx(average_precision_score(y, s))


def test_metric_inputs_are_validated() -> None:
    with pytest.raises(LabelDataError, match="lengths differ"):
        models.roc_auc([0, 1], [0.1])
    with pytest.raises(LabelDataError, match="0/1"):
        models.roc_auc([0, 2], [0.1, 0.2])
    with pytest.raises(LabelDataError, match="finite"):
        models.average_precision([0, 1], [0.1, float("nan")])


# --------------------------------------------------------------------------- comparison


def test_comparison_on_gold(session: Session, example: dict[str, int]) -> None:
    c = models.compare_versions(
        session, example["v1"], example["v2"], dataset_id=example["dataset"], n_boot=200
    )
    assert c.baseline.version == "v1" and c.candidate.version == "v2"
    assert c.n_cases == 8 and c.n_with_truth == 8  # i9 has no v2 score, i8 is outside
    assert c.n_scored_baseline == 9 and c.n_scored_candidate == 8
    ids = {example[k]: k for k in ROWS}
    cases = c.cases.assign(key=c.cases["image_id"].map(ids)).set_index("key")
    assert list(cases.index) == PAIRED
    # The newest v1 row of i0 wins over the older one.
    assert cases.at["i0", "score_baseline"] == 0.8
    assert cases.at["i3", "source"] == "A" and cases.at["i6", "source"] == "B"

    y = _y(PAIRED)
    m = c.metrics.set_index("role")
    assert m.at["baseline", "auc"] == pytest.approx(roc_auc_score(y, _scores(PAIRED, 2)))
    assert m.at["candidate", "auc"] == pytest.approx(roc_auc_score(y, _scores(PAIRED, 3)))
    assert m.at["candidate", "auc"] == 1.0
    assert m.at["baseline", "ap"] == pytest.approx(average_precision_score(y, _scores(PAIRED, 2)))
    assert c.delta_auc.estimate == pytest.approx(m.at["candidate", "auc"] - m.at["baseline", "auc"])
    assert c.delta_auc.low <= c.delta_auc.estimate <= c.delta_auc.high
    # v1 calls a finding on i0, i3, i4, i6, i7: sensitivity 3/4, specificity 2/4.
    assert m.at["baseline", "sensitivity"] == 0.75 and m.at["baseline", "specificity"] == 0.5

    # Agreement: 5 of 8 labels equal; κ as sklearn's.
    a = [ROWS[k][2][1] for k in PAIRED]
    b = [ROWS[k][3][1] for k in PAIRED]
    assert c.agreement.estimate == 5 / 8
    assert c.agreement.low < 5 / 8 < c.agreement.high
    assert c.kappa.estimate == pytest.approx(cohen_kappa_score(a, b))

    # Per source: A and B each 3/4 for v1, 1 for v2 (worked out in test_auc_by_hand...).
    bs = c.by_source.set_index("source")
    assert list(bs.index) == ["A", "B"]
    assert bs.at["A", "auc_baseline"] == 0.75 and bs.at["B", "auc_baseline"] == 0.75
    assert bs.at["A", "auc_candidate"] == 1.0 and bs.at["B", "delta"] == 0.25
    assert (bs["n"] == 4).all() and (bs["n_pos"] == 2).all()

    # Curves equal sklearn's.
    roc = c.roc[c.roc["role"] == "baseline"]
    fpr, tpr, _ = sk_roc_curve(y, _scores(PAIRED, 2))
    np.testing.assert_allclose(roc["fpr"], fpr)
    np.testing.assert_allclose(roc["tpr"], tpr)


def test_flipped_cases(session: Session, example: dict[str, int]) -> None:
    c = models.compare_versions(session, example["v1"], example["v2"], n_boot=50)
    flipped = c.flipped
    ids = {example[k]: k for k in ROWS}
    keys = [ids[i] for i in flipped["image_id"]]
    # Every flip here changes the finding call; sorted by image id.
    assert keys == ["i2", "i3", "i6"]
    assert flipped["finding_flip"].all()
    rec = flipped.set_index(pd.Index(keys))
    assert (
        rec.at["i2", "label_baseline"] == "normal" and rec.at["i2", "label_candidate"] == "opacity"
    )
    assert rec.at["i2", "truth_label"] == "opacity"
    assert not bool(rec.at["i2", "baseline_correct"])
    assert bool(rec.at["i2", "candidate_correct"]) and bool(rec.at["i6", "candidate_correct"])
    assert not bool(rec.at["i3", "baseline_correct"])


def test_scope_without_dataset_includes_other_images(
    session: Session, example: dict[str, int]
) -> None:
    c = models.compare_versions(session, example["v1"], example["v2"], n_boot=20)
    assert c.n_cases == 9  # i8 joins without a dataset scope
    assert c.n_with_truth == 8  # ... but has no gold label


def test_consensus_truth(session: Session, example: dict[str, int]) -> None:
    c = models.compare_versions(session, example["v1"], example["v2"], truth="consensus", n_boot=50)
    # The doctors labelled i0..i5 (unanimously): i5 is a finding by consensus, not by gold.
    labelled = PAIRED[:6]
    assert c.n_with_truth == 6
    ids = {example[k]: k for k in ROWS}
    truth = dict(zip(c.cases["image_id"].map(ids), c.cases["truth_label"], strict=True))
    assert truth["i5"] == models.FINDING and truth["i1"] == "normal"
    assert pd.isna(truth["i6"])
    y = _y(labelled, "consensus")
    m = c.metrics.set_index("role")
    assert m.at["baseline", "auc"] == pytest.approx(roc_auc_score(y, _scores(labelled, 2)))
    assert m.at["candidate", "auc"] == pytest.approx(roc_auc_score(y, _scores(labelled, 3)))


def test_latency_median_and_p95(session: Session, example: dict[str, int]) -> None:
    c = models.compare_versions(
        session, example["v1"], example["v2"], dataset_id=example["dataset"], n_boot=10
    )
    lat = c.latency.set_index("role")
    # v1 rows in the dataset with a latency: images at positions 0..7 and 9 of ROWS.
    v1 = np.sort([10.0 * (k + 1) for k, key in enumerate(ROWS) if key != "i8"])
    assert lat.at["baseline", "n"] == 9
    assert lat.at["baseline", "median_ms"] == np.median(v1)
    assert lat.at["baseline", "p95_ms"] == v1[math.ceil(0.95 * len(v1)) - 1]
    v2 = np.sort([100.0 + 10 * k for k, key in enumerate(ROWS) if key != "i8"])
    assert lat.at["candidate", "median_ms"] == np.median(v2)


def test_same_seed_same_cis(session: Session, example: dict[str, int]) -> None:
    a = models.compare_versions(session, example["v1"], example["v2"], n_boot=100, seed=7)
    b = models.compare_versions(session, example["v1"], example["v2"], n_boot=100, seed=7)
    pd.testing.assert_frame_equal(a.by_source, b.by_source)
    assert a.delta_auc == b.delta_auc and a.kappa == b.kappa


def test_bad_inputs_name_the_field(session: Session, example: dict[str, int]) -> None:
    with pytest.raises(ModelInputError, match="known: m:v1"):
        models.compare_versions(session, example["v1"], 9999)
    with pytest.raises(ModelInputError, match="differ"):
        models.compare_versions(session, example["v1"], example["v1"])
    with pytest.raises(ModelInputError, match="valid: gold, consensus"):
        models.compare_versions(session, example["v1"], example["v2"], truth="exam")  # type: ignore[arg-type]
    with pytest.raises(ModelInputError, match="classes: normal, nodule, opacity"):
        models.compare_versions(session, example["v1"], example["v2"], negative_class="none")
    with pytest.raises(ModelInputError, match="n_boot"):
        models.compare_versions(session, example["v1"], example["v2"], n_boot=0)


def test_versions_and_default_pair(session: Session, example: dict[str, int]) -> None:
    versions = models.list_model_versions(session, example["dataset"])
    assert list(versions["version"]) == ["v1", "v2", "v3"]
    counts = versions.set_index("version")
    # v1: 9 dataset images + the older row on i0; v2: 9 rows, one without a score.
    assert counts.at["v1", "n_predictions"] == 10 and counts.at["v2", "n_scored"] == 8
    assert models.default_pair(versions) == (example["v1"], example["v2"])
    assert models.default_pair(versions.iloc[:1]) is None
    assert models.resolve_model_version(session, "m:v2") == example["v2"]
    assert models.resolve_model_version(session, str(example["v3"])) == example["v3"]
    with pytest.raises(ModelInputError, match="does not exist"):
        models.resolve_model_version(session, "v7")


# --------------------------------------------------------------------------- checklist


def _with_sources(c: models.ModelComparison, rows: list[tuple[str, float, float, float]]):
    """A copy of ``c`` with a made-up per-source table (source, delta, low, high)."""
    import dataclasses

    bs = pd.DataFrame(
        [
            {"source": s, "n": 50, "delta": d, "delta_low": lo, "delta_high": hi}
            for s, d, lo, hi in rows
        ]
    )
    return dataclasses.replace(c, by_source=bs, delta_auc=CI(0.05, 0.01, 0.09))


def test_checklist_rules(session: Session, example: dict[str, int]) -> None:
    c = models.compare_versions(session, example["v1"], example["v2"], n_boot=50)
    c = _with_sources(
        c,
        [
            ("beats", 0.05, 0.01, 0.09),
            ("noninferior", 0.0, -0.015, 0.02),
            ("open", 0.0, -0.08, 0.07),
            ("worse", -0.05, -0.09, 0.01),
            ("within_margin", -0.01, -0.015, -0.005),
            ("surely_worse", -0.015, -0.03, -0.001),
        ],
    )
    items = {i.key: i for i in models.release_checklist(c, margin=0.02)}
    assert items["overall_auc"].status == "pass"
    assert items["source:beats"].status == "pass" and "beats" in items["source:beats"].detail
    assert items["source:noninferior"].status == "pass"
    assert items["source:open"].status == "inconclusive"
    assert items["source:worse"].status == "fail"
    # Worse with confidence but within the margin is still non-inferior ...
    assert items["source:within_margin"].status == "pass"
    # ... and a CI wholly below 0 that crosses the margin fails.
    assert items["source:surely_worse"].status == "fail"
    assert not models.checklist_passed(list(items.values()))


def test_checklist_new_failures_and_latency(session: Session, example: dict[str, int]) -> None:
    c = models.compare_versions(session, example["v1"], example["v2"], n_boot=50)
    ids = {k: example[k] for k in ROWS}
    # Gold cases v1 got right (finding call): i0, i1, i4, i5, i7; v2 keeps them all right.
    items = {
        i.key: i
        for i in models.release_checklist(
            c, known_problem_images=[ids["i2"], ids["i6"]], latency_budget_ms=1000
        )
    }
    assert items["gold_cases"].status == "pass" and items["gold_cases"].value == 0
    assert "among 5 gold cases" in items["gold_cases"].detail
    # Problem images: v1 got both wrong (i2 missed, i6 a false finding): nothing to keep.
    assert items["problem_images"].status == "inconclusive"
    # Swap the roles: v1 as candidate fails i2 and i6, which v2 got right.
    back = models.compare_versions(session, example["v2"], example["v1"], n_boot=50)
    items = {
        i.key: i
        for i in models.release_checklist(back, known_problem_images=[ids["i2"], ids["i6"]])
    }
    assert items["problem_images"].status == "fail"
    assert set(items["problem_images"].image_ids) == {ids["i2"], ids["i6"]}
    assert items["gold_cases"].status == "fail"
    assert set(items["gold_cases"].image_ids) == {ids["i2"], ids["i3"], ids["i6"]}
    tolerant = {i.key: i for i in models.release_checklist(back, max_new_failures=3)}
    assert tolerant["gold_cases"].status == "pass"
    # Latency: v1 as candidate is faster; v2 as candidate is ~5× slower than v1.
    assert items["latency"].status == "pass"
    slow = {i.key: i for i in models.release_checklist(c, max_latency_ratio=2.0)}
    assert slow["latency"].status == "fail" and "median too slow" in slow["latency"].detail
    over = {
        i.key: i for i in models.release_checklist(c, latency_budget_ms=50, max_latency_ratio=None)
    }
    assert over["latency"].status == "fail" and "p95 over budget" in over["latency"].detail


def test_as_dict_is_json_ready(session: Session, example: dict[str, int]) -> None:
    import json

    c = models.compare_versions(session, example["v1"], example["v2"], n_boot=20)
    doc = json.loads(json.dumps(c.as_dict()))
    assert doc["n_cases"] == 9 and len(doc["flipped_image_ids"]) == 3
    assert doc["metrics"][0]["role"] == "baseline"
    items = models.release_checklist(c)
    assert all(isinstance(json.dumps(i.as_dict()), str) for i in items)


def test_docstring_examples() -> None:
    # pytest's testpaths do not collect quality/models.py; its examples run here.
    import doctest

    failures, tried = doctest.testmod(models)
    assert tried >= 7 and failures == 0
