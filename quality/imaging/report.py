"""Read side of image quality: what the Image quality page shows, queried in SQL.

Every function takes a :class:`~sqlalchemy.orm.Session`, reads the ``image_quality`` rows of
one **scorer version** (default: the newest, :func:`newest_scorer_version`) joined with
``images``, ``series``, ``studies`` and ``sources``, scoped to the newest version of a dataset
(or to every image when ``dataset_id`` is None), and returns DataFrames. Filters, ordering,
limits and group statistics run in SQL; only the rows shown come back.

Which function fits which need:

* :func:`build_image_quality_report` - the headline: scorer versions, counts, the defect
  table (:class:`ImageQualityReport`; ``is_empty`` when nothing is scored yet);
* :func:`metric_values` / :func:`metric_summary` - one metric per image with its source,
  manufacturer and modality (for box plots), and its ``GROUP BY`` summary;
* :func:`worst_images` - the N lowest quality scores, optionally of one defect type;
* :func:`ood_images` - the images with the highest OOD scores;
* :func:`image_details` - every stored value of one image (the page's click-through);
* :func:`embedding_projection` - a 2-D PCA map of the CNN embeddings (or, where they are
  not stored, of the standardised metrics), with source, defect and OOD columns to colour
  by (:class:`Projection`).

The module imports neither torch nor streamlit: the page loads it on every run.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Literal

import numpy as np
import pandas as pd
from numpy.typing import NDArray
from sqlalchemy import Select, case, func, select
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError
from sqlalchemy.orm import Session

from quality.db.queries import _db_errors, newest_version_id
from quality.db.schema import (
    DatasetItem,
    Image,
    ImageQuality,
    Series,
    Source,
    Study,
)

__all__ = [
    "EMBEDDINGS_ENV",
    "GROUP_COLUMNS",
    "IMAGE_COLUMNS",
    "METRICS",
    "UNKNOWN",
    "ImageQualityReport",
    "Projection",
    "build_image_quality_report",
    "dataset_embeddings",
    "default_embeddings_dir",
    "embedding_projection",
    "image_details",
    "load_embeddings",
    "metric_summary",
    "metric_values",
    "newest_scorer_version",
    "ood_images",
    "scorer_versions",
    "worst_images",
]

METRICS: Final[dict[str, str]] = {
    "sharpness": "Laplacian variance (higher: sharper)",
    "tenengrad": "Tenengrad gradient energy (higher: sharper)",
    "noise_sigma": "Immerkær noise σ (lower: less noise)",
    "snr": "signal-to-noise ratio over the Otsu foreground (higher is better)",
    "cnr": "contrast-to-noise ratio (higher is better)",
    "cjv": "coefficient of joint variation (lower is better)",
    "efc": "entropy focus criterion (lower: sharper, less ghosting)",
    "fber": "foreground-background energy ratio (higher is better)",
    "entropy": "grey-level entropy, bits",
    "dynamic_range": "share of the stored bit range used by the 1-99 % range",
    "clip_low": "share of pixels at the lowest value",
    "clip_high": "share of pixels at the highest value",
    "mean": "mean value",
    "p01": "1st percentile",
    "p99": "99th percentile",
    "border_share": "share of the image in a uniform border (collimation)",
    "quality_score": "CNN quality score, 0 unusable … 1 good",
    "ood_score": "out-of-distribution score (higher: farther from the reference)",
}
"""Numeric ``image_quality`` columns the page can plot, with a one-line meaning."""

GROUP_COLUMNS: Final = ("source", "manufacturer", "modality")
"""Columns a metric distribution can be split by."""

UNKNOWN: Final = "(unknown)"
"""Group label of a missing source, manufacturer or modality."""

IMAGE_COLUMNS: Final = [
    "image_id",
    "sop_uid",
    "uri",
    "source",
    "manufacturer",
    "modality",
    "defect_type",
    "quality_score",
    "ood_score",
    "is_ood",
]
"""Columns of :func:`worst_images` and :func:`ood_images` (then ``split`` when scoped)."""

# Mirrors quality.imaging.score.UNREADABLE; importing score would load torch on every page run.
_UNREADABLE: Final = "unreadable"
_PROJECTION_FEATURES: Final = tuple(m for m in METRICS if m not in ("quality_score", "ood_score"))


# --------------------------------------------------------------------------- scope


@dataclass(frozen=True)
class _Scope:
    """Rows in scope: one scorer version, and a dataset version (None: every image)."""

    scorer_version: str
    version_id: int | None


def _scope(session: Session, dataset_id: int | None, scorer_version: str | None) -> _Scope | None:
    """Resolve the scope; None when there is no scored row to show."""
    version_id = None
    if dataset_id is not None:
        version_id = newest_version_id(session, dataset_id)
        if version_id is None:
            return None
    sv = scorer_version or _newest(session, version_id)
    return None if sv is None else _Scope(sv, version_id)


def _scoped(stmt: Select[Any], scope_version: int | None) -> Select[Any]:
    if scope_version is None:
        return stmt
    return stmt.join(
        DatasetItem,
        (DatasetItem.image_id == ImageQuality.image_id) & (DatasetItem.version_id == scope_version),
    )


def _group_exprs() -> dict[str, Any]:
    return {
        "source": func.coalesce(Source.name, UNKNOWN),
        "manufacturer": func.coalesce(Series.manufacturer, Source.manufacturer, UNKNOWN),
        "modality": func.coalesce(Series.modality, Study.modality, UNKNOWN),
    }


def _joined(stmt: Select[Any], scope: _Scope) -> Select[Any]:
    """``image_quality ⋈ images ⋈ series ⋈ studies ⟕ sources`` of the scope."""
    stmt = (
        stmt.select_from(ImageQuality)
        .join(Image, Image.id == ImageQuality.image_id)
        .join(Series, Series.id == Image.series_id)
        .join(Study, Study.id == Series.study_id)
        .outerjoin(Source, Source.id == Study.source_id)
        .where(ImageQuality.scorer_version == scope.scorer_version)
    )
    return _scoped(stmt, scope.version_id)


def _image_select(scope: _Scope, extra: Iterable[str] = ()) -> Select[Any]:
    groups = _group_exprs()
    cols = [
        ImageQuality.image_id.label("image_id"),
        Image.sop_uid.label("sop_uid"),
        Image.uri.label("uri"),
        *(expr.label(name) for name, expr in groups.items()),
        ImageQuality.defect_type.label("defect_type"),
        ImageQuality.quality_score.label("quality_score"),
        ImageQuality.ood_score.label("ood_score"),
        ImageQuality.is_ood.label("is_ood"),
        *(getattr(ImageQuality, c).label(c) for c in extra),
    ]
    if scope.version_id is not None:
        cols.append(DatasetItem.split.label("split"))
    return _joined(select(*cols), scope)


def _frame(session: Session, stmt: Select[Any]) -> pd.DataFrame:
    # Plain tuples: pandas probes each Row's attributes, 2.5x slower at 10^5 rows.
    rows = [tuple(r) for r in session.execute(stmt)]
    out = pd.DataFrame(rows, columns=list(stmt.selected_columns.keys()))
    if "image_id" in out:
        out["image_id"] = out["image_id"].astype("int64")
    for col in ("quality_score", "ood_score", *METRICS):
        if col in out:
            out[col] = pd.to_numeric(out[col], errors="coerce").astype("float64")
    if "is_ood" in out:
        out["is_ood"] = out["is_ood"].astype("boolean")
    return out


# --------------------------------------------------------------------------- versions


def _newest(session: Session, version_id: int | None) -> str | None:
    stmt = select(ImageQuality.scorer_version)
    stmt = _scoped(stmt, version_id)
    stmt = (
        stmt.group_by(ImageQuality.scorer_version)
        .order_by(func.max(ImageQuality.scored_at).desc(), ImageQuality.scorer_version.desc())
        .limit(1)
    )
    return session.scalar(stmt)


@_db_errors
def newest_scorer_version(session: Session, *, dataset_id: int | None = None) -> str | None:
    """The scorer version scored last in the scope (its newest ``scored_at``), or None."""
    version_id = None
    if dataset_id is not None:
        version_id = newest_version_id(session, dataset_id)
        if version_id is None:
            return None
    return _newest(session, version_id)


@_db_errors
def scorer_versions(session: Session, *, dataset_id: int | None = None) -> pd.DataFrame:
    """Scorer versions with rows in the scope, newest first.

    Returns
    -------
    pd.DataFrame
        ``scorer_version, n_images, n_unreadable, last_scored``; empty when nothing is scored.
    """
    columns = ["scorer_version", "n_images", "n_unreadable", "last_scored"]
    version_id = None
    if dataset_id is not None:
        version_id = newest_version_id(session, dataset_id)
        if version_id is None:
            return pd.DataFrame(columns=columns)
    unreadable = case((ImageQuality.defect_type == _UNREADABLE, 1), else_=0)
    stmt = _scoped(
        select(
            ImageQuality.scorer_version,
            func.count(ImageQuality.id),
            func.sum(unreadable),
            func.max(ImageQuality.scored_at),
        ),
        version_id,
    )
    stmt = stmt.group_by(ImageQuality.scorer_version).order_by(
        func.max(ImageQuality.scored_at).desc(), ImageQuality.scorer_version.desc()
    )
    out = pd.DataFrame(session.execute(stmt).all(), columns=columns)
    return out.astype({"n_images": "int64", "n_unreadable": "int64"})


# --------------------------------------------------------------------------- report


@dataclass
class ImageQualityReport:
    """The headline of one scope: what is scored, and which defects the CNN sees.

    Attributes
    ----------
    dataset_id : the dataset (None: every image in the store).
    version_id : its newest version (None without a dataset).
    scorer_version : the scorer version shown (None: nothing scored in the scope).
    versions : :func:`scorer_versions` of the scope, newest first.
    n_images : rows of ``scorer_version`` in the scope.
    n_unreadable : of which files that could not be decoded.
    n_ood : readable rows flagged ``is_ood``.
    mean_quality : mean CNN quality score (NaN when none).
    defects : ``defect_type, n_images, mean_quality, n_ood``, most frequent first.
    """

    dataset_id: int | None
    version_id: int | None
    scorer_version: str | None
    versions: pd.DataFrame
    n_images: int = 0
    n_unreadable: int = 0
    n_ood: int = 0
    mean_quality: float = float("nan")
    defects: pd.DataFrame = field(
        default_factory=lambda: pd.DataFrame(
            columns=["defect_type", "n_images", "mean_quality", "n_ood"]
        )
    )

    @property
    def is_empty(self) -> bool:
        """True when the scope has no ``image_quality`` row for the scorer version."""
        return self.scorer_version is None or self.n_images == 0

    @property
    def defect_types(self) -> list[str]:
        """The defect types present, most frequent first."""
        return [str(d) for d in self.defects["defect_type"]]


@_db_errors
def build_image_quality_report(
    session: Session, *, dataset_id: int | None = None, scorer_version: str | None = None
) -> ImageQualityReport:
    """Scorer versions, counts and the defect table of a scope (two ``GROUP BY`` queries).

    Parameters
    ----------
    session : an open session.
    dataset_id : the dataset (its newest version); None: every image.
    scorer_version : the scorer version; None: :func:`newest_scorer_version`.
    """
    versions = scorer_versions(session, dataset_id=dataset_id)
    version_id = newest_version_id(session, dataset_id) if dataset_id is not None else None
    scope = _scope(session, dataset_id, scorer_version)
    if scope is None:
        return ImageQualityReport(dataset_id, version_id, None, versions)
    ood = case((ImageQuality.is_ood.is_(True), 1), else_=0)
    defect = func.coalesce(ImageQuality.defect_type, UNKNOWN)
    stmt = _joined(
        select(
            defect.label("defect_type"),
            func.count(ImageQuality.id).label("n_images"),
            func.avg(ImageQuality.quality_score).label("mean_quality"),
            func.sum(ood).label("n_ood"),
        ),
        scope,
    ).group_by(defect)
    defects = pd.DataFrame(
        session.execute(stmt).all(), columns=["defect_type", "n_images", "mean_quality", "n_ood"]
    ).astype({"n_images": "int64", "n_ood": "int64", "mean_quality": "float64"})
    defects = defects.sort_values(["n_images", "defect_type"], ascending=[False, True])
    defects = defects.reset_index(drop=True)
    n = int(defects["n_images"].sum())
    weights = defects["n_images"].where(defects["mean_quality"].notna(), 0)
    mean_quality = (
        float((defects["mean_quality"].fillna(0) * weights).sum() / weights.sum())
        if weights.sum() > 0
        else float("nan")
    )
    unreadable = defects.loc[defects["defect_type"] == _UNREADABLE, "n_images"].sum()
    return ImageQualityReport(
        dataset_id=dataset_id,
        version_id=scope.version_id,
        scorer_version=scope.scorer_version,
        versions=versions,
        n_images=n,
        n_unreadable=int(unreadable),
        n_ood=int(defects["n_ood"].sum()),
        mean_quality=mean_quality,
        defects=defects,
    )


# --------------------------------------------------------------------------- distributions


def _check_metric(metric: str) -> None:
    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r}; valid metrics: {', '.join(METRICS)}")


@_db_errors
def metric_values(
    session: Session,
    metric: str,
    *,
    dataset_id: int | None = None,
    scorer_version: str | None = None,
) -> pd.DataFrame:
    """One metric per image, with the columns to group it by (for box plots).

    Only the metric and the group columns are selected; NULL values (undefined metric,
    unreadable file) are left out in SQL.

    Returns
    -------
    pd.DataFrame
        ``image_id, source, manufacturer, modality, value``, ordered by ``image_id``.

    Raises
    ------
    ValueError
        ``metric`` is not a key of :data:`METRICS` (the message lists them).
    """
    _check_metric(metric)
    columns = ["image_id", *GROUP_COLUMNS, "value"]
    scope = _scope(session, dataset_id, scorer_version)
    if scope is None:
        return pd.DataFrame(columns=columns)
    col = getattr(ImageQuality, metric)
    groups = _group_exprs()
    stmt = _joined(
        select(
            ImageQuality.image_id.label("image_id"),
            *(groups[g].label(g) for g in GROUP_COLUMNS),
            col.label("value"),
        ),
        scope,
    ).where(col.is_not(None))
    out = _frame(session, stmt.order_by(ImageQuality.image_id))
    out["value"] = pd.to_numeric(out["value"], errors="coerce").astype("float64")
    return out


@_db_errors
def metric_summary(
    session: Session,
    metric: str,
    by: Literal["source", "manufacturer", "modality"],
    *,
    dataset_id: int | None = None,
    scorer_version: str | None = None,
) -> pd.DataFrame:
    """``GROUP BY`` summary of one metric: ``group, n, mean, min, max`` (by ``group``).

    Raises
    ------
    ValueError
        Unknown ``metric`` or ``by``.
    """
    _check_metric(metric)
    if by not in GROUP_COLUMNS:
        raise ValueError(f"unknown group {by!r}; valid: {', '.join(GROUP_COLUMNS)}")
    columns = ["group", "n", "mean", "min", "max"]
    scope = _scope(session, dataset_id, scorer_version)
    if scope is None:
        return pd.DataFrame(columns=columns)
    col = getattr(ImageQuality, metric)
    group = _group_exprs()[by]
    stmt = (
        _joined(
            select(
                group.label("group"),
                func.count(col),
                func.avg(col),
                func.min(col),
                func.max(col),
            ),
            scope,
        )
        .group_by(group)
        .order_by(group)
    )
    out = pd.DataFrame(session.execute(stmt).all(), columns=columns)
    return out.astype({"n": "int64", "mean": "float64", "min": "float64", "max": "float64"})


# --------------------------------------------------------------------------- image lists


@_db_errors
def worst_images(
    session: Session,
    *,
    n: int = 12,
    defect: str | None = None,
    dataset_id: int | None = None,
    scorer_version: str | None = None,
) -> pd.DataFrame:
    """The ``n`` images with the lowest quality score (``ORDER BY quality_score LIMIT n``).

    Parameters
    ----------
    n : how many (>= 1).
    defect : only this ``defect_type`` (None: any). Rows without a quality score
        (unreadable files) come last, so ``defect="unreadable"`` lists them.

    Returns
    -------
    pd.DataFrame
        :data:`IMAGE_COLUMNS` (+ ``split`` with a dataset), worst first, ties by image id.
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, not {n}")
    scope = _scope(session, dataset_id, scorer_version)
    if scope is None:
        return pd.DataFrame(columns=IMAGE_COLUMNS)
    stmt = _image_select(scope)
    if defect is not None:
        stmt = stmt.where(ImageQuality.defect_type == defect)
    stmt = stmt.order_by(
        ImageQuality.quality_score.is_(None), ImageQuality.quality_score, ImageQuality.image_id
    ).limit(n)
    return _frame(session, stmt)


