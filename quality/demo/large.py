"""The large demo: ``quality demo --size large``, 10⁵ studies and 10⁶ annotations over 180 days.

:func:`build_large` first builds the **small** demo with :func:`quality.demo.build_demo` (real
DICOM files, ingest, every seeded defect, 12 doctors and 2 experts, the exam and gold sets,
two model versions) and scores its images with :func:`quality.imaging.score.score_images`
(CPU), so every capability keeps its real, seeded truth. Then it scales the DB up with
synthetic rows, generated with vectorised numpy and written in bulk (``COPY`` on
PostgreSQL, ``executemany`` in chunks on SQLite), in one transaction per phase:

=================  =========================================================================
rows (scale 1)     how
=================  =========================================================================
studies 10⁵        new patients (30 % with two studies at least a week apart) of the four
                   demo sources (same patient shares), study days uniform over 180 days
                   from the small demo's ``START`` (its 90 days, extended)
images 2·10⁵       1-3 per study (one series each, 2 on average); every image *reuses the
                   pixels* of a clean chest image of the small demo from the same source
                   (a drifted one after the drift date at the drifting source, an
                   undrifted one before), under new study/series/SOP UIDs
annotations 10⁶    60 doctors (the small demo's 12, careless and biased included, plus 48
                   new ones, one of whom gets "fatigued" from day 120), 2-3 distinct
                   doctors per image, a ``finding`` and a ``finding-box`` row per doctor
                   and image (as in the small demo: the box row says ``normal`` with no
                   box when the doctor saw nothing); the new doctors also take the exam;
                   2 experts label a gold share (2 %) of the new images
predictions 4·10⁵  v1 (production) 1.8·10⁵, v2 (shadow) 1.4·10⁵ and a new v3 (candidate)
                   0.8·10⁵, on images drawn uniformly without replacement, with the score
                   shift at the drifting source and v1's empty/missing stretch
=================  =========================================================================

Every count is ``round(spec * scale)`` of the **whole DB** (the small demo's rows
included), so ``scale`` shrinks the demo for tests; the 60 doctors and the 180 days do not
scale. A scale too small to fit the small demo's fixed rows (its annotations, the new
doctors' exam) is refused (:data:`MIN_SCALE`).

Reused pixels
-------------
A new image's file is a **hard link** under ``out/large/<source>/<YYYYMMDD>/<sop>.dcm`` to
the real file it reuses (``images.uri`` is unique, and a link stays a plain file inside the
store root, which every store accepts). The file itself still carries the original's UIDs;
the DB row carries the new ones. Its header JSON is the original's with the new UIDs,
dates, times, series number, patient sex and age, plus a ``_demo`` entry:
``{"reused_pixels_of": <original SOP UID>, "pixel_sha256": <the file's true PixelData
hash>}``.

Hash choice: ``images.pixel_sha256`` of a new image is a **surrogate**,
``sha256(<true hash> + ":" + <SOP UID>)``, not the file's hash. With the true hash the
exact-duplicate check would report 2·10⁵ duplicates of some 300 files: true, but it would
drown the seeded duplicates of the small demo that the check is meant to find. The true hash
stays in the header (``_demo.pixel_sha256``), so the reuse is never hidden. Near-duplicate
detection (perceptual hashes of the decoded pixels) does see every clone as a copy of its
original.

The clones' ``image_quality`` rows are copies of their original's rows (same pixels, same
scores, same embedding reference), made in SQL (``INSERT ... SELECT``).

Truth
-----
``out/demo_truth.json`` is the small demo's truth with a ``large`` section added: counts,
date range, all 60 doctors' profiles with their realised confusion counts on the rows added
here (``new_confusion``; the small demo's own are in its ``doctors``), the careless, biased
and fatigued doctors, the drift, the missing-prediction stretch, the three model versions
with their realised AUCs on the new images, and the pixel-reuse scheme. No entry per new
image.

Speed
-----
Rows are generated column-wise with numpy and written as COPY text in chunks of 10⁵. On
PostgreSQL each phase loads its tables without their secondary indexes, unique and foreign
keys, and makes them again from their own definitions at the end of the phase, in the same
transaction (:meth:`_Loader.deferred`): 10⁶ annotations load in about 10 s instead of 40 s.
The full size takes about 2.5 minutes on 2 shared cores (small demo and scoring included),
plus what ``quality.db.aggregates.refresh`` takes (about 5.5 minutes), which runs last.

Example
-------
>>> summary = build_large(session, Path("/tmp/large"), salt="s", scale=0.05)  # doctest: +SKIP
>>> summary.as_dict()["annotations"]  # doctest: +SKIP
50000
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import math
import os
import shutil
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import numpy as np
from numpy.typing import NDArray
from sqlalchemy import func, insert, select, text, update
from sqlalchemy.orm import Session

from quality.db.schema import (
    Annotation,
    Annotator,
    Dataset,
    DatasetItem,
    DatasetVersion,
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
from quality.demo.labels import MODEL_VERSIONS, AnnotatorProfile, confusion_matrix
from quality.demo.plan import CLASSES, DRIFT, MISSING_PREDICTIONS, SOURCES, START
from quality.errors import QualityError

if TYPE_CHECKING:
    from quality.demo import DemoSummary

__all__ = [
    "CANDIDATE_VERSION",
    "FATIGUE",
    "LARGE_DIR",
    "LARGE_SPEC",
    "MIN_SCALE",
    "N_DAYS_LARGE",
    "N_DOCTORS",
    "LargeSpec",
    "build_large",
]

N_DAYS_LARGE: Final = 180
"""Days of data from ``START`` (the small demo has the first 90)."""
N_DOCTORS: Final = 60
"""Doctors (kind ``doctor``) in the large demo, whatever the scale."""
LARGE_DIR: Final = "large"
"""Folder of the clones' hard links under ``out``."""
MIN_SCALE: Final = {"small": 0.025, "tiny": 0.008}
"""Smallest ``scale`` per base demo whose fixed rows fit the scaled counts."""
CANDIDATE_VERSION: Final[dict[str, Any]] = {
    "version": "v3",
    "status": "candidate",
    "separation": 1.5,
    "latency_ms_median": 110.0,
    "regression": None,
}
"""The model version the large demo adds (a candidate, better than both)."""
FATIGUE: Final[dict[str, Any]] = {
    "from_day": 120,
    "sensitivity": 0.80,
    "specificity": 0.72,
    "class_accuracy": 0.85,
    "median_duration_s": 8.0,
}
"""One new doctor labels faster and worse from this day on (a weekly-trend truth)."""

_MARKER = ".quality-demo-large"
_CHUNK = 100_000
_NULL = r"\N"
_ProgressFn = Callable[[int, int, str], None]


@dataclass(frozen=True)
class LargeSpec:
    """Row counts of the large demo at scale 1 (whole DB, small demo included)."""

    studies: int = 100_000
    images: int = 200_000
    annotations: int = 1_000_000
    predictions: tuple[tuple[str, int], ...] = (("v1", 180_000), ("v2", 140_000), ("v3", 80_000))
    gold_share: float = 0.02
    three_view_share: float = 0.15
    two_study_share: float = 0.3

    def scaled(self, scale: float) -> dict[str, Any]:
        """Counts times ``scale``, rounded."""
        return {
            "studies": round(self.studies * scale),
            "images": round(self.images * scale),
            "annotations": round(self.annotations * scale),
            "predictions": {v: round(n * scale) for v, n in self.predictions},
        }


LARGE_SPEC: Final = LargeSpec()


# --------------------------------------------------------------------------- bulk writes


def _esc(value: str) -> str:
    """Escape a value for COPY's text format."""
    if "\\" in value or "\t" in value or "\n" in value or "\r" in value:
        return (
            value.replace("\\", "\\\\")
            .replace("\t", "\\t")
            .replace("\n", "\\n")
            .replace("\r", "\\r")
        )
    return value


def _pg_column(kind: str, values: Any) -> list[str]:
    if isinstance(values, np.ndarray):
        if kind == "ts":
            return np.char.add(np.datetime_as_string(values, unit="s"), "+00").tolist()
        if kind == "date":
            return np.datetime_as_string(values, unit="D").tolist()
        if kind == "bool":
            return np.where(values, "t", "f").tolist()
        if kind == "float":
            return np.where(np.isnan(values), _NULL, values.astype(str)).tolist()
        return values.astype(str).tolist()
    if kind == "json":
        return ["null" if v is None else _esc(v) for v in values]
    if kind == "text":
        return [_NULL if v is None else _esc(v) for v in values]
    return [_NULL if v is None else str(v) for v in values]


