"""Clinician spot-check of model predictions: samples, review sessions, verdicts, summary.

Which function for which job
----------------------------
- :func:`sample_predictions`: draw a reproducible sample of one model version's predictions
  with one of the :data:`STRATEGIES` (below).
- :func:`create_session`: draw a sample and save it as a review session (or find the same
  one again); :func:`list_sessions`, :func:`session_items`: pick and resume a session.
- :func:`ensure_reviewer`: the ``users`` row of a reviewer, made on first use (demo mode,
  until sign-in lands); :func:`list_reviewers` for the picker.
- :func:`submit_verdict`: one clinician's verdict on one prediction, written as an upsert in
  its own transaction; :func:`get_review` reads it back.
- :func:`progress`, :func:`next_unreviewed`: "k of n done" and the next or previous item the
  reviewer has not judged yet.
- :func:`review_summary`: agreement with the model per version (Wilson CI), per predicted
  class and per source, Cohen's κ of corrected labels, and the disagreements;
  :func:`export_reviews` / :func:`reviews_to_csv` feed ``quality review-export`` and the
  page's download.
- :func:`list_model_versions`, :func:`resolve_model_version`, :func:`version_classes`: the
  pickers and the CLI's ``--model-version``.

The pool and the strategies
---------------------------
The *pool* of a model version is its predictions that carry a label (a row with a NULL
label is a missing output: there is nothing to judge), restricted to the images of the
newest version of ``dataset_id`` when one is given. Every draw uses
``rng = numpy.random.default_rng(seed)`` on positions in the pool sorted by prediction id,
so a sample depends only on the pool, the parameters and the seed, never on the order in
which the DB returns rows. Only the drawn rows are read back: counts and positions come
from SQL (``COUNT``, ``GROUP BY``, ``ROW_NUMBER``).

``random``
    Simple random sampling without replacement: ``rng.choice(N, n, replace=False)``.
``stratified``
    Strata are predicted class × source (``(unknown)`` for a study without one).
    Proportional allocation :math:`q_h = n N_h / N`, rounded by the largest-remainder
    (Hamilton) method: every stratum gets :math:`\\lfloor q_h \\rfloor`, and the seats left
    go one each to the strata with the largest fractional parts :math:`q_h - \\lfloor q_h
    \\rfloor` (ties: the larger stratum, then the stratum key). Hence :math:`\\sum_h n_h = n`
    and :math:`|n_h - q_h| < 1` for every stratum. Each stratum is a simple random sample;
    the review order is then shuffled so that strata do not come in blocks. Reference:
    W. G. Cochran, *Sampling Techniques*, 3rd ed., Wiley 1977, §5.5 (proportional
    allocation); M. L. Balinski and H. P. Young, *Fair Representation*, 2001 (Hamilton's
    method).
``lowest_confidence``
    The predictions closest to the decision boundary, :math:`|s - 0.5|` ascending (``score``
    is the probability of a finding); ties are broken by a random key drawn from the seed.
    Predictions without a score are left out. The cut-off (the *n*-th smallest margin) is
    found in SQL and only rows at or under it are read.
``disagreement``
    Predictions whose label differs from the consensus of the annotators of the model's
    labeling task (``models.task_id``): each annotator's newest label per image (a SQL window
    function), labels outside the task's classes ignored, then
    :func:`~quality.agreement.consensus.majority_vote` or
    :class:`~quality.agreement.consensus.DawidSkene`. An image with fewer than two labels
    has no consensus and is left out; so is a tied top count under the majority, whereas
    Dawid-Skene settles it by the annotators' estimated reliability. A random sample of
    those. (The consensus runs in Python, so this strategy reads the pool's predictions and
    its images' labels; the others read counts and the drawn rows only.)
``ood``
    Predictions on images flagged ``is_ood`` in ``image_quality`` (the newest scorer version
    among the pool's images, or ``scorer_version``). A random sample of those; an error
    when none of the pool's images is scored.

Concurrency
-----------
:func:`submit_verdict` is one ``INSERT … ON CONFLICT (prediction_id, reviewer_id) DO
UPDATE`` (the dialect's insert, SQLite or PostgreSQL): two clinicians, or one clinician on
two tabs, never create two rows for the same (prediction, reviewer), and the row holds the
last verdict committed. On SQLite the writers serialise on the database lock (WAL, busy
timeout); a write that still finds the database locked is retried with exponential back-off
before it gives up with :class:`~quality.errors.ReviewWriteError`.
"""

from __future__ import annotations

import datetime as dt
import functools
import io
import json
import math
import time
import unicodedata
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal, ParamSpec, TypeVar, cast, get_args

import numpy as np
import pandas as pd
from sqlalchemy import Select, and_, case, distinct, func, inspect, literal, null, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import DBAPIError, OperationalError, SQLAlchemyError
from sqlalchemy.orm import Session

from quality import audit
from quality.agreement.categorical import cohen_kappa
from quality.agreement.consensus import DawidSkene, majority_vote
from quality.db.queries import _as_utc, _db_errors, _latest_version_id, model_version_matches
from quality.db.schema import (
    REVIEW_STRATEGIES,
    VERDICTS,
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
    Review,
    ReviewSession,
    ReviewSessionItem,
    Series,
    Source,
    Study,
    User,
)
from quality.db.session import safe_url
from quality.errors import (
    DatabaseUnavailableError,
    EmptyDatabaseError,
    LabelDataError,
    QualityError,
    ReviewInputError,
    ReviewWriteError,
    SchemaOutdatedError,
)

__all__ = [
    "CONSENSUS_METHODS",
    "DISAGREEMENT_COLUMNS",
    "EXPORT_COLUMNS",
    "ITEM_COLUMNS",
    "MAX_COMMENT_CHARS",
    "MAX_SAMPLE_SIZE",
    "SAMPLE_COLUMNS",
    "SESSION_COLUMNS",
    "STRATEGIES",
    "UNKNOWN_SOURCE",
    "VERDICTS",
    "VERSION_COLUMNS",
    "Consensus",
    "ReviewProgress",
    "ReviewSessionInfo",
    "ReviewSummary",
    "Strategy",
    "Verdict",
    "create_session",
    "ensure_reviewer",
    "export_reviews",
    "get_review",
    "get_session",
    "largest_remainder",
    "list_model_versions",
    "list_reviewers",
    "list_sessions",
    "next_unreviewed",
    "progress",
    "resolve_model_version",
    "review_summary",
    "reviews_to_csv",
    "reviews_to_records",
    "sample_predictions",
    "session_items",
    "submit_verdict",
    "version_classes",
    "wilson_interval",
]

Strategy = Literal["random", "stratified", "lowest_confidence", "disagreement", "ood"]
Consensus = Literal["majority", "dawid_skene"]
STRATEGIES: tuple[str, ...] = REVIEW_STRATEGIES  # the CHECK constraint's list; == Strategy
CONSENSUS_METHODS: tuple[str, ...] = get_args(Consensus)
MAX_SAMPLE_SIZE = 5000
"""Most predictions in one review session (a clinician reviews a few dozen a sitting)."""
MAX_COMMENT_CHARS = 4000
UNKNOWN_SOURCE = "(unknown)"
"""Source shown for a study without one (also a stratum of its own)."""

SAMPLE_COLUMNS = [
    "position",
    "prediction_id",
    "image_id",
    "label",
    "score",
    "source",
    "consensus_label",
    "ood_score",
]
ITEM_COLUMNS = [
    "position",
    "prediction_id",
    "image_id",
    "sop_uid",
    "uri",
    "rows",
    "cols",
    "label",
    "score",
    "bbox",
    "source",
]
SESSION_COLUMNS = [
    "session_id",
    "name",
    "model_version_id",
    "model",
    "version",
    "dataset",
    "strategy",
    "seed",
    "sample_size",
    "n_reviewed",
    "created_by",
    "created_at",
]
VERSION_COLUMNS = [
    "model_version_id",
    "model",
    "version",
    "status",
    "task_id",
    "n_predictions",
    "n_reviews",
]
EXPORT_COLUMNS = [
    "review_id",
    "prediction_id",
    "image_id",
    "sop_uid",
    "source",
    "model",
    "version",
    "label",
    "score",
    "reviewer",
    "verdict",
    "corrected_label",
    "corrected_bbox",
    "comment",
    "created_at",
    "updated_at",
]
DISAGREEMENT_COLUMNS = EXPORT_COLUMNS

