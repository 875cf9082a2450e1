"""The Image quality page's read side (quality/imaging/report.py), SQLite and PostgreSQL.

Hand-made rows, checkable by hand (scorer ``iqa-v1``; dataset ``ds``, newest version v2):

=====  ======  ============  ========  =======  =========  =====  =====  =====  ======
image  source  manufacturer  modality  quality  defect     ood    sharp  split  in v2
=====  ======  ============  ========  =======  =========  =====  =====  =====  ======
a      A       GE            CR        0.90     clean      0.5 n  100    train  yes
b      A       GE            CR        0.20     blur       2.0 n  10     train  yes
c      B       Siemens       DX        0.40     noise      9.0 y  80     val    yes
d      B       (series NULL  DX        0.10     blur       1.0 n  5      test   yes
               → source Fuji)
e      B       Siemens       DX        NULL     unreadable NULL   NULL   test   yes
f      A       GE            CR        0.05     blur       0.1 n  1      —      no
=====  ======  ============  ========  =======  =========  =====  =====  =====  ======

An older scorer version ``iqa-v0`` has one row (image a), scored earlier.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from quality.db.schema import (
    Dataset,
    DatasetItem,
    DatasetVersion,
    Image,
    ImageQuality,
    Series,
    Source,
    Study,
)
from quality.imaging import report

ROWS = {
    # key: (source, series manufacturer, modality, quality, defect, ood, is_ood, sharpness, split)
    "a": ("A", "GE", "CR", 0.90, "clean", 0.5, False, 100.0, "train"),
    "b": ("A", "GE", "CR", 0.20, "blur", 2.0, False, 10.0, "train"),
    "c": ("B", "Siemens", "DX", 0.40, "noise", 9.0, True, 80.0, "val"),
    "d": ("B", None, "DX", 0.10, "blur", 1.0, False, 5.0, "test"),
    "e": ("B", "Siemens", "DX", None, "unreadable", None, None, None, "test"),
    "f": ("A", "GE", "CR", 0.05, "blur", 0.1, False, 1.0, None),
}
T0 = dt.datetime(2025, 1, 1, tzinfo=dt.UTC)


def _seed(session: Session, *, scored: bool = True) -> dict[str, int]:
    sources = {"A": Source(name="A", manufacturer="GE"), "B": Source(name="B", manufacturer="Fuji")}
    ds = Dataset(name="ds")
    v1 = DatasetVersion(dataset=ds, version="1", content_hash="h1", created_at=T0)
    v2 = DatasetVersion(dataset=ds, version="2", content_hash="h2", created_at=T0 + dt.timedelta(1))
    session.add_all([*sources.values(), ds, v1, v2])
    ids: dict[str, int] = {}
    for i, (key, (src, man, mod, q, defect, ood, is_ood, sharp, split)) in enumerate(ROWS.items()):
        study = Study(study_uid=f"st-{key}", patient_key=f"p-{key}", modality=mod)
        study.source = sources[src]
        series = Series(series_uid=f"se-{key}", study=study, modality=mod, manufacturer=man)
        image = Image(sop_uid=f"sop-{key}", series=series, uri=f"/nowhere/{key}.dcm")
        session.add(image)
        session.flush()
        ids[key] = image.id
        session.add(DatasetItem(version_id=v1.id, image_id=image.id, split="train"))
        if split is not None:
            session.add(DatasetItem(version_id=v2.id, image_id=image.id, split=split))
        if scored:
            session.add(
                ImageQuality(
                    image_id=image.id, scorer_version="iqa-v1", quality_score=q,
                    defect_type=defect, ood_score=ood, is_ood=is_ood, sharpness=sharp,
                    noise_sigma=None if sharp is None else 1.0 + i,
                    entropy=None if sharp is None else 3.0 * i, scored_at=T0 + dt.timedelta(days=10),
                )
            )  # fmt: skip
    if scored:
        session.add(
            ImageQuality(
                image_id=ids["a"],
                scorer_version="iqa-v0",
                quality_score=0.5,
                defect_type="clean",
                scored_at=T0,
            )
        )
    ids["dataset"] = ds.id
    session.commit()
    return ids


def test_report_headline(session: Session) -> None:
    ids = _seed(session)
    rep = report.build_image_quality_report(session, dataset_id=ids["dataset"])
    assert not rep.is_empty
    assert rep.scorer_version == "iqa-v1"
    assert list(rep.versions["scorer_version"]) == ["iqa-v1", "iqa-v0"]
    assert rep.n_images == 5 and rep.n_unreadable == 1 and rep.n_ood == 1
    assert rep.mean_quality == pytest.approx((0.9 + 0.2 + 0.4 + 0.1) / 4)
    assert rep.defect_types[0] == "blur"
    blur = rep.defects.set_index("defect_type").loc["blur"]
    assert blur["n_images"] == 2 and blur["mean_quality"] == pytest.approx(0.15)
    # The whole store: image f counts too; an explicit older scorer version.
    assert report.build_image_quality_report(session).n_images == 6
    old = report.build_image_quality_report(
        session, dataset_id=ids["dataset"], scorer_version="iqa-v0"
    )
    assert old.n_images == 1 and old.scorer_version == "iqa-v0"


def test_metric_distributions(session: Session) -> None:
    ids = _seed(session)
    vals = report.metric_values(session, "sharpness", dataset_id=ids["dataset"])
    assert list(vals.columns) == ["image_id", "source", "manufacturer", "modality", "value"]
    # e has no sharpness (unreadable), f is not in the newest version.
    assert list(vals["image_id"]) == [ids[k] for k in "abcd"]
    by_id = vals.set_index("image_id")
    assert by_id.loc[ids["d"], "manufacturer"] == "Fuji"  # series NULL → the source's vendor
    assert by_id.loc[ids["c"], "manufacturer"] == "Siemens"
    summary = report.metric_summary(session, "sharpness", "source", dataset_id=ids["dataset"])
    assert list(summary["group"]) == ["A", "B"]
    a = summary.set_index("group").loc["A"]
    assert (a["n"], a["mean"], a["min"], a["max"]) == (2, 55.0, 10.0, 100.0)
    mod = report.metric_summary(session, "quality_score", "modality", dataset_id=ids["dataset"])
    assert dict(zip(mod["group"], mod["n"], strict=True)) == {"CR": 2, "DX": 2}
    with pytest.raises(ValueError, match="valid metrics: sharpness"):
        report.metric_values(session, "nope")
    with pytest.raises(ValueError, match="valid: source"):
        report.metric_summary(session, "snr", "site")  # type: ignore[arg-type]


def test_worst_images_order_and_defect_filter(session: Session) -> None:
    ids = _seed(session)
    worst = report.worst_images(session, n=10, dataset_id=ids["dataset"])
    assert list(worst["image_id"]) == [ids[k] for k in "dbcae"]  # NULL quality last
    assert list(worst.columns) == [*report.IMAGE_COLUMNS, "split"]
    assert list(report.worst_images(session, n=2, dataset_id=ids["dataset"])["image_id"]) == [
        ids["d"],
        ids["b"],
    ]
    blur = report.worst_images(session, n=10, defect="blur", dataset_id=ids["dataset"])
    assert list(blur["image_id"]) == [ids["d"], ids["b"]]
    assert set(blur["defect_type"]) == {"blur"}
    everywhere = report.worst_images(session, n=1, defect="blur")
    assert list(everywhere["image_id"]) == [ids["f"]] and "split" not in everywhere
    assert report.worst_images(session, defect="artifact", dataset_id=ids["dataset"]).empty
    with pytest.raises(ValueError, match="n must be >= 1"):
        report.worst_images(session, n=0)


def test_ood_images(session: Session) -> None:
    ids = _seed(session)
    flagged = report.ood_images(session, dataset_id=ids["dataset"])
    assert list(flagged["image_id"]) == [ids["c"]]
    top = report.ood_images(session, n=3, flagged_only=False, dataset_id=ids["dataset"])
    assert list(top["image_id"]) == [ids["c"], ids["b"], ids["d"]]


def test_image_details(session: Session) -> None:
    ids = _seed(session)
    row = report.image_details(session, ids["b"], dataset_id=ids["dataset"])
    assert row["sharpness"] == 10.0 and row["defect_type"] == "blur"
    assert row["scorer_version"] == "iqa-v1" and row["split"] == "train"
    assert report.image_details(session, ids["f"], dataset_id=ids["dataset"]).empty


def test_projection_on_metrics(session: Session) -> None:
    ids = _seed(session)
    proj = report.embedding_projection(session, dataset_id=ids["dataset"])
    assert proj.features == "metrics" and proj.n_total == 4  # the unreadable row is left out
    pts = proj.points
    assert pts.shape == (4, 10)
    assert {"x", "y", "source", "defect_type", "ood"} <= set(pts.columns)
    assert np.isfinite(pts[["x", "y"]].to_numpy()).all()
    assert proj.explained[0] >= proj.explained[1] > 0
    assert sum(proj.explained) <= 1 + 1e-9
    assert dict(zip(pts["image_id"], pts["ood"], strict=True))[ids["c"]] == "OOD"
    sample = report.embedding_projection(session, dataset_id=ids["dataset"], max_points=2)
    assert len(sample.points) == 2 and sample.n_total == 4


def test_projection_on_embeddings(session: Session, tmp_path: Path) -> None:
    ids = _seed(session)
    keys = "abcd"
    emb = np.eye(4, 8, dtype=np.float32) * np.arange(1, 5, dtype=np.float32)[:, None]
    (tmp_path / "iqa-v1").mkdir()
    np.savez(tmp_path / "iqa-v1" / "x.npz", image_id=[ids[k] for k in keys], embedding=emb)
    for row, k in enumerate(keys):
        iq = session.scalars(
            select(ImageQuality).where(
                ImageQuality.image_id == ids[k], ImageQuality.scorer_version == "iqa-v1"
            )
        ).one()
        iq.embedding_ref = f"iqa-v1/x.npz#{row}"
    session.commit()
    proj = report.embedding_projection(session, dataset_id=ids["dataset"], embeddings_dir=tmp_path)
    assert proj.features == "embedding"
    # PCA of 4 points along 4 axes with spreads 1..4: the first axis separates d (4) most.
    xy = proj.points.set_index("image_id")[["x", "y"]]
    assert abs(xy.loc[ids["d"], "x"]) == pytest.approx(xy["x"].abs().max())
    assert proj.explained[0] >= proj.explained[1] > 0
    # A missing file: back to metrics.
    missing = report.embedding_projection(
        session, dataset_id=ids["dataset"], embeddings_dir=tmp_path / "elsewhere"
    )
    assert missing.features == "metrics"


def test_no_rows(session: Session) -> None:
    ids = _seed(session, scored=False)
    rep = report.build_image_quality_report(session, dataset_id=ids["dataset"])
    assert rep.is_empty and rep.scorer_version is None and rep.versions.empty
    assert report.newest_scorer_version(session, dataset_id=ids["dataset"]) is None
    assert report.metric_values(session, "snr", dataset_id=ids["dataset"]).empty
    assert report.metric_summary(session, "snr", "source").empty
    assert report.worst_images(session, dataset_id=ids["dataset"]).empty
    assert report.ood_images(session).empty
    assert report.image_details(session, ids["a"]).empty
    proj = report.embedding_projection(session, dataset_id=ids["dataset"])
    assert proj.points.empty and proj.features == ""


def test_dataset_without_versions(session: Session) -> None:
    _seed(session)
    lone = Dataset(name="lonely")
    session.add(lone)
    session.commit()
    assert report.build_image_quality_report(session, dataset_id=lone.id).is_empty
    assert report.scorer_versions(session, dataset_id=lone.id).empty


def test_pca_helper_is_deterministic() -> None:
    x = np.array([[0.0, 0.0], [2.0, 0.1], [4.0, -0.1], [6.0, 0.0]])
    a, var = report._pca2(x)
    b, _ = report._pca2(x[::-1].copy())
    assert a.shape == (4, 2) and var[0] > 0.99
    np.testing.assert_allclose(np.sort(a[:, 0]), np.sort(b[:, 0]), atol=1e-12)
    assert a[3, 0] > a[0, 0]  # the largest loading is positive: x grows with the first column
    one, none = report._pca2(np.ones((1, 3)))
    assert (one == 0).all() and none == (0.0, 0.0)
