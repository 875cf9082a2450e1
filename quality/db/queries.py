"""Read-side queries for the app's pages and the CLI, with aggregation pushed into the DB.

Every function takes a :class:`~sqlalchemy.orm.Session` and returns a small
:class:`pandas.DataFrame` (or a dataclass). Counts, maxima and groupings run in SQL
(``GROUP BY``, ``COUNT``, ``MAX``, window functions), pagination is ``LIMIT``/``OFFSET``,
and filter values always travel as bound parameters, never formatted into SQL text. No
function pulls a whole table into Python.

Which function for which page
-----------------------------
- :func:`dataset_overview` / :func:`store_totals` / :func:`images_by_source` /
  :func:`ingest_error_summary`: the Overview page (datasets as data products).
- :func:`list_datasets`: the sidebar's dataset picker.
- :func:`filter_options` / :func:`studies_page` / :func:`study_images`: the Browser page.

Errors
------
A DB that cannot be reached raises :class:`~quality.errors.DatabaseUnavailableError`; a DB
without the schema raises :class:`~quality.errors.EmptyDatabaseError`. Both name the
password-free URL, so a page can show them plainly.

Freshness
---------
A dataset's ``last_update`` is the newest of: its ``updated_at``, its newest version's
``created_at``, the newest ``ingested_at`` of an image in its newest version, and the
newest ``created_at`` of an annotation in one of its labeling tasks. Its ``age_days`` is
the time since then, and its ``freshness`` is

- ``fresh`` when ``age_days <= FRESH_DAYS`` (7),
- ``aging`` when ``FRESH_DAYS < age_days <= STALE_DAYS`` (30),
- ``stale`` when ``age_days > STALE_DAYS``,
- ``unknown`` when the dataset has no timestamp at all.
"""

from __future__ import annotations

import datetime as dt
import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ParamSpec, TypeVar, cast

import pandas as pd
from sqlalchemy import Date, Select, and_, distinct, func, literal, select
from sqlalchemy import cast as sql_cast
from sqlalchemy.exc import OperationalError, ProgrammingError
from sqlalchemy.orm import Session

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
from quality.db.session import safe_url
from quality.errors import DatabaseUnavailableError, DatasetNotFoundError, EmptyDatabaseError

__all__ = [
    "FRESH_DAYS",
    "MAX_PAGE_SIZE",
    "OVERVIEW_COLUMNS",
    "STALE_DAYS",
    "STUDY_COLUMNS",
    "STUDY_IMAGE_COLUMNS",
    "StoreTotals",
    "dataset_overview",
    "filter_options",
    "freshness_status",
    "images_by_source",
    "ingest_error_summary",
    "list_datasets",
    "model_version_matches",
    "resolve_dataset",
    "store_totals",
    "studies_page",
    "study_images",
]

FRESH_DAYS = 7.0
"""A dataset updated at most this many days ago is ``fresh``."""
STALE_DAYS = 30.0
"""A dataset not updated for more than this many days is ``stale`` (between: ``aging``)."""
MAX_PAGE_SIZE = 500

OVERVIEW_COLUMNS = [
    "dataset_id",
    "name",
    "owner",
    "license",
    "description",
    "n_versions",
    "latest_version",
    "n_images",
    "n_studies",
    "n_patients",
    "n_annotations",
    "n_predictions",
    "last_update",
    "age_days",
    "freshness",
]
STUDY_COLUMNS = [
    "study_uid",
    "patient_key",
    "modality",
    "body_part",
    "study_date",
    "source",
    "n_series",
    "n_images",
]
STUDY_IMAGE_COLUMNS = [
    "image_id",
    "sop_uid",
    "series_uid",
    "series_number",
    "series_description",
    "modality",
    "instance_number",
    "uri",
    "rows",
    "cols",
    "photometric",
    "n_frames",
]

P = ParamSpec("P")
R = TypeVar("R")

# PostgreSQL's SQLSTATE for "relation does not exist".
_PG_UNDEFINED_TABLE = "42P01"


def _db_errors(fn: Callable[P, R]) -> Callable[P, R]:
    """Turn driver errors into the domain errors that pages show plainly.

    The wrapped function's first argument must be the :class:`Session`.
    """

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        session = cast(Session, args[0] if args else kwargs["session"])
        try:
            return fn(*args, **kwargs)
        except (OperationalError, ProgrammingError) as exc:
            session.rollback()
            url = safe_url(session.get_bind())  # type: ignore[arg-type]
            reason = str(exc.orig).strip()
            if _is_missing_table(exc):
                raise EmptyDatabaseError(url) from exc
            if isinstance(exc, OperationalError):
                raise DatabaseUnavailableError(url, reason) from exc
            raise

    return wrapper


