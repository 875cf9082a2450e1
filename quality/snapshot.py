"""Dataset versions: immutable snapshots with a content hash, frozen labels, and diffs.

A dataset (``datasets``) is a data product; each of its versions (``dataset_versions``) is
an immutable list of images with their train/val/test split (``dataset_items``) and, for
versions made here, the image-level class of each item per classification task, frozen at
snapshot time (``version_labels``). Rows of an existing version are never updated or
deleted: a change of content is a new version.

Which function for which need
-----------------------------
- :func:`snapshot`: freeze the working set of a dataset as a new version (``v2``, ``v3``,
  …), or report that nothing changed (``quality dataset snapshot``).
- :func:`diff_versions`: what changed between two versions: images added and removed, split
  moves, class balance, label changes, counts per source (the card's "Changes since vX").
- :func:`list_versions` / :func:`resolve_version`: the versions of a dataset, for pickers
  and for the CLI's ``--version``.
- :func:`consensus_labels` / :func:`class_counts`: the image-level class of each item of a
  version, and the class balance per split; shared with :mod:`quality.card`.
- :func:`content_hash`: the hash of a version's working set (documented below).

Working set
-----------
The working set of a snapshot is the items of the dataset's newest version
(:func:`quality.db.queries.newest_version_id`) with their splits. With ``add_new=True`` it
also takes in every image that is in no version of the dataset yet; each gets the split of
its patient (``studies.patient_key``) where the patient already has images in the newest
version (the patient's most frequent split; ties go to the first of
:data:`~quality.db.schema.SPLITS`), else a split drawn deterministically from the patient
key: with :math:`u = \\mathrm{int}(\\mathrm{sha256}(key)_{[0:8]}) / 2^{64} \\in [0, 1)`, the
first split whose cumulative share of the newest version's images exceeds :math:`u` (shares
:data:`DEFAULT_SPLIT_SHARES` for a dataset without images). All images of one patient
therefore land in one split, and a rerun assigns the same splits.

Content hash
------------
``sha256`` over UTF-8 text: the line :data:`HASH_SCHEME`, then one line per record, sorted
(code-point order, so identical on SQLite and PostgreSQL), each a compact JSON array
(``json.dumps(..., separators=(",", ":"), ensure_ascii=False)``) and ended by ``"\\n"``:

- ``["item", sop_uid, split, pixel_sha256]`` for each image of the working set;
- ``["annotation", task, sop_uid, annotator_code, label, bbox, mask_sha256]`` for each
  annotation of one of the dataset's labeling tasks on an image of the working set;
- ``["reference", task, kind, sop_uid, label, bbox, mask_sha256]`` for each reference
  label (``gold``/``exam``) of those tasks on those images,

where ``task`` is the task's name, ``bbox`` the stored JSON list (or null) and
``mask_sha256`` the hex sha256 of the compressed mask bytes (or null). Surrogate ids,
timestamps and durations are left out, so the hash says what a consumer of the version
gets: the same images (pixels included), the same splits and the same labels. A relabel, a
new annotation, a split move or a re-sent image with new pixels changes it.

**Difference from the demo's v1.** ``quality demo`` hashes its ``v1`` as
``sha256("\\n".join(sorted(f"{sop_uid}:{split}")))``: items and splits only, no pixels and
no labels. The two schemes never give equal hashes, so the first snapshot of a demo
database always makes a ``v2`` (with the same items as ``v1``), which also pins the pixels
and labels; from then on an unchanged working set is reported as unchanged.

Frozen labels
-------------
For each classification task of the dataset and each item: the newest ``gold`` reference
label (basis ``gold``); else the most frequent of the annotators' newest labels (one vote
per annotator; labels outside the task's classes do not vote), basis ``majority``; a tied
top count gives label NULL, basis ``tie``. Items without a usable label get no row (they
count as unlabelled). Versions made before label freezing (``labels_frozen`` false, as the
demo's ``v1``) are read with the *current* labels instead, and say so.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import re
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, Final

import pandas as pd
from sqlalchemy import (
    Integer,
    Select,
    String,
    and_,
    case,
    func,
    insert,
    inspect,
    literal,
    or_,
    select,
    union_all,
)
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, aliased

from quality.db.queries import _as_utc, _db_errors, newest_version_id, resolve_dataset
from quality.db.schema import (
    SPLITS,
    Annotation,
    Annotator,
    Dataset,
    DatasetItem,
    DatasetVersion,
    Image,
    LabelingTask,
    ReferenceLabel,
    Series,
    Source,
    Study,
    VersionLabel,
)
from quality.db.session import safe_url
from quality.errors import (
    EmptyDatabaseError,
    SchemaOutdatedError,
    SnapshotError,
    VersionNotFoundError,
)

__all__ = [
    "DEFAULT_SPLIT_SHARES",
    "HASH_SCHEME",
    "TIE",
    "UNKNOWN",
    "UNLABELLED",
    "SnapshotResult",
    "VersionDiff",
    "VersionInfo",
    "class_counts",
    "consensus_labels",
    "content_hash",
    "diff_versions",
    "list_versions",
    "newest_labels",
    "patient_split",
    "require_schema",
    "resolve_version",
    "snapshot",
]

HASH_SCHEME: Final = "quality-snapshot/1"
"""First line of the hashed text; a change of the scheme changes every hash."""
DEFAULT_SPLIT_SHARES: Final[Mapping[str, float]] = {"train": 0.8, "val": 0.1, "test": 0.1}
"""Split shares for new patients of a dataset that has no images yet."""
TIE: Final = "(tie)"
"""Class shown for an item whose annotators' vote is tied."""
UNLABELLED: Final = "(unlabelled)"
"""Class shown for an item without a usable label."""
UNKNOWN: Final = "(unknown)"
"""Shown for a missing source, modality or vendor."""
VERSION_COLUMNS: Final = [
    "version_id",
    "version",
    "created_at",
    "n_items",
    "content_hash",
    "labels_frozen",
    "note",
]
_VERSION_RE = re.compile(r"^v(\d+)$")


