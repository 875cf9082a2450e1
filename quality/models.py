"""Shadow-model comparison, a release checklist, and active-learning worklists.

Which function answers which question
-------------------------------------
* *Is the shadow (candidate) version better than production, overall and at every source?*
  :func:`compare_versions` → :class:`ModelComparison`: label agreement and Cohen's κ, ROC and
  PR curves with AUC and average precision against gold or consensus labels (stratified,
  paired bootstrap CIs), a per-source breakdown, the cases whose label flipped, latency.
* *May the candidate be released?* :func:`release_checklist` turns a comparison into
  pass / fail / inconclusive items (:class:`ChecklistItem`); :func:`problem_images` lists the
  images ``quality score`` flagged, the "known problem cases" it checks.
* *Which unlabeled images should the labeling team do next?* :func:`build_worklist` (or
  :func:`rank_unlabeled` for just the ranked frame) ranks a dataset's unlabeled images by the
  uncertainty of a model version (entropy, margin), the disagreement of the model's versions
  (committee) or coverage of the embedding space (diversity, k-center greedy).
* Pure array building blocks, each validated at its entry: :func:`roc_auc`,
  :func:`roc_curve`, :func:`precision_recall_curve`, :func:`average_precision`,
  :func:`entropy_scores`, :func:`margin_scores`, :func:`committee_scores`,
  :func:`k_center_greedy`.

Conventions
-----------
* A model version's output on an image is its *newest* prediction row (by ``created_at``,
  then id); a row with a NULL ``score`` (an empty output) counts as no score.
* ``score`` is the probability of a finding (the positive class), as in the demo and the
  ``predictions`` table's contract: the binary class probabilities are ``[1 - score, score]``.
  A *finding* is any label other than the task's negative class (default ``"normal"``).
* With a ``dataset_id``, only the images of the dataset's newest version count
  (:func:`quality.db.queries.newest_version_id`).
* Randomness comes from ``np.random.default_rng(seed)``: the same seed gives the same CIs and
  the same worklist.
"""

from __future__ import annotations

import io
import math
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Literal, get_args

import numpy as np
import numpy.typing as npt
import pandas as pd
from numpy.typing import NDArray
from scipy.stats import norm
from sqlalchemy import and_, case, exists, func, literal, or_, select
from sqlalchemy.orm import Session, aliased

