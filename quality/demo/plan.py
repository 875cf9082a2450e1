"""The demo's plan: every patient, study, series and image with its seeded truth.

The plan is a pure function of ``(seed, size)``: one ``np.random.default_rng(seed)`` draws it in
a fixed order, and every image later gets its own generator
``default_rng([seed, 7, index])`` for its pixels, so files are identical whatever the number
of worker processes.

Sampling model
--------------
- Patients belong to one source (shares 0.30 / 0.25 / 0.25 / 0.20); 30% have two chest
  studies at least a week apart. Study days are uniform over ``N_DAYS`` from ``START``.
- Each chest study holds one PA image whose true class is ``normal`` (p=0.55), ``nodule``
  (0.225) or ``opacity`` (0.225); positives get a finding and its bounding box.
- Defects are seeded on distinct, otherwise clean chest images (or as extra images:
  duplicates, the test object, the photo-like secondary capture), never on the exam set or
  the leaking patient.
- Splits are drawn per patient (70/15/15), except the leaking patient, whose two studies
  land in ``train`` and ``test``.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from pydicom.uid import generate_uid

from quality.demo.phantoms import (
    ChestAnatomy,
    Finding,
    chest_anatomy,
    finding_bbox,
    sample_finding,
)

__all__ = [
    "CLASSES",
    "DRIFT",
    "MISSING_PREDICTIONS",
    "N_DAYS",
    "SIZE_SPECS",
    "SOURCES",
    "START",
    "DemoPlan",
    "ImageSpec",
    "SizeSpec",
    "SourceProfile",
    "make_plan",
]

START = dt.date(2024, 1, 8)
N_DAYS = 90
CLASSES = ("normal", "nodule", "opacity")
_CLASS_P = (0.55, 0.225, 0.225)
DEGRADATIONS = ("blur", "noise", "under_exposure", "over_exposure")


@dataclass(frozen=True)
class SourceProfile:
    """A site and its vendor's acquisition profile."""

    name: str
    manufacturer: str
    model: str
    modality: str
    photometric: str
    matrix: int
    spacing_mm: float
    kvp: float
    software: str
    institution: str
    station: str
    patient_share: float
    gain: float
    offset: float
    noise: float
    ct_model: str | None = None


SOURCES: tuple[SourceProfile, ...] = (
    SourceProfile("north_clinic", "GE Healthcare", "Definium 8000", "DX", "MONOCHROME2",
                  512, 0.70, 120.0, "dm_Platform_release_24.1", "North Clinic (synthetic)",
                  "NCDX01", 0.30, 3400.0, 180.0, 14.0, "Revolution CT"),
    SourceProfile("south_hospital", "SIEMENS", "Ysio Max", "DX", "MONOCHROME2",
                  512, 0.74, 125.0, "VF10C", "South Hospital (synthetic)",
                  "SHDX02", 0.25, 3300.0, 220.0, 16.0, "SOMATOM Definition AS"),
    SourceProfile("east_imaging", "Philips Medical Systems", "DigitalDiagnost", "DX",
                  "MONOCHROME2", 512, 0.72, 125.0, "4.3.1", "East Imaging (synthetic)",
                  "EIDX03", 0.25, 3350.0, 200.0, 15.0),
    SourceProfile("west_center", "FUJIFILM Corporation", "FCR Capsula XLII", "CR",
                  "MONOCHROME1", 256, 1.40, 110.0, "A08", "West Center (synthetic)",
                  "WCCR04", 0.20, 3200.0, 160.0, 18.0),
)  # fmt: skip

# Vendor firmware update at one site: lower kVp and a darker, lower-gain processing curve.
DRIFT: dict[str, Any] = {
    "source": "east_imaging",
    "start_day": 60,
    "kvp_after": 102.0,
    "gain_factor": 0.80,
    "offset_delta": -120.0,
    "software_after": "5.0.2",
    "model_logit_shift": -0.9,
}

# The production model's input feed broke: first empty outputs, then no rows at all.
MISSING_PREDICTIONS: tuple[dict[str, Any], ...] = (
    {"version": "v1", "kind": "empty", "start_day": 40, "end_day": 43},
    {"version": "v1", "kind": "missing", "start_day": 44, "end_day": 46},
)