@_db_errors
def ood_images(
    session: Session,
    *,
    n: int = 12,
    flagged_only: bool = True,
    dataset_id: int | None = None,
    scorer_version: str | None = None,
) -> pd.DataFrame:
    """The ``n`` images with the highest OOD score (flagged ones only, by default).

    Returns
    -------
    pd.DataFrame
        :data:`IMAGE_COLUMNS` (+ ``split``), highest ``ood_score`` first.
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, not {n}")
    scope = _scope(session, dataset_id, scorer_version)
    if scope is None:
        return pd.DataFrame(columns=IMAGE_COLUMNS)
    stmt = _image_select(scope).where(ImageQuality.ood_score.is_not(None))
    if flagged_only:
        stmt = stmt.where(ImageQuality.is_ood.is_(True))
    stmt = stmt.order_by(ImageQuality.ood_score.desc(), ImageQuality.image_id).limit(n)
    return _frame(session, stmt)


@_db_errors
def image_details(
    session: Session,
    image_id: int,
    *,
    dataset_id: int | None = None,
    scorer_version: str | None = None,
) -> pd.Series:
    """Every stored value of one image's row (empty Series when it has none in the scope)."""
    scope = _scope(session, dataset_id, scorer_version)
    if scope is None:
        return pd.Series(dtype=object)
    extra = [m for m in METRICS if m not in ("quality_score", "ood_score")]
    stmt = _image_select(scope, [*extra, "is_blank", "scorer_version"]).where(
        ImageQuality.image_id == int(image_id)
    )
    out = _frame(session, stmt)
    return out.iloc[0] if not out.empty else pd.Series(dtype=object)


