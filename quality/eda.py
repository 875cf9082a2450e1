"""Automated exploratory data analysis (EDA) of a dataset's metadata and labels.

Every builder takes a :class:`~sqlalchemy.orm.Session` and a dataset id (None: every image in
the DB), scopes the images to the dataset's newest version
(:func:`quality.db.queries.newest_version_id`) and returns small tidy DataFrames of counts.
Counting, binning and the per-image majority vote all run in SQL (``GROUP BY``, ``CASE``,
window functions) and give the same numbers on SQLite and PostgreSQL; pandas only labels,
orders and reshapes the aggregates.

Which function fits which need
------------------------------
* :func:`profile` (alias :func:`eda_profile`): everything below in one
  :class:`EdaProfile`, with :meth:`EdaProfile.as_dict` for JSON and the notable facts.
* :func:`distribution`: images per source and value of one field of :data:`DISTRIBUTIONS`
  (source, vendor, modality, study week, patient age and sex, pixel spacing, image size,
  photometric interpretation, bits stored, kVp).
* :func:`class_balance`: images per class, source and split for every classification task.
* :func:`annotation_coverage`: images with 0, 1, 2 or 3+ readers per task, source and split.
* :func:`missing_by_source` / :func:`missing_by_week`: the share of images missing each
  field of the missing-value map; :func:`missing_matrix` makes the heatmap's wide matrix.
* :func:`notable_facts`: the rules below, on the frames of a profile.

Binning
-------
Numeric fields are cut into bins in SQL, labelled by their lower edge:

* **patient age** in decades ``0–9`` … ``80–89``, then one open bin ``90+``: ages above 89
  are identifying under the HIPAA Safe Harbor rule (45 CFR 164.514(b)(2)(i)(C)), so they
  are never shown one by one;
* **kVp** in bins of :data:`KVP_BIN_KV` (10 kV): ``120–130`` holds ``120 ≤ kVp < 130``;
* **pixel spacing** (row × column, mm) in bins of :data:`SPACING_BIN_MM` (0.01 mm):
  ``0.70`` holds ``0.70 ≤ s < 0.71``;
* **study date** by ISO week (the Monday that starts it).

A bin's index is ``floor(x / width + 1e-6)``: the small tolerance keeps values stored as
decimals (0.29 mm is 28.999… hundredths in binary floating point) in their own bin.
PostgreSQL has ``floor``; SQLite's ``CAST(x AS INTEGER)`` truncates toward zero, which is
corrected for negative values, so both dialects give identical bins. A NULL (or an empty
string) is the value ``(missing)``.

Labels
------
The class of an image in a classification task is its **gold reference label** (the
newest ``reference_labels`` row of kind ``gold``) when there is one, otherwise the
**majority label of the doctors** (annotators of kind ``doctor``; each doctor votes once
per label). A tie between the most-voted labels is the class ``(tie)``. Images without any
label are left out of the class balance; they show in the coverage as ``0`` readers.
``label_source`` says which rule gave each count. Experts' own annotations are not votes:
they are the panel behind the gold labels.

Readers are the distinct doctors with an annotation of the image in the task (experts
excluded, for the same reason). Tasks cover the images of their own dataset's newest
version, which also gives the split; with ``dataset_id=None`` every dataset's tasks count.

Missing-value map
-----------------
:data:`MISSING_FIELDS` lists the fields; a field is missing for an image when it is NULL
(or an empty string). ``pixel_spacing`` and ``image_size`` are missing when either of
their two columns is. ``software_version`` is the ``SoftwareVersions`` tag of the stored
header. ``quality_score`` is missing when no scorer version gave the image a quality
score. For every model version with a prediction in scope there is one field
``predictions <model> <version>``, missing when the image has no prediction of that
version with a label or a score (an empty output row counts as missing: the failure the
drift monitor calls an empty input).

Notable facts
-------------
:func:`notable_facts` applies four simple rules, in this order:

1. ``source_exclusive``: for ``photometric``, ``modality``, ``bits_stored`` and
   ``image_size``, a source with at least :data:`MIN_EXCLUSIVE_IMAGES` images (the other
   sources together, too) whose value ``v`` covers ≥ 95 % of its images while ``v`` covers
   ≤ 5 % of the other sources' images
   ("west_center is 100% MONOCHROME1 (0% at the other sources)").
2. ``missing``: every field of the missing-value map that some image lacks ("1 image
   (0%) has no pixel spacing — at west_center").
3. ``class_rarity``: for each class ``c`` of a classification task and each source (then
   each split) ``g`` with at least :data:`MIN_GROUP_IMAGES` labelled images, against the
   other groups pooled: the share of ``c`` at ``g`` differs from the share elsewhere by a
   factor ≥ :data:`RARITY_RATIO` (2), and the count behind the claim (``c``'s images at
   ``g``, or those expected there at the rate elsewhere) is at least
   :data:`MIN_CLASS_IMAGES` (5). A class absent at ``g`` says so. The ``(tie)`` class
   takes no part.
4. ``coverage``: a task in which some images have fewer than 2 readers (cross-annotation
   is what agreement and consensus need).

The ratio rule is the rate ratio of epidemiology (Rothman, Greenland & Lash, *Modern
Epidemiology*, 3rd ed., 2008, ch. 4); the thresholds are rules of thumb, not tests.

References
----------
Gebru et al., "Datasheets for Datasets", CACM 64(12), 2021 (composition questions).
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Final

import pandas as pd
from sqlalchemy import (
    Date,
    DateTime,
    Integer,
    and_,
    case,
    distinct,
    exists,
    func,
    literal,
    select,
)
from sqlalchemy import cast as sql_cast
from sqlalchemy.orm import Session
from sqlalchemy.sql.elements import ColumnElement

from quality.db.queries import _as_date, _db_errors, _latest_versions, newest_version_id
from quality.db.schema import (
    Annotation,
    Annotator,
    Dataset,
    DatasetItem,
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
from quality.errors import DatasetNotFoundError

__all__ = [
    "AGE_LABELS",
    "CLASS_BALANCE_COLUMNS",
    "COVERAGE_BUCKETS",
    "COVERAGE_COLUMNS",
    "DISTRIBUTIONS",
    "DISTRIBUTION_COLUMNS",
    "EXCLUSIVE_FIELDS",
    "KVP_BIN_KV",
    "MIN_CLASS_IMAGES",
    "MIN_EXCLUSIVE_IMAGES",
    "MIN_GROUP_IMAGES",
    "MISSING",
    "MISSING_COLUMNS",
    "MISSING_FIELDS",
    "RARITY_RATIO",
    "SPACING_BIN_MM",
    "TIE",
    "UNKNOWN_SOURCE",
    "EdaProfile",
    "Fact",
    "annotation_coverage",
    "class_balance",
    "distribution",
    "eda_profile",
    "missing_by_source",
    "missing_by_week",
    "missing_matrix",
    "notable_facts",
    "profile",
]

MISSING: Final = "(missing)"
"""The value of a NULL or empty field in distributions and of a NULL week."""
UNKNOWN_SOURCE: Final = "(unknown)"
"""The source of a study without one."""
TIE: Final = "(tie)"
"""The class of an image whose doctors' most-voted labels tie (and that has no gold label)."""
KVP_BIN_KV: Final = 10.0
SPACING_BIN_MM: Final = 0.01
AGE_LABELS: Final = (*(f"{lo}–{lo + 9}" for lo in range(0, 90, 10)), "90+")
"""Age bins, in order; the last one is open (ages above 89 identify people)."""
COVERAGE_BUCKETS: Final = ("0", "1", "2", "3+")
MIN_GROUP_IMAGES: Final = 10
"""Smallest group (source or split) the ``class_rarity`` rule makes a claim about."""
MIN_EXCLUSIVE_IMAGES: Final = 5
"""Smallest source (and rest) the ``source_exclusive`` rule makes a claim about."""
MIN_CLASS_IMAGES: Final = 5
"""Smallest count behind a ``class_rarity`` claim (observed, or expected at the rate elsewhere)."""
RARITY_RATIO: Final = 2.0
EXCLUSIVE_FIELDS: Final = ("photometric", "modality", "bits_stored", "image_size")
"""Fields the ``source_exclusive`` rule looks at."""
_EXCLUSIVE_SHARE: Final = 0.95
_ELSEWHERE_SHARE: Final = 0.05
_BIN_TOLERANCE: Final = 1e-6