def _sqlite_column(kind: str, values: Any) -> list[Any]:
    if isinstance(values, np.ndarray):
        if kind == "ts":  # SQLAlchemy's SQLite DATETIME storage format, in UTC
            s = np.char.replace(np.datetime_as_string(values, unit="s"), "T", " ")
            return np.char.add(s, ".000000").tolist()
        if kind == "date":
            return np.datetime_as_string(values, unit="D").tolist()
        if kind == "bool":
            return values.astype(np.int64).tolist()
        if kind == "float":
            return [None if math.isnan(v) else v for v in values.tolist()]
        return values.tolist()
    if kind == "json":
        return ["null" if v is None else v for v in values]
    return list(values)


class _Loader:
    """Bulk inserts in the session's transaction: COPY (PostgreSQL) or executemany (SQLite).

    Columns come as ``name -> (kind, values)``: kind ``int``, ``float`` (NaN is NULL),
    ``text``, ``json`` (serialised text; None is JSON ``null``, as the ORM writes it),
    ``ts`` (``datetime64[s]`` in UTC), ``date`` (``datetime64[D]``) or ``bool``; values a
    numpy array (no NULLs but NaN) or a list (None is NULL).
    """

    def __init__(self, session: Session) -> None:
        self.session = session
        self.dialect = session.get_bind().dialect.name

    def load(
        self,
        table: str,
        columns: dict[str, tuple[str, Any]],
        *,
        progress: _ProgressFn | None = None,
        label: str = "",
        done: int = 0,
        total: int | None = None,
    ) -> int:
        names = list(columns)
        n = len(next(iter(columns.values()))[1])
        raw = self.session.connection().connection.driver_connection
        for start in range(0, n, _CHUNK):
            stop = min(n, start + _CHUNK)
            part = [(kind, values[start:stop]) for kind, values in columns.values()]
            if self.dialect == "postgresql":
                cols = [_pg_column(kind, values) for kind, values in part]
                body = "\n".join(map("\t".join, zip(*cols, strict=True))) + "\n"
                with (
                    raw.cursor() as cur,
                    cur.copy(f"COPY {table} ({', '.join(names)}) FROM STDIN") as copy,
                ):
                    copy.write(body)
            else:
                cols = [_sqlite_column(kind, values) for kind, values in part]
                marks = ", ".join("?" * len(names))
                cur = raw.cursor()
                try:
                    cur.executemany(
                        f"INSERT INTO {table} ({', '.join(names)}) VALUES ({marks})",
                        zip(*cols, strict=True),
                    )
                finally:
                    cur.close()
            if progress is not None:
                progress(done + stop, total if total is not None else n, label)
        return n

    @contextmanager
    def deferred(self, tables: Sequence[str]) -> Iterator[None]:
        """Load without the tables' secondary indexes and constraints; restore them after.

        On PostgreSQL, the plain indexes (``pg_indexes.indexdef``), the foreign keys and the
        unique constraints (``pg_get_constraintdef``) of ``tables`` are dropped, and made
        again from those very definitions when the block ends: building an index once and
        validating a foreign key with one join is some four times faster than maintaining
        them row by row during COPY. Primary keys and CHECK constraints stay. It all runs in
        the session's transaction, so an error rolls the drops back too. SQLite: no-op.
        """
        if self.dialect != "postgresql":
            yield
            return
        s = self.session
        s.execute(text("SET LOCAL maintenance_work_mem = '256MB'"))
        constraints: list[tuple[str, str, str]] = []
        indexes: list[tuple[str, str]] = []
        for table in tables:
            for name, definition in s.execute(
                text(
                    "SELECT conname, pg_get_constraintdef(oid) FROM pg_constraint "
                    "WHERE conrelid = CAST(:t AS regclass) AND contype IN ('f', 'u') "
                    "ORDER BY conname"
                ),
                {"t": table},
            ):
                constraints.append((table, name, definition))
            for name, definition in s.execute(
                text(
                    "SELECT i.indexname, i.indexdef FROM pg_indexes i "
                    "WHERE i.schemaname = current_schema() AND i.tablename = :t "
                    "AND NOT EXISTS (SELECT 1 FROM pg_constraint c "
                    "WHERE c.conindid = CAST(quote_ident(i.indexname) AS regclass)) "
                    "ORDER BY i.indexname"
                ),
                {"t": table},
            ):
                indexes.append((name, definition))
        for table, name, _ in constraints:
            s.execute(text(f'ALTER TABLE {table} DROP CONSTRAINT "{name}"'))
        for name, _ in indexes:
            s.execute(text(f'DROP INDEX "{name}"'))
        yield
        for _, definition in indexes:
            s.execute(text(definition))
        for table, name, definition in constraints:
            s.execute(text(f'ALTER TABLE {table} ADD CONSTRAINT "{name}" {definition}'))

    def fix_sequences(self, tables: Sequence[str]) -> None:
        """After explicit ids: move each ``id`` sequence past the largest id (PostgreSQL)."""
        if self.dialect != "postgresql":
            return
        for table in tables:
            self.session.execute(
                text(
                    f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), "
                    f"(SELECT max(id) FROM {table}))"
                )
            )


# --------------------------------------------------------------------------- vectorised models


def _exact_counts(n: int, probs: NDArray[np.float64]) -> NDArray[np.int64]:
    """``n * probs`` rounded by largest remainder (the small demo's exact-count labels)."""
    raw = n * probs
    counts = np.floor(raw).astype(np.int64)
    order = np.argsort(-(raw - counts), kind="stable")
    counts[order[: n - int(counts.sum())]] += 1
    return counts


def _jitter_boxes(
    rng: np.random.Generator,
    boxes: NDArray[np.int64],
    sigma: NDArray[np.float64],
    rows: NDArray[np.int64],
    cols: NDArray[np.int64],
) -> NDArray[np.int64]:
    """:func:`quality.demo.labels._jitter_box`, vectorised: boxes ``(n, 4)`` → ``(n, 4)``."""
    x0, y0, x1, y1 = (boxes[:, i].astype(np.float64) for i in range(4))
    w, h = x1 - x0, y1 - y0
    d = rng.normal(0.0, 1.0, (len(boxes), 4)) * sigma[:, None] * np.stack([w, h, w, h], axis=1)
    nx0, ny0 = np.rint(x0 + d[:, 0]), np.rint(y0 + d[:, 1])
    nx1, ny1 = np.rint(x1 + d[:, 2]), np.rint(y1 + d[:, 3])
    nx0, nx1 = np.clip(nx0, 0, cols - 1), np.clip(nx1, 0, cols)
    ny0, ny1 = np.clip(ny0, 0, rows - 1), np.clip(ny1, 0, rows)
    nx0, nx1 = np.minimum(nx0, nx1), np.maximum(nx0, nx1)
    ny0, ny1 = np.minimum(ny0, ny1), np.maximum(ny0, ny1)
    out = np.stack([nx0, ny0, np.maximum(nx1, nx0 + 1), np.maximum(ny1, ny0 + 1)], axis=1)
    return out.astype(np.int64)


def _random_boxes(
    rng: np.random.Generator, rows: NDArray[np.int64], cols: NDArray[np.int64]
) -> NDArray[np.int64]:
    """:func:`quality.demo.labels._random_box`, vectorised: a box in one lung field."""
    n = len(rows)
    side = rng.uniform(0.04, 0.12, n) * cols
    sign = rng.choice(np.array([-1.0, 1.0]), n)
    cx = cols * (0.5 + sign * rng.uniform(0.12, 0.3, n))
    cy = rows * rng.uniform(0.3, 0.65, n)
    x0 = np.floor(np.maximum(cx - side / 2, 0))
    y0 = np.floor(np.maximum(cy - side / 2, 0))
    x1 = np.floor(np.minimum(x0 + side, cols))
    y1 = np.floor(np.minimum(y0 + side, rows))
    return np.stack([x0, y0, x1, y1], axis=1).astype(np.int64)


def _box_json(boxes: NDArray[np.int64], keep: NDArray[np.bool_]) -> list[str | None]:
    """``"[x0, y0, x1, y1]"`` where ``keep``, else None (JSON null)."""
    out: list[str | None] = [None] * len(boxes)
    for i in np.flatnonzero(keep).tolist():
        b = boxes[i]
        out[i] = f"[{b[0]}, {b[1]}, {b[2]}, {b[3]}]"
    return out


