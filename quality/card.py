"""The dataset card: a data product's documentation, built live from the annotation DB.

A card describes one version of a dataset in the sections of the Hugging Face dataset card
and of *Datasheets for Datasets* (Gebru et al. 2021, Communications of the ACM 64(12)):
motivation, composition, collection, labeling, quality, uses, and license and maintenance.
Every number is computed from the DB when the card is built (SQL aggregates); only the
owner-written free text (:data:`CARD_FIELDS`: motivation, intended uses, …) is typed by a
person, and it lives in ``datasets.card_fields``.

Which function for which need
-----------------------------
- :func:`build_card`: the :class:`DatasetCard` of a dataset version (the Dataset card page,
  ``quality card``).
- :func:`card_markdown`: the card as Markdown with YAML front matter (Hugging Face keys
  plus ``dataset_version``, ``content_hash`` and ``generated_at``).
- :func:`card_status`: the data product's status API (``quality card --format json``):
  freshness, counts, the latest check run and an overall status.
- :func:`save_card_fields`: save the free-text fields (validated against
  :data:`CARD_FIELDS`).

Versions, snapshots and diffs live in :mod:`quality.snapshot`.

What the numbers mean
---------------------
- **Counts** are over the items of the card's version: images, distinct studies, series,
  patients (``studies.patient_key``, pseudonymous; never shown), sources.
- **Class balance**: per classification task and split, the image-level class of each item
  (:func:`quality.snapshot.consensus_labels`: the gold label where there is one, else the
  majority of the annotators' newest labels; a tied vote is ``(tie)``), as frozen when the
  version was made, or today's labels for a version that predates label freezing.
- **Cross-annotation coverage** (per task): the share of the version's images read by at
  least two distinct annotators, :math:`\\#\\{i: r_i \\ge 2\\} / N`, and the mean, median and
  maximum readers :math:`r_i` per labelled image.
- **Agreement** (classification tasks): Krippendorff's alpha, nominal
  (:func:`quality.agreement.categorical.krippendorff_alpha`; Krippendorff 2011), over the
  annotators' newest labels on the version's images, with a 95% percentile bootstrap
  interval that resamples images (:func:`quality.agreement.categorical.bootstrap_ci`;
  Efron & Tibshirani 1993), and the percent agreement (mean share of agreeing pairs).
- **Quality**: the newest scorer version's ``image_quality`` rows of the version's images:
  count, mean/min/max CNN quality score (0 unusable … 1 good), OOD flags and defect types.
- **Known issues**: the failing results of the dataset's latest check run
  (``check_runs``/``check_results``, written by ``quality check``), and patients with images
  in more than one split.
- **Freshness**: :func:`quality.db.queries.dataset_overview` (``fresh`` ≤ 7 days, ``aging``
  ≤ 30, else ``stale``).

Overall status (:func:`card_status`)
------------------------------------
``failing`` when the latest check run failed; else ``stale`` when the dataset is stale;
else ``no-checks`` when no check run exists; else ``ok``.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

import numpy as np
import pandas as pd
import yaml
from sqlalchemy import Select, case, distinct, func, select, update
from sqlalchemy.orm import Session

from quality.agreement.categorical import krippendorff_alpha_nominal_ci, percent_agreement
from quality.agreement.summary import jsonable
from quality.db import queries
from quality.db.queries import _as_utc, _db_errors, resolve_dataset
from quality.db.schema import (
    SPLITS,
    Annotation,
    Annotator,
    CheckResult,
    CheckRun,
    Dataset,
    DatasetItem,
    Image,
    ImageQuality,
    LabelingTask,
    ReferenceLabel,
    Series,
    Source,
    Study,
)
from quality.errors import CardFieldError, LabelDataError
from quality.snapshot import (
    UNKNOWN,
    VersionDiff,
    VersionInfo,
    class_counts,
    diff_versions,
    list_versions,
    newest_labels,
    require_schema,
    resolve_version,
)

__all__ = [
    "CARD_FIELDS",
    "MAX_FIELD_CHARS",
    "STATUSES",
    "CardField",
    "DatasetCard",
    "build_card",
    "card_markdown",
    "card_status",
    "save_card_fields",
]


@dataclass(frozen=True)
class CardField:
    """An owner-written section of the card.

    Attributes
    ----------
    title : its heading.
    prompt : the Datasheets-style question it answers (the editor's help text).
    """

    title: str
    prompt: str


CARD_FIELDS: Final[Mapping[str, CardField]] = {
    "motivation": CardField(
        "Motivation",
        "For what purpose was the dataset created? Which gap does it fill? Who created and "
        "funded it?",
    ),
    "collection_process": CardField(
        "Collection process",
        "How were the images acquired and selected (sites, devices, protocols, time frame)? "
        "Was an ethical review or consent process followed?",
    ),
    "preprocessing": CardField(
        "Preprocessing and de-identification",
        "Was any preprocessing, cleaning or de-identification done? Is the raw data kept?",
    ),
    "labeling_process": CardField(
        "Labeling process",
        "Who labelled the images, with which instructions and tools? How are disagreements "
        "resolved?",
    ),
    "intended_uses": CardField(
        "Intended uses", "Which tasks and settings is the dataset meant for?"
    ),
    "out_of_scope_uses": CardField(
        "Out-of-scope uses",
        "What should the dataset not be used for (populations, devices, clinical decisions)?",
    ),
    "known_limitations": CardField(
        "Known limitations and biases",
        "Which biases, gaps or known errors should a user keep in mind?",
    ),
    "sensitive_information": CardField(
        "Personal and sensitive information",
        "Does the dataset hold data that could identify a person? How is it protected?",
    ),
    "maintenance_plan": CardField(
        "Maintenance plan",
        "Who maintains the dataset, how often is it updated, and how are errors reported?",
    ),
    "contact": CardField("Contact", "Whom to contact about the dataset?"),
    "citation": CardField("Citation", "How should the dataset be cited (e.g. BibTeX)?"),
}
"""The free-text fields of the card, in card order: name → title and prompt."""

MAX_FIELD_CHARS: Final = 20_000
"""Longest text a free-text field may hold."""
STATUSES: Final = ("ok", "failing", "stale", "no-checks")
"""Overall statuses of :func:`card_status`."""
STATUS_SCHEMA: Final = "quality.card.status/1"
COUNT_KEYS: Final = (
    "images",
    "studies",
    "series",
    "patients",
    "sources",
    "annotations",
    "annotators",
    "doctors",
    "experts",
)
"""Keys of :attr:`DatasetCard.counts` (and of the status API's ``counts``)."""
_HF_TASKS: Final = {
    "classification": "image-classification",
    "bbox": "object-detection",
    "mask": "image-segmentation",
}
_SIZE_BUCKETS: Final = (
    (1_000, "n<1K"),
    (10_000, "1K<n<10K"),
    (100_000, "10K<n<100K"),
    (1_000_000, "100K<n<1M"),
    (10_000_000, "1M<n<10M"),
)


# --------------------------------------------------------------------------- the card


@dataclass
class DatasetCard:
    """Everything a dataset card shows, built by :func:`build_card`.

    Attributes
    ----------
    dataset_id, name, description, owner, license : the dataset's own fields.
    fields : the owner-written free text, field name → text (keys of :data:`CARD_FIELDS`).
    version : the version described (None when the dataset has no version yet).
    versions : :func:`quality.snapshot.list_versions` (newest first).
    counts : ``images, studies, series, patients, sources, annotations, annotators, doctors,
        experts`` over the version's items.
    modalities : ``modality, n_images``.
    sources : ``source, manufacturer, n_images, n_studies, n_patients``.
    devices : ``manufacturer, model, n_images`` (from the series headers).
    date_min, date_max : the range of study dates.
    splits : ``split, n_images, n_studies, n_patients``.
    n_cross_split_patients : patients with images in more than one split.
    class_balance : ``task, split, label, n_images`` (see module docs).
    labels_basis : ``frozen`` (the version's frozen labels), ``current`` (today's labels)
        or ``none`` (no classification task).
    tasks : one row per labeling task: ``task, kind, classes, n_annotations, n_annotators,
        n_doctors, n_experts, n_images_labelled, share_multi_read, readers_mean,
        readers_median, readers_max, n_gold``.
    agreement : ``task, statistic, estimate, low, high, percent_agreement, n_items,
        n_annotators`` for the classification tasks.
    quality : ``scorer_version, n_items, n_scored, mean_quality, min_quality, max_quality,
        n_ood, n_unreadable, n_defective`` (``scorer_version`` None when nothing is scored).
    defects : ``defect_type, n_images, mean_quality`` of the scored images.
    check_run : the latest check run: ``id, started_at, finished_at, passed, n_checks,
        n_failed, n_failed_rows``; None when there is none.
    check_results : that run's results: ``check_name, severity, passed, n_failed``.
    ingest_errors : ``kind, count`` over the whole store (errors are not tied to datasets).
    last_update, age_days, freshness : see :func:`quality.db.queries.dataset_overview`.
    changes : the diff from the previous version (or the one asked for); None without one.
    generated_at : when the card was built (aware UTC).
    """

    dataset_id: int
    name: str
    description: str | None
    owner: str | None
    license: str | None
    fields: dict[str, str]
    version: VersionInfo | None
    versions: pd.DataFrame
    counts: dict[str, int]
    modalities: pd.DataFrame
    sources: pd.DataFrame
    devices: pd.DataFrame
    date_min: dt.date | None
    date_max: dt.date | None
    splits: pd.DataFrame
    n_cross_split_patients: int
    class_balance: pd.DataFrame
    labels_basis: str
    tasks: pd.DataFrame
    agreement: pd.DataFrame
    quality: dict[str, Any]
    defects: pd.DataFrame
    check_run: dict[str, Any] | None
    check_results: pd.DataFrame
    ingest_errors: pd.DataFrame
    last_update: dt.datetime | None
    age_days: float | None
    freshness: str
    changes: VersionDiff | None
    generated_at: dt.datetime
    warnings: list[str] = field(default_factory=list)

    @property
    def status(self) -> str:
        """The overall status, one of :data:`STATUSES` (see module docs)."""
        run = self.check_run
        if run is not None and run["passed"] is False:
            return "failing"
        if self.freshness == "stale":
            return "stale"
        if run is None:
            return "no-checks"
        return "ok"

    @property
    def failing_checks(self) -> pd.DataFrame:
        """The failing results of the latest check run."""
        return self.check_results.loc[~self.check_results["passed"].astype(bool)].reset_index(
            drop=True
        )


# --------------------------------------------------------------------------- SQL pieces


def _scoped(stmt: Select[Any], version_id: int) -> Select[Any]:
    """``items ⋈ images ⋈ series ⋈ studies ⟕ sources`` of one version."""
    return (
        stmt.select_from(DatasetItem)
        .join(Image, Image.id == DatasetItem.image_id)
        .join(Series, Series.id == Image.series_id)
        .join(Study, Study.id == Series.study_id)
        .outerjoin(Source, Source.id == Study.source_id)
        .where(DatasetItem.version_id == version_id)
    )


def _items(version_id: int) -> Select[Any]:
    return select(DatasetItem.image_id).where(DatasetItem.version_id == version_id)


def _frame(session: Session, stmt: Select[Any], columns: list[str]) -> pd.DataFrame:
    # Plain tuples: pandas probes each Row's attributes, 2.5x slower at 10^6 rows.
    return pd.DataFrame([tuple(r) for r in session.execute(stmt)], columns=columns)


def _ints(df: pd.DataFrame, *cols: str) -> pd.DataFrame:
    for col in cols:
        df[col] = pd.to_numeric(df[col]).fillna(0).astype("int64")
    return df


def _composition(session: Session, version_id: int) -> dict[str, Any]:
    """Counts, modalities, sources, devices, date range and splits: one GROUP BY each."""
    counts_row = session.execute(
        _scoped(
            select(
                func.count(DatasetItem.id),
                func.count(distinct(Study.id)),
                func.count(distinct(Series.id)),
                func.count(distinct(Study.patient_key)),
                func.count(distinct(Study.source_id)),
                func.min(Study.study_date),
                func.max(Study.study_date),
            ),
            version_id,
        )
    ).one()
    modalities = _frame(
        session,
        _scoped(select(Study.modality, func.count(DatasetItem.id)), version_id)
        .group_by(Study.modality)
        .order_by(func.count(DatasetItem.id).desc(), Study.modality),
        ["modality", "n_images"],
    )
    modalities["modality"] = modalities["modality"].fillna(UNKNOWN)
    sources = _frame(
        session,
        _scoped(
            select(
                Source.name,
                Source.manufacturer,
                func.count(DatasetItem.id),
                func.count(distinct(Study.id)),
                func.count(distinct(Study.patient_key)),
            ),
            version_id,
        )
        .group_by(Source.name, Source.manufacturer)
        .order_by(Source.name),
        ["source", "manufacturer", "n_images", "n_studies", "n_patients"],
    )
    sources[["source", "manufacturer"]] = sources[["source", "manufacturer"]].fillna(UNKNOWN)
    devices = _frame(
        session,
        _scoped(select(Series.manufacturer, Series.model, func.count(DatasetItem.id)), version_id)
        .group_by(Series.manufacturer, Series.model)
        .order_by(Series.manufacturer, Series.model),
        ["manufacturer", "model", "n_images"],
    )
    devices[["manufacturer", "model"]] = devices[["manufacturer", "model"]].fillna(UNKNOWN)
    splits = _frame(
        session,
        _scoped(
            select(
                DatasetItem.split,
                func.count(DatasetItem.id),
                func.count(distinct(Study.id)),
                func.count(distinct(Study.patient_key)),
            ),
            version_id,
        ).group_by(DatasetItem.split),
        ["split", "n_images", "n_studies", "n_patients"],
    )
    order = {s: i for i, s in enumerate(SPLITS)}
    splits = splits.sort_values(
        "split", key=lambda s: s.map(order).fillna(len(order)), ignore_index=True
    )
    per_patient = (
        _scoped(
            select(Study.patient_key, func.count(distinct(DatasetItem.split)).label("k")),
            version_id,
        )
        .group_by(Study.patient_key)
        .subquery("patient_splits")
    )
    cross = session.scalar(select(func.count()).select_from(per_patient).where(per_patient.c.k > 1))
    return {
        "counts": {
            "images": int(counts_row[0] or 0),
            "studies": int(counts_row[1] or 0),
            "series": int(counts_row[2] or 0),
            "patients": int(counts_row[3] or 0),
            "sources": int(counts_row[4] or 0),
        },
        "date_min": queries._as_date(counts_row[5]),
        "date_max": queries._as_date(counts_row[6]),
        "modalities": _ints(modalities, "n_images"),
        "sources": _ints(sources, "n_images", "n_studies", "n_patients"),
        "devices": _ints(devices, "n_images"),
        "splits": _ints(splits, "n_images", "n_studies", "n_patients"),
        "n_cross_split_patients": int(cross or 0),
    }


TASK_COLUMNS: Final = [
    "task",
    "kind",
    "classes",
    "n_annotations",
    "n_annotators",
    "n_doctors",
    "n_experts",
    "n_images_labelled",
    "share_multi_read",
    "readers_mean",
    "readers_median",
    "readers_max",
    "n_gold",
]


def _median_from_histogram(values: list[int], counts: list[int]) -> float:
    """Median of a histogram (the mean of the two middle values for an even total)."""
    total = sum(counts)
    if total == 0:
        return float("nan")
    expanded_at = np.cumsum(counts)
    lo = values[int(np.searchsorted(expanded_at, (total + 1) // 2))]
    hi = values[int(np.searchsorted(expanded_at, total // 2 + 1))]
    return (lo + hi) / 2.0


def _labeling(session: Session, dataset_id: int, version_id: int, n_items: int) -> pd.DataFrame:
    """Per labeling task: annotations, annotators by kind, coverage, readers per image."""
    tasks = session.execute(
        select(LabelingTask.id, LabelingTask.name, LabelingTask.kind, LabelingTask.classes)
        .where(LabelingTask.dataset_id == dataset_id)
        .order_by(LabelingTask.name, LabelingTask.id)
    ).all()
    rows = []
    for task_id, name, kind, classes in tasks:
        per_image = (
            select(
                Annotation.image_id,
                func.count(distinct(Annotation.annotator_id)).label("k"),
                func.count(Annotation.id).label("n"),
            )
            .where(Annotation.task_id == task_id, Annotation.image_id.in_(_items(version_id)))
            .group_by(Annotation.image_id)
            .subquery("per_image")
        )
        hist = session.execute(
            select(per_image.c.k, func.count(), func.sum(per_image.c.n))
            .group_by(per_image.c.k)
            .order_by(per_image.c.k)
        ).all()
        ks = [int(k) for k, _, _ in hist]
        ns = [int(n) for _, n, _ in hist]
        n_labelled = sum(ns)
        kinds = dict(
            session.execute(
                select(Annotator.kind, func.count(distinct(Annotator.id)))
                .join(Annotation, Annotation.annotator_id == Annotator.id)
                .where(Annotation.task_id == task_id, Annotation.image_id.in_(_items(version_id)))
                .group_by(Annotator.kind)
            ).all()
        )
        n_gold = session.scalar(
            select(func.count(distinct(ReferenceLabel.image_id))).where(
                ReferenceLabel.task_id == task_id,
                ReferenceLabel.kind == "gold",
                ReferenceLabel.image_id.in_(_items(version_id)),
            )
        )
        multi = sum(n for k, n in zip(ks, ns, strict=True) if k >= 2)
        rows.append(
            {
                "task": str(name),
                "kind": str(kind),
                "classes": ", ".join(str(c) for c in (classes or [])),
                "n_annotations": sum(int(s or 0) for _, _, s in hist),
                "n_annotators": int(sum(kinds.values())),
                "n_doctors": int(kinds.get("doctor", 0)),
                "n_experts": int(kinds.get("expert", 0)),
                "n_images_labelled": n_labelled,
                "share_multi_read": multi / n_items if n_items else float("nan"),
                "readers_mean": (
                    float(np.dot(ks, ns) / n_labelled) if n_labelled else float("nan")
                ),
                "readers_median": _median_from_histogram(ks, ns),
                "readers_max": max(ks) if ks else 0,
                "n_gold": int(n_gold or 0),
            }
        )
    return pd.DataFrame(rows, columns=TASK_COLUMNS)


def _annotator_totals(session: Session, dataset_id: int, version_id: int) -> dict[str, int]:
    """Distinct annotators over all the dataset's tasks on the version's images, by kind."""
    rows = session.execute(
        select(Annotator.kind, func.count(distinct(Annotator.id)))
        .join(Annotation, Annotation.annotator_id == Annotator.id)
        .join(LabelingTask, LabelingTask.id == Annotation.task_id)
        .where(LabelingTask.dataset_id == dataset_id, Annotation.image_id.in_(_items(version_id)))
        .group_by(Annotator.kind)
    ).all()
    kinds = {str(k): int(n) for k, n in rows}
    n_annotations = session.scalar(
        select(func.count(Annotation.id))
        .join(LabelingTask, LabelingTask.id == Annotation.task_id)
        .where(LabelingTask.dataset_id == dataset_id, Annotation.image_id.in_(_items(version_id)))
    )
    return {
        "annotations": int(n_annotations or 0),
        "annotators": sum(kinds.values()),
        "doctors": kinds.get("doctor", 0),
        "experts": kinds.get("expert", 0),
    }


AGREEMENT_COLUMNS: Final = [
    "task",
    "statistic",
    "estimate",
    "low",
    "high",
    "percent_agreement",
    "n_items",
    "n_annotators",
]


def _agreement(
    session: Session, dataset_id: int, version_id: int, n_resamples: int, random_state: int
) -> pd.DataFrame:
    """Krippendorff's alpha (nominal) with a bootstrap CI per classification task."""
    tasks = session.execute(
        select(LabelingTask.id, LabelingTask.name, LabelingTask.classes)
        .where(LabelingTask.dataset_id == dataset_id, LabelingTask.kind == "classification")
        .order_by(LabelingTask.name, LabelingTask.id)
    ).all()
    rows = []
    for task_id, name, classes in tasks:
        classes = [str(c) for c in (classes or [])]
        # The raw labels are the input of the statistic: one row per (image, annotator).
        labels = _frame(
            session,
            newest_labels(task_id, classes, _items(version_id)),
            ["item_id", "annotator_id", "label"],
        )
        nan = float("nan")
        rec = {"task": str(name), "statistic": "krippendorff_alpha_nominal"}
        rec |= {"estimate": nan, "low": nan, "high": nan, "percent_agreement": nan}
        rec |= {"n_items": 0, "n_annotators": int(labels["annotator_id"].nunique())}
        if not labels.empty:
            # annotators × images, coded by class; built with numpy (a pivot of string
            # columns makes one Arrow array per image, which is slow).
            items, item_idx = np.unique(labels["item_id"].to_numpy(), return_inverse=True)
            raters, rater_idx = np.unique(labels["annotator_id"].to_numpy(), return_inverse=True)
            codes = pd.Index(classes or sorted(labels["label"].unique()))
            rel = np.full((len(raters), len(items)), np.nan)
            rel[rater_idx, item_idx] = codes.get_indexer(labels["label"].to_numpy(object))
            rec["n_items"] = int((np.isfinite(rel).sum(axis=0) >= 2).sum())
            try:
                ci = krippendorff_alpha_nominal_ci(
                    rel,
                    n_resamples=n_resamples,
                    random_state=random_state,
                )
                rec |= {"estimate": ci.estimate, "low": ci.low, "high": ci.high}
                rec["percent_agreement"] = float(percent_agreement(labels))
            except LabelDataError:
                pass  # fewer than two annotators or no image read twice: left NaN
        rows.append(rec)
    return pd.DataFrame(rows, columns=AGREEMENT_COLUMNS)


_UNREADABLE: Final = "unreadable"  # quality.imaging.score.UNREADABLE (not imported: torch)


def _quality(
    session: Session, version_id: int, n_items: int
) -> tuple[dict[str, Any], pd.DataFrame]:
    """Image-quality summary of the newest scorer version on the version's images."""
    scoped = select(ImageQuality.scorer_version).where(
        ImageQuality.image_id.in_(_items(version_id))
    )
    scorer = session.scalar(
        scoped.group_by(ImageQuality.scorer_version)
        .order_by(func.max(ImageQuality.scored_at).desc(), ImageQuality.scorer_version.desc())
        .limit(1)
    )
    empty = pd.DataFrame(columns=["defect_type", "n_images", "mean_quality"])
    summary: dict[str, Any] = {
        "scorer_version": scorer,
        "n_items": n_items,
        "n_scored": 0,
        "mean_quality": float("nan"),
        "min_quality": float("nan"),
        "max_quality": float("nan"),
        "n_ood": 0,
        "n_unreadable": 0,
        "n_defective": 0,
    }
    if scorer is None:
        return summary, empty
    where = (
        ImageQuality.scorer_version == scorer,
        ImageQuality.image_id.in_(_items(version_id)),
    )
    row = session.execute(
        select(
            func.count(ImageQuality.id),
            func.avg(ImageQuality.quality_score),
            func.min(ImageQuality.quality_score),
            func.max(ImageQuality.quality_score),
            func.sum(case((ImageQuality.is_ood.is_(True), 1), else_=0)),
        ).where(*where)
    ).one()
    defects = _frame(
        session,
        select(
            ImageQuality.defect_type,
            func.count(ImageQuality.id),
            func.avg(ImageQuality.quality_score),
        )
        .where(*where)
        .group_by(ImageQuality.defect_type)
        .order_by(func.count(ImageQuality.id).desc(), ImageQuality.defect_type),
        ["defect_type", "n_images", "mean_quality"],
    )
    defects["defect_type"] = defects["defect_type"].fillna(UNKNOWN)
    defects = _ints(defects, "n_images")
    defects["mean_quality"] = pd.to_numeric(defects["mean_quality"]).astype("float64")
    bad = ~defects["defect_type"].isin(["clean", UNKNOWN])

    def num(v: Any) -> float:
        return float("nan") if v is None else float(v)

    summary |= {
        "n_scored": int(row[0] or 0),
        "mean_quality": num(row[1]),
        "min_quality": num(row[2]),
        "max_quality": num(row[3]),
        "n_ood": int(row[4] or 0),
        "n_unreadable": int(defects.loc[defects["defect_type"] == _UNREADABLE, "n_images"].sum()),
        "n_defective": int(defects.loc[bad, "n_images"].sum()),
    }
    return summary, defects


def _checks(session: Session, dataset_id: int) -> tuple[dict[str, Any] | None, pd.DataFrame]:
    """The latest check run of the dataset and its results (read from the tables)."""
    columns = ["check_name", "severity", "passed", "n_failed"]
    run = session.execute(
        select(CheckRun.id, CheckRun.started_at, CheckRun.finished_at, CheckRun.passed)
        .where(CheckRun.dataset_id == dataset_id)
        .order_by(CheckRun.started_at.desc(), CheckRun.id.desc())
        .limit(1)
    ).one_or_none()
    if run is None:
        return None, pd.DataFrame(columns=columns)
    results = _frame(
        session,
        select(
            CheckResult.check_name, CheckResult.severity, CheckResult.passed, CheckResult.n_failed
        )
        .where(CheckResult.run_id == run[0])
        .order_by(CheckResult.passed, CheckResult.check_name, CheckResult.id),
        columns,
    )
    results["passed"] = results["passed"].astype(bool)
    results = _ints(results, "n_failed")
    failed = results.loc[~results["passed"]]
    # A run still in progress has no verdict yet: its failing results decide.
    passed = bool(run[3]) if run[3] is not None else (failed.empty if len(results) else None)
    return (
        {
            "id": int(run[0]),
            "started_at": _as_utc(run[1]),
            "finished_at": _as_utc(run[2]),
            "passed": passed,
            "n_checks": len(results),
            "n_failed": len(failed),
            "n_failed_rows": int(failed["n_failed"].sum()),
        },
        results,
    )


# --------------------------------------------------------------------------- builder


def _empty(columns: list[str]) -> pd.DataFrame:
    return pd.DataFrame(columns=columns)


@_db_errors
def build_card(
    session: Session,
    dataset: str | int,
    version: str | None = None,
    *,
    diff: tuple[str | None, str | None] | None = None,
    n_resamples: int = 200,
    random_state: int = 0,
    now: dt.datetime | None = None,
) -> DatasetCard:
    """Build the card of one version of a dataset from the DB (see module docs).

    Parameters
    ----------
    session : an open session on a DB at the newest schema revision.
    dataset : the dataset's name or id.
    version : the version to describe (default: the newest).
    diff : ``(old, new)`` versions for the "Changes" section (default: from the version made
        just before ``version`` to ``version``; none for a first version).
    n_resamples : bootstrap resamples of the agreement interval.
    random_state : seed of the bootstrap.
    now : the reference time of ``generated_at`` and ``age_days`` (default: now, UTC).

    Returns
    -------
    DatasetCard

    Raises
    ------
    DatasetNotFoundError, VersionNotFoundError
        Unknown dataset or version (the message lists the known ones).
    SchemaOutdatedError
        The DB predates migration ``0002`` (run ``quality db upgrade``).
    """
    require_schema(session)
    now = _as_utc(now) or dt.datetime.now(dt.UTC)
    dataset_id = resolve_dataset(session, dataset)
    meta = session.execute(
        select(
            Dataset.name, Dataset.description, Dataset.owner, Dataset.license, Dataset.card_fields
        ).where(Dataset.id == dataset_id)
    ).one()
    versions = list_versions(session, dataset_id)
    info = (
        resolve_version(session, dataset_id, version)
        if version is not None or len(versions)
        else None
    )
    overview = queries.dataset_overview(session, now=now)
    row = overview.loc[overview["dataset_id"] == dataset_id].iloc[0]
    age = None if pd.isna(row["age_days"]) else float(row["age_days"])
    check_run, check_results = _checks(session, dataset_id)
    warnings: list[str] = []
    fields = {k: str(v) for k, v in (meta[4] or {}).items() if k in CARD_FIELDS and v}

    base: dict[str, Any] = {
        "dataset_id": dataset_id,
        "name": str(meta[0]),
        "description": meta[1],
        "owner": meta[2],
        "license": meta[3],
        "fields": fields,
        "version": info,
        "versions": versions,
        "check_run": check_run,
        "check_results": check_results,
        "ingest_errors": queries.ingest_error_summary(session),
        "last_update": None if pd.isna(row["last_update"]) else _as_utc(row["last_update"]),
        "age_days": age,
        "freshness": str(row["freshness"]),
        "generated_at": now,
        "warnings": warnings,
    }
    if info is None:
        warnings.append(
            "The dataset has no version yet: run `quality dataset snapshot "
            f"{meta[0]} --add-new` to freeze its first one."
        )
        return DatasetCard(
            **base,
            counts=dict.fromkeys(COUNT_KEYS, 0),
            modalities=_empty(["modality", "n_images"]),
            sources=_empty(["source", "manufacturer", "n_images", "n_studies", "n_patients"]),
            devices=_empty(["manufacturer", "model", "n_images"]),
            date_min=None,
            date_max=None,
            splits=_empty(["split", "n_images", "n_studies", "n_patients"]),
            n_cross_split_patients=0,
            class_balance=_empty(["task", "split", "label", "n_images"]),
            labels_basis="none",
            tasks=_labeling(session, dataset_id, -1, 0),
            agreement=_empty(AGREEMENT_COLUMNS),
            quality=_quality(session, -1, 0)[0],
            defects=_empty(["defect_type", "n_images", "mean_quality"]),
            changes=None,
        )

    comp = _composition(session, info.id)
    n_items = comp["counts"]["images"]
    counts = comp.pop("counts") | _annotator_totals(session, dataset_id, info.id)
    balance = class_counts(session, info, dataset_id)
    tasks = _labeling(session, dataset_id, info.id, n_items)
    has_classification = bool((tasks["kind"] == "classification").any())
    basis = "none" if not has_classification else ("frozen" if info.labels_frozen else "current")
    if basis == "current":
        warnings.append(
            f"Version {info.version} was made before labels were frozen with versions: its "
            "class balance uses today's labels."
        )
    quality, defects = _quality(session, info.id, n_items)
    changes = None
    if diff is not None:
        changes = diff_versions(session, dataset_id, diff[0], diff[1])
    elif len(versions) > 1 and info.version != versions["version"].iloc[-1]:
        changes = diff_versions(session, dataset_id, None, info.version)
    return DatasetCard(
        **base,
        counts=counts,
        **comp,
        class_balance=balance,
        labels_basis=basis,
        tasks=tasks,
        agreement=_agreement(session, dataset_id, info.id, n_resamples, random_state),
        quality=quality,
        defects=defects,
        changes=changes,
    )


# --------------------------------------------------------------------------- status API


def card_status(card: DatasetCard) -> dict[str, Any]:
    """The data product's status, for pipelines and dashboards (JSON-serialisable).

    Returns
    -------
    dict with keys

    - ``schema``: ``"quality.card.status/1"``;
    - ``dataset``, ``dataset_id``, ``owner``, ``license``;
    - ``version``, ``content_hash``, ``version_created_at``, ``n_versions``;
    - ``last_updated`` (ISO 8601 or None), ``age_days``, ``freshness``;
    - ``counts``: ``images, studies, series, patients, sources, annotations, annotators,
      doctors, experts``;
    - ``latest_check_run``: ``id, at, finished_at, passed, n_checks, n_failed,
      n_failed_rows`` or None;
    - ``status``: one of :data:`STATUSES` (see module docs);
    - ``generated_at``.
    """
    run = card.check_run
    latest = None
    if run is not None:
        latest = {
            "id": run["id"],
            "at": run["started_at"],
            "finished_at": run["finished_at"],
            "passed": run["passed"],
            "n_checks": run["n_checks"],
            "n_failed": run["n_failed"],
            "n_failed_rows": run["n_failed_rows"],
        }
    v = card.version
    return jsonable(
        {
            "schema": STATUS_SCHEMA,
            "dataset": card.name,
            "dataset_id": card.dataset_id,
            "owner": card.owner,
            "license": card.license,
            "version": v.version if v else None,
            "content_hash": v.content_hash if v else None,
            "version_created_at": v.created_at if v else None,
            "n_versions": len(card.versions),
            "last_updated": card.last_update,
            "age_days": card.age_days,
            "freshness": card.freshness,
            "counts": dict(card.counts),
            "latest_check_run": latest,
            "status": card.status,
            "generated_at": card.generated_at,
        }
    )


# --------------------------------------------------------------------------- free text


@_db_errors
def save_card_fields(
    session: Session, dataset: str | int, fields: Mapping[str, str | None]
) -> dict[str, str]:
    """Save owner-written card fields; the others keep their text.

    A field set to None or to blank text is removed. Text is stripped and its line ends
    normalised to ``\\n``. The dataset's ``updated_at`` is set to now (UTC). The session is
    flushed, not committed: the caller commits.

    Parameters
    ----------
    session : an open session.
    dataset : the dataset's name or id.
    fields : field name (a key of :data:`CARD_FIELDS`) → text.

    Returns
    -------
    dict
        All the dataset's fields after the save.

    Raises
    ------
    CardFieldError
        An unknown field name (the message lists the valid ones), a value that is not text,
        or a text longer than :data:`MAX_FIELD_CHARS`. Nothing is saved then.
    DatasetNotFoundError
        Unknown dataset.
    """
    require_schema(session)
    dataset_id = resolve_dataset(session, dataset)
    name, current = session.execute(
        select(Dataset.name, Dataset.card_fields).where(Dataset.id == dataset_id)
    ).one()
    merged = {k: str(v) for k, v in (current or {}).items()}
    for key, value in fields.items():
        if key not in CARD_FIELDS:
            raise CardFieldError(
                str(name), str(key), f"unknown field; valid fields: {', '.join(CARD_FIELDS)}"
            )
        if value is not None and not isinstance(value, str):
            raise CardFieldError(str(name), key, f"must be text, not {type(value).__name__}")
        text = (value or "").replace("\r\n", "\n").replace("\r", "\n").strip()
        if len(text) > MAX_FIELD_CHARS:
            raise CardFieldError(
                str(name), key, f"is {len(text):,} characters long; at most {MAX_FIELD_CHARS:,}"
            )
        if text:
            merged[key] = text
        else:
            merged.pop(key, None)
    ordered = {k: merged[k] for k in CARD_FIELDS if k in merged}
    session.execute(
        update(Dataset)
        .where(Dataset.id == dataset_id)
        .values(card_fields=ordered, updated_at=dt.datetime.now(dt.UTC))
    )
    session.flush()
    return ordered


# --------------------------------------------------------------------------- Markdown


def _cell(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, bool | np.bool_):
        return "yes" if value else "no"
    if isinstance(value, int | np.integer):
        return f"{int(value):,}"
    if isinstance(value, float | np.floating):
        return f"{float(value):.3f}"
    return str(value).replace("|", "\\|").replace("\n", " ")


def _table(df: pd.DataFrame, headers: Mapping[str, str] | None = None) -> str:
    """A GitHub pipe table of ``df`` (column → header via ``headers``)."""
    headers = headers or {}
    head = "| " + " | ".join(headers.get(c, c) for c in df.columns) + " |"
    rule = "|" + "|".join("---" for _ in df.columns) + "|"
    body = ["| " + " | ".join(_cell(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join([head, rule, *body])


def _n(n: int, word: str) -> str:
    return f"{n:,} {word}" + ("" if n == 1 else "s")


def _pct(x: float) -> str:
    return "–" if x is None or math.isnan(x) else f"{100 * x:.1f}%"


def _free(card: DatasetCard, key: str) -> list[str]:
    text = card.fields.get(key)
    if text:
        return [text, ""]
    return [f"_Not documented yet._ {CARD_FIELDS[key].prompt}", ""]


def _size_category(n: int) -> str:
    for limit, label in _SIZE_BUCKETS:
        if n < limit:
            return label
    return "n>10M"


def _front_matter(card: DatasetCard) -> dict[str, Any]:
    kinds = [k for k in card.tasks["kind"].tolist() if k in _HF_TASKS] if len(card.tasks) else []
    categories = sorted({_HF_TASKS[k] for k in kinds})
    creators = "expert-generated" if card.counts.get("annotations", 0) else "no-annotation"
    modalities = {str(m).lower() for m in card.modalities["modality"] if m != UNKNOWN}
    tags = ["medical-imaging", *sorted(modalities)]
    return {
        "pretty_name": card.name,
        "license": (card.license or "unknown").lower(),
        "task_categories": categories,
        "size_categories": [_size_category(card.counts.get("images", 0))],
        "annotations_creators": [creators],
        "source_datasets": ["original"],
        "tags": tags,
        "dataset_version": card.version.version if card.version else None,
        "content_hash": card.version.content_hash if card.version else None,
        "generated_at": card.generated_at.isoformat(timespec="seconds"),
    }


def _diff_section(d: VersionDiff) -> list[str]:
    out = [f"## Changes since {d.old}", ""]
    same = " (same content hash)" if d.same_content else ""
    out += [
        f"From **{d.old}** ({d.n_old:,} images) to **{d.new}** ({d.n_new:,} images){same}: "
        f"{d.n_added:,} added, {d.n_removed:,} removed, {d.n_moved:,} moved to another split"
        + (
            f", {d.n_label_changes:,} with a changed class."
            if d.n_label_changes is not None
            else "; label changes unknown (an older version has no frozen labels)."
        ),
        "",
    ]
    if len(d.by_split):
        out += ["**Per split**", "", _table(d.by_split), ""]
    if len(d.split_moves):
        out += ["**Split moves**", "", _table(d.split_moves), ""]
    changed = d.sources.loc[d.sources["delta"] != 0]
    if len(changed):
        out += ["**Per source**", "", _table(changed), ""]
    balance = d.class_balance.loc[d.class_balance["delta"] != 0]
    if len(balance):
        basis = "" if d.labels_basis == "frozen" else " (with today's labels)"
        out += [f"**Class balance{basis}**", "", _table(balance), ""]
    if d.label_changes is not None and len(d.label_changes):
        out += ["**Label changes**", "", _table(d.label_changes), ""]
    if not d.n_changes:
        out += ["No image was added, removed, moved or relabelled.", ""]
    return out


def card_markdown(card: DatasetCard) -> str:
    """The card as Markdown: YAML front matter, then the sections (see module docs).

    The front matter is written by :func:`yaml.safe_dump`, so it always parses; its keys
    are the Hugging Face dataset-card keys ``pretty_name``, ``license``,
    ``task_categories``, ``size_categories``, ``annotations_creators``,
    ``source_datasets`` and ``tags``, plus ``dataset_version``, ``content_hash`` and
    ``generated_at``.
    """
    fm = yaml.safe_dump(_front_matter(card), sort_keys=False, allow_unicode=True)
    v = card.version
    c = card.counts
    out = ["---", fm.rstrip("\n"), "---", "", f"# Dataset card: {card.name}", ""]
    if card.description:
        out += [card.description, ""]
    version_txt = (
        f"version **{v.version}** (content hash `{v.content_hash[:12]}…`, made "
        f"{v.created_at:%Y-%m-%d}"
        if v and v.created_at
        else (f"version **{v.version}**" if v else "no version yet")
    )
    if v and v.created_at:
        version_txt += ")"
    run = card.check_run
    checks_txt = (
        "no check run yet"
        if run is None
        else f"latest check run #{run['id']} "
        + ("passed" if run["passed"] else f"failed {run['n_failed']} of {run['n_checks']} checks")
    )
    age = "" if card.age_days is None else f", {card.age_days:.0f} days ago"
    out += [
        f"**Status: {card.status}** · {version_txt} · {card.freshness}{age} · {checks_txt}.",
        "",
    ]
    out += [f"> ⚠️ {w}" for w in card.warnings] + ([""] if card.warnings else [])

    out += ["## Motivation", "", *_free(card, "motivation")]

    out += ["## Composition", ""]
    counts = pd.DataFrame(
        [
            ("images", c["images"]),
            ("studies", c["studies"]),
            ("series", c["series"]),
            ("patients", c["patients"]),
            ("sources", c["sources"]),
            ("annotations", c["annotations"]),
        ],
        columns=["what", "count"],
    )
    out += [_table(counts), ""]
    if card.date_min is not None:
        out += [f"Study dates from {card.date_min} to {card.date_max}.", ""]
    if len(card.modalities):
        out += ["### Modalities", "", _table(card.modalities), ""]
    if len(card.sources):
        out += ["### Sources and vendors", "", _table(card.sources), ""]
    if len(card.splits):
        out += ["### Splits", "", _table(card.splits), ""]
        if card.n_cross_split_patients:
            out += [
                f"{card.n_cross_split_patients:,} patients have images in more than one split.",
                "",
            ]
    if len(card.class_balance):
        wide = card.class_balance.pivot_table(
            index=["task", "label"], columns="split", values="n_images", aggfunc="sum", fill_value=0
        )
        cols = [s for s in SPLITS if s in wide.columns]
        wide = wide[cols + [s for s in wide.columns if s not in cols]]
        wide["total"] = wide.sum(axis=1)
        basis = (
            "frozen when the version was made"
            if card.labels_basis == "frozen"
            else "today's labels"
        )
        out += [
            "### Class balance",
            "",
            f"Image-level class: gold label where present, else the majority of the annotators "
            f"({basis}).",
            "",
            _table(wide.reset_index().astype(dict.fromkeys(wide.columns, "int64"))),
            "",
        ]
    if len(card.versions):
        shown = card.versions.assign(
            created_at=card.versions["created_at"].dt.strftime("%Y-%m-%d %H:%M"),
            content_hash=card.versions["content_hash"].str[:12],
        )[["version", "created_at", "n_items", "content_hash", "labels_frozen", "note"]]
        out += ["### Versions", "", _table(shown), ""]

    out += ["## Collection", "", *_free(card, "collection_process")]
    if len(card.devices):
        out += ["### Devices", "", _table(card.devices), ""]
    n_err = int(card.ingest_errors["count"].sum()) if len(card.ingest_errors) else 0
    kinds = ", ".join(f"{k} {n}" for k, n in card.ingest_errors.itertuples(index=False))
    out += [
        f"Ingest errors in the store (all datasets): {n_err:,}"
        + (f" ({kinds})." if n_err else "."),
        "",
    ]
    out += ["### Preprocessing and de-identification", "", *_free(card, "preprocessing")]

    out += ["## Labeling", "", *_free(card, "labeling_process")]
    out += [
        f"{c['annotators']:,} annotators ({c['doctors']:,} doctors, {c['experts']:,} experts) "
        f"made {c['annotations']:,} annotations on this version's images.",
        "",
    ]
    if len(card.tasks):
        tasks = card.tasks.assign(
            share_multi_read=card.tasks["share_multi_read"].map(_pct),
        )[["task", "kind", "classes", "n_annotations", "n_annotators", "n_images_labelled",
           "share_multi_read", "readers_mean", "readers_median", "readers_max", "n_gold"]]  # fmt: skip
        out += [
            "### Tasks and cross-annotation coverage",
            "",
            _table(tasks, {"share_multi_read": "read by ≥2"}),
            "",
        ]
    if len(card.agreement):
        out += [
            "### Agreement",
            "",
            "Krippendorff's alpha (nominal) with a 95% bootstrap interval over images; "
            "1 is perfect agreement, 0 chance level.",
            "",
            _table(card.agreement),
            "",
        ]

    out += ["## Quality", ""]
    q = card.quality
    if q["scorer_version"] is None:
        out += ["Image quality is not scored yet: run `quality score --dataset "
                f"{card.name}`.", ""]  # fmt: skip
    else:
        out += [
            f"Scorer `{q['scorer_version']}`: {q['n_scored']:,} of {q['n_items']:,} images "
            f"scored; mean quality {_cell(q['mean_quality'])} (min {_cell(q['min_quality'])}, "
            f"max {_cell(q['max_quality'])}); {q['n_defective']:,} with a defect, "
            f"{q['n_ood']:,} out of distribution, {q['n_unreadable']:,} unreadable.",
            "",
        ]
        if len(card.defects):
            out += [_table(card.defects), ""]
    out += ["### Known issues", ""]
    issues = []
    if run is not None:
        for r in card.failing_checks.itertuples(index=False):
            issues.append(f"- check `{r.check_name}` ({r.severity}): {r.n_failed:,} failing rows")
    if card.n_cross_split_patients:
        issues.append(f"- {_n(card.n_cross_split_patients, 'patient')} in more than one split")
    out += (issues or ["None known" + (" (no check run yet)." if run is None else ".")]) + [""]
    out += ["### Known limitations and biases", "", *_free(card, "known_limitations")]

    out += ["## Uses", "", "### Intended uses", "", *_free(card, "intended_uses")]
    out += ["### Out-of-scope uses", "", *_free(card, "out_of_scope_uses")]
    out += [
        "## Personal and sensitive information",
        "",
        "Patients appear only under a salted pseudonymous key; the stored DICOM headers "
        "exclude the PHI tags.",
        "",
        *_free(card, "sensitive_information"),
    ]

    last = "never" if card.last_update is None else f"{card.last_update:%Y-%m-%d %H:%M} UTC"
    out += [
        "## License and maintenance",
        "",
        f"- Owner: {card.owner or 'not set'}",
        f"- License: {card.license or 'not set'}",
        f"- Last update: {last} ({card.freshness})",
        "",
        "### Maintenance plan",
        "",
        *_free(card, "maintenance_plan"),
        "### Contact",
        "",
        *_free(card, "contact"),
    ]
    out += ["## Citation", "", *_free(card, "citation")]
    if card.changes is not None:
        out += _diff_section(card.changes)
    out += [f"_Generated by the Quality Workbench at {card.generated_at:%Y-%m-%d %H:%M} UTC._", ""]
    return "\n".join(out)