DISTRIBUTION_COLUMNS: Final = ["source", "value", "n_images", "share"]
CLASS_BALANCE_COLUMNS: Final = ["task", "source", "split", "label", "n_images", "n_gold"]
COVERAGE_COLUMNS: Final = ["task", "source", "split", "readers", "n_images"]
MISSING_COLUMNS: Final = ["field", "n_images", "n_missing", "share_missing"]

DISTRIBUTIONS: Final[dict[str, str]] = {
    "source": "Source",
    "vendor": "Vendor (manufacturer · model)",
    "modality": "Modality",
    "study_week": "Study date (ISO week)",
    "patient_age": "Patient age (years)",
    "patient_sex": "Patient sex",
    "pixel_spacing": "Pixel spacing (mm, row × column)",
    "image_size": "Image size (rows × columns)",
    "photometric": "Photometric interpretation",
    "bits_stored": "Bits stored",
    "kvp": "Peak kilovoltage (kVp)",
}
"""Fields :func:`distribution` knows, with their titles."""

MISSING_FIELDS: Final[dict[str, str]] = {
    "modality": "modality",
    "body_part": "body part",
    "study_date": "study date",
    "patient_age": "patient age",
    "patient_sex": "patient sex",
    "pixel_spacing": "pixel spacing",
    "kvp": "kVp",
    "manufacturer": "manufacturer",
    "model": "model name",
    "software_version": "software version",
    "image_size": "image size",
    "quality_score": "quality score",
}
"""Fixed fields of the missing-value map (then one per model version), with their names."""
_PREDICTIONS: Final = "predictions"


# --------------------------------------------------------------------------- SQL helpers


def _dialect(session: Session) -> str:
    return session.get_bind().dialect.name


def _text(col: Any) -> ColumnElement[Any]:
    """A text column with empty (or blank) strings as NULL."""
    return func.nullif(func.trim(col), "")


def _floor(session: Session, expr: Any) -> ColumnElement[Any]:
    """``floor(expr)`` as an integer, identical on PostgreSQL and SQLite.

    SQLite only has ``floor`` when built with its math functions, and its
    ``CAST(x AS INTEGER)`` truncates toward zero, so negative values step down by one.
    """
    if _dialect(session) == "postgresql":
        return sql_cast(func.floor(expr), Integer)
    truncated = sql_cast(expr, Integer)
    return case((expr < truncated, truncated - 1), else_=truncated)


def _bin(session: Session, col: Any, width: float) -> ColumnElement[Any]:
    """Index of the ``width``-wide bin holding ``col`` (NULL stays NULL)."""
    return _floor(session, col / literal(width) + literal(_BIN_TOLERANCE))


def _age_bin(col: Any) -> ColumnElement[Any]:
    """Index into :data:`AGE_LABELS` (decades, then ``90+``)."""
    whens = [(col < 10 * (i + 1), i) for i in range(len(AGE_LABELS) - 1)]
    return case((col.is_(None), None), *whens, else_=len(AGE_LABELS) - 1)


def _week(session: Session, col: Any) -> ColumnElement[Any]:
    """The Monday of the ISO week of a date column, per dialect."""
    if _dialect(session) == "postgresql":
        return sql_cast(func.date_trunc("week", sql_cast(col, DateTime())), Date)
    # 'weekday 0' moves on to Sunday (or stays there); six days back is that week's Monday.
    return func.date(col, "weekday 0", "-6 days")