def _is_missing_table(exc: OperationalError | ProgrammingError) -> bool:
    if getattr(exc.orig, "sqlstate", None) == _PG_UNDEFINED_TABLE:
        return True
    return "no such table" in str(exc.orig).lower()


def _as_utc(value: Any) -> dt.datetime | None:
    """SQLite hands back naive datetimes, PostgreSQL aware ones: normalise to aware UTC."""
    if value is None or (not isinstance(value, dt.datetime) and pd.isna(value)):
        return None
    if isinstance(value, str):
        value = dt.datetime.fromisoformat(value)
    if isinstance(value, pd.Timestamp):
        value = value.to_pydatetime()
    if value.tzinfo is None:
        return value.replace(tzinfo=dt.UTC)
    return value.astimezone(dt.UTC)


def freshness_status(age_days: float | None) -> str:
    """``fresh``, ``aging``, ``stale`` or ``unknown`` for an age in days (see module docs)."""
    if age_days is None or pd.isna(age_days):
        return "unknown"
    if age_days <= FRESH_DAYS:
        return "fresh"
    if age_days <= STALE_DAYS:
        return "aging"
    return "stale"


def _latest_versions() -> Any:
    """Subquery: the newest version of every dataset (``dataset_id, version_id, version``)."""
    ranked = select(
        DatasetVersion.dataset_id,
        DatasetVersion.id.label("version_id"),
        DatasetVersion.version,
        DatasetVersion.created_at,
        func.row_number()
        .over(
            partition_by=DatasetVersion.dataset_id,
            order_by=(DatasetVersion.created_at.desc(), DatasetVersion.id.desc()),
        )
        .label("rn"),
    ).subquery("ranked_versions")
    return (
        select(ranked.c.dataset_id, ranked.c.version_id, ranked.c.version, ranked.c.created_at)
        .where(ranked.c.rn == 1)
        .subquery("latest_versions")
    )


def _latest_version_id(dataset_id: int) -> Any:
    """Scalar subquery: id of the newest version of ``dataset_id`` (bound parameter)."""
    return (
        select(DatasetVersion.id)
        .where(DatasetVersion.dataset_id == dataset_id)
        .order_by(DatasetVersion.created_at.desc(), DatasetVersion.id.desc())
        .limit(1)
        .scalar_subquery()
    )


def newest_version_id(session: Session, dataset_id: int) -> int | None:
    """Id of the newest version of ``dataset_id`` (by ``created_at``, then id), or None.

    The one definition of "newest version" that every scoped analysis uses.
    """
    found = session.scalar(select(_latest_version_id(dataset_id)))
    return None if found is None else int(found)


def _dataset_study_ids(dataset_id: int) -> Select[Any]:
    """Ids of the studies with at least one image in the newest version of ``dataset_id``."""
    return (
        select(Series.study_id)
        .join(Image, Image.series_id == Series.id)
        .join(DatasetItem, DatasetItem.image_id == Image.id)
        .where(DatasetItem.version_id == _latest_version_id(dataset_id))
    )


@_db_errors
def resolve_dataset(session: Session, dataset: str | int) -> int:
    """Id of the dataset named ``dataset`` (a name, or an id given as int or digits).

    Raises
    ------
    DatasetNotFoundError
        No such dataset; the message lists the known names.
    """
    if isinstance(dataset, int) or str(dataset).isdigit():
        found = session.scalar(select(Dataset.id).where(Dataset.id == int(dataset)))
    else:
        found = session.scalar(select(Dataset.id).where(Dataset.name == dataset))
    if found is None:
        known = list(session.scalars(select(Dataset.name).order_by(Dataset.name)))
        raise DatasetNotFoundError(str(dataset), known)
    return int(found)


def model_version_matches(session: Session, spec: str | int) -> list[int]:
    """Ids of the model versions ``spec`` names: an id (int or digits), ``MODEL:VERSION``, or
    a bare version name (which may match several models). Callers decide what zero or several
    matches mean and which error to raise."""
    text = str(spec).strip()
    stmt = select(ModelVersion.id).join(Model, Model.id == ModelVersion.model_id)
    if isinstance(spec, int) or text.isdigit():
        stmt = stmt.where(ModelVersion.id == int(text))
    elif ":" in text:
        model, _, version = text.rpartition(":")
        stmt = stmt.where(Model.name == model, ModelVersion.version == version)
    else:
        stmt = stmt.where(ModelVersion.version == text)
    return [int(i) for i in session.scalars(stmt.order_by(ModelVersion.id))]


@_db_errors
def list_datasets(session: Session) -> pd.DataFrame:
    """All datasets, for pickers: columns ``dataset_id, name``, ordered by name."""
    rows = session.execute(
        select(Dataset.id.label("dataset_id"), Dataset.name).order_by(Dataset.name)
    ).all()
    return pd.DataFrame(rows, columns=["dataset_id", "name"])