def _sigmoid(x: NDArray[np.float64]) -> NDArray[np.float64]:
    return 1.0 / (1.0 + np.exp(-x))


def _auc(y: NDArray[np.bool_], score: NDArray[np.float64]) -> float | None:
    """Mann-Whitney AUC from mid-ranks (ties count one half)."""
    from scipy.stats import rankdata

    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if not n_pos or not n_neg:
        return None
    ranks = rankdata(score)
    return round(float((ranks[y].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)), 4)


def _stamp(day: NDArray[np.int64], seconds: NDArray[np.int64]) -> NDArray[np.datetime64]:
    """UTC timestamps ``START + day + seconds`` (``datetime64[s]``)."""
    base = np.datetime64(START.isoformat(), "s")
    return base + (day.astype(np.int64) * 86_400 + seconds.astype(np.int64)).astype(
        "timedelta64[s]"
    )


# --------------------------------------------------------------------------- the small demo


_SUBST: Final = {
    "SOPInstanceUID": "sop",
    "StudyInstanceUID": "study",
    "SeriesInstanceUID": "series",
    "StudyDate": "date",
    "SeriesDate": "date",
    "ContentDate": "date",
    "StudyTime": "time",
    "SeriesTime": "stime",
    "ContentTime": "stime",
    "SeriesNumber": "series_number",
    "InstanceNumber": "instance",
    "PatientSex": "sex",
    "PatientAge": "age",
}


def _template(header: dict[str, Any], sop: str, true_hash: str | None) -> str:
    """The header as JSON with ``%(name)s`` slots for what a clone changes."""
    h = dict(header)
    for key, name in _SUBST.items():
        if key in h:
            h[key] = f"@@{name}@@"
    h["_demo"] = {"reused_pixels_of": sop, "pixel_sha256": true_hash}
    s = json.dumps(h).replace("%", "%%")
    for name in set(_SUBST.values()):
        s = s.replace(f'"@@{name}@@"', f"%({name})s")
    return s


@dataclass
class _Pool:
    """The clean chest images of the small demo whose pixels the clones reuse."""

    image_id: NDArray[np.int64]
    sop: list[str]
    uri: list[str]
    label: NDArray[np.int64]  # index into CLASSES
    bbox: NDArray[np.int64]  # (n, 4); -1 where the image has no box
    rows: NDArray[np.int64]
    cols: NDArray[np.int64]
    source: NDArray[np.int64]  # index into SOURCES
    drifted: NDArray[np.bool_]
    true_hash: list[str | None]
    templates: list[str]
    image_cols: dict[str, list[Any]]  # copied Image columns
    series_cols: dict[str, list[Any]]  # copied Series columns
    study_cols: dict[str, list[Any]]  # copied Study columns

    def __len__(self) -> int:
        return len(self.sop)


_IMAGE_COPY: Final = ("sop_class_uid", "transfer_syntax", "n_frames", "bits_stored",
                      "photometric", "spacing_row", "spacing_col", "file_size", "file_mtime")  # fmt: skip
_SERIES_COPY: Final = ("modality", "description", "manufacturer", "model", "kvp", "body_part")


def _load_pool(session: Session, truth: dict[str, Any]) -> _Pool:
    rows = session.execute(
        select(
            Image.id, Image.sop_uid, Image.uri, Image.pixel_sha256, Image.rows, Image.cols,
            Image.header, *[getattr(Image, c) for c in _IMAGE_COPY],
            *[getattr(Series, c) for c in _SERIES_COPY], Study.modality, Study.body_part,
        )
        .join(Series, Series.id == Image.series_id)
        .join(Study, Study.id == Series.study_id)
        .order_by(Image.id)
    ).all()  # fmt: skip
    src_index = {s.name: k for k, s in enumerate(SOURCES)}
    keep = []
    for r in rows:
        info = truth["images"].get(r.sop_uid)
        if (
            info is None or info["kind"] != "chest" or not info["in_dataset"] or info["defects"]
            or not Path(r.uri).is_file()
        ):  # fmt: skip
            continue
        keep.append((r, info))
    n_img = len(_IMAGE_COPY)
    return _Pool(
        image_id=np.array([r.id for r, _ in keep], dtype=np.int64),
        sop=[r.sop_uid for r, _ in keep],
        uri=[r.uri for r, _ in keep],
        label=np.array([CLASSES.index(i["class"]) for _, i in keep], dtype=np.int64),
        bbox=np.array([i["bbox"] or [-1, -1, -1, -1] for _, i in keep], dtype=np.int64).reshape(
            -1, 4
        ),
        rows=np.array([r.rows for r, _ in keep], dtype=np.int64),
        cols=np.array([r.cols for r, _ in keep], dtype=np.int64),
        source=np.array([src_index[i["source"]] for _, i in keep], dtype=np.int64),
        drifted=np.array([bool(i["drifted"]) for _, i in keep], dtype=bool),
        true_hash=[r.pixel_sha256 for r, _ in keep],
        templates=[_template(r.header, r.sop_uid, r.pixel_sha256) for r, _ in keep],
        image_cols={c: [r[7 + k] for r, _ in keep] for k, c in enumerate(_IMAGE_COPY)},
        series_cols={c: [r[7 + n_img + k] for r, _ in keep] for k, c in enumerate(_SERIES_COPY)},
        study_cols={
            "modality": [r[-2] for r, _ in keep],
            "body_part": [r[-1] for r, _ in keep],
        },
    )


# --------------------------------------------------------------------------- the new images


@dataclass
class _Clones:
    """The new patients, studies and images (arrays, one entry per row)."""

    # studies
    st_day: NDArray[np.int64]
    st_secs: NDArray[np.int64]
    st_patient: NDArray[np.int64]
    st_uid: list[str]
    # patients
    pt_source: NDArray[np.int64]
    pt_sex: NDArray[np.str_]
    pt_age: NDArray[np.int64]
    pt_split: NDArray[np.str_]
    pt_key: list[str]
    # images (one series each)
    im_study: NDArray[np.int64]
    im_series_number: NDArray[np.int64]
    im_file: NDArray[np.int64]  # index into the pool
    im_sop: list[str]
    im_series_uid: list[str]
    im_uri: list[str]
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def n_studies(self) -> int:
        return len(self.st_day)

    @property
    def n_images(self) -> int:
        return len(self.im_file)

    @property
    def im_day(self) -> NDArray[np.int64]:
        return self.st_day[self.im_study]

    @property
    def im_source(self) -> NDArray[np.int64]:
        return self.pt_source[self.st_patient[self.im_study]]

    @property
    def im_secs(self) -> NDArray[np.int64]:
        return self.st_secs[self.im_study] + 30 * (self.im_series_number - 1)


def _uid_root(seed: int) -> str:
    tag = int(hashlib.sha256(f"quality-demo-large:{seed}".encode()).hexdigest()[:12], 16)
    return f"1.2.826.0.1.3680043.8.498.{tag + 1}"


