"""Simulated doctors, experts and models for the demo's annotation DB.

Annotator model
---------------
Each annotator has a 3×3 confusion matrix :math:`C` over ``(normal, nodule, opacity)``
(rows: true class, columns: given label) built from

- specificity :math:`sp = C_{normal,normal}`; the false-positive mass :math:`1 - sp` is split
  between nodule and opacity by ``fp_opacity_share``;
- sensitivity :math:`se = 1 - C_{k,normal}` for ``k`` in nodule and opacity; of the detected
  mass a share ``class_accuracy`` gets the right class and the rest the other finding class.

Labels are drawn *by exact counts*: for the ``n_k`` items of true class ``k`` that a doctor
labels, the counts of each given label are ``n_k C_k`` rounded by largest remainder and
assigned in a random order. A doctor's realised sensitivity and specificity therefore equal
the nominal ones to within ``1/n_k``, which keeps the truth file honest for small demos.
Durations are log-normal around a per-doctor median (×1.6 for boxes, ×1.3 on positives); box
corners get Gaussian jitter proportional to the box size; false-positive boxes fall in a lung.

Model model
-----------
A prediction's positive-class logit is :math:`\\ell = s\\,(2y - 1) + \\varepsilon`,
:math:`\\varepsilon \\sim N(0, 1)`, where :math:`y` says whether the image has a finding and
:math:`s` is the version's separation (v1: 0.9; v2: 1.2, but 0.5 at the regression source).
After the drift date at the drifting source the logit shifts by ``DRIFT["model_logit_shift"]``.
Non-medical images get a confident positive (:math:`\\ell = 2.5`). ``score = sigmoid(ℓ)`` is
the probability of a finding; the label is ``normal`` below 0.5, else the true class with
probability 0.85 for true positives and a random finding class otherwise.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from quality.demo.plan import CLASSES, DRIFT, MISSING_PREDICTIONS, START, DemoPlan, ImageSpec

__all__ = [
    "MODEL_VERSIONS",
    "AnnotatorProfile",
    "annotator_profiles",
    "confusion_matrix",
    "simulate_annotations",
    "simulate_predictions",
]


@dataclass(frozen=True)
class AnnotatorProfile:
    """A simulated annotator and the parameters that generate its labels."""

    code: str
    kind: str
    sensitivity: float
    specificity: float
    class_accuracy: float
    fp_opacity_share: float
    median_duration_s: float
    box_jitter: float
    experience_years: int
    careless: bool = False
    biased: bool = False


# (sensitivity, specificity) of ten ordinary doctors, the biased one and the careless one.
_DOCTOR_SKILLS = [
    (0.95, 0.96), (0.93, 0.95), (0.91, 0.94), (0.89, 0.93), (0.87, 0.92),
    (0.85, 0.91), (0.82, 0.90), (0.79, 0.89), (0.76, 0.88), (0.73, 0.87),
]  # fmt: skip

MODEL_VERSIONS: tuple[dict[str, Any], ...] = (
    {"version": "v1", "status": "production", "separation": 0.9, "latency_ms_median": 85.0,
     "regression": None},
    {"version": "v2", "status": "shadow", "separation": 1.2, "latency_ms_median": 140.0,
     "regression": {"source": "west_center", "separation": 0.5}},
)  # fmt: skip


def annotator_profiles(rng: np.random.Generator) -> list[AnnotatorProfile]:
    """Twelve doctors (one careless, one biased; codes shuffled by the seed) and two experts."""
    profiles = []
    for se, sp in _DOCTOR_SKILLS:
        profiles.append({"sensitivity": se, "specificity": sp, "class_accuracy": 0.92,
                             "fp_opacity_share": 0.5,
                             "median_duration_s": float(np.round(rng.uniform(16, 40), 1)),
                             "box_jitter": 0.10, "careless": False, "biased": False})  # fmt: skip
    # Over-calls findings, and opacity in particular.
    profiles.append({"sensitivity": 0.90, "specificity": 0.68, "class_accuracy": 0.65,
                         "fp_opacity_share": 0.85, "median_duration_s": 24.0, "box_jitter": 0.12,
                         "careless": False, "biased": True})  # fmt: skip
    # Clicks through: fast, and barely better than chance.
    profiles.append({"sensitivity": 0.55, "specificity": 0.60, "class_accuracy": 0.55,
                         "fp_opacity_share": 0.5, "median_duration_s": 3.5, "box_jitter": 0.35,
                         "careless": True, "biased": False})  # fmt: skip
    order = rng.permutation(len(profiles))
    out = []
    for code_no, k in enumerate(order, start=1):
        p = profiles[int(k)]
        exp = 1 if p["careless"] else int(rng.integers(3, 26))
        out.append(AnnotatorProfile(code=f"D{code_no:02d}", kind="doctor",
                                    experience_years=exp, **p))  # fmt: skip
    for k in (1, 2):
        out.append(AnnotatorProfile(f"E{k:02d}", "expert", 0.98, 0.98, 0.98, 0.5, 45.0, 0.04,
                                    int(rng.integers(20, 31))))  # fmt: skip
    return out


def confusion_matrix(p: AnnotatorProfile) -> NDArray[np.float64]:
    """The annotator's 3×3 confusion matrix (rows: true class, columns: label)."""
    se, sp, acc = p.sensitivity, p.specificity, p.class_accuracy
    c = np.zeros((3, 3))
    c[0] = [sp, (1 - sp) * (1 - p.fp_opacity_share), (1 - sp) * p.fp_opacity_share]
    c[1] = [1 - se, se * acc, se * (1 - acc)]
    c[2] = [1 - se, se * (1 - acc), se * acc]
    return c