_Z95 = 1.959963984540054  # the 97.5th percentile of the standard normal
_IN_CHUNK = 1000  # bound parameters per IN list, far under SQLite's and PostgreSQL's limits
_WRITE_ATTEMPTS = 8
_BACKOFF_S = 0.05
_BACKOFF_MAX_S = 2.0
# SQLite's "database is locked"/"busy", PostgreSQL's serialization failure and deadlock.
_RETRY_SQLSTATES = {"40001", "40P01"}

P = ParamSpec("P")
R = TypeVar("R")


# --------------------------------------------------------------------------- errors


def _review_errors(fn: Callable[P, R]) -> Callable[P, R]:
    """:func:`quality.db.queries._db_errors`, plus a plain :class:`SchemaOutdatedError` for a
    DB that has the workbench's tables but not yet those of migration ``0003``."""
    inner = _db_errors(fn)

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return inner(*args, **kwargs)
        except EmptyDatabaseError as exc:
            session = cast(Session, args[0] if args else kwargs["session"])
            try:
                insp = inspect(session.get_bind())
                outdated = insp.has_table("predictions") and not insp.has_table("review_sessions")
            except SQLAlchemyError:
                raise exc from None
            if outdated:
                raise SchemaOutdatedError(exc.url, "table review_sessions") from exc
            raise

    return wrapper


# --------------------------------------------------------------------------- statistics


def wilson_interval(k: int, n: int, z: float = _Z95) -> tuple[float, float]:
    r"""Wilson score interval of a proportion :math:`\hat p = k / n`.

    .. math::

        \frac{\hat p + \frac{z^2}{2n}}{1 + \frac{z^2}{n}} \;\pm\;
        \frac{z}{1 + \frac{z^2}{n}} \sqrt{\frac{\hat p (1 - \hat p)}{n} + \frac{z^2}{4 n^2}}

    Unlike the Wald interval it stays inside [0, 1] and keeps close to its nominal coverage
    for small *n* and for proportions near 0 or 1 — the usual case of agreement with a good
    model.

    Parameters
    ----------
    k : successes, ``0 <= k <= n``.
    n : trials.
    z : normal quantile (default 1.96: a 95% interval).

    Returns
    -------
    (low, high); ``(nan, nan)`` when ``n == 0``.

    References
    ----------
    E. B. Wilson, "Probable inference, the law of succession, and statistical inference",
    *J. Am. Stat. Assoc.* 22(158):209–212, 1927. L. D. Brown, T. T. Cai and A. DasGupta,
    "Interval estimation for a binomial proportion", *Statistical Science* 16(2):101–133,
    2001.

    Examples
    --------
    Brown, Cai and DasGupta's worked case, 2 of 20 (their Table 2 gives 0.028–0.301):

    >>> [round(v, 3) for v in wilson_interval(2, 20)]
    [0.028, 0.301]
    """
    if n < 0 or k < 0 or k > n:
        raise ValueError(f"need 0 <= k <= n, got k={k}, n={n}")
    if n == 0:
        return float("nan"), float("nan")
    p = k / n
    z2 = z * z
    den = 1.0 + z2 / n
    center = (p + z2 / (2 * n)) / den
    half = z / den * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n))
    return max(0.0, center - half), min(1.0, center + half)