@_db_errors
def dataset_overview(session: Session, *, now: dt.datetime | None = None) -> pd.DataFrame:
    """One row per dataset, as a data product: who owns it, what is in it, how fresh it is.

    Image, study, patient and prediction counts are over the dataset's newest version;
    annotation counts are over the dataset's labeling tasks.

    Parameters
    ----------
    session : an open session.
    now : the reference time for ``age_days`` (default: now, UTC).

    Returns
    -------
    DataFrame with :data:`OVERVIEW_COLUMNS`, ordered by name. ``last_update`` is an aware
    UTC datetime (or None), ``age_days`` a float (NaN without timestamps), ``freshness``
    one of ``fresh``, ``aging``, ``stale``, ``unknown``.
    """
    now = _as_utc(now) or dt.datetime.now(dt.UTC)
    latest = _latest_versions()

    n_versions = (
        select(DatasetVersion.dataset_id, func.count(DatasetVersion.id).label("n_versions"))
        .group_by(DatasetVersion.dataset_id)
        .subquery("n_versions")
    )
    content = (
        select(
            latest.c.dataset_id,
            func.count(distinct(DatasetItem.image_id)).label("n_images"),
            func.count(distinct(Study.id)).label("n_studies"),
            func.count(distinct(Study.patient_key)).label("n_patients"),
            func.max(Image.ingested_at).label("max_ingested"),
        )
        .join(DatasetItem, DatasetItem.version_id == latest.c.version_id)
        .join(Image, Image.id == DatasetItem.image_id)
        .join(Series, Series.id == Image.series_id)
        .join(Study, Study.id == Series.study_id)
        .group_by(latest.c.dataset_id)
        .subquery("content")
    )
    labels = (
        select(
            LabelingTask.dataset_id,
            func.count(Annotation.id).label("n_annotations"),
            func.max(Annotation.created_at).label("max_annotated"),
        )
        .join(Annotation, Annotation.task_id == LabelingTask.id)
        .group_by(LabelingTask.dataset_id)
        .subquery("labels")
    )
    preds = (
        select(latest.c.dataset_id, func.count(Prediction.id).label("n_predictions"))
        .join(DatasetItem, DatasetItem.version_id == latest.c.version_id)
        .join(Prediction, Prediction.image_id == DatasetItem.image_id)
        .group_by(latest.c.dataset_id)
        .subquery("preds")
    )
    stmt = (
        select(
            Dataset.id.label("dataset_id"),
            Dataset.name,
            Dataset.owner,
            Dataset.license,
            Dataset.description,
            func.coalesce(n_versions.c.n_versions, 0).label("n_versions"),
            latest.c.version.label("latest_version"),
            func.coalesce(content.c.n_images, 0).label("n_images"),
            func.coalesce(content.c.n_studies, 0).label("n_studies"),
            func.coalesce(content.c.n_patients, 0).label("n_patients"),
            func.coalesce(labels.c.n_annotations, 0).label("n_annotations"),
            func.coalesce(preds.c.n_predictions, 0).label("n_predictions"),
            Dataset.updated_at,
            latest.c.created_at.label("version_created"),
            content.c.max_ingested,
            labels.c.max_annotated,
        )
        .outerjoin(n_versions, n_versions.c.dataset_id == Dataset.id)
        .outerjoin(latest, latest.c.dataset_id == Dataset.id)
        .outerjoin(content, content.c.dataset_id == Dataset.id)
        .outerjoin(labels, labels.c.dataset_id == Dataset.id)
        .outerjoin(preds, preds.c.dataset_id == Dataset.id)
        .order_by(Dataset.name)
    )
    records = []
    # One row per dataset: combining four per-dataset maxima here is not a table scan.
    for row in session.execute(stmt).mappings():
        stamps = [
            s
            for s in (
                _as_utc(row["updated_at"]),
                _as_utc(row["version_created"]),
                _as_utc(row["max_ingested"]),
                _as_utc(row["max_annotated"]),
            )
            if s is not None
        ]
        last = max(stamps) if stamps else None
        age = (now - last).total_seconds() / 86400.0 if last else float("nan")
        rec = {k: row[k] for k in OVERVIEW_COLUMNS[:12]}
        rec.update(last_update=last, age_days=age, freshness=freshness_status(age))
        records.append(rec)
    df = pd.DataFrame(records, columns=OVERVIEW_COLUMNS)
    counts = ["n_versions", "n_images", "n_studies", "n_patients", "n_annotations"]
    for col in [*counts, "n_predictions"]:
        df[col] = df[col].astype("int64")
    return df