# --------------------------------------------------------------------------- scope


@dataclass(frozen=True)
class _Scope:
    dataset_id: int | None
    version_id: int | None

    @property
    def empty(self) -> bool:
        """A dataset without a version has no images."""
        return self.dataset_id is not None and self.version_id is None


def _scope(session: Session, dataset_id: int | None) -> _Scope:
    if dataset_id is None:
        return _Scope(None, None)
    # Only the id: a whole-row load would break on a DB one migration behind the models.
    if session.scalar(select(Dataset.id).where(Dataset.id == int(dataset_id))) is None:
        known = list(session.scalars(select(Dataset.name).order_by(Dataset.name)))
        raise DatasetNotFoundError(str(dataset_id), known)
    return _Scope(int(dataset_id), newest_version_id(session, int(dataset_id)))


def _base(scope: _Scope) -> Any:
    """One row per image in scope, with every profiled field (a subquery)."""
    stmt = (
        select(
            Image.id.label("image_id"),
            func.coalesce(Source.name, UNKNOWN_SOURCE).label("source"),
            Study.study_date.label("study_date"),
            func.coalesce(_text(Series.modality), _text(Study.modality)).label("modality"),
            func.coalesce(_text(Series.body_part), _text(Study.body_part)).label("body_part"),
            Study.patient_age_years.label("age"),
            _text(Study.patient_sex).label("sex"),
            _text(Series.manufacturer).label("manufacturer"),
            _text(Series.model).label("model"),
            _text(Image.header["SoftwareVersions"].as_string()).label("software"),
            Series.kvp.label("kvp"),
            Image.spacing_row.label("spacing_row"),
            Image.spacing_col.label("spacing_col"),
            Image.rows.label("rows"),
            Image.cols.label("cols"),
            _text(Image.photometric).label("photometric"),
            Image.bits_stored.label("bits_stored"),
        )
        .select_from(Image)
        .join(Series, Series.id == Image.series_id)
        .join(Study, Study.id == Series.study_id)
        .outerjoin(Source, Source.id == Study.source_id)
    )
    if scope.version_id is not None:
        stmt = stmt.join(
            DatasetItem,
            and_(DatasetItem.image_id == Image.id, DatasetItem.version_id == scope.version_id),
        )
    return stmt.subquery("eda_images")


# --------------------------------------------------------------------------- distributions


def _fmt_num(value: float) -> str:
    return f"{value:g}"


def _plain(values: tuple[Any, ...]) -> str | None:
    return None if values[0] is None else str(values[0])


def _vendor(values: tuple[Any, ...]) -> str | None:
    manufacturer, model = values
    if manufacturer is None and model is None:
        return None
    return f"{manufacturer or '?'} · {model or '?'}"


def _week_label(values: tuple[Any, ...]) -> str | None:
    day = _as_date(values[0])
    return None if day is None else day.isoformat()


def _age_label(values: tuple[Any, ...]) -> str | None:
    return None if values[0] is None else AGE_LABELS[int(values[0])]


def _spacing_label(values: tuple[Any, ...]) -> str | None:
    if values[0] is None or values[1] is None:
        return None
    row, col = (int(v) * SPACING_BIN_MM for v in values)
    return f"{row:.2f}" if values[0] == values[1] else f"{row:.2f} × {col:.2f}"


def _size_label(values: tuple[Any, ...]) -> str | None:
    if values[0] is None or values[1] is None:
        return None
    return f"{int(values[0])}×{int(values[1])}"


def _int_label(values: tuple[Any, ...]) -> str | None:
    return None if values[0] is None else str(int(values[0]))


def _kvp_label(values: tuple[Any, ...]) -> str | None:
    if values[0] is None:
        return None
    low = int(values[0]) * KVP_BIN_KV
    return f"{_fmt_num(low)}–{_fmt_num(low + KVP_BIN_KV)}"


def _numeric_sort(values: tuple[Any, ...]) -> tuple[Any, ...]:
    return tuple(float(v) for v in values)


def _text_sort(values: tuple[Any, ...]) -> tuple[Any, ...]:
    return tuple(str(v) for v in values)


@dataclass(frozen=True)
class _Dist:
    keys: Callable[[Session, Any], list[ColumnElement[Any]]]
    label: Callable[[tuple[Any, ...]], str | None]
    sort: Callable[[tuple[Any, ...]], tuple[Any, ...]]


_DISTS: Final[dict[str, _Dist]] = {
    "source": _Dist(lambda s, b: [b.c.source], _plain, _text_sort),
    "vendor": _Dist(lambda s, b: [b.c.manufacturer, b.c.model], _vendor, _text_sort),
    "modality": _Dist(lambda s, b: [b.c.modality], _plain, _text_sort),
    "study_week": _Dist(lambda s, b: [_week(s, b.c.study_date)], _week_label, _text_sort),
    "patient_age": _Dist(lambda s, b: [_age_bin(b.c.age)], _age_label, _numeric_sort),
    "patient_sex": _Dist(lambda s, b: [b.c.sex], _plain, _text_sort),
    "pixel_spacing": _Dist(
        lambda s, b: [
            _bin(s, b.c.spacing_row, SPACING_BIN_MM),
            _bin(s, b.c.spacing_col, SPACING_BIN_MM),
        ],
        _spacing_label,
        _numeric_sort,
    ),
    "image_size": _Dist(lambda s, b: [b.c.rows, b.c.cols], _size_label, _numeric_sort),
    "photometric": _Dist(lambda s, b: [b.c.photometric], _plain, _text_sort),
    "bits_stored": _Dist(lambda s, b: [b.c.bits_stored], _int_label, _numeric_sort),
    "kvp": _Dist(lambda s, b: [_bin(s, b.c.kvp, KVP_BIN_KV)], _kvp_label, _numeric_sort),
}


def _empty(columns: Sequence[str]) -> pd.DataFrame:
    return pd.DataFrame({c: pd.Series(dtype="object") for c in columns})