def largest_remainder(sizes: Sequence[int], n: int) -> list[int]:
    r"""Allocate ``n`` seats to strata in proportion to their ``sizes`` (Hamilton's method).

    Quotas are :math:`q_h = n N_h / N`; each stratum gets :math:`\lfloor q_h \rfloor` and the
    remaining seats go one each to the largest fractional parts (ties: the larger stratum,
    then the earlier one). With ``n >= N`` every stratum is taken whole.

    Parameters
    ----------
    sizes : stratum sizes :math:`N_h \ge 0`.
    n : seats, ``n >= 0``.

    Returns
    -------
    list of int, the seats per stratum: they sum to ``min(n, N)``, never exceed
    :math:`N_h`, and differ from :math:`q_h` by less than 1.

    Examples
    --------
    >>> largest_remainder([50, 30, 20], 7)
    [4, 2, 1]
    """
    total = int(sum(sizes))
    if n < 0 or any(s < 0 for s in sizes):
        raise ValueError("sizes and n must be non-negative")
    if n >= total:
        return [int(s) for s in sizes]
    # Integer arithmetic: q_h = n N_h / N exactly as (floor, remainder numerator).
    floors = [n * int(s) // total for s in sizes]
    rema = [n * int(s) % total for s in sizes]
    left = n - sum(floors)
    order = sorted(range(len(sizes)), key=lambda h: (-rema[h], -int(sizes[h]), h))
    for h in order[:left]:
        floors[h] += 1
    return floors


# --------------------------------------------------------------------------- model versions


@_review_errors
def list_model_versions(session: Session) -> pd.DataFrame:
    """Every model version with its prediction and review counts (SQL ``GROUP BY``).

    Returns
    -------
    DataFrame with :data:`VERSION_COLUMNS`, ordered by model name then version id.
    ``task_id`` is the model's labeling task (``<NA>`` when it has none).
    """
    n_pred = (
        select(Prediction.model_version_id, func.count(Prediction.id).label("n"))
        .group_by(Prediction.model_version_id)
        .subquery("n_pred")
    )
    n_rev = (
        select(Prediction.model_version_id, func.count(Review.id).label("n"))
        .join(Prediction, Prediction.id == Review.prediction_id)
        .group_by(Prediction.model_version_id)
        .subquery("n_rev")
    )
    stmt = (
        select(
            ModelVersion.id,
            Model.name,
            ModelVersion.version,
            ModelVersion.status,
            Model.task_id,
            func.coalesce(n_pred.c.n, 0),
            func.coalesce(n_rev.c.n, 0),
        )
        .join(Model, Model.id == ModelVersion.model_id)
        .outerjoin(n_pred, n_pred.c.model_version_id == ModelVersion.id)
        .outerjoin(n_rev, n_rev.c.model_version_id == ModelVersion.id)
        .order_by(Model.name, ModelVersion.id)
    )
    df = pd.DataFrame(session.execute(stmt).all(), columns=VERSION_COLUMNS)
    for col in ("model_version_id", "n_predictions", "n_reviews"):
        df[col] = df[col].astype("int64")
    df["task_id"] = df["task_id"].astype("Int64")
    return df


def _version_names(session: Session) -> list[str]:
    rows = session.execute(
        select(ModelVersion.id, Model.name, ModelVersion.version)
        .join(Model, Model.id == ModelVersion.model_id)
        .order_by(Model.name, ModelVersion.id)
    ).all()
    return [f"{m}:{v} (id {i})" for i, m, v in rows]


def _unknown_version(session: Session, field: str, what: object) -> ReviewInputError:
    known = ", ".join(_version_names(session)) or "none; load predictions first"
    return ReviewInputError(field, f"no model version {what!r}; known versions: {known}")


@_review_errors
def resolve_model_version(session: Session, spec: str | int) -> int:
    """The id of a model version named by ``spec``.

    Parameters
    ----------
    spec : an id (int or digits), ``MODEL:VERSION`` (``chest-finding-classifier:v2``), or a
        bare version name (``v2``) when only one model has it.

    Raises
    ------
    ReviewInputError
        Unknown or ambiguous; the message lists the known versions.
    """
    text = str(spec).strip()
    hits = model_version_matches(session, spec)
    if len(hits) == 1:
        return int(hits[0])
    if len(hits) > 1:
        known = ", ".join(_version_names(session))
        raise ReviewInputError(
            "model_version", f"{text!r} is ambiguous: use MODEL:VERSION or the id ({known})"
        )
    raise _unknown_version(session, "model_version", spec)


def _require_version(session: Session, model_version_id: int) -> tuple[str, str, int | None]:
    """``(model name, version, task_id)`` of a version, or a ReviewInputError."""
    row = session.execute(
        select(Model.name, ModelVersion.version, Model.task_id)
        .join(Model, Model.id == ModelVersion.model_id)
        .where(ModelVersion.id == model_version_id)
    ).one_or_none()
    if row is None:
        raise _unknown_version(session, "model_version_id", model_version_id)
    return str(row[0]), str(row[1]), None if row[2] is None else int(row[2])


@_review_errors
def version_classes(session: Session, model_version_id: int) -> list[str]:
    """The classes a corrected label may take: the model's labeling task's classes, else
    the distinct labels the version predicted (sorted)."""
    _, _, task_id = _require_version(session, model_version_id)
    if task_id is not None:
        classes = session.scalar(select(LabelingTask.classes).where(LabelingTask.id == task_id))
        if classes:
            return [str(c) for c in classes]
    labels = session.scalars(
        select(Prediction.label)
        .distinct()
        .where(Prediction.model_version_id == model_version_id, Prediction.label.is_not(None))
        .order_by(Prediction.label)
    )
    return [str(v) for v in labels]


# --------------------------------------------------------------------------- sampling


def _source_expr() -> Any:
    return func.coalesce(Source.name, UNKNOWN_SOURCE)


def _with_source(stmt: Select[Any]) -> Select[Any]:
    return (
        stmt.join(Image, Image.id == Prediction.image_id)
        .join(Series, Series.id == Image.series_id)
        .join(Study, Study.id == Series.study_id)
        .outerjoin(Source, Source.id == Study.source_id)
    )


@dataclass(frozen=True)
class _Pool:
    """What a sampler needs: the pool's filter, the draw's parameters and the rng."""

    model_version_id: int
    dataset_id: int | None
    n: int
    rng: np.random.Generator
    task_id: int | None
    consensus: str
    scorer_version: str | None

    def where(self) -> list[Any]:
        conds: list[Any] = [
            Prediction.model_version_id == self.model_version_id,
            Prediction.label.is_not(None),
        ]
        if self.dataset_id is not None:
            conds.append(
                Prediction.image_id.in_(
                    select(DatasetItem.image_id).where(
                        DatasetItem.version_id == _latest_version_id(self.dataset_id)
                    )
                )
            )
        return conds


def _pick_positions(
    session: Session, pool: _Pool, positions: np.ndarray, extra: Sequence[Any] = ()
) -> list[int]:
    """Prediction ids at 0-based ``positions`` of the pool ordered by id, in the given order.

    ``ROW_NUMBER`` numbers the pool in SQL, so only the drawn rows travel.
    """
    if len(positions) == 0:
        return []
    rn = (func.row_number().over(order_by=Prediction.id) - 1).label("rn")
    ranked = _with_source(select(Prediction.id.label("pid"), rn)).where(*pool.where(), *extra)
    sub = ranked.subquery("ranked")
    wanted = sorted(int(p) for p in positions)
    found: dict[int, int] = {}
    for start in range(0, len(wanted), _IN_CHUNK):
        chunk = wanted[start : start + _IN_CHUNK]
        for pid, r in session.execute(select(sub.c.pid, sub.c.rn).where(sub.c.rn.in_(chunk))):
            found[int(r)] = int(pid)
    return [found[int(p)] for p in positions]


def _draw(pool: _Pool, size: int, k: int) -> np.ndarray:
    return pool.rng.choice(size, size=min(k, size), replace=False) if size else np.empty(0, int)


def _sample_random(session: Session, pool: _Pool) -> pd.DataFrame:
    size = int(session.scalar(select(func.count(Prediction.id)).where(*pool.where())) or 0)
    ids = _pick_positions(session, pool, _draw(pool, size, pool.n))
    return pd.DataFrame({"prediction_id": ids})


def _sample_stratified(session: Session, pool: _Pool) -> pd.DataFrame:
    source = _source_expr()
    counts = session.execute(
        _with_source(select(Prediction.label, source, func.count(Prediction.id)))
        .where(*pool.where())
        .group_by(Prediction.label, source)
    ).all()
    # Strata in code-point order of (label, source): the same on every dialect and collation.
    strata = sorted((str(lab), str(src), int(c)) for lab, src, c in counts)
    seats = largest_remainder([c for _, _, c in strata], pool.n)
    ids: list[int] = []
    for (label, src, size), k in zip(strata, seats, strict=True):
        extra = (Prediction.label == label, source == src)
        ids += _pick_positions(session, pool, _draw(pool, size, k), extra)
    order = pool.rng.permutation(len(ids))
    return pd.DataFrame({"prediction_id": np.asarray(ids, dtype=np.int64)[order]})


def _sample_lowest_confidence(session: Session, pool: _Pool) -> pd.DataFrame:
    margin = func.abs(Prediction.score - 0.5)
    conds = [*pool.where(), Prediction.score.is_not(None)]
    cutoff = session.scalar(
        select(margin).where(*conds).order_by(margin).offset(pool.n - 1).limit(1)
    )
    if cutoff is not None:
        conds.append(margin <= cutoff)
    rows = session.execute(
        select(Prediction.id, margin.label("margin")).where(*conds).order_by(Prediction.id)
    ).all()
    if not rows:
        return pd.DataFrame({"prediction_id": np.empty(0, np.int64)})
    ids = np.array([r[0] for r in rows], dtype=np.int64)
    margins = np.array([float(r[1]) for r in rows])
    key = pool.rng.random(len(ids))  # drawn in id order: the tie-break is the seed's
    order = np.lexsort((key, margins))[: pool.n]
    return pd.DataFrame({"prediction_id": ids[order]})


def _newest_labels(session: Session, pool: _Pool, classes: Sequence[str]) -> pd.DataFrame:
    """Each annotator's newest label of the task for every image of the pool (long frame)."""
    pool_images = select(Prediction.image_id).where(*pool.where())
    ranked = (
        select(
            Annotation.image_id.label("item_id"),
            Annotator.code.label("annotator_id"),
            Annotation.label.label("label"),
            func.row_number()
            .over(
                partition_by=(Annotation.image_id, Annotation.annotator_id),
                order_by=(Annotation.created_at.desc(), Annotation.id.desc()),
            )
            .label("rn"),
        )
        .join(Annotator, Annotator.id == Annotation.annotator_id)
        .where(
            Annotation.task_id == pool.task_id,
            Annotation.label.is_not(None),
            Annotation.image_id.in_(pool_images),
        )
        .subquery("ranked_labels")
    )
    stmt = (
        select(ranked.c.item_id, ranked.c.annotator_id, ranked.c.label)
        .where(ranked.c.rn == 1)
        .order_by(ranked.c.item_id, ranked.c.annotator_id)
    )
    df = pd.DataFrame(session.execute(stmt).all(), columns=["item_id", "annotator_id", "label"])
    return df.loc[df["label"].isin(list(classes))].reset_index(drop=True)


def _consensus(labels: pd.DataFrame, method: str, classes: Sequence[str]) -> pd.Series:
    """``image_id → consensus label`` of the images that have one (see module docs)."""
    if labels.empty or labels["annotator_id"].nunique() < 2:
        return pd.Series(dtype=object)
    n_labels = labels.groupby("item_id").size()
    if method == "dawid_skene":
        fitted = DawidSkene().fit_predict(labels, classes=list(classes))
        return fitted.loc[fitted.index.isin(n_labels.index[n_labels >= 2])]
    counts = labels.groupby(["item_id", "label"]).size()
    top = counts.groupby(level="item_id").max()
    n_top = (
        (counts == counts.index.get_level_values("item_id").map(top).to_numpy())
        .groupby(level="item_id")
        .sum()
    )
    clear = n_top.index[(n_top == 1) & (n_labels >= 2)]
    if len(clear) == 0:
        return pd.Series(dtype=object)
    voted = majority_vote(labels.loc[labels["item_id"].isin(clear)])
    return pd.Series(voted["label"].to_numpy(), index=voted["item_id"].to_numpy())


def _sample_disagreement(session: Session, pool: _Pool) -> pd.DataFrame:
    if pool.task_id is None:
        raise ReviewInputError(
            "strategy",
            "disagreement needs the model's labeling task (models.task_id) to compare with the "
            "annotators' consensus, and this model has none",
        )
    classes = session.scalar(select(LabelingTask.classes).where(LabelingTask.id == pool.task_id))
    labels = _newest_labels(session, pool, [str(c) for c in classes or []])
    try:
        consensus = _consensus(labels, pool.consensus, [str(c) for c in classes or []])
    except LabelDataError as exc:
        raise ReviewInputError("consensus", f"no consensus can be formed: {exc}") from exc
    preds = pd.DataFrame(
        session.execute(
            select(Prediction.id, Prediction.image_id, Prediction.label)
            .where(*pool.where())
            .order_by(Prediction.id)
        ).all(),
        columns=["prediction_id", "image_id", "label"],
    )
    preds["consensus_label"] = preds["image_id"].map(consensus)
    hits = preds.loc[
        preds["consensus_label"].notna() & (preds["consensus_label"] != preds["label"])
    ].reset_index(drop=True)
    order = _draw(pool, len(hits), pool.n)
    return hits.iloc[order][["prediction_id", "consensus_label"]].reset_index(drop=True)


def _sample_ood(session: Session, pool: _Pool) -> pd.DataFrame:
    pool_images = select(Prediction.image_id).where(*pool.where())
    version = pool.scorer_version
    if version is None:
        version = session.scalar(
            select(ImageQuality.scorer_version)
            .where(ImageQuality.image_id.in_(pool_images))
            .group_by(ImageQuality.scorer_version)
            .order_by(func.max(ImageQuality.scored_at).desc(), ImageQuality.scorer_version.desc())
            .limit(1)
        )
    if version is None:
        raise ReviewInputError(
            "strategy",
            "ood needs image-quality scores, and none of this model version's images is "
            "scored yet: run `quality score` first",
        )
    rows = session.execute(
        select(Prediction.id, ImageQuality.ood_score)
        .join(ImageQuality, ImageQuality.image_id == Prediction.image_id)
        .where(
            *pool.where(),
            ImageQuality.scorer_version == version,
            ImageQuality.is_ood.is_(True),
        )
        .order_by(Prediction.id)
    ).all()
    hits = pd.DataFrame(rows, columns=["prediction_id", "ood_score"])
    order = _draw(pool, len(hits), pool.n)
    return hits.iloc[order].reset_index(drop=True)


_SAMPLERS: dict[str, Callable[[Session, _Pool], pd.DataFrame]] = {
    "random": _sample_random,
    "stratified": _sample_stratified,
    "lowest_confidence": _sample_lowest_confidence,
    "disagreement": _sample_disagreement,
    "ood": _sample_ood,
}


def _prediction_details(session: Session, ids: Sequence[int]) -> pd.DataFrame:
    cols = ["prediction_id", "image_id", "label", "score", "source"]
    frames = [pd.DataFrame(columns=cols)]
    for start in range(0, len(ids), _IN_CHUNK):
        stmt = _with_source(
            select(
                Prediction.id,
                Prediction.image_id,
                Prediction.label,
                Prediction.score,
                _source_expr(),
            )
        ).where(Prediction.id.in_([int(i) for i in ids[start : start + _IN_CHUNK]]))
        frames.append(pd.DataFrame(session.execute(stmt).all(), columns=cols))
    return pd.concat(frames, ignore_index=True)


def _check_sample_args(
    strategy: str, n: int, seed: int, consensus: str
) -> tuple[str, int, int, str]:
    if strategy not in _SAMPLERS:
        raise ReviewInputError(
            "strategy", f"unknown strategy {strategy!r}; valid: {', '.join(STRATEGIES)}"
        )
    if consensus not in CONSENSUS_METHODS:
        raise ReviewInputError(
            "consensus", f"unknown method {consensus!r}; valid: {', '.join(CONSENSUS_METHODS)}"
        )
    if isinstance(n, bool) or not isinstance(n, int | np.integer) or not 1 <= n <= MAX_SAMPLE_SIZE:
        raise ReviewInputError("n", f"sample size must be 1 to {MAX_SAMPLE_SIZE}, not {n!r}")
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
        raise ReviewInputError("seed", f"seed must be an integer >= 0, not {seed!r}")
    return strategy, int(n), int(seed), consensus


@_review_errors
def sample_predictions(
    session: Session,
    model_version_id: int,
    strategy: Strategy,
    n: int,
    seed: int,
    dataset_id: int | None = None,
    *,
    consensus: Consensus = "majority",
    scorer_version: str | None = None,
) -> pd.DataFrame:
    """Draw a reproducible sample of one model version's predictions for review.

    Parameters
    ----------
    session : an open session.
    model_version_id : the model version whose predictions are sampled.
    strategy : one of :data:`STRATEGIES` (see the module docs).
    n : sample size, 1 to :data:`MAX_SAMPLE_SIZE`; fewer come back when the pool (or, for
        ``disagreement`` and ``ood``, the flagged part of it) is smaller.
    seed : seed of ``numpy.random.default_rng``; same pool and seed, same sample.
    dataset_id : only predictions on images of this dataset's newest version (None: all).
    consensus : ``majority`` or ``dawid_skene``, for ``disagreement``.
    scorer_version : image-quality scorer version for ``ood`` (None: the newest).

    Returns
    -------
    DataFrame with :data:`SAMPLE_COLUMNS`, one row per drawn prediction in review order
    (``position`` 0, 1, …). ``consensus_label`` is filled by ``disagreement`` and
    ``ood_score`` by ``ood`` (None/NaN otherwise).

    Raises
    ------
    ReviewInputError
        Unknown model version (lists the known ones), strategy or consensus method; a size
        or seed out of range; ``disagreement`` for a model without a labeling task; ``ood``
        when the pool's images are not scored.
    """
    strategy, n, seed, consensus = _check_sample_args(strategy, n, seed, consensus)
    _, _, task_id = _require_version(session, model_version_id)
    if dataset_id is not None and session.get(Dataset, int(dataset_id)) is None:
        raise ReviewInputError("dataset_id", f"no dataset with id {dataset_id}")
    pool = _Pool(
        model_version_id=int(model_version_id),
        dataset_id=None if dataset_id is None else int(dataset_id),
        n=n,
        rng=np.random.default_rng(seed),
        task_id=task_id,
        consensus=consensus,
        scorer_version=scorer_version,
    )
    drawn = _SAMPLERS[strategy](session, pool)
    ids = [int(i) for i in drawn["prediction_id"]]
    details = _prediction_details(session, ids).set_index("prediction_id")
    out = pd.DataFrame(
        {
            "position": np.arange(len(ids), dtype=np.int64),
            "prediction_id": np.asarray(ids, dtype=np.int64),
        }
    )
    for col in ("image_id", "label", "score", "source"):
        out[col] = details[col].reindex(ids).to_numpy()
    out["image_id"] = out["image_id"].astype("int64")
    out["score"] = pd.to_numeric(out["score"]).astype("float64")
    out["label"] = out["label"].astype(object)
    out["consensus_label"] = (
        drawn["consensus_label"].to_numpy() if "consensus_label" in drawn else None
    )
    out["consensus_label"] = out["consensus_label"].astype(object)
    out["ood_score"] = (
        pd.to_numeric(drawn["ood_score"]).to_numpy(dtype=float) if "ood_score" in drawn else np.nan
    )
    return out[SAMPLE_COLUMNS]


# --------------------------------------------------------------------------- sessions


@dataclass(frozen=True)
class ReviewSessionInfo:
    """A saved review session.

    Attributes
    ----------
    id, name : the row id and the name shown in pickers.
    model_version_id, model, version : the model version reviewed.
    dataset_id : the dataset the pool was restricted to (None: all images).
    strategy, params, seed : how the sample was drawn (``params``: consensus method,
        scorer version, the size asked for).
    sample_size : items drawn.
    created_by : the reviewer's user id, or None.
    created_at : aware UTC.
    reused : True when :func:`create_session` found an identical session instead of making
        one.
    """

    id: int
    name: str
    model_version_id: int
    model: str
    version: str
    dataset_id: int | None
    strategy: str
    params: dict[str, Any]
    seed: int
    sample_size: int
    created_by: int | None
    created_at: dt.datetime | None
    reused: bool = False

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready fields."""
        d = asdict(self)
        d["created_at"] = self.created_at.isoformat() if self.created_at else None
        return d


def _info(session: Session, row: ReviewSession, *, reused: bool) -> ReviewSessionInfo:
    model, version, _ = _require_version(session, row.model_version_id)
    return ReviewSessionInfo(
        id=int(row.id),
        name=row.name,
        model_version_id=int(row.model_version_id),
        model=model,
        version=version,
        dataset_id=row.dataset_id,
        strategy=row.strategy,
        params=dict(row.params or {}),
        seed=int(row.seed),
        sample_size=int(row.sample_size),
        created_by=row.created_by,
        created_at=_as_utc(row.created_at),
        reused=reused,
    )


def _session_params(
    strategy: str, n: int, consensus: str, scorer_version: str | None
) -> dict[str, Any]:
    params: dict[str, Any] = {"n_requested": n}
    if strategy == "disagreement":
        params["consensus"] = consensus
    if strategy == "ood":
        params["scorer_version"] = scorer_version
    return params


@_review_errors
def create_session(
    session: Session,
    model_version_id: int,
    strategy: Strategy,
    n: int,
    seed: int,
    dataset_id: int | None = None,
    *,
    consensus: Consensus = "majority",
    scorer_version: str | None = None,
    created_by: int | None = None,
    name: str | None = None,
    reuse: bool = True,
) -> ReviewSessionInfo:
    """Draw a sample (:func:`sample_predictions`) and save it as a review session.

    With ``reuse`` (the default), a session with the same model version, dataset,
    strategy, size asked for, seed and parameters is returned instead of a new one, so
    "start" twice resumes the same sample. The session row and its items are written in
    the session's transaction and flushed, not committed: the caller commits (as
    :func:`quality.db.session.session_scope` does).

    Parameters
    ----------
    session, model_version_id, strategy, n, seed, dataset_id, consensus, scorer_version :
        as for :func:`sample_predictions`.
    created_by : the user id of whoever drew it (:func:`ensure_reviewer`).
    name : shown in pickers; default ``"<model> <version> · <strategy> · n=<n> · seed <seed>"``.
    reuse : return an identical existing session instead of drawing again.

    Returns
    -------
    ReviewSessionInfo

    Raises
    ------
    ReviewInputError
        As :func:`sample_predictions`; an unknown ``created_by``; a sample that came back
        empty (nothing to review: the message says why).
    """
    strategy, n, seed, consensus = _check_sample_args(strategy, n, seed, consensus)
    model, version, _ = _require_version(session, model_version_id)
    if created_by is not None and session.get(User, int(created_by)) is None:
        raise ReviewInputError("created_by", f"no user with id {created_by}")
    params = _session_params(strategy, n, consensus, scorer_version)
    if reuse:
        candidates = session.scalars(
            select(ReviewSession)
            .where(
                ReviewSession.model_version_id == model_version_id,
                ReviewSession.strategy == strategy,
                ReviewSession.seed == seed,
                ReviewSession.dataset_id.is_(None)
                if dataset_id is None
                else ReviewSession.dataset_id == dataset_id,
            )
            .order_by(ReviewSession.id)
        )
        for found in candidates:
            # JSON has no equality operator on PostgreSQL: compare the params here.
            if dict(found.params or {}) == params:
                return _info(session, found, reused=True)
    sample = sample_predictions(
        session,
        model_version_id,
        strategy,  # type: ignore[arg-type]
        n,
        seed,
        dataset_id,
        consensus=consensus,  # type: ignore[arg-type]
        scorer_version=scorer_version,
    )
    if sample.empty:
        what = {
            "disagreement": "no prediction disagrees with the annotators' consensus",
            "ood": "no image of this model version is flagged out of distribution",
        }.get(strategy, "this model version has no labelled predictions in the scope")
        raise ReviewInputError("strategy", f"nothing to review: {what}")
    row = ReviewSession(
        name=(name or f"{model} {version} · {strategy} · n={n} · seed {seed}")[:128],
        model_version_id=int(model_version_id),
        dataset_id=None if dataset_id is None else int(dataset_id),
        strategy=strategy,
        params=params,
        seed=seed,
        sample_size=len(sample),
        created_by=created_by,
    )
    session.add(row)
    session.flush()
    session.execute(
        ReviewSessionItem.__table__.insert(),
        [
            {"session_id": row.id, "position": int(p), "prediction_id": int(i)}
            for p, i in zip(sample["position"], sample["prediction_id"], strict=True)
        ],
    )
    session.flush()
    session.refresh(row)
    return _info(session, row, reused=False)


def _require_session(session: Session, review_session_id: int) -> ReviewSession:
    row = session.get(ReviewSession, int(review_session_id))
    if row is None:
        raise ReviewInputError(
            "review_session_id", f"no review session with id {review_session_id}"
        )
    return row


@_review_errors
def get_session(session: Session, review_session_id: int) -> ReviewSessionInfo:
    """The saved session ``review_session_id`` (a ReviewInputError when unknown)."""
    return _info(session, _require_session(session, review_session_id), reused=False)


@_review_errors
def list_sessions(session: Session, model_version_id: int | None = None) -> pd.DataFrame:
    """Saved review sessions, newest first, with how many of their items anyone reviewed.

    Returns
    -------
    DataFrame with :data:`SESSION_COLUMNS`; ``created_by`` is the username (or None),
    ``dataset`` the dataset name (None: all images), ``created_at`` aware UTC.
    """
    reviewed = (
        select(
            ReviewSessionItem.session_id,
            func.count(distinct(ReviewSessionItem.prediction_id)).label("n"),
        )
        .join(Review, Review.prediction_id == ReviewSessionItem.prediction_id)
        .group_by(ReviewSessionItem.session_id)
        .subquery("reviewed")
    )
    stmt = (
        select(
            ReviewSession.id,
            ReviewSession.name,
            ReviewSession.model_version_id,
            Model.name,
            ModelVersion.version,
            Dataset.name,
            ReviewSession.strategy,
            ReviewSession.seed,
            ReviewSession.sample_size,
            func.coalesce(reviewed.c.n, 0),
            User.username,
            ReviewSession.created_at,
        )
        .join(ModelVersion, ModelVersion.id == ReviewSession.model_version_id)
        .join(Model, Model.id == ModelVersion.model_id)
        .outerjoin(Dataset, Dataset.id == ReviewSession.dataset_id)
        .outerjoin(User, User.id == ReviewSession.created_by)
        .outerjoin(reviewed, reviewed.c.session_id == ReviewSession.id)
        .order_by(ReviewSession.created_at.desc(), ReviewSession.id.desc())
    )
    if model_version_id is not None:
        stmt = stmt.where(ReviewSession.model_version_id == model_version_id)
    df = pd.DataFrame(session.execute(stmt).all(), columns=SESSION_COLUMNS)
    for col in ("session_id", "model_version_id", "seed", "sample_size", "n_reviewed"):
        df[col] = df[col].astype("int64")
    df["created_at"] = df["created_at"].map(_as_utc)
    return df


@_review_errors
def session_items(session: Session, review_session_id: int) -> pd.DataFrame:
    """The predictions of a session in review order, with what the viewer needs.

    Returns
    -------
    DataFrame with :data:`ITEM_COLUMNS`: ``uri``/``rows``/``cols`` of the image, the
    prediction's ``label``, ``score`` and ``bbox`` (a list or None), and the ``source``.

    Raises
    ------
    ReviewInputError
        No such session.
    """
    _require_session(session, review_session_id)
    stmt = _with_source(
        select(
            ReviewSessionItem.position,
            Prediction.id,
            Prediction.image_id,
            Image.sop_uid,
            Image.uri,
            Image.rows,
            Image.cols,
            Prediction.label,
            Prediction.score,
            Prediction.bbox,
            _source_expr(),
        ).join(Prediction, Prediction.id == ReviewSessionItem.prediction_id)
    ).where(ReviewSessionItem.session_id == review_session_id)
    stmt = stmt.order_by(ReviewSessionItem.position)
    df = pd.DataFrame(session.execute(stmt).all(), columns=ITEM_COLUMNS)
    for col in ("position", "prediction_id", "image_id"):
        df[col] = df[col].astype("int64")
    df[["rows", "cols"]] = df[["rows", "cols"]].astype("Int64")
    df["score"] = pd.to_numeric(df["score"]).astype("float64")
    df["bbox"] = df["bbox"].astype(object)
    return df


# --------------------------------------------------------------------------- reviewers


@_review_errors
def ensure_reviewer(
    session: Session, username: str, *, display_name: str | None = None, role: str = "clinician"
) -> int:
    """The user id of ``username``, making the ``users`` row when it is missing.

    Demo mode has no sign-in (issue 9): a reviewer types or picks a name. The insert is
    ``ON CONFLICT (username) DO NOTHING``, so two tabs doing this at once make one row. The
    row is flushed, not committed: the caller commits.

    Raises
    ------
    ReviewInputError
        An empty name, or one longer than 64 characters.
    """
    name = str(username or "").strip()
    if not name:
        raise ReviewInputError("reviewer", "enter a reviewer name")
    if any(unicodedata.category(c) == "Cc" for c in name):
        # NUL and other control characters: PostgreSQL refuses NUL in text, and no name
        # needs them. Refused here with a plain message instead of a driver error.
        raise ReviewInputError("reviewer", "a reviewer name cannot hold control characters")
    if len(name) > 64:
        raise ReviewInputError(
            "reviewer", f"a reviewer name has at most 64 characters ({name[:20]}…)"
        )
    insert = _dialect_insert(session)
    stmt = insert(User).values(
        username=name,
        display_name=(display_name or name)[:128],
        role=role,
        is_active=True,
    )
    session.execute(stmt.on_conflict_do_nothing(index_elements=[User.username]))
    found = session.scalar(select(User.id).where(User.username == name))
    return int(cast(int, found))


@_review_errors
def list_reviewers(session: Session) -> pd.DataFrame:
    """Users with their review counts: ``user_id, username, n_reviews``, by username."""
    n = (
        select(Review.reviewer_id, func.count(Review.id).label("n"))
        .group_by(Review.reviewer_id)
        .subquery("n_reviews")
    )
    stmt = (
        select(User.id, User.username, func.coalesce(n.c.n, 0))
        .outerjoin(n, n.c.reviewer_id == User.id)
        .order_by(User.username)
    )
    df = pd.DataFrame(session.execute(stmt).all(), columns=["user_id", "username", "n_reviews"])
    df[["user_id", "n_reviews"]] = df[["user_id", "n_reviews"]].astype("int64")
    return df


# --------------------------------------------------------------------------- verdicts


@dataclass(frozen=True)
class Verdict:
    """One stored review (a row of ``reviews``)."""

    review_id: int
    prediction_id: int
    reviewer_id: int
    verdict: str
    corrected_label: str | None
    corrected_bbox: list[float] | None
    comment: str | None
    created_at: dt.datetime | None
    updated_at: dt.datetime | None

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready fields."""
        d = asdict(self)
        for key in ("created_at", "updated_at"):
            d[key] = d[key].isoformat() if d[key] else None
        return d