@dataclass(frozen=True)
class StoreTotals:
    """Counts over the whole annotation DB (all datasets and unassigned images)."""

    n_datasets: int
    n_sources: int
    n_studies: int
    n_patients: int
    n_series: int
    n_images: int
    n_ingest_errors: int

    @property
    def is_empty(self) -> bool:
        """True when nothing has been indexed and no dataset exists."""
        return self.n_images == 0 and self.n_datasets == 0 and self.n_ingest_errors == 0


@_db_errors
def store_totals(session: Session) -> StoreTotals:
    """Whole-DB counts in one round trip of scalar subqueries."""

    def n(stmt: Select[Any]) -> Any:
        return stmt.scalar_subquery()

    row = session.execute(
        select(
            n(select(func.count(Dataset.id))),
            n(select(func.count(Source.id))),
            n(select(func.count(Study.id))),
            n(select(func.count(distinct(Study.patient_key)))),
            n(select(func.count(Series.id))),
            n(select(func.count(Image.id))),
            n(select(func.count(IngestError.id))),
        )
    ).one()
    return StoreTotals(*(int(v or 0) for v in row))


@_db_errors
def images_by_source(session: Session, dataset_id: int | None = None) -> pd.DataFrame:
    """Image counts per source and modality: columns ``source, modality, n_images``.

    With ``dataset_id``, only the images in that dataset's newest version count. Images of a
    study without a source show as source ``(unknown)``.
    """
    stmt = (
        select(
            func.coalesce(Source.name, "(unknown)").label("source"),
            func.coalesce(Study.modality, "(unknown)").label("modality"),
            func.count(Image.id).label("n_images"),
        )
        .select_from(Image)
        .join(Series, Series.id == Image.series_id)
        .join(Study, Study.id == Series.study_id)
        .outerjoin(Source, Source.id == Study.source_id)
        .group_by(Source.name, Study.modality)
        .order_by(Source.name, Study.modality)
    )
    if dataset_id is not None:
        stmt = stmt.join(DatasetItem, DatasetItem.image_id == Image.id).where(
            DatasetItem.version_id == _latest_version_id(dataset_id)
        )
    rows = session.execute(stmt).all()
    df = pd.DataFrame(rows, columns=["source", "modality", "n_images"])
    df["n_images"] = df["n_images"].astype("int64")
    return df


@_db_errors
def filter_options(session: Session, dataset_id: int | None = None) -> dict[str, Any]:
    """Values for the Browser's filters.

    Returns
    -------
    dict with ``sources`` (sorted names), ``modalities`` (sorted codes), ``date_min`` and
    ``date_max`` (:class:`datetime.date` or None). With ``dataset_id``, only the studies
    with an image in the dataset's newest version count.
    """
    # One pass over the scope (EXPLAIN: the dataset semi-join is the whole cost, and three
    # queries made it three times): one row per (source, modality) with its date range.
    stmt = (
        select(
            Source.name,
            Study.modality,
            func.min(Study.study_date),
            func.max(Study.study_date),
        )
        .select_from(Study)
        .outerjoin(Source, Source.id == Study.source_id)
        .group_by(Source.name, Study.modality)
    )
    if dataset_id is not None:
        stmt = stmt.where(Study.id.in_(_dataset_study_ids(dataset_id)))
    rows = session.execute(stmt).all()
    lows = [_as_date(r[2]) for r in rows if r[2] is not None]
    highs = [_as_date(r[3]) for r in rows if r[3] is not None]
    return {
        "sources": sorted({r[0] for r in rows if r[0] is not None}),
        "modalities": sorted({r[1] for r in rows if r[1] is not None}),
        "date_min": min(lows) if lows else None,
        "date_max": max(highs) if highs else None,
    }


def _as_date(value: Any) -> dt.date | None:
    if value is None:
        return None
    if isinstance(value, dt.datetime):
        return value.date()
    if isinstance(value, dt.date):
        return value
    return dt.date.fromisoformat(str(value))