# --------------------------------------------------------------------------- schema


def require_schema(session: Session) -> None:
    """Fail plainly when the DB lacks the tables and columns of this module.

    Raises
    ------
    EmptyDatabaseError
        The DB has no schema at all.
    SchemaOutdatedError
        The DB predates migration ``0002`` (no ``version_labels``, ``card_fields`` or
        ``labels_frozen``); the message says to run ``quality db upgrade``.
    """
    insp = inspect(session.connection())
    url = safe_url(session.get_bind())  # type: ignore[arg-type]
    if not insp.has_table("datasets"):
        raise EmptyDatabaseError(url)
    if not insp.has_table("version_labels"):
        raise SchemaOutdatedError(url, "table version_labels")
    for table, column in (("datasets", "card_fields"), ("dataset_versions", "labels_frozen")):
        if column not in {c["name"] for c in insp.get_columns(table)}:
            raise SchemaOutdatedError(url, f"column {table}.{column}")


# --------------------------------------------------------------------------- versions


@dataclass(frozen=True)
class VersionInfo:
    """One version of a dataset.

    Attributes
    ----------
    id, version : the row id and the version name (``v1``).
    content_hash : the stored content hash.
    created_at : when it was made (aware UTC).
    note : the note given at snapshot time.
    labels_frozen : True when its labels were frozen at snapshot time.
    """

    id: int
    version: str
    content_hash: str
    created_at: dt.datetime | None
    note: str | None
    labels_frozen: bool


def _dataset_name(session: Session, dataset_id: int) -> str:
    return str(session.scalar(select(Dataset.name).where(Dataset.id == dataset_id)))


@_db_errors
def list_versions(session: Session, dataset_id: int) -> pd.DataFrame:
    """The versions of a dataset, newest first, with their item counts.

    Returns
    -------
    DataFrame with ``version_id, version, created_at, n_items, content_hash, labels_frozen,
    note``; ``created_at`` aware UTC. Newest first (``created_at``, then id), the order of
    :func:`quality.db.queries.newest_version_id`.

    Raises
    ------
    SchemaOutdatedError
        The DB predates migration ``0002`` (checked here: pickers call this first).
    """
    require_schema(session)
    n_items = (
        select(DatasetItem.version_id, func.count(DatasetItem.id).label("n"))
        .group_by(DatasetItem.version_id)
        .subquery("version_sizes")
    )
    stmt = (
        select(
            DatasetVersion.id,
            DatasetVersion.version,
            DatasetVersion.created_at,
            func.coalesce(n_items.c.n, 0),
            DatasetVersion.content_hash,
            DatasetVersion.labels_frozen,
            DatasetVersion.note,
        )
        .outerjoin(n_items, n_items.c.version_id == DatasetVersion.id)
        .where(DatasetVersion.dataset_id == dataset_id)
        .order_by(DatasetVersion.created_at.desc(), DatasetVersion.id.desc())
    )
    df = pd.DataFrame(session.execute(stmt).all(), columns=VERSION_COLUMNS)
    df["created_at"] = pd.to_datetime(df["created_at"].map(_as_utc), utc=True)
    df["version_id"] = df["version_id"].astype("int64")
    df["n_items"] = df["n_items"].astype("int64")
    df["labels_frozen"] = df["labels_frozen"].astype(bool)
    return df


@_db_errors
def resolve_version(session: Session, dataset_id: int, version: str | None = None) -> VersionInfo:
    """The version named ``version`` of a dataset (None: the newest).

    Raises
    ------
    VersionNotFoundError
        No such version, or (for None) no version at all; the message lists the known ones.
    """
    stmt = select(
        DatasetVersion.id,
        DatasetVersion.version,
        DatasetVersion.content_hash,
        DatasetVersion.created_at,
        DatasetVersion.note,
        DatasetVersion.labels_frozen,
    ).where(DatasetVersion.dataset_id == dataset_id)
    if version is None:
        vid = newest_version_id(session, dataset_id)
        row = None if vid is None else session.execute(stmt.where(DatasetVersion.id == vid)).one()
    else:
        row = session.execute(stmt.where(DatasetVersion.version == str(version))).one_or_none()
    if row is None:
        known = list(
            session.scalars(
                select(DatasetVersion.version)
                .where(DatasetVersion.dataset_id == dataset_id)
                .order_by(DatasetVersion.created_at, DatasetVersion.id)
            )
        )
        raise VersionNotFoundError(
            _dataset_name(session, dataset_id), "(newest)" if version is None else version, known
        )
    return VersionInfo(
        id=int(row[0]),
        version=str(row[1]),
        content_hash=str(row[2]),
        created_at=_as_utc(row[3]),
        note=row[4],
        labels_frozen=bool(row[5]),
    )


def _next_version_name(session: Session, dataset_id: int) -> str:
    names = set(
        session.scalars(
            select(DatasetVersion.version).where(DatasetVersion.dataset_id == dataset_id)
        )
    )
    numbers = [int(m.group(1)) for n in names if (m := _VERSION_RE.match(n))]
    n = max(numbers, default=len(names)) + 1
    while f"v{n}" in names:
        n += 1
    return f"v{n}"