def _dialect_insert(session: Session) -> Any:
    name = session.get_bind().dialect.name
    if name == "postgresql":
        return postgresql.insert
    if name == "sqlite":
        return sqlite.insert
    raise ReviewInputError("database", f"verdicts need SQLite or PostgreSQL, not {name}")


@dataclass(frozen=True)
class _Target:
    label: str | None
    classes: list[str]
    rows: int | None
    cols: int | None


def _target(session: Session, prediction_id: int) -> _Target:
    row = session.execute(
        select(Prediction.label, Prediction.model_version_id, Image.rows, Image.cols)
        .join(Image, Image.id == Prediction.image_id)
        .where(Prediction.id == prediction_id)
    ).one_or_none()
    if row is None:
        raise ReviewInputError("prediction_id", f"no prediction with id {prediction_id}")
    return _Target(
        label=row[0],
        classes=version_classes(session, int(row[1])),
        rows=None if row[2] is None else int(row[2]),
        cols=None if row[3] is None else int(row[3]),
    )


def _check_label(label: str | None, target: _Target) -> str | None:
    if label is None or (isinstance(label, float) and math.isnan(label)):
        return None
    text = str(label).strip()
    if not text:
        return None
    if target.classes and text not in target.classes:
        raise ReviewInputError(
            "corrected_label",
            f"{text!r} is not a class of this task; valid: {', '.join(target.classes)}",
        )
    return text


