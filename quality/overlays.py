"""What the viewer draws over an image: model predictions, doctors' annotations, reference
labels and reviewers' corrections, as plain data (no streamlit here).

:class:`Overlay` is the contract between the builders that read the DB and
:func:`quality.ui.viewer.render_image_viewer`, which draws them (one colour per owner, a
toggle per owner).

Which function fits which need
------------------------------
* :func:`overlays_for_image` - everything drawn over one image (the Browser, the Spot-check
  page).
* :func:`overlays_for_images` - the same for many images at once (a CT series, a gallery),
  keyed by image id: still one query per kind, never one per image.
* :func:`series_slices` - the images of one series in display order (by position along the
  slice normal, else by instance number; :func:`quality.dicom.slice_order`), for the
  viewer's slice slider.

Reading rules
-------------
* Boxes are ``[x0, y0, x1, y1]`` in pixels of the stored image, ``x1, y1`` exclusive (the
  demo's and the import formats' convention). A box that is not four finite numbers is
  dropped and the row is logged (by table and id, never patient data); the overlay keeps
  its label, so the viewer shows it as an image-level label.
* Masks follow :mod:`quality.agreement.masks`: a zlib-compressed uint8 array of the image's
  ``rows × cols``. One that does not decode is handled like a bad box.
* Rows with neither a label nor a box nor a mask (the demo's "empty predictions") give no
  overlay.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Collection, Iterable
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import pandas as pd
from numpy.typing import NDArray
from sqlalchemy import select
from sqlalchemy.orm import Session

from quality.agreement.masks import decode_mask
from quality.db.queries import _db_errors
from quality.db.schema import (
    Annotation,
    Annotator,
    Image,
    LabelingTask,
    Model,
    ModelVersion,
    Prediction,
    ReferenceLabel,
    Review,
    Series,
    User,
)
from quality.dicom import slice_order
from quality.errors import LabelDataError

__all__ = [
    "OVERLAY_GROUPS",
    "SERIES_SLICE_COLUMNS",
    "Overlay",
    "OverlayGroup",
    "correction_owner",
    "overlays_for_image",
    "overlays_for_images",
    "prediction_owner",
    "series_slices",
]

log = logging.getLogger(__name__)

OverlayGroup = Literal["prediction", "annotation", "reference", "correction"]
OVERLAY_GROUPS: tuple[OverlayGroup, ...] = ("prediction", "annotation", "reference", "correction")
"""The groups in drawing order (later groups are drawn on top)."""

SERIES_SLICE_COLUMNS = [
    "image_id",
    "sop_uid",
    "uri",
    "instance_number",
    "position_mm",
    "rows",
    "cols",
    "n_frames",
    "photometric",
]


@dataclass(frozen=True)
class Overlay:
    """One box or mask drawn over an image.

    Attributes
    ----------
    group : where it comes from: a model ``prediction``, a doctor's ``annotation``, a
        ``reference`` (gold/exam) label, or a reviewer's ``correction``.
    owner : who made it, as shown in the legend and toggles: ``"chest-finding v2"``, a
        doctor's pseudonymous code (``"D03"``), ``"gold"``. Never a person's name.
    label : class label, or None.
    bbox : ``(x0, y0, x1, y1)`` in pixels of the stored image (``x1, y1`` exclusive), or None.
    mask : boolean array of shape ``(rows, cols)`` (one frame), or None.
    score : model score in [0, 1] for predictions, else None.
    frame : the slice it belongs to for multi-frame images / series (0 for 2-D images).
    task : the labeling task's name for annotations and reference labels, else None.
    row_id : id of the row it was read from (``predictions.id``, ``annotations.id``,
        ``reference_labels.id`` or ``reviews.id``), or None for hand-made overlays.

    An overlay with neither ``bbox`` nor ``mask`` is an image-level label (a classification):
    the viewer lists it in the image's corner instead of drawing a shape.
    """

    group: OverlayGroup
    owner: str
    label: str | None = None
    bbox: tuple[float, float, float, float] | None = None
    mask: NDArray[np.bool_] | None = None
    score: float | None = None
    frame: int = 0
    task: str | None = None
    row_id: int | None = None


def prediction_owner(model_name: str, version: str) -> str:
    """The owner shown for a model version's predictions: ``"<model> <version>"``."""
    return f"{model_name} {version}"