def _plan_clones(
    rng: np.random.Generator,
    pool: _Pool,
    n_studies: int,
    n_images: int,
    *,
    seed: int,
    salt: str,
    large_root: Path,
    spec: LargeSpec,
) -> _Clones:
    from quality.dicom import patient_key

    n_two = round(n_studies * spec.two_study_share / (1 + spec.two_study_share))
    n_pat = n_studies - n_two
    shares = np.array([s.patient_share for s in SOURCES])
    pt_source = rng.choice(len(SOURCES), size=n_pat, p=shares / shares.sum())
    pt_sex = rng.choice(np.array(["F", "M"]), size=n_pat)
    pt_age = rng.integers(22, 88, size=n_pat)
    pt_split = rng.choice(np.array(["train", "val", "test"]), size=n_pat, p=[0.7, 0.15, 0.15])
    first = rng.integers(0, N_DAYS_LARGE, size=n_pat)
    first[:n_two] = rng.integers(0, N_DAYS_LARGE - 7, size=n_two)
    second = first[:n_two] + rng.integers(7, N_DAYS_LARGE - first[:n_two])
    st_patient = np.concatenate([np.arange(n_pat), np.arange(n_two)])
    st_day = np.concatenate([first, second])
    st_secs = rng.integers(7 * 3600, 19 * 3600, size=n_studies)
    order = np.lexsort((st_patient, st_secs, st_day))
    st_patient, st_day, st_secs = st_patient[order], st_day[order], st_secs[order]

    # 1-3 images per study, exactly n_images in all.
    d = n_images - 2 * n_studies
    if d >= 0:
        n1 = round(spec.three_view_share * n_studies)
        n3 = n1 + d
    else:
        n3 = round(spec.three_view_share * n_studies)
        n1 = n3 - d
    n2 = n_studies - n1 - n3
    if min(n1, n2, n3) < 0:
        raise QualityError(
            f"{n_images} images do not fit 1-3 per study over {n_studies} studies; "
            "choose another scale"
        )
    per_study = rng.permutation(np.repeat(np.array([1, 2, 3]), [n1, n2, n3]))
    im_study = np.repeat(np.arange(n_studies), per_study)
    starts = np.concatenate([[0], np.cumsum(per_study)[:-1]])
    im_series_number = np.arange(n_images) - starts[im_study] + 1

    # Each image reuses a pool file of its source, drifted or not as its date says.
    im_source = pt_source[st_patient[im_study]]
    drift_src = next(k for k, s in enumerate(SOURCES) if s.name == DRIFT["source"])
    im_drifted = (im_source == drift_src) & (st_day[im_study] >= DRIFT["start_day"])
    im_file = np.empty(n_images, dtype=np.int64)
    for src in range(len(SOURCES)):
        for drifted in (False, True):
            members = np.flatnonzero((im_source == src) & (im_drifted == drifted))
            if not len(members):
                continue
            files = np.flatnonzero((pool.source == src) & (pool.drifted == drifted))
            if not len(files):
                raise QualityError(
                    f"the base demo has no clean chest image of {SOURCES[src].name} "
                    f"({'after' if drifted else 'before'} the drift) to reuse; try another seed"
                )
            im_file[members] = files[rng.integers(0, len(files), size=len(members))]

    root = _uid_root(seed)
    st_uid = [f"{root}.1.{i + 1}" for i in range(n_studies)]
    im_sop = [f"{root}.3.{i + 1}" for i in range(n_images)]
    im_series_uid = [f"{root}.2.{i + 1}" for i in range(n_images)]
    dates = (np.datetime64(START.isoformat(), "D") + st_day[im_study]).astype(str)
    names = [s.name for s in SOURCES]
    im_uri = [
        str(large_root / names[s] / day.replace("-", "") / f"{sop}.dcm")
        for s, day, sop in zip(im_source.tolist(), dates.tolist(), im_sop, strict=True)
    ]
    pt_key = [patient_key(f"DEMOL{seed % 1000:03d}{i + 1:07d}", salt) for i in range(n_pat)]
    return _Clones(
        st_day=st_day, st_secs=st_secs, st_patient=st_patient, st_uid=st_uid,
        pt_source=pt_source, pt_sex=pt_sex, pt_age=pt_age, pt_split=pt_split, pt_key=pt_key,
        im_study=im_study, im_series_number=im_series_number, im_file=im_file, im_sop=im_sop,
        im_series_uid=im_series_uid, im_uri=im_uri,
        extra={"patients": n_pat, "images_per_study": {"1": n1, "2": n2, "3": n3}},
    )  # fmt: skip


def _prepare_large_dir(out: Path) -> Path:
    root = out / LARGE_DIR
    if root.exists():
        if not (root / _MARKER).exists() and any(root.iterdir()):
            raise QualityError(
                f"{root} exists and was not written by `quality demo --size large`; "
                "move it away or choose another --out"
            )
        shutil.rmtree(root)
    root.mkdir(parents=True)
    (root / _MARKER).write_text(
        "hard links of `quality demo --size large`; wiped on the next run\n"
    )
    return root


def _link_files(pool: _Pool, clones: _Clones, progress: _ProgressFn | None) -> None:
    """One hard link per clone to the pool file it reuses."""
    made: set[str] = set()
    n = clones.n_images
    for i, (uri, f) in enumerate(zip(clones.im_uri, clones.im_file.tolist(), strict=True)):
        parent = os.path.dirname(uri)
        if parent not in made:
            os.makedirs(parent, exist_ok=True)
            made.add(parent)
        try:
            os.link(pool.uri[f], uri)
        except OSError as exc:
            raise QualityError(
                f"cannot hard-link {uri} to {pool.uri[f]}: {exc.strerror}; "
                "--out must be one file system"
            ) from exc
        if progress is not None and (i + 1) % 20_000 == 0:
            progress(i + 1, n, "large: files")
    if progress is not None:
        progress(n, n, "large: files")


# --------------------------------------------------------------------------- phases


def _max_id(session: Session, model: Any) -> int:
    return int(session.scalar(select(func.max(model.id))) or 0)


def _count(session: Session, model: Any) -> int:
    return int(session.scalar(select(func.count()).select_from(model)) or 0)


def _insert_images(
    session: Session,
    loader: _Loader,
    pool: _Pool,
    clones: _Clones,
    version_id: int,
    progress: _ProgressFn | None,
) -> NDArray[np.int64]:
    """Studies, series, images, dataset items and copied image-quality rows; image ids."""
    label = "large: images"
    source_ids = dict(session.execute(select(Source.name, Source.id)).all())
    missing = [s.name for s in SOURCES if s.name not in source_ids]
    if missing:
        raise QualityError(f"the base demo has no source row for {', '.join(missing)}")
    n_st, n_im = clones.n_studies, clones.n_images
    st_id = _max_id(session, Study) + 1 + np.arange(n_st)
    se_id = _max_id(session, Series) + 1 + np.arange(n_im)
    im_id = _max_id(session, Image) + 1 + np.arange(n_im)
    first_file = clones.im_file[np.searchsorted(clones.im_study, np.arange(n_st))]
    st_source = clones.pt_source[clones.st_patient]
    total = 2 * n_im + n_st
    loader.load("studies", {
        "id": ("int", st_id),
        "study_uid": ("text", clones.st_uid),
        "patient_key": ("text", [clones.pt_key[p] for p in clones.st_patient.tolist()]),
        "modality": ("text", [pool.study_cols["modality"][f] for f in first_file.tolist()]),
        "body_part": ("text", [pool.study_cols["body_part"][f] for f in first_file.tolist()]),
        "study_date": ("date", np.datetime64(START.isoformat(), "D") + clones.st_day),
        "patient_age_years": ("int", clones.pt_age[clones.st_patient]),
        "patient_sex": ("text", clones.pt_sex[clones.st_patient].tolist()),
        "source_id": ("int", np.array([source_ids[SOURCES[s].name] for s in st_source.tolist()])),
    }, progress=progress, label=label, total=total)  # fmt: skip
    files = clones.im_file.tolist()
    loader.load("series", {
        "id": ("int", se_id),
        "series_uid": ("text", clones.im_series_uid),
        "study_id": ("int", st_id[clones.im_study]),
        "series_number": ("int", clones.im_series_number),
        **{c: ("float" if c == "kvp" else "text", [pool.series_cols[c][f] for f in files])
           for c in _SERIES_COPY},
    }, progress=progress, label=label, done=n_st, total=total)  # fmt: skip

    day, secs = clones.im_day, clones.im_secs
    dates = (np.datetime64(START.isoformat(), "D") + day).astype(str).tolist()
    st_times = clones.st_secs[clones.im_study]
    patient = clones.st_patient[clones.im_study]
    sex = clones.pt_sex[patient].tolist()
    age = clones.pt_age[patient].tolist()
    headers = [
        pool.templates[f] % {
            "sop": f'"{sop}"', "study": f'"{clones.st_uid[s]}"', "series": f'"{ser}"',
            "date": f'"{d.replace("-", "")}"', "time": f'"{_hhmmss(t0)}"',
            "stime": f'"{_hhmmss(t1)}"', "series_number": str(sn), "instance": "1",
            "sex": f'"{sx}"', "age": f'"{ag:03d}Y"',
        }
        for f, sop, s, ser, d, t0, t1, sn, sx, ag in zip(
            files, clones.im_sop, clones.im_study.tolist(), clones.im_series_uid, dates,
            st_times.tolist(), secs.tolist(), clones.im_series_number.tolist(), sex, age,
            strict=True,
        )
    ]  # fmt: skip
    surrogate = [
        hashlib.sha256(f"{pool.true_hash[f]}:{sop}".encode()).hexdigest()
        for f, sop in zip(files, clones.im_sop, strict=True)
    ]
    copy_types = {"n_frames": "int", "bits_stored": "int", "file_size": "int",
                  "spacing_row": "float", "spacing_col": "float", "file_mtime": "float"}  # fmt: skip
    loader.load("images", {
        "id": ("int", im_id),
        "sop_uid": ("text", clones.im_sop),
        "series_id": ("int", se_id),
        "uri": ("text", clones.im_uri),
        "pixel_sha256": ("text", surrogate),
        "instance_number": ("int", np.ones(n_im, dtype=np.int64)),
        "rows": ("int", pool.rows[clones.im_file]),
        "cols": ("int", pool.cols[clones.im_file]),
        **{c: (copy_types.get(c, "text"), [pool.image_cols[c][f] for f in files])
           for c in _IMAGE_COPY},
        "header": ("json", headers),
    }, progress=progress, label=label, done=n_st + n_im, total=total)  # fmt: skip
    del headers
    loader.fix_sequences(["studies", "series", "images"])

    loader.load("dataset_items", {
        "version_id": ("int", np.full(n_im, version_id, dtype=np.int64)),
        "image_id": ("int", im_id),
        "split": ("text", clones.pt_split[patient].tolist()),
    })  # fmt: skip
    _copy_image_quality(session, loader, im_id, pool.image_id[clones.im_file])
    return im_id