def _check_bbox(bbox: Sequence[float] | None, target: _Target) -> list[float] | None:
    if bbox is None:
        return None
    try:
        values = [float(v) for v in bbox]
    except (TypeError, ValueError) as exc:
        raise ReviewInputError(
            "corrected_bbox", f"expected four numbers [x0, y0, x1, y1], got {bbox!r}"
        ) from exc
    if len(values) != 4 or not all(math.isfinite(v) for v in values):
        raise ReviewInputError(
            "corrected_bbox", f"expected four finite numbers [x0, y0, x1, y1], got {bbox!r}"
        )
    x0, y0, x1, y1 = values
    if x0 < 0 or y0 < 0:
        raise ReviewInputError("corrected_bbox", f"x0 and y0 must be >= 0, got {values}")
    if x1 <= x0 or y1 <= y0:
        raise ReviewInputError(
            "corrected_bbox", f"need x0 < x1 and y0 < y1 (an empty box), got {values}"
        )
    if (target.cols is not None and x1 > target.cols) or (
        target.rows is not None and y1 > target.rows
    ):
        raise ReviewInputError(
            "corrected_bbox",
            f"{values} reaches outside the {target.cols}×{target.rows} image "
            "(x1 must be <= columns, y1 <= rows)",
        )
    return values


