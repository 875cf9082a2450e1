"""Score images: metrics + CNN → ``image_quality`` rows, locally or on a Dask cluster.

Two entry points:

* :func:`score_uris` is the **pure scoring function**: a list of files in, one dict per file
  out. It touches no database. The local path and every Dask worker run exactly this code
  (the local path only feeds it through a torch ``DataLoader`` with decode workers).
* :func:`score_images` selects the images of a dataset that have no row for the scorer
  version yet (in SQL), scores them, writes the rows in bulk, then fits the dataset's OOD
  reference and writes ``ood_score`` / ``is_ood``.

What the metrics and the CNN see
--------------------------------
Each file is decoded with :func:`quality.dicom.load_pixels`; of a multi-frame image only the
**middle frame** (``n_frames // 2``) is scored.

* **Metrics** (:func:`quality.imaging.metrics.compute_all`) see the *modality values* of that
  frame (after RescaleSlope/Intercept or the Modality LUT, no VOI window), so that clipping,
  dynamic range and noise are measured on what the detector recorded, not on a display
  choice. MONOCHROME1 frames are flipped to the MONOCHROME2 convention,
  ``x' = (2^BitsStored - 1) - x``, so that "bright = attenuating" holds for every source and
  the Otsu foreground is the body; colour images enter as luminance. Frames keep their
  **native resolution** up to :data:`METRIC_MAX_SIZE` on the longer side (larger ones are
  downsampled with antialiasing, aspect kept, :func:`quality.imaging.metrics.to_batch`): an
  upsampled frame would show a fraction of its true noise σ and sharpness (bilinear
  interpolation is a low-pass filter; on the demo a 256² CR's Immerkær σ falls from about 28
  at native size to under 2 at 512²). A batch is split by shape for
  :func:`~quality.imaging.metrics.compute_all`. Scale-dependent metrics (sharpness, noise σ)
  therefore compare within a matrix size; the detection rules use scale-free ratios.
* **The CNN** (:func:`quality.imaging.model.predict`) sees the *display* image,
  :func:`quality.dicom.to_display` (header window or VOI LUT, MONOCHROME1 inverted), as a
  radiologist would. A pixel inversion that contradicts the PhotometricInterpretation is
  therefore visible to the CNN (class ``inverted``) and not to a header check.

Rows, resumability, errors
--------------------------
* One ``image_quality`` row per (image, ``scorer_version``), written with
  ``INSERT ... ON CONFLICT (image_id, scorer_version) DO NOTHING`` (SQLite and PostgreSQL), in
  chunks of ``chunk_size`` images, one commit per chunk. A killed run loses at most the
  chunk in flight; a rerun selects only the images still without a row.
* A file that cannot be read or decoded gets a row with ``defect_type = "unreadable"`` and
  NULL metrics, quality and OOD, so that a rerun does not retry it forever (delete the row
  to retry). The batch goes on. A metric that is undefined for an image (the SNR of a
  constant image) is NULL as well.
* **Embeddings** (``EMBED_DIM`` floats per image) are derived data, not scores: with
  ``embeddings_dir`` they are written as one ``.npz`` per chunk,
  ``<embeddings_dir>/<scorer_version>/<uuid>.npz`` (arrays ``image_id`` and
  ``embedding``), before the chunk's commit; ``embedding_ref`` holds
  ``"<scorer_version>/<uuid>.npz#<row>"``, relative to ``embeddings_dir`` so that the folder
  can move. The DB stays the system of record for every score. An orphan file after a kill
  is harmless.

OOD after scoring
-----------------
For every dataset scored (its newest version), an :class:`~quality.imaging.ood.OODDetector`
(Mahalanobis, 99th percentile) is fitted on its **train** split, on the images that no
quality rule of :func:`detect_defects` flags (the reference describes acceptable
in-distribution images; degraded ones are reported by their own rules and would inflate the
covariance), with gross outliers of the reference dropped (:func:`_robust_fit`). Features are the
embedding ⊕ the metrics (:func:`~quality.imaging.ood.ood_features`) when every readable image
of the version has its embedding (from this run or from ``embeddings_dir``), else the
metrics alone (``ScoreSummary.ood_features`` says which). ``ood_score`` is the detector's
distance divided by its calibrated threshold (so ``is_ood`` is ``ood_score > 1`` on every
dataset, and scores compare across datasets). Then ``ood_score`` and ``is_ood``
are written for every readable row of that version and scorer version, also rows scored in
earlier runs, since the reference changes as the split fills up. An image in several
datasets keeps the values of the dataset fitted last.

Detection rules
---------------
:func:`detect_defects` turns rows into per-defect flags, the rules that
``tests/imaging/test_detection.py`` measures against the demo's truth file. They are
documented there, in :data:`DETECTION_RULES`.
"""

