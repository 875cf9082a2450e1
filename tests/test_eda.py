"""Automated EDA (quality/eda.py) on SQLite and PostgreSQL, on rows checkable by hand.

The example DB (``add_rows``); dataset ``ds``, newest version v2 (v1 holds only a1):

=====  ======  =====  ==========  ===  ===  ===============  =====  =========  ======  =====
image  source  split  study date  age  sex  spacing (mm)     size   photom.    bits    kVp
=====  ======  =====  ==========  ===  ===  ===============  =====  =========  ======  =====
a1     alpha   train  2024-01-01  3    F    0.29 × 0.29      256²   MONO1      12      80
a2     alpha   train  2024-01-01  3    F    (none)           256²   MONO1      12      80
a3     alpha   val    2024-01-07  95   M    0.70 × 0.70      512²   MONO2      12      89.99
b1     beta    test   2024-01-08  —    M    0.70 × 0.72      512²   MONO2      16      —
b2     beta    test   2024-01-08  —    M    0.70 × 0.70      —×512  MONO2      16      —
u1     —       train  —           40   ''   (none)           512²   —          —       120
o1     beta    (not in the dataset)  2024-01-08, MR, age 50
=====  ======  =====  ==========  ===  ===  ===============  =====  =========  ======  =====

2024-01-07 is a Sunday: a3 falls in the week of Monday 2024-01-01. a1/a2 are CR, a3 DX (from
its study; the series has no modality), b* DX, u1 none. Manufacturer/model: a1, a2 Fuji X1;
a3 Fuji —; b* GE Y; u1 none. Software version (header): a1 "1.0", a2 no tag, a3 "", b1 "2",
b2 ["2", "3"], u1 no tag. Body part: a1, a2 CHEST (study), a3 none, b* CHEST, u1 none.

Task ``finding`` (classification), doctors D1–D3 and expert E1:

=====  ===========================  =====  ==============  =======
image  doctors' labels              gold   class           readers
=====  ===========================  =====  ==============  =======
a1     D1, D2 normal; D3 nodule     —      normal          3+
a2     D1 normal; D2 nodule         —      (tie)           2
a3     D1 nodule                    normal normal (gold)   1
b1     D1 nodule (twice); D2 nodule —      nodule          2
b2     —                            nodule nodule (gold)   0
u1     D1 with no label             —      (none)          1
o1     D1 normal (not in dataset)
=====  ===========================  =====  ==============  =======

E1 (expert) labels a1 nodule: not a vote. Task ``boxes`` (bbox) has no annotations.
Quality scores: a1 0.9, a2 a row without a score. Predictions of m/1: a1 (label), a2 (empty
row), b1 (score only); of m/2: only o1, outside the dataset.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pandas as pd
import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from quality import eda
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
    ReferenceLabel,
    Series,
    Source,
    Study,
)
from quality.db.session import make_engine
from quality.errors import DatasetNotFoundError

UTC = dt.UTC
T0 = dt.datetime(2024, 2, 1, 12, tzinfo=UTC)


def _study(
    session: Session,
    key: str,
    source: Source | None,
    *,
    modality: str | None,
    date: dt.date | None,
    age: int | None,
    sex: str | None,
    body_part: str | None,
    series: dict[str, object],
) -> Series:
    study = Study(
        study_uid=f"1.2.9.1.{key}",
        patient_key=f"p{key}",
        modality=modality,
        body_part=body_part,
        study_date=date,
        patient_age_years=age,
        patient_sex=sex,
        source_id=source.id if source else None,
    )
    session.add(study)
    session.flush()
    ser = Series(series_uid=f"1.2.9.2.{key}", study_id=study.id, **series)
    session.add(ser)
    session.flush()
    return ser


def _image(session: Session, series: Series, name: str, **fields: object) -> Image:
    img = Image(sop_uid=f"1.2.9.3.{name}", series_id=series.id, uri=f"/x/{name}.dcm", **fields)
    session.add(img)
    session.flush()
    return img


def add_rows(session: Session) -> dict[str, int]:
    """Insert the example DB of the module docstring; return ids by name."""
    alpha, beta = Source(name="alpha"), Source(name="beta")
    session.add_all([alpha, beta])
    session.flush()
    fuji = {"manufacturer": "Fuji", "model": "X1", "kvp": 80.0, "modality": "CR"}
    s1 = _study(
        session, "1", alpha, modality="CR", date=dt.date(2024, 1, 1), age=3, sex="F",
        body_part="CHEST", series=fuji,
    )  # fmt: skip
    s2 = _study(
        session, "2", alpha, modality="DX", date=dt.date(2024, 1, 7), age=95, sex="M",
        body_part=None, series={"manufacturer": "Fuji", "model": None, "kvp": 89.99},
    )  # fmt: skip
    s3 = _study(
        session, "3", beta, modality="DX", date=dt.date(2024, 1, 8), age=None, sex="M",
        body_part="CHEST", series={"manufacturer": "GE", "model": "Y", "modality": "DX"},
    )  # fmt: skip
    s4 = _study(
        session, "4", None, modality=None, date=None, age=40, sex="", body_part=None,
        series={"kvp": 120.0},
    )  # fmt: skip
    s5 = _study(
        session, "5", beta, modality="MR", date=dt.date(2024, 1, 8), age=50, sex="F",
        body_part="HEAD", series={"modality": "MR", "manufacturer": "GE", "model": "Y"},
    )  # fmt: skip
    mono1 = {"photometric": "MONOCHROME1", "bits_stored": 12, "rows": 256, "cols": 256}
    mono2 = {"photometric": "MONOCHROME2", "rows": 512, "cols": 512}
    imgs = {
        "a1": _image(
            session, s1, "a1", spacing_row=0.29, spacing_col=0.29,
            header={"SoftwareVersions": "1.0"}, **mono1,
        ),
        "a2": _image(session, s1, "a2", header={}, **mono1),
        "a3": _image(
            session, s2, "a3", spacing_row=0.7, spacing_col=0.7, bits_stored=12,
            header={"SoftwareVersions": ""}, **mono2,
        ),
        "b1": _image(
            session, s3, "b1", spacing_row=0.7, spacing_col=0.72, bits_stored=16,
            header={"SoftwareVersions": "2"}, **mono2,
        ),
        "b2": _image(
            session, s3, "b2", spacing_row=0.7, spacing_col=0.7, bits_stored=16,
            header={"SoftwareVersions": ["2", "3"]}, photometric="MONOCHROME2", cols=512,
        ),
        "u1": _image(session, s4, "u1", rows=512, cols=512, header={}),
        "o1": _image(
            session, s5, "o1", header={"SoftwareVersions": "9"}, bits_stored=12, **mono2
        ),
    }  # fmt: skip
    ds = Dataset(name="ds")
    bare = Dataset(name="bare")
    session.add_all([ds, bare])
    session.flush()
    v1 = DatasetVersion(dataset_id=ds.id, version="v1", content_hash="1" * 64, created_at=T0)
    v2 = DatasetVersion(
        dataset_id=ds.id, version="v2", content_hash="2" * 64, created_at=T0 + dt.timedelta(1)
    )
    session.add_all([v1, v2])
    session.flush()
    session.add(DatasetItem(version_id=v1.id, image_id=imgs["a1"].id, split="val"))
    splits = {"a1": "train", "a2": "train", "a3": "val", "b1": "test", "b2": "test", "u1": "train"}
    for name, split in splits.items():
        session.add(DatasetItem(version_id=v2.id, image_id=imgs[name].id, split=split))

    finding = LabelingTask(
        dataset_id=ds.id, name="finding", kind="classification", classes=["normal", "nodule"]
    )
    boxes = LabelingTask(dataset_id=ds.id, name="boxes", kind="bbox", classes=["nodule"])
    docs = [Annotator(code=f"D{i}", kind="doctor") for i in (1, 2, 3)]
    expert = Annotator(code="E1", kind="expert")
    session.add_all([finding, boxes, *docs, expert])
    session.flush()
    votes = [
        ("a1", 0, "normal"), ("a1", 1, "normal"), ("a1", 2, "nodule"),
        ("a2", 0, "normal"), ("a2", 1, "nodule"),
        ("a3", 0, "nodule"),
        ("b1", 0, "nodule"), ("b1", 0, "nodule"), ("b1", 1, "nodule"),
        ("u1", 0, None),
        ("o1", 0, "normal"),
    ]  # fmt: skip
    for name, doc, label in votes:
        session.add(
            Annotation(
                task_id=finding.id, image_id=imgs[name].id, annotator_id=docs[doc].id,
                label=label, created_at=T0,
            )
        )  # fmt: skip
    session.add(
        Annotation(
            task_id=finding.id, image_id=imgs["a1"].id, annotator_id=expert.id,
            label="nodule", created_at=T0,
        )
    )  # fmt: skip
    for name, label in (("a3", "normal"), ("b2", "nodule")):
        session.add(
            ReferenceLabel(task_id=finding.id, image_id=imgs[name].id, kind="gold", label=label)
        )
    session.add_all(
        [
            ImageQuality(image_id=imgs["a1"].id, scorer_version="s1", quality_score=0.9),
            ImageQuality(image_id=imgs["a2"].id, scorer_version="s1", quality_score=None),
        ]
    )
    model = Model(name="m", task_id=finding.id)
    session.add(model)
    session.flush()
    mv1 = ModelVersion(model_id=model.id, version="1", status="production")
    mv2 = ModelVersion(model_id=model.id, version="2", status="shadow")
    session.add_all([mv1, mv2])
    session.flush()
    preds = [
        (mv1, "a1", "normal", 0.1), (mv1, "a2", None, None), (mv1, "b1", None, 0.2),
        (mv2, "o1", "normal", 0.3),
    ]  # fmt: skip
    for mv, name, label, score in preds:
        session.add(
            Prediction(
                model_version_id=mv.id, image_id=imgs[name].id, label=label, score=score,
                created_at=T0,
            )
        )  # fmt: skip
    session.commit()
    return {"ds": ds.id, "bare": bare.id, **{k: v.id for k, v in imgs.items()}}


@pytest.fixture
def ids(session: Session) -> dict[str, int]:
    return add_rows(session)


def _counts(df: pd.DataFrame) -> dict[tuple[str, str], int]:
    return {(s, v): int(n) for s, v, n in df[["source", "value", "n_images"]].itertuples(False)}


# --------------------------------------------------------------------------- distributions


def test_distributions_by_hand(session: Session, ids: dict[str, int]) -> None:
    ds = ids["ds"]
    unk = eda.UNKNOWN_SOURCE
    miss = eda.MISSING
    expected = {
        "source": {("alpha", "alpha"): 3, ("beta", "beta"): 2, (unk, unk): 1},
        "vendor": {
            ("alpha", "Fuji · X1"): 2, ("alpha", "Fuji · ?"): 1, ("beta", "GE · Y"): 2,
            (unk, miss): 1,
        },
        "modality": {("alpha", "CR"): 2, ("alpha", "DX"): 1, ("beta", "DX"): 2, (unk, miss): 1},
        "study_week": {("alpha", "2024-01-01"): 3, ("beta", "2024-01-08"): 2, (unk, miss): 1},
        "patient_age": {
            ("alpha", "0–9"): 2, ("alpha", "90+"): 1, ("beta", miss): 2, (unk, "40–49"): 1,
        },
        "patient_sex": {("alpha", "F"): 2, ("alpha", "M"): 1, ("beta", "M"): 2, (unk, miss): 1},
        "pixel_spacing": {
            ("alpha", "0.29"): 1, ("alpha", "0.70"): 1, ("alpha", miss): 1,
            ("beta", "0.70 × 0.72"): 1, ("beta", "0.70"): 1, (unk, miss): 1,
        },
        "image_size": {
            ("alpha", "256×256"): 2, ("alpha", "512×512"): 1, ("beta", "512×512"): 1,
            ("beta", miss): 1, (unk, "512×512"): 1,
        },
        "photometric": {
            ("alpha", "MONOCHROME1"): 2, ("alpha", "MONOCHROME2"): 1, ("beta", "MONOCHROME2"): 2,
            (unk, miss): 1,
        },
        "bits_stored": {("alpha", "12"): 3, ("beta", "16"): 2, (unk, miss): 1},
        "kvp": {("alpha", "80–90"): 3, ("beta", miss): 2, (unk, "120–130"): 1},
    }  # fmt: skip
    assert set(expected) == set(eda.DISTRIBUTIONS)
    for name, counts in expected.items():
        df = eda.distribution(session, name, ds)
        assert list(df.columns) == eda.DISTRIBUTION_COLUMNS
        assert _counts(df) == counts, name
        shares = df.groupby("source")["share"].sum()
        assert shares.round(12).eq(1.0).all(), name
    # Bins ascend and the missing value comes last.
    ages = list(dict.fromkeys(eda.distribution(session, "patient_age", ds)["value"]))
    assert ages == ["0–9", "40–49", "90+", miss]
    weeks = list(dict.fromkeys(eda.distribution(session, "study_week", ds)["value"]))
    assert weeks == ["2024-01-01", "2024-01-08", miss]
    share = eda.distribution(session, "photometric", ds).set_index(["source", "value"])["share"]
    assert share[("alpha", "MONOCHROME1")] == pytest.approx(2 / 3)


def test_all_images_include_those_in_no_dataset(session: Session, ids: dict[str, int]) -> None:
    df = eda.distribution(session, "modality", None)
    assert _counts(df)[("beta", "MR")] == 1
    assert int(df["n_images"].sum()) == 7
    ages = _counts(eda.distribution(session, "patient_age", None))
    assert ages[("beta", "50–59")] == 1


def test_newest_version_only(session: Session, ids: dict[str, int]) -> None:
    # v1 holds a1 alone; a newer v3 holding only b1 becomes the scope.
    v3 = DatasetVersion(
        dataset_id=ids["ds"], version="v3", content_hash="3" * 64,
        created_at=T0 + dt.timedelta(days=5),
    )  # fmt: skip
    session.add(v3)
    session.flush()
    session.add(DatasetItem(version_id=v3.id, image_id=ids["b1"], split="train"))
    session.commit()
    df = eda.distribution(session, "source", ids["ds"])
    assert _counts(df) == {("beta", "beta"): 1}
    assert eda.profile(session, ids["ds"]).version_id == v3.id


def test_bad_input(session: Session, ids: dict[str, int]) -> None:
    with pytest.raises(ValueError, match=r"unknown distribution 'colour'.*photometric"):
        eda.distribution(session, "colour", ids["ds"])
    with pytest.raises(DatasetNotFoundError, match=r"unknown dataset '999'.*bare, ds"):
        eda.profile(session, 999)


def test_dataset_without_version_is_empty(session: Session, ids: dict[str, int]) -> None:
    prof = eda.profile(session, ids["bare"])
    assert prof.is_empty and prof.n_images == 0 and prof.facts == ()
    assert eda.distribution(session, "kvp", ids["bare"]).empty
    assert eda.class_balance(session, ids["bare"]).empty
    assert eda.missing_by_source(session, ids["bare"]).empty
    json.dumps(prof.as_dict())


def test_empty_db(session: Session) -> None:
    prof = eda.profile(session, None)
    assert prof.is_empty and prof.distributions == {}
    assert eda.distribution(session, "source").empty
    assert eda.annotation_coverage(session).empty


# --------------------------------------------------------------------------- labels


def test_class_balance_gold_then_majority(session: Session, ids: dict[str, int]) -> None:
    df = eda.class_balance(session, ids["ds"])
    assert list(df.columns) == eda.CLASS_BALANCE_COLUMNS
    got = {
        (r.task, r.source, r.split, r.label): (r.n_images, r.n_gold)
        for r in df.itertuples(index=False)
    }
    assert got == {
        ("finding", "alpha", "train", "normal"): (1, 0),
        ("finding", "alpha", "train", eda.TIE): (1, 0),
        ("finding", "alpha", "val", "normal"): (1, 1),
        ("finding", "beta", "test", "nodule"): (2, 1),
    }
    # All images: o1 is in no dataset version, so no task covers it.
    assert eda.class_balance(session, None).equals(df)


def test_annotation_coverage(session: Session, ids: dict[str, int]) -> None:
    df = eda.annotation_coverage(session, ids["ds"])
    assert list(df.columns) == eda.COVERAGE_COLUMNS
    finding = df[df["task"] == "finding"]
    got = {(r.source, r.split, r.readers): r.n_images for r in finding.itertuples(index=False)}
    assert got == {
        ("alpha", "train", "2"): 1,
        ("alpha", "train", "3+"): 1,
        ("alpha", "val", "1"): 1,
        ("beta", "test", "0"): 1,
        ("beta", "test", "2"): 1,
        (eda.UNKNOWN_SOURCE, "train", "1"): 1,
    }
    boxes = df[df["task"] == "boxes"]
    assert set(boxes["readers"]) == {"0"} and int(boxes["n_images"].sum()) == 6


# --------------------------------------------------------------------------- missing values


def _missing(df: pd.DataFrame, by: str) -> dict[tuple[str, str], int]:
    return {(g, f): int(n) for g, f, n in df[[by, "field", "n_missing"]].itertuples(False)}


def test_missing_by_source(session: Session, ids: dict[str, int]) -> None:
    df = eda.missing_by_source(session, ids["ds"])
    fields = [*eda.MISSING_FIELDS, "predictions m 1"]  # m/2 predicts only outside the dataset
    assert list(dict.fromkeys(df["field"])) == fields
    expected = {
        "alpha": dict(body_part=1, pixel_spacing=1, model=1, software_version=2,
                      quality_score=2, **{"predictions m 1": 2}),
        "beta": dict(patient_age=2, kvp=2, image_size=1, quality_score=2,
                     **{"predictions m 1": 1}),
        eda.UNKNOWN_SOURCE: dict(modality=1, body_part=1, study_date=1, patient_sex=1,
                                 pixel_spacing=1, manufacturer=1, model=1, software_version=1,
                                 quality_score=1, **{"predictions m 1": 1}),
    }  # fmt: skip
    got = _missing(df, "source")
    for source, missing in expected.items():
        for name in fields:
            assert got[(source, name)] == missing.get(name, 0), (source, name)
    n = df.drop_duplicates("source").set_index("source")["n_images"]
    assert n.to_dict() == {"alpha": 3, "beta": 2, eda.UNKNOWN_SOURCE: 1}
    row = df[(df["source"] == "alpha") & (df["field"] == "software_version")].iloc[0]
    assert row["share_missing"] == pytest.approx(2 / 3)


def test_missing_by_week_and_matrix(session: Session, ids: dict[str, int]) -> None:
    df = eda.missing_by_week(session, ids["ds"])
    assert list(dict.fromkeys(df["week"])) == ["2024-01-01", "2024-01-08", eda.MISSING]
    got = _missing(df, "week")
    assert got[("2024-01-01", "software_version")] == 2
    assert got[("2024-01-08", "kvp")] == 2
    assert got[(eda.MISSING, "study_date")] == 1
    matrix = eda.missing_matrix(df, "week")
    assert list(matrix.columns) == ["2024-01-01", "2024-01-08", eda.MISSING]
    assert matrix.index[0] == "modality"
    assert matrix.shape == (len(eda.MISSING_FIELDS) + 1, 3)
    assert matrix.loc["patient_age", "2024-01-08"] == 1.0
    assert eda.missing_matrix(df.iloc[0:0]).empty


def test_all_images_list_every_model_version(session: Session, ids: dict[str, int]) -> None:
    df = eda.missing_by_source(session, None)
    got = _missing(df, "source")
    assert got[("beta", "predictions m 2")] == 2  # b1, b2 lack it; o1 has it
    assert got[("beta", "predictions m 1")] == 2  # b2 and o1


# --------------------------------------------------------------------------- profile and facts


def test_profile_bundles_the_builders(session: Session, ids: dict[str, int]) -> None:
    prof = eda.profile(session, ids["ds"])
    assert prof.n_images == 6 and not prof.is_empty
    assert prof.sources == ["(unknown)", "alpha", "beta"]
    pd.testing.assert_frame_equal(
        prof.distributions["kvp"], eda.distribution(session, "kvp", ids["ds"])
    )
    pd.testing.assert_frame_equal(prof.class_balance, eda.class_balance(session, ids["ds"]))
    pd.testing.assert_frame_equal(prof.missing_by_week, eda.missing_by_week(session, ids["ds"]))
    messages = [f.message for f in prof.facts]
    assert "2 images (33%) have no patient age — all at beta" in messages
    assert "1 image (17%) has no modality — at (unknown)" in messages
    assert "4 images (67%) have no prediction of m 1" in messages
    assert "task 'finding': 3 images (50%) have fewer than 2 readers (1 with none)" in messages
    assert "task 'boxes': 6 images (100%) have fewer than 2 readers (6 with none)" in messages
    # Sources of 3 images are below the floors of the other rules.
    assert {f.rule for f in prof.facts} == {"missing", "coverage"}
    doc = json.loads(json.dumps(prof.as_dict()))
    assert doc["n_images"] == 6 and doc["version_id"] == prof.version_id
    assert set(doc["distributions"]) == set(eda.DISTRIBUTIONS)
    assert {"source": "alpha", "value": "90+", "n_images": 1, "share": 1 / 3} in doc[
        "distributions"
    ]["patient_age"]
    assert doc["facts"][0].keys() == {"rule", "message", "field", "subject", "value"}
    assert eda.eda_profile is eda.profile


def _dist(rows: list[tuple[str, str, int]]) -> pd.DataFrame:
    df = pd.DataFrame(rows, columns=["source", "value", "n_images"])
    df["share"] = df["n_images"] / df.groupby("source")["n_images"].transform("sum")
    return df


def _balance(rows: list[tuple[str, str, str, int]]) -> pd.DataFrame:
    df = pd.DataFrame(rows, columns=["source", "split", "label", "n_images"])
    return df.assign(task="finding", n_gold=0)[eda.CLASS_BALANCE_COLUMNS]


def test_source_exclusive_rule() -> None:
    dists = {
        "photometric": _dist(
            [("west", "MONOCHROME1", 12), ("north", "MONOCHROME2", 20), ("south", "MONOCHROME2", 9),
             ("south", "MONOCHROME1", 1)]
        ),
        # 95 % at "north", but 10 % elsewhere: not exclusive.
        "modality": _dist(
            [("north", "DX", 19), ("north", "CR", 1), ("west", "DX", 2), ("west", "CR", 10),
             ("south", "CR", 10)]
        ),
    }  # fmt: skip
    facts = eda.notable_facts(dists, _balance([]).iloc[0:0], pd.DataFrame(), pd.DataFrame())
    assert [f.message for f in facts] == ["west is 100% MONOCHROME1 (3% at the other sources)"]
    assert (facts[0].rule, facts[0].field, facts[0].subject) == (
        "source_exclusive",
        "photometric",
        "west",
    )


def test_class_rarity_rule() -> None:
    balance = _balance(
        [("A", "train", "normal", 36), ("A", "train", "opacity", 4),
         ("B", "train", "normal", 28), ("B", "test", "opacity", 12),
         ("C", "train", "normal", 9),  # fewer than 10 images: no claim about C
         ("A", "test", eda.TIE, 50)]  # ties take no part
    )  # fmt: skip
    facts = eda.notable_facts({}, balance, pd.DataFrame(), pd.DataFrame())
    messages = [f.message for f in facts]
    # A: 4/40 = 10 % vs B+C 12/49 = 24.5 %: 2.4× rarer (12 expected at A's size ≥ 5).
    assert "class 'opacity' (task 'finding') is 2.4× rarer at A: 10% vs 24% elsewhere" in messages
    # B: 12/40 = 30 % vs 4/49 = 8 %: 3.7× more common.
    assert (
        "class 'opacity' (task 'finding') is 3.7× more common at B: 30% vs 8% elsewhere" in messages
    )
    # Splits: test holds all 12 opacities of 12 test images vs 4 of 77 in train.
    assert any(m.endswith("19.2× more common in test: 100% vs 5% elsewhere") for m in messages)
    assert not any(" at C" in m for m in messages)
    assert all(f.rule == "class_rarity" for f in facts)


def test_absent_class_rule() -> None:
    balance = _balance(
        [("A", "train", "normal", 20), ("B", "train", "normal", 20),
         ("B", "train", "nodule", 20)]
    )  # fmt: skip
    facts = eda.notable_facts({}, balance, pd.DataFrame(), pd.DataFrame())
    assert "class 'nodule' (task 'finding') is absent at A (50% elsewhere)" in [
        f.message for f in facts
    ]


# --------------------------------------------------------------------------- demo


def test_profile_of_the_tiny_demo(tiny_demo: Path) -> None:
    truth = json.loads((tiny_demo / "demo_truth.json").read_text())
    images = {
        uid: rec
        for uid, rec in truth["images"].items()
        if "truncated" not in rec["defects"]  # an ingest error, not an image
    }
    engine = make_engine(f"sqlite:///{tiny_demo / 'demo.db'}")
    with Session(engine) as session:
        dataset_id = session.scalar(select(Dataset.id).where(Dataset.name == "chest-xray-demo"))
        prof = eda.profile(session, dataset_id)
        everything = eda.profile(session, None)
        items = dict(
            session.execute(
                select(DatasetItem.split, func.count())
                .where(DatasetItem.version_id == prof.version_id)
                .group_by(DatasetItem.split)
            ).all()
        )
    engine.dispose()

    in_dataset = [r for r in images.values() if r["in_dataset"]]
    by_source = pd.Series([r["source"] for r in in_dataset]).value_counts().to_dict()
    sources = prof.distributions["source"].set_index("source")["n_images"].to_dict()
    assert sources == by_source and prof.n_images == len(in_dataset)
    all_sources = everything.distributions["source"].set_index("source")["n_images"]
    assert (
        all_sources.to_dict()
        == pd.Series([r["source"] for r in images.values()]).value_counts().to_dict()
    )

    # west_center is the MONOCHROME1 site: all its dataset images, and a notable fact.
    photometric = prof.distributions["photometric"]
    west = photometric[photometric["source"] == "west_center"].set_index("value")["share"]
    assert west.to_dict() == {"MONOCHROME1": 1.0}
    assert any(
        f.rule == "source_exclusive" and f.subject == "west_center" and "MONOCHROME1" in f.message
        for f in prof.facts
    )

    # Every dataset image counts once per task; the splits match the truth and the DB.
    truth_splits = pd.Series([r["split"] for r in in_dataset]).value_counts().to_dict()
    assert items == truth_splits
    for _task, rows in prof.coverage.groupby("task"):
        assert rows.groupby("split")["n_images"].sum().to_dict() == truth_splits
    # Every dataset image has 2-3 doctors per task (the exam set: all of them).
    assert set(prof.coverage["readers"]) <= {"2", "3+"}
    balance = prof.class_balance.groupby("split")["n_images"].sum().to_dict()
    assert balance == truth_splits  # every image has a gold label or doctors' votes

    # The missing-tags defect without a pixel spacing shows in the missing-value map.
    spacing = prof.missing_by_source[prof.missing_by_source["field"] == "pixel_spacing"]
    for rec in truth["defects"]["missing_tags"]:
        image = truth["images"][rec["sop_uid"]]
        if "PixelSpacing" in rec["tags"] and image["in_dataset"]:
            row = spacing[spacing["source"] == image["source"]]
            assert int(row["n_missing"].iloc[0]) >= 1
    weeks = prof.distributions["study_week"]
    assert int(weeks["n_images"].sum()) == prof.n_images
    start = dt.date.fromisoformat(truth["date_range"]["start"])
    end = dt.date.fromisoformat(truth["date_range"]["end"])
    mondays = [dt.date.fromisoformat(v) for v in weeks["value"] if v != eda.MISSING]
    assert mondays == sorted(mondays)
    assert all(d.weekday() == 0 and start - dt.timedelta(6) <= d <= end for d in mondays)
    dates = [dt.date.fromisoformat(r["study_date"]) for r in in_dataset if r["study_date"]]
    assert min(mondays) == min(dates) - dt.timedelta(min(dates).weekday())