def _check_comment(comment: str | None) -> str | None:
    if comment is None:
        return None
    text = str(comment).strip()
    if "\x00" in text:
        raise ReviewInputError("comment", "a comment cannot hold NUL characters")
    if len(text) > MAX_COMMENT_CHARS:
        raise ReviewInputError(
            "comment", f"at most {MAX_COMMENT_CHARS} characters, got {len(text)}"
        )
    return text or None


def _is_busy(exc: DBAPIError) -> bool:
    if getattr(exc.orig, "sqlstate", None) in _RETRY_SQLSTATES:
        return True
    text = str(exc.orig).lower()
    return "database is locked" in text or "database table is locked" in text or "busy" in text


@_review_errors
def submit_verdict(
    session: Session,
    prediction_id: int,
    reviewer_id: int,
    verdict: str,
    corrected_label: str | None = None,
    corrected_bbox: Sequence[float] | None = None,
    comment: str | None = None,
    *,
    actor: str | None = None,
    review_session_id: int | None = None,
) -> Verdict:
    """Write one reviewer's verdict on one prediction, in one transaction (upsert).

    The row is keyed by ``(prediction_id, reviewer_id)``: the first submission inserts it,
    a re-submission replaces verdict, corrections and comment and moves ``updated_at``
    (``created_at`` stays). It is one ``INSERT … ON CONFLICT DO UPDATE`` statement, so
    concurrent submitters never duplicate a row and never lose one; the last commit wins.
    The session's transaction is committed (anything pending in it too); a locked SQLite
    database is waited for and retried (module docs).

    Parameters
    ----------
    session : an open session.
    prediction_id : the prediction judged.
    reviewer_id : ``users.id`` of the reviewer (:func:`ensure_reviewer`).
    verdict : ``agree``, ``disagree`` or ``unsure``.
    corrected_label : the label the reviewer would give, one of the task's classes
        (:func:`version_classes`); with ``agree`` only the model's own label is accepted.
    corrected_bbox : ``[x0, y0, x1, y1]`` in pixels (``x1, y1`` exclusive) inside the
        image; not with ``agree``.
    comment : free text, at most :data:`MAX_COMMENT_CHARS` characters (blank: none).
    actor : who acts (the signed-in user name, ``cli:<os user>``); when given, a ``verdict``
        row goes to the audit log (:func:`quality.audit.record`: target
        ``prediction:<id>``, details the verdict and ``review_session_id``) **in the same
        transaction**: both are stored, or neither. The comment and corrections are not
        copied into the log.
    review_session_id : the review session the verdict was given in (audit details only).

    Returns
    -------
    Verdict
        The row as stored.

    Raises
    ------
    ReviewInputError
        An unknown prediction or reviewer, a verdict outside :data:`VERDICTS`, a label
        outside the classes, a malformed box, or a correction that contradicts ``agree``.
    ReviewWriteError
        The database refused the write or stayed locked; nothing was saved.
    DatabaseUnavailableError
        The database cannot be reached, or the connection was lost during the write: the
        same call again, once it is back, stores the verdict once (the upsert).
    """
    if verdict not in VERDICTS:
        raise ReviewInputError(
            "verdict", f"unknown verdict {verdict!r}; valid: {', '.join(VERDICTS)}"
        )
    target = _target(session, int(prediction_id))
    if session.get(User, int(reviewer_id)) is None:
        raise ReviewInputError("reviewer_id", f"no user with id {reviewer_id}")
    label = _check_label(corrected_label, target)
    box = _check_bbox(corrected_bbox, target)
    text = _check_comment(comment)
    if verdict == "agree" and label is not None and label != target.label:
        raise ReviewInputError(
            "corrected_label",
            f"'agree' contradicts the corrected label {label!r} (the model said "
            f"{target.label!r}): choose 'disagree', or clear the correction",
        )
    if verdict == "agree" and box is not None:
        raise ReviewInputError(
            "corrected_bbox", "'agree' takes no corrected box: choose 'disagree' to correct it"
        )

    # Python's clock, not the DB's: microseconds on both dialects, so a re-submission within
    # the same second still moves updated_at.
    now = dt.datetime.now(dt.UTC)
    insert = _dialect_insert(session)
    stmt = insert(Review).values(
        prediction_id=int(prediction_id),
        reviewer_id=int(reviewer_id),
        verdict=verdict,
        corrected_label=label,
        corrected_bbox=box if box is not None else null(),
        comment=text,
        created_at=now,
        updated_at=now,
    )
    stmt = stmt.on_conflict_do_update(
        index_elements=[Review.prediction_id, Review.reviewer_id],
        set_={
            "verdict": stmt.excluded.verdict,
            "corrected_label": stmt.excluded.corrected_label,
            "corrected_bbox": stmt.excluded.corrected_bbox,
            "comment": stmt.excluded.comment,
            "updated_at": stmt.excluded.updated_at,
        },
    ).returning(Review.id, Review.created_at, Review.updated_at)
    what = f"the verdict on prediction {prediction_id} by reviewer {reviewer_id}"
    for attempt in range(_WRITE_ATTEMPTS):
        try:
            review_id, created_at, updated_at = session.execute(stmt).one()
            if actor is not None:
                try:
                    audit.record(
                        session,
                        actor,
                        "verdict",
                        target=f"prediction:{int(prediction_id)}",
                        details={"verdict": verdict, "session": review_session_id},
                    )
                except QualityError:
                    session.rollback()  # no audit row, no verdict
                    raise
            session.commit()
            break
        except OperationalError as exc:
            session.rollback()
            if exc.connection_invalidated:
                # The server went away mid-write (a restart): nothing was committed, unless
                # the commit itself was cut, and a retry is the same upsert. Say "unreachable"
                # so that the caller keeps the entry for a retry.
                raise DatabaseUnavailableError(
                    safe_url(session.get_bind()),  # type: ignore[arg-type]
                    str(exc.orig).strip(),
                ) from exc
            if not _is_busy(exc) or attempt == _WRITE_ATTEMPTS - 1:
                raise ReviewWriteError(what, str(exc.orig).strip()) from exc
            # The lock holder finishes its (tiny) transaction; wait, then try again.
            time.sleep(min(_BACKOFF_MAX_S, _BACKOFF_S * 2**attempt))
        except DBAPIError as exc:
            session.rollback()
            raise ReviewWriteError(what, str(exc.orig).strip()) from exc
    return Verdict(
        review_id=int(review_id),
        prediction_id=int(prediction_id),
        reviewer_id=int(reviewer_id),
        verdict=verdict,
        corrected_label=label,
        corrected_bbox=box,
        comment=text,
        created_at=_as_utc(created_at),
        updated_at=_as_utc(updated_at),
    )