def _exact_counts(n: int, probs: NDArray[np.float64]) -> NDArray[np.int64]:
    raw = n * probs
    counts = np.floor(raw).astype(np.int64)
    rest = n - counts.sum()
    order = np.argsort(-(raw - counts), kind="stable")
    counts[order[:rest]] += 1
    return counts


def _when(rng: np.random.Generator, day: int) -> dt.datetime:
    secs = int(rng.integers(8 * 3600, 18 * 3600))
    return dt.datetime.combine(START, dt.time(), tzinfo=dt.UTC) + dt.timedelta(
        days=int(day), seconds=secs
    )


def _jitter_box(
    rng: np.random.Generator, box: list[int], sigma: float, img: ImageSpec
) -> list[int]:
    x0, y0, x1, y1 = box
    w, h = x1 - x0, y1 - y0
    d = rng.normal(0, sigma, 4) * np.array([w, h, w, h])
    nx0, ny0 = round(x0 + d[0]), round(y0 + d[1])
    nx1, ny1 = round(x1 + d[2]), round(y1 + d[3])
    nx0, nx1 = sorted((min(max(nx0, 0), img.cols - 1), min(max(nx1, 0), img.cols)))
    ny0, ny1 = sorted((min(max(ny0, 0), img.rows - 1), min(max(ny1, 0), img.rows)))
    return [nx0, ny0, max(nx1, nx0 + 1), max(ny1, ny0 + 1)]


def _random_box(rng: np.random.Generator, img: ImageSpec) -> list[int]:
    """A plausible false-positive box inside one lung field."""
    side = rng.uniform(0.04, 0.12) * img.cols
    cx = img.cols * (0.5 + rng.choice([-1, 1]) * rng.uniform(0.12, 0.3))
    cy = img.rows * rng.uniform(0.3, 0.65)
    x0, y0 = int(max(cx - side / 2, 0)), int(max(cy - side / 2, 0))
    return [x0, y0, int(min(x0 + side, img.cols)), int(min(y0 + side, img.rows))]


def _true_class(img: ImageSpec) -> int:
    return CLASSES.index(img.label)