# --------------------------------------------------------------------------- projection


@dataclass
class Projection:
    """A 2-D PCA map of the images of a scope.

    Attributes
    ----------
    points : one row per image: ``image_id, x, y, source, manufacturer, modality,
        defect_type, quality_score, ood_score, ood`` (``"OOD"`` / ``"in-distribution"`` /
        ``"not scored"``).
    features : ``"embedding"`` (the CNN embeddings) or ``"metrics"`` (the standardised
        metrics, when embeddings are not stored for every image), or ``""`` (no points).
    explained : share of the variance on the two axes.
    n_total : readable images in the scope (``points`` may be a sample of them).
    """

    points: pd.DataFrame
    features: str
    explained: tuple[float, float]
    n_total: int


EMBEDDINGS_ENV = "QUALITY_EMBEDDINGS_DIR"
"""Environment variable naming the folder ``quality score`` wrote embeddings to."""


def default_embeddings_dir(url: str) -> str | None:
    """Where the embeddings of the DB at ``url`` are, or None (maps then use metrics).

    ``QUALITY_EMBEDDINGS_DIR`` when set; else, as ``quality score`` defaults, ``embeddings``
    beside a SQLite DB file, when that folder exists.
    """
    env = os.environ.get(EMBEDDINGS_ENV)
    if env:
        return env
    try:
        parsed = make_url(url)
    except ArgumentError:
        return None
    if parsed.get_backend_name() != "sqlite" or not parsed.database:
        return None
    if parsed.database == ":memory:" or parsed.database.startswith("file:"):
        return None
    folder = Path(parsed.database).parent / "embeddings"
    return str(folder) if folder.is_dir() else None


