"""A content hash of the demo-relevant DB, independent of surrogate ids, clocks and paths."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
from collections.abc import Iterable
from typing import Any

from sqlalchemy import Select, select
from sqlalchemy.orm import Session, aliased

from quality.db.schema import (
    Annotation,
    Annotator,
    Dataset,
    DatasetItem,
    DatasetVersion,
    Image,
    IngestError,
    LabelingTask,
    Model,
    ModelVersion,
    Prediction,
    ReferenceLabel,
    Series,
    Source,
    Study,
)

__all__ = ["db_content_hash"]


def _norm(value: Any, root: str) -> Any:
    if isinstance(value, dt.datetime):
        if value.tzinfo is None:  # SQLite drops the zone; values are written in UTC
            value = value.replace(tzinfo=dt.UTC)
        return value.astimezone(dt.UTC).isoformat()
    if isinstance(value, dt.date):
        return value.isoformat()
    if isinstance(value, float):
        return round(value, 6)
    if isinstance(value, bytes):
        return hashlib.sha256(value).hexdigest()
    if isinstance(value, str) and root and root in value:
        return value.replace(root, "<root>")
    if isinstance(value, dict):
        return {k: _norm(v, root) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_norm(v, root) for v in value]
    return value


def _feed(h: Any, name: str, rows: Iterable[Any], root: str) -> None:
    lines = sorted(
        json.dumps(_norm(list(r), root), sort_keys=True, separators=(",", ":"), default=str)
        for r in rows
    )
    h.update(f"\n#{name}:{len(lines)}\n".encode())
    for line in lines:
        h.update(line.encode())
        h.update(b"\n")


def db_content_hash(session: Session, *, root: str | None = None) -> str:
    """sha256 over the demo-relevant content of the DB, sorted and id-free.

    Foreign keys are replaced by natural keys (UIDs, names, codes); server timestamps
    (``ingested_at``, ``at``, ``created_at`` with a server default) and file mtimes are left
    out; store URIs (also inside messages) are made relative to ``root``, by default the
    common folder of all image and error URIs.

    Parameters
    ----------
    session : a session on the DB.
    root : the store root to strip from URIs.

    Returns
    -------
    str : 64 hex digits.
    """
    uris = list(session.scalars(select(Image.uri))) + list(session.scalars(select(IngestError.uri)))
    if root is None:
        root = os.path.commonpath(uris) if len(uris) > 1 else ""
    root = root.rstrip("/") + "/" if root else ""
    h = hashlib.sha256()

    def feed(name: str, stmt: Select[Any]) -> None:
        _feed(h, name, session.execute(stmt), root)

    feed("sources", select(Source.name, Source.manufacturer))
    feed(
        "studies",
        select(Study.study_uid, Study.patient_key, Study.modality, Study.body_part,
               Study.study_date, Study.patient_age_years, Study.patient_sex, Source.name)
        .outerjoin(Source, Study.source_id == Source.id),
    )  # fmt: skip
    feed(
        "series",
        select(Series.series_uid, Study.study_uid, Series.modality, Series.series_number,
               Series.description, Series.manufacturer, Series.model, Series.kvp,
               Series.body_part).join(Study, Series.study_id == Study.id),
    )  # fmt: skip
    feed(
        "images",
        select(Image.sop_uid, Series.series_uid, Image.uri, Image.pixel_sha256,
               Image.sop_class_uid, Image.transfer_syntax, Image.instance_number, Image.rows,
               Image.cols, Image.n_frames, Image.bits_stored, Image.photometric,
               Image.spacing_row, Image.spacing_col, Image.file_size, Image.header)
        .join(Series, Image.series_id == Series.id),
    )  # fmt: skip
    feed("ingest_errors", select(IngestError.uri, IngestError.kind, IngestError.message,
                                 IngestError.file_size))  # fmt: skip
    feed("datasets", select(Dataset.name, Dataset.owner, Dataset.license, Dataset.description,
                            Dataset.updated_at))  # fmt: skip
    feed(
        "dataset_versions",
        select(Dataset.name, DatasetVersion.version, DatasetVersion.content_hash,
               DatasetVersion.note).join(Dataset, DatasetVersion.dataset_id == Dataset.id),
    )  # fmt: skip
    feed(
        "dataset_items",
        select(DatasetVersion.version, Image.sop_uid, DatasetItem.split)
        .join(DatasetVersion, DatasetItem.version_id == DatasetVersion.id)
        .join(Image, DatasetItem.image_id == Image.id),
    )  # fmt: skip
    feed("annotators", select(Annotator.code, Annotator.name, Annotator.kind,
                              Annotator.specialty, Annotator.experience_years))  # fmt: skip
    feed("labeling_tasks", select(LabelingTask.name, LabelingTask.kind, LabelingTask.classes))
    feed(
        "annotations",
        select(LabelingTask.name, Image.sop_uid, Annotator.code, Annotation.label,
               Annotation.bbox, Annotation.mask, Annotation.created_at, Annotation.duration_s)
        .join(LabelingTask, Annotation.task_id == LabelingTask.id)
        .join(Image, Annotation.image_id == Image.id)
        .join(Annotator, Annotation.annotator_id == Annotator.id),
    )  # fmt: skip
    feed(
        "reference_labels",
        select(LabelingTask.name, Image.sop_uid, ReferenceLabel.kind, ReferenceLabel.label,
               ReferenceLabel.bbox, ReferenceLabel.mask)
        .join(LabelingTask, ReferenceLabel.task_id == LabelingTask.id)
        .join(Image, ReferenceLabel.image_id == Image.id),
    )  # fmt: skip
    task = aliased(LabelingTask)
    feed(
        "models",
        select(Model.name, task.name, Model.description)
        .outerjoin(task, Model.task_id == task.id),
    )  # fmt: skip
    feed(
        "model_versions",
        select(Model.name, ModelVersion.version, ModelVersion.status)
        .join(Model, ModelVersion.model_id == Model.id),
    )  # fmt: skip
    feed(
        "predictions",
        select(ModelVersion.version, Image.sop_uid, Prediction.label, Prediction.score,
               Prediction.bbox, Prediction.mask, Prediction.latency_ms, Prediction.created_at)
        .join(ModelVersion, Prediction.model_version_id == ModelVersion.id)
        .join(Image, Prediction.image_id == Image.id),
    )  # fmt: skip
    return h.hexdigest()
