"""Synthetic demo data with seeded truth: ``quality demo``.

:func:`build_demo` writes chest-radiograph-like DICOM files (four sources, four vendors,
CR/DX, 12-bit, MONOCHROME1 at one site) and a few CT series, indexes them with
:func:`quality.ingest.ingest`, fills the annotation DB (a dataset with splits, 12 doctors and
2 experts, a classification and a box task, gold and exam labels, a production and a shadow
model version with predictions) and writes ``demo_truth.json`` next to the files. The truth
file never enters the DB: it is the answer key that detectors are scored against.

Everything is a function of ``seed`` and ``size``: files, UIDs, dates and DB content are the
same on every run (see :func:`db_content_hash`). The generating models are described in
:mod:`quality.demo.phantoms` (pixels), :mod:`quality.demo.plan` (patients, studies, defects,
splits) and :mod:`quality.demo.labels` (annotators and models); the truth file's schema is in
``data_samples/README.md``.

Example
-------
>>> summary = build_demo(session, Path("data_samples"), seed=0, salt="s")  # doctest: +SKIP
>>> summary.as_dict()["images"]  # doctest: +SKIP
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import func, insert, select
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
    Study,
)
from quality.demo.files import write_all
from quality.demo.hashing import db_content_hash
from quality.demo.labels import (
    MODEL_VERSIONS,
    annotator_profiles,
    profile_dict,
    simulate_annotations,
    simulate_predictions,
)
from quality.demo.large import build_large
from quality.demo.plan import (
    CLASSES,
    DRIFT,
    MISSING_PREDICTIONS,
    N_DAYS,
    SIZE_SPECS,
    SOURCES,
    START,
    DemoPlan,
    make_plan,
)
from quality.errors import QualityError

__all__ = [
    "DATASET_NAME",
    "SIZES",
    "TRUTH_FILE",
    "DemoSummary",
    "build_demo",
    "build_large",
    "db_content_hash",
]

SIZES = ("small", "medium", "large")
DATASET_NAME = "chest-xray-demo"
TRUTH_FILE = "demo_truth.json"
MODEL_NAME = "chest-finding-classifier"
_MARKER = ".quality-demo"
_ProgressFn = Callable[[int, int, str], None]


@dataclass
class DemoSummary:
    """What :func:`build_demo` made.

    Attributes
    ----------
    files : DICOM files written (the truncated one included, the deleted one too).
    studies, images : rows in the DB after ingest.
    annotations, predictions : rows inserted.
    errors : ``ingest_errors`` rows.
    seconds : wall time.
    truth : path of ``demo_truth.json``.
    extra : further JSON-ready facts merged into :meth:`as_dict` (the large demo's series,
        doctors, predictions per version and seconds per phase).
    """

    files: int
    studies: int
    images: int
    annotations: int
    predictions: int
    errors: int
    seconds: float
    truth: Path
    extra: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready counts (the ``quality demo --json`` payload)."""
        return {
            "files": self.files,
            "studies": self.studies,
            "images": self.images,
            "annotations": self.annotations,
            "predictions": self.predictions,
            "errors": self.errors,
            "seconds": round(self.seconds, 2),
            "truth": str(self.truth),
            **self.extra,
        }


def _day_iso(day: int) -> str:
    return (START + dt.timedelta(days=day)).isoformat()


def _prepare_out(out: Path) -> Path:
    """Create ``out/dicom``, wiping a previous demo there (and only a demo)."""
    root = out / "dicom"
    if root.exists():
        if not (root / _MARKER).exists() and any(root.iterdir()):
            raise QualityError(
                f"{root} exists and was not written by `quality demo`; "
                "move it away or choose another --out"
            )
        shutil.rmtree(root)
    root.mkdir(parents=True)
    (root / _MARKER).write_text("written by `quality demo`; wiped on the next run\n")
    return root


def _check_empty(session: Session) -> None:
    n_images = session.scalar(select(func.count()).select_from(Image)) or 0
    n_datasets = session.scalar(select(func.count()).select_from(Dataset)) or 0
    if n_images or n_datasets:
        raise QualityError(
            f"the demo needs an empty database, but it holds {n_images} images and "
            f"{n_datasets} datasets; use a fresh --db URL"
        )


def _insert_ids(session: Session, model: Any, rows: list[dict[str, Any]]) -> list[int]:
    stmt = insert(model).returning(model.id, sort_by_parameter_order=True)
    return list(session.scalars(stmt, rows))