from __future__ import annotations

import logging
import multiprocessing
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import numpy as np
import pandas as pd
import torch
from numpy.typing import NDArray
from sqlalchemy import exists, func, insert, select, update
from sqlalchemy.orm import Session

from quality import dicom
from quality.db.aggregates import refresh_after_write
from quality.db.queries import newest_version_id
from quality.db.schema import Dataset, DatasetItem, Image, ImageQuality
from quality.errors import DicomReadError, ScoreInputError
from quality.imaging import metrics as qm
from quality.imaging import model as qmodel
from quality.imaging.ood import OODDetector, ood_features

__all__ = [
    "DETECTION_RULES",
    "METRIC_MAX_SIZE",
    "NON_MEDICAL_OOD_RATIO",
    "PROJECTION_MODALITIES",
    "SCHEDULER_TIMEOUT_S",
    "UNREADABLE",
    "ScoreInputError",
    "ScoreSummary",
    "detect_defects",
    "score_images",
    "score_uris",
]

log = logging.getLogger(__name__)

ProgressFn = Callable[[int, int, str], None]

METRIC_MAX_SIZE: Final = 1024
"""Longest side the metrics see: larger frames are downsampled (aspect kept), others not."""
UNREADABLE: Final = "unreadable"
"""``defect_type`` of the row of a file that cannot be decoded."""
SCHEDULER_TIMEOUT_S: Final = 10.0
"""Seconds to wait for a Dask scheduler before :class:`ScoreInputError`."""
_IN_CHUNK: Final = 500


# --------------------------------------------------------------------------- pure scoring


@dataclass
class _Decoded:
    uri: str
    values: NDArray[np.float32]  # (H, W) modality values, MONOCHROME2 convention
    display: NDArray[np.uint8]  # (H, W) display image
    bits_stored: int


def _error(uri: str, kind: str, message: str) -> dict[str, Any]:
    return {"uri": uri, "error_kind": kind, "message": message}


def _decode(uri: str) -> _Decoded | dict[str, Any]:
    """Decode the middle frame of one file; an error dict instead of raising."""
    try:
        img = dicom.load_pixels(uri)
        frame = img.n_frames // 2
        values = np.asarray(img.frames[frame], dtype=np.float32)
        bits = int(img.bits_stored) if not img.is_color else 8
        if img.photometric == "MONOCHROME1":
            values = np.float32(2**bits - 1) - values
        display = dicom.to_display(img, frame)
    except DicomReadError as exc:
        return _error(uri, exc.kind, exc.message)
    except (ValueError, TypeError, KeyError, IndexError, OSError, MemoryError) as exc:
        # One bad file must never stop the batch.
        return _error(uri, "decode_error", f"{type(exc).__name__}: {dicom.scrub(str(exc))}")
    if values.ndim != 2 or values.size == 0:
        return _error(uri, "decode_error", f"unexpected frame shape {values.shape}")
    return _Decoded(uri, values, display, bits)


def _metric_shape(h: int, w: int) -> tuple[int, int]:
    scale = min(1.0, METRIC_MAX_SIZE / max(h, w))
    return max(1, round(h * scale)), max(1, round(w * scale))


def _metrics(decoded: Sequence[_Decoded], device: torch.device) -> dict[str, NDArray[Any]]:
    """Metrics of frames of any sizes: one :func:`compute_all` call per (resampled) shape."""
    shapes = [_metric_shape(*d.values.shape) for d in decoded]
    out = {
        k: np.empty(len(decoded), dtype=bool if k == "is_blank" else np.float64)
        for k in qm.METRIC_COLUMNS
    }
    for shape in dict.fromkeys(shapes):
        idx = [i for i, s in enumerate(shapes) if s == shape]
        x = qm.to_batch([decoded[i].values for i in idx], size=shape, device=device)
        bits = torch.tensor([decoded[i].bits_stored for i in idx], device=device)
        for k, v in qm.compute_all(x, bits_stored=bits).items():
            out[k][idx] = v.numpy()
    return out


def _none_if_nan(v: float) -> float | None:
    return None if not np.isfinite(v) else float(v)