@_db_errors
def studies_page(
    session: Session,
    *,
    dataset_id: int | None = None,
    sources: Sequence[str] | None = None,
    modalities: Sequence[str] | None = None,
    date_from: dt.date | None = None,
    date_to: dt.date | None = None,
    page: int = 0,
    page_size: int = 25,
) -> tuple[pd.DataFrame, int]:
    """One page of studies matching the filters, and how many match in all.

    The page is cut in SQL (``LIMIT``/``OFFSET`` over ``study_date DESC, id``) before the
    per-study series and image counts are computed, so its cost does not grow with the
    number of studies; the total is a separate ``COUNT`` query. Every filter value is a
    bound parameter.

    Parameters
    ----------
    session : an open session.
    dataset_id : only studies with an image in this dataset's newest version.
    sources : source names to keep (None or empty: all).
    modalities : modality codes to keep (None or empty: all).
    date_from, date_to : inclusive bounds on ``study_date`` (None: open).
    page : zero-based page number.
    page_size : rows per page, 1 to :data:`MAX_PAGE_SIZE`.

    Returns
    -------
    (DataFrame with :data:`STUDY_COLUMNS`, total number of matching studies)

    Raises
    ------
    ValueError : for a negative ``page`` or a ``page_size`` out of range.
    """
    if page < 0:
        raise ValueError(f"page must be >= 0, not {page}")
    if not 1 <= page_size <= MAX_PAGE_SIZE:
        raise ValueError(f"page_size must be between 1 and {MAX_PAGE_SIZE}, not {page_size}")

    conditions: list[Any] = []
    if dataset_id is not None:
        conditions.append(Study.id.in_(_dataset_study_ids(dataset_id)))
    if sources:
        conditions.append(
            Study.source_id.in_(select(Source.id).where(Source.name.in_(list(sources))))
        )
    if modalities:
        conditions.append(Study.modality.in_(list(modalities)))
    if date_from is not None:
        conditions.append(Study.study_date >= date_from)
    if date_to is not None:
        conditions.append(Study.study_date <= date_to)

    total = session.scalar(select(func.count(Study.id)).where(*conditions)) or 0

    order = (Study.study_date.desc().nulls_last(), Study.id)
    page_ids = (
        select(Study.id)
        .where(*conditions)
        .order_by(*order)
        .limit(page_size)
        .offset(page * page_size)
        .subquery("page_ids")
    )
    n_series = select(func.count(Series.id)).where(Series.study_id == Study.id).scalar_subquery()
    n_images = (
        select(func.count(Image.id))
        .join(Series, Series.id == Image.series_id)
        .where(Series.study_id == Study.id)
        .scalar_subquery()
    )
    stmt = (
        select(
            Study.study_uid,
            Study.patient_key,
            Study.modality,
            Study.body_part,
            Study.study_date,
            Source.name.label("source"),
            n_series.label("n_series"),
            n_images.label("n_images"),
        )
        .join(page_ids, page_ids.c.id == Study.id)
        .outerjoin(Source, Source.id == Study.source_id)
        .order_by(*order)
    )
    df = pd.DataFrame(session.execute(stmt).all(), columns=STUDY_COLUMNS)
    df["study_date"] = df["study_date"].map(_as_date)
    for col in ("n_series", "n_images"):
        df[col] = df[col].astype("int64")
    return df, int(total)


@_db_errors
def study_images(session: Session, study_uid: str) -> pd.DataFrame:
    """The images of one study, by series number then instance number.

    Returns
    -------
    DataFrame with :data:`STUDY_IMAGE_COLUMNS` (empty for an unknown ``study_uid``).
    """
    stmt = (
        select(
            Image.id.label("image_id"),
            Image.sop_uid,
            Series.series_uid,
            Series.series_number,
            Series.description.label("series_description"),
            func.coalesce(Series.modality, Study.modality).label("modality"),
            Image.instance_number,
            Image.uri,
            Image.rows,
            Image.cols,
            Image.photometric,
            Image.n_frames,
        )
        .join(Series, Series.id == Image.series_id)
        .join(Study, Study.id == Series.study_id)
        .where(Study.study_uid == study_uid)
        .order_by(
            Series.series_number.asc().nulls_last(),
            Series.id,
            Image.instance_number.asc().nulls_last(),
            Image.id,
        )
    )
    return pd.DataFrame(session.execute(stmt).all(), columns=STUDY_IMAGE_COLUMNS)


@_db_errors
def ingest_error_summary(session: Session) -> pd.DataFrame:
    """Ingest errors per kind: columns ``kind, count``, most frequent first."""
    n = func.count(IngestError.id)
    rows = session.execute(
        select(IngestError.kind, n.label("count"))
        .group_by(IngestError.kind)
        .order_by(n.desc(), IngestError.kind)
    ).all()
    df = pd.DataFrame(rows, columns=["kind", "count"])
    df["count"] = df["count"].astype("int64")
    return df


# --------------------------------------------------------------------------- labeling tasks
#
# Which function for which page
# - :func:`list_tasks`: task pickers of the Doctors and Agreement pages, ``quality doctors``.
# - :func:`task_labels` / :func:`reference_labels_frame`: the inputs of
#   :func:`quality.doctors.build_doctor_report` and
#   :func:`quality.agreement.summary.build_agreement_summary` (long label contract).
# - :func:`image_refs`: thumbnails of the worst-disagreement galleries.
# - :func:`annotations_per_week`: the throughput columns of the team table.