# --------------------------------------------------------------------------- labels


def _items(version_id: int) -> Select[Any]:
    """Image ids of a version (a subquery for ``IN``)."""
    return select(DatasetItem.image_id).where(DatasetItem.version_id == version_id)


def _valid_label(column: Any, classes: list[str]) -> list[Any]:
    conds = [column.is_not(None)]
    if classes:
        conds.append(column.in_(classes))
    return conds


def newest_labels(task_id: int, classes: list[str], scope: Select[Any]) -> Select[Any]:
    """Each annotator's newest valid label per image of ``scope``: ``image_id, annotator_id,
    label`` (SQL; a label outside ``classes`` is not valid, unless ``classes`` is empty)."""
    ranked = (
        select(
            Annotation.image_id,
            Annotation.annotator_id,
            Annotation.label,
            func.row_number()
            .over(
                partition_by=(Annotation.image_id, Annotation.annotator_id),
                order_by=(Annotation.created_at.desc(), Annotation.id.desc()),
            )
            .label("rn"),
        )
        .where(
            Annotation.task_id == task_id,
            Annotation.image_id.in_(scope),
            *_valid_label(Annotation.label, classes),
        )
        .subquery("ranked_labels")
    )
    return select(ranked.c.image_id, ranked.c.annotator_id, ranked.c.label).where(ranked.c.rn == 1)


def consensus_labels(task_id: int, classes: list[str], scope: Select[Any]) -> Select[Any]:
    """The image-level class of each image of ``scope`` in one task (see module docs).

    Parameters
    ----------
    task_id : a classification task.
    classes : its classes (labels outside them do not count; empty: every label counts).
    scope : a select of image ids.

    Returns
    -------
    Select of ``image_id, label, basis``: one row per image with a usable label; basis
    ``gold``, ``majority`` or ``tie`` (label NULL). Runs wholly in SQL (window functions).
    """
    newest = newest_labels(task_id, classes, scope).subquery("newest_labels")
    votes = (
        select(newest.c.image_id, newest.c.label, func.count().label("n"))
        .group_by(newest.c.image_id, newest.c.label)
        .subquery("votes")
    )
    tops = select(
        votes.c.image_id,
        votes.c.label,
        votes.c.n,
        func.max(votes.c.n).over(partition_by=votes.c.image_id).label("top"),
    ).subquery("tops")
    majority = (
        select(
            tops.c.image_id,
            func.count().label("n_top"),
            func.max(tops.c.label).label("label"),
        )
        .where(tops.c.n == tops.c.top)
        .group_by(tops.c.image_id)
        .subquery("majority")
    )
    gold_ranked = (
        select(
            ReferenceLabel.image_id,
            ReferenceLabel.label,
            func.row_number()
            .over(partition_by=ReferenceLabel.image_id, order_by=ReferenceLabel.id.desc())
            .label("rn"),
        )
        .where(
            ReferenceLabel.task_id == task_id,
            ReferenceLabel.kind == "gold",
            ReferenceLabel.image_id.in_(scope),
            *_valid_label(ReferenceLabel.label, classes),
        )
        .subquery("gold_ranked")
    )
    gold = select(
        gold_ranked.c.image_id,
        gold_ranked.c.label,
        literal("gold", String).label("basis"),
    ).where(gold_ranked.c.rn == 1)
    single = majority.c.n_top == 1
    voted = select(
        majority.c.image_id,
        case((single, majority.c.label), else_=None).label("label"),
        case((single, literal("majority", String)), else_=literal("tie", String)).label("basis"),
    ).where(majority.c.image_id.not_in(select(gold_ranked.c.image_id).where(gold_ranked.c.rn == 1)))
    return union_all(gold, voted)


def _classification_tasks(session: Session, dataset_id: int) -> list[tuple[int, str, list[str]]]:
    rows = session.execute(
        select(LabelingTask.id, LabelingTask.name, LabelingTask.classes)
        .where(LabelingTask.dataset_id == dataset_id, LabelingTask.kind == "classification")
        .order_by(LabelingTask.name, LabelingTask.id)
    ).all()
    return [(int(i), str(n), [str(c) for c in (cls or [])]) for i, n, cls in rows]


def _display(label: Any, basis: Any) -> str:
    if basis == "tie":
        return TIE
    if label is None or basis is None:
        return UNLABELLED
    return str(label)