def correction_owner(username: str) -> str:
    """The owner shown for a reviewer's corrections: ``"review: <username>"``."""
    return f"review: {username}"


def _bbox(raw: Any, table: str, row_id: int) -> tuple[float, float, float, float] | None:
    """A stored box as four finite floats ``(x0, y0, x1, y1)`` with ``x0 <= x1, y0 <= y1``."""
    if raw is None:
        return None
    try:
        values = [float(v) for v in raw]
    except (TypeError, ValueError):
        values = []
    if len(values) != 4 or not all(math.isfinite(v) for v in values):
        log.warning("%s row %s: bbox is not four finite numbers; shown as a label", table, row_id)
        return None
    x0, y0, x1, y1 = values
    return (min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1))


def _mask(
    blob: bytes | None, rows: int | None, cols: int | None, table: str, row_id: int
) -> NDArray[np.bool_] | None:
    if blob is None:
        return None
    try:
        return decode_mask(blob, (rows, cols))  # type: ignore[arg-type]
    except LabelDataError as exc:
        log.warning("%s row %s: mask not drawn: %s", table, row_id, exc)
        return None


def _opt_float(value: Any) -> float | None:
    if value is None:
        return None
    out = float(value)
    return out if math.isfinite(out) else None


def _ids(values: Iterable[int]) -> list[int]:
    return sorted({int(v) for v in values})


def _keep(ov: Overlay) -> bool:
    return ov.label is not None or ov.bbox is not None or ov.mask is not None


def _predictions(
    session: Session, image_ids: list[int], model_version_ids: list[int]
) -> list[tuple[int, Overlay]]:
    stmt = (
        select(
            Prediction.id, Prediction.image_id, Prediction.label, Prediction.score,
            Prediction.bbox, Prediction.mask, Model.name, ModelVersion.version,
            Image.rows, Image.cols,
        )
        .join(ModelVersion, ModelVersion.id == Prediction.model_version_id)
        .join(Model, Model.id == ModelVersion.model_id)
        .join(Image, Image.id == Prediction.image_id)
        .where(Prediction.image_id.in_(image_ids))
        .order_by(Model.name, ModelVersion.version, Prediction.id)
    )  # fmt: skip
    if model_version_ids:
        stmt = stmt.where(Prediction.model_version_id.in_(model_version_ids))
    out = []
    for r in session.execute(stmt):
        ov = Overlay(
            group="prediction",
            owner=prediction_owner(r.name, r.version),
            label=r.label,
            bbox=_bbox(r.bbox, "predictions", r.id),
            mask=_mask(r.mask, r.rows, r.cols, "predictions", r.id),
            score=_opt_float(r.score),
            row_id=int(r.id),
        )
        out.append((int(r.image_id), ov))
    return out


def _annotations(
    session: Session, image_ids: list[int], task_ids: list[int]
) -> list[tuple[int, Overlay]]:
    stmt = (
        select(
            Annotation.id, Annotation.image_id, Annotation.label, Annotation.bbox,
            Annotation.mask, Annotator.code, LabelingTask.name, Image.rows, Image.cols,
        )
        .join(Annotator, Annotator.id == Annotation.annotator_id)
        .join(LabelingTask, LabelingTask.id == Annotation.task_id)
        .join(Image, Image.id == Annotation.image_id)
        .where(Annotation.image_id.in_(image_ids))
        .order_by(Annotator.code, LabelingTask.name, Annotation.id)
    )  # fmt: skip
    if task_ids:
        stmt = stmt.where(Annotation.task_id.in_(task_ids))
    return [
        (
            int(r.image_id),
            Overlay(
                group="annotation",
                owner=str(r.code),
                label=r.label,
                bbox=_bbox(r.bbox, "annotations", r.id),
                mask=_mask(r.mask, r.rows, r.cols, "annotations", r.id),
                task=r.name,
                row_id=int(r.id),
            ),
        )
        for r in session.execute(stmt)
    ]