@_review_errors
def get_review(session: Session, prediction_id: int, reviewer_id: int) -> Verdict | None:
    """The stored verdict of ``reviewer_id`` on ``prediction_id``, or None."""
    row = session.scalars(
        select(Review).where(
            Review.prediction_id == prediction_id, Review.reviewer_id == reviewer_id
        )
    ).one_or_none()
    if row is None:
        return None
    return Verdict(
        review_id=int(row.id),
        prediction_id=int(row.prediction_id),
        reviewer_id=int(row.reviewer_id),
        verdict=row.verdict,
        corrected_label=row.corrected_label,
        corrected_bbox=None
        if row.corrected_bbox is None
        else [float(v) for v in row.corrected_bbox],
        comment=row.comment,
        created_at=_as_utc(row.created_at),
        updated_at=_as_utc(row.updated_at),
    )


# --------------------------------------------------------------------------- progress


@dataclass(frozen=True)
class ReviewProgress:
    """How far one reviewer is through one session."""

    done: int
    total: int

    @property
    def remaining(self) -> int:
        """Items not judged yet."""
        return self.total - self.done

    @property
    def fraction(self) -> float:
        """``done / total`` (1.0 for an empty session)."""
        return self.done / self.total if self.total else 1.0


def _reviewed_by(reviewer_id: int) -> Any:
    return and_(
        Review.prediction_id == ReviewSessionItem.prediction_id,
        Review.reviewer_id == reviewer_id,
    )


@_review_errors
def progress(session: Session, review_session_id: int, reviewer_id: int) -> ReviewProgress:
    """Items of the session, and how many of them ``reviewer_id`` has judged (one SQL
    ``COUNT`` over an outer join)."""
    _require_session(session, review_session_id)
    total, done = session.execute(
        select(func.count(ReviewSessionItem.id), func.count(Review.id))
        .select_from(ReviewSessionItem)
        .outerjoin(Review, _reviewed_by(reviewer_id))
        .where(ReviewSessionItem.session_id == review_session_id)
    ).one()
    return ReviewProgress(done=int(done or 0), total=int(total or 0))


@_review_errors
def next_unreviewed(
    session: Session,
    review_session_id: int,
    reviewer_id: int,
    position: int | None = None,
    *,
    backwards: bool = False,
    wrap: bool = True,
) -> int | None:
    """The position of the next (or previous) item ``reviewer_id`` has not judged.

    Parameters
    ----------
    position : start after (before, with ``backwards``) this position; None: from the start
        (the end).
    backwards : look at earlier positions.
    wrap : when none is found that way, go round from the other end.

    Returns
    -------
    int or None
        None when every item is judged.
    """
    _require_session(session, review_session_id)
    agg = func.max if backwards else func.min
    base = (
        select(agg(ReviewSessionItem.position))
        .select_from(ReviewSessionItem)
        .outerjoin(Review, _reviewed_by(reviewer_id))
        .where(ReviewSessionItem.session_id == review_session_id, Review.id.is_(None))
    )
    if position is not None:
        cond = (
            ReviewSessionItem.position < position
            if backwards
            else ReviewSessionItem.position > position
        )
        found = session.scalar(base.where(cond))
        if found is not None or not wrap:
            return None if found is None else int(found)
    found = session.scalar(base)
    return None if found is None else int(found)


# --------------------------------------------------------------------------- summary & export


def _review_select(
    model_version_id: int | None, review_session_id: int | None, reviewer_id: int | None
) -> Select[Any]:
    stmt = _with_source(
        select(
            Review.id,
            Review.prediction_id,
            Prediction.image_id,
            Image.sop_uid,
            _source_expr(),
            Model.name,
            ModelVersion.version,
            Prediction.label,
            Prediction.score,
            User.username,
            Review.verdict,
            Review.corrected_label,
            Review.corrected_bbox,
            Review.comment,
            Review.created_at,
            Review.updated_at,
        )
        .select_from(Review)
        .join(Prediction, Prediction.id == Review.prediction_id)
        .join(ModelVersion, ModelVersion.id == Prediction.model_version_id)
        .join(Model, Model.id == ModelVersion.model_id)
        .join(User, User.id == Review.reviewer_id)
    )
    return stmt.where(*_filters(model_version_id, review_session_id, reviewer_id))


def _filters(
    model_version_id: int | None, review_session_id: int | None, reviewer_id: int | None
) -> list[Any]:
    conds: list[Any] = []
    if model_version_id is not None:
        conds.append(Prediction.model_version_id == model_version_id)
    if review_session_id is not None:
        conds.append(
            Review.prediction_id.in_(
                select(ReviewSessionItem.prediction_id).where(
                    ReviewSessionItem.session_id == review_session_id
                )
            )
        )
    if reviewer_id is not None:
        conds.append(Review.reviewer_id == reviewer_id)
    return conds


def _review_frame(session: Session, stmt: Select[Any]) -> pd.DataFrame:
    df = pd.DataFrame(session.execute(stmt).all(), columns=EXPORT_COLUMNS)
    for col in ("review_id", "prediction_id", "image_id"):
        df[col] = df[col].astype("int64")
    df["score"] = pd.to_numeric(df["score"]).astype("float64")
    df["corrected_bbox"] = df["corrected_bbox"].astype(object)
    for col in ("created_at", "updated_at"):
        df[col] = pd.to_datetime(df[col].map(_as_utc), utc=True)
    return df


def _check_filters(
    session: Session,
    model_version_id: int | None,
    review_session_id: int | None,
) -> None:
    if model_version_id is not None:
        _require_version(session, model_version_id)
    if review_session_id is not None:
        _require_session(session, review_session_id)


@_review_errors
def export_reviews(
    session: Session,
    *,
    model_version_id: int | None = None,
    review_session_id: int | None = None,
    reviewer_id: int | None = None,
) -> pd.DataFrame:
    """Every stored verdict, one row per (prediction, reviewer), for export.

    Parameters
    ----------
    model_version_id : only reviews of this version's predictions.
    review_session_id : only reviews of the predictions of this session (by anyone).
    reviewer_id : only this reviewer's.

    Returns
    -------
    DataFrame with :data:`EXPORT_COLUMNS`, ordered by model, version, prediction and
    reviewer. ``label``/``score`` are the model's, ``reviewer`` the username,
    ``corrected_bbox`` a list or None, times aware UTC. No patient identifiers.

    Raises
    ------
    ReviewInputError
        An unknown model version or session.
    """
    _check_filters(session, model_version_id, review_session_id)
    stmt = _review_select(model_version_id, review_session_id, reviewer_id).order_by(
        Model.name, ModelVersion.id, Review.prediction_id, User.username
    )
    return _review_frame(session, stmt)