def load_embeddings(
    embeddings_dir: str | Path | None, refs: Mapping[int, str | None]
) -> dict[int, NDArray[np.float32]]:
    """Embeddings by image id, from ``embedding_ref`` values ``"<file>.npz#<row>"``.

    The files are those :func:`quality.imaging.score.score_images` writes under its
    ``embeddings_dir`` (arrays ``image_id`` and ``embedding``). Missing or unreadable files
    and refs are skipped: the caller sees which ids came back.
    """
    out: dict[int, NDArray[np.float32]] = {}
    if embeddings_dir is None:
        return out
    root = Path(embeddings_dir)
    by_file: dict[str, list[tuple[int, int]]] = {}
    for image_id, ref in refs.items():
        if ref and "#" in ref:
            rel, _, row = ref.rpartition("#")
            if row.isdigit():
                by_file.setdefault(rel, []).append((int(image_id), int(row)))
    for rel, wanted in by_file.items():
        try:
            with np.load(root / rel) as npz:
                emb = npz["embedding"]
                for image_id, row in wanted:
                    if row < len(emb):
                        out[image_id] = np.asarray(emb[row], dtype=np.float32)
        except (OSError, KeyError, ValueError):
            continue
    return out


def _metric_features(frame: pd.DataFrame) -> NDArray[np.float64]:
    """Standardised metrics, shape (n, d): ``sign(x)·log1p(|x|)`` (the metrics span many
    orders of magnitude), then z-scores; a missing value becomes the column mean (0)."""
    x = frame[list(_PROJECTION_FEATURES)].apply(pd.to_numeric, errors="coerce")
    x = x.to_numpy(dtype=np.float64)
    x = np.sign(x) * np.log1p(np.abs(x))
    # Columns with fewer than two values (never defined here) carry no spread: drop them.
    x = x[:, (~np.isnan(x)).sum(axis=0) >= 2]
    if x.shape[1] == 0:
        return x
    mu = np.nanmean(x, axis=0)
    sd = np.nanstd(x, axis=0)
    keep = sd > 0
    z = (x[:, keep] - mu[keep]) / sd[keep]
    return np.nan_to_num(z, nan=0.0)