def _hhmmss(seconds: int) -> str:
    return f"{seconds // 3600:02d}{seconds // 60 % 60:02d}{seconds % 60:02d}"


def _copy_image_quality(
    session: Session, loader: _Loader, image_ids: NDArray[np.int64], source_ids: NDArray[np.int64]
) -> None:
    """Each clone gets a copy of its original's ``image_quality`` rows, in SQL."""
    session.execute(text("CREATE TEMP TABLE large_clone_src (image_id BIGINT, src_id BIGINT)"))
    loader.load("large_clone_src", {"image_id": ("int", image_ids), "src_id": ("int", source_ids)})
    cols = [
        c.name
        for c in ImageQuality.__table__.columns
        if c.name not in ("id", "image_id", "scored_at")
    ]
    session.execute(
        text(
            f"INSERT INTO image_quality (image_id, {', '.join(cols)}) "
            f"SELECT c.image_id, {', '.join('q.' + c for c in cols)} "
            "FROM large_clone_src c JOIN image_quality q ON q.image_id = c.src_id"
        )
    )
    session.execute(text("DROP TABLE large_clone_src"))


@dataclass
class _Doctors:
    """All annotator profiles: 60 doctors, the fatigued doctor's later self, the experts."""

    codes: list[str]  # one per annotator (doctors then experts)
    kinds: list[str]
    profiles: list[dict[str, Any]]  # per annotator, JSON-ready
    confusion: NDArray[np.float64]  # (n_profiles, 3, 3); the fatigued "after" one is last
    median_s: NDArray[np.float64]
    box_jitter: NDArray[np.float64]
    new_codes: list[str]
    fatigued: int  # annotator index
    after_profile: int  # profile index of the fatigued doctor from FATIGUE["from_day"]

    @property
    def doctor_idx(self) -> NDArray[np.int64]:
        return np.array([i for i, k in enumerate(self.kinds) if k == "doctor"], dtype=np.int64)

    @property
    def expert_idx(self) -> NDArray[np.int64]:
        return np.array([i for i, k in enumerate(self.kinds) if k == "expert"], dtype=np.int64)


_PROFILE_KEYS: Final = ("code", "kind", "sensitivity", "specificity", "class_accuracy",
                        "fp_opacity_share", "median_duration_s", "box_jitter",
                        "experience_years", "careless", "biased")  # fmt: skip


def _doctors(rng: np.random.Generator, truth: dict[str, Any]) -> _Doctors:
    base = [{k: d[k] for k in _PROFILE_KEYS} for d in truth["doctors"]]
    experts = [{k: d[k] for k in _PROFILE_KEYS} for d in truth["experts"]]
    n_new = N_DOCTORS - len(base)
    taken = {d["code"] for d in base}
    new = []
    k = 0
    while len(new) < n_new:
        k += 1
        code = f"D{len(base) + k:02d}"
        if code in taken:
            continue
        new.append({
            "code": code, "kind": "doctor",
            "sensitivity": round(float(rng.uniform(0.74, 0.96)), 3),
            "specificity": round(float(rng.uniform(0.86, 0.97)), 3),
            "class_accuracy": 0.92, "fp_opacity_share": 0.5,
            "median_duration_s": float(np.round(rng.uniform(16, 40), 1)), "box_jitter": 0.10,
            "experience_years": int(rng.integers(3, 26)), "careless": False, "biased": False,
        })  # fmt: skip
    fatigued_new = int(rng.integers(0, n_new))
    people = [*base, *new, *experts]
    fatigued = len(base) + fatigued_new
    after = {**people[fatigued], **{k: v for k, v in FATIGUE.items() if k != "from_day"}}
    for p in people:
        p["fatigue"] = None
    people[fatigued]["fatigue"] = {"from_date": (START + dt.timedelta(days=FATIGUE["from_day"])).isoformat(),
                                   **{k: v for k, v in FATIGUE.items() if k != "from_day"}}  # fmt: skip
    profiles = [*people, after]

    def conf(p: dict[str, Any]) -> NDArray[np.float64]:
        return confusion_matrix(AnnotatorProfile(**{k: p[k] for k in _PROFILE_KEYS}))

    return _Doctors(
        codes=[p["code"] for p in people],
        kinds=[p["kind"] for p in people],
        profiles=people,
        confusion=np.stack([conf(p) for p in profiles]),
        median_s=np.array([p["median_duration_s"] for p in profiles]),
        box_jitter=np.array([p["box_jitter"] for p in profiles]),
        new_codes=[p["code"] for p in new],
        fatigued=fatigued,
        after_profile=len(profiles) - 1,
    )


@dataclass
class _Pairs:
    """(annotator, image) pairs to label; one ``finding`` and one ``finding-box`` row each."""

    annotator: NDArray[np.int64]  # index into _Doctors.codes
    image_id: NDArray[np.int64]
    truth: NDArray[np.int64]  # true class index
    bbox: NDArray[np.int64]  # (n, 4), -1 without a box
    rows: NDArray[np.int64]
    cols: NDArray[np.int64]
    day: NDArray[np.int64]


def _concat_pairs(parts: Sequence[_Pairs]) -> _Pairs:
    return _Pairs(
        *[np.concatenate([getattr(p, f) for p in parts]) for f in _Pairs.__dataclass_fields__]
    )


def _simulate_annotations(
    rng: np.random.Generator, pairs: _Pairs, docs: _Doctors, task_ids: dict[str, int], n_rows: int
) -> tuple[dict[str, tuple[str, Any]], NDArray[np.int64]]:
    """Annotation rows of ``pairs`` (exact-count labels per profile and class), and the
    realised confusion counts ``(n_annotators, 3, 3)`` of the classification rows."""
    n = len(pairs.annotator)
    profile = pairs.annotator.copy()
    profile[(pairs.annotator == docs.fatigued) & (pairs.day >= FATIGUE["from_day"])] = (
        docs.after_profile
    )
    label = np.empty(n, dtype=np.int64)
    key = profile * 3 + pairs.truth
    order = np.argsort(key, kind="stable")
    groups, starts, counts = np.unique(key[order], return_index=True, return_counts=True)
    for g, s, c in zip(groups.tolist(), starts.tolist(), counts.tolist(), strict=True):
        p, t = divmod(g, 3)
        given = np.repeat(np.arange(3), _exact_counts(c, docs.confusion[p, t]))
        label[order[s : s + c]] = rng.permutation(given)
    realised = np.zeros((len(docs.codes), 3, 3), dtype=np.int64)
    np.add.at(realised, (pairs.annotator, pairs.truth, label), 1)

    secs = rng.integers(8 * 3600, 18 * 3600, size=n)
    created = _stamp(pairs.day, secs)
    dur = rng.lognormal(np.log(docs.median_s[profile]), 0.45)
    dur = np.where(label != 0, dur * 1.3, dur)
    box_dur = dur * 1.6 * rng.uniform(0.9, 1.1, size=n)
    has_true_box = (pairs.truth != 0) & (pairs.bbox[:, 0] >= 0)
    jittered = _jitter_boxes(
        rng, np.where(has_true_box[:, None], pairs.bbox, 0), docs.box_jitter[profile],
        pairs.rows, pairs.cols,
    )  # fmt: skip
    random_box = _random_boxes(rng, pairs.rows, pairs.cols)
    box = np.where(has_true_box[:, None], jittered, random_box)
    box_created = created + (np.rint(dur).astype(np.int64) + 5).astype("timedelta64[s]")

    names = np.array(CLASSES)[label].tolist()
    n_box = n_rows - n  # box rows: every pair's, except one when the total is odd
    box_json = _box_json(box[:n_box], label[:n_box] != 0)
    annotator_ids = pairs.annotator  # mapped to DB ids by the caller
    cols = {
        "task_id": ("int", np.concatenate([np.full(n, task_ids["finding"]),
                                           np.full(n_box, task_ids["finding-box"])])),
        "image_id": ("int", np.concatenate([pairs.image_id, pairs.image_id[:n_box]])),
        "annotator_id": ("int", np.concatenate([annotator_ids, annotator_ids[:n_box]])),
        "label": ("text", names + names[:n_box]),
        "bbox": ("json", [None] * n + box_json),
        "created_at": ("ts", np.concatenate([created, box_created[:n_box]])),
        "duration_s": ("float", np.round(np.concatenate([dur, box_dur[:n_box]]), 2)),
    }  # fmt: skip
    return cols, realised