def _score_decoded(
    items: Sequence[_Decoded | dict[str, Any]], model: qmodel.IQANet, device: torch.device
) -> list[dict[str, Any]]:
    """Metrics + CNN for one batch of decoded frames; error dicts pass through in place."""
    ok = [(i, it) for i, it in enumerate(items) if isinstance(it, _Decoded)]
    out: list[dict[str, Any]] = [it if isinstance(it, dict) else {} for it in items]
    if not ok:
        return out
    decoded = [it for _, it in ok]
    mets = _metrics(decoded, device)
    pred = qmodel.predict(model, qmodel.preprocess([d.display for d in decoded]))
    for j, (i, d) in enumerate(ok):
        row: dict[str, Any] = {"uri": d.uri}
        for col in qm.METRIC_COLUMNS:
            v = mets[col][j]
            row[col] = bool(v) if col == "is_blank" else _none_if_nan(float(v))
        row["defect_type"] = str(pred["defect_type"][j])
        row["quality_score"] = float(pred["quality"][j])
        row["embedding"] = [float(e) for e in pred["embedding"][j]]
        out[i] = row
    return out


_MODELS: dict[str, qmodel.IQANet] = {}


def _model_for(device: torch.device) -> qmodel.IQANet:
    """The shipped model on ``device``, loaded once per process (Dask workers reuse it)."""
    key = str(device)
    if key not in _MODELS:
        _MODELS[key] = qmodel.load_model(device=device)
    return _MODELS[key]


def _model_device(model: qmodel.IQANet) -> torch.device:
    return next(model.parameters()).device