def _pca2(x: NDArray[np.float64]) -> tuple[NDArray[np.float64], tuple[float, float]]:
    """First two principal-component scores of ``x`` (n, d), shape (n, 2), by SVD.

    Signs are fixed so that each component's largest loading is positive, which keeps the
    map from flipping between runs. Fewer than two components leave zeros.
    """
    n = x.shape[0]
    out = np.zeros((n, 2))
    if n < 2 or x.shape[1] == 0:
        return out, (0.0, 0.0)
    xc = x - x.mean(axis=0)
    u, s, vt = np.linalg.svd(xc, full_matrices=False)
    k = min(2, len(s))
    signs = np.sign(vt[np.arange(k), np.abs(vt[:k]).argmax(axis=1)])
    signs[signs == 0] = 1.0
    out[:, :k] = u[:, :k] * s[:k] * signs
    total = float((s**2).sum())
    var = [float(s[i] ** 2 / total) if total > 0 and i < k else 0.0 for i in range(2)]
    return out, (var[0], var[1])


@_db_errors
def dataset_embeddings(
    session: Session,
    *,
    dataset_id: int | None = None,
    scorer_version: str | None = None,
    embeddings_dir: str | Path | None = None,
) -> pd.DataFrame | None:
    """The CNN embeddings of a scope as a frame ``image_id, embedding``, or None.

    This is the ``embeddings`` input of :func:`quality.imaging.duplicates.near_duplicates`,
    which uses it to confirm perceptual-hash pairs by embedding cosine. None when nothing is
    scored or no embedding file can be read (the duplicate scan then runs on hashes alone).
    """
    scope = _scope(session, dataset_id, scorer_version)
    if scope is None or embeddings_dir is None:
        return None
    stmt = _image_select(scope, ["embedding_ref"]).where(ImageQuality.embedding_ref.is_not(None))
    frame = _frame(session, stmt)
    if frame.empty:
        return None
    vectors = load_embeddings(
        embeddings_dir,
        dict(zip(frame["image_id"].astype(int), frame["embedding_ref"], strict=True)),
    )
    if not vectors:
        return None
    ids = sorted(vectors)
    return pd.DataFrame({"image_id": ids, "embedding": [vectors[i] for i in ids]})