def _distribution(session: Session, name: str, base: Any) -> pd.DataFrame:
    spec = _DISTS[name]
    keys = spec.keys(session, base)
    labelled = [k.label(f"k{i}") for i, k in enumerate(keys)]
    stmt = select(base.c.source, *labelled, func.count().label("n")).group_by(base.c.source, *keys)
    rows = session.execute(stmt).all()
    if not rows:
        return _empty(DISTRIBUTION_COLUMNS)
    records = []
    for row in rows:
        values = tuple(row[1:-1])
        label = spec.label(values)
        # Missing values sort last; others by their natural (numeric or text) order.
        order = (1, ()) if label is None else (0, spec.sort(values))
        records.append((str(row[0]), label or MISSING, int(row[-1]), order))
    df = pd.DataFrame(records, columns=["source", "value", "n_images", "order"])
    # Distinct keys can share a label (a NULL row count, a NULL column count): add them up.
    df = df.groupby(["source", "value"], as_index=False, sort=False).agg(
        n_images=("n_images", "sum"), order=("order", "min")
    )
    totals = df.groupby("source")["n_images"].transform("sum")
    df["share"] = df["n_images"] / totals
    df = df.sort_values(["order", "source"], kind="stable", ignore_index=True)
    df["n_images"] = df["n_images"].astype("int64")
    return df[DISTRIBUTION_COLUMNS]


@_db_errors
def distribution(session: Session, name: str, dataset_id: int | None = None) -> pd.DataFrame:
    """Images per source and value of one field, counted in SQL.

    Parameters
    ----------
    session : an open session.
    name : a key of :data:`DISTRIBUTIONS`.
    dataset_id : the dataset (its newest version); None for every image.

    Returns
    -------
    DataFrame with :data:`DISTRIBUTION_COLUMNS`, one row per (source, value):
    ``value`` is the label of the value or bin (see the module's *Binning*; ``(missing)``
    for NULL), ``n_images`` the count and ``share`` ``n_images`` over the source's images,
    so that ``share`` sums to 1 per source. Ordered by value (bins ascending, missing
    last), then source. Empty (with the columns) when the scope has no image.

    Raises
    ------
    ValueError
        ``name`` is not a key of :data:`DISTRIBUTIONS` (the message lists them).
    DatasetNotFoundError
        ``dataset_id`` is not a dataset.
    """
    if name not in _DISTS:
        raise ValueError(f"unknown distribution {name!r}; valid: {', '.join(_DISTS)}")
    scope = _scope(session, dataset_id)
    if scope.empty:
        return _empty(DISTRIBUTION_COLUMNS)
    return _distribution(session, name, _base(scope))


# --------------------------------------------------------------------------- labels


def _task_scope(scope: _Scope, *, classification: bool) -> Any:
    """``task_id, task, image_id, split``: the images of each task's dataset's newest version."""
    latest = _latest_versions()
    stmt = (
        select(
            LabelingTask.id.label("task_id"),
            LabelingTask.name.label("task"),
            DatasetItem.image_id.label("image_id"),
            DatasetItem.split.label("split"),
        )
        .join(latest, latest.c.dataset_id == LabelingTask.dataset_id)
        .join(DatasetItem, DatasetItem.version_id == latest.c.version_id)
    )
    if scope.dataset_id is not None:
        stmt = stmt.where(LabelingTask.dataset_id == scope.dataset_id)
    if classification:
        stmt = stmt.where(LabelingTask.kind == "classification")
    return stmt.subquery("eda_task_images")


def _image_source() -> Any:
    """``image_id, source`` of every image (a subquery)."""
    return (
        select(
            Image.id.label("image_id"),
            func.coalesce(Source.name, UNKNOWN_SOURCE).label("source"),
        )
        .join(Series, Series.id == Image.series_id)
        .join(Study, Study.id == Series.study_id)
        .outerjoin(Source, Source.id == Study.source_id)
        .subquery("eda_image_source")
    )


def _class_balance(session: Session, scope: _Scope) -> pd.DataFrame:
    tasks = _task_scope(scope, classification=True)
    task_ids = select(tasks.c.task_id).distinct()
    label = _text(Annotation.label)
    votes = (
        select(
            Annotation.task_id.label("task_id"),
            Annotation.image_id.label("image_id"),
            label.label("label"),
            func.count(distinct(Annotation.annotator_id)).label("n"),
        )
        .join(Annotator, Annotator.id == Annotation.annotator_id)
        .where(
            Annotator.kind == "doctor",
            label.is_not(None),
            Annotation.task_id.in_(task_ids),
        )
        .group_by(Annotation.task_id, Annotation.image_id, label)
        .subquery("eda_votes")
    )
    ranked = select(
        votes.c.task_id,
        votes.c.image_id,
        votes.c.label,
        func.rank()
        .over(partition_by=(votes.c.task_id, votes.c.image_id), order_by=votes.c.n.desc())
        .label("rk"),
    ).subquery("eda_ranked_votes")
    majority = (
        select(
            ranked.c.task_id,
            ranked.c.image_id,
            case((func.count() > 1, TIE), else_=func.min(ranked.c.label)).label("label"),
        )
        .where(ranked.c.rk == 1)
        .group_by(ranked.c.task_id, ranked.c.image_id)
        .subquery("eda_majority")
    )
    gold_label = _text(ReferenceLabel.label)
    gold_ranked = (
        select(
            ReferenceLabel.task_id.label("task_id"),
            ReferenceLabel.image_id.label("image_id"),
            gold_label.label("label"),
            func.row_number()
            .over(
                partition_by=(ReferenceLabel.task_id, ReferenceLabel.image_id),
                order_by=ReferenceLabel.id.desc(),
            )
            .label("rn"),
        )
        .where(
            ReferenceLabel.kind == "gold",
            gold_label.is_not(None),
            ReferenceLabel.task_id.in_(task_ids),
        )
        .subquery("eda_gold_ranked")
    )
    gold = (
        select(gold_ranked.c.task_id, gold_ranked.c.image_id, gold_ranked.c.label)
        .where(gold_ranked.c.rn == 1)
        .subquery("eda_gold")
    )
    sources = _image_source()
    final_label = func.coalesce(gold.c.label, majority.c.label)
    per_image = (
        select(
            tasks.c.task,
            sources.c.source,
            tasks.c.split,
            final_label.label("label"),
            case((gold.c.label.is_not(None), 1), else_=0).label("is_gold"),
        )
        .join(sources, sources.c.image_id == tasks.c.image_id)
        .outerjoin(
            majority,
            and_(majority.c.task_id == tasks.c.task_id, majority.c.image_id == tasks.c.image_id),
        )
        .outerjoin(
            gold, and_(gold.c.task_id == tasks.c.task_id, gold.c.image_id == tasks.c.image_id)
        )
        .where(final_label.is_not(None))
        .subquery("eda_labels")
    )
    keys = (per_image.c.task, per_image.c.source, per_image.c.split, per_image.c.label)
    stmt = (
        select(*keys, func.count().label("n_images"), func.sum(per_image.c.is_gold))
        .group_by(*keys)
        .order_by(*keys)
    )
    df = pd.DataFrame(session.execute(stmt).all(), columns=CLASS_BALANCE_COLUMNS)
    if df.empty:
        return _empty(CLASS_BALANCE_COLUMNS)
    return df.astype({"n_images": "int64", "n_gold": "int64"})


