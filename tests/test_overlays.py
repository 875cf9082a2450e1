"""The overlay builders and the series order of :mod:`quality.overlays` (SQLite + PostgreSQL).

The fixture is small enough to check by hand. Series ``SER-A`` holds three 8 × 8 CT slices
whose instance numbers (1, 2, 3) do not follow their positions (z = 10, 0, 5 mm); series
``SER-B`` one image without geometry. On image A (instance 1):

==============  ===========  =========================================================
kind            owner        what
==============  ===========  =========================================================
prediction      m v1         ``nodule`` 0.9, box (1, 2, 5, 6)
prediction      m v1         an empty row (no label, box, mask): no overlay
prediction      m v2         ``opacity`` 0.7, mask (the 3 × 3 square at rows 2-4, cols 3-5)
annotation      D01          ``nodule``, box (1, 1, 4, 4), task ``box``
annotation      D01          ``normal``, task ``finding`` (image-level)
annotation      D02          ``opacity``, mask (the same square), task ``seg``
reference       gold         ``nodule``, box (1, 2, 5, 5), task ``box``
correction      review: r1   r1 disagrees with the v1 box: ``opacity``, box (0, 0, 3, 3)
(no overlay)                 r2 agrees with the v1 box and corrects nothing
==============  ===========  =========================================================

Image B (instance 2) has a v2 prediction with a malformed box (three numbers) and a D02
annotation whose mask blob does not decompress: both keep their labels and lose the shape.
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import event
from sqlalchemy.orm import Session

from quality.agreement.masks import encode_mask
from quality.db.schema import (
    Annotation,
    Annotator,
    Dataset,
    Image,
    LabelingTask,
    Model,
    ModelVersion,
    Prediction,
    ReferenceLabel,
    Review,
    Series,
    Source,
    Study,
    User,
)
from quality.db.session import make_engine
from quality.errors import EmptyDatabaseError
from quality.overlays import (
    SERIES_SLICE_COLUMNS,
    Overlay,
    overlays_for_image,
    overlays_for_images,
    series_slices,
)

T0 = dt.datetime(2024, 3, 4, 9, 0, tzinfo=dt.UTC)
SQUARE = np.zeros((8, 8), dtype=bool)
SQUARE[2:5, 3:6] = True


@dataclass
class Ids:
    images: dict[str, int]
    versions: dict[str, int]
    tasks: dict[str, int]
    predictions: dict[str, int]
    reviews: dict[str, int]


def _ct_header(z: float | None) -> dict[str, object]:
    if z is None:
        return {}
    return {
        "ImagePositionPatient": [-100.0, -100.0, z],
        "ImageOrientationPatient": [1.0, 0.0, 0.0, 0.0, 1.0, 0.0],
    }


def _build(session: Session) -> Ids:
    src = Source(name="site")
    session.add(src)
    session.flush()
    study = Study(study_uid="1.2.3", patient_key="pk1", modality="CT", source_id=src.id)
    session.add(study)
    session.flush()
    ser_a = Series(series_uid="SER-A", study_id=study.id, modality="CT", series_number=1)
    ser_b = Series(series_uid="SER-B", study_id=study.id, modality="CT", series_number=2)
    session.add_all([ser_a, ser_b])
    session.flush()
    images: dict[str, Image] = {}
    for name, series, inst, z in (
        ("A", ser_a, 1, 10.0), ("B", ser_a, 2, 0.0), ("C", ser_a, 3, 5.0), ("D", ser_b, 1, None),
    ):  # fmt: skip
        images[name] = Image(
            sop_uid=f"1.2.3.{name}", series_id=series.id, uri=f"/store/{name}.dcm",
            instance_number=inst, rows=8, cols=8, photometric="MONOCHROME2",
            header=_ct_header(z),
        )  # fmt: skip
    session.add_all(images.values())
    ds = Dataset(name="ds")
    session.add(ds)
    session.flush()
    tasks = {
        "finding": LabelingTask(dataset_id=ds.id, name="finding", kind="classification"),
        "box": LabelingTask(dataset_id=ds.id, name="box", kind="bbox"),
        "seg": LabelingTask(dataset_id=ds.id, name="seg", kind="mask"),
    }
    d1, d2 = Annotator(code="D01"), Annotator(code="D02")
    model = Model(name="m")
    session.add_all([*tasks.values(), d1, d2, model])
    session.flush()
    v1 = ModelVersion(model_id=model.id, version="v1", status="production")
    v2 = ModelVersion(model_id=model.id, version="v2", status="shadow")
    r1, r2 = User(username="r1"), User(username="r2")
    session.add_all([v1, v2, r1, r2])
    session.flush()
    a, b = images["A"].id, images["B"].id
    preds = {
        "v1_box": Prediction(
            model_version_id=v1.id, image_id=a, label="nodule", score=0.9, bbox=[1, 2, 5, 6],
            created_at=T0,
        ),
        "v1_empty": Prediction(model_version_id=v1.id, image_id=a, created_at=T0),
        "v2_mask": Prediction(
            model_version_id=v2.id, image_id=a, label="opacity", score=0.7,
            mask=encode_mask(SQUARE), created_at=T0,
        ),
        "v2_bad_box": Prediction(
            model_version_id=v2.id, image_id=b, label="normal", score=0.1, bbox=[1, 2, 3],
            created_at=T0,
        ),
    }  # fmt: skip
    session.add_all(preds.values())
    session.add_all(
        [
            Annotation(
                task_id=tasks["box"].id, image_id=a, annotator_id=d1.id, label="nodule",
                bbox=[1, 1, 4, 4], created_at=T0,
            ),
            Annotation(
                task_id=tasks["finding"].id, image_id=a, annotator_id=d1.id, label="normal",
                created_at=T0,
            ),
            Annotation(
                task_id=tasks["seg"].id, image_id=a, annotator_id=d2.id, label="opacity",
                mask=encode_mask(SQUARE), created_at=T0,
            ),
            Annotation(
                task_id=tasks["seg"].id, image_id=b, annotator_id=d2.id, label="opacity",
                mask=b"not zlib", created_at=T0,
            ),
            ReferenceLabel(
                task_id=tasks["box"].id, image_id=a, kind="gold", label="nodule",
                bbox=[1, 2, 5, 5],
            ),
        ]
    )  # fmt: skip
    session.flush()
    reviews = {
        "r1": Review(
            prediction_id=preds["v1_box"].id, reviewer_id=r1.id, verdict="disagree",
            corrected_label="opacity", corrected_bbox=[0, 0, 3, 3],
        ),
        "r2": Review(prediction_id=preds["v1_box"].id, reviewer_id=r2.id, verdict="agree"),
    }  # fmt: skip
    session.add_all(reviews.values())
    session.commit()
    return Ids(
        images={k: v.id for k, v in images.items()},
        versions={"v1": v1.id, "v2": v2.id},
        tasks={k: v.id for k, v in tasks.items()},
        predictions={k: v.id for k, v in preds.items()},
        reviews={k: v.id for k, v in reviews.items()},
    )


@pytest.fixture
def ids(session: Session) -> Ids:
    return _build(session)


def _by(overlays: list[Overlay]) -> dict[tuple[str, str, str | None], Overlay]:
    out = {}
    for ov in overlays:
        k = (ov.group, ov.owner, ov.task)
        assert k not in out, f"two overlays for {k}"
        out[k] = ov
    return out


def test_every_kind_on_one_image(session: Session, ids: Ids) -> None:
    ovs = overlays_for_image(session, ids.images["A"])
    assert [o.group for o in ovs] == [
        "prediction", "prediction", "annotation", "annotation", "annotation", "reference",
        "correction",
    ]  # fmt: skip
    by = _by(ovs)
    v1 = by[("prediction", "m v1", None)]
    assert (v1.label, v1.score, v1.bbox, v1.mask) == ("nodule", 0.9, (1.0, 2.0, 5.0, 6.0), None)
    assert v1.row_id == ids.predictions["v1_box"]
    v2 = by[("prediction", "m v2", None)]
    assert v2.bbox is None and v2.score == pytest.approx(0.7)
    assert v2.mask is not None and v2.mask.dtype == np.bool_
    np.testing.assert_array_equal(v2.mask, SQUARE)
    d1_box = by[("annotation", "D01", "box")]
    assert d1_box.bbox == (1.0, 1.0, 4.0, 4.0) and d1_box.score is None
    d1_cls = by[("annotation", "D01", "finding")]
    assert (d1_cls.label, d1_cls.bbox, d1_cls.mask) == ("normal", None, None)
    np.testing.assert_array_equal(by[("annotation", "D02", "seg")].mask, SQUARE)
    gold = by[("reference", "gold", "box")]
    assert (gold.label, gold.bbox) == ("nodule", (1.0, 2.0, 5.0, 5.0))
    fix = by[("correction", "review: r1", None)]
    assert (fix.label, fix.bbox, fix.row_id) == ("opacity", (0.0, 0.0, 3.0, 3.0), ids.reviews["r1"])
    assert all(o.frame == 0 for o in ovs)


def test_filters_by_version_task_and_kind(session: Session, ids: Ids) -> None:
    a = ids.images["A"]
    only_v2 = overlays_for_image(session, a, model_version_ids=[ids.versions["v2"]])
    assert {(o.group, o.owner) for o in only_v2 if o.group in ("prediction", "correction")} == {
        ("prediction", "m v2")
    }  # the v1 correction goes with v1
    only_box = overlays_for_image(session, a, task_ids=[ids.tasks["box"]])
    assert {(o.group, o.task) for o in only_box if o.group in ("annotation", "reference")} == {
        ("annotation", "box"), ("reference", "box"),
    }  # fmt: skip
    no_ref = overlays_for_image(session, a, reference=False)
    assert "reference" not in {o.group for o in no_ref} and len(no_ref) == 6
    preds_only = overlays_for_image(
        session, a, annotations=False, reference=False, corrections=False
    )
    assert {o.group for o in preds_only} == {"prediction"} and len(preds_only) == 2


def test_bad_rows_keep_their_label_and_are_logged(
    session: Session, ids: Ids, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="quality.overlays"):
        ovs = overlays_for_image(session, ids.images["B"])
    by = _by(ovs)
    bad_box = by[("prediction", "m v2", None)]
    assert (bad_box.label, bad_box.bbox, bad_box.mask) == ("normal", None, None)
    bad_mask = by[("annotation", "D02", "seg")]
    assert (bad_mask.label, bad_mask.mask) == ("opacity", None)
    text = caplog.text
    assert f"predictions row {ids.predictions['v2_bad_box']}" in text
    assert "annotations row" in text and "does not decompress" in text


def test_many_images_one_query_per_kind(session: Session, ids: Ids) -> None:
    statements: list[str] = []

    def count(conn: object, cursor: object, statement: str, *args: object) -> None:
        if statement.lstrip().upper().startswith("SELECT"):
            statements.append(statement)

    wanted = [ids.images[k] for k in "ABCD"]
    engine = session.get_bind()
    event.listen(engine, "before_cursor_execute", count)
    try:
        out = overlays_for_images(session, wanted)
    finally:
        event.remove(engine, "before_cursor_execute", count)
    assert len(statements) == 4  # predictions, annotations, reference labels, reviews
    assert sorted(out) == sorted(wanted)
    assert [len(out[i]) for i in wanted] == [7, 2, 0, 0]
    assert overlays_for_images(session, []) == {}


def test_unknown_image_and_empty_db(session: Session, ids: Ids, tmp_path: Path) -> None:
    assert overlays_for_image(session, 10_000) == []
    blank = make_engine(f"sqlite:///{tmp_path / 'blank.db'}")
    with Session(blank) as s, pytest.raises(EmptyDatabaseError):
        overlays_for_image(s, 1)
    blank.dispose()


def test_series_slices_follow_position_then_instance(session: Session, ids: Ids) -> None:
    df = series_slices(session, "SER-A")
    assert list(df.columns) == SERIES_SLICE_COLUMNS
    # Along +z the slices are B (0), C (5), A (10); instance numbers run A=1 … so the
    # order is turned to start near instance 1: A, C, B.
    assert list(df["sop_uid"]) == ["1.2.3.A", "1.2.3.C", "1.2.3.B"]
    assert list(df["position_mm"]) == [10.0, 5.0, 0.0]
    assert list(df["instance_number"]) == [1, 3, 2]
    assert df["image_id"].tolist() == [ids.images[k] for k in "ACB"]
    lone = series_slices(session, "SER-B")
    assert list(lone["sop_uid"]) == ["1.2.3.D"] and lone["position_mm"].isna().all()
    assert series_slices(session, "nope").empty