def score_uris(
    uris: Sequence[str],
    *,
    device: str | torch.device = "auto",
    batch_size: int = 32,
    model: qmodel.IQANet | None = None,
) -> list[dict[str, Any]]:
    """Score files: the pure function run locally and on Dask workers.

    Parameters
    ----------
    uris : local file paths (``images.uri``); a Dask worker must see the same paths.
    device : ``auto``, ``cpu`` or ``cuda`` (:func:`quality.imaging.model.resolve_device`);
        ignored when ``model`` is given (its device is used).
    batch_size : images per metrics / CNN batch.
    model : an :class:`~quality.imaging.model.IQANet`; default: the shipped weights, loaded
        once per process.

    Returns
    -------
    list of dict, in the order of ``uris``. A scored file: ``uri``, the
    :data:`~quality.imaging.metrics.METRIC_COLUMNS` (float or None where undefined,
    ``is_blank`` bool), ``defect_type``, ``quality_score`` and ``embedding`` (list of
    ``EMBED_DIM`` floats). A file that cannot be decoded: ``{"uri", "error_kind",
    "message"}``; it never raises for one bad file.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, not {batch_size}")
    if model is None:
        dev = qmodel.resolve_device(device)
        model = _model_for(dev)
    else:
        dev = _model_device(model)
    model.eval()
    out: list[dict[str, Any]] = []
    for start in range(0, len(uris), batch_size):
        items = [_decode(u) for u in uris[start : start + batch_size]]
        out.extend(_score_decoded(items, model, dev))
    return out


# --------------------------------------------------------------------------- local loader


class _DecodeDataset(torch.utils.data.Dataset):  # type: ignore[type-arg]
    def __init__(self, uris: Sequence[str]) -> None:
        self.uris = list(uris)

    def __len__(self) -> int:
        return len(self.uris)

    def __getitem__(self, i: int) -> _Decoded | dict[str, Any]:
        return _decode(self.uris[i])


def _as_list(batch: list[Any]) -> list[Any]:
    return batch


def _mp_context() -> Any:
    # fork starts fastest, but is unsafe once threads exist (inside Streamlit, Dask, ...).
    methods = multiprocessing.get_all_start_methods()
    if "fork" in methods and threading.active_count() == 1:
        return multiprocessing.get_context("fork")
    return multiprocessing.get_context("forkserver" if "forkserver" in methods else "spawn")


def _local_batches(
    uris: Sequence[str], model: qmodel.IQANet, batch_size: int, workers: int
) -> Iterator[list[dict[str, Any]]]:
    loader = torch.utils.data.DataLoader(
        _DecodeDataset(uris),
        batch_size=batch_size,
        shuffle=False,
        num_workers=workers,
        collate_fn=_as_list,
        multiprocessing_context=_mp_context() if workers > 0 else None,
        prefetch_factor=2 if workers > 0 else None,
    )
    dev = _model_device(model)
    for items in loader:
        yield _score_decoded(items, model, dev)


# --------------------------------------------------------------------------- summary


@dataclass
class ScoreSummary:
    """What one :func:`score_images` run did.

    Attributes
    ----------
    scored : images scored and written in this run (unreadable ones included).
    skipped_existing : images of the selection that already had a row for the version.
    errors : unreadable files written as ``defect_type = "unreadable"`` rows in this run.
    seconds : wall time.
    device : torch device the CNN ran on (``"dask"`` prefix on a cluster).
    scorer_version : the version written.
    ood_flagged : readable rows of the scored datasets with ``is_ood`` true after the refit.
    ood_features : ``"embedding+metrics"``, ``"metrics"`` or ``""`` (no reference fitted).
    error_kinds : count of ``errors`` per kind.
    """

    scored: int = 0
    skipped_existing: int = 0
    errors: int = 0
    seconds: float = 0.0
    device: str = ""
    scorer_version: str = ""
    ood_flagged: int = 0
    ood_features: str = ""
    error_kinds: dict[str, int] = field(default_factory=dict)

    @property
    def images_per_s(self) -> float:
        """Images scored per second of wall time."""
        return self.scored / self.seconds if self.seconds > 0 else 0.0

    def as_dict(self) -> dict[str, Any]:
        """The JSON summary of ``quality score``."""
        return {
            "scored": self.scored,
            "skipped_existing": self.skipped_existing,
            "errors": self.errors,
            "error_kinds": dict(sorted(self.error_kinds.items())),
            "seconds": round(self.seconds, 3),
            "images_per_s": round(self.images_per_s, 2),
            "device": self.device,
            "scorer_version": self.scorer_version,
            "ood_flagged": self.ood_flagged,
            "ood_features": self.ood_features,
        }


# --------------------------------------------------------------------------- DB side


def _chunks(items: Sequence[Any], n: int) -> Iterator[Sequence[Any]]:
    for i in range(0, len(items), n):
        yield items[i : i + n]


def _resolve_dataset(session: Session, dataset: int | str) -> int:
    """Dataset id from an id or a name; :class:`ScoreInputError` listing the valid ones."""
    rows = session.execute(select(Dataset.id, Dataset.name).order_by(Dataset.id)).all()
    key = str(dataset).strip()
    for ds_id, name in rows:
        if str(ds_id) == key or name == key:
            return int(ds_id)
    valid = ", ".join(f"{i} ({n})" for i, n in rows) or "none"
    raise ScoreInputError(f"dataset {dataset!r} does not exist; valid: {valid}")


def _selection(version_id: int | None) -> Any:
    """Select ``Image.id, Image.uri`` of the version (every image when None)."""
    stmt = select(Image.id, Image.uri)
    if version_id is not None:
        stmt = stmt.join(DatasetItem, DatasetItem.image_id == Image.id).where(
            DatasetItem.version_id == version_id
        )
    return stmt


def _missing_images(
    session: Session, version_id: int | None, scorer_version: str
) -> tuple[list[tuple[int, str]], int]:
    """(image id, uri) without a row for ``scorer_version``, and the count of those with one."""
    has_row = exists().where(
        ImageQuality.image_id == Image.id, ImageQuality.scorer_version == scorer_version
    )
    sel = _selection(version_id)
    todo = [(int(i), str(u)) for i, u in session.execute(sel.where(~has_row).order_by(Image.id))]
    done = session.scalar(select(func.count()).select_from(sel.where(has_row).subquery())) or 0
    return todo, int(done)


def _insert_stmt(session: Session) -> Any:
    dialect = session.get_bind().dialect.name
    if dialect == "sqlite":
        from sqlalchemy.dialects.sqlite import insert as sqlite_insert

        return sqlite_insert(ImageQuality).on_conflict_do_nothing(
            index_elements=["image_id", "scorer_version"]
        )
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as pg_insert

        return pg_insert(ImageQuality).on_conflict_do_nothing(
            index_elements=["image_id", "scorer_version"]
        )
    # Other backends: the selection already left out existing rows (one scorer at a time).
    return insert(ImageQuality)


_ROW_FIELDS: Final = (*qm.METRIC_COLUMNS, "defect_type", "quality_score", "embedding_ref")


class _Writer:
    """Writes scored chunks: embeddings file first, then the rows, one commit per chunk."""

    def __init__(
        self,
        session: Session,
        ids: dict[str, int],
        scorer_version: str,
        embeddings_dir: Path | None,
    ) -> None:
        self.session = session
        self.ids = ids
        self.scorer_version = scorer_version
        self.embeddings_dir = embeddings_dir
        self.embeddings: dict[int, NDArray[np.float32]] = {}
        self.scored = 0
        self.errors: Counter[str] = Counter()

    def write(self, results: Sequence[dict[str, Any]]) -> None:
        rows: list[dict[str, Any]] = []
        emb_ids: list[int] = []
        emb_rows: list[NDArray[np.float32]] = []
        for res in results:
            image_id = self.ids[res["uri"]]
            row: dict[str, Any] = dict.fromkeys(_ROW_FIELDS)
            row.update(image_id=image_id, scorer_version=self.scorer_version)
            if "error_kind" in res:
                row["defect_type"] = UNREADABLE
                self.errors[res["error_kind"]] += 1
                log.warning("unreadable image %s: %s", image_id, res["error_kind"])
            else:
                for col in (*qm.METRIC_COLUMNS, "defect_type", "quality_score"):
                    row[col] = res[col]
                emb = np.asarray(res["embedding"], dtype=np.float32)
                self.embeddings[image_id] = emb
                emb_ids.append(image_id)
                emb_rows.append(emb)
            rows.append(row)
        if emb_rows and self.embeddings_dir is not None:
            refs = self._save_embeddings(emb_ids, np.stack(emb_rows))
            for row in rows:
                row["embedding_ref"] = refs.get(row["image_id"])
        if rows:
            self.session.execute(_insert_stmt(self.session), rows)
        self.session.commit()
        self.scored += len(rows)

    def _save_embeddings(self, ids: list[int], emb: NDArray[np.float32]) -> dict[int, str]:
        root = self.embeddings_dir
        if root is None:
            return {}
        rel = f"{self.scorer_version}/{uuid.uuid4().hex}.npz"
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez(path, image_id=np.asarray(ids, dtype=np.int64), embedding=emb)
        return {image_id: f"{rel}#{k}" for k, image_id in enumerate(ids)}


def _load_embeddings(
    embeddings_dir: Path | None, refs: dict[int, str | None]
) -> dict[int, NDArray[np.float32]]:
    """Embeddings by image id from ``embedding_ref`` values; unreadable refs are skipped."""
    out: dict[int, NDArray[np.float32]] = {}
    if embeddings_dir is None:
        return out
    by_file: dict[str, list[tuple[int, int]]] = {}
    for image_id, ref in refs.items():
        if ref and "#" in ref:
            rel, _, row = ref.rpartition("#")
            by_file.setdefault(rel, []).append((image_id, int(row)))
    for rel, wanted in by_file.items():
        try:
            with np.load(embeddings_dir / rel) as npz:
                emb = npz["embedding"]
                for image_id, row in wanted:
                    out[image_id] = emb[row]
        except (OSError, KeyError, ValueError, IndexError) as exc:
            log.warning("cannot read embeddings %s: %s", rel, type(exc).__name__)
    return out


def _robust_fit(features: NDArray[np.float64], max_rounds: int = 3) -> OODDetector:
    """Fit the reference, dropping gross outliers of its own out-of-sample scores.

    A reference of real train images holds a few that no quality rule catches (a test
    object, a photograph): they inflate the covariance and sit at the top of the calibration
    scores, which lifts the 99th-percentile threshold above every OOD image. Points whose
    cross-fitted score exceeds ``median + 6 * 1.4826 * MAD`` are dropped and the detector is
    refitted, at most ``max_rounds`` times.
    """
    det = OODDetector(method="mahalanobis", percentile=99.0).fit(features)
    for _ in range(max_rounds):
        s = det.reference_scores_
        med = float(np.median(s))
        cut = med + 6.0 * 1.4826 * float(np.median(np.abs(s - med)))
        keep = s <= cut
        if keep.all():
            break
        features = features[keep]
        det = OODDetector(method="mahalanobis", percentile=99.0).fit(features)
    return det


def _refit_ood(
    session: Session,
    version_id: int,
    scorer_version: str,
    embeddings_dir: Path | None,
    fresh: dict[int, NDArray[np.float32]],
) -> tuple[int, str]:
    """Fit the version's OOD reference and write ``ood_score``/``is_ood``; (flagged, features)."""
    cols = [getattr(ImageQuality, c) for c in qm.METRIC_COLUMNS]
    stmt = (
        select(
            ImageQuality.id,
            ImageQuality.image_id,
            DatasetItem.split,
            ImageQuality.defect_type,
            ImageQuality.embedding_ref,
            *cols,
        )
        .join(DatasetItem, DatasetItem.image_id == ImageQuality.image_id)
        .where(
            DatasetItem.version_id == version_id,
            ImageQuality.scorer_version == scorer_version,
            ImageQuality.defect_type.is_distinct_from(UNREADABLE),
        )
        # By image, not by row id: the cross-fitting folds must not depend on the order in
        # which chunks were written (Dask completes them in any order).
        .order_by(ImageQuality.image_id)
    )
    frame = pd.DataFrame(session.execute(stmt).all(), columns=list(stmt.selected_columns.keys()))
    if frame.empty:
        return 0, ""
    need = {int(i): r for i, r in zip(frame["image_id"], frame["embedding_ref"], strict=True)}
    emb = dict(fresh)
    missing = {i: r for i, r in need.items() if i not in emb}
    emb.update(_load_embeddings(embeddings_dir, missing))
    if all(i in emb for i in need):
        feats = ood_features(np.stack([emb[int(i)] for i in frame["image_id"]]), frame)
        kind = "embedding+metrics"
    else:
        log.warning("embeddings missing for some images: OOD on metrics alone")
        feats = ood_features(None, frame)
        kind = "metrics"
    train = (frame["split"] == "train").to_numpy()
    flagged = detect_defects(frame.assign(is_ood=False)).any(axis=1).to_numpy()
    try:
        det = _robust_fit(feats[train & ~flagged])
    except ValueError as exc:
        log.warning("no OOD reference for dataset version %s: %s", version_id, exc)
        return 0, ""
    # In units of the calibrated threshold: is_ood <=> ood_score > 1, on every dataset.
    scores = det.score(feats) / det.threshold_
    flags = scores > 1.0
    updates = [
        {"id": int(i), "ood_score": float(s), "is_ood": bool(f)}
        for i, s, f in zip(frame["id"], scores, flags, strict=True)
    ]
    for chunk in _chunks(updates, _IN_CHUNK):
        session.execute(update(ImageQuality), list(chunk))
    session.commit()
    return int(flags.sum()), kind