def build_demo(
    session: Session,
    out: Path,
    *,
    seed: int = 0,
    size: str = "small",
    salt: str,
    workers: int | None = None,
    progress: _ProgressFn | None = None,
) -> DemoSummary:
    """Write the demo's DICOM files and truth file, ingest them and fill the annotation DB.

    Parameters
    ----------
    session : a session on a migrated, empty DB; committed at the end.
    out : output folder; files go to ``out/dicom/<source>/<accession>/<series>/<sop>.dcm``
        (a previous demo there is wiped) and the truth to ``out/demo_truth.json``.
    seed : random seed; the same seed gives the same files and DB content.
    size : ``small`` (≈380 files), ``medium`` (≈5×) or ``large`` (:func:`build_large` at
        scale 1: the small demo scaled up to 10⁵ studies and 10⁶ annotations).
    salt : PHI salt of the pseudonymous patient keys.
    workers : processes for writing and ingesting files (default: all cores).
    progress : called as ``progress(done, total, label)`` during the long phases.

    Returns
    -------
    DemoSummary

    Raises
    ------
    QualityError
        An unknown size, a non-empty DB, or an ``out/dicom`` folder that is not a demo's.
    """
    from quality.ingest import ingest  # late: ingest pulls in the store layer

    if size == "large":
        return build_large(session, out, seed=seed, salt=salt, workers=workers, progress=progress)
    if size not in SIZE_SPECS:
        raise QualityError(f"size must be one of {', '.join(SIZES)}, not {size!r}")
    if not salt:
        raise QualityError("salt must be a non-empty string")
    t0 = time.perf_counter()
    _check_empty(session)
    out = Path(out).resolve()
    root = _prepare_out(out)

    plan = make_plan(seed, size)
    written = write_all(root, plan, workers=workers, progress=progress)
    ingest(session, str(root), workers=workers, salt=salt, progress=progress)
    for img in plan.images:
        if img.delete_after_ingest:
            (root / img.relpath).unlink()

    rng = np.random.default_rng([seed, 11])
    image_ids = dict(session.execute(select(Image.sop_uid, Image.id)).all())
    # Only images that ingest indexed are labelled (the truncated file is an error row).
    for img in plan.images:
        img.in_dataset = img.in_dataset and img.sop_uid in image_ids
    n_annotations, annotation_defects, realised, profiles = _fill_labels(
        session, plan, image_ids, rng
    )
    n_predictions, model_truth = _fill_models(session, plan, image_ids, rng)
    session.commit()

    truth = _truth(plan, salt, written, profiles, realised, annotation_defects, model_truth)
    truth_path = out / TRUTH_FILE
    truth_path.write_text(json.dumps(truth, indent=1, sort_keys=False) + "\n")
    if progress is not None:
        progress(1, 1, "truth file")
    return DemoSummary(
        files=len(plan.images),
        studies=session.scalar(select(func.count()).select_from(Study)) or 0,
        images=len(image_ids),
        annotations=n_annotations,
        predictions=n_predictions,
        errors=session.scalar(select(func.count()).select_from(IngestError)) or 0,
        seconds=time.perf_counter() - t0,
        truth=truth_path,
    )


def _fill_labels(
    session: Session, plan: DemoPlan, image_ids: dict[str, int], rng: np.random.Generator
) -> tuple[int, list[dict[str, Any]], dict[str, Any], list[Any]]:
    last = dt.datetime.combine(START, dt.time(18), tzinfo=dt.UTC) + dt.timedelta(days=N_DAYS)
    [dataset_id] = _insert_ids(session, Dataset, [{
        "name": DATASET_NAME,
        "owner": "demo-data-team",
        "license": "CC-BY-4.0",
        "description": (
            "Synthetic chest radiographs from four sites (GE, Siemens, Philips, Fujifilm) "
            "for finding classification (normal / nodule / opacity) and detection. "
            "Generated by `quality demo`; no real patient data."
        ),
        "updated_at": last,
    }])  # fmt: skip
    items = [i for i in plan.images if i.in_dataset]
    lines = sorted(f"{i.sop_uid}:{i.split}" for i in items)
    content_hash = hashlib.sha256("\n".join(lines).encode()).hexdigest()
    [version_id] = _insert_ids(session, DatasetVersion, [{
        "dataset_id": dataset_id, "version": "v1", "content_hash": content_hash,
        "note": "first release: train/val/test split by patient",
    }])  # fmt: skip
    session.execute(
        insert(DatasetItem),
        [{"version_id": version_id, "image_id": image_ids[i.sop_uid], "split": i.split}
         for i in items],
    )  # fmt: skip

    profiles = annotator_profiles(rng)
    ann_ids = _insert_ids(session, Annotator, [{
        "code": p.code,
        "name": f"Demo {'Doctor' if p.kind == 'doctor' else 'Expert'} {p.code}",
        "kind": p.kind,
        "specialty": "thoracic radiology" if p.kind == "expert" else "radiology",
        "experience_years": p.experience_years,
    } for p in profiles])  # fmt: skip
    annotator_ids = dict(zip([p.code for p in profiles], ann_ids, strict=True))
    task_ids = dict(zip(("finding", "finding-box"), _insert_ids(session, LabelingTask, [
        {"dataset_id": dataset_id, "name": "finding", "kind": "classification",
         "classes": list(CLASSES)},
        {"dataset_id": dataset_id, "name": "finding-box", "kind": "bbox",
         "classes": list(CLASSES[1:])},
    ]), strict=True))  # fmt: skip

    rows, realised = simulate_annotations(plan, profiles, rng)
    defects = _annotation_defects(plan, rows, profiles, rng)
    total = len(rows)
    chunk = 5000
    for start in range(0, total, chunk):
        session.execute(insert(Annotation), [{
            "task_id": task_ids[r["task"]],
            "image_id": image_ids[plan.images[r["image"]].sop_uid],
            "annotator_id": annotator_ids[r["annotator"]],
            "label": r["label"], "bbox": r["bbox"], "created_at": r["created_at"],
            "duration_s": r["duration_s"],
        } for r in rows[start:start + chunk]])  # fmt: skip

    refs = []
    for kind, indices in (("gold", plan.gold), ("exam", plan.exam)):
        for k in indices:
            img = plan.images[k]
            for task in ("finding", "finding-box"):
                refs.append({
                    "task_id": task_ids[task], "image_id": image_ids[img.sop_uid],
                    "kind": kind, "label": img.label,
                    "bbox": img.bbox if task == "finding-box" else None,
                })  # fmt: skip
    session.execute(insert(ReferenceLabel), refs)
    return total, defects, realised, profiles


