"""Agreement summary of one labeling task: how much do the annotators agree, and where not.

Which function for which situation
----------------------------------
* :func:`build_agreement_summary`: everything the Agreement page and ``quality agreement``
  show for one task: the pairwise Cohen's kappa matrix, per-class specific agreement,
  Krippendorff's alpha with a bootstrap interval, Fleiss' kappa, percent agreement and the
  items with the most disagreement.
* :func:`prepare_task`: the shared first step of this module and of
  :func:`quality.doctors.build_doctor_report`: load a task's labels from the DB, clean them
  and fit the Dawid-Skene consensus. Use it when you need the cleaned long labels.

Label cleaning (:func:`prepare_task`)
-------------------------------------
* One label per (item, annotator): the newest annotation wins.
* Box and mask tasks label *regions*; their image-level label is the label of the
  annotator's newest region, and an annotation without a region (``bbox`` NULL; in a mask
  task, ``bbox`` and ``mask`` both NULL) means "no finding", coded as :data:`NO_FINDING`
  (``"normal"``), which is prepended to the task's classes when it is not one of them.
* Labels outside the (so extended) classes, e.g. a typo such as ``nodul``, are dropped and
  counted in :attr:`PreparedTask.n_dropped`; a report is about people, and one bad row must
  not hide the team's table. ``quality check`` is where such rows fail.
* The consensus is :class:`~quality.agreement.consensus.DawidSkene` fitted on all
  annotators (doctors and experts), with the ``gold`` and ``exam`` reference labels of the
  task clamped as known truth (gold wins where both exist).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from numpy.typing import NDArray
from sqlalchemy.orm import Session

from quality.agreement.categorical import (
    fleiss_kappa,
    krippendorff_alpha_nominal_ci,
    percent_agreement,
)
from quality.agreement.consensus import DawidSkene
from quality.db import queries
from quality.db.schema import LabelingTask
from quality.errors import LabelDataError

__all__ = [
    "NO_FINDING",
    "AgreementSummary",
    "PreparedTask",
    "TaskInfo",
    "build_agreement_summary",
    "jsonable",
    "prepare_task",
]

NO_FINDING = "normal"
"""Image-level label of a box or mask annotation without a region."""


@dataclass
class TaskInfo:
    """A labeling task.

    Attributes
    ----------
    id, name : the task's id and name (unique within its dataset).
    kind : ``classification``, ``bbox`` or ``mask``.
    classes : the task's classes, in the task's order.
    dataset_id : the dataset the task belongs to.
    """

    id: int
    name: str
    kind: str
    classes: list[str]
    dataset_id: int


@dataclass
class PreparedTask:
    """A task's cleaned labels and their Dawid-Skene consensus (see module docs).

    Attributes
    ----------
    task : the task.
    classes : the classes of the analysis: the task's, with :data:`NO_FINDING` first for box
        and mask tasks whose classes lack it.
    rows : every valid annotation row (all regions): the :func:`~quality.db.queries.task_labels`
        columns, with the image-level ``label`` (and ``has_mask`` for mask tasks).
    labels : one row per (item, annotator): ``item_id, annotator_id, label, bbox,
        created_at, duration_s, annotator_kind``.
    gold, exam : ``item_id, label, bbox`` reference answers on labelled items.
    model : the fitted Dawid-Skene model.
    consensus : ``item_id, label, confidence`` (the largest posterior).
    n_dropped : annotation rows left out (label missing or outside ``classes``).
    """

    task: TaskInfo
    classes: list[str]
    rows: pd.DataFrame
    labels: pd.DataFrame
    gold: pd.DataFrame
    exam: pd.DataFrame
    model: DawidSkene
    consensus: pd.DataFrame
    n_dropped: int = 0
    annotator_kinds: dict[str, str] = field(default_factory=dict)


def _task_info(session: Session, task_id: int) -> TaskInfo:
    task = session.get(LabelingTask, int(task_id))
    if task is None:
        tasks = queries.list_tasks(session)
        valid = ", ".join(f"{i} ({n})" for i, n in zip(tasks["id"], tasks["name"], strict=True))
        raise LabelDataError(
            "labeling_tasks", "task_id", f"no task {task_id}; valid: {valid or 'none'}"
        )
    return TaskInfo(
        id=task.id,
        name=task.name,
        kind=task.kind,
        classes=[str(c) for c in (task.classes or [])],
        dataset_id=task.dataset_id,
    )


def _has_box(values: pd.Series) -> NDArray[np.bool_]:
    return values.map(lambda b: isinstance(b, list | tuple) and len(b) == 4).to_numpy(bool)


def _has_region(frame: pd.DataFrame) -> NDArray[np.bool_]:
    """A box, or (where the frame says so, in mask tasks) a mask."""
    region = _has_box(frame["bbox"])
    if "has_mask" in frame:
        region = region | frame["has_mask"].to_numpy(bool)
    return region


def _image_level(frame: pd.DataFrame, kind: str) -> pd.DataFrame:
    """Code a region-less box/mask annotation as :data:`NO_FINDING` (see module docs)."""
    if kind == "classification" or frame.empty:
        return frame
    out = frame.copy()
    out.loc[~_has_region(out), "label"] = NO_FINDING
    return out


def prepare_task(session: Session, task_id: int, *, n_iter: int = 100) -> PreparedTask:
    """Load, clean and reach consensus on one task's labels (see module docs).

    Parameters
    ----------
    session : an open session.
    task_id : the labeling task.
    n_iter : most Dawid-Skene EM iterations.

    Returns
    -------
    PreparedTask

    Raises
    ------
    LabelDataError
        Unknown task (the message lists the valid ones), no valid labels, or fewer than two
        annotators.
    """
    task = _task_info(session, task_id)
    classes = list(task.classes)
    if task.kind != "classification" and NO_FINDING not in classes:
        classes = [NO_FINDING, *classes]
    masks = task.kind == "mask"
    raw = _image_level(queries.task_labels(session, task.id, has_mask=masks), task.kind)
    valid = raw["label"].isin(classes).to_numpy()
    rows = raw.loc[valid].reset_index(drop=True)
    if rows.empty:
        raise LabelDataError(f"task {task.name!r}", "label", "no annotation with a valid label")
    # Newest first within (item, annotator); a region row beats a region-less one.
    ordered = rows.assign(_box=_has_region(rows)).sort_values(
        ["item_id", "annotator_id", "_box", "created_at"], kind="stable"
    )
    labels = (
        ordered.drop_duplicates(["item_id", "annotator_id"], keep="last")
        .drop(columns="_box")
        .sort_values(["item_id", "annotator_id"], ignore_index=True)
    )

    refs = {}
    for kind in queries.REFERENCE_KINDS:
        ref = _image_level(
            queries.reference_labels_frame(session, task.id, kind, has_mask=masks), task.kind
        )
        ref = ref.loc[ref["label"].isin(classes) & ref["item_id"].isin(labels["item_id"])]
        refs[kind] = ref.drop_duplicates("item_id", keep="last").reset_index(drop=True)
    truth = pd.concat([refs["exam"], refs["gold"]]).drop_duplicates("item_id", keep="last")

    model = DawidSkene(n_iter=n_iter).fit(
        labels[["item_id", "annotator_id", "label"]],
        gold=truth.set_index("item_id")["label"] if len(truth) else None,
        classes=classes,
    )
    consensus = pd.DataFrame(
        {
            "item_id": model.labels_.index.to_numpy(),
            "label": model.labels_.to_numpy(),
            "confidence": model.probas_.to_numpy().max(axis=1),
        }
    )
    kinds = labels.drop_duplicates("annotator_id").set_index("annotator_id")["annotator_kind"]
    return PreparedTask(
        task=task,
        classes=classes,
        rows=rows,
        labels=labels,
        gold=refs["gold"],
        exam=refs["exam"],
        model=model,
        consensus=consensus,
        n_dropped=int((~valid).sum()),
        annotator_kinds={str(k): str(v) for k, v in kinds.items()},
    )


# --------------------------------------------------------------------------- summary


@dataclass
class AgreementSummary:
    """Agreement statistics of one task (see :func:`build_agreement_summary`).

    Attributes
    ----------
    task : the task.
    pairwise_kappa : DataFrame, shape (n_annotators, n_annotators)
        Cohen's kappa of each pair of annotators on the items both labelled; NaN where they
        share fewer than ``min_shared`` items or kappa is undefined. Symmetric; the diagonal
        is 1.0 by convention (an annotator agrees with themself).
    pairwise_n : DataFrame, shape (n_annotators, n_annotators)
        Items labelled by both; the diagonal is the items each one labelled.
    per_class : DataFrame ``cls, specific_agreement, kappa_one_vs_rest, n``
        One row per class; ``n`` is the number of labels of that class.
    alpha : dict ``estimate, low, high, level, n_items, n_annotators``
        Krippendorff's alpha (nominal) with its percentile bootstrap interval over items.
    fleiss : float or None
        Fleiss' kappa on the items that have the modal number of labels (None when that
        number is below 2).
    percent_agreement : float
        Mean share of agreeing pairs per item (items labelled at least twice).
    worst_items : DataFrame ``item_id, uri, sop_uid, consensus, agreement, n_labels, labels,
        boxes``
        The items labelled at least twice with the least agreement with the consensus,
        worst first (ties: least confident consensus first).
    n_dropped : annotation rows left out by the cleaning (see module docs).
    """

    task: TaskInfo
    pairwise_kappa: pd.DataFrame
    pairwise_n: pd.DataFrame
    per_class: pd.DataFrame
    alpha: dict[str, Any]
    fleiss: float | None
    percent_agreement: float
    worst_items: pd.DataFrame
    n_dropped: int = 0

    def as_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict (the ``quality agreement --json`` payload)."""
        return jsonable(
            {
                "task": asdict(self.task),
                "alpha": self.alpha,
                "fleiss": self.fleiss,
                "percent_agreement": self.percent_agreement,
                "pairwise_kappa": _matrix(self.pairwise_kappa),
                "pairwise_n": _matrix(self.pairwise_n),
                "per_class": self.per_class.to_dict("records"),
                "worst_items": self.worst_items.to_dict("records"),
                "n_dropped": self.n_dropped,
            }
        )