@dataclass(frozen=True)
class SizeSpec:
    """How big a demo is: patients, CT series and seeded defects per kind."""

    n_patients: int
    ct_series: int
    ct_slices: int
    ct_matrix: int
    per_degradation: int
    n_inverted: int
    n_blank: int
    n_exact_dup: int
    n_near_dup: int
    n_truncated: int
    n_missing_tags: int
    n_phi: int
    exam_size: int
    gold_share: float
    matrix_scale: float = 1.0


SIZE_SPECS: dict[str, SizeSpec] = {
    # "tiny" is for tests only: every mechanism, one instance each.
    "tiny": SizeSpec(22, 1, 6, 128, 1, 1, 1, 1, 1, 1, 2, 2, 9, 0.25, matrix_scale=0.5),
    "small": SizeSpec(240, 3, 20, 256, 4, 3, 2, 3, 3, 1, 2, 2, 30, 0.2),
    "medium": SizeSpec(1200, 6, 32, 256, 15, 8, 6, 12, 12, 3, 6, 6, 45, 0.2),
}


@dataclass
class ImageSpec:
    """One file of the demo and its truth."""

    index: int
    kind: str  # chest | ct | canister | texture
    source: SourceProfile
    patient: int
    study: int
    day: int
    seconds: int
    sop_uid: str
    study_uid: str
    series_uid: str
    series_number: int
    instance_number: int
    accession: str
    rows: int
    cols: int
    label: str = "normal"
    anatomy: ChestAnatomy | None = None
    finding: Finding | None = None
    bbox: list[int] | None = None
    z: float = 0.0
    degradation: str | None = None
    dup_of: int | None = None
    dup_kind: str | None = None
    header_edits: dict[str, Any] = field(default_factory=dict)
    defects: list[str] = field(default_factory=list)
    truncated: bool = False
    delete_after_ingest: bool = False
    split: str | None = None
    in_dataset: bool = False

    @property
    def date(self) -> dt.date:
        return START + dt.timedelta(days=self.day)

    @property
    def relpath(self) -> str:
        """Path under the DICOM root: ``source/accession/series/sop.dcm``."""
        return f"{self.source.name}/{self.accession}/{self.series_number:02d}/{self.sop_uid}.dcm"

    @property
    def drifted(self) -> bool:
        return self.source.name == DRIFT["source"] and self.day >= DRIFT["start_day"]


@dataclass
class Patient:
    index: int
    patient_id: str
    name: str
    sex: str
    age: int
    source: SourceProfile


@dataclass
class DemoPlan:
    """Everything to write and simulate, before any file exists."""

    seed: int
    size: str
    patients: list[Patient]
    images: list[ImageSpec]
    exam: list[int]
    gold: list[int]
    leak_patient: int
    defects: dict[str, list[dict[str, Any]]]


def _uid(seed: int, *parts: object) -> str:
    return str(generate_uid(entropy_srcs=["quality-demo", str(seed), *map(str, parts)]))