__all__ += [
    "REFERENCE_KINDS",
    "TASK_COLUMNS",
    "TASK_LABEL_COLUMNS",
    "TASK_MASK_COLUMNS",
    "annotations_per_week",
    "image_refs",
    "list_tasks",
    "newest_version_id",
    "reference_labels_frame",
    "reference_masks",
    "task_labels",
    "task_masks",
]

REFERENCE_KINDS = ("gold", "exam")
TASK_COLUMNS = [
    "id",
    "name",
    "kind",
    "classes",
    "dataset_id",
    "dataset",
    "n_annotations",
    "n_images",
    "n_annotators",
]
TASK_LABEL_COLUMNS = [
    "item_id",
    "annotator_id",
    "label",
    "bbox",
    "created_at",
    "duration_s",
    "annotator_kind",
]
TASK_MASK_COLUMNS = ["item_id", "annotator_id", "created_at", "mask", "rows", "cols"]
# Bound parameters per IN list: well under SQLite's 32766 and PostgreSQL's 65535.
_IN_CHUNK = 1000


@_db_errors
def list_tasks(session: Session, dataset_id: int | None = None) -> pd.DataFrame:
    """Labeling tasks with their annotation counts, for pickers.

    Parameters
    ----------
    session : an open session.
    dataset_id : only the tasks of this dataset (None: all).

    Returns
    -------
    DataFrame with :data:`TASK_COLUMNS`, ordered by dataset name then task name: ``classes``
    is a list, ``n_annotations`` the number of annotation rows, ``n_images`` and
    ``n_annotators`` distinct counts (all 0 for a task without annotations).
    """
    counts = (
        select(
            Annotation.task_id,
            func.count(Annotation.id).label("n_annotations"),
            func.count(distinct(Annotation.image_id)).label("n_images"),
            func.count(distinct(Annotation.annotator_id)).label("n_annotators"),
        )
        .group_by(Annotation.task_id)
        .subquery("task_counts")
    )
    stmt = (
        select(
            LabelingTask.id,
            LabelingTask.name,
            LabelingTask.kind,
            LabelingTask.classes,
            LabelingTask.dataset_id,
            Dataset.name.label("dataset"),
            func.coalesce(counts.c.n_annotations, 0),
            func.coalesce(counts.c.n_images, 0),
            func.coalesce(counts.c.n_annotators, 0),
        )
        .join(Dataset, Dataset.id == LabelingTask.dataset_id)
        .outerjoin(counts, counts.c.task_id == LabelingTask.id)
        .order_by(Dataset.name, LabelingTask.name, LabelingTask.id)
    )
    if dataset_id is not None:
        stmt = stmt.where(LabelingTask.dataset_id == dataset_id)
    df = pd.DataFrame(session.execute(stmt).all(), columns=TASK_COLUMNS)
    df["classes"] = df["classes"].map(lambda c: list(c) if c else [])
    for col in ("id", "dataset_id", "n_annotations", "n_images", "n_annotators"):
        df[col] = df[col].astype("int64")
    return df


@_db_errors
def task_labels(session: Session, task_id: int, *, has_mask: bool = False) -> pd.DataFrame:
    """All annotations of a task as a long label frame (the DESIGN.md label contract).

    Parameters
    ----------
    session : an open session.
    task_id : the labeling task.
    has_mask : also return a bool ``has_mask`` column (``annotations.mask IS NOT NULL``,
        computed in SQL; the blobs are not loaded). For mask tasks, where a mask without a
        box is a region.

    Returns
    -------
    DataFrame with :data:`TASK_LABEL_COLUMNS`: ``item_id`` is the image id,
    ``annotator_id`` the annotator's pseudonymous *code* (str), ``bbox`` a
    ``[x0, y0, x1, y1]`` list or None, ``created_at`` aware UTC timestamps, ``duration_s``
    float (NaN where unknown), ``annotator_kind`` ``doctor`` or ``expert``. Ordered by
    ``item_id``, ``annotator_id``, ``created_at``. Empty (with the columns) for an unknown
    task.
    """
    columns = [
        Annotation.image_id,
        Annotator.code,
        Annotation.label,
        Annotation.bbox,
        Annotation.created_at,
        Annotation.duration_s,
        Annotator.kind,
    ]
    names = list(TASK_LABEL_COLUMNS)
    if has_mask:
        columns.append(Annotation.mask.is_not(None))
        names.append("has_mask")
    stmt = (
        select(*columns)
        .join(Annotator, Annotator.id == Annotation.annotator_id)
        .where(Annotation.task_id == task_id)
        .order_by(Annotation.image_id, Annotator.code, Annotation.created_at, Annotation.id)
    )
    # Plain tuples: pandas probes each Row's attributes, 2.5x slower at 10^6 rows.
    df = pd.DataFrame([tuple(r) for r in session.execute(stmt)], columns=names)
    if has_mask:
        df["has_mask"] = df["has_mask"].astype(bool)
    df["item_id"] = df["item_id"].astype("int64")
    df["annotator_id"] = df["annotator_id"].astype(object)
    df["label"] = df["label"].astype(object)
    df["created_at"] = pd.to_datetime(df["created_at"], utc=True)
    df["duration_s"] = pd.to_numeric(df["duration_s"], errors="coerce").astype("float64")
    return df