# --------------------------------------------------------------------------- Dask


def _dask_results(
    scheduler: str,
    uris: Sequence[str],
    *,
    chunk_size: int,
    device: str,
    batch_size: int,
    model: qmodel.IQANet | None,
) -> Iterator[list[dict[str, Any]]]:
    """Chunks of results from :func:`score_uris` on a Dask cluster, as they complete."""
    from distributed import Client, as_completed

    try:
        client = Client(scheduler, timeout=SCHEDULER_TIMEOUT_S)
    except (OSError, TimeoutError, ValueError) as exc:
        raise ScoreInputError(
            f"cannot reach the Dask scheduler at {scheduler}: {type(exc).__name__}: {exc}"
        ) from exc
    try:
        kwargs: dict[str, Any] = {"device": device, "batch_size": batch_size}
        if model is not None:
            kwargs["model"] = client.scatter(model.cpu(), broadcast=True)
        futures = [
            client.submit(score_uris, list(chunk), pure=False, **kwargs)
            for chunk in _chunks(uris, chunk_size)
        ]
        # Results are written as they complete, so the first rows land while the cluster
        # still works on the rest; a finished chunk's future is dropped to free its memory.
        for fut in as_completed(futures):
            yield fut.result()
            fut.release()
    finally:
        client.close()