def _simulate_predictions(
    rng: np.random.Generator,
    version: dict[str, Any],
    chosen: NDArray[np.int64],
    pool: _Pool,
    clones: _Clones,
) -> tuple[dict[str, tuple[str, Any]], dict[str, Any]]:
    """Prediction rows of one version on the clone indices ``chosen`` (the small demo's
    model, vectorised; see :mod:`quality.demo.labels`)."""
    n = len(chosen)
    f = clones.im_file[chosen]
    day = clones.im_day[chosen]
    source = clones.im_source[chosen]
    truth = pool.label[f]
    y = truth != 0
    sep = np.full(n, version["separation"], dtype=np.float64)
    reg = version["regression"]
    if reg is not None:
        reg_src = next(k for k, s in enumerate(SOURCES) if s.name == reg["source"])
        sep[source == reg_src] = reg["separation"]
    logit = sep * (2 * y - 1) + rng.standard_normal(n)
    drifted = pool.drifted[f]
    logit[drifted] += DRIFT["model_logit_shift"]
    score = np.round(_sigmoid(logit), 4)
    latency = np.round(rng.lognormal(np.log(version["latency_ms_median"]), 0.3, size=n), 1)
    created = _stamp(day, clones.im_secs[chosen] + rng.integers(60, 900, size=n))
    draw = rng.random(n)
    rows, cols = pool.rows[f], pool.cols[f]
    has_box = pool.bbox[f, 0] >= 0
    true_box = _jitter_boxes(rng, np.where(has_box[:, None], pool.bbox[f], 0),
                             np.full(n, 0.08), rows, cols)  # fmt: skip
    random_box = _random_boxes(rng, rows, cols)
    empty = np.zeros(n, dtype=bool)
    for w in MISSING_PREDICTIONS:
        if w["version"] == version["version"] and w["kind"] == "empty":
            empty |= (day >= w["start_day"]) & (day <= w["end_day"])
    hit = y & (draw < 0.85) & has_box
    label_idx = np.where(score < 0.5, 0, np.where(hit, truth, 1 + (draw * 2).astype(np.int64) % 2))
    box = np.where(hit[:, None], true_box, random_box)
    labels: list[str | None] = np.array(CLASSES)[label_idx].tolist()
    boxes = _box_json(box, (score >= 0.5) & ~empty)
    scores = score.copy()
    scores[empty] = np.nan
    for i in np.flatnonzero(empty).tolist():
        labels[i] = None
    ok = ~empty
    truth_rec = {
        "n": n,
        "n_empty": int(empty.sum()),
        "auc_new_images": _auc(y[ok], score[ok]),
        "auc_new_images_by_source": {
            SOURCES[s].name: _auc(y[ok & (source == s)], score[ok & (source == s)])
            for s in range(len(SOURCES))
        },
    }
    cols_out = {
        "image_id": ("int", chosen),  # clone index; mapped to DB ids by the caller
        "label": ("text", labels),
        "score": ("float", scores),
        "bbox": ("json", boxes),
        "latency_ms": ("float", latency),
        "created_at": ("ts", created),
    }
    return cols_out, truth_rec


# --------------------------------------------------------------------------- entry point


def _check_scale(scale: float, base: str) -> None:
    if isinstance(scale, bool) or not isinstance(scale, int | float) or not math.isfinite(scale):
        raise QualityError(f"scale must be a positive number, not {scale!r}")
    if base not in MIN_SCALE:
        raise QualityError(f"base must be one of {', '.join(MIN_SCALE)}, not {base!r}")
    if not MIN_SCALE[base] <= scale <= 10:
        raise QualityError(
            f"scale must lie in [{MIN_SCALE[base]}, 10] on the {base} base demo, not {scale}"
        )


def build_large(
    session: Session,
    out: Path,
    *,
    seed: int = 0,
    salt: str,
    scale: float = 1.0,
    workers: int | None = None,
    progress: _ProgressFn | None = None,
    base: str = "small",
    device: str = "cpu",
    refresh_aggregates: bool = True,
) -> DemoSummary:
    """Build the small demo, score it, then scale the DB up to the large demo (module docs).

    Parameters
    ----------
    session : a session on a migrated, empty PostgreSQL or SQLite DB; committed per phase.
    out : output folder: the small demo's files (``out/dicom``), the clones' hard links
        (``out/large``), the embeddings (``out/embeddings``) and ``out/demo_truth.json``.
    seed : random seed; the same seed gives the same DB content and truth.
    salt : PHI salt of the pseudonymous patient keys.
    scale : multiplies every count of :data:`LARGE_SPEC` (doctors and days excepted).
    workers : processes for the small demo's files and ingest (default: all cores).
    progress : called as ``progress(done, total, label)`` per phase.
    base : the demo to scale up, ``small``; ``tiny`` only makes tests faster.
    device : torch device for scoring the small demo's images.
    refresh_aggregates : at the end, call ``quality.db.aggregates.refresh(session)`` (the
        pages' precomputed results); tests turn it off for speed.

    Returns
    -------
    DemoSummary
        Counts of the whole DB; ``extra`` holds the series, doctors, predictions per
        version, reference labels and the seconds per phase.

    Raises
    ------
    QualityError
        A non-empty DB, a DB other than PostgreSQL or SQLite, a scale out of range, or an
        ``out`` folder that is not a demo's.
    """
    from quality.demo import (
        DATASET_NAME,
        MODEL_NAME,
        TRUTH_FILE,
        DemoSummary,
        _check_empty,
        build_demo,
    )
    from quality.imaging.score import score_images

    t0 = time.perf_counter()
    _check_scale(scale, base)
    dialect = session.get_bind().dialect.name
    if dialect not in ("postgresql", "sqlite"):
        raise QualityError(f"the large demo needs PostgreSQL (or SQLite), not {dialect}")
    if not salt:
        raise QualityError("salt must be a non-empty string")
    _check_empty(session)
    out = Path(out).resolve()
    phases: dict[str, float] = {}
    spec = LARGE_SPEC
    target = spec.scaled(scale)

    def lap(name: str, since: float) -> float:
        now = time.perf_counter()
        phases[name] = round(now - since, 2)
        return now

    large_root = _prepare_large_dir(out)  # before the base demo: refuse a foreign folder
    small = build_demo(session, out, seed=seed, size=base, salt=salt, workers=workers,
                       progress=progress)  # fmt: skip
    t = lap("base_demo", t0)
    score_images(session, dataset_id=DATASET_NAME, device=device,
                 embeddings_dir=out / "embeddings", progress=progress)  # fmt: skip
    t = lap("score", t)

    truth = json.loads((out / TRUTH_FILE).read_text())
    rng = np.random.default_rng([seed, 23])
    loader = _Loader(session)
    pool = _load_pool(session, truth)
    n_base_studies, n_base_images = _count(session, Study), _count(session, Image)
    n_studies = target["studies"] - n_base_studies
    n_images = target["images"] - n_base_images
    if n_studies < 1 or n_images < n_studies:
        raise QualityError(f"scale {scale} leaves no room above the {base} demo's rows")
    clones = _plan_clones(rng, pool, n_studies, n_images, seed=seed, salt=salt,
                          large_root=large_root, spec=spec)  # fmt: skip
    _link_files(pool, clones, progress)
    t = lap("plan_and_links", t)

    dataset_id = session.scalar(select(Dataset.id).where(Dataset.name == DATASET_NAME))
    version_id = session.scalar(
        select(DatasetVersion.id).where(DatasetVersion.dataset_id == dataset_id)
    )
    with loader.deferred(["studies", "series", "images", "dataset_items", "image_quality"]):
        im_id = _insert_images(session, loader, pool, clones, int(version_id), progress)
    _update_version(session, int(dataset_id), int(version_id), n_images)
    session.commit()
    t = lap("images", t)

    with loader.deferred(["annotations", "reference_labels"]):
        docs, ann_truth, n_refs = _fill_annotations(
            session, loader, rng, truth, pool, clones, im_id, int(dataset_id), target, progress
        )
    session.commit()
    t = lap("annotations", t)

    with loader.deferred(["predictions"]):
        pred_truth = _fill_predictions(
            session, loader, rng, pool, clones, im_id, MODEL_NAME, target, progress
        )
    session.commit()
    t = lap("predictions", t)

    session.execute(text("ANALYZE"))
    session.commit()
    t = lap("analyze", t)
    refreshed = _refresh_aggregates(session, progress) if refresh_aggregates else None
    session.commit()
    t = lap("aggregates", t)

    counts = {
        "studies": _count(session, Study),
        "series": _count(session, Series),
        "images": _count(session, Image),
        "annotations": _count(session, Annotation),
        "predictions": _count(session, Prediction),
        "reference_labels": _count(session, ReferenceLabel),
        "image_quality": _count(session, ImageQuality),
        "doctors": int(
            session.scalar(
                select(func.count()).select_from(Annotator).where(Annotator.kind == "doctor")
            )
            or 0
        ),
        "predictions_by_version": dict(
            session.execute(
                select(ModelVersion.version, func.count(Prediction.id))
                .join(Prediction, Prediction.model_version_id == ModelVersion.id)
                .group_by(ModelVersion.version)
                .order_by(ModelVersion.version)
            ).all()
        ),
    }
    truth["large"] = _large_truth(
        seed, scale, base, target, counts, clones, pool, docs, ann_truth, pred_truth, n_refs
    )
    truth_path = out / TRUTH_FILE
    truth_path.write_text(json.dumps(truth, indent=1, sort_keys=False) + "\n")
    lap("truth", t)
    if progress is not None:
        progress(1, 1, "large: truth file")
    return DemoSummary(
        files=small.files,
        studies=counts["studies"],
        images=counts["images"],
        annotations=counts["annotations"],
        predictions=counts["predictions"],
        errors=small.errors,
        seconds=time.perf_counter() - t0,
        truth=truth_path,
        extra={
            "size": "large",
            "base": base,
            "scale": scale,
            "series": counts["series"],
            "doctors": counts["doctors"],
            "reference_labels": counts["reference_labels"],
            "image_quality": counts["image_quality"],
            "predictions_by_version": counts["predictions_by_version"],
            "aggregates_refreshed": refreshed is not None,
            "aggregates_seconds": refreshed or {},
            "phase_seconds": phases,
        },
    )