@_db_errors
def class_balance(session: Session, dataset_id: int | None = None) -> pd.DataFrame:
    """Images per class, source and split, for every classification task in scope.

    An image's class is its gold label when it has one, else the doctors' majority label
    (``(tie)`` on a tie); see the module's *Labels*.

    Parameters
    ----------
    session : an open session.
    dataset_id : the dataset whose tasks count (each over its newest version); None for
        the tasks of every dataset.

    Returns
    -------
    DataFrame with :data:`CLASS_BALANCE_COLUMNS`: ``task`` (name), ``source``, ``split``,
    ``label``, ``n_images`` and ``n_gold`` (how many of them by the gold label), ordered
    by task, source, split and label. Labelled images only.

    Raises
    ------
    DatasetNotFoundError
        ``dataset_id`` is not a dataset.
    """
    scope = _scope(session, dataset_id)
    if scope.empty:
        return _empty(CLASS_BALANCE_COLUMNS)
    return _class_balance(session, scope)


def _coverage(session: Session, scope: _Scope) -> pd.DataFrame:
    tasks = _task_scope(scope, classification=False)
    readers = (
        select(
            Annotation.task_id.label("task_id"),
            Annotation.image_id.label("image_id"),
            func.count(distinct(Annotation.annotator_id)).label("n"),
        )
        .join(Annotator, Annotator.id == Annotation.annotator_id)
        .where(Annotator.kind == "doctor", Annotation.task_id.in_(select(tasks.c.task_id)))
        .group_by(Annotation.task_id, Annotation.image_id)
        .subquery("eda_readers")
    )
    sources = _image_source()
    n = func.coalesce(readers.c.n, 0)
    bucket = case((n == 0, "0"), (n == 1, "1"), (n == 2, "2"), else_="3+")
    per_image = (
        select(
            tasks.c.task,
            sources.c.source,
            tasks.c.split,
            bucket.label("readers"),
        )
        .join(sources, sources.c.image_id == tasks.c.image_id)
        .outerjoin(
            readers,
            and_(readers.c.task_id == tasks.c.task_id, readers.c.image_id == tasks.c.image_id),
        )
        .subquery("eda_coverage")
    )
    keys = (per_image.c.task, per_image.c.source, per_image.c.split, per_image.c.readers)
    stmt = select(*keys, func.count()).group_by(*keys).order_by(*keys)
    df = pd.DataFrame(session.execute(stmt).all(), columns=COVERAGE_COLUMNS)
    if df.empty:
        return _empty(COVERAGE_COLUMNS)
    return df.astype({"n_images": "int64"})


@_db_errors
def annotation_coverage(session: Session, dataset_id: int | None = None) -> pd.DataFrame:
    """Images with 0, 1, 2 or 3+ readers (distinct doctors), per task, source and split.

    Parameters
    ----------
    session : an open session.
    dataset_id : the dataset whose tasks count (each over its newest version); None for
        the tasks of every dataset.

    Returns
    -------
    DataFrame with :data:`COVERAGE_COLUMNS`; ``readers`` is one of
    :data:`COVERAGE_BUCKETS`. Every image of a task's dataset version counts once per
    task, so ``n_images`` sums to the version's size for each task.

    Raises
    ------
    DatasetNotFoundError
        ``dataset_id`` is not a dataset.
    """
    scope = _scope(session, dataset_id)
    if scope.empty:
        return _empty(COVERAGE_COLUMNS)
    return _coverage(session, scope)


# --------------------------------------------------------------------------- missing values


def _model_versions(session: Session, base: Any) -> list[tuple[int, str]]:
    """``(model_version_id, field name)`` of the versions with a prediction in scope."""
    stmt = (
        select(ModelVersion.id, Model.name, ModelVersion.version)
        .join(Model, Model.id == ModelVersion.model_id)
        .where(
            exists()
            .where(Prediction.model_version_id == ModelVersion.id)
            .where(Prediction.image_id.in_(select(base.c.image_id)))
        )
        .order_by(Model.name, ModelVersion.version)
    )
    return [
        (int(mv_id), f"{_PREDICTIONS} {name} {version}")
        for mv_id, name, version in session.execute(stmt).all()
    ]