def _annotation_defects(
    plan: DemoPlan, rows: list[dict[str, Any]], profiles: list[Any], rng: np.random.Generator
) -> list[dict[str, Any]]:
    """Seed a box outside its image and a label outside the task's classes, in place."""
    ordinary = {p.code for p in profiles if p.kind == "doctor" and not (p.careless or p.biased)}
    exam = set(plan.exam)
    boxes = [
        r for r in rows
        if r["task"] == "finding-box" and r["bbox"] and r["annotator"] in ordinary
        and r["image"] not in exam
    ]  # fmt: skip
    labels = [
        r for r in rows
        if r["task"] == "finding" and r["label"] == "nodule" and r["annotator"] in ordinary
        and r["image"] not in exam
    ]  # fmt: skip
    out = []
    r = boxes[int(rng.integers(0, len(boxes)))]
    img = plan.images[r["image"]]
    r["bbox"] = [r["bbox"][0], r["bbox"][1], img.cols + 37, r["bbox"][3]]
    out.append({"kind": "box_outside_image", "task": "finding-box", "sop_uid": img.sop_uid,
                "annotator": r["annotator"], "bbox": r["bbox"], "cols": img.cols})  # fmt: skip
    r = labels[int(rng.integers(0, len(labels)))]
    r["label"] = "nodul"
    out.append({"kind": "label_not_in_schema", "task": "finding", "annotator": r["annotator"],
                "sop_uid": plan.images[r["image"]].sop_uid, "label": "nodul",
                "intended": "nodule"})  # fmt: skip
    return out


def _fill_models(
    session: Session, plan: DemoPlan, image_ids: dict[str, int], rng: np.random.Generator
) -> tuple[int, dict[str, Any]]:
    task_id = session.scalar(select(LabelingTask.id).where(LabelingTask.name == "finding"))
    [model_id] = _insert_ids(session, Model, [{
        "name": MODEL_NAME, "task_id": task_id,
        "description": "Demo chest-finding classifier; score = probability of a finding.",
    }])  # fmt: skip
    version_ids = dict(zip(
        [v["version"] for v in MODEL_VERSIONS],
        _insert_ids(session, ModelVersion, [
            {"model_id": model_id, "version": v["version"], "status": v["status"]}
            for v in MODEL_VERSIONS
        ]),
        strict=True,
    ))  # fmt: skip
    rows, truth = simulate_predictions(plan, rng)
    session.execute(insert(Prediction), [{
        "model_version_id": version_ids[r["version"]],
        "image_id": image_ids[plan.images[r["image"]].sop_uid],
        "label": r["label"], "score": r["score"], "bbox": r["bbox"],
        "latency_ms": r["latency_ms"], "created_at": r["created_at"],
    } for r in rows])  # fmt: skip
    return len(rows), truth