def simulate_annotations(
    plan: DemoPlan, profiles: list[AnnotatorProfile], rng: np.random.Generator
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Cross-annotation of every dataset image by 2–3 doctors, the exam and the gold labels.

    Parameters
    ----------
    plan : the demo plan (only ``in_dataset`` images that will exist in the DB are labelled).
    profiles : from :func:`annotator_profiles`.
    rng : random generator.

    Returns
    -------
    rows : one dict per annotation with keys ``task`` (``finding`` or ``finding-box``),
        ``image`` (plan index), ``annotator`` (code), ``label``, ``bbox``, ``created_at``,
        ``duration_s``.
    realised : per annotator code, the realised confusion counts on the classification task
        (3×3 list, rows true class) and how many images they labelled.
    """
    doctors = [p for p in profiles if p.kind == "doctor"]
    experts = [p for p in profiles if p.kind == "expert"]
    items = [i for i in plan.images if i.in_dataset]
    exam = set(plan.exam)
    # Which doctor labels which image: 2 or 3 distinct doctors, all of them on the exam set.
    pairs: list[tuple[AnnotatorProfile, ImageSpec, bool]] = []
    for img in items:
        if img.index in exam:
            pairs += [(d, img, True) for d in doctors]
            continue
        k = 3 if rng.random() < 0.4 else 2
        for j in rng.choice(len(doctors), size=k, replace=False):
            pairs.append((doctors[int(j)], img, False))
    gold = set(plan.gold)
    pairs += [(e, img, False) for e in experts for img in items if img.index in gold]

    # Exact-count labels per (annotator, true class).
    labels: dict[tuple[str, int], int] = {}
    realised: dict[str, Any] = {}
    for prof in profiles:
        mine = [img for p, img, _ in pairs if p.code == prof.code]
        cm = confusion_matrix(prof)
        counts = np.zeros((3, 3), dtype=int)
        for t in range(3):
            group = [img for img in mine if _true_class(img) == t]
            if not group:
                continue
            c = _exact_counts(len(group), cm[t])
            given = rng.permutation(np.repeat(np.arange(3), c))
            for img, lab in zip(group, given, strict=True):
                labels[(prof.code, img.index)] = int(lab)
            counts[t] = c
        realised[prof.code] = {"n_images": len(mine), "confusion": counts.tolist()}

    rows: list[dict[str, Any]] = []
    for prof, img, is_exam in pairs:
        lab = labels[(prof.code, img.index)]
        t = _true_class(img)
        day = int(rng.integers(84, 91)) if is_exam else min(img.day + int(rng.integers(1, 8)), 96)
        when = _when(rng, day)
        dur = float(rng.lognormal(np.log(prof.median_duration_s), 0.45))
        if lab != 0:
            dur *= 1.3
        rows.append({"task": "finding", "image": img.index, "annotator": prof.code,
                     "label": CLASSES[lab], "bbox": None, "created_at": when,
                     "duration_s": round(dur, 2)})  # fmt: skip
        if lab == 0:
            box = None
        elif t != 0 and img.bbox is not None:
            box = _jitter_box(rng, img.bbox, prof.box_jitter, img)
        else:
            box = _random_box(rng, img)
        box_dur = dur * 1.6 * float(rng.uniform(0.9, 1.1))
        rows.append({"task": "finding-box", "image": img.index, "annotator": prof.code,
                     "label": CLASSES[lab], "bbox": box,
                     "created_at": when + dt.timedelta(seconds=round(dur) + 5),
                     "duration_s": round(box_dur, 2)})  # fmt: skip
    return rows, realised


def _sigmoid(x: float) -> float:
    return float(1.0 / (1.0 + np.exp(-x)))


def simulate_predictions(
    plan: DemoPlan, rng: np.random.Generator
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Predictions of both model versions on every dataset image (see the module docstring).

    Returns
    -------
    rows : dicts with ``version``, ``image`` (plan index), ``label``, ``score``, ``bbox``,
        ``latency_ms`` and ``created_at``; no row inside a ``missing`` window and all-None
        outputs inside an ``empty`` window.
    truth : per version, the realised AUC overall and per source (on true findings, rows
        with a score only).
    """
    items = [i for i in plan.images if i.in_dataset]
    non_medical = {d["sop_uid"] for d in plan.defects.get("non_medical", [])}
    rows: list[dict[str, Any]] = []
    truth: dict[str, Any] = {}
    for ver in MODEL_VERSIONS:
        scores: list[tuple[str, int, float]] = []
        for img in items:
            windows = [
                w for w in MISSING_PREDICTIONS
                if w["version"] == ver["version"] and w["start_day"] <= img.day <= w["end_day"]
            ]  # fmt: skip
            y = int(img.label != "normal")
            sep = ver["separation"]
            reg = ver["regression"]
            if reg is not None and img.source.name == reg["source"]:
                sep = reg["separation"]
            logit = sep * (2 * y - 1) + float(rng.standard_normal())
            if img.drifted:
                logit += DRIFT["model_logit_shift"]
            if img.sop_uid in non_medical:
                logit = 2.5
            latency = round(float(rng.lognormal(np.log(ver["latency_ms_median"]), 0.3)), 1)
            created = dt.datetime.combine(START, dt.time(), tzinfo=dt.UTC) + dt.timedelta(
                days=img.day, seconds=img.seconds + int(rng.integers(60, 900))
            )
            label_draw, box_draw = float(rng.random()), _random_box(rng, img)
            if windows and windows[0]["kind"] == "missing":
                continue
            row = {"version": ver["version"], "image": img.index, "created_at": created}
            if windows:  # empty outputs: the feed delivered nothing the model could read
                rows.append({**row, "label": None, "score": None, "bbox": None,
                             "latency_ms": latency})  # fmt: skip
                continue
            score = round(_sigmoid(logit), 4)
            scores.append((img.source.name, y, score))
            if score < 0.5:
                label, box = "normal", None
            elif y and label_draw < 0.85 and img.bbox is not None:
                label, box = img.label, _jitter_box(rng, img.bbox, 0.08, img)
            else:
                label, box = str(CLASSES[1 + int(label_draw * 2) % 2]), box_draw
            rows.append({**row, "label": label, "score": score, "bbox": box,
                         "latency_ms": latency})  # fmt: skip
        truth[ver["version"]] = {
            "auc": _auc(list(scores)),
            "auc_by_source": {
                src: _auc([s for s in scores if s[0] == src])
                for src in sorted({s[0] for s in scores})
            },
        }
    return rows, truth


def _auc(scores: list[tuple[str, int, float]]) -> float | None:
    """Mann-Whitney AUC of score against y (ties count one half)."""
    y = np.array([s[1] for s in scores])
    x = np.array([s[2] for s in scores])
    pos, neg = x[y == 1], x[y == 0]
    if len(pos) == 0 or len(neg) == 0:
        return None
    gt = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    return round(float(gt / (len(pos) * len(neg))), 4)


def profile_dict(p: AnnotatorProfile) -> dict[str, Any]:
    """A JSON-ready profile with its confusion matrix."""
    d = asdict(p)
    d["confusion_matrix"] = np.round(confusion_matrix(p), 4).tolist()
    return d