def jsonable(value: Any) -> Any:
    """``value`` with NaN → None, numpy scalars → Python, dates → ISO strings (recursive)."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple | np.ndarray):
        return [jsonable(v) for v in value]
    if isinstance(value, pd.DataFrame):
        return [jsonable(r) for r in value.to_dict("records")]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float):
        return None if math.isnan(value) or math.isinf(value) else value
    if value is None or value is pd.NaT or value is pd.NA:
        return None
    if hasattr(value, "isoformat"):
        return value.isoformat()
    return value


def _matrix(df: pd.DataFrame) -> dict[str, Any]:
    return {
        "index": [str(i) for i in df.index],
        "columns": [str(c) for c in df.columns],
        "data": df.to_numpy().tolist(),
    }


def _one_hot(prep: PreparedTask) -> tuple[pd.Index, pd.Index, NDArray[np.float64]]:
    """``items × annotators × classes`` indicator array of the cleaned labels."""
    lab = prep.labels
    item_codes, items = pd.factorize(lab["item_id"], sort=True)
    ann_codes, anns = pd.factorize(lab["annotator_id"], sort=True)
    cls_codes = pd.Index(prep.classes).get_indexer(lab["label"])
    x = np.zeros((len(items), len(anns), len(prep.classes)))
    x[item_codes, ann_codes, cls_codes] = 1.0
    return pd.Index(items, name="item_id"), pd.Index(anns, name="annotator_id"), x


def _kappa_from_confusion(conf: NDArray[np.float64]) -> NDArray[np.float64]:
    r"""Cohen's kappa of confusion tables ``(..., k, k)``: :math:`(p_o - p_e)/(1 - p_e)`."""
    n = conf.sum(axis=(-2, -1))
    with np.errstate(divide="ignore", invalid="ignore"):
        po = np.trace(conf, axis1=-2, axis2=-1) / n
        pe = (conf.sum(axis=-1) * conf.sum(axis=-2)).sum(axis=-1) / n**2
        kappa = (po - pe) / (1.0 - pe)
    return np.where((n > 0) & (pe < 1.0 - 1e-12), kappa, np.nan)