@_db_errors
def class_counts(session: Session, version: VersionInfo, dataset_id: int) -> pd.DataFrame:
    """Class balance per split of a version, for every classification task of the dataset.

    The labels are the version's frozen labels, or the current consensus for a version made
    before label freezing (``labels_frozen`` false). Counted in SQL (``GROUP BY``).

    Returns
    -------
    DataFrame ``task, split, label, n_images``; ``label`` is a class, :data:`TIE` or
    :data:`UNLABELLED`. Ordered by task, split (train, val, test), label.
    """
    totals = dict(
        session.execute(
            select(DatasetItem.split, func.count(DatasetItem.id))
            .where(DatasetItem.version_id == version.id)
            .group_by(DatasetItem.split)
        ).all()
    )
    frames = []
    for task_id, name, classes in _classification_tasks(session, dataset_id):
        if version.labels_frozen:
            lab = (
                select(VersionLabel.image_id, VersionLabel.label, VersionLabel.basis)
                .where(VersionLabel.version_id == version.id, VersionLabel.task_id == task_id)
                .subquery("labels")
            )
        else:
            lab = consensus_labels(task_id, classes, _items(version.id)).subquery("labels")
        # Labels drive the join (an item is found through its unique (version, image)
        # index); the unlabelled rest of each split is its total minus the labelled.
        stmt = (
            select(DatasetItem.split, lab.c.label, lab.c.basis, func.count())
            .select_from(lab)
            .join(
                DatasetItem,
                and_(
                    DatasetItem.image_id == lab.c.image_id,
                    DatasetItem.version_id == version.id,
                ),
            )
            .group_by(DatasetItem.split, lab.c.label, lab.c.basis)
        )
        rows = [
            (name, str(split), _display(label, basis), int(n))
            for split, label, basis, n in session.execute(stmt)
        ]
        labelled = Counter[str]()
        for _, split, _, n in rows:
            labelled[split] += n
        rows += [
            (name, str(split), UNLABELLED, int(total) - labelled[str(split)])
            for split, total in totals.items()
            if int(total) > labelled[str(split)]
        ]
        frames.append(pd.DataFrame(rows, columns=["task", "split", "label", "n_images"]))
    if not frames:
        return pd.DataFrame(columns=["task", "split", "label", "n_images"]).astype(
            {"n_images": "int64"}
        )
    df = pd.concat(frames, ignore_index=True)
    # Ties and unlabelled items of several (label, basis) pairs fold into one row.
    df = df.groupby(["task", "split", "label"], as_index=False, sort=False)["n_images"].sum()
    order = {s: i for i, s in enumerate(SPLITS)}
    df = df.sort_values(
        ["task", "split", "label"],
        key=lambda s: s.map(order).fillna(len(order)) if s.name == "split" else s,
        ignore_index=True,
    )
    df["n_images"] = df["n_images"].astype("int64")
    return df


# --------------------------------------------------------------------------- hashing


def patient_split(patient_key: str, shares: Mapping[str, float]) -> str:
    """The split of a new patient, drawn deterministically from the patient key.

    :math:`u = \\mathrm{int}(\\mathrm{sha256}(key)_{[0:8]}) / 2^{64}`; the first split of
    :data:`~quality.db.schema.SPLITS` whose cumulative share exceeds :math:`u` (shares are
    normalised to sum to 1; splits with share 0 are never drawn).

    Examples
    --------
    >>> patient_split("abc", {"train": 1.0, "val": 0.0, "test": 0.0})
    'train'
    >>> patient_split("abc", {"train": 0.8, "val": 0.1, "test": 0.1}) in ("train", "val", "test")
    True
    """
    total = sum(max(float(shares.get(s, 0.0)), 0.0) for s in SPLITS)
    if total <= 0:
        shares, total = DEFAULT_SPLIT_SHARES, 1.0
    u = int.from_bytes(hashlib.sha256(patient_key.encode()).digest()[:8], "big") / 2**64
    cumulative = 0.0
    chosen = SPLITS[0]
    for split in SPLITS:
        share = max(float(shares.get(split, 0.0)), 0.0) / total
        if share <= 0:
            continue
        cumulative += share
        chosen = split
        if u < cumulative:
            return split
    return chosen  # u rounding past the last cumulative share


def _record(*values: Any) -> str:
    return json.dumps(list(values), separators=(",", ":"), ensure_ascii=False)


def _mask_hash(mask: bytes | None) -> str | None:
    return None if mask is None else hashlib.sha256(mask).hexdigest()


def content_hash(
    session: Session,
    dataset_id: int,
    scope: Select[Any],
    items: Iterable[tuple[str, str, str | None]],
) -> str:
    """The content hash of a working set (see module docs for exactly what is hashed).

    Parameters
    ----------
    session : an open session.
    dataset_id : the dataset (its labeling tasks' labels are hashed).
    scope : a select of the working set's image ids.
    items : ``(sop_uid, split, pixel_sha256)`` of every image of the working set.

    Returns
    -------
    str : 64 hex digits.
    """
    lines = [_record("item", sop, split, sha) for sop, split, sha in items]
    annotations = (
        select(
            LabelingTask.name,
            Image.sop_uid,
            Annotator.code,
            Annotation.label,
            Annotation.bbox,
            Annotation.mask,
        )
        .join(LabelingTask, LabelingTask.id == Annotation.task_id)
        .join(Image, Image.id == Annotation.image_id)
        .join(Annotator, Annotator.id == Annotation.annotator_id)
        .where(LabelingTask.dataset_id == dataset_id, Annotation.image_id.in_(scope))
        .execution_options(yield_per=5000)
    )
    for task, sop, code, label, bbox, mask in session.execute(annotations):
        lines.append(_record("annotation", task, sop, code, label, bbox, _mask_hash(mask)))
    references = (
        select(
            LabelingTask.name,
            ReferenceLabel.kind,
            Image.sop_uid,
            ReferenceLabel.label,
            ReferenceLabel.bbox,
            ReferenceLabel.mask,
        )
        .join(LabelingTask, LabelingTask.id == ReferenceLabel.task_id)
        .join(Image, Image.id == ReferenceLabel.image_id)
        .where(LabelingTask.dataset_id == dataset_id, ReferenceLabel.image_id.in_(scope))
        .execution_options(yield_per=5000)
    )
    for task, kind, sop, label, bbox, mask in session.execute(references):
        lines.append(_record("reference", task, kind, sop, label, bbox, _mask_hash(mask)))
    h = hashlib.sha256(HASH_SCHEME.encode())
    h.update(b"\n")
    for line in sorted(lines):
        h.update(line.encode())
        h.update(b"\n")
    return h.hexdigest()