def reviews_to_records(df: pd.DataFrame) -> list[dict[str, Any]]:
    """The rows of :func:`export_reviews` as JSON-ready dicts (ISO times, lists for boxes)."""
    out = []
    for rec in df.to_dict(orient="records"):
        for key in ("created_at", "updated_at"):
            value = rec.get(key)
            rec[key] = None if value is None or pd.isna(value) else pd.Timestamp(value).isoformat()
        score = rec.get("score")
        rec["score"] = None if score is None or pd.isna(score) else float(score)
        out.append(rec)
    return out


def reviews_to_csv(df: pd.DataFrame) -> str:
    """:func:`export_reviews` as CSV text; boxes as JSON arrays (``[x0, y0, x1, y1]``)."""
    flat = df.copy()
    if "corrected_bbox" in flat:
        flat["corrected_bbox"] = flat["corrected_bbox"].map(
            lambda b: "" if b is None else json.dumps([float(v) for v in b])
        )
    buf = io.StringIO()
    flat.to_csv(buf, index=False)
    return buf.getvalue()


@dataclass(frozen=True)
class ReviewSummary:
    """Clinicians' agreement with the model.

    Each review is one observation (several reviewers of one prediction count once each).
    ``agreement`` is ``n_agree / (n_agree + n_disagree)``; ``unsure`` verdicts are counted
    but left out of the rate. ``agreement_low``/``agreement_high`` is the 95% Wilson score
    interval (:func:`wilson_interval`).

    Attributes
    ----------
    by_version : one row per model version: ``model_version_id, model, version, n_reviews,
        n_agree, n_disagree, n_unsure, agreement, agreement_low, agreement_high, kappa,
        n_kappa``. ``kappa`` is Cohen's κ between the reviewers' labels and the model's
        (reviewer label: the model's on ``agree``, the corrected label on ``disagree`` when
        one was given; other reviews are left out, ``n_kappa`` counts the pairs used); NaN
        where it does not apply (no pairs, or a single category on both sides).
    by_class : the same counts and rates per version and predicted ``label``.
    by_source : the same per version and ``source``.
    disagreements : the ``disagree`` reviews (:data:`DISAGREEMENT_COLUMNS`), newest first.

    References
    ----------
    Agreement CI: E. B. Wilson, *J. Am. Stat. Assoc.* 22:209–212, 1927 (see
    :func:`wilson_interval`). κ: J. Cohen, "A coefficient of agreement for nominal scales",
    *Educ. Psychol. Meas.* 20(1):37–46, 1960 (:func:`quality.agreement.categorical.cohen_kappa`).
    """

    by_version: pd.DataFrame
    by_class: pd.DataFrame
    by_source: pd.DataFrame
    disagreements: pd.DataFrame

    @property
    def n_reviews(self) -> int:
        """Reviews counted."""
        return int(self.by_version["n_reviews"].sum()) if not self.by_version.empty else 0

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready: the three tables as records, and the disagreements."""

        def records(df: pd.DataFrame) -> list[dict[str, Any]]:
            clean = df.astype(object).where(df.notna(), None)
            return cast(list[dict[str, Any]], clean.to_dict(orient="records"))

        return {
            "n_reviews": self.n_reviews,
            "by_version": records(self.by_version),
            "by_class": records(self.by_class),
            "by_source": records(self.by_source),
            "disagreements": reviews_to_records(self.disagreements),
        }


_COUNT_COLUMNS = ["n_reviews", "n_agree", "n_disagree", "n_unsure"]


def _counts(
    session: Session, keys: Sequence[Any], names: Sequence[str], conds: list[Any]
) -> pd.DataFrame:
    def n_of(verdict: str) -> Any:
        return func.sum(case((Review.verdict == verdict, 1), else_=0))

    stmt = _with_source(
        select(
            Prediction.model_version_id,
            Model.name,
            ModelVersion.version,
            *keys,
            func.count(Review.id),
            n_of("agree"),
            n_of("disagree"),
            n_of("unsure"),
        )
        .select_from(Review)
        .join(Prediction, Prediction.id == Review.prediction_id)
        .join(ModelVersion, ModelVersion.id == Prediction.model_version_id)
        .join(Model, Model.id == ModelVersion.model_id)
    )
    stmt = stmt.where(*conds).group_by(
        Prediction.model_version_id, Model.name, ModelVersion.version, *keys
    )
    cols = ["model_version_id", "model", "version", *names, *_COUNT_COLUMNS]
    df = pd.DataFrame(session.execute(stmt).all(), columns=cols)
    for col in ["model_version_id", *_COUNT_COLUMNS]:
        df[col] = df[col].fillna(0).astype("int64")
    decided = df["n_agree"] + df["n_disagree"]
    df["agreement"] = np.where(decided > 0, df["n_agree"] / decided.where(decided > 0, 1), np.nan)
    ci = [wilson_interval(int(a), int(d)) for a, d in zip(df["n_agree"], decided, strict=True)]
    df["agreement_low"] = [c[0] for c in ci]
    df["agreement_high"] = [c[1] for c in ci]
    return df.sort_values(["model", "model_version_id", *names], ignore_index=True)


def _kappas(session: Session, conds: list[Any]) -> pd.DataFrame:
    """Cohen's κ per version from the (model label, reviewer label) counts (SQL GROUP BY)."""
    reviewer_label = case(
        (Review.verdict == "agree", Prediction.label),
        (Review.verdict == "disagree", Review.corrected_label),
        else_=literal(None),
    )
    stmt = (
        select(Prediction.model_version_id, Prediction.label, reviewer_label, func.count(Review.id))
        .select_from(Review)
        .join(Prediction, Prediction.id == Review.prediction_id)
        .where(*conds, reviewer_label.is_not(None))
        .group_by(Prediction.model_version_id, Prediction.label, reviewer_label)
    )
    pairs = pd.DataFrame(session.execute(stmt).all(), columns=["mv", "model", "reviewer", "n"])
    rows = []
    for mv, grp in pairs.groupby("mv", sort=True):
        counts = grp["n"].to_numpy(dtype=np.int64)
        a = np.repeat(grp["model"].to_numpy(dtype=object), counts)
        b = np.repeat(grp["reviewer"].to_numpy(dtype=object), counts)
        try:
            kappa = cohen_kappa(a, b)
        except LabelDataError:
            kappa = float("nan")
        rows.append({"model_version_id": int(mv), "kappa": kappa, "n_kappa": int(counts.sum())})
    return pd.DataFrame(rows, columns=["model_version_id", "kappa", "n_kappa"])


@_review_errors
def review_summary(
    session: Session,
    *,
    model_version_id: int | None = None,
    review_session_id: int | None = None,
    reviewer_id: int | None = None,
) -> ReviewSummary:
    """Agreement of clinicians with the model, per version, class and source (counts in SQL).

    Parameters
    ----------
    model_version_id, review_session_id, reviewer_id : filters, as for
        :func:`export_reviews`.

    Returns
    -------
    ReviewSummary
        Empty tables (with their columns) when no review matches.

    Raises
    ------
    ReviewInputError
        An unknown model version or session.
    """
    _check_filters(session, model_version_id, review_session_id)
    conds = _filters(model_version_id, review_session_id, reviewer_id)
    by_version = _counts(session, [], [], conds)
    by_version = by_version.merge(_kappas(session, conds), on="model_version_id", how="left")
    by_version["n_kappa"] = by_version["n_kappa"].fillna(0).astype("int64")
    by_version["kappa"] = by_version["kappa"].astype("float64")
    by_class = _counts(session, [Prediction.label], ["label"], conds)
    by_source = _counts(session, [_source_expr()], ["source"], conds)
    stmt = _review_select(model_version_id, review_session_id, reviewer_id).where(
        Review.verdict == "disagree"
    )
    disagreements = _review_frame(
        session, stmt.order_by(Review.updated_at.desc(), Review.id.desc())
    )
    return ReviewSummary(by_version, by_class, by_source, disagreements)