def _missing_flags(session: Session, base: Any) -> dict[str, ColumnElement[Any]]:
    """Field name → SQL boolean "missing for this image" (the missing-value map)."""
    c = base.c
    scored = (
        exists()
        .where(ImageQuality.image_id == c.image_id)
        .where(ImageQuality.quality_score.is_not(None))
    )
    flags: dict[str, ColumnElement[Any]] = {
        "modality": c.modality.is_(None),
        "body_part": c.body_part.is_(None),
        "study_date": c.study_date.is_(None),
        "patient_age": c.age.is_(None),
        "patient_sex": c.sex.is_(None),
        "pixel_spacing": (c.spacing_row.is_(None)) | (c.spacing_col.is_(None)),
        "kvp": c.kvp.is_(None),
        "manufacturer": c.manufacturer.is_(None),
        "model": c.model.is_(None),
        "software_version": c.software.is_(None),
        "image_size": (c.rows.is_(None)) | (c.cols.is_(None)),
        "quality_score": ~scored,
    }
    for mv_id, name in _model_versions(session, base):
        # An output row without label and score is an empty input: it counts as missing.
        predicted = (
            exists()
            .where(Prediction.image_id == c.image_id)
            .where(Prediction.model_version_id == mv_id)
            .where(Prediction.label.is_not(None) | Prediction.score.is_not(None))
        )
        flags[name] = ~predicted
    return flags


def _week_key(value: Any) -> str:
    day = _as_date(value)
    return MISSING if day is None else day.isoformat()


def _missing_counts(session: Session, base: Any) -> pd.DataFrame:
    """``source, week, field, n_images, n_missing``: one SQL pass, grouped by source and week.

    Both missing-value maps are roll-ups of this small aggregate (sources × weeks × fields
    rows), so the per-image ``EXISTS`` probes run once, not once per map.
    """
    flags = _missing_flags(session, base)
    names = list(flags)
    week = _week(session, base.c.study_date)
    sums = [
        func.sum(case((flag, 1), else_=0)).label(f"m{i}") for i, flag in enumerate(flags.values())
    ]
    stmt = select(base.c.source, week.label("week"), func.count().label("n"), *sums).group_by(
        base.c.source, week
    )
    records = [
        (str(row[0]), _week_key(row[1]), name, int(row[2]), int(n_missing or 0))
        for row in session.execute(stmt).all()
        for name, n_missing in zip(names, row[3:], strict=True)
    ]
    df = pd.DataFrame(records, columns=["source", "week", "field", "n_images", "n_missing"])
    df["field"] = pd.Categorical(df["field"], categories=names, ordered=True)
    return df


def _roll_up(counts: pd.DataFrame, by: str) -> pd.DataFrame:
    columns = [by, *MISSING_COLUMNS]
    if counts.empty:
        return _empty(columns)
    df = counts.groupby([by, "field"], observed=True, as_index=False)[
        ["n_images", "n_missing"]
    ].sum()
    df["share_missing"] = df["n_missing"] / df["n_images"]
    if by == "week":
        # ISO dates sort as text; the week of the undated studies comes last.
        df["_m"] = df["week"] == MISSING
        df = df.sort_values(["_m", "week", "field"], ignore_index=True).drop(columns="_m")
    else:
        df = df.sort_values([by, "field"], ignore_index=True)
    df["field"] = df["field"].astype(str)
    return df.astype({"n_images": "int64", "n_missing": "int64"})[columns]


@_db_errors
def missing_by_source(session: Session, dataset_id: int | None = None) -> pd.DataFrame:
    """Share of the images of each source that miss each field of the missing-value map.

    Parameters
    ----------
    session : an open session.
    dataset_id : the dataset (its newest version); None for every image.

    Returns
    -------
    DataFrame ``source, field, n_images, n_missing, share_missing``, one row per source
    and field (:data:`MISSING_FIELDS`, then ``predictions <model> <version>`` per model
    version with a prediction in scope); ``share_missing = n_missing / n_images``.

    Raises
    ------
    DatasetNotFoundError
        ``dataset_id`` is not a dataset.
    """
    scope = _scope(session, dataset_id)
    if scope.empty:
        return _empty(["source", *MISSING_COLUMNS])
    return _roll_up(_missing_counts(session, _base(scope)), "source")


@_db_errors
def missing_by_week(session: Session, dataset_id: int | None = None) -> pd.DataFrame:
    """As :func:`missing_by_source`, per ISO week of the study date.

    Returns
    -------
    DataFrame ``week, field, n_images, n_missing, share_missing``; ``week`` is the ISO
    date of the week's Monday, or ``(missing)`` for studies without a date (last).
    """
    scope = _scope(session, dataset_id)
    if scope.empty:
        return _empty(["week", *MISSING_COLUMNS])
    return _roll_up(_missing_counts(session, _base(scope)), "week")


def missing_matrix(missing: pd.DataFrame, by: str = "source") -> pd.DataFrame:
    """The heatmap matrix of a missing-value frame: fields × ``by``, ``share_missing``.

    Parameters
    ----------
    missing : the frame of :func:`missing_by_source` (``by="source"``) or
        :func:`missing_by_week` (``by="week"``).
    by : its group column.

    Returns
    -------
    DataFrame indexed by field (in the frame's order), one column per group (in the
    frame's order), values in [0, 1]. Empty for an empty frame.
    """
    if missing.empty:
        return pd.DataFrame()
    fields = list(dict.fromkeys(missing["field"]))
    groups = list(dict.fromkeys(missing[by]))
    wide = missing.pivot(index="field", columns=by, values="share_missing")
    return wide.reindex(index=fields, columns=groups).astype("float64")


# --------------------------------------------------------------------------- facts