@_db_errors
def reference_labels_frame(
    session: Session, task_id: int, kind: str, *, has_mask: bool = False
) -> pd.DataFrame:
    """The reference answers of a task: ``item_id, label, bbox``, ordered by ``item_id``.

    Parameters
    ----------
    session : an open session.
    task_id : the labeling task.
    kind : ``"gold"`` (expert panel) or ``"exam"`` (exam-set answer key).
    has_mask : also return a bool ``has_mask`` column (``mask IS NOT NULL``, in SQL).

    Raises
    ------
    ValueError : for a ``kind`` other than those of :data:`REFERENCE_KINDS`.
    """
    if kind not in REFERENCE_KINDS:
        raise ValueError(f"kind must be one of {', '.join(REFERENCE_KINDS)}, not {kind!r}")
    columns = [ReferenceLabel.image_id, ReferenceLabel.label, ReferenceLabel.bbox]
    names = ["item_id", "label", "bbox"]
    if has_mask:
        columns.append(ReferenceLabel.mask.is_not(None))
        names.append("has_mask")
    stmt = (
        select(*columns)
        .where(ReferenceLabel.task_id == task_id, ReferenceLabel.kind == kind)
        .order_by(ReferenceLabel.image_id, ReferenceLabel.id)
    )
    df = pd.DataFrame(session.execute(stmt).all(), columns=names)
    if has_mask:
        df["has_mask"] = df["has_mask"].astype(bool)
    df["item_id"] = df["item_id"].astype("int64")
    df["label"] = df["label"].astype(object)
    return df


@_db_errors
def task_masks(session: Session, task_id: int) -> pd.DataFrame:
    """The masks drawn in one task, with the shape of their images.

    Only the task's annotations with a mask are read (``task_id`` and ``mask IS NOT NULL``
    filter in SQL); the blobs stay compressed (decode them with
    :func:`quality.agreement.masks.decode_mask`).

    Returns
    -------
    DataFrame with :data:`TASK_MASK_COLUMNS`: ``item_id`` (image id), ``annotator_id``
    (the annotator's code), ``created_at`` (aware UTC), ``mask`` (bytes), ``rows`` and
    ``cols`` (the image's; ``<NA>`` where unknown, nullable Int64). Ordered by ``item_id``,
    ``annotator_id``, ``created_at``.
    """
    stmt = (
        select(
            Annotation.image_id,
            Annotator.code,
            Annotation.created_at,
            Annotation.mask,
            Image.rows,
            Image.cols,
        )
        .join(Annotator, Annotator.id == Annotation.annotator_id)
        .join(Image, Image.id == Annotation.image_id)
        .where(Annotation.task_id == task_id, Annotation.mask.is_not(None))
        .order_by(Annotation.image_id, Annotator.code, Annotation.created_at, Annotation.id)
    )
    df = pd.DataFrame(session.execute(stmt).all(), columns=TASK_MASK_COLUMNS)
    df["item_id"] = df["item_id"].astype("int64")
    df["annotator_id"] = df["annotator_id"].astype(object)
    df["created_at"] = pd.to_datetime(df["created_at"], utc=True)
    df["mask"] = df["mask"].astype(object)
    df[["rows", "cols"]] = df[["rows", "cols"]].astype("Int64")
    return df


@_db_errors
def reference_masks(session: Session, task_id: int, kind: str = "gold") -> pd.DataFrame:
    """The reference masks of a task: ``item_id, mask, rows, cols``, by ``item_id``.

    Only rows with a mask are read (filtered in SQL). Several rows for one image come in
    insertion order (the last is the newest).

    Parameters
    ----------
    session : an open session.
    task_id : the labeling task.
    kind : ``"gold"`` or ``"exam"`` (:data:`REFERENCE_KINDS`).

    Raises
    ------
    ValueError : for a ``kind`` other than those of :data:`REFERENCE_KINDS`.
    """
    if kind not in REFERENCE_KINDS:
        raise ValueError(f"kind must be one of {', '.join(REFERENCE_KINDS)}, not {kind!r}")
    stmt = (
        select(ReferenceLabel.image_id, ReferenceLabel.mask, Image.rows, Image.cols)
        .join(Image, Image.id == ReferenceLabel.image_id)
        .where(
            ReferenceLabel.task_id == task_id,
            ReferenceLabel.kind == kind,
            ReferenceLabel.mask.is_not(None),
        )
        .order_by(ReferenceLabel.image_id, ReferenceLabel.id)
    )
    df = pd.DataFrame(session.execute(stmt).all(), columns=["item_id", "mask", "rows", "cols"])
    df["item_id"] = df["item_id"].astype("int64")
    df["mask"] = df["mask"].astype(object)
    df[["rows", "cols"]] = df[["rows", "cols"]].astype("Int64")
    return df