def _references(
    session: Session, image_ids: list[int], task_ids: list[int]
) -> list[tuple[int, Overlay]]:
    stmt = (
        select(
            ReferenceLabel.id, ReferenceLabel.image_id, ReferenceLabel.kind, ReferenceLabel.label,
            ReferenceLabel.bbox, ReferenceLabel.mask, LabelingTask.name, Image.rows, Image.cols,
        )
        .join(LabelingTask, LabelingTask.id == ReferenceLabel.task_id)
        .join(Image, Image.id == ReferenceLabel.image_id)
        .where(ReferenceLabel.image_id.in_(image_ids))
        .order_by(ReferenceLabel.kind, LabelingTask.name, ReferenceLabel.id)
    )  # fmt: skip
    if task_ids:
        stmt = stmt.where(ReferenceLabel.task_id.in_(task_ids))
    return [
        (
            int(r.image_id),
            Overlay(
                group="reference",
                owner=str(r.kind),
                label=r.label,
                bbox=_bbox(r.bbox, "reference_labels", r.id),
                mask=_mask(r.mask, r.rows, r.cols, "reference_labels", r.id),
                task=r.name,
                row_id=int(r.id),
            ),
        )
        for r in session.execute(stmt)
    ]


def _corrections(
    session: Session, image_ids: list[int], model_version_ids: list[int]
) -> list[tuple[int, Overlay]]:
    """Reviews that correct something: a corrected label or box (an "agree" without either
    adds nothing to draw)."""
    stmt = (
        select(
            Review.id, Prediction.image_id, Review.corrected_label, Review.corrected_bbox,
            Prediction.label, User.username,
        )
        .join(Prediction, Prediction.id == Review.prediction_id)
        .join(User, User.id == Review.reviewer_id)
        .where(Prediction.image_id.in_(image_ids))
        .order_by(User.username, Review.id)
    )  # fmt: skip
    if model_version_ids:
        stmt = stmt.where(Prediction.model_version_id.in_(model_version_ids))
    out = []
    for r in session.execute(stmt):
        bbox = _bbox(r.corrected_bbox, "reviews", r.id)
        if r.corrected_label is None and bbox is None:
            continue
        ov = Overlay(
            group="correction",
            owner=correction_owner(str(r.username)),
            # A corrected box without a corrected label keeps the model's label.
            label=r.corrected_label if r.corrected_label is not None else r.label,
            bbox=bbox,
            row_id=int(r.id),
        )
        out.append((int(r.image_id), ov))
    return out


@_db_errors
def overlays_for_images(
    session: Session,
    image_ids: Iterable[int],
    *,
    model_version_ids: Collection[int] = (),
    task_ids: Collection[int] = (),
    predictions: bool = True,
    annotations: bool = True,
    reference: bool = True,
    corrections: bool = True,
) -> dict[int, list[Overlay]]:
    """The overlays of many images, keyed by image id: one query per kind, whatever the
    number of images.

    Parameters
    ----------
    session : an open session.
    image_ids : ``images.id`` values.
    model_version_ids : restrict predictions (and the corrections of their reviews) to these
        model versions; empty means every version.
    task_ids : restrict annotations and reference labels to these labeling tasks; empty
        means every task.
    predictions, annotations, reference, corrections : read that kind at all.

    Returns
    -------
    dict[int, list[Overlay]]
        Every requested image id, with its overlays in :data:`OVERLAY_GROUPS` order, then by
        owner. An image without overlays maps to an empty list.

    Raises
    ------
    DatabaseUnavailableError, EmptyDatabaseError
        The DB cannot be reached, or has no schema.
    """
    ids = _ids(image_ids)
    out: dict[int, list[Overlay]] = {i: [] for i in ids}
    if not ids:
        return out
    mv_ids, t_ids = _ids(model_version_ids), _ids(task_ids)
    found: list[tuple[int, Overlay]] = []
    if predictions:
        found += _predictions(session, ids, mv_ids)
    if annotations:
        found += _annotations(session, ids, t_ids)
    if reference:
        found += _references(session, ids, t_ids)
    if corrections:
        found += _corrections(session, ids, mv_ids)
    for image_id, ov in found:
        if _keep(ov):
            out[image_id].append(ov)
    return out