@dataclass(frozen=True)
class Fact:
    """One automatically detected notable fact.

    Attributes
    ----------
    rule : ``source_exclusive``, ``missing``, ``class_rarity`` or ``coverage``.
    message : the fact in plain words.
    field : the field it is about (the task for ``class_rarity`` and ``coverage``).
    subject : the source it is about (``source_exclusive``; ``missing`` when all the
        missing images are at one source), ``source <name>`` or ``split <name>``
        (``class_rarity``); '' when none.
    value : the number behind it: the source's share of the value (``source_exclusive``),
        the share missing (``missing``), the rate ratio (``class_rarity``; 0 when absent),
        or the images with fewer than 2 readers (``coverage``).
    """

    rule: str
    message: str
    field: str
    subject: str = ""
    value: float = 0.0


def _pct(share: float) -> str:
    """A share as a percentage; one decimal near 0 and 1, so that 1 of 400 is not "0%"."""
    if 0 < share < 0.01 or 0.99 < share < 1:
        return f"{share:.1%}"
    return f"{share:.0%}"


def _images(n: int) -> str:
    return f"{n:,} image" + ("" if n == 1 else "s")


def _exclusive_facts(distributions: dict[str, pd.DataFrame]) -> list[Fact]:
    facts: list[Fact] = []
    for name in EXCLUSIVE_FIELDS:
        df = distributions.get(name)
        if df is None or df.empty:
            continue
        known = df[df["value"] != MISSING]
        totals = df.groupby("source")["n_images"].sum()
        for source, n_source in totals.items():
            n_rest = int(totals.sum() - n_source)
            if n_source < MIN_EXCLUSIVE_IMAGES or n_rest < MIN_EXCLUSIVE_IMAGES:
                continue
            mine = known[known["source"] == source]
            if mine.empty:
                continue
            top = mine.loc[mine["n_images"].idxmax()]
            share = float(top["n_images"]) / float(n_source)
            rest = int(
                known.loc[
                    (known["source"] != source) & (known["value"] == top["value"]), "n_images"
                ].sum()
            )
            share_rest = rest / n_rest
            if share >= _EXCLUSIVE_SHARE and share_rest <= _ELSEWHERE_SHARE:
                facts.append(
                    Fact(
                        "source_exclusive",
                        f"{source} is {_pct(share)} {top['value']} "
                        f"({_pct(share_rest)} at the other sources)",
                        name,
                        str(source),
                        share,
                    )
                )
    return facts


def _field_label(name: str) -> str:
    if name.startswith(f"{_PREDICTIONS} "):
        return "prediction of " + name.removeprefix(f"{_PREDICTIONS} ")
    return MISSING_FIELDS.get(name, name)


def _missing_facts(by_source: pd.DataFrame) -> list[Fact]:
    facts: list[Fact] = []
    if by_source.empty:
        return facts
    for name, rows in by_source.groupby("field", sort=False):
        n = int(rows["n_images"].sum())
        n_missing = int(rows["n_missing"].sum())
        if n_missing == 0:
            continue
        label = _field_label(str(name))
        share = n_missing / n
        where = rows.loc[rows["n_missing"] > 0, "source"].astype(str).tolist()
        subject = where[0] if len(where) == 1 else ""
        if n_missing == n:
            message = f"no image has a {label}"
        else:
            verb = "has" if n_missing == 1 else "have"
            message = f"{_images(n_missing)} ({_pct(share)}) {verb} no {label}"
            if subject:
                message += f" — {'at' if n_missing == 1 else 'all at'} {subject}"
        facts.append(Fact("missing", message, str(name), subject, share))
    return facts


def _rarity_facts(balance: pd.DataFrame, group: str) -> list[Fact]:
    facts: list[Fact] = []
    labelled = balance[balance["label"] != TIE]
    place = "at" if group == "source" else "in"
    for task, rows in labelled.groupby("task", sort=True):
        counts = rows.groupby([group, "label"])["n_images"].sum().unstack(fill_value=0)
        totals = counts.sum(axis=1)
        for g in counts.index:
            n_g = int(totals[g])
            n_rest = int(totals.sum() - n_g)
            if n_g < MIN_GROUP_IMAGES or n_rest < MIN_GROUP_IMAGES:
                continue
            for label in counts.columns:
                k_g = int(counts.loc[g, label])
                k_rest = int(counts[label].sum() - k_g)
                share, share_rest = k_g / n_g, k_rest / n_rest
                expected = n_g * share_rest
                subject = f"{group} {g}"
                what = f"class {label!r} (task {task!r})"
                if share == 0 and expected >= MIN_CLASS_IMAGES:
                    facts.append(
                        Fact(
                            "class_rarity",
                            f"{what} is absent {place} {g} ({_pct(share_rest)} elsewhere)",
                            str(task),
                            subject,
                            0.0,
                        )
                    )
                elif share > 0 and share_rest > 0:
                    ratio = share_rest / share
                    if ratio >= RARITY_RATIO and expected >= MIN_CLASS_IMAGES:
                        facts.append(
                            Fact(
                                "class_rarity",
                                f"{what} is {ratio:.1f}× rarer {place} {g}: "
                                f"{_pct(share)} vs {_pct(share_rest)} elsewhere",
                                str(task),
                                subject,
                                ratio,
                            )
                        )
                    elif 1 / ratio >= RARITY_RATIO and k_g >= MIN_CLASS_IMAGES:
                        facts.append(
                            Fact(
                                "class_rarity",
                                f"{what} is {1 / ratio:.1f}× more common {place} {g}: "
                                f"{_pct(share)} vs {_pct(share_rest)} elsewhere",
                                str(task),
                                subject,
                                1 / ratio,
                            )
                        )
    return facts


def _coverage_facts(coverage: pd.DataFrame) -> list[Fact]:
    facts: list[Fact] = []
    for task, rows in coverage.groupby("task", sort=True):
        n = int(rows["n_images"].sum())
        by = rows.groupby("readers")["n_images"].sum()
        none, one = int(by.get("0", 0)), int(by.get("1", 0))
        if none + one == 0:
            continue
        verb = "has" if none + one == 1 else "have"
        facts.append(
            Fact(
                "coverage",
                f"task {task!r}: {_images(none + one)} ({_pct((none + one) / n)}) {verb} "
                f"fewer than 2 readers ({none:,} with none)",
                str(task),
                "",
                float(none + one),
            )
        )
    return facts