# --------------------------------------------------------------------------- entry point


def score_images(
    session: Session,
    *,
    dataset_id: int | str | None = None,
    device: str = "auto",
    batch_size: int = 32,
    workers: int = 0,
    scheduler: str | None = None,
    progress: ProgressFn | None = None,
    scorer_version: str = qmodel.SCORER_VERSION,
    chunk_size: int = 256,
    embeddings_dir: str | Path | None = None,
    model: qmodel.IQANet | None = None,
) -> ScoreSummary:
    """Score the images that have no ``image_quality`` row for ``scorer_version`` yet.

    Parameters
    ----------
    session : an open session; committed once per chunk.
    dataset_id : a dataset id or name: the images of its newest version. None: every image
        in the DB (the OOD reference is then fitted for every dataset).
    device : torch device for metrics and CNN (``auto``, ``cpu``, ``cuda``); on a cluster,
        resolved by each worker.
    batch_size : images per metrics / CNN batch.
    workers : decode processes of the local ``DataLoader`` (0: decode in this process).
    scheduler : ``tcp://HOST:PORT`` of a Dask scheduler: :func:`score_uris` runs on its
        workers over chunks of ``chunk_size`` URIs, reading the store directly; this process
        only writes rows.
    progress : called as ``progress(done, total, "score")`` after each written chunk.
    scorer_version : value of ``image_quality.scorer_version``.
    chunk_size : images per commit (and per Dask task).
    embeddings_dir : folder for the embedding files (see the module docstring); None: not
        stored (the OOD refit then uses metrics alone unless every image was scored in
        this run).
    model : an :class:`~quality.imaging.model.IQANet` to use instead of the shipped weights.

    Returns
    -------
    ScoreSummary

    Raises
    ------
    ScoreInputError
        Unknown dataset, dataset without a version, bad sizes, or unreachable scheduler.
    """
    t0 = time.perf_counter()
    if batch_size < 1 or chunk_size < 1 or workers < 0:
        raise ScoreInputError(
            "batch_size and chunk_size must be >= 1 and workers >= 0, "
            f"not {batch_size}, {chunk_size}, {workers}"
        )
    emb_dir = Path(embeddings_dir) if embeddings_dir is not None else None
    if dataset_id is None:
        version_ids = [
            v
            for ds in session.scalars(select(Dataset.id).order_by(Dataset.id))
            if (v := newest_version_id(session, ds)) is not None
        ]
        selection: int | None = None
    else:
        ds = _resolve_dataset(session, dataset_id)
        vid = newest_version_id(session, ds)
        if vid is None:
            raise ScoreInputError(f"dataset {dataset_id!r} has no version yet")
        version_ids, selection = [vid], vid
    todo, existing = _missing_images(session, selection, scorer_version)
    summary = ScoreSummary(skipped_existing=existing, scorer_version=scorer_version)
    ids = {uri: image_id for image_id, uri in todo}
    uris = [uri for _, uri in todo]
    writer = _Writer(session, ids, scorer_version, emb_dir)
    total = len(uris)
    if progress is not None:
        progress(0, total, "score")

    if uris:
        if scheduler is not None:
            summary.device = f"dask:{device}"
            results: Iterable[list[dict[str, Any]]] = _dask_results(
                scheduler,
                uris,
                chunk_size=chunk_size,
                device=device,
                batch_size=batch_size,
                model=model,
            )
        else:
            try:
                dev = qmodel.resolve_device(device)
            except ValueError as exc:
                raise ScoreInputError(str(exc)) from exc
            net = model.to(dev) if model is not None else _model_for(dev)
            net.eval()
            summary.device = str(dev)
            results = _rechunk(_local_batches(uris, net, batch_size, workers), chunk_size)
        for chunk in results:
            writer.write(chunk)
            if progress is not None:
                progress(writer.scored, total, "score")
    elif scheduler is not None:
        summary.device = f"dask:{device}"

    summary.scored = writer.scored
    summary.errors = sum(writer.errors.values())
    summary.error_kinds = dict(writer.errors)
    kinds: set[str] = set()
    for vid in version_ids:
        flagged, kind = _refit_ood(session, vid, scorer_version, emb_dir, writer.embeddings)
        summary.ood_flagged += flagged
        if kind:
            kinds.add(kind)
    summary.ood_features = "metrics" if "metrics" in kinds else next(iter(kinds), "")
    summary.seconds = time.perf_counter() - t0
    refresh_after_write(session)  # the pages' heavy results, computed ahead
    return summary