@_db_errors
def image_refs(session: Session, image_ids: Sequence[int]) -> pd.DataFrame:
    """Where to find some images: ``image_id, sop_uid, uri, rows, cols, photometric, source``.

    The ids travel as bound ``IN`` lists of at most 1000 values per query. Unknown ids are
    left out; the order follows ``image_id``.
    """
    columns = ["image_id", "sop_uid", "uri", "rows", "cols", "photometric", "source"]
    ids = sorted({int(i) for i in image_ids})
    frames = []
    for start in range(0, len(ids), _IN_CHUNK):
        stmt = (
            select(
                Image.id,
                Image.sop_uid,
                Image.uri,
                Image.rows,
                Image.cols,
                Image.photometric,
                Source.name,
            )
            .join(Series, Series.id == Image.series_id)
            .join(Study, Study.id == Series.study_id)
            .outerjoin(Source, Source.id == Study.source_id)
            .where(Image.id.in_(ids[start : start + _IN_CHUNK]))
        )
        frames.append(pd.DataFrame(session.execute(stmt).all(), columns=columns))
    if not frames:
        return pd.DataFrame(columns=columns)
    return pd.concat(frames, ignore_index=True).sort_values("image_id", ignore_index=True)


def _week_start(session: Session, column: Any) -> Any:
    """SQL for the Monday (ISO week start, UTC) of a timestamp column, per dialect."""
    if session.get_bind().dialect.name == "postgresql":
        return sql_cast(func.date_trunc("week", func.timezone("UTC", column)), Date)
    # SQLite stores UTC text: 'weekday 0' moves on to Sunday (or stays), '-6 days' is Monday.
    return func.date(column, "weekday 0", "-6 days")


@_db_errors
def annotations_per_week(session: Session, task_id: int) -> pd.DataFrame:
    """Throughput per annotator and ISO week, aggregated in SQL.

    The median duration is computed in SQL on both dialects with window functions (the
    middle one or two rows by ``duration_s`` within each annotator-week, averaged), since
    SQLite has no ``percentile_cont``. Weeks start on Monday, in UTC.

    Returns
    -------
    DataFrame ``annotator_id`` (code), ``week`` (:class:`datetime.date`, a Monday), ``n``
    (annotations), ``median_duration_s`` (NaN when no duration is known), ordered by
    annotator and week.
    """
    week = _week_start(session, Annotation.created_at).label("week")
    base = (
        select(
            Annotator.code.label("code"),
            week,
            Annotation.duration_s.label("duration_s"),
        )
        .join(Annotator, Annotator.id == Annotation.annotator_id)
        .where(Annotation.task_id == task_id)
        .subquery("weekly_base")
    )
    counts = (
        select(base.c.code, base.c.week, func.count(literal(1)).label("n"))
        .group_by(base.c.code, base.c.week)
        .subquery("weekly_counts")
    )
    ranked = (
        select(
            base.c.code,
            base.c.week,
            base.c.duration_s,
            func.row_number()
            .over(partition_by=(base.c.code, base.c.week), order_by=base.c.duration_s)
            .label("rn"),
            func.count(literal(1)).over(partition_by=(base.c.code, base.c.week)).label("cnt"),
        )
        .where(base.c.duration_s.is_not(None))
        .subquery("weekly_ranked")
    )
    medians = (
        select(
            ranked.c.code,
            ranked.c.week,
            func.avg(ranked.c.duration_s).label("median_duration_s"),
        )
        .where(
            ranked.c.rn.in_(((ranked.c.cnt + 1) // 2, (ranked.c.cnt + 2) // 2)),
        )
        .group_by(ranked.c.code, ranked.c.week)
        .subquery("weekly_medians")
    )
    stmt = (
        select(counts.c.code, counts.c.week, counts.c.n, medians.c.median_duration_s)
        .outerjoin(medians, and_(medians.c.code == counts.c.code, medians.c.week == counts.c.week))
        .order_by(counts.c.code, counts.c.week)
    )
    df = pd.DataFrame(
        session.execute(stmt).all(),
        columns=["annotator_id", "week", "n", "median_duration_s"],
    )
    df["week"] = df["week"].map(_as_date)
    df["n"] = df["n"].astype("int64")
    df["median_duration_s"] = pd.to_numeric(df["median_duration_s"]).astype("float64")
    return df