from quality.agreement.categorical import CI, cohen_kappa
from quality.agreement.consensus import DawidSkene
from quality.db.queries import _db_errors, model_version_matches, newest_version_id
from quality.db.schema import (
    Annotation,
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
from quality.errors import LabelDataError, ModelInputError

__all__ = [
    "CASE_COLUMNS",
    "FINDING",
    "POOLS",
    "STRATEGIES",
    "TRUTHS",
    "VERSION_COLUMNS",
    "WORKLIST_BUDGET",
    "WORKLIST_COLUMNS",
    "WORKLIST_SEED",
    "WORKLIST_STRATEGY",
    "ChecklistItem",
    "ModelComparison",
    "Pool",
    "Strategy",
    "Truth",
    "VersionRef",
    "Worklist",
    "average_precision",
    "build_worklist",
    "checklist_passed",
    "committee_scores",
    "compare_versions",
    "default_pair",
    "default_pool",
    "default_task",
    "default_version",
    "entropy_scores",
    "k_center_greedy",
    "list_model_versions",
    "margin_scores",
    "pool_sizes",
    "precision_recall_curve",
    "problem_images",
    "rank_unlabeled",
    "release_checklist",
    "resolve_model_version",
    "roc_auc",
    "roc_curve",
    "worklist_defaults",
]

Truth = Literal["gold", "consensus"]
Strategy = Literal["entropy", "margin", "committee", "diversity", "random"]
Pool = Literal["unannotated", "no_gold"]
TRUTHS: Final = get_args(Truth)
STRATEGIES: Final = get_args(Strategy)
POOLS: Final = get_args(Pool)

FINDING: Final = "finding"
"""The binary positive class: any label other than the task's negative class."""
UNKNOWN_SOURCE: Final = "(unknown)"

VERSION_COLUMNS: Final = [
    "version_id",
    "model",
    "version",
    "status",
    "task_id",
    "n_predictions",
    "n_scored",
]
CASE_COLUMNS: Final = [
    "image_id",
    "sop_uid",
    "uri",
    "source",
    "label_baseline",
    "label_candidate",
    "score_baseline",
    "score_candidate",
    "gold_label",
    "truth_label",
    "y_true",
]
WORKLIST_COLUMNS: Final = [
    "rank",
    "image_id",
    "sop_uid",
    "source",
    "split",
    "score",
    "predicted_label",
    "priority",
    "entropy",
    "margin",
    "uri",
]

# Bootstrap resamples are evaluated in blocks of at most this many (resample × item) cells,
# which bounds memory at ~50 MB per float64 array whatever the number of images.
_BLOCK_CELLS: Final = 1 << 22
# Pool images whose embeddings are compared at once with the labelled centres (k-center).
_CENTER_CHUNK: Final = 4096


# --------------------------------------------------------------------------------------------
# Binary classification metrics (pure)
# --------------------------------------------------------------------------------------------


def _binary_inputs(
    y_true: npt.ArrayLike, y_score: npt.ArrayLike, source: str
) -> tuple[NDArray[np.bool_], NDArray[np.float64]]:
    """Validate ``y_true`` (0/1 or bool) and ``y_score`` (finite floats) of equal length."""
    y = np.asarray(y_true)
    s = np.asarray(y_score, dtype=np.float64)
    if y.ndim != 1 or s.ndim != 1:
        raise LabelDataError(source, "y_true, y_score", "must be 1-D arrays")
    if y.shape != s.shape:
        raise LabelDataError(
            source, "y_true, y_score", f"lengths differ: {y.size} labels, {s.size} scores"
        )
    if y.size == 0:
        raise LabelDataError(source, "y_true", "no items")
    if not np.isfinite(s).all():
        raise LabelDataError(source, "y_score", "scores must be finite (drop NaN rows first)")
    if y.dtype != np.bool_:
        try:
            values = set(np.unique(y).tolist())
        except TypeError as exc:
            raise LabelDataError(source, "y_true", "labels must be 0/1 or bool") from exc
        if not values <= {0, 1}:
            raise LabelDataError(source, "y_true", f"labels must be 0/1 or bool, got {values}")
    return y.astype(bool), s


def _tie_groups(scores: NDArray[np.float64]) -> tuple[NDArray[np.intp], int]:
    """Each item's group of tied scores, numbered in ascending score order, and the count."""
    values, group = np.unique(scores, return_inverse=True)
    return group.reshape(-1), int(values.size)


def _group_auc_ap(
    pos: NDArray[np.float64], neg: NDArray[np.float64]
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    r"""AUC and AP from the weight of positives and negatives per group of tied scores.

    With groups :math:`g` in ascending score order and :math:`P_g`, :math:`N_g` the weight
    (count) of positives and negatives in a group,

    .. math:: \mathrm{AUC} = \frac{\sum_g P_g\,(N_{<g} + N_g/2)}{\sum P \sum N}, \qquad
              \mathrm{AP} = \frac{1}{\sum P}\sum_g P_g\,\frac{P_{\ge g}}{P_{\ge g} + N_{\ge g}}

    (the Mann-Whitney statistic, ties counting one half, and the step-wise AP of
    :func:`average_precision`). Unit counts give the plain statistics; a bootstrap
    resample's draw counts give its statistics without sorting again, in :math:`O(n)`.

    Parameters
    ----------
    pos, neg : shape (B, G), one row per resample.

    Returns
    -------
    auc, ap : shape (B,); NaN where a class has no weight.
    """
    total_pos, total_neg = pos.sum(axis=1), neg.sum(axis=1)
    below = np.cumsum(neg, axis=1) - neg
    tp_ge = np.cumsum(pos[:, ::-1], axis=1)[:, ::-1]
    predicted = tp_ge + np.cumsum(neg[:, ::-1], axis=1)[:, ::-1]
    with np.errstate(invalid="ignore", divide="ignore"):
        auc = (pos * (below + 0.5 * neg)).sum(axis=1) / (total_pos * total_neg)
        precision = np.divide(tp_ge, predicted, out=np.zeros_like(tp_ge), where=predicted > 0)
        ap = (pos * precision).sum(axis=1) / total_pos
    auc = np.where((total_pos > 0) & (total_neg > 0), auc, np.nan)
    ap = np.where(total_pos > 0, ap, np.nan)
    return auc, ap


def _group_counts(
    group: NDArray[np.intp], n_groups: int, items: NDArray[np.intp]
) -> NDArray[np.float64]:
    """Per row of ``items`` (drawn item indices, shape (B, k)): draws per score group."""
    b = items.shape[0]
    keys = group[items] + (np.arange(b) * n_groups)[:, None]
    counts = np.bincount(keys.ravel(), minlength=b * n_groups)
    return counts.reshape(b, n_groups).astype(np.float64)


def _auc_ap(y: NDArray[np.bool_], scores: NDArray[np.float64]) -> tuple[float, float]:
    """Point AUC and AP (every item counted once)."""
    group, n_groups = _tie_groups(scores)
    pos = np.bincount(group, weights=y.astype(np.float64), minlength=n_groups)[None, :]
    neg = np.bincount(group, weights=(~y).astype(np.float64), minlength=n_groups)[None, :]
    auc, ap = _group_auc_ap(pos, neg)
    return float(auc[0]), float(ap[0])


def roc_auc(y_true: npt.ArrayLike, y_score: npt.ArrayLike) -> float:
    r"""Area under the ROC curve, by the Mann-Whitney U statistic.

    .. math:: \mathrm{AUC} = \frac{R_1 - n_1 (n_1 + 1)/2}{n_1 n_0}
              = P(S_+ > S_-) + \tfrac12 P(S_+ = S_-)

    where :math:`R_1` is the sum of the mid-ranks of the :math:`n_1` positives' scores among
    all :math:`n_1 + n_0` scores. Equal to the trapezoidal area under :func:`roc_curve` and to
    ``sklearn.metrics.roc_auc_score``. Higher is better; 0.5 is chance.

    Parameters
    ----------
    y_true : array_like of 0/1 or bool, shape (n,)
    y_score : array_like of float, shape (n,); higher means more likely positive.

    Returns
    -------
    float
        NaN when only one class is present (sklearn raises there).

    References
    ----------
    Hanley, J. A., & McNeil, B. J. (1982). The meaning and use of the area under a receiver
    operating characteristic (ROC) curve. *Radiology*, 143(1), 29-36.
    Mason, S. J., & Graham, N. E. (2002). Areas beneath the relative operating characteristics
    (ROC) and relative operating levels (ROL) curves. *Q. J. R. Meteorol. Soc.*, 128, 2145-2166.

    Examples
    --------
    >>> roc_auc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8])
    0.75
    """
    y, s = _binary_inputs(y_true, y_score, "roc_auc")
    return _auc_ap(y, s)[0]


def _clf_curve(
    y: NDArray[np.bool_], s: NDArray[np.float64]
) -> tuple[NDArray[np.float64], NDArray[np.float64], NDArray[np.float64]]:
    """False and true positives at each distinct threshold, highest threshold first."""
    order = np.argsort(s, kind="mergesort")[::-1]
    s, y = s[order], y[order]
    distinct = np.flatnonzero(np.diff(s))
    ends = np.r_[distinct, y.size - 1]
    tps = np.cumsum(y)[ends].astype(np.float64)
    fps = 1.0 + ends - tps
    return fps, tps, s[ends]


def roc_curve(
    y_true: npt.ArrayLike, y_score: npt.ArrayLike, *, drop_intermediate: bool = True
) -> tuple[NDArray[np.float64], NDArray[np.float64], NDArray[np.float64]]:
    r"""The ROC curve: false and true positive rates at every distinct score threshold.

    At threshold :math:`t` (predict positive when :math:`s \ge t`),
    :math:`\mathrm{FPR} = FP/n_0` and :math:`\mathrm{TPR} = TP/n_1`. The curve starts at
    :math:`(0, 0)` with threshold :math:`+\infty`; with ``drop_intermediate`` the points that
    lie on a straight segment are left out. The same points as
    ``sklearn.metrics.roc_curve`` (Fawcett 2006, algorithm 1).

    Parameters
    ----------
    y_true : array_like of 0/1 or bool, shape (n,)
    y_score : array_like of float, shape (n,)
    drop_intermediate : leave out collinear points (the area does not change).

    Returns
    -------
    fpr, tpr, thresholds : ndarray, shape (m,)
        Thresholds decrease. A rate is NaN when its class is absent.

    References
    ----------
    Fawcett, T. (2006). An introduction to ROC analysis. *Pattern Recognition Letters*,
    27(8), 861-874.
    """
    y, s = _binary_inputs(y_true, y_score, "roc_curve")
    fps, tps, thr = _clf_curve(y, s)
    if drop_intermediate and fps.size > 2:
        keep = np.flatnonzero(
            np.r_[True, np.diff(fps, 2) != 0, True] | np.r_[True, np.diff(tps, 2) != 0, True]
        )
        fps, tps, thr = fps[keep], tps[keep], thr[keep]
    fps, tps, thr = np.r_[0.0, fps], np.r_[0.0, tps], np.r_[np.inf, thr]
    with np.errstate(invalid="ignore", divide="ignore"):
        fpr = fps / fps[-1] if fps[-1] > 0 else np.full_like(fps, np.nan)
        tpr = tps / tps[-1] if tps[-1] > 0 else np.full_like(tps, np.nan)
    return fpr, tpr, thr


def precision_recall_curve(
    y_true: npt.ArrayLike, y_score: npt.ArrayLike
) -> tuple[NDArray[np.float64], NDArray[np.float64], NDArray[np.float64]]:
    r"""Precision and recall at every distinct score threshold.

    :math:`P = TP/(TP + FP)` and :math:`R = TP/n_1` at each threshold. As
    ``sklearn.metrics.precision_recall_curve``: thresholds increase, and a last point
    :math:`(R, P) = (0, 1)` without a threshold closes the curve.

    Parameters
    ----------
    y_true : array_like of 0/1 or bool, shape (n,)
    y_score : array_like of float, shape (n,)

    Returns
    -------
    precision, recall : ndarray, shape (m + 1,)
    thresholds : ndarray, shape (m,)

    References
    ----------
    Davis, J., & Goadrich, M. (2006). The relationship between precision-recall and ROC
    curves. *ICML 2006*, 233-240.
    """
    y, s = _binary_inputs(y_true, y_score, "precision_recall_curve")
    fps, tps, thr = _clf_curve(y, s)
    predicted = tps + fps
    precision = np.divide(tps, predicted, out=np.zeros_like(tps), where=predicted != 0)
    recall = np.ones_like(tps) if tps[-1] == 0 else tps / tps[-1]
    return np.r_[precision[::-1], 1.0], np.r_[recall[::-1], 0.0], thr[::-1]


def average_precision(y_true: npt.ArrayLike, y_score: npt.ArrayLike) -> float:
    r"""Average precision: the step-wise area under the precision-recall curve.

    .. math:: \mathrm{AP} = \sum_k (R_k - R_{k-1})\, P_k

    over the distinct thresholds, highest first (no interpolation). Equal to
    ``sklearn.metrics.average_precision_score``. Higher is better; the prevalence is chance.

    Returns
    -------
    float
        NaN when there is no positive.

    References
    ----------
    Zhu, M. (2004). Recall, precision and average precision. Technical report 09, Dept. of
    Statistics & Actuarial Science, University of Waterloo.

    Examples
    --------
    >>> round(average_precision([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]), 4)
    0.8333
    """
    y, s = _binary_inputs(y_true, y_score, "average_precision")
    return _auc_ap(y, s)[1]


def _wilson(successes: int, n: int, confidence: float) -> CI:
    r"""Wilson score interval of a proportion (Wilson 1927):
    :math:`\frac{\hat p + z^2/2n \pm z\sqrt{\hat p(1-\hat p)/n + z^2/4n^2}}{1 + z^2/n}`."""
    if n == 0:
        return CI(float("nan"), float("nan"), float("nan"))
    z = float(norm.ppf(0.5 + confidence / 2.0))
    p = successes / n
    den = 1.0 + z * z / n
    centre = (p + z * z / (2 * n)) / den
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / den
    return CI(p, max(0.0, centre - half), min(1.0, centre + half))


def _percentile_ci(estimate: float, values: NDArray[np.float64], confidence: float) -> CI:
    ok = values[~np.isnan(values)]
    if ok.size == 0 or np.isnan(estimate):
        return CI(float(estimate), float("nan"), float("nan"))
    tail = (1.0 - confidence) / 2.0 * 100.0
    low, high = np.percentile(ok, [tail, 100.0 - tail])
    return CI(float(estimate), float(low), float(high))


@dataclass(frozen=True)
class _PairedAUC:
    """AUC and AP of two score vectors on the same cases, with paired bootstrap CIs."""

    n: int
    n_pos: int
    auc: tuple[CI, CI]
    ap: tuple[CI, CI]
    delta_auc: CI


def _paired_bootstrap(
    y: NDArray[np.bool_],
    s_base: NDArray[np.float64],
    s_cand: NDArray[np.float64],
    *,
    n_boot: int,
    confidence: float,
    rng: np.random.Generator,
) -> _PairedAUC:
    r"""Stratified, paired percentile bootstrap of AUC, AP and the AUC difference.

    Each resample draws :math:`n_1` positives and :math:`n_0` negatives with replacement
    (stratified: the class counts stay those of the sample, so AUC is always defined) and
    scores *both* versions on the same drawn images, so that the CI of
    :math:`\Delta = \mathrm{AUC}_{cand} - \mathrm{AUC}_{base}` accounts for their correlation
    (the bootstrap analogue of DeLong et al. 1988; Efron & Tibshirani 1993, ch. 13). Each
    resample's statistics come from its draw counts per group of tied scores
    (:func:`_group_auc_ap`): no sort per resample, :math:`O(n)` each, in blocks.
    """
    pos, neg = np.flatnonzero(y), np.flatnonzero(~y)
    n, n_pos, n_neg = int(y.size), int(pos.size), int(neg.size)
    groups = [_tie_groups(s_base), _tie_groups(s_cand)]
    point = [_auc_ap(y, s_base), _auc_ap(y, s_cand)]
    boot_auc = np.full((2, n_boot), np.nan)
    boot_ap = np.full((2, n_boot), np.nan)
    if n_pos and n_neg:
        step = max(1, _BLOCK_CELLS // n)
        for start in range(0, n_boot, step):
            b = min(step, n_boot - start)
            drawn_pos = pos[rng.integers(0, n_pos, (b, n_pos))]
            drawn_neg = neg[rng.integers(0, n_neg, (b, n_neg))]
            for row, (group, n_groups) in enumerate(groups):
                auc, ap = _group_auc_ap(
                    _group_counts(group, n_groups, drawn_pos),
                    _group_counts(group, n_groups, drawn_neg),
                )
                boot_auc[row, start : start + b] = auc
                boot_ap[row, start : start + b] = ap
    auc_ci = [_percentile_ci(point[i][0], boot_auc[i], confidence) for i in range(2)]
    ap_ci = [_percentile_ci(point[i][1], boot_ap[i], confidence) for i in range(2)]
    delta = _percentile_ci(point[1][0] - point[0][0], boot_auc[1] - boot_auc[0], confidence)
    return _PairedAUC(n, n_pos, (auc_ci[0], auc_ci[1]), (ap_ci[0], ap_ci[1]), delta)


def _kappa_ci(
    a: NDArray[Any], b: NDArray[Any], *, n_boot: int, confidence: float, rng: np.random.Generator
) -> CI:
    """Cohen's κ (:func:`quality.agreement.categorical.cohen_kappa`) with a percentile
    bootstrap CI over images, vectorised over resamples (one confusion matrix per row)."""
    estimate = cohen_kappa(a, b)
    codes, classes = pd.factorize(pd.Series(np.r_[a, b]), sort=True)
    q, n = len(classes), a.size
    ca, cb = codes[:n], codes[n:]
    kappas = np.full(n_boot, np.nan)
    step = max(1, _BLOCK_CELLS // n)
    for start in range(0, n_boot, step):
        nb = min(step, n_boot - start)
        idx = rng.integers(0, n, (nb, n))
        cell = ca[idx] * q + cb[idx] + (np.arange(nb) * q * q)[:, None]
        conf = np.bincount(cell.ravel(), minlength=nb * q * q).reshape(nb, q, q) / n
        observed = np.trace(conf, axis1=1, axis2=2)
        expected = np.einsum("bi,bi->b", conf.sum(axis=2), conf.sum(axis=1))
        with np.errstate(invalid="ignore", divide="ignore"):
            kappas[start : start + nb] = np.where(
                expected < 1.0, (observed - expected) / (1.0 - expected), np.nan
            )
    return _percentile_ci(estimate, kappas, confidence)


# --------------------------------------------------------------------------------------------
# Model versions
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class VersionRef:
    """One model version: its id, model name, version name, status and the model's task."""

    id: int
    model: str
    version: str
    status: str
    task_id: int | None

    @property
    def label(self) -> str:
        """``model version (status)``, for headings."""
        return f"{self.model} {self.version} ({self.status})"

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready fields."""
        return {
            "id": self.id,
            "model": self.model,
            "version": self.version,
            "status": self.status,
            "task_id": self.task_id,
        }


def _version_refs(session: Session, ids: Sequence[int]) -> dict[int, VersionRef]:
    rows = session.execute(
        select(
            ModelVersion.id, Model.name, ModelVersion.version, ModelVersion.status, Model.task_id
        )
        .join(Model, Model.id == ModelVersion.model_id)
        .where(ModelVersion.id.in_([int(i) for i in ids]))
    ).all()
    return {int(r[0]): VersionRef(int(r[0]), r[1], r[2], r[3], r[4]) for r in rows}


def _known_versions(session: Session) -> str:
    rows = session.execute(
        select(ModelVersion.id, Model.name, ModelVersion.version, ModelVersion.status)
        .join(Model, Model.id == ModelVersion.model_id)
        .order_by(Model.name, ModelVersion.id)
    ).all()
    listed = ", ".join(f"{m}:{v} (id {i}, {s})" for i, m, v, s in rows)
    return listed or "none; no model version is registered"


@_db_errors
def resolve_model_version(session: Session, spec: str | int) -> int:
    """The id of the model version ``spec``: an id, ``MODEL:VERSION``, or a version name that
    only one model has.

    Raises
    ------
    ModelInputError
        Unknown or ambiguous; the message lists the known versions.
    """
    text = str(spec).strip()
    hits = model_version_matches(session, spec)
    if len(hits) == 1:
        return int(hits[0])
    what = "is ambiguous (use MODEL:VERSION or the id)" if hits else "does not exist"
    raise ModelInputError("model version", f"{text!r} {what}; known: {_known_versions(session)}")


@_db_errors
def list_model_versions(session: Session, dataset_id: int | None = None) -> pd.DataFrame:
    """Every model version with its prediction counts (in the dataset's newest version).

    Returns
    -------
    DataFrame with :data:`VERSION_COLUMNS`: ``n_predictions`` rows and ``n_scored`` rows with
    a score, counted in SQL; ordered by model name, then version id.
    """
    counts = select(
        Prediction.model_version_id.label("vid"),
        func.count(Prediction.id).label("n"),
        func.count(Prediction.score).label("n_scored"),
    )
    if dataset_id is not None:
        counts = counts.join(
            DatasetItem,
            and_(
                DatasetItem.image_id == Prediction.image_id,
                DatasetItem.version_id == _scope_version(session, dataset_id),
            ),
        )
    sub = counts.group_by(Prediction.model_version_id).subquery("version_counts")
    rows = session.execute(
        select(
            ModelVersion.id,
            Model.name,
            ModelVersion.version,
            ModelVersion.status,
            Model.task_id,
            func.coalesce(sub.c.n, 0),
            func.coalesce(sub.c.n_scored, 0),
        )
        .join(Model, Model.id == ModelVersion.model_id)
        .outerjoin(sub, sub.c.vid == ModelVersion.id)
        .order_by(Model.name, ModelVersion.id)
    ).all()
    df = pd.DataFrame(rows, columns=VERSION_COLUMNS)
    for col in ("version_id", "n_predictions", "n_scored"):
        df[col] = df[col].astype("int64")
    df["task_id"] = df["task_id"].astype("Int64")
    return df


def default_pair(versions: pd.DataFrame) -> tuple[int, int] | None:
    """(baseline, candidate) version ids to compare by default, or None with fewer than two.

    The baseline is the newest ``production`` version (else the oldest version); the
    candidate the newest ``shadow`` version of the same model, else its newest ``candidate``,
    else its newest other version. ``versions`` is a :func:`list_model_versions` frame.
    """
    if len(versions) < 2:
        return None
    prod = versions[versions["status"] == "production"]
    base_row = prod.iloc[-1] if len(prod) else versions.iloc[0]
    same = versions[
        (versions["model"] == base_row["model"])
        & (versions["version_id"] != base_row["version_id"])
    ]
    others = same if len(same) else versions[versions["version_id"] != base_row["version_id"]]
    for status in ("shadow", "candidate"):
        hit = others[others["status"] == status]
        if len(hit):
            return int(base_row["version_id"]), int(hit.iloc[-1]["version_id"])
    return int(base_row["version_id"]), int(others.iloc[-1]["version_id"])


def _scope_version(session: Session, dataset_id: int) -> int:
    vid = newest_version_id(session, dataset_id)
    if vid is None:
        raise ModelInputError("dataset", f"dataset id {dataset_id} has no version (no images)")
    return vid


def _newest_predictions(version_ids: Sequence[int], scope_vid: int | None, name: str) -> Any:
    """Subquery: the newest prediction of each (version, image): ``model_version_id,
    image_id, label, score, latency_ms`` (``score`` NULL for an empty output)."""
    rn = (
        func.row_number()
        .over(
            partition_by=(Prediction.model_version_id, Prediction.image_id),
            order_by=(Prediction.created_at.desc(), Prediction.id.desc()),
        )
        .label("rn")
    )
    stmt = select(
        Prediction.model_version_id,
        Prediction.image_id,
        Prediction.label,
        Prediction.score,
        Prediction.latency_ms,
        rn,
    ).where(Prediction.model_version_id.in_([int(v) for v in version_ids]))
    if scope_vid is not None:
        stmt = stmt.join(
            DatasetItem,
            and_(DatasetItem.image_id == Prediction.image_id, DatasetItem.version_id == scope_vid),
        )
    ranked = stmt.subquery(f"{name}_ranked")
    return (
        select(
            ranked.c.model_version_id,
            ranked.c.image_id,
            ranked.c.label,
            ranked.c.score,
            ranked.c.latency_ms,
        )
        .where(ranked.c.rn == 1)
        .subquery(name)
    )


def _source_expr() -> Any:
    return func.coalesce(Source.name, UNKNOWN_SOURCE)


def _with_source(stmt: Any, image_col: Any) -> Any:
    return (
        stmt.join(Image, Image.id == image_col)
        .join(Series, Series.id == Image.series_id)
        .join(Study, Study.id == Series.study_id)
        .outerjoin(Source, Source.id == Study.source_id)
    )


def _task(session: Session, task_id: int) -> tuple[str, list[str]]:
    row = session.execute(
        select(LabelingTask.name, LabelingTask.classes).where(LabelingTask.id == task_id)
    ).first()
    if row is None:
        raise ModelInputError("task", f"labeling task id {task_id} does not exist")
    return str(row[0]), [str(c) for c in (row[1] or [])]


def _rows_frame(rows: Sequence[Any], columns: list[str]) -> pd.DataFrame:
    """A frame from result rows, column by column: ``pd.DataFrame(rows)`` reads each
    SQLAlchemy ``Row`` item by item, ~5x slower at 10⁵ rows (bench/rank.py)."""
    if not rows:
        return pd.DataFrame({c: pd.Series(dtype=object) for c in columns})
    return pd.DataFrame(dict(zip(columns, (list(c) for c in zip(*rows, strict=True)), strict=True)))


def _newest_prediction(version_id: int, image_col: Any, column: Any = None) -> Any:
    """Correlated scalar subquery: a column (default: the id) of the newest prediction of
    ``version_id`` for the image in ``image_col`` (by ``created_at``, then id).

    One probe of ``ix_predictions_version_image`` per image: on SQLite faster than a window
    over the version's predictions, and it returns one row per image.
    """
    newest = aliased(Prediction)
    target = getattr(newest, column.key) if column is not None else newest.id
    return (
        select(target)
        .where(newest.model_version_id == version_id, newest.image_id == image_col)
        .order_by(newest.created_at.desc(), newest.id.desc())
        .limit(1)
        .scalar_subquery()
    )


# --------------------------------------------------------------------------------------------
# Comparison
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelComparison:
    """Two model versions on the images both scored (see :func:`compare_versions`).

    Attributes
    ----------
    baseline, candidate : the two versions (production, shadow).
    truth : ``"gold"`` or ``"consensus"``; ``task_id``, ``negative_class``: what "finding" means.
    dataset_id : the scope (None: every image).
    n_boot, seed, confidence : bootstrap settings.
    n_scored_baseline, n_scored_candidate : images each version has a score for in the scope.
    cases : one row per image both versions scored, :data:`CASE_COLUMNS`: the newest labels
        and scores, the gold label (NaN without one), the truth label and ``y_true`` (1
        finding, 0 not, NaN without truth). The score scatter plots these rows.
    agreement : share of cases with the same predicted label, Wilson CI.
    kappa : Cohen's κ of the predicted labels, bootstrap CI.
    metrics : per role (``baseline``, ``candidate``): ``n``, ``n_pos``, ``auc``, ``auc_low``,
        ``auc_high``, ``ap``, ``ap_low``, ``ap_high``, ``sensitivity``, ``specificity`` (of
        the predicted labels, finding vs negative class) on the cases with truth.
    delta_auc : candidate minus baseline AUC, paired bootstrap CI.
    by_source : per source ``n``, ``n_pos``, ``auc_baseline`` (``_low``/``_high``),
        ``auc_candidate`` (…), ``delta`` (…); NaN where a source lacks a class.
    roc, pr : curve points per role (``role, fpr, tpr, threshold`` / ``role, recall,
        precision, threshold``).
    latency : per role ``n``, ``median_ms``, ``p95_ms`` over the scope's predictions that
        recorded a latency (NaN where none did).
    """

    baseline: VersionRef
    candidate: VersionRef
    truth: str
    task_id: int | None
    negative_class: str
    dataset_id: int | None
    n_boot: int
    seed: int | None
    confidence: float
    n_scored_baseline: int
    n_scored_candidate: int
    cases: pd.DataFrame
    agreement: CI
    kappa: CI
    metrics: pd.DataFrame
    delta_auc: CI
    by_source: pd.DataFrame
    roc: pd.DataFrame
    pr: pd.DataFrame
    latency: pd.DataFrame

    @property
    def n_cases(self) -> int:
        """Images both versions scored."""
        return len(self.cases)

    @property
    def n_with_truth(self) -> int:
        """Cases with a truth label (the AUC's sample)."""
        return int(self.cases["y_true"].notna().sum())

    @property
    def flipped(self) -> pd.DataFrame:
        """Cases whose predicted label changed between the versions: :data:`CASE_COLUMNS`,
        ``baseline_correct`` / ``candidate_correct`` (right on the finding question; None
        without truth) and ``finding_flip`` (the finding / no-finding call changed, not just
        the finding class). Finding flips first, then by image id."""
        c = self.cases
        mask = c["label_baseline"].notna() & c["label_candidate"].notna()
        mask &= c["label_baseline"] != c["label_candidate"]
        out = c.loc[mask].copy()
        y = out["y_true"]
        pred = {}
        for role in ("baseline", "candidate"):
            pred[role] = (out[f"label_{role}"] != self.negative_class).astype(float)
            out[f"{role}_correct"] = np.where(y.isna(), None, pred[role] == y)
        # A change of the finding/no-finding call matters more than a change of finding class.
        out["finding_flip"] = pred["baseline"] != pred["candidate"]
        out = out.sort_values(["finding_flip", "image_id"], ascending=[False, True])
        return out.reset_index(drop=True)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready summary (cases and curves left out; ``flipped`` as image ids)."""

        def ci(c: CI) -> dict[str, float | None]:
            return {k: _num(v) for k, v in c._asdict().items()}

        return {
            "baseline": self.baseline.as_dict(),
            "candidate": self.candidate.as_dict(),
            "truth": self.truth,
            "task_id": self.task_id,
            "negative_class": self.negative_class,
            "dataset_id": self.dataset_id,
            "n_boot": self.n_boot,
            "seed": self.seed,
            "confidence": self.confidence,
            "n_cases": self.n_cases,
            "n_with_truth": self.n_with_truth,
            "n_scored": {"baseline": self.n_scored_baseline, "candidate": self.n_scored_candidate},
            "agreement": ci(self.agreement),
            "kappa": ci(self.kappa),
            "delta_auc": ci(self.delta_auc),
            "metrics": _records(self.metrics),
            "by_source": _records(self.by_source),
            "latency": _records(self.latency),
            "flipped_image_ids": [int(i) for i in self.flipped["image_id"]],
        }


def _num(value: Any) -> float | None:
    if value is None:
        return None
    f = float(value)
    return None if math.isnan(f) else f


def _plain(value: Any) -> Any:
    """A JSON-ready Python value: numpy scalars unwrapped, NaN and pandas NA as None."""
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float):
        return _num(value)
    if value is pd.NA or value is pd.NaT:
        return None
    return value


def _records(df: pd.DataFrame) -> list[dict[str, Any]]:
    return [{k: _plain(v) for k, v in rec.items()} for rec in df.to_dict("records")]


def _consensus(session: Session, task_id: int, scope_vid: int | None, negative: str) -> pd.Series:
    """Dawid-Skene consensus of every annotator's newest label per image, on the binary
    finding question: ``image_id →`` :data:`FINDING` or ``negative``."""
    rn = (
        func.row_number()
        .over(
            partition_by=(Annotation.image_id, Annotation.annotator_id),
            order_by=(Annotation.created_at.desc(), Annotation.id.desc()),
        )
        .label("rn")
    )
    stmt = select(Annotation.image_id, Annotation.annotator_id, Annotation.label, rn).where(
        Annotation.task_id == task_id, Annotation.label.is_not(None)
    )
    if scope_vid is not None:
        stmt = stmt.join(
            DatasetItem,
            and_(DatasetItem.image_id == Annotation.image_id, DatasetItem.version_id == scope_vid),
        )
    ranked = stmt.subquery("newest_labels")
    rows = session.execute(
        select(ranked.c.image_id, ranked.c.annotator_id, ranked.c.label).where(ranked.c.rn == 1)
    ).all()
    labels = pd.DataFrame(rows, columns=["item_id", "annotator_id", "label"])
    if labels["annotator_id"].nunique() < 2:
        raise ModelInputError(
            "truth",
            f"a consensus needs labels from at least two annotators in task id {task_id}; "
            f"found {labels['annotator_id'].nunique()} (use truth='gold')",
        )
    labels["label"] = np.where(labels["label"] == negative, negative, FINDING)
    ds = DawidSkene().fit(labels, classes=[negative, FINDING])
    return ds.labels_


def _latency(
    session: Session, version_ids: Sequence[int], scope_vid: int | None
) -> dict[int, tuple[int, float, float]]:
    """``version id → (n, median, p95)`` of ``latency_ms``, computed in SQL.

    The median averages the middle one or two values; the 95th percentile is the nearest-rank
    value, the :math:`\\lceil 0.95\\,n \\rceil`-th smallest (Hyndman & Fan 1996, definition 1):
    window functions, since SQLite has no ``percentile_cont``.
    """
    vid = Prediction.model_version_id
    base = select(
        vid.label("vid"),
        Prediction.latency_ms.label("ms"),
        func.row_number().over(partition_by=vid, order_by=Prediction.latency_ms).label("rn"),
        func.count(literal(1)).over(partition_by=vid).label("cnt"),
    ).where(vid.in_([int(v) for v in version_ids]), Prediction.latency_ms.is_not(None))
    if scope_vid is not None:
        base = base.join(
            DatasetItem,
            and_(DatasetItem.image_id == Prediction.image_id, DatasetItem.version_id == scope_vid),
        )
    r = base.subquery("latency_ranked")
    is_median = r.c.rn.in_(((r.c.cnt + 1) // 2, (r.c.cnt + 2) // 2))
    is_p95 = r.c.rn == (r.c.cnt * 95 + 99) // 100
    rows = session.execute(
        select(
            r.c.vid,
            func.max(r.c.cnt),
            func.sum(case((is_median, r.c.ms), else_=0.0)),
            func.sum(case((is_median, 1), else_=0)),
            func.max(case((is_p95, r.c.ms), else_=None)),
        )
        .where(or_(is_median, is_p95))
        .group_by(r.c.vid)
    ).all()
    return {
        int(v): (int(n), float(s) / float(k) if k else float("nan"), _num(p) or float("nan"))
        for v, n, s, k, p in rows
    }


def _binary_pred(labels: pd.Series, negative: str) -> NDArray[np.bool_]:
    return (labels.astype(object) != negative).to_numpy(dtype=bool)


def _sens_spec(pred: NDArray[np.bool_], y: NDArray[np.bool_]) -> tuple[float, float]:
    n1, n0 = int(y.sum()), int((~y).sum())
    sens = float((pred & y).sum() / n1) if n1 else float("nan")
    spec = float((~pred & ~y).sum() / n0) if n0 else float("nan")
    return sens, spec


@_db_errors
def compare_versions(
    session: Session,
    baseline_version_id: int,
    candidate_version_id: int,
    *,
    dataset_id: int | None = None,
    truth: Truth = "gold",
    task_id: int | None = None,
    negative_class: str = "normal",
    n_boot: int = 1000,
    confidence: float = 0.95,
    seed: int | None = 0,
) -> ModelComparison:
    r"""Compare two model versions on the images both of them scored.

    Agreement is the share of images with the same predicted label (Wilson CI) and Cohen's
    κ of the two label vectors (:func:`quality.agreement.categorical.cohen_kappa`, bootstrap
    CI). Discrimination is measured against a truth on the finding question (a finding is a
    label other than ``negative_class``) by ROC-AUC (:func:`roc_auc`, Mann-Whitney) and
    average precision (:func:`average_precision`), overall and per source, with stratified
    paired percentile bootstrap CIs of each AUC and of the difference
    :math:`\Delta = \mathrm{AUC}_{cand} - \mathrm{AUC}_{base}` (same resampled images for both
    versions). Latency is the median and nearest-rank 95th percentile of ``latency_ms``.

    Truth
    -----
    * ``"gold"``: the newest ``gold`` reference label of the image in the task (the expert
      panel); images without one are left out of the AUCs.
    * ``"consensus"``: the doctors' consensus, Dawid-Skene (1979) EM on every annotator's
      newest label of the task, binarised to finding / ``negative_class`` first, not
      anchored on gold (so it stays an independent reference).

    Parameters
    ----------
    session : an open session.
    baseline_version_id, candidate_version_id : ``model_versions.id`` of the production and
        the shadow (candidate) version.
    dataset_id : only images of the dataset's newest version (None: every image).
    truth : ``"gold"`` or ``"consensus"``.
    task_id : the labeling task that defines the truth (default: the baseline model's task).
    negative_class : the class that is not a finding.
    n_boot : bootstrap resamples (≥ 1).
    confidence : CI level in (0, 1).
    seed : seed of ``np.random.default_rng``: the same seed, the same CIs.

    Returns
    -------
    ModelComparison

    Raises
    ------
    ModelInputError
        Unknown or identical versions, an unknown truth or task, a negative class outside
        the task's classes, a dataset without version, bad ``n_boot``/``confidence``, or a
        consensus with fewer than two annotators.
    """
    if truth not in TRUTHS:
        raise ModelInputError("truth", f"unknown truth {truth!r}; valid: {', '.join(TRUTHS)}")
    if isinstance(n_boot, bool) or not isinstance(n_boot, int | np.integer) or n_boot < 1:
        raise ModelInputError("n_boot", f"must be an integer ≥ 1, got {n_boot!r}")
    if not 0.0 < confidence < 1.0:
        raise ModelInputError("confidence", f"must lie in (0, 1), got {confidence!r}")
    if int(baseline_version_id) == int(candidate_version_id):
        raise ModelInputError("candidate", "the two versions must differ")
    refs = _version_refs(session, [baseline_version_id, candidate_version_id])
    for name, vid in (("baseline", baseline_version_id), ("candidate", candidate_version_id)):
        if int(vid) not in refs:
            raise ModelInputError(
                name, f"model version id {vid} does not exist; known: {_known_versions(session)}"
            )
    base, cand = refs[int(baseline_version_id)], refs[int(candidate_version_id)]
    task_id = task_id if task_id is not None else base.task_id
    if task_id is None:
        raise ModelInputError("task", f"model {base.model!r} has no task: pass task_id")
    _, classes = _task(session, int(task_id))
    if classes and negative_class not in classes:
        raise ModelInputError(
            "negative_class",
            f"{negative_class!r} is not a class of task id {task_id}; classes: {', '.join(classes)}",
        )
    scope_vid = _scope_version(session, dataset_id) if dataset_id is not None else None

    cases = _cases(session, base.id, cand.id, scope_vid, int(task_id))
    if truth == "gold":
        cases["truth_label"] = cases["gold_label"]
    else:
        consensus = _consensus(session, int(task_id), scope_vid, negative_class)
        cases["truth_label"] = cases["image_id"].map(consensus).astype(object)
    has_truth = cases["truth_label"].notna()
    cases["y_true"] = np.where(
        has_truth, (cases["truth_label"] != negative_class).astype(float), np.nan
    )
    scored = session.execute(
        select(
            *(
                select(func.count())
                .select_from(sub)
                .where(sub.c.score.is_not(None))
                .scalar_subquery()
                for sub in (
                    _newest_predictions([base.id], scope_vid, "nb"),
                    _newest_predictions([cand.id], scope_vid, "nc"),
                )
            )
        )
    ).one()

    rng = np.random.default_rng(seed)
    both = cases["label_baseline"].notna() & cases["label_candidate"].notna()
    a = cases.loc[both, "label_baseline"].astype(str).to_numpy()
    b = cases.loc[both, "label_candidate"].astype(str).to_numpy()
    agreement = _wilson(int((a == b).sum()), int(a.size), confidence)
    nan_ci = CI(float("nan"), float("nan"), float("nan"))
    kappa = _kappa_ci(a, b, n_boot=n_boot, confidence=confidence, rng=rng) if a.size else nan_ci

    known = cases.loc[has_truth]
    y = known["y_true"].to_numpy() == 1.0
    s_base = known["score_baseline"].to_numpy(np.float64)
    s_cand = known["score_candidate"].to_numpy(np.float64)
    overall = _paired_bootstrap(y, s_base, s_cand, n_boot=n_boot, confidence=confidence, rng=rng)
    metrics = _metrics_frame(known, y, overall, base, cand, negative_class)
    by_source = _by_source(known, n_boot=n_boot, confidence=confidence, rng=rng)
    roc, pr = _curves(y, s_base, s_cand)
    lat = _latency(session, [base.id, cand.id], scope_vid)
    latency = pd.DataFrame(
        [
            {
                "role": role,
                "version": ref.version,
                "n": lat.get(ref.id, (0, np.nan, np.nan))[0],
                "median_ms": lat.get(ref.id, (0, np.nan, np.nan))[1],
                "p95_ms": lat.get(ref.id, (0, np.nan, np.nan))[2],
            }
            for role, ref in (("baseline", base), ("candidate", cand))
        ]
    )
    return ModelComparison(
        baseline=base,
        candidate=cand,
        truth=truth,
        task_id=int(task_id),
        negative_class=negative_class,
        dataset_id=dataset_id,
        n_boot=int(n_boot),
        seed=seed,
        confidence=float(confidence),
        n_scored_baseline=int(scored[0]),
        n_scored_candidate=int(scored[1]),
        cases=cases[CASE_COLUMNS],
        agreement=agreement,
        kappa=kappa,
        metrics=metrics,
        delta_auc=overall.delta_auc,
        by_source=by_source,
        roc=roc,
        pr=pr,
        latency=latency,
    )


def _cases(
    session: Session, base_id: int, cand_id: int, scope_vid: int | None, task_id: int
) -> pd.DataFrame:
    """One row per image both versions scored: labels, scores, source and gold label.

    The images (of the scope) drive; each version's newest prediction is joined by primary
    key from an indexed correlated lookup (:func:`_newest_prediction`), and the newest gold
    label is another (``ix_reference_labels_task_image``). A windowed subquery on the inner
    side of a join would be re-scanned per row by SQLite (quadratic at 10⁵ images).
    """
    pb, pc = aliased(Prediction), aliased(Prediction)
    gold = (
        select(ReferenceLabel.label)
        .where(
            ReferenceLabel.task_id == task_id,
            ReferenceLabel.image_id == Image.id,
            ReferenceLabel.kind == "gold",
            ReferenceLabel.label.is_not(None),
        )
        .order_by(ReferenceLabel.id.desc())
        .limit(1)
        .scalar_subquery()
    )
    stmt = select(
        Image.id, Image.sop_uid, Image.uri, _source_expr(), pb.label, pc.label, pb.score,
        pc.score, gold,
    ).select_from(Image)  # fmt: skip
    if scope_vid is not None:
        stmt = stmt.join(
            DatasetItem,
            and_(DatasetItem.image_id == Image.id, DatasetItem.version_id == scope_vid),
        )
    stmt = (
        stmt.join(pb, pb.id == _newest_prediction(base_id, Image.id))
        .join(pc, pc.id == _newest_prediction(cand_id, Image.id))
        .join(Series, Series.id == Image.series_id)
        .join(Study, Study.id == Series.study_id)
        .outerjoin(Source, Source.id == Study.source_id)
        .where(pb.score.is_not(None), pc.score.is_not(None))
        .order_by(Image.id)
    )
    df = _rows_frame(session.execute(stmt).all(), CASE_COLUMNS[:9])
    df["image_id"] = df["image_id"].astype("int64")
    for col in ("score_baseline", "score_candidate"):
        df[col] = pd.to_numeric(df[col], errors="coerce").astype("float64")
    for col in ("label_baseline", "label_candidate", "gold_label"):
        df[col] = df[col].astype(object)
    return df


def _metrics_frame(
    known: pd.DataFrame,
    y: NDArray[np.bool_],
    boot: _PairedAUC,
    base: VersionRef,
    cand: VersionRef,
    negative: str,
) -> pd.DataFrame:
    rows = []
    for i, (role, ref) in enumerate((("baseline", base), ("candidate", cand))):
        labels = known[f"label_{role}"]
        sens, spec = _sens_spec(_binary_pred(labels, negative), y)
        rows.append(
            {
                "role": role,
                "version": ref.version,
                "n": boot.n,
                "n_pos": boot.n_pos,
                "auc": boot.auc[i].estimate,
                "auc_low": boot.auc[i].low,
                "auc_high": boot.auc[i].high,
                "ap": boot.ap[i].estimate,
                "ap_low": boot.ap[i].low,
                "ap_high": boot.ap[i].high,
                "sensitivity": sens,
                "specificity": spec,
            }
        )
    return pd.DataFrame(rows)


def _by_source(
    known: pd.DataFrame, *, n_boot: int, confidence: float, rng: np.random.Generator
) -> pd.DataFrame:
    rows = []
    for source, group in known.groupby("source", sort=True):
        y = group["y_true"].to_numpy() == 1.0
        r = _paired_bootstrap(
            y,
            group["score_baseline"].to_numpy(np.float64),
            group["score_candidate"].to_numpy(np.float64),
            n_boot=n_boot,
            confidence=confidence,
            rng=rng,
        )
        rows.append(
            {
                "source": source,
                "n": r.n,
                "n_pos": r.n_pos,
                "auc_baseline": r.auc[0].estimate,
                "auc_baseline_low": r.auc[0].low,
                "auc_baseline_high": r.auc[0].high,
                "auc_candidate": r.auc[1].estimate,
                "auc_candidate_low": r.auc[1].low,
                "auc_candidate_high": r.auc[1].high,
                "delta": r.delta_auc.estimate,
                "delta_low": r.delta_auc.low,
                "delta_high": r.delta_auc.high,
            }
        )
    cols = [
        "source", "n", "n_pos", "auc_baseline", "auc_baseline_low", "auc_baseline_high",
        "auc_candidate", "auc_candidate_low", "auc_candidate_high", "delta", "delta_low",
        "delta_high",
    ]  # fmt: skip
    return pd.DataFrame(rows, columns=cols)


def _curves(
    y: NDArray[np.bool_], s_base: NDArray[np.float64], s_cand: NDArray[np.float64]
) -> tuple[pd.DataFrame, pd.DataFrame]:
    roc_parts, pr_parts = [], []
    if y.size and y.any() and not y.all():
        for role, s in (("baseline", s_base), ("candidate", s_cand)):
            fpr, tpr, thr = roc_curve(y, s)
            roc_parts.append(pd.DataFrame({"role": role, "fpr": fpr, "tpr": tpr, "threshold": thr}))
            prec, rec, pthr = precision_recall_curve(y, s)
            pr_parts.append(
                pd.DataFrame(
                    {
                        "role": role,
                        "recall": rec,
                        "precision": prec,
                        "threshold": np.r_[pthr, np.nan],
                    }
                )
            )
    roc = (
        pd.concat(roc_parts, ignore_index=True)
        if roc_parts
        else pd.DataFrame(columns=["role", "fpr", "tpr", "threshold"])
    )
    pr = (
        pd.concat(pr_parts, ignore_index=True)
        if pr_parts
        else pd.DataFrame(columns=["role", "recall", "precision", "threshold"])
    )
    return roc, pr


# --------------------------------------------------------------------------------------------
# Release checklist
# --------------------------------------------------------------------------------------------

Status = Literal["pass", "fail", "inconclusive"]


@dataclass(frozen=True)
class ChecklistItem:
    """One release criterion and its outcome.

    Attributes
    ----------
    key : stable id (``overall_auc``, ``source:<name>``, ``problem_images``, ``gold_cases``,
        ``latency``).
    title : the question, in plain words.
    status : ``pass``, ``fail`` or ``inconclusive`` (too little data to tell).
    detail : the numbers behind the verdict.
    value : the main number (an AUC difference, a count, milliseconds), or None.
    image_ids : the images behind a failure (new failures), else empty.
    """

    key: str
    title: str
    status: Status
    detail: str
    value: float | None = None
    image_ids: tuple[int, ...] = field(default_factory=tuple)

    @property
    def passed(self) -> bool:
        """True when the status is ``pass``."""
        return self.status == "pass"

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready fields."""
        return {
            "key": self.key,
            "title": self.title,
            "status": self.status,
            "detail": self.detail,
            "value": _num(self.value),
            "image_ids": list(self.image_ids),
        }


def checklist_passed(items: Sequence[ChecklistItem]) -> bool:
    """True when every item passed (an inconclusive item is not a pass)."""
    return bool(items) and all(i.passed for i in items)


def _auc_item(key: str, title: str, delta: CI, n: int, margin: float) -> ChecklistItem:
    """Non-inferiority of the AUC within ``margin``, from the paired bootstrap CI of Δ."""
    if math.isnan(delta.estimate) or math.isnan(delta.low):
        return ChecklistItem(
            key, title, "inconclusive", f"AUC undefined on {n} cases (one class only)", None
        )
    text = (
        f"ΔAUC {delta.estimate:+.3f} [{delta.low:+.3f}, {delta.high:+.3f}] on {n} cases; "
        f"margin −{margin:.3f}"
    )
    if delta.low >= -margin:
        verdict = "beats production" if delta.low > 0 else "non-inferior"
        return ChecklistItem(key, title, "pass", f"{verdict}: {text}", delta.estimate)
    if delta.estimate < -margin or delta.high < 0:
        return ChecklistItem(key, title, "fail", f"worse than production: {text}", delta.estimate)
    return ChecklistItem(key, title, "inconclusive", f"CI too wide to call: {text}", delta.estimate)


def _new_failures(
    cases: pd.DataFrame, y: pd.Series, negative: str, keep: pd.Series
) -> tuple[int, list[int]]:
    """Cases in ``keep`` the baseline got right and the candidate got wrong (finding vs not)."""
    sub = cases.loc[keep & y.notna()]
    yy = y.loc[sub.index] == 1.0
    pb = sub["label_baseline"].astype(object) != negative
    pc = sub["label_candidate"].astype(object) != negative
    base_right = (pb == yy) & sub["label_baseline"].notna()
    new = base_right & (pc != yy) & sub["label_candidate"].notna()
    return int(base_right.sum()), [int(i) for i in sub.loc[new, "image_id"]]


def release_checklist(
    comparison: ModelComparison,
    *,
    known_problem_images: Collection[int] | None = None,
    margin: float = 0.02,
    max_new_failures: int = 0,
    latency_budget_ms: float | None = 250.0,
    max_latency_ratio: float | None = 2.0,
) -> list[ChecklistItem]:
    r"""Release criteria for the candidate of a comparison.

    1. **Overall AUC** and 2. **AUC at every source** — non-inferiority within ``margin``
       (Blackwelder 1982) from the paired bootstrap CI of
       :math:`\Delta = \mathrm{AUC}_{cand} - \mathrm{AUC}_{base}`:

       * ``pass`` when :math:`\Delta_{low} \ge -\text{margin}` (it "beats" production when
         :math:`\Delta_{low} > 0`);
       * else ``fail`` when :math:`\hat\Delta < -\text{margin}` or :math:`\Delta_{high} < 0`
         (worse beyond the margin, or worse with confidence);
       * else ``inconclusive`` (the CI is too wide: more labelled cases are needed).
    3. **Known problem images** (only with ``known_problem_images``, e.g.
       :func:`problem_images`) and 4. **gold cases** — *no new failures*: among those images
       with truth (gold for 4), the ones production classified right (finding vs not, at its
       predicted label) and the candidate wrong; ``pass`` with at most ``max_new_failures``.
    5. **Latency** — the candidate's 95th percentile within ``latency_budget_ms`` and its
       median at most ``max_latency_ratio`` × production's (either check off with None);
       ``inconclusive`` when the candidate recorded no latency.

    Parameters
    ----------
    comparison : from :func:`compare_versions`.
    known_problem_images : image ids of known problem cases (images failing checks, flagged
        defects or OOD).
    margin : non-inferiority margin on the AUC scale (≥ 0).
    max_new_failures : tolerated new failures per problem-case item (≥ 0).
    latency_budget_ms, max_latency_ratio : latency budgets (None: not checked).

    Returns
    -------
    list of ChecklistItem
        In the order above; see :func:`checklist_passed`.

    References
    ----------
    Blackwelder, W. C. (1982). "Proving the null hypothesis" in clinical trials. *Controlled
    Clinical Trials*, 3(4), 345-353.
    """
    if not margin >= 0:
        raise ModelInputError("margin", f"must be ≥ 0, got {margin!r}")
    if max_new_failures < 0:
        raise ModelInputError("max_new_failures", f"must be ≥ 0, got {max_new_failures!r}")
    c = comparison
    items = [
        _auc_item(
            "overall_auc",
            "Overall AUC not worse than production",
            c.delta_auc,
            c.n_with_truth,
            margin,
        )
    ]
    for rec in c.by_source.to_dict("records"):
        delta = CI(rec["delta"], rec["delta_low"], rec["delta_high"])
        items.append(
            _auc_item(
                f"source:{rec['source']}",
                f"AUC at {rec['source']} not worse than production",
                delta,
                int(rec["n"]),
                margin,
            )
        )
    cases = c.cases
    if known_problem_images is not None:
        keep = cases["image_id"].isin({int(i) for i in known_problem_images})
        n_right, new = _new_failures(cases, cases["y_true"], c.negative_class, keep)
        items.append(
            _failure_item(
                "problem_images",
                "No new failures on known problem images",
                n_right,
                new,
                max_new_failures,
                "problem images with truth production got right",
            )
        )
    gold_y = pd.Series(
        np.where(
            cases["gold_label"].notna(),
            (cases["gold_label"] != c.negative_class).astype(float),
            np.nan,
        ),
        index=cases.index,
    )
    n_right, new = _new_failures(cases, gold_y, c.negative_class, gold_y.notna())
    items.append(
        _failure_item(
            "gold_cases",
            "No new failures on gold cases production got right",
            n_right,
            new,
            max_new_failures,
            "gold cases production got right",
        )
    )
    items.append(_latency_item(c.latency, latency_budget_ms, max_latency_ratio))
    return items


def _failure_item(
    key: str, title: str, n_right: int, new: list[int], tolerated: int, what: str
) -> ChecklistItem:
    if n_right == 0:
        return ChecklistItem(key, title, "inconclusive", f"no {what}", 0.0)
    detail = f"{len(new)} new failures among {n_right} {what} (tolerated: {tolerated})"
    status: Status = "pass" if len(new) <= tolerated else "fail"
    return ChecklistItem(key, title, status, detail, float(len(new)), tuple(new))


def _latency_item(
    latency: pd.DataFrame, budget_ms: float | None, max_ratio: float | None
) -> ChecklistItem:
    key, title = "latency", "Latency within budget"
    rows = latency.set_index("role")
    cand_p95, cand_med = rows.at["candidate", "p95_ms"], rows.at["candidate", "median_ms"]
    base_med = rows.at["baseline", "median_ms"]
    if pd.isna(cand_med):
        return ChecklistItem(key, title, "inconclusive", "the candidate recorded no latency")
    problems, notes = [], [f"candidate median {cand_med:.0f} ms, p95 {cand_p95:.0f} ms"]
    if budget_ms is not None:
        notes.append(f"p95 budget {budget_ms:.0f} ms")
        if cand_p95 > budget_ms:
            problems.append("p95 over budget")
    if max_ratio is not None and not pd.isna(base_med) and base_med > 0:
        ratio = cand_med / base_med
        notes.append(f"{ratio:.2f}× production's median (at most {max_ratio:.2f}×)")
        if ratio > max_ratio:
            problems.append("median too slow")
    status: Status = "fail" if problems else "pass"
    detail = "; ".join([*problems, *notes]) if problems else "; ".join(notes)
    return ChecklistItem(key, title, status, detail, float(cand_p95))


@_db_errors
def problem_images(session: Session, *, dataset_id: int | None = None) -> list[int]:
    """Images ``quality score`` flagged: a defect type other than ``clean``, or OOD.

    The newest scorer version of the scope (by ``scored_at``) decides; the list is empty when
    nothing is scored. These are the "known problem cases" of :func:`release_checklist`.
    """
    from quality.imaging.report import newest_scorer_version

    version = newest_scorer_version(session, dataset_id=dataset_id)
    if version is None:
        return []
    stmt = select(ImageQuality.image_id).where(
        ImageQuality.scorer_version == version,
        or_(
            and_(ImageQuality.defect_type.is_not(None), ImageQuality.defect_type != "clean"),
            ImageQuality.is_ood.is_(True),
        ),
    )
    if dataset_id is not None:
        stmt = stmt.join(
            DatasetItem,
            and_(
                DatasetItem.image_id == ImageQuality.image_id,
                DatasetItem.version_id == _scope_version(session, dataset_id),
            ),
        )
    return sorted({int(i) for i in session.scalars(stmt)})


# --------------------------------------------------------------------------------------------
# Active learning: acquisition scores (pure)
# --------------------------------------------------------------------------------------------


def _proba(p: npt.ArrayLike, source: str, *, members: bool = False) -> NDArray[np.float64]:
    """Class probabilities, last axis = classes: a 1-D (or, for committees, 2-D) array of
    positive-class probabilities becomes ``[1 - p, p]``. NaN marks a missing member."""
    arr = np.asarray(p, dtype=np.float64)
    base_ndim = 2 if members else 1
    if arr.ndim == base_ndim:
        arr = np.stack([1.0 - arr, arr], axis=-1)
    if arr.ndim != base_ndim + 1 or arr.shape[-1] < 2:
        shape = "(m, n) or (m, n, k)" if members else "(n,) or (n, k)"
        raise LabelDataError(source, "proba", f"expected shape {shape}, got {arr.shape}")
    finite = arr[~np.isnan(arr)]
    if finite.size and (finite.min() < -1e-9 or finite.max() > 1 + 1e-9):
        raise LabelDataError(source, "proba", "probabilities must lie in [0, 1]")
    if not members and np.isnan(arr).any():
        raise LabelDataError(source, "proba", "NaN probabilities: drop unscored items first")
    return np.clip(arr, 0.0, 1.0)


def _entropy(p: NDArray[np.float64]) -> NDArray[np.float64]:
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(p > 0, -p * np.log(p), 0.0)
    return terms.sum(axis=-1) / np.log(p.shape[-1])


def entropy_scores(proba: npt.ArrayLike) -> NDArray[np.float64]:
    r"""Normalised Shannon entropy of each item's predicted class distribution.

    .. math:: H_i = -\frac{1}{\log k} \sum_{c=1}^{k} p_{ic} \log p_{ic} \in [0, 1]

    (:math:`0 \log 0 = 0`). Higher means more uncertain: label first. For a binary score
    :math:`p`, :math:`H` peaks at :math:`p = 0.5` and ranks items like :func:`margin_scores`.

    Parameters
    ----------
    proba : array_like, shape (n,) (positive-class probabilities) or (n, k) (rows sum to 1).

    Returns
    -------
    ndarray, shape (n,)

    References
    ----------
    Settles, B. (2009). Active learning literature survey. Computer Sciences Technical Report
    1648, University of Wisconsin-Madison, section 3.1.

    Examples
    --------
    >>> entropy_scores([0.5, 0.9, 1.0]).round(3).tolist()
    [1.0, 0.469, 0.0]
    """
    return _entropy(_proba(proba, "entropy_scores"))


def margin_scores(proba: npt.ArrayLike) -> NDArray[np.float64]:
    r"""Margin between the two most probable classes, :math:`M_i = p_{i(1)} - p_{i(2)}`.

    Lower means more uncertain (label first); :math:`M = |2p - 1|` for a binary score.

    Parameters
    ----------
    proba : array_like, shape (n,) or (n, k).

    Returns
    -------
    ndarray, shape (n,), in [0, 1].

    References
    ----------
    Scheffer, T., Decomain, C., & Wrobel, S. (2001). Active hidden Markov models for
    information extraction. *IDA 2001*, LNCS 2189, 309-318.

    Examples
    --------
    >>> margin_scores([0.5, 0.9, 0.2]).round(2).tolist()
    [0.0, 0.8, 0.6]
    """
    p = _proba(proba, "margin_scores")
    top2 = np.sort(p, axis=-1)[..., -2:]
    return top2[..., 1] - top2[..., 0]


def committee_scores(
    probas: npt.ArrayLike, *, method: Literal["kl", "vote"] = "kl"
) -> NDArray[np.float64]:
    r"""Disagreement of a committee of models (here: the versions of one model) per item.

    * ``"kl"`` — mean Kullback-Leibler divergence of each member from the consensus
      :math:`\bar p_i = \frac1{M_i}\sum_m p^{(m)}_i` (McCallum & Nigam 1998):

      .. math:: D_i = \frac{1}{M_i} \sum_m \sum_c p^{(m)}_{ic} \log \frac{p^{(m)}_{ic}}{\bar p_{ic}}

      (the Jensen-Shannon divergence for two members). Zero when all members agree.
    * ``"vote"`` — vote entropy of the members' hard labels (Dagan & Engelson 1995),
      :math:`-\frac{1}{\log k}\sum_c \frac{V_{ic}}{M_i} \log \frac{V_{ic}}{M_i}`.

    Higher means more disagreement: label first. A member without a score for an item (NaN)
    is left out of that item; items with fewer than two members get NaN.

    Parameters
    ----------
    probas : array_like, shape (m, n) (positive-class probabilities per member) or (m, n, k).
    method : ``"kl"`` or ``"vote"``.

    Returns
    -------
    ndarray, shape (n,)

    References
    ----------
    McCallum, A., & Nigam, K. (1998). Employing EM and pool-based active learning for text
    classification. *ICML 1998*, 350-358.
    Dagan, I., & Engelson, S. P. (1995). Committee-based sampling for training probabilistic
    classifiers. *ICML 1995*, 150-157.

    Examples
    --------
    >>> committee_scores([[0.9, 0.5, 0.2], [0.9, 0.5, 0.8]]).round(3).tolist()
    [0.0, 0.0, 0.193]
    """
    if method not in ("kl", "vote"):
        raise LabelDataError("committee_scores", "method", f"unknown {method!r}; valid: kl, vote")
    p = _proba(probas, "committee_scores", members=True)
    present = ~np.isnan(p).any(axis=-1)  # (m, n)
    n_members = present.sum(axis=0)
    p0 = np.where(present[..., None], p, 0.0)
    k = p.shape[-1]
    with np.errstate(invalid="ignore", divide="ignore"):
        if method == "kl":
            mean = p0.sum(axis=0) / n_members[:, None]
            ratio = np.where(p0 > 0, p0 / mean[None], 1.0)
            kl = (p0 * np.log(ratio)).sum(axis=-1)
            score = np.where(present, kl, 0.0).sum(axis=0) / n_members
        else:
            votes = np.zeros((p.shape[1], k))
            winner = p0.argmax(axis=-1)  # (m, n)
            for member in range(p.shape[0]):
                np.add.at(
                    votes, (np.flatnonzero(present[member]), winner[member, present[member]]), 1.0
                )
            share = votes / n_members[:, None]
            score = np.where(share > 0, -share * np.log(share), 0.0).sum(axis=-1) / np.log(k)
    return np.where(n_members >= 2, np.maximum(score, 0.0), np.nan)


def k_center_greedy(
    x: npt.ArrayLike,
    budget: int,
    *,
    centers: npt.ArrayLike | None = None,
    seed: int | np.random.Generator | None = None,
) -> tuple[NDArray[np.intp], NDArray[np.float64]]:
    r"""Greedy k-center selection (core-set active learning).

    Repeatedly picks the point farthest from every centre chosen so far (and from the
    already-labelled ``centers``):

    .. math:: u_{t+1} = \arg\max_{i} \min_{j \in C_t} \lVert x_i - x_j \rVert_2

    a 2-approximation of the minimax facility location (Gonzalez 1985), used as the core-set
    acquisition of Sener & Savarese (2018). Each step updates one vector of squared
    distances with one matrix-vector product, :math:`\lVert x\rVert^2 - 2x\cdot c +
    \lVert c\rVert^2`, so the cost is :math:`O(n\,d\,(\text{budget} + |C_0|))` time and
    :math:`O(n)` extra memory, never an :math:`n \times n` matrix. Without ``centers`` the
    first pick is a seeded random point.

    Parameters
    ----------
    x : array_like, shape (n, d)
        Embeddings of the candidate pool (computed in float32).
    budget : number of picks (at most ``n``).
    centers : array_like, shape (m, d), optional
        Embeddings of the already-labelled images.
    seed : seed for the first pick when there are no ``centers``.

    Returns
    -------
    picks : ndarray of int, shape (min(budget, n),)
        Row indices of ``x`` in pick order.
    distances : ndarray, shape (min(budget, n),)
        Each pick's distance to its nearest centre at the time it was picked (NaN for a
        random first pick); non-increasing after the first.

    References
    ----------
    Gonzalez, T. F. (1985). Clustering to minimize the maximum intercluster distance.
    *Theoretical Computer Science*, 38, 293-306.
    Sener, O., & Savarese, S. (2018). Active learning for convolutional neural networks: a
    core-set approach. *ICLR 2018*.

    Examples
    --------
    >>> pts = [[0.0, 0.0], [0.1, 0.0], [5.0, 0.0], [10.0, 0.0]]
    >>> k_center_greedy(pts, 2, centers=[[0.0, 0.0]])[0].tolist()
    [3, 2]
    """
    arr = np.ascontiguousarray(np.asarray(x, dtype=np.float32))
    if arr.ndim != 2 or arr.shape[0] == 0:
        raise LabelDataError("k_center_greedy", "x", f"expected shape (n, d), got {arr.shape}")
    if not np.isfinite(arr).all():
        raise LabelDataError("k_center_greedy", "x", "embeddings must be finite")
    if isinstance(budget, bool) or not isinstance(budget, int | np.integer) or budget < 1:
        raise LabelDataError("k_center_greedy", "budget", f"must be an integer ≥ 1, got {budget!r}")
    n = arr.shape[0]
    sq = np.einsum("ij,ij->i", arr, arr)
    min_d = np.full(n, np.inf, dtype=np.float32)
    have_centers = False
    if centers is not None:
        c = np.ascontiguousarray(np.asarray(centers, dtype=np.float32))
        if c.size:
            if c.ndim != 2 or c.shape[1] != arr.shape[1]:
                raise LabelDataError(
                    "k_center_greedy",
                    "centers",
                    f"expected shape (m, {arr.shape[1]}), got {c.shape}",
                )
            csq = np.einsum("ij,ij->i", c, c)
            for start in range(0, n, _CENTER_CHUNK):
                block = arr[start : start + _CENTER_CHUNK]
                d = sq[start : start + _CENTER_CHUNK, None] - 2.0 * (block @ c.T) + csq[None, :]
                min_d[start : start + _CENTER_CHUNK] = d.min(axis=1)
            have_centers = True
    rng = np.random.default_rng(seed)
    k = min(int(budget), n)
    picks = np.empty(k, dtype=np.intp)
    dists = np.empty(k, dtype=np.float64)
    for step in range(k):
        if step == 0 and not have_centers:
            i, dist = int(rng.integers(n)), float("nan")
        else:
            i = int(np.argmax(min_d))
            dist = math.sqrt(max(float(min_d[i]), 0.0))
        picks[step], dists[step] = i, dist
        # einsum, not ``arr @ arr[i]``: OpenBLAS's threaded sgemv was 3-20x slower on
        # 10⁴-10⁵ × 64 float32 here (bench/rank.py); in-place steps avoid temporaries.
        d = np.einsum("ij,j->i", arr, arr[i])
        d *= -2.0
        d += sq
        d += sq[i]
        np.minimum(min_d, d, out=min_d)
        min_d[i] = -np.inf  # never picked twice, even among exact duplicates
    return picks, dists


# --------------------------------------------------------------------------------------------
# Active learning: the worklist
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Worklist:
    """A ranked list of unlabeled images for the labeling team (see :func:`build_worklist`).

    Attributes
    ----------
    dataset_id, task_id, task_name : the scope and the task whose labels are missing.
    model_version : the version whose scores rank (and predict the class mix).
    strategy, pool, budget, seed : the settings.
    negative_class : the class that is not a finding.
    n_pool : unlabeled images in the dataset's newest version.
    n_ranked : of those, how many the strategy could rank (with a score; with scores of two
        or more versions for ``committee``; with an embedding for ``diversity``).
    items : the top ``budget`` images, :data:`WORKLIST_COLUMNS`, by ``rank`` (1 first).
    class_mix : ``kind`` (``expected`` from the scores, ``predicted`` from the labels),
        ``class``, ``n``: the expected class mix of the worklist.
    """

    dataset_id: int
    task_id: int
    task_name: str
    model_version: VersionRef
    strategy: str
    pool: str
    budget: int
    seed: int | None
    negative_class: str
    n_pool: int
    n_ranked: int
    items: pd.DataFrame
    class_mix: pd.DataFrame

    def to_csv(self) -> str:
        """The worklist as CSV (one row per image, by rank), for the labeling team."""
        buf = io.StringIO()
        self.items.to_csv(buf, index=False)
        return buf.getvalue()

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready summary with the items."""
        return {
            "dataset_id": self.dataset_id,
            "task": {"id": self.task_id, "name": self.task_name},
            "model_version": self.model_version.as_dict(),
            "strategy": self.strategy,
            "pool": self.pool,
            "budget": self.budget,
            "seed": self.seed,
            "n_pool": self.n_pool,
            "n_ranked": self.n_ranked,
            "n_items": len(self.items),
            "class_mix": _records(self.class_mix),
            "items": _records(self.items),
        }


def _pool_condition(task_id: int, pool: str) -> Any:
    """SQL: the dataset item is unlabeled (see :func:`build_worklist`)."""
    if pool == "unannotated":
        labelled = exists().where(
            Annotation.task_id == task_id, Annotation.image_id == DatasetItem.image_id
        )
    else:
        labelled = exists().where(
            ReferenceLabel.task_id == task_id,
            ReferenceLabel.kind == "gold",
            ReferenceLabel.image_id == DatasetItem.image_id,
        )
    return ~labelled


def _pool_frame(
    session: Session, scope_vid: int, task_id: int, pool: str, version_id: int
) -> pd.DataFrame:
    """The unlabeled images with the version's newest score and label (NaN without):
    ``image_id, score, predicted_label``, by image id.

    The pool drives a left join to the version's newest prediction (:func:`_newest_prediction`,
    joined by primary key). Only the three columns the ranking needs travel;
    :func:`_item_details` adds the display columns for the few images that make the list.
    """
    stmt = (
        select(DatasetItem.image_id, Prediction.score, Prediction.label)
        .select_from(DatasetItem)
        .outerjoin(
            Prediction, Prediction.id == _newest_prediction(version_id, DatasetItem.image_id)
        )
        .where(DatasetItem.version_id == scope_vid, _pool_condition(task_id, pool))
        .order_by(DatasetItem.image_id)
    )
    df = _rows_frame(session.execute(stmt).all(), ["image_id", "score", "predicted_label"])
    df["image_id"] = df["image_id"].astype("int64")
    df["score"] = pd.to_numeric(df["score"], errors="coerce").astype("float64")
    df["predicted_label"] = df["predicted_label"].astype(object)
    return df


def _item_details(session: Session, scope_vid: int, image_ids: Sequence[int]) -> pd.DataFrame:
    """``image_id, sop_uid, source, split, uri`` of some dataset images (bound ``IN`` lists
    of at most 1000 ids)."""
    cols = ["image_id", "sop_uid", "source", "split", "uri"]
    ids = [int(i) for i in image_ids]
    if not ids:
        return pd.DataFrame(
            {c: pd.Series(dtype="int64" if c == "image_id" else object) for c in cols}
        )
    frames = []
    for start in range(0, len(ids), 1000):
        stmt = select(
            DatasetItem.image_id, Image.sop_uid, _source_expr(), DatasetItem.split, Image.uri
        ).select_from(DatasetItem)
        stmt = _with_source(stmt, DatasetItem.image_id).where(
            DatasetItem.version_id == scope_vid,
            DatasetItem.image_id.in_(ids[start : start + 1000]),
        )
        frames.append(_rows_frame(session.execute(stmt).all(), cols))
    return pd.concat(frames, ignore_index=True).astype({"image_id": "int64"})


def _committee_matrix(
    session: Session,
    scope_vid: int,
    task_id: int,
    pool: str,
    version: VersionRef,
    image_ids: NDArray[np.int64],
) -> NDArray[np.float64]:
    """Scores of every version of the model on the pool: shape (m versions, n images)."""
    members = list(
        session.scalars(
            select(ModelVersion.id)
            .where(
                ModelVersion.model_id
                == select(ModelVersion.model_id)
                .where(ModelVersion.id == version.id)
                .scalar_subquery()
            )
            .order_by(ModelVersion.id)
        )
    )
    if len(members) < 2:
        raise ModelInputError(
            "strategy",
            f"committee needs at least two versions of model {version.model!r}; it has "
            f"{len(members)}",
        )
    # One row per pool image, one newest-score column per version (see _pool_frame).
    stmt = (
        select(
            DatasetItem.image_id,
            *(_newest_prediction(m, DatasetItem.image_id, Prediction.score) for m in members),
        )
        .where(DatasetItem.version_id == scope_vid, _pool_condition(task_id, pool))
        .order_by(DatasetItem.image_id)
    )
    names = ["image_id", *(f"v{m}" for m in members)]
    frame = _rows_frame(session.execute(stmt).all(), names).set_index("image_id")
    scores = frame.apply(pd.to_numeric, errors="coerce").astype("float64")
    mat = scores.reindex(pd.Index(image_ids, dtype="int64")).to_numpy().T
    return np.ascontiguousarray(mat)


def _pool_embeddings(
    session: Session,
    dataset_id: int,
    scope_vid: int,
    task_id: int,
    pool: str,
    embeddings_dir: str | Path | None,
) -> tuple[dict[int, NDArray[np.float32]], dict[int, NDArray[np.float32]]]:
    """Embeddings of the pool and of the dataset's labelled images (the k-center seeds)."""
    from quality.imaging.report import load_embeddings, newest_scorer_version

    hint = "run `quality score` first"
    if embeddings_dir is None:
        raise ModelInputError(
            "strategy",
            f"diversity needs the CNN embeddings, and no embeddings folder is set: {hint}",
        )
    version = newest_scorer_version(session, dataset_id=dataset_id)
    if version is None:
        raise ModelInputError(
            "strategy", f"diversity needs the CNN embeddings; nothing is scored: {hint}"
        )
    in_pool = _pool_condition(task_id, pool)
    rows = session.execute(
        select(ImageQuality.image_id, ImageQuality.embedding_ref, in_pool)
        .join(
            DatasetItem,
            and_(
                DatasetItem.image_id == ImageQuality.image_id, DatasetItem.version_id == scope_vid
            ),
        )
        .where(ImageQuality.scorer_version == version, ImageQuality.embedding_ref.is_not(None))
    ).all()
    vectors = load_embeddings(embeddings_dir, {int(i): r for i, r, _ in rows})
    if not vectors:
        raise ModelInputError(
            "strategy",
            f"diversity needs the CNN embeddings; none could be read from {embeddings_dir}: {hint}",
        )
    flags = {int(i): bool(p) for i, _, p in rows}
    pool_vecs = {i: v for i, v in vectors.items() if flags.get(i)}
    labelled = {i: v for i, v in vectors.items() if not flags.get(i)}
    return pool_vecs, labelled


def _class_mix(items: pd.DataFrame, negative: str) -> pd.DataFrame:
    scored = items["score"].dropna()
    rows = [
        {"kind": "expected", "class": negative, "n": float((1.0 - scored).sum())},
        {"kind": "expected", "class": FINDING, "n": float(scored.sum())},
    ]
    predicted = items["predicted_label"].fillna("(no prediction)").value_counts().sort_index()
    rows += [{"kind": "predicted", "class": str(c), "n": float(n)} for c, n in predicted.items()]
    return pd.DataFrame(rows, columns=["kind", "class", "n"])


WORKLIST_STRATEGY: Final = "entropy"
"""The Labeling worklist page's default strategy."""
WORKLIST_BUDGET: Final = 50
"""The Labeling worklist page's default budget."""
WORKLIST_SEED: Final = 0
"""The Labeling worklist page's default seed."""


def default_version(versions: pd.DataFrame) -> int:
    """The version a worklist ranks by default: the newest production one, else the first
    row of :func:`list_model_versions` (which must not be empty)."""
    prod = versions.loc[versions["status"] == "production", "version_id"]
    return int(prod.iloc[-1]) if len(prod) else int(versions["version_id"].iloc[0])


def default_task(model_task: Any, task_ids: Sequence[int]) -> int:
    """The task of a worklist by default: the model's, when the dataset has it, else the
    first (``task_ids`` must not be empty)."""
    ids = [int(t) for t in task_ids]
    return int(model_task) if model_task is not None and model_task in ids else ids[0]


def default_pool(sizes: Mapping[str, int]) -> str:
    """``unannotated`` while any image lacks an annotation, else ``no_gold``."""
    return "unannotated" if sizes["unannotated"] else "no_gold"


def worklist_defaults(
    session: Session, dataset_id: int
) -> tuple[int, str, int, int, str, int] | None:
    """The Labeling worklist page's default settings for a dataset, or None when it has no
    model version or no task: ``(version_id, strategy, budget, task_id, pool, seed)``, the
    order of :func:`build_worklist`'s arguments. The page starts there and
    :mod:`quality.db.aggregates` ranks it ahead."""
    from quality.db.queries import list_tasks

    versions = list_model_versions(session, dataset_id)
    tasks = list_tasks(session, dataset_id)
    if versions.empty or tasks.empty:
        return None
    version_id = default_version(versions)
    model_task = versions.loc[versions["version_id"] == version_id, "task_id"].iloc[0]
    task_id = default_task(None if pd.isna(model_task) else int(model_task), tasks["id"])
    pool = default_pool(pool_sizes(session, dataset_id, task_id))
    return version_id, WORKLIST_STRATEGY, WORKLIST_BUDGET, task_id, pool, WORKLIST_SEED


@_db_errors
def pool_sizes(session: Session, dataset_id: int, task_id: int) -> dict[str, int]:
    """How many images of the dataset's newest version each pool holds (see
    :func:`build_worklist`): ``{"unannotated": n, "no_gold": n}``, counted in SQL."""
    scope_vid = _scope_version(session, dataset_id)
    counts = [
        select(func.count(DatasetItem.image_id))
        .where(DatasetItem.version_id == scope_vid, _pool_condition(task_id, pool))
        .scalar_subquery()
        for pool in POOLS
    ]
    row = session.execute(select(*counts)).one()
    return {pool: int(n or 0) for pool, n in zip(POOLS, row, strict=True)}


@_db_errors
def build_worklist(
    session: Session,
    dataset_id: int,
    model_version_id: int,
    *,
    strategy: Strategy = "entropy",
    budget: int = 100,
    task_id: int | None = None,
    pool: Pool = "unannotated",
    negative_class: str = "normal",
    embeddings_dir: str | Path | None = None,
    seed: int | None = 0,
) -> Worklist:
    r"""Rank a dataset's unlabeled images for labeling: the worklist of active learning.

    Unlabeled
    ---------
    The pool is the set of images of the dataset's newest version that

    * ``pool="unannotated"``: have **no annotation row at all** in the task (no annotator has
      labelled them yet, whatever the label), or
    * ``pool="no_gold"``: have **no gold reference label** in the task (annotated or not, the
      expert panel has not adjudicated them: the worklist of the expert team).

    Strategies (higher ``priority`` is labelled first)
    -------------------------------------------------
    * ``entropy``: :func:`entropy_scores` of the version's score; ``margin``: one minus
      :func:`margin_scores` (for a binary score both give the same order);
    * ``committee``: :func:`committee_scores` (mean KL to the consensus) over the newest
      scores of *every* version of the model, on the images at least two versions scored;
    * ``diversity``: :func:`k_center_greedy` on the CNN embeddings ``quality score`` wrote,
      seeded with the embeddings of the dataset's already-labelled images; the priority is the
      distance to the nearest centre when picked;
    * ``random``: a seeded random order, the baseline of the comparison.

    Ties are broken by a seeded random key, so the same seed gives the same list. The
    uncertainty strategies leave out pool images the version has no score for.

    Parameters
    ----------
    session : an open session.
    dataset_id : the dataset.
    model_version_id : the version whose scores rank (for ``committee``: whose model).
    strategy : see above.
    budget : images in the worklist (≥ 1).
    task_id : the labeling task (default: the model's task).
    pool : ``"unannotated"`` or ``"no_gold"``.
    negative_class : the class that is not a finding (for the class mix).
    embeddings_dir : the folder ``quality score`` wrote embeddings to (``diversity`` only).
    seed : seed of ``np.random.default_rng``.

    Returns
    -------
    Worklist

    Raises
    ------
    ModelInputError
        Unknown version, task, strategy or pool; a bad budget; a dataset without version;
        ``committee`` with one version; ``diversity`` without readable embeddings (the
        message says to run ``quality score`` first).
    """
    if strategy not in STRATEGIES:
        raise ModelInputError(
            "strategy", f"unknown strategy {strategy!r}; valid: {', '.join(STRATEGIES)}"
        )
    if pool not in POOLS:
        raise ModelInputError("pool", f"unknown pool {pool!r}; valid: {', '.join(POOLS)}")
    if isinstance(budget, bool) or not isinstance(budget, int | np.integer) or budget < 1:
        raise ModelInputError("budget", f"must be an integer ≥ 1, got {budget!r}")
    refs = _version_refs(session, [model_version_id])
    if int(model_version_id) not in refs:
        raise ModelInputError(
            "model version",
            f"id {model_version_id} does not exist; known: {_known_versions(session)}",
        )
    version = refs[int(model_version_id)]
    task_id = task_id if task_id is not None else version.task_id
    if task_id is None:
        raise ModelInputError("task", f"model {version.model!r} has no task: pass a task")
    task_name, _ = _task(session, int(task_id))
    scope_vid = _scope_version(session, dataset_id)
    frame = _pool_frame(session, scope_vid, int(task_id), pool, version.id)
    n_pool = len(frame)
    rng = np.random.default_rng(seed)

    distance = None
    if strategy in ("entropy", "margin"):
        frame = frame[frame["score"].notna()].reset_index(drop=True)
        priority = (
            entropy_scores(frame["score"].to_numpy())
            if strategy == "entropy"
            else 1.0 - margin_scores(frame["score"].to_numpy())
        )
    elif strategy == "committee":
        mat = _committee_matrix(
            session, scope_vid, int(task_id), pool, version, frame["image_id"].to_numpy()
        )
        priority = committee_scores(mat) if frame.size else np.empty(0)
        keep = ~np.isnan(priority)
        frame, priority = frame[keep].reset_index(drop=True), priority[keep]
    elif strategy == "diversity":
        pool_vecs, labelled = _pool_embeddings(
            session, dataset_id, scope_vid, int(task_id), pool, embeddings_dir
        )
        frame = frame[frame["image_id"].isin(pool_vecs)].reset_index(drop=True)
        priority = np.empty(0)
        if len(frame):
            x = np.stack([pool_vecs[int(i)] for i in frame["image_id"]])
            centres = np.stack(list(labelled.values())) if labelled else None
            picks, distance = k_center_greedy(x, int(budget), centers=centres, seed=rng)
    else:
        priority = rng.random(len(frame))

    n_ranked = len(frame)
    if strategy == "diversity":
        order = picks if len(frame) else np.empty(0, dtype=np.intp)
        items = frame.iloc[order].copy()
        items["priority"] = distance if distance is not None else []
    else:
        tiebreak = rng.random(n_ranked)
        order = np.lexsort((tiebreak, -priority))[: int(budget)]
        items = frame.iloc[order].copy()
        items["priority"] = priority[order]
    scores = items["score"].to_numpy(np.float64)
    with np.errstate(invalid="ignore"):
        proba = np.stack([1.0 - scores, scores], axis=-1)
        items["entropy"] = _entropy(proba) if len(items) else []
        top2 = np.sort(proba, axis=-1)
        items["margin"] = top2[:, 1] - top2[:, 0] if len(items) else []
    items["rank"] = np.arange(1, len(items) + 1)
    details = _item_details(session, scope_vid, items["image_id"].tolist())
    items = items.merge(details, on="image_id", how="left", validate="one_to_one")
    items = items[WORKLIST_COLUMNS].reset_index(drop=True)
    return Worklist(
        dataset_id=int(dataset_id),
        task_id=int(task_id),
        task_name=task_name,
        model_version=version,
        strategy=strategy,
        pool=pool,
        budget=int(budget),
        seed=seed,
        negative_class=negative_class,
        n_pool=n_pool,
        n_ranked=n_ranked,
        items=items,
        class_mix=_class_mix(items, negative_class),
    )


def rank_unlabeled(
    session: Session,
    dataset_id: int,
    model_version_id: int,
    *,
    strategy: Strategy = "entropy",
    budget: int = 100,
    seed: int | None = 0,
    **kwargs: Any,
) -> pd.DataFrame:
    """The ranked items of :func:`build_worklist` (:data:`WORKLIST_COLUMNS`), nothing else.

    Keyword arguments go to :func:`build_worklist` (``task_id``, ``pool``,
    ``embeddings_dir``, ``negative_class``).
    """
    return build_worklist(
        session, dataset_id, model_version_id, strategy=strategy, budget=budget, seed=seed, **kwargs
    ).items