def _rechunk(batches: Iterable[list[dict[str, Any]]], size: int) -> Iterator[list[dict[str, Any]]]:
    buf: list[dict[str, Any]] = []
    for b in batches:
        buf.extend(b)
        while len(buf) >= size:
            yield buf[:size]
            buf = buf[size:]
    if buf:
        yield buf


# --------------------------------------------------------------------------- detection


CLIP_HIGH_MAX: Final = 0.05
"""Over-exposure: more than this share of pixels at the top value (clean demo ≤ 5e-5)."""
DYNAMIC_RANGE_MIN: Final = 0.3
"""Under-exposure: the 1-99 % range uses less than this share of ``2^BitsStored``."""
NOISE_RATIO_MAX: Final = 0.03
"""Noise: Immerkær σ above this share of the 1-99 % range (clean demo ≤ 0.011)."""
SHARPNESS_RATIO_MIN: Final = 1e-4
"""Blur: Laplacian variance below this share of the squared 1-99 % range (clean ≥ 2e-3)."""
BRIGHT_SHARE_MAX: Final = 0.5
"""Inversion: the mean above this point of the 1-99 % range (a radiograph is mostly dark)."""

NON_MEDICAL_OOD_RATIO: Final = 3.0
"""Not a medical image: ``ood_score`` (in units of the 99th-percentile threshold) above this.

``is_ood`` (ratio > 1) is a *review* flag that fires on about 1 % of clean images by design;
a test object or a photograph is several times further (demo: 6-17 times, clean images at
most 1.5 times)."""
PROJECTION_MODALITIES: Final = frozenset({"CR", "DX", "MG", "RF", "XA", "IO", "PX"})
"""Modalities whose exposure and inversion rules apply (radiographs; not CT's HU, not OT)."""

