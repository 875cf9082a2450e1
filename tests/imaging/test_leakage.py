"""Leakage across splits (quality/imaging/leakage.py).

Hand-made rows (SQLite and PostgreSQL), checkable by hand:

=====  =======  ======================  ======================
image  patient  v1 split                v2 split (newest)
=====  =======  ======================  ======================
a1     p1       train                   train
a2     p1       test                    train
b1     p2       train                   val
b2     p2       val                     test
c1     p3       val                     val
d1     p4       (not in the dataset)    (not in the dataset)
=====  =======  ======================  ======================

v1 leaks p1 (train, test) and p2 (train, val); v2 leaks p2 (test, val) only.

On the tiny demo, the seeded ``defects.patient_leak`` must be found (recall 1) and nothing
else flagged (precision 1): the demo splits by patient everywhere else.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from conftest import copy_demo_db
from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from quality.db.schema import Dataset, DatasetItem, DatasetVersion, Image, Series, Study
from quality.db.session import make_engine
from quality.imaging.duplicates import exact_duplicates
from quality.imaging.leakage import (
    DUPLICATE_LEAK_COLUMNS,
    PATIENT_LEAK_COLUMNS,
    duplicate_leakage,
    leakage_report,
    patient_leakage,
)

SPLITS = {
    "a1": ("p1", "train", "train"),
    "a2": ("p1", "test", "train"),
    "b1": ("p2", "train", "val"),
    "b2": ("p2", "val", "test"),
    "c1": ("p3", "val", "val"),
    "d1": ("p4", None, None),
}


def _add_rows(session: Session) -> dict[str, Any]:
    images: dict[str, Image] = {}
    for key, (patient, _, _) in SPLITS.items():
        study = Study(study_uid=f"st-{key}", patient_key=patient)
        series = Series(series_uid=f"se-{key}", study=study)
        images[key] = Image(sop_uid=f"sop-{key}", series=series, uri=f"/s/{key}.dcm")
        session.add_all([study, series, images[key]])
    ds = Dataset(name="d")
    session.add(ds)
    session.flush()
    t0 = dt.datetime(2024, 1, 1, tzinfo=dt.UTC)
    v1 = DatasetVersion(dataset_id=ds.id, version="v1", content_hash="1" * 64, created_at=t0)
    v2 = DatasetVersion(
        dataset_id=ds.id, version="v2", content_hash="2" * 64, created_at=t0 + dt.timedelta(1)
    )
    session.add_all([v1, v2])
    session.flush()
    for key, (_, s1, s2) in SPLITS.items():
        if s1 is not None:
            session.add(DatasetItem(version_id=v1.id, image_id=images[key].id, split=s1))
            session.add(DatasetItem(version_id=v2.id, image_id=images[key].id, split=s2))
    session.commit()
    return {"ids": {k: v.id for k, v in images.items()}, "dataset": ds.id, "v1": v1.id, "v2": v2.id}


def test_patient_leakage_by_version(session: Session) -> None:
    rows = _add_rows(session)
    out = patient_leakage(session, rows["v1"])
    assert out.columns.tolist() == PATIENT_LEAK_COLUMNS
    assert out["patient_key"].tolist() == ["p1", "p1", "p2", "p2"]
    assert out["sop_uid"].tolist() == ["sop-a2", "sop-a1", "sop-b1", "sop-b2"]  # by split
    assert out["split"].tolist() == ["test", "train", "train", "val"]
    assert out["splits"].tolist() == ["test,train", "test,train", "train,val", "train,val"]
    assert out["n_splits"].tolist() == [2, 2, 2, 2] and out["is_patient_leak_issue"].all()


def test_patient_leakage_defaults_to_newest_version(session: Session) -> None:
    rows = _add_rows(session)
    out = patient_leakage(session, dataset_id=rows["dataset"])
    assert out["patient_key"].tolist() == ["p2", "p2"]
    assert out["splits"].tolist() == ["test,val", "test,val"]
    assert out.equals(patient_leakage(session, rows["v2"]))


def test_patient_leakage_needs_a_version(session: Session) -> None:
    rows = _add_rows(session)
    with pytest.raises(ValueError, match="version_id or dataset_id"):
        patient_leakage(session)
    with pytest.raises(ValueError, match="belongs to dataset"):
        patient_leakage(session, rows["v1"], dataset_id=rows["dataset"] + 1)
    with pytest.raises(ValueError, match="does not exist"):
        patient_leakage(session, 12345)


def test_no_leak_gives_an_empty_frame(session: Session) -> None:
    rows = _add_rows(session)
    session.execute(
        delete(DatasetItem).where(
            DatasetItem.version_id == rows["v2"],
            DatasetItem.image_id.in_([rows["ids"]["b1"], rows["ids"]["b2"]]),
        )
    )
    session.commit()
    out = patient_leakage(session, rows["v2"])
    assert out.empty and out.columns.tolist() == PATIENT_LEAK_COLUMNS


def test_duplicate_leakage(session: Session) -> None:
    rows = _add_rows(session)
    ids = rows["ids"]
    clusters = pd.DataFrame(
        {
            "cluster_id": [0, 0, 1, 1, 2, 2],
            "image_id": [ids[k] for k in ("a1", "c1", "a2", "b1", "b2", "d1")],
            "kind": ["near", "near", "exact", "exact", "near", "near"],
        }
    )
    out = duplicate_leakage(session, rows["v1"], clusters)
    assert out.columns.tolist() == DUPLICATE_LEAK_COLUMNS
    # Cluster 0: train + val; cluster 1: test + train; cluster 2: d1 is not in the dataset.
    assert out["cluster_id"].tolist() == [0, 0, 1, 1]
    assert out["sop_uid"].tolist() == ["sop-a1", "sop-c1", "sop-a2", "sop-b1"]
    assert out["splits"].tolist() == ["train,val", "train,val", "test,train", "test,train"]
    assert out["kind"].tolist() == ["near", "near", "exact", "exact"]
    # In v2 cluster 1 sits in train and val, cluster 0 in train and val.
    v2 = duplicate_leakage(session, None, clusters, dataset_id=rows["dataset"])
    assert v2["cluster_id"].unique().tolist() == [0, 1]
    with pytest.raises(ValueError, match="missing column"):
        duplicate_leakage(session, rows["v1"], clusters.drop(columns="cluster_id"))
    empty = duplicate_leakage(session, rows["v1"], clusters.iloc[:0])
    assert empty.empty and empty.columns.tolist() == DUPLICATE_LEAK_COLUMNS


def test_leakage_report(session: Session) -> None:
    rows = _add_rows(session)
    ids = rows["ids"]
    clusters = pd.DataFrame({"cluster_id": [7, 7], "image_id": [ids["a1"], ids["a2"]]})
    report = leakage_report(session, rows["v1"], duplicates=clusters)
    assert not report.passed
    assert report.n_leaking_patients == 2 and report.n_leaking_clusters == 1
    d = report.as_dict()
    assert json.loads(json.dumps(d)) == d
    assert d["patients"][0] == {
        "patient_key": "p1",
        "splits": ["test", "train"],
        "sop_uids": ["sop-a2", "sop-a1"],
    }
    assert d["duplicates"][0]["kinds"] == ["exact"] and d["duplicates"][0]["cluster_id"] == 7
    bare = leakage_report(session, dataset_id=rows["dataset"])
    assert bare.version_id == rows["v2"] and bare.duplicates.empty


# --------------------------------------------------------------------------- the demo


def test_demo_patient_leak(tiny_demo: Path, tmp_path: Path) -> None:
    truth = json.loads((tiny_demo / "demo_truth.json").read_text())
    leaks = truth["defects"]["patient_leak"]
    true_keys = {r["patient_key"] for r in leaks}
    true_sops = {s for r in leaks for s in r["sop_uids"]}
    engine = make_engine(copy_demo_db(tiny_demo, tmp_path))
    with Session(engine) as session:
        dataset_id = session.scalar(select(Dataset.id).where(Dataset.name == "chest-xray-demo"))
        report = leakage_report(
            session, dataset_id=dataset_id, duplicates=exact_duplicates(session)
        )
    engine.dispose()
    found_keys = set(report.patients["patient_key"])
    found_sops = set(report.patients["sop_uid"])
    recall = len(found_keys & true_keys) / len(true_keys)
    precision = len(found_keys & true_keys) / len(found_keys) if found_keys else 0.0
    print(f"\npatient leakage (SQL): recall {recall:.2f}, precision {precision:.2f} "
          f"({len(found_keys)} patient(s), {len(found_sops)} images)")  # fmt: skip
    assert recall == 1.0 and precision == 1.0, (recall, precision)
    assert found_sops == true_sops
    splits = {tuple(r["splits"]) for r in leaks}
    assert {tuple(s.split(",")) for s in report.patients["splits"]} == splits
    # The seeded duplicates are re-sent into the same study: same patient, same split.
    assert report.duplicates.empty