def embedding_projection(
    session: Session,
    *,
    dataset_id: int | None = None,
    scorer_version: str | None = None,
    embeddings_dir: str | Path | None = None,
    max_points: int = 5000,
    random_state: int = 0,
) -> Projection:
    """PCA of the readable images of a scope onto two axes (numpy SVD).

    Features are the CNN embeddings when ``embeddings_dir`` holds one for every image in
    the map, else the standardised metrics (:attr:`Projection.features` says which).

    Parameters
    ----------
    embeddings_dir : the folder ``quality score`` wrote embeddings to (None: metrics).
    max_points : above this many images, a seeded random sample of them is mapped.
    random_state : seed of that sample.
    """
    if max_points < 1:
        raise ValueError(f"max_points must be >= 1, not {max_points}")
    cols = [
        "image_id",
        "x",
        "y",
        *GROUP_COLUMNS,
        "defect_type",
        "quality_score",
        "ood_score",
        "ood",
    ]
    empty = Projection(pd.DataFrame(columns=cols), "", (0.0, 0.0), 0)
    scope = _scope(session, dataset_id, scorer_version)
    if scope is None:
        return empty
    stmt = _image_select(scope, [*_PROJECTION_FEATURES, "embedding_ref"]).where(
        ImageQuality.defect_type.is_distinct_from(_UNREADABLE)
    )
    frame = _frame(session, stmt.order_by(ImageQuality.image_id))
    n_total = len(frame)
    if frame.empty:
        return empty
    if n_total > max_points:
        rng = np.random.default_rng(random_state)
        pick = np.sort(rng.choice(n_total, size=max_points, replace=False))
        frame = frame.iloc[pick].reset_index(drop=True)
    refs = dict(zip(frame["image_id"].astype(int), frame["embedding_ref"], strict=True))
    emb = load_embeddings(embeddings_dir, refs)
    if emb and all(i in emb for i in refs):
        x = np.stack([emb[int(i)] for i in frame["image_id"]]).astype(np.float64)
        features = "embedding"
    else:
        x = _metric_features(frame)
        features = "metrics"
    xy, explained = _pca2(x)
    ood = np.where(
        frame["is_ood"].isna(),
        "not scored",
        np.where(frame["is_ood"].fillna(False), "OOD", "in-distribution"),
    )
    points = frame.assign(x=xy[:, 0], y=xy[:, 1], ood=ood)
    points["defect_type"] = points["defect_type"].fillna(UNKNOWN)
    return Projection(points[cols].reset_index(drop=True), features, explained, n_total)