def notable_facts(
    distributions: dict[str, pd.DataFrame],
    class_balance: pd.DataFrame,
    coverage: pd.DataFrame,
    missing_by_source: pd.DataFrame,
) -> list[Fact]:
    """The notable facts of a profile's frames, by the rules of the module's docstring.

    Parameters
    ----------
    distributions : name → frame of :func:`distribution` (``photometric``, ``modality``,
        ``bits_stored`` and ``image_size`` are used).
    class_balance : the frame of :func:`class_balance`.
    coverage : the frame of :func:`annotation_coverage`.
    missing_by_source : the frame of :func:`missing_by_source`.

    Returns
    -------
    list of :class:`Fact`, by rule (``source_exclusive``, ``missing``, ``class_rarity``
    by source then by split, ``coverage``).
    """
    facts = _exclusive_facts(distributions)
    facts += _missing_facts(missing_by_source)
    if not class_balance.empty:
        facts += _rarity_facts(class_balance, "source")
        facts += _rarity_facts(class_balance, "split")
    if not coverage.empty:
        facts += _coverage_facts(coverage)
    return facts


# --------------------------------------------------------------------------- profile


def _jsonable(value: Any) -> Any:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    if isinstance(value, dt.date):
        return value.isoformat()
    if hasattr(value, "item"):  # a numpy scalar
        return _jsonable(value.item())
    return value


def _records(df: pd.DataFrame) -> list[dict[str, Any]]:
    """JSON-ready records: Python numbers at full precision, NaN as None, dates as ISO text."""
    return [{str(k): _jsonable(v) for k, v in rec.items()} for rec in df.to_dict(orient="records")]


@dataclass(frozen=True)
class EdaProfile:
    """The automatic profile of a dataset's newest version (or of every image).

    Attributes
    ----------
    dataset_id : the dataset (None: every image).
    version_id : its newest version (None for every image, or a dataset without one).
    n_images : images in scope.
    distributions : name (:data:`DISTRIBUTIONS`) → frame of :func:`distribution`.
    class_balance : frame of :func:`class_balance`.
    coverage : frame of :func:`annotation_coverage`.
    missing_by_source : frame of :func:`missing_by_source`.
    missing_by_week : frame of :func:`missing_by_week`.
    facts : :func:`notable_facts` of the frames above.
    """

    dataset_id: int | None
    version_id: int | None
    n_images: int
    distributions: dict[str, pd.DataFrame] = field(default_factory=dict)
    class_balance: pd.DataFrame = field(default_factory=lambda: _empty(CLASS_BALANCE_COLUMNS))
    coverage: pd.DataFrame = field(default_factory=lambda: _empty(COVERAGE_COLUMNS))
    missing_by_source: pd.DataFrame = field(
        default_factory=lambda: _empty(["source", *MISSING_COLUMNS])
    )
    missing_by_week: pd.DataFrame = field(
        default_factory=lambda: _empty(["week", *MISSING_COLUMNS])
    )
    facts: tuple[Fact, ...] = ()

    @property
    def is_empty(self) -> bool:
        """True when the scope holds no image."""
        return self.n_images == 0

    @property
    def sources(self) -> list[str]:
        """The sources in scope, by name."""
        df = self.distributions.get("source")
        return [] if df is None or df.empty else sorted(df["source"].unique())

    def as_dict(self) -> dict[str, Any]:
        """The profile as a JSON-serialisable dict (every frame as a list of records)."""
        return {
            "dataset_id": self.dataset_id,
            "version_id": self.version_id,
            "n_images": self.n_images,
            "distributions": {k: _records(v) for k, v in self.distributions.items()},
            "class_balance": _records(self.class_balance),
            "coverage": _records(self.coverage),
            "missing_by_source": _records(self.missing_by_source),
            "missing_by_week": _records(self.missing_by_week),
            "facts": [asdict(f) for f in self.facts],
        }


@_db_errors
def profile(session: Session, dataset_id: int | None = None) -> EdaProfile:
    """The automatic EDA profile of a dataset's newest version (or of every image).

    Parameters
    ----------
    session : an open session.
    dataset_id : the dataset; None for every image in the DB.

    Returns
    -------
    EdaProfile
        Every distribution of :data:`DISTRIBUTIONS`, the class balance, the annotation
        coverage, the missing-value maps and the notable facts. ``is_empty`` when the scope
        holds no image (then every frame is empty).

    Raises
    ------
    DatasetNotFoundError
        ``dataset_id`` is not a dataset.

    Examples
    --------
    >>> prof = profile(session, dataset_id)  # doctest: +SKIP
    >>> [f.message for f in prof.facts]  # doctest: +SKIP
    ['west_center is 100% MONOCHROME1 (0% at the other sources)', ...]
    """
    scope = _scope(session, dataset_id)
    if scope.empty:
        return EdaProfile(scope.dataset_id, None, 0)
    base = _base(scope)
    n_images = int(session.scalar(select(func.count()).select_from(base)) or 0)
    if n_images == 0:
        return EdaProfile(scope.dataset_id, scope.version_id, 0)
    dists = {name: _distribution(session, name, base) for name in _DISTS}
    balance = _class_balance(session, scope)
    coverage = _coverage(session, scope)
    counts = _missing_counts(session, base)
    by_source, by_week = _roll_up(counts, "source"), _roll_up(counts, "week")
    facts = notable_facts(dists, balance, coverage, by_source)
    return EdaProfile(
        dataset_id=scope.dataset_id,
        version_id=scope.version_id,
        n_images=n_images,
        distributions=dists,
        class_balance=balance,
        coverage=coverage,
        missing_by_source=by_source,
        missing_by_week=by_week,
        facts=tuple(facts),
    )


eda_profile = profile
"""Alias of :func:`profile` (the name ``quality eda`` calls)."""
