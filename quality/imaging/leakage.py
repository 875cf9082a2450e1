"""Leakage across the train, val and test splits of a dataset version.

A model evaluated on a test split that shares patients, or near-identical images, with its
train split is scored on what it has already seen (Roberts et al. 2021 list this among the
commonest flaws of published chest-imaging models). Two checks:

* :func:`patient_leakage` - patients (``studies.patient_key``) whose images sit in more
  than one split. Pure SQL: ``GROUP BY patient_key HAVING COUNT(DISTINCT split) > 1``, then
  only the members of those patients are fetched.
* :func:`duplicate_leakage` - duplicate clusters (from
  :func:`quality.imaging.duplicates.exact_duplicates` or
  :func:`~quality.imaging.duplicates.near_duplicates`) whose members sit in more than one
  split.
* :func:`leakage_report` - both, in a :class:`LeakageReport`, in the cleanlab style: each
  member row carries ``is_patient_leak_issue`` / ``is_duplicate_leak_issue``.

The splits are those of one dataset version (``dataset_items.split``); a lone
``dataset_id`` means its newest version.

References
----------
.. [1] M. Roberts et al., "Common pitfalls and recommendations for using machine learning
   to detect and prognosticate for COVID-19 using chest radiographs and CT scans", Nature
   Machine Intelligence 3, 199-217 (2021).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pandas as pd
from sqlalchemy import distinct, func, select
from sqlalchemy.orm import Session

from quality.db.queries import _db_errors
from quality.db.schema import DatasetItem, Image, Series, Study
from quality.imaging.duplicates import resolve_version

__all__ = [
    "DUPLICATE_LEAK_COLUMNS",
    "PATIENT_LEAK_COLUMNS",
    "LeakageReport",
    "duplicate_leakage",
    "leakage_report",
    "patient_leakage",
]

PATIENT_LEAK_COLUMNS = [
    "patient_key",
    "splits",
    "n_splits",
    "image_id",
    "sop_uid",
    "study_uid",
    "split",
    "is_patient_leak_issue",
]
DUPLICATE_LEAK_COLUMNS = [
    "cluster_id",
    "splits",
    "n_splits",
    "image_id",
    "sop_uid",
    "kind",
    "split",
    "is_duplicate_leak_issue",
]
_IN_CHUNK = 1000


def _version(session: Session, version_id: int | None, dataset_id: int | None) -> int:
    vid = resolve_version(session, dataset_id=dataset_id, version_id=version_id)
    if vid is None:
        raise ValueError("leakage needs a dataset version: give version_id or dataset_id")
    return vid


def _joined_splits(frame: pd.DataFrame, key: str) -> pd.DataFrame:
    """Add ``splits`` (sorted, comma-joined) and ``n_splits`` per ``key`` group."""
    if frame.empty:
        return frame.assign(splits=pd.Series(dtype=object), n_splits=pd.Series(dtype="int64"))
    per = frame.groupby(key)["split"].agg(lambda s: ",".join(sorted(set(s))))
    frame = frame.assign(splits=frame[key].map(per))
    return frame.assign(n_splits=frame["splits"].str.count(",") + 1)


@_db_errors
def patient_leakage(
    session: Session, version_id: int | None = None, *, dataset_id: int | None = None
) -> pd.DataFrame:
    """Images of patients whose images sit in more than one split of a dataset version.

    ``HAVING COUNT(DISTINCT split) > 1`` over ``dataset_items ⋈ images ⋈ series ⋈ studies``
    grouped by ``patient_key`` finds the patients in SQL; only their rows are fetched.

    Parameters
    ----------
    session : an open session.
    version_id : the dataset version; else ``dataset_id``'s newest version.
    dataset_id : the dataset (used when ``version_id`` is not given).

    Returns
    -------
    pd.DataFrame
        :data:`PATIENT_LEAK_COLUMNS`: ``patient_key`` (pseudonymous), ``splits`` (the
        patient's splits, sorted and comma-joined, e.g. ``"test,train"``), ``n_splits``,
        ``image_id, sop_uid, study_uid, split``, ``is_patient_leak_issue`` (always True);
        one row per image of a leaking patient, ordered by ``patient_key, split,
        image_id``. Empty when no patient leaks.

    Raises
    ------
    ValueError
        Neither argument given, an unknown version, or a dataset without versions.
    """
    vid = _version(session, version_id, dataset_id)
    leaky = (
        select(Study.patient_key)
        .select_from(DatasetItem)
        .join(Image, Image.id == DatasetItem.image_id)
        .join(Series, Series.id == Image.series_id)
        .join(Study, Study.id == Series.study_id)
        .where(DatasetItem.version_id == vid)
        .group_by(Study.patient_key)
        .having(func.count(distinct(DatasetItem.split)) > 1)
        .subquery("leaky_patients")
    )
    stmt = (
        select(
            Study.patient_key,
            Image.id,
            Image.sop_uid,
            Study.study_uid,
            DatasetItem.split,
        )
        .select_from(DatasetItem)
        .join(Image, Image.id == DatasetItem.image_id)
        .join(Series, Series.id == Image.series_id)
        .join(Study, Study.id == Series.study_id)
        .join(leaky, leaky.c.patient_key == Study.patient_key)
        .where(DatasetItem.version_id == vid)
        .order_by(Study.patient_key, DatasetItem.split, Image.id)
    )
    rows = pd.DataFrame(
        session.execute(stmt).all(),
        columns=["patient_key", "image_id", "sop_uid", "study_uid", "split"],
    )
    out = _joined_splits(rows, "patient_key").assign(is_patient_leak_issue=True)
    return out.astype({"image_id": "int64", "n_splits": "int64"})[PATIENT_LEAK_COLUMNS]


@_db_errors
def duplicate_leakage(
    session: Session,
    version_id: int | None,
    duplicates: pd.DataFrame,
    *,
    dataset_id: int | None = None,
) -> pd.DataFrame:
    """Duplicate clusters whose members sit in more than one split of a dataset version.

    Parameters
    ----------
    session : an open session.
    version_id : the dataset version; ``None``: ``dataset_id``'s newest version.
    duplicates : clusters with columns ``cluster_id, image_id`` and optionally ``sop_uid``
        and ``kind`` (``exact``/``near``): the output of
        :func:`~quality.imaging.duplicates.exact_duplicates` or
        :func:`~quality.imaging.duplicates.near_duplicates`.
    dataset_id : the dataset (used when ``version_id`` is ``None``).

    Returns
    -------
    pd.DataFrame
        :data:`DUPLICATE_LEAK_COLUMNS`: ``cluster_id, splits`` (comma-joined), ``n_splits``,
        ``image_id, sop_uid, kind`` (``exact`` when the input has no ``kind``), ``split``,
        ``is_duplicate_leak_issue`` (always True); one row per cluster member that is in
        the version, for the clusters spanning two or more splits, ordered by
        ``cluster_id, split, image_id``. Members outside the version are left out.

    Raises
    ------
    ValueError
        ``duplicates`` without ``cluster_id`` or ``image_id``; or no version as in
        :func:`patient_leakage`.
    """
    missing = {"cluster_id", "image_id"} - set(duplicates.columns)
    if missing:
        raise ValueError(f"duplicates is missing column(s) {sorted(missing)}")
    vid = _version(session, version_id, dataset_id)
    ids = sorted({int(i) for i in duplicates["image_id"]})
    parts = []
    for start in range(0, len(ids), _IN_CHUNK):
        stmt = (
            select(DatasetItem.image_id, Image.sop_uid, DatasetItem.split)
            .join(Image, Image.id == DatasetItem.image_id)
            .where(
                DatasetItem.version_id == vid,
                DatasetItem.image_id.in_(ids[start : start + _IN_CHUNK]),
            )
        )
        parts.append(
            pd.DataFrame(session.execute(stmt).all(), columns=["image_id", "sop_uid", "split"])
        )
    splits = (
        pd.concat(parts, ignore_index=True)
        if parts
        else pd.DataFrame(columns=["image_id", "sop_uid", "split"])
    )
    members = duplicates[["cluster_id", "image_id"]].astype("int64")
    members = members.assign(
        kind=duplicates["kind"].to_numpy() if "kind" in duplicates else "exact"
    )
    merged = members.merge(splits.astype({"image_id": "int64"}), on="image_id", how="inner")
    merged = _joined_splits(merged, "cluster_id")
    out = merged[merged["n_splits"] > 1].assign(is_duplicate_leak_issue=True)
    out = out.sort_values(["cluster_id", "split", "image_id"], ignore_index=True)
    return out.astype({"cluster_id": "int64", "n_splits": "int64"})[DUPLICATE_LEAK_COLUMNS]


@dataclass
class LeakageReport:
    """Patient and duplicate leakage of one dataset version.

    Attributes
    ----------
    version_id : the dataset version checked.
    patients : :func:`patient_leakage` rows.
    duplicates : :func:`duplicate_leakage` rows (empty when no clusters were given).
    """

    version_id: int
    patients: pd.DataFrame
    duplicates: pd.DataFrame

    @property
    def n_leaking_patients(self) -> int:
        return int(self.patients["patient_key"].nunique())

    @property
    def n_leaking_clusters(self) -> int:
        return int(self.duplicates["cluster_id"].nunique())

    @property
    def passed(self) -> bool:
        """True when nothing leaks."""
        return self.n_leaking_patients == 0 and self.n_leaking_clusters == 0

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready: counts, and per leak its splits and SOP UIDs (no patient identifiers
        beyond the pseudonymous ``patient_key``)."""
        return {
            "version_id": self.version_id,
            "passed": self.passed,
            "n_leaking_patients": self.n_leaking_patients,
            "n_patient_leak_images": len(self.patients),
            "n_leaking_clusters": self.n_leaking_clusters,
            "n_duplicate_leak_images": len(self.duplicates),
            "patients": [
                {
                    "patient_key": key,
                    "splits": g["splits"].iloc[0].split(","),
                    "sop_uids": g["sop_uid"].tolist(),
                }
                for key, g in self.patients.groupby("patient_key", sort=True)
            ],
            "duplicates": [
                {
                    "cluster_id": int(cid),
                    "splits": g["splits"].iloc[0].split(","),
                    "kinds": sorted(set(g["kind"])),
                    "sop_uids": g["sop_uid"].tolist(),
                }
                for cid, g in self.duplicates.groupby("cluster_id", sort=True)
            ],
        }


def leakage_report(
    session: Session,
    version_id: int | None = None,
    *,
    dataset_id: int | None = None,
    duplicates: pd.DataFrame | None = None,
) -> LeakageReport:
    """Patient leakage and, given duplicate clusters, duplicate leakage, of one version.

    Parameters
    ----------
    session : an open session.
    version_id, dataset_id : as in :func:`patient_leakage`.
    duplicates : clusters as in :func:`duplicate_leakage`; ``None`` skips that check.
    """
    vid = _version(session, version_id, dataset_id)
    patients = patient_leakage(session, vid)
    if duplicates is None:
        dups = pd.DataFrame(columns=DUPLICATE_LEAK_COLUMNS)
    else:
        dups = duplicate_leakage(session, vid, duplicates)
    return LeakageReport(vid, patients, dups)