def make_plan(seed: int, size: str) -> DemoPlan:
    """Draw the demo's patients, studies, images, defects, splits, exam and gold sets.

    Parameters
    ----------
    seed : the demo seed.
    size : a key of :data:`SIZE_SPECS`.
    """
    spec = SIZE_SPECS[size]
    rng = np.random.default_rng(seed)
    shares = np.array([s.patient_share for s in SOURCES])
    patients: list[Patient] = []
    images: list[ImageSpec] = []
    anatomies: dict[int, ChestAnatomy] = {}
    n_studies = 0

    def new_study(patient: Patient, day: int) -> tuple[int, str, str]:
        nonlocal n_studies
        n_studies += 1
        return n_studies, _uid(seed, "study", n_studies), f"DEMO{seed % 1000:03d}{n_studies:05d}"

    def add_image(patient: Patient, study: tuple[int, str, str], day: int, kind: str,
                  series_number: int = 1, instance: int = 1, **kw: Any) -> ImageSpec:  # fmt: skip
        idx = len(images)
        src = kw.pop("source", patient.source)
        matrix = kw.pop("matrix", int(src.matrix * spec.matrix_scale))
        img = ImageSpec(
            index=idx, kind=kind, source=src, patient=patient.index, study=study[0], day=day,
            seconds=int(rng.integers(7 * 3600, 19 * 3600)), sop_uid=_uid(seed, "sop", idx),
            study_uid=study[1], series_uid=_uid(seed, "series", study[0], series_number),
            series_number=series_number, instance_number=instance, accession=study[2],
            rows=matrix, cols=matrix, **kw,
        )  # fmt: skip
        images.append(img)
        return img

    def new_patient(src: SourceProfile, tag: str = "P") -> Patient:
        i = len(patients)
        p = Patient(i, f"DEMO{tag}{i + 1:05d}", f"DEMO^{tag}{i + 1:05d}",
                    str(rng.choice(["F", "M"])), int(rng.integers(22, 88)), src)  # fmt: skip
        patients.append(p)
        return p

    # Chest studies.
    leak_candidates: list[int] = []
    for _ in range(spec.n_patients):
        patient = new_patient(SOURCES[int(rng.choice(len(SOURCES), p=shares))])
        base = chest_anatomy(rng)
        two = rng.random() < 0.3
        days = [int(rng.integers(0, N_DAYS - 10 if two else N_DAYS))]
        if two:
            days.append(int(rng.integers(days[0] + 7, N_DAYS)) if days[0] + 7 < N_DAYS else days[0])
            leak_candidates.append(patient.index)
        for day in days:
            study = new_study(patient, day)
            anatomy = chest_anatomy(rng, base)
            label = str(rng.choice(CLASSES, p=_CLASS_P))
            finding = sample_finding(rng, anatomy, label) if label != "normal" else None
            img = add_image(patient, study, day, "chest", label=label, anatomy=anatomy,
                            finding=finding)  # fmt: skip
            anatomies[img.index] = anatomy
    leak_patient = leak_candidates[int(rng.integers(0, len(leak_candidates)))]

    # Defects on distinct clean chest images (not the leaking patient's).
    pool = [i.index for i in images if i.patient != leak_patient]
    pool = [int(v) for v in rng.permutation(pool)]
    defects: dict[str, list[dict[str, Any]]] = {}

    def take(n: int, where: Any = None) -> list[ImageSpec]:
        out = []
        for k in list(pool):
            if len(out) == n:
                break
            if where is None or where(images[k]):
                pool.remove(k)
                out.append(images[k])
        return out

    def record(kind: str, img: ImageSpec, **extra: Any) -> None:
        img.defects.append(kind)
        defects.setdefault(kind, []).append({"sop_uid": img.sop_uid, "path": img.relpath, **extra})

    for kind in DEGRADATIONS:
        for img in take(spec.per_degradation):
            img.degradation = kind
            record(kind, img)
    m1 = [s.name for s in SOURCES if s.photometric == "MONOCHROME1"]
    n_m1 = spec.n_inverted // 2
    inv = take(n_m1, lambda i: i.source.name in m1) + take(
        spec.n_inverted - n_m1, lambda i: i.source.name not in m1
    )
    for img in inv:
        img.degradation = "inverted"
        record("inverted_photometric", img, photometric=img.source.photometric,
               pixels_look_like="MONOCHROME2" if img.source.photometric == "MONOCHROME1"
               else "MONOCHROME1")  # fmt: skip
    for k, img in enumerate(take(spec.n_blank)):
        img.degradation = "blank_flat" if k % 2 == 0 else "blank_noise"
        img.label, img.finding = "normal", None
        record("blank", img, flat=k % 2 == 0)
    for img in take(spec.n_truncated):
        img.truncated = True
        record("truncated", img)
    for img in take(1):
        img.delete_after_ingest = True
        record("missing_file", img)
    for img in take(spec.n_missing_tags):
        tags = ["PixelSpacing", "ImagerPixelSpacing"] if len(defects.get("missing_tags", [])) % 2 == 0 else ["Modality", "BodyPartExamined"]  # fmt: skip
        img.header_edits["delete"] = tags
        record("missing_tags", img, tags=tags)
    wrong = [
        ("BodyPartExamined", "KNEE", "CHEST"),
        ("PixelSpacing", [0.0, 0.0], "positive spacing"),
        ("PatientAge", "142Y", "000Y-120Y"),
    ]
    for img, (tag, value, expected) in zip(take(len(wrong)), wrong, strict=True):
        img.header_edits.setdefault("set", {})[tag] = value
        if tag == "PixelSpacing":
            img.header_edits["set"]["ImagerPixelSpacing"] = value
        record("wrong_tags", img, tag=tag, value=value, expected=expected)
    phi = [
        ("OperatorsName", "DOE^JANE"),
        ("ImageComments", "Pt DOE^JANE DOB 19610402 tel 555-0100 (synthetic PHI)"),
    ]
    for k, img in enumerate(take(spec.n_phi)):
        tag, value = phi[k % 2]
        img.header_edits.setdefault("set", {})[tag] = value
        record("phi_in_header", img, tag=tag, value=value)

    # Extra images: exact and near duplicates (re-sent into the same study), test objects.
    for kind, n, series_number in (("exact", spec.n_exact_dup, 2), ("near", spec.n_near_dup, 3)):
        for base in take(n):
            study = (base.study, base.study_uid, base.accession)
            dup = add_image(patients[base.patient], study, base.day, "chest",
                            series_number=series_number, label=base.label, anatomy=base.anatomy,
                            finding=base.finding, dup_of=base.index, dup_kind=kind)  # fmt: skip
            base.defects.append(f"{kind}_duplicate_original")
            record(f"{kind}_duplicate", dup, duplicate_of=base.sop_uid, original_path=base.relpath)
    n_nonmed = max(1, spec.per_degradation // 2)
    for k in range(n_nonmed):
        src = SOURCES[1] if k % 2 == 0 else SOURCES[0]
        kind = "canister" if k % 2 == 0 else "texture"
        patient = new_patient(src, "QA")
        day = int(rng.integers(0, N_DAYS))
        img = add_image(patient, new_study(patient, day), day, kind)
        record("non_medical", img, what="metal canister test object (DX)" if kind == "canister"
               else "photo-like scene (secondary capture)")  # fmt: skip

    # CT series: a new study for a patient of a CT-capable source.
    ct_sources = [s for s in SOURCES if s.ct_model]
    for k in range(spec.ct_series):
        src = ct_sources[k % len(ct_sources)]
        cands = [p for p in patients if p.source is src and "QA" not in p.patient_id]
        patient = cands[int(rng.integers(0, len(cands)))]
        day = int(rng.integers(0, N_DAYS))
        study = new_study(patient, day)
        for s in range(spec.ct_slices):
            add_image(patient, study, day, "ct", series_number=1, instance=s + 1,
                      matrix=spec.ct_matrix, z=(s + 0.5) / spec.ct_slices)  # fmt: skip

    # Boxes, dataset membership and splits.
    for img in images:
        if img.finding is not None:
            img.bbox = finding_bbox(img.finding, img.rows, img.cols)
        img.in_dataset = img.kind != "ct" and not img.truncated
    split_of = {}
    for p in patients:
        split_of[p.index] = str(rng.choice(["train", "val", "test"], p=[0.7, 0.15, 0.15]))
    leak_studies = sorted(
        {i.study for i in images if i.patient == leak_patient and i.kind == "chest"}
    )
    for img in images:
        if img.in_dataset:
            img.split = split_of[img.patient]
            if img.patient == leak_patient:
                img.split = "train" if img.study == leak_studies[0] else "test"
    leak_imgs = [i for i in images if i.patient == leak_patient and i.in_dataset]
    for img in leak_imgs:
        img.defects.append("patient_leak")
    defects["patient_leak"] = [
        {
            "patient_id": patients[leak_patient].patient_id,
            "splits": sorted({i.split for i in leak_imgs}),  # type: ignore[type-var]
            "sop_uids": [i.sop_uid for i in leak_imgs],
            "paths": [i.relpath for i in leak_imgs],
        }
    ]

    # Exam set: clean images with balanced classes; gold set: a share of the other clean ones.
    clean = [
        i.index for i in images
        if i.in_dataset and not i.defects and i.kind == "chest" and i.dup_of is None
    ]  # fmt: skip
    clean = [int(v) for v in rng.permutation(clean)]
    exam: list[int] = []
    per_class = spec.exam_size // len(CLASSES)
    for cls in CLASSES:
        exam += [k for k in clean if images[k].label == cls][:per_class]
    exam = sorted(exam)
    rest = [k for k in clean if k not in set(exam)]
    gold = sorted(rest[: round(spec.gold_share * sum(i.in_dataset for i in images))])
    return DemoPlan(seed, size, patients, images, exam, gold, leak_patient, defects)