def overlays_for_image(
    session: Session,
    image_id: int,
    *,
    model_version_ids: Collection[int] = (),
    task_ids: Collection[int] = (),
    reference: bool = True,
    predictions: bool = True,
    annotations: bool = True,
    corrections: bool = True,
) -> list[Overlay]:
    """Everything to draw over one image: predictions, doctors' annotations, reference labels
    and reviewers' corrections.

    Owners: a prediction's is ``"<model> <version>"`` (:func:`prediction_owner`), an
    annotation's the annotator's pseudonymous code, a reference label's its kind (``gold``
    or ``exam``), a correction's ``"review: <username>"``.

    Parameters
    ----------
    session : an open session.
    image_id : ``images.id``.
    model_version_ids : only these model versions' predictions (and their corrections);
        empty means every version.
    task_ids : only these tasks' annotations and reference labels; empty means every task.
    reference : include reference (gold/exam) labels.
    predictions, annotations, corrections : include that kind.

    Returns
    -------
    list[Overlay]
        Predictions first, then annotations, reference labels and corrections; an unknown
        image gives an empty list.

    Raises
    ------
    DatabaseUnavailableError, EmptyDatabaseError
        The DB cannot be reached, or has no schema.

    Examples
    --------
    >>> overlays_for_image(session, 42, model_version_ids=[2])  # doctest: +SKIP
    [Overlay(group='prediction', owner='chest-finding-classifier v2', label='nodule', ...)]
    """
    return overlays_for_images(
        session,
        [image_id],
        model_version_ids=model_version_ids,
        task_ids=task_ids,
        predictions=predictions,
        annotations=annotations,
        reference=reference,
        corrections=corrections,
    )[int(image_id)]


@_db_errors
def series_slices(session: Session, series_uid: str) -> pd.DataFrame:
    """The images of one series in display order, for the viewer's slice slider.

    The order is :func:`quality.dicom.slice_order` of the ImagePositionPatient and
    ImageOrientationPatient kept in ``images.header``: by position along the slice normal
    when every image has one, else by InstanceNumber, then by id. Only the two header
    fields are read (JSON paths in SQL), not the whole headers.

    Parameters
    ----------
    session : an open session.
    series_uid : ``series.series_uid``.

    Returns
    -------
    DataFrame
        :data:`SERIES_SLICE_COLUMNS`, one row per image in display order; ``position_mm``
        is the distance along the normal (NaN when the order comes from instance numbers).
        Empty for an unknown series.
    """
    stmt = (
        select(
            Image.id, Image.sop_uid, Image.uri, Image.instance_number,
            Image.header["ImagePositionPatient"].label("ipp"),
            Image.header["ImageOrientationPatient"].label("iop"),
            Image.rows, Image.cols, Image.n_frames, Image.photometric,
        )
        .join(Series, Series.id == Image.series_id)
        .where(Series.series_uid == series_uid)
        .order_by(Image.id)
    )  # fmt: skip
    rows = session.execute(stmt).all()
    if not rows:
        return pd.DataFrame(columns=SERIES_SLICE_COLUMNS)
    order, distance = slice_order(
        [r.ipp for r in rows], [r.iop for r in rows], [r.instance_number for r in rows]
    )
    df = pd.DataFrame(
        {
            "image_id": [int(r.id) for r in rows],
            "sop_uid": [r.sop_uid for r in rows],
            "uri": [r.uri for r in rows],
            "instance_number": pd.array([r.instance_number for r in rows], dtype="Int64"),
            "position_mm": distance if distance is not None else np.full(len(rows), np.nan),
            "rows": pd.array([r.rows for r in rows], dtype="Int64"),
            "cols": pd.array([r.cols for r in rows], dtype="Int64"),
            "n_frames": [int(r.n_frames or 1) for r in rows],
            "photometric": [r.photometric for r in rows],
        }
    )
    return df.iloc[order].reset_index(drop=True)