def _update_version(session: Session, dataset_id: int, version_id: int, n_new: int) -> None:
    """The version's content hash over all its items again; the dataset's last update."""
    lines = sorted(
        f"{sop}:{split}"
        for sop, split in session.execute(
            select(Image.sop_uid, DatasetItem.split)
            .join(Image, Image.id == DatasetItem.image_id)
            .where(DatasetItem.version_id == version_id)
        )
    )
    session.execute(
        update(DatasetVersion)
        .where(DatasetVersion.id == version_id)
        .values(
            content_hash=hashlib.sha256("\n".join(lines).encode()).hexdigest(),
            note=f"first release: train/val/test split by patient; {n_new} images added by "
            "the large demo (reused pixels)",
        )
    )
    last = dt.datetime.combine(START, dt.time(18), tzinfo=dt.UTC) + dt.timedelta(days=N_DAYS_LARGE)
    session.execute(update(Dataset).where(Dataset.id == dataset_id).values(updated_at=last))


def _fill_annotations(
    session: Session,
    loader: _Loader,
    rng: np.random.Generator,
    truth: dict[str, Any],
    pool: _Pool,
    clones: _Clones,
    im_id: NDArray[np.int64],
    dataset_id: int,
    target: dict[str, Any],
    progress: _ProgressFn | None,
) -> tuple[_Doctors, dict[str, Any], int]:
    docs = _doctors(rng, truth)
    new = [p for p in docs.profiles if p["code"] in set(docs.new_codes)]
    stmt = insert(Annotator).returning(Annotator.id, sort_by_parameter_order=True)
    list(session.scalars(stmt, [{
        "code": p["code"], "name": f"Demo Doctor {p['code']}", "kind": "doctor",
        "specialty": "radiology", "experience_years": p["experience_years"],
    } for p in new]))  # fmt: skip
    ids = dict(session.execute(select(Annotator.code, Annotator.id)).all())
    db_id = np.array([ids[c] for c in docs.codes], dtype=np.int64)
    task_ids = dict(
        session.execute(
            select(LabelingTask.name, LabelingTask.id).where(LabelingTask.dataset_id == dataset_id)
        ).all()
    )

    # The new doctors take the small demo's exam.
    exam_sops = truth["exam_set"]
    exam_rows = {
        r.sop_uid: r
        for r in session.execute(
            select(Image.sop_uid, Image.id, Image.rows, Image.cols).where(
                Image.sop_uid.in_(exam_sops)
            )
        )
    }
    new_idx = np.array([docs.codes.index(c) for c in docs.new_codes], dtype=np.int64)
    n_exam = len(exam_sops)
    ex_ann = np.repeat(new_idx, n_exam)
    ex_img = np.tile(np.arange(n_exam), len(new_idx))
    ex_info = [truth["images"][s] for s in exam_sops]
    exam = _Pairs(
        annotator=ex_ann,
        image_id=np.array([exam_rows[s].id for s in exam_sops], dtype=np.int64)[ex_img],
        truth=np.array([CLASSES.index(i["class"]) for i in ex_info], dtype=np.int64)[ex_img],
        bbox=np.array([i["bbox"] or [-1] * 4 for i in ex_info], dtype=np.int64).reshape(-1, 4)[
            ex_img
        ],
        rows=np.array([exam_rows[s].rows for s in exam_sops], dtype=np.int64)[ex_img],
        cols=np.array([exam_rows[s].cols for s in exam_sops], dtype=np.int64)[ex_img],
        day=rng.integers(84, 91, size=len(ex_ann)),
    )

    def clone_pairs(annotator: NDArray[np.int64], k: NDArray[np.int64]) -> _Pairs:
        f = clones.im_file[k]
        day = np.minimum(clones.im_day[k] + rng.integers(1, 8, size=len(k)), N_DAYS_LARGE - 1)
        return _Pairs(annotator=annotator, image_id=im_id[k], truth=pool.label[f],
                      bbox=pool.bbox[f], rows=pool.rows[f], cols=pool.cols[f], day=day)  # fmt: skip

    # Experts label a gold share of the new images; their answers are the gold labels.
    n_gold = round(LARGE_SPEC.gold_share * clones.n_images)
    gold = np.sort(rng.choice(clones.n_images, size=n_gold, replace=False))
    experts = docs.expert_idx
    gold_pairs = clone_pairs(np.repeat(experts, n_gold), np.tile(gold, len(experts)))

    # 2-3 distinct doctors per new image, so that the DB holds exactly the target.
    n_base = _count(session, Annotation)
    rest = target["annotations"] - n_base - 2 * (len(exam.annotator) + len(gold_pairs.annotator))
    n_pairs = (rest + 1) // 2
    n_three = n_pairs - 2 * clones.n_images
    if rest < 0 or not 0 <= n_three <= clones.n_images:
        raise QualityError(
            f"{target['annotations']} annotations do not fit 2-3 doctors per new image "
            f"({clones.n_images} images, {n_base} annotations already); choose another scale"
        )
    readers = rng.permutation(np.repeat(np.array([2, 3]), [clones.n_images - n_three, n_three]))
    doctors = docs.doctor_idx
    pick = np.argpartition(rng.random((clones.n_images, len(doctors)), dtype=np.float32), 3,
                           axis=1)[:, :3]  # fmt: skip
    take = np.arange(3)[None, :] < readers[:, None]
    img_k = np.nonzero(take)[0]
    # New images last: when the total is odd, the one box row left out is a doctor's.
    pairs = _concat_pairs([exam, gold_pairs, clone_pairs(doctors[pick[take]], img_k)])
    n_rows = target["annotations"] - n_base
    cols, realised = _simulate_annotations(rng, pairs, docs, task_ids, n_rows)
    cols["annotator_id"] = ("int", db_id[cols["annotator_id"][1]])
    loader.load("annotations", cols, progress=progress, label="large: annotations")

    refs = {
        "task_id": ("int", np.concatenate([np.full(n_gold, task_ids["finding"]),
                                           np.full(n_gold, task_ids["finding-box"])])),
        "image_id": ("int", np.tile(im_id[gold], 2)),
        "kind": ("text", ["gold"] * (2 * n_gold)),
        "label": ("text", np.array(CLASSES)[np.tile(pool.label[clones.im_file[gold]], 2)].tolist()),
        "bbox": ("json", [None] * n_gold + _box_json(
            pool.bbox[clones.im_file[gold]], pool.bbox[clones.im_file[gold], 0] >= 0)),
    }  # fmt: skip
    loader.load("reference_labels", refs)
    ann_truth = {
        "realised": realised,
        "n_pairs": {
            "new_images": int(take.sum()),
            "exam": len(exam.annotator),
            "gold": len(gold_pairs.annotator),
        },
        "three_readers": n_three,
        "gold_images": n_gold,
        "box_rows_left_out": int(2 * len(pairs.annotator) - n_rows),
        "pairs_per_annotator": np.bincount(pairs.annotator, minlength=len(docs.codes)),
    }
    return docs, ann_truth, 2 * n_gold