def _truth(
    plan: DemoPlan,
    salt: str,
    written: list[dict[str, Any]],
    profiles: list[Any],
    realised: dict[str, Any],
    annotation_defects: list[dict[str, Any]],
    model_truth: dict[str, Any],
) -> dict[str, Any]:
    from quality.dicom import patient_key

    doctors, experts = [], []
    for p in profiles:
        d = profile_dict(p)
        conf = np.array(realised[p.code]["confusion"])
        n_pos, n_neg = conf[1:].sum(), conf[0].sum()
        d["n_images"] = realised[p.code]["n_images"]
        d["realised_confusion"] = conf.tolist()
        d["realised_sensitivity"] = round(float(conf[1:, 1:].sum() / n_pos), 4) if n_pos else None
        d["realised_specificity"] = round(float(conf[0, 0] / n_neg), 4) if n_neg else None
        (doctors if p.kind == "doctor" else experts).append(d)
    defects: dict[str, Any] = {k: list(v) for k, v in plan.defects.items()}
    for rec in defects["patient_leak"]:
        rec["patient_key"] = patient_key(rec["patient_id"], salt)
    params = {w["index"]: w for w in written}
    for kind in ("blur", "noise", "under_exposure", "over_exposure", "near_duplicate"):
        for rec in defects.get(kind, []):
            idx = next(i.index for i in plan.images if i.sop_uid == rec["sop_uid"])
            rec["params"] = params[idx]["params"]
    for rec in defects["truncated"]:
        idx = next(i.index for i in plan.images if i.sop_uid == rec["sop_uid"])
        rec["truncated_at_byte"] = params[idx]["truncated_at"]
    for rec in annotation_defects:
        defects.setdefault(rec["kind"], []).append(rec)

    images = {}
    for img in plan.images:
        images[img.sop_uid] = {
            "path": img.relpath,
            "kind": img.kind,
            "source": img.source.name,
            "patient_id": plan.patients[img.patient].patient_id,
            "study_uid": img.study_uid,
            "series_uid": img.series_uid,
            "study_date": img.date.isoformat(),
            "modality": {"ct": "CT", "texture": "OT"}.get(img.kind, img.source.modality),
            "class": img.label if img.kind != "ct" else None,
            "bbox": img.bbox,
            "split": img.split,
            "in_dataset": img.in_dataset,
            "drifted": img.drifted and img.kind != "ct",
            "defects": sorted(set(img.defects)),
        }
    return {
        "schema_version": 1,
        "generator": "quality.demo",
        "seed": plan.seed,
        "size": plan.size,
        "dicom_root": "dicom",
        "date_range": {"start": START.isoformat(), "end": _day_iso(N_DAYS - 1)},
        "dataset": {"name": DATASET_NAME, "version": "v1"},
        "classes": list(CLASSES),
        "tasks": {
            "finding": {"kind": "classification", "classes": list(CLASSES)},
            "finding-box": {"kind": "bbox", "classes": list(CLASSES[1:])},
        },
        "sources": [
            {
                "name": s.name,
                "manufacturer": s.manufacturer,
                "model": s.model,
                "ct_model": s.ct_model,
                "modality": s.modality,
                "photometric": s.photometric,
                "matrix": int(s.matrix * SIZE_SPECS[plan.size].matrix_scale),
                "pixel_spacing_mm": s.spacing_mm,
                "kvp": s.kvp,
                "software": s.software,
                "n_images": sum(1 for i in plan.images if i.source is s),
            }
            for s in SOURCES
        ],
        "doctors": doctors,
        "experts": experts,
        "careless_doctor": next(d["code"] for d in doctors if d["careless"]),
        "biased_doctor": next(d["code"] for d in doctors if d["biased"]),
        "exam_set": [plan.images[k].sop_uid for k in plan.exam],
        "gold_set": [plan.images[k].sop_uid for k in plan.gold],
        "models": {
            "name": MODEL_NAME,
            "task": "finding",
            "score": "probability of a finding (label != normal)",
            "versions": [{**v, **model_truth[v["version"]]} for v in MODEL_VERSIONS],
            "non_medical_scored_positive": True,
        },
        "drift": [
            {
                "source": DRIFT["source"],
                "start_date": _day_iso(DRIFT["start_day"]),
                "what": ["kvp", "pixel_intensity", "software_version", "model_score"],
                "kvp_before": next(s.kvp for s in SOURCES if s.name == DRIFT["source"]),
                "kvp_after": DRIFT["kvp_after"],
                "gain_factor": DRIFT["gain_factor"],
                "offset_delta": DRIFT["offset_delta"],
                "software_after": DRIFT["software_after"],
                "model_logit_shift": DRIFT["model_logit_shift"],
            }
        ],
        "missing_predictions": [
            {
                "model": MODEL_NAME,
                "version": w["version"],
                "kind": w["kind"],
                "start_date": _day_iso(w["start_day"]),
                "end_date": _day_iso(w["end_day"]),
            }
            for w in MISSING_PREDICTIONS
        ],
        "defects": defects,
        "images": images,
    }