# --------------------------------------------------------------------------- snapshot


@dataclass
class SnapshotResult:
    """What :func:`snapshot` did.

    Attributes
    ----------
    dataset : the dataset's name.
    status : ``created`` (a new version) or ``unchanged`` (the working set's hash equals the
        newest version's; nothing was written).
    version : the new version's name, or the newest version's when unchanged.
    previous : the version the working set started from (None for a first version).
    content_hash : the working set's content hash.
    n_items : images in the version.
    n_new : images taken in by ``add_new`` (0 when unchanged).
    new_by_split : images taken in, per split.
    note : the note stored with the version.
    """

    dataset: str
    status: str
    version: str
    previous: str | None
    content_hash: str
    n_items: int
    n_new: int = 0
    new_by_split: dict[str, int] = field(default_factory=dict)
    note: str | None = None

    @property
    def created(self) -> bool:
        """True when a new version was written."""
        return self.status == "created"

    def as_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict (the ``quality dataset snapshot --json`` payload)."""
        return asdict(self)


def _not_in_dataset(dataset_id: int) -> Select[Any]:
    """Ids of the images in no version of the dataset (a subquery for ``IN``)."""
    in_any = (
        select(DatasetItem.image_id)
        .join(DatasetVersion, DatasetVersion.id == DatasetItem.version_id)
        .where(DatasetVersion.dataset_id == dataset_id)
    )
    return select(Image.id).where(Image.id.not_in(in_any))


def _new_images(session: Session, dataset_id: int) -> pd.DataFrame:
    """Images in no version of the dataset: ``image_id, sop_uid, pixel_sha256, patient_key``
    (the patient key stays internal: it only picks the split)."""
    stmt = (
        select(Image.id, Image.sop_uid, Image.pixel_sha256, Study.patient_key)
        .join(Series, Series.id == Image.series_id)
        .join(Study, Study.id == Series.study_id)
        .where(Image.id.in_(_not_in_dataset(dataset_id)))
        .order_by(Image.id)
    )
    return pd.DataFrame(
        session.execute(stmt).all(), columns=["image_id", "sop_uid", "pixel_sha256", "patient_key"]
    )


def _assign_splits(
    session: Session, dataset_id: int, base_id: int | None, new: pd.DataFrame
) -> tuple[pd.Series, dict[str, float]]:
    """Split of each new image: its patient's split in the base version, else hashed."""
    shares: dict[str, float] = {}
    known: dict[str, str] = {}
    if base_id is not None:
        counts = session.execute(
            select(DatasetItem.split, func.count(DatasetItem.id))
            .where(DatasetItem.version_id == base_id)
            .group_by(DatasetItem.split)
        ).all()
        total = sum(int(n) for _, n in counts)
        shares = {str(s): int(n) / total for s, n in counts} if total else {}
        new_keys = (
            select(Study.patient_key)
            .join(Series, Series.study_id == Study.id)
            .join(Image, Image.series_id == Series.id)
            .where(Image.id.in_(_not_in_dataset(dataset_id)))
        )
        # Only the patients of the new images: a GROUP BY per (patient, split).
        rows = session.execute(
            select(Study.patient_key, DatasetItem.split, func.count(DatasetItem.id))
            .join(Series, Series.study_id == Study.id)
            .join(Image, Image.series_id == Series.id)
            .join(DatasetItem, DatasetItem.image_id == Image.id)
            .where(DatasetItem.version_id == base_id, Study.patient_key.in_(new_keys))
            .group_by(Study.patient_key, DatasetItem.split)
        ).all()
        votes: dict[str, Counter[str]] = {}
        for key, split, n in rows:
            votes.setdefault(str(key), Counter())[str(split)] = int(n)
        rank = {s: i for i, s in enumerate(SPLITS)}
        for key, counter in votes.items():
            known[key] = min(counter, key=lambda s: (-counter[s], rank.get(s, len(rank))))
    if not shares:
        shares = dict(DEFAULT_SPLIT_SHARES)
    splits = new["patient_key"].map(lambda k: known.get(k) or patient_split(str(k), shares))
    return splits, shares


def _freeze_labels(session: Session, dataset_id: int, version_id: int) -> None:
    """Write ``version_labels`` for every classification task (INSERT … SELECT)."""
    for task_id, _, classes in _classification_tasks(session, dataset_id):
        labels = consensus_labels(task_id, classes, _items(version_id)).subquery("consensus")
        session.execute(
            insert(VersionLabel).from_select(
                ["version_id", "task_id", "image_id", "label", "basis"],
                select(
                    literal(version_id, Integer),
                    literal(task_id, Integer),
                    labels.c.image_id,
                    labels.c.label,
                    labels.c.basis,
                ),
            )
        )