DETECTION_RULES: Final[dict[str, str]] = {
    "blank": "is_blank",
    "over_exposure": f"projection, not blank and clip_high > {CLIP_HIGH_MAX}",
    "under_exposure": f"projection, not blank and dynamic_range < {DYNAMIC_RANGE_MIN}",
    "noise": f"not blank and noise_sigma / (p99 - p01) > {NOISE_RATIO_MAX}",
    "blur": f"not blank and sharpness / (p99 - p01)^2 < {SHARPNESS_RATIO_MIN}",
    "inverted_photometric": (
        "projection, not blank, not over-exposed and "
        f"(mean - p01) / (p99 - p01) > {BRIGHT_SHARE_MAX}"
    ),
    "non_medical": f"is_ood, ood_score > {NON_MEDICAL_OOD_RATIO} and none of the rules above",
    "unreadable": f"defect_type == {UNREADABLE!r}",
}
"""Detection rule per defect on an ``image_quality`` row (:func:`detect_defects`).

The image-level rules are scale-free ratios of the stored metrics, so that they hold for any
gain, bit depth and matrix size; they describe projection radiographs in the MONOCHROME2
convention the metrics see: with a ``modality`` column, the exposure and inversion rules
("projection") fire only for :data:`PROJECTION_MODALITIES` or an unknown modality (a CT's
HU range is not an exposure, a photograph has no body). Thresholds sit between the clean and the degraded demo images with at
least a factor 3 of margin on each side (see the constants). ``non_medical`` is the OOD flag
of an image that no quality rule explains: a degraded chest image is far from the reference
too, but it is reported as what it is. The CNN's ``defect_type`` is stored beside, not used
here: the metrics rules are exact on the physical defects, and the CNN adds the classes
metrics cannot see (cropping, artifacts).
"""


def detect_defects(rows: pd.DataFrame) -> pd.DataFrame:
    """Per-defect flags of ``image_quality`` rows, by :data:`DETECTION_RULES`.

    Parameters
    ----------
    rows : DataFrame with the ``image_quality`` columns (the metrics, ``defect_type`` and,
        for ``non_medical``, ``is_ood``; a missing ``is_ood`` counts as false), and
        optionally ``modality`` (see :data:`DETECTION_RULES`).

    Returns
    -------
    DataFrame of bools, same index, one column per key of :data:`DETECTION_RULES`.
    Undefined metrics (NULL) never fire a rule.
    """

    def num(col: str) -> pd.Series:
        return pd.to_numeric(rows[col], errors="coerce").astype("float64")

    def flag(col: str) -> pd.Series:
        if col not in rows:
            return pd.Series(False, index=rows.index)
        return rows[col].astype("boolean").fillna(False).astype(bool)

    if "modality" in rows:
        mod = rows["modality"].astype("string").str.upper()
        projection = (mod.isna() | mod.isin(PROJECTION_MODALITIES)).fillna(True).astype(bool)
    else:
        projection = pd.Series(True, index=rows.index)
    span = num("p99") - num("p01")
    span = span.where(span > 0)
    blank = flag("is_blank")
    with np.errstate(divide="ignore", invalid="ignore"):
        radio = ~blank & projection
        over = radio & (num("clip_high") > CLIP_HIGH_MAX)
        out = {
            "blank": blank,
            "over_exposure": over,
            "under_exposure": radio & (num("dynamic_range") < DYNAMIC_RANGE_MIN),
            "noise": ~blank & (num("noise_sigma") / span > NOISE_RATIO_MAX),
            "blur": ~blank & (num("sharpness") / span**2 < SHARPNESS_RATIO_MIN),
            "inverted_photometric": radio
            & ~over
            & ((num("mean") - num("p01")) / span > BRIGHT_SHARE_MAX),
        }
    quality = pd.concat(out, axis=1).any(axis=1)
    if "ood_score" in rows:
        gross = num("ood_score") > NON_MEDICAL_OOD_RATIO
    else:
        gross = pd.Series(False, index=rows.index)
    out["non_medical"] = flag("is_ood") & gross & ~quality
    out["unreadable"] = rows["defect_type"].astype("string").fillna("").eq(UNREADABLE)
    return pd.DataFrame(out, index=rows.index).fillna(False).astype(bool)