def _pairwise(
    x: NDArray[np.float64], anns: pd.Index, min_shared: int
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Cohen's kappa for every pair at once: ``O[a, b] = Σ_i x[i, a] ⊗ x[i, b]``."""
    present = x.sum(axis=2)
    shared = present.T @ present
    conf = np.einsum("iac,ibl->abcl", x, x, optimize=True)
    kappa = _kappa_from_confusion(conf)
    kappa[shared < min_shared] = np.nan
    np.fill_diagonal(kappa, 1.0)
    codes = pd.Index([str(a) for a in anns], name="annotator")
    return (
        pd.DataFrame(kappa, index=codes, columns=codes),
        pd.DataFrame(shared.astype(np.int64), index=codes, columns=codes),
    )


def _per_class(counts: NDArray[np.float64], classes: list[str]) -> pd.DataFrame:
    r"""Specific (positive) agreement and one-vs-rest Fleiss kappa per class.

    With :math:`r_{ic}` the labels of class *c* on item *i* and :math:`r_i = \sum_c r_{ic}`,
    over items with :math:`r_i \ge 2`:

    .. math:: p_s(c) = \frac{\sum_i r_{ic}(r_{ic} - 1)}{\sum_i r_{ic}(r_i - 1)}

    the share of the rater pairs involving a *c* label in which the other rater also said
    *c* (Hripcsak & Heitjan 2002; Uebersax 1982 for many raters).
    """
    rows = counts.sum(axis=1)
    keep = rows >= 2
    c, r = counts[keep], rows[keep][:, None]
    with np.errstate(divide="ignore", invalid="ignore"):
        specific = (c * (c - 1)).sum(axis=0) / (c * (r - 1)).sum(axis=0)
    out = []
    for j, cls in enumerate(classes):  # a loop over classes, not items
        table = np.stack([c[:, j], r[:, 0] - c[:, j]], axis=1)
        try:
            kappa = fleiss_kappa(table, kind="counts") if len(table) else float("nan")
        except LabelDataError:
            kappa = float("nan")
        out.append(
            {
                "cls": cls,
                "specific_agreement": float(specific[j]),
                "kappa_one_vs_rest": float(kappa),
                "n": int(counts[:, j].sum()),
            }
        )
    return pd.DataFrame(out, columns=["cls", "specific_agreement", "kappa_one_vs_rest", "n"])


def _alpha(
    prep: PreparedTask, n_resamples: int, random_state: int, confidence: float = 0.95
) -> dict[str, Any]:
    # The annotators × items matrix of class codes (NaN: no label), made with numpy: a pivot
    # of the string labels builds one pandas column per item (minutes at 10^5 items).
    lab = prep.labels
    rows, annotators = pd.factorize(lab["annotator_id"], sort=True)
    cols, items = pd.factorize(lab["item_id"], sort=True)
    if np.unique(rows.astype(np.int64) * max(len(items), 1) + cols).size < len(lab):
        raise ValueError("the cleaned labels hold two labels of one annotator on one item")
    rel = np.full((len(annotators), len(items)), np.nan)
    labels = lab["label"].to_numpy(dtype=object)
    valid = lab["label"].notna().to_numpy()
    rel[rows[valid], cols[valid]] = pd.Index(prep.classes).get_indexer(labels[valid])
    mask = ~np.isnan(rel)
    n_items = int((mask.sum(axis=0) >= 2).sum())
    base = {"level": "nominal", "n_items": n_items, "n_annotators": len(annotators)}
    try:
        ci = krippendorff_alpha_nominal_ci(
            rel,
            n_resamples=n_resamples,
            confidence=confidence,
            random_state=random_state,
        )
    except LabelDataError:
        return {"estimate": float("nan"), "low": float("nan"), "high": float("nan"), **base}
    return {"estimate": ci.estimate, "low": ci.low, "high": ci.high, **base}


def _fleiss_modal(counts: NDArray[np.float64]) -> float | None:
    rows = counts.sum(axis=1).astype(np.int64)
    rows2 = rows[rows >= 2]
    if rows2.size == 0:
        return None
    modal = int(np.bincount(rows2).argmax())
    try:
        value = fleiss_kappa(counts[rows == modal], kind="counts")
    except LabelDataError:
        return None
    return None if math.isnan(value) else float(value)


def disagreement_table(prep: PreparedTask) -> pd.DataFrame:
    """Every labelled item with its consensus and how far the annotators agree with it.

    Returns
    -------
    DataFrame ``item_id, consensus, confidence, n_labels, agreement, labels``: ``agreement``
    is the share of the item's labels equal to the consensus, ``labels`` a dict
    ``code → label``. Sorted worst first: lowest agreement, then lowest confidence, then most
    labels, then ``item_id``.
    """
    lab = prep.labels.merge(
        prep.consensus.rename(columns={"label": "consensus"}), on="item_id", how="left"
    )
    lab["agree"] = (lab["label"] == lab["consensus"]).astype(np.float64)
    stats = lab.groupby("item_id", sort=True).agg(
        consensus=("consensus", "first"),
        confidence=("confidence", "first"),
        n_labels=("label", "size"),
        agreement=("agree", "mean"),
    )
    # code → label per item, codes in sorted order (as the columns of a pivot would be),
    # from the long labels: a pivot of string labels is one pandas column per annotator
    # but its records are items × annotators Python objects.
    long = prep.labels[["item_id", "annotator_id", "label"]].sort_values(
        ["item_id", "annotator_id"], kind="stable"
    )
    by_item: dict[Any, dict[Any, str]] = {}
    for item, code, label in zip(
        long["item_id"].to_numpy(),
        long["annotator_id"].to_numpy(dtype=object),
        long["label"].to_numpy(dtype=object),
        strict=True,
    ):
        if isinstance(label, str):
            by_item.setdefault(item, {})[code] = label
    stats["labels"] = pd.Series([by_item.get(i, {}) for i in stats.index], index=stats.index)
    out = stats.reset_index().sort_values(
        ["agreement", "confidence", "n_labels", "item_id"],
        ascending=[True, True, False, True],
        ignore_index=True,
    )
    out["n_labels"] = out["n_labels"].astype(np.int64)
    return out


def build_agreement_summary(
    session: Session,
    task_id: int,
    *,
    n_resamples: int = 200,
    random_state: int = 0,
    min_shared: int = 5,
    top_n: int = 24,
    prep: PreparedTask | None = None,
) -> AgreementSummary:
    r"""Agreement statistics of one labeling task.

    * **Pairwise Cohen's kappa** (Cohen 1960), for every pair of annotators on the items
      both labelled: :math:`\kappa = (p_o - p_e)/(1 - p_e)`, with :math:`p_o` the observed
      agreement and :math:`p_e = \sum_c p_{a,c}\,p_{b,c}` the agreement expected from the two
      annotators' marginals. All pairs are computed at once from the
      ``items × annotators × classes`` indicator array (one ``einsum``).
    * **Specific agreement** per class (Hripcsak & Heitjan 2002), and a one-vs-rest Fleiss
      kappa per class (the class against all others).
    * **Krippendorff's alpha**, nominal (:func:`~quality.agreement.categorical.krippendorff_alpha`),
      with a percentile bootstrap interval that resamples items (Efron & Tibshirani 1993;
      :func:`~quality.agreement.categorical.bootstrap_ci`).
    * **Fleiss' kappa** (Fleiss 1971) on the items with the modal number of labels.
    * **Percent agreement**: the mean share of agreeing pairs per item.

    Parameters
    ----------
    session : an open session.
    task_id : the labeling task.
    n_resamples : bootstrap resamples for the alpha interval.
    random_state : seed of the bootstrap.
    min_shared : least number of shared items for a pairwise kappa (NaN below).
    top_n : number of worst items to return.
    prep : the task already prepared by :func:`prepare_task` in this transaction (shared with
        the doctor report by the refresh of materialised results); ignored when of another task.

    Returns
    -------
    AgreementSummary

    Raises
    ------
    LabelDataError
        Unknown task, no valid labels, or fewer than two annotators.
    """
    if prep is None or prep.task.id != task_id:
        prep = prepare_task(session, task_id)
    _, anns, x = _one_hot(prep)
    kappa, shared = _pairwise(x, anns, min_shared)
    counts = x.sum(axis=1)
    worst = disagreement_table(prep)
    worst = worst.loc[worst["n_labels"] >= 2].head(top_n).reset_index(drop=True)
    boxes = prep.labels.loc[prep.labels["item_id"].isin(worst["item_id"])]
    box_dicts = (
        boxes.assign(bbox=boxes["bbox"].where(_has_box(boxes["bbox"]), None))
        .groupby("item_id")[["annotator_id", "bbox"]]
        .apply(lambda g: dict(zip(g["annotator_id"], g["bbox"], strict=True)))
    )  # one dict per shown item (≤ top_n), not per item of the task
    worst["boxes"] = worst["item_id"].map(box_dicts)
    refs = queries.image_refs(session, worst["item_id"].tolist())
    worst = worst.merge(
        refs[["image_id", "uri", "sop_uid"]].rename(columns={"image_id": "item_id"}),
        on="item_id",
        how="left",
    )
    worst = worst[
        ["item_id", "uri", "sop_uid", "consensus", "agreement", "n_labels", "labels", "boxes"]
    ]
    return AgreementSummary(
        task=prep.task,
        pairwise_kappa=kappa,
        pairwise_n=shared,
        per_class=_per_class(counts, prep.classes),
        alpha=_alpha(prep, n_resamples, random_state),
        fleiss=_fleiss_modal(counts),
        percent_agreement=float(
            percent_agreement(prep.labels[["item_id", "annotator_id", "label"]])
        ),
        worst_items=worst,
        n_dropped=prep.n_dropped,
    )