@_db_errors
def snapshot(
    session: Session, dataset: str | int, note: str | None = None, add_new: bool = False
) -> SnapshotResult:
    """Freeze the working set of a dataset as a new immutable version.

    The working set, the split of new images and the content hash are defined in the module
    docs. When the hash equals the newest version's stored hash nothing is written and the
    result says ``unchanged``. Otherwise a version ``v<n+1>`` is inserted (``n`` the highest
    ``v<n>`` so far), its items are copied from the newest version in SQL
    (``INSERT … SELECT``), the new images are added, and the labels are frozen. Existing
    versions are never modified. The session is flushed, not committed: the caller commits
    (as :func:`quality.db.session.session_scope` does).

    Parameters
    ----------
    session : an open session on a DB at the newest schema revision.
    dataset : the dataset's name or id.
    note : stored with the new version (e.g. what changed and why).
    add_new : also take in the images that are in no version of the dataset yet.

    Returns
    -------
    SnapshotResult

    Raises
    ------
    DatasetNotFoundError
        Unknown dataset (the message lists the known ones).
    SnapshotError
        The dataset has no version and ``add_new`` is off, the working set is empty, or a
        concurrent snapshot took the same version name.
    SchemaOutdatedError
        The DB predates migration ``0002``.
    """
    require_schema(session)
    dataset_id = resolve_dataset(session, dataset)
    name = _dataset_name(session, dataset_id)
    base = resolve_version(session, dataset_id) if newest_version_id(session, dataset_id) else None
    if base is None and not add_new:
        raise SnapshotError(
            name, "it has no version yet; pass add_new=True (--add-new) to take in its images"
        )
    new = _new_images(session, dataset_id) if add_new else _new_images_empty()
    if not new.empty:
        new["split"], _ = _assign_splits(session, dataset_id, base.id if base else None, new)
    carried = (
        select(Image.sop_uid, DatasetItem.split, Image.pixel_sha256)
        .select_from(DatasetItem)
        .join(Image, Image.id == DatasetItem.image_id)
        .where(DatasetItem.version_id == (base.id if base else -1))
    )
    items = [(str(s), str(sp), p) for s, sp, p in session.execute(carried)]
    n_items = len(items) + len(new)
    if n_items == 0:
        raise SnapshotError(name, "the working set is empty: there are no images to freeze")
    items += [(str(r.sop_uid), str(r.split), r.pixel_sha256) for r in new.itertuples(index=False)]
    scope_parts = [_items(base.id)] if base else []
    if not new.empty:
        scope_parts.append(_not_in_dataset(dataset_id))
    scope = scope_parts[0] if len(scope_parts) == 1 else union_all(*scope_parts)
    digest = content_hash(session, dataset_id, select(scope.subquery().c[0]), items)

    previous = base.version if base else None
    if base is not None and digest == base.content_hash:
        return SnapshotResult(name, "unchanged", base.version, previous, digest, n_items, note=note)

    version_name = _next_version_name(session, dataset_id)
    try:
        row = DatasetVersion(
            dataset_id=dataset_id,
            version=version_name,
            content_hash=digest,
            note=note,
            labels_frozen=True,
        )
        session.add(row)
        session.flush()
        if base is not None:
            session.execute(
                insert(DatasetItem).from_select(
                    ["version_id", "image_id", "split"],
                    select(literal(row.id, Integer), DatasetItem.image_id, DatasetItem.split).where(
                        DatasetItem.version_id == base.id
                    ),
                )
            )
        if not new.empty:
            session.execute(
                insert(DatasetItem),
                [
                    {"version_id": row.id, "image_id": int(i), "split": str(s)}
                    for i, s in zip(new["image_id"], new["split"], strict=True)
                ],
            )
        _freeze_labels(session, dataset_id, row.id)
        session.flush()
    except IntegrityError as exc:
        session.rollback()
        raise SnapshotError(
            name, f"version {version_name} was taken meanwhile (a concurrent snapshot?); retry"
        ) from exc
    by_split = new["split"].value_counts().to_dict() if not new.empty else {}
    return SnapshotResult(
        dataset=name,
        status="created",
        version=version_name,
        previous=previous,
        content_hash=digest,
        n_items=n_items,
        n_new=len(new),
        new_by_split={str(k): int(v) for k, v in by_split.items()},
        note=note,
    )


def _new_images_empty() -> pd.DataFrame:
    return pd.DataFrame(columns=["image_id", "sop_uid", "pixel_sha256", "patient_key"])


# --------------------------------------------------------------------------- diff