def _fill_predictions(
    session: Session,
    loader: _Loader,
    rng: np.random.Generator,
    pool: _Pool,
    clones: _Clones,
    im_id: NDArray[np.int64],
    model_name: str,
    target: dict[str, Any],
    progress: _ProgressFn | None,
) -> dict[str, Any]:
    model_id = session.scalar(select(Model.id).where(Model.name == model_name))
    session.execute(insert(ModelVersion), [{
        "model_id": model_id, "version": CANDIDATE_VERSION["version"],
        "status": CANDIDATE_VERSION["status"],
    }])  # fmt: skip
    version_ids = dict(
        session.execute(
            select(ModelVersion.version, ModelVersion.id).where(ModelVersion.model_id == model_id)
        ).all()
    )
    have = dict(
        session.execute(
            select(ModelVersion.version, func.count(Prediction.id))
            .join(Prediction, Prediction.model_version_id == ModelVersion.id)
            .group_by(ModelVersion.version)
        ).all()
    )
    out: dict[str, Any] = {}
    day = clones.im_day
    total = sum(target["predictions"].values())
    done = 0
    for version in (*MODEL_VERSIONS, CANDIDATE_VERSION):
        name = version["version"]
        need = target["predictions"][name] - int(have.get(name, 0))
        eligible = np.ones(clones.n_images, dtype=bool)
        for w in MISSING_PREDICTIONS:
            if w["version"] == name and w["kind"] == "missing":
                eligible &= ~((day >= w["start_day"]) & (day <= w["end_day"]))
        candidates = np.flatnonzero(eligible)
        if not 0 <= need <= len(candidates):
            raise QualityError(
                f"{target['predictions'][name]} predictions of {name} do not fit the "
                f"{len(candidates)} new images it may score; choose another scale"
            )
        chosen = np.sort(rng.choice(candidates, size=need, replace=False))
        cols, rec = _simulate_predictions(rng, version, chosen, pool, clones)
        cols["image_id"] = ("int", im_id[chosen])
        cols["model_version_id"] = ("int", np.full(need, version_ids[name], dtype=np.int64))
        loader.load("predictions", cols, progress=progress, label="large: predictions",
                    done=done, total=total)  # fmt: skip
        done += need
        out[name] = {k: v for k, v in version.items() if k != "version"} | rec
    return out


def _refresh_aggregates(session: Session, progress: _ProgressFn | None) -> dict[str, float]:
    """:func:`quality.db.aggregates.refresh` (the pages' results computed ahead); seconds per
    kind."""
    from quality.db import aggregates

    def each(result: aggregates.RefreshResult) -> None:
        if progress is not None:
            progress(1, 1, f"large: aggregates: {result.kind} {result.key}")

    if progress is not None:
        progress(0, 1, "large: aggregates")
    seconds: dict[str, float] = {}
    for r in aggregates.refresh(session, progress=each):
        seconds[r.kind] = round(seconds.get(r.kind, 0.0) + r.seconds, 2)
    if progress is not None:
        progress(1, 1, "large: aggregates")
    return seconds


def _large_truth(
    seed: int,
    scale: float,
    base: str,
    target: dict[str, Any],
    counts: dict[str, Any],
    clones: _Clones,
    pool: _Pool,
    docs: _Doctors,
    ann: dict[str, Any],
    preds: dict[str, Any],
    n_refs: int,
) -> dict[str, Any]:
    doctors, experts = [], []
    realised = ann["realised"]
    pairs = ann["pairs_per_annotator"]
    for i, p in enumerate(docs.profiles):
        rec = dict(p)
        rec["joined"] = "large" if p["code"] in set(docs.new_codes) else base
        rec["new_pairs"] = int(pairs[i])
        rec["new_confusion"] = realised[i].tolist()
        conf = realised[i]
        n_pos, n_neg = conf[1:].sum(), conf[0].sum()
        rec["new_sensitivity"] = round(float(conf[1:, 1:].sum() / n_pos), 4) if n_pos else None
        rec["new_specificity"] = round(float(conf[0, 0] / n_neg), 4) if n_neg else None
        (doctors if p["kind"] == "doctor" else experts).append(rec)
    careless = [d["code"] for d in doctors if d["careless"]]
    biased = [d["code"] for d in doctors if d["biased"]]
    drift_src = DRIFT["source"]
    return {
        "seed": seed,
        "scale": scale,
        "base": base,
        "spec": {
            "studies": LARGE_SPEC.studies,
            "images": LARGE_SPEC.images,
            "annotations": LARGE_SPEC.annotations,
            "predictions": dict(LARGE_SPEC.predictions),
            "doctors": N_DOCTORS,
            "days": N_DAYS_LARGE,
        },
        "target": target,
        "counts": counts,
        "date_range": {
            "start": START.isoformat(),
            "end": (START + dt.timedelta(days=N_DAYS_LARGE - 1)).isoformat(),
        },
        "new": {
            "studies": clones.n_studies,
            "images": clones.n_images,
            "patients": clones.extra["patients"],
            "images_per_study": clones.extra["images_per_study"],
            "split_by": "patient (train/val/test 0.7/0.15/0.15)",
            "gold_images": ann["gold_images"],
            "reference_labels": n_refs,
            "annotation_pairs": ann["n_pairs"],
            "images_with_three_doctors": ann["three_readers"],
            "box_rows_left_out": ann["box_rows_left_out"],
        },
        "pixel_reuse": {
            "files": "hard links under large/<source>/<YYYYMMDD>/<sop>.dcm to the reused file",
            "pool_size": len(pool),
            "pool": "clean chest images of the base demo in the dataset, same source, "
            "drifted iff the clone is",
            "header_key": "_demo",
            "pixel_sha256": "surrogate sha256(true hash + ':' + SOP UID); true hash in "
            "header _demo.pixel_sha256",
            "image_quality": "copied from the reused image's rows",
        },
        "doctors": doctors,
        "experts": experts,
        "careless_doctors": careless,
        "biased_doctors": biased,
        "fatigued_doctor": docs.codes[docs.fatigued],
        "exam_takers": sorted(d["code"] for d in doctors),
        "drift": {
            "source": drift_src,
            "start_date": (START + dt.timedelta(days=DRIFT["start_day"])).isoformat(),
            "what": ["kvp", "pixel_intensity", "software_version", "model_score"],
            "note": "new images of the source after the date reuse drifted files, before it "
            "undrifted ones; the model logit shift applies to every version",
        },
        "missing_predictions": [
            {
                "version": w["version"],
                "kind": w["kind"],
                "start_date": (START + dt.timedelta(days=w["start_day"])).isoformat(),
                "end_date": (START + dt.timedelta(days=w["end_day"])).isoformat(),
            }
            for w in MISSING_PREDICTIONS
        ],
        "models": {"versions": preds},
    }