@dataclass
class VersionDiff:
    """What changed between two versions of a dataset (:func:`diff_versions`).

    Attributes
    ----------
    dataset, old, new : the dataset's name and the two version names.
    old_hash, new_hash : their stored content hashes.
    n_old, n_new : images in each.
    n_added, n_removed : images only in ``new`` / only in ``old``.
    n_moved : images in both whose split changed.
    by_split : ``split, n_old, n_new, n_added, n_removed``.
    split_moves : ``from_split, to_split, n_images`` (images in both, split changed).
    sources : ``source, n_old, n_new, delta``.
    class_balance : ``task, label, n_old, n_new, delta`` (all splits together).
    label_changes : ``task, old_label, new_label, n_images`` over images in both versions
        whose class changed; None when one of them predates label freezing.
    n_label_changes : images (per task, summed) whose class changed; None as above.
    labels_basis : ``frozen`` (both versions' frozen labels) or ``current`` (at least one
        version is read with today's labels; its class balance may differ from what it held).
    added, removed, moved : up to ``limit`` example rows each: ``image_id, sop_uid, split,
        source`` (``moved``: ``from_split, to_split``).
    """

    dataset: str
    old: str
    new: str
    old_hash: str
    new_hash: str
    n_old: int
    n_new: int
    n_added: int
    n_removed: int
    n_moved: int
    by_split: pd.DataFrame
    split_moves: pd.DataFrame
    sources: pd.DataFrame
    class_balance: pd.DataFrame
    label_changes: pd.DataFrame | None
    n_label_changes: int | None
    labels_basis: str
    added: pd.DataFrame
    removed: pd.DataFrame
    moved: pd.DataFrame

    @property
    def same_content(self) -> bool:
        """True when the stored content hashes are equal."""
        return self.old_hash == self.new_hash

    @property
    def n_changes(self) -> int:
        """Images added, removed or moved, plus label changes where known."""
        return self.n_added + self.n_removed + self.n_moved + (self.n_label_changes or 0)

    def as_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict (the ``diff`` of ``quality card --json``)."""
        from quality.agreement.summary import jsonable

        out: dict[str, Any] = {
            k: getattr(self, k)
            for k in (
                "dataset", "old", "new", "old_hash", "new_hash", "n_old", "n_new", "n_added",
                "n_removed", "n_moved", "n_label_changes", "labels_basis",
            )
        }  # fmt: skip
        for k in ("by_split", "split_moves", "sources", "class_balance", "label_changes"):
            frame = getattr(self, k)
            out[k] = None if frame is None else frame.to_dict("records")
        return jsonable(out)


def _version_items(version_id: int, name: str) -> Any:
    return (
        select(DatasetItem.image_id, DatasetItem.split)
        .where(DatasetItem.version_id == version_id)
        .subquery(name)
    )


def _source_name() -> Any:
    return func.coalesce(Source.name, UNKNOWN)


def _with_source(stmt: Select[Any], image_col: Any) -> Select[Any]:
    return (
        stmt.join(Image, Image.id == image_col)
        .join(Series, Series.id == Image.series_id)
        .join(Study, Study.id == Series.study_id)
        .outerjoin(Source, Source.id == Study.source_id)
    )


def _class_totals(session: Session, version: VersionInfo, dataset_id: int) -> pd.DataFrame:
    counts = class_counts(session, version, dataset_id)
    return counts.groupby(["task", "label"], as_index=False)["n_images"].sum()


def _label_changes(
    session: Session, dataset_id: int, old: VersionInfo, new: VersionInfo
) -> pd.DataFrame:
    """Class changes of the images in both versions, from their frozen labels (SQL)."""
    rows = []
    o_items = _version_items(old.id, "old_items")
    n_items = _version_items(new.id, "new_items")
    for task_id, name, _ in _classification_tasks(session, dataset_id):
        ol, nl = aliased(VersionLabel), aliased(VersionLabel)
        stmt = (
            select(ol.label, ol.basis, nl.label, nl.basis, func.count())
            .select_from(o_items)
            .join(n_items, n_items.c.image_id == o_items.c.image_id)
            .outerjoin(
                ol,
                and_(
                    ol.image_id == o_items.c.image_id,
                    ol.version_id == old.id,
                    ol.task_id == task_id,
                ),
            )
            .outerjoin(
                nl,
                and_(
                    nl.image_id == o_items.c.image_id,
                    nl.version_id == new.id,
                    nl.task_id == task_id,
                ),
            )
            .where(or_(ol.label.is_distinct_from(nl.label), ol.basis.is_distinct_from(nl.basis)))
            .group_by(ol.label, ol.basis, nl.label, nl.basis)
        )
        for o_label, o_basis, n_label, n_basis, n in session.execute(stmt):
            rows.append((name, _display(o_label, o_basis), _display(n_label, n_basis), int(n)))
    df = pd.DataFrame(rows, columns=["task", "old_label", "new_label", "n_images"])
    df = df.groupby(["task", "old_label", "new_label"], as_index=False)["n_images"].sum()
    df = df.loc[df["old_label"] != df["new_label"]]
    return df.sort_values(
        ["task", "n_images", "old_label", "new_label"],
        ascending=[True, False, True, True],
        ignore_index=True,
    ).astype({"n_images": "int64"})


@_db_errors
def diff_versions(
    session: Session,
    dataset: str | int,
    old: str | None,
    new: str | None,
    *,
    limit: int = 1000,
) -> VersionDiff:
    """What changed from version ``old`` to version ``new`` of a dataset.

    Images are matched by image id. Every count is a SQL aggregate over the two versions'
    items (anti-joins for added/removed, a join for split moves, ``GROUP BY`` per split,
    source and class); only up to ``limit`` example rows per kind come back.

    Parameters
    ----------
    session : an open session.
    dataset : the dataset's name or id.
    old, new : version names; None for ``new`` means the newest version, None for ``old``
        the version made just before ``new``.
    limit : most example rows in ``added``, ``removed`` and ``moved``.

    Returns
    -------
    VersionDiff

    Raises
    ------
    DatasetNotFoundError, VersionNotFoundError
        Unknown dataset or version (the message lists the known ones); also when ``old`` is
        None and ``new`` is the first version.
    """
    require_schema(session)
    dataset_id = resolve_dataset(session, dataset)
    name = _dataset_name(session, dataset_id)
    v_new = resolve_version(session, dataset_id, new)
    v_old = (
        resolve_version(session, dataset_id, old)
        if old is not None
        else _previous_version(session, dataset_id, v_new)
    )
    o_items = _version_items(v_old.id, "old_items")
    n_items = _version_items(v_new.id, "new_items")

    def per_split(items: Any) -> dict[str, int]:
        stmt = select(items.c.split, func.count()).group_by(items.c.split)
        return {str(s): int(n) for s, n in session.execute(stmt)}

    def one_sided(left: Any, right: Any) -> dict[str, int]:
        stmt = (
            select(left.c.split, func.count())
            .select_from(left)
            .outerjoin(right, right.c.image_id == left.c.image_id)
            .where(right.c.image_id.is_(None))
            .group_by(left.c.split)
        )
        return {str(s): int(n) for s, n in session.execute(stmt)}

    old_n, new_n = per_split(o_items), per_split(n_items)
    added, removed = one_sided(n_items, o_items), one_sided(o_items, n_items)
    splits = [s for s in SPLITS if s in {*old_n, *new_n}] + sorted({*old_n, *new_n} - set(SPLITS))
    by_split = pd.DataFrame(
        [(s, old_n.get(s, 0), new_n.get(s, 0), added.get(s, 0), removed.get(s, 0)) for s in splits],
        columns=["split", "n_old", "n_new", "n_added", "n_removed"],
    ).astype(dict.fromkeys(("n_old", "n_new", "n_added", "n_removed"), "int64"))

    moves_stmt = (
        select(o_items.c.split, n_items.c.split, func.count())
        .select_from(o_items)
        .join(n_items, n_items.c.image_id == o_items.c.image_id)
        .where(o_items.c.split != n_items.c.split)
        .group_by(o_items.c.split, n_items.c.split)
    )
    split_moves = pd.DataFrame(
        [(str(a), str(b), int(n)) for a, b, n in session.execute(moves_stmt)],
        columns=["from_split", "to_split", "n_images"],
    ).astype({"n_images": "int64"})
    split_moves = split_moves.sort_values(["from_split", "to_split"], ignore_index=True)

    def by_source(items: Any) -> dict[str, int]:
        stmt = _with_source(select(Source.name, func.count()).select_from(items), items.c.image_id)
        stmt = stmt.group_by(Source.name)
        return {UNKNOWN if s is None else str(s): int(n) for s, n in session.execute(stmt)}

    src_old, src_new = by_source(o_items), by_source(n_items)
    sources = pd.DataFrame(
        [(s, src_old.get(s, 0), src_new.get(s, 0)) for s in sorted({*src_old, *src_new})],
        columns=["source", "n_old", "n_new"],
    ).astype({"n_old": "int64", "n_new": "int64"})
    sources["delta"] = sources["n_new"] - sources["n_old"]

    c_old = _class_totals(session, v_old, dataset_id).rename(columns={"n_images": "n_old"})
    c_new = _class_totals(session, v_new, dataset_id).rename(columns={"n_images": "n_new"})
    balance = c_old.merge(c_new, on=["task", "label"], how="outer").fillna(0)
    balance = balance.astype({"n_old": "int64", "n_new": "int64"})
    balance["delta"] = balance["n_new"] - balance["n_old"]
    balance = balance.sort_values(["task", "label"], ignore_index=True)

    frozen = v_old.labels_frozen and v_new.labels_frozen
    changes = _label_changes(session, dataset_id, v_old, v_new) if frozen else None

    def examples(left: Any, right: Any) -> pd.DataFrame:
        stmt = _with_source(
            select(left.c.image_id, Image.sop_uid, left.c.split, _source_name()).select_from(left),
            left.c.image_id,
        )
        stmt = (
            stmt.outerjoin(right, right.c.image_id == left.c.image_id)
            .where(right.c.image_id.is_(None))
            .order_by(left.c.image_id)
            .limit(limit)
        )
        return pd.DataFrame(
            session.execute(stmt).all(), columns=["image_id", "sop_uid", "split", "source"]
        )

    moved_stmt = _with_source(
        select(o_items.c.image_id, Image.sop_uid, o_items.c.split, n_items.c.split, _source_name())
        .select_from(o_items)
        .join(n_items, n_items.c.image_id == o_items.c.image_id),
        o_items.c.image_id,
    )
    moved_stmt = (
        moved_stmt.where(o_items.c.split != n_items.c.split)
        .order_by(o_items.c.image_id)
        .limit(limit)
    )
    moved = pd.DataFrame(
        session.execute(moved_stmt).all(),
        columns=["image_id", "sop_uid", "from_split", "to_split", "source"],
    )
    return VersionDiff(
        dataset=name,
        old=v_old.version,
        new=v_new.version,
        old_hash=v_old.content_hash,
        new_hash=v_new.content_hash,
        n_old=sum(old_n.values()),
        n_new=sum(new_n.values()),
        n_added=sum(added.values()),
        n_removed=sum(removed.values()),
        n_moved=int(split_moves["n_images"].sum()),
        by_split=by_split,
        split_moves=split_moves,
        sources=sources,
        class_balance=balance,
        label_changes=changes,
        n_label_changes=None if changes is None else int(changes["n_images"].sum()),
        labels_basis="frozen" if frozen else "current",
        added=examples(n_items, o_items),
        removed=examples(o_items, n_items),
        moved=moved,
    )


def _previous_version(session: Session, dataset_id: int, version: VersionInfo) -> VersionInfo:
    """The version made just before ``version`` (by ``created_at``, then id)."""
    created = select(DatasetVersion.created_at).where(DatasetVersion.id == version.id)
    prev = session.scalar(
        select(DatasetVersion.version)
        .where(
            DatasetVersion.dataset_id == dataset_id,
            DatasetVersion.id != version.id,
            or_(
                DatasetVersion.created_at < created.scalar_subquery(),
                and_(
                    DatasetVersion.created_at == created.scalar_subquery(),
                    DatasetVersion.id < version.id,
                ),
            ),
        )
        .order_by(DatasetVersion.created_at.desc(), DatasetVersion.id.desc())
        .limit(1)
    )
    if prev is None:
        known = list_versions(session, dataset_id)["version"].tolist()[::-1]
        raise VersionNotFoundError(
            _dataset_name(session, dataset_id), f"(before {version.version})", known
        )
    return resolve_version(session, dataset_id, str(prev))
