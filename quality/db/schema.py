"""ORM models of the annotation DB (SQLAlchemy 2, typed).

The same models run on SQLite (embedded default) and PostgreSQL (production). JSON columns
use the generic ``JSON`` type, which maps to ``JSONB``-compatible ``JSON`` on PostgreSQL and
to TEXT on SQLite. Every foreign key is indexed, as are the columns that pages filter by.

PHI never lands here: ``studies.patient_key`` is a salted hash, and ``images.header`` holds the
DICOM header without the tags of :data:`quality.dicom.PHI_TAGS`.
"""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    Date,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    false,
    func,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

__all__ = [
    "ANNOTATOR_KINDS",
    "LABEL_BASES",
    "MODEL_STATUSES",
    "SPLITS",
    "TASK_KINDS",
    "VERDICTS",
    "Annotation",
    "Annotator",
    "AuditLog",
    "Base",
    "CheckResult",
    "CheckRun",
    "Dataset",
    "DatasetItem",
    "DatasetVersion",
    "Image",
    "ImageQuality",
    "IngestError",
    "LabelingTask",
    "Model",
    "ModelVersion",
    "Prediction",
    "ReferenceLabel",
    "Review",
    "Series",
    "Source",
    "Study",
    "User",
    "VersionLabel",
]

TASK_KINDS = ("classification", "bbox", "mask")
SPLITS = ("train", "val", "test")
MODEL_STATUSES = ("production", "shadow", "candidate", "retired")
ANNOTATOR_KINDS = ("doctor", "expert")
VERDICTS = ("agree", "disagree", "unsure")
LABEL_BASES = ("gold", "majority", "tie")

# Stable constraint names make Alembic migrations portable between SQLite and PostgreSQL.
NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

intpk = Annotated[int, mapped_column(Integer, primary_key=True, autoincrement=True)]
# Big enough for 10^6+ annotation rows on PostgreSQL, still INTEGER PRIMARY KEY on SQLite.
bigpk = Annotated[
    int, mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
]
uid = Annotated[str, mapped_column(String(64), unique=True, nullable=False)]
created = Annotated[
    dt.datetime,
    mapped_column(DateTime(timezone=True), server_default=func.now(), nullable=False),
]


def _in(col: str, values: tuple[str, ...]) -> str:
    return f"{col} IN ({', '.join(repr(v) for v in values)})"


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)
    type_annotation_map = {dict[str, Any]: JSON, list[Any]: JSON}  # noqa: RUF012


# --------------------------------------------------------------------------- images


class Source(Base):
    __tablename__ = "sources"
    __table_args__ = {"comment": "hospital or device site that sends studies"}  # noqa: RUF012

    id: Mapped[intpk]
    name: Mapped[str] = mapped_column(String(128), unique=True, comment="site name")
    manufacturer: Mapped[str | None] = mapped_column(String(128), comment="main vendor")

    studies: Mapped[list[Study]] = relationship(back_populates="source")


class Study(Base):
    __tablename__ = "studies"
    __table_args__ = (
        Index("ix_studies_modality_date", "modality", "study_date"),
        CheckConstraint(
            "patient_age_years IS NULL OR (patient_age_years >= 0 AND patient_age_years <= 130)",
            name="age_range",
        ),
    )

    id: Mapped[intpk]
    study_uid: Mapped[uid]
    patient_key: Mapped[str] = mapped_column(
        String(32), index=True, comment="salted hash of PatientID: pseudonymous, never PHI"
    )
    modality: Mapped[str | None] = mapped_column(String(16), index=True)
    body_part: Mapped[str | None] = mapped_column(String(64))
    study_date: Mapped[dt.date | None] = mapped_column(Date, index=True)
    patient_age_years: Mapped[int | None] = mapped_column(
        Integer, comment="age at study in whole years (not PHI below 90)"
    )
    patient_sex: Mapped[str | None] = mapped_column(String(1))
    source_id: Mapped[int | None] = mapped_column(
        ForeignKey("sources.id", ondelete="SET NULL"), index=True
    )

    source: Mapped[Source | None] = relationship(back_populates="studies")
    series: Mapped[list[Series]] = relationship(back_populates="study")


class Series(Base):
    __tablename__ = "series"

    id: Mapped[intpk]
    series_uid: Mapped[uid]
    study_id: Mapped[int] = mapped_column(ForeignKey("studies.id", ondelete="CASCADE"), index=True)
    modality: Mapped[str | None] = mapped_column(String(16))
    series_number: Mapped[int | None] = mapped_column(Integer)
    description: Mapped[str | None] = mapped_column(String(128))
    manufacturer: Mapped[str | None] = mapped_column(String(128), index=True)
    model: Mapped[str | None] = mapped_column(String(128))
    kvp: Mapped[float | None] = mapped_column(Float, comment="peak kilovoltage (0018,0060)")
    body_part: Mapped[str | None] = mapped_column(String(64))

    study: Mapped[Study] = relationship(back_populates="series")
    images: Mapped[list[Image]] = relationship(back_populates="series")


class Image(Base):
    __tablename__ = "images"
    __table_args__ = (
        CheckConstraint("rows IS NULL OR rows >= 0", name="rows_nonneg"),
        CheckConstraint("cols IS NULL OR cols >= 0", name="cols_nonneg"),
    )

    id: Mapped[intpk]
    sop_uid: Mapped[uid]
    series_id: Mapped[int] = mapped_column(ForeignKey("series.id", ondelete="CASCADE"), index=True)
    uri: Mapped[str] = mapped_column(String(1024), unique=True, comment="store URI of the file")
    pixel_sha256: Mapped[str | None] = mapped_column(
        String(64), index=True, comment="sha256 of the raw PixelData bytes (not decoded)"
    )
    sop_class_uid: Mapped[str | None] = mapped_column(String(64))
    transfer_syntax: Mapped[str | None] = mapped_column(String(64))
    instance_number: Mapped[int | None] = mapped_column(Integer)
    rows: Mapped[int | None] = mapped_column(Integer)
    cols: Mapped[int | None] = mapped_column(Integer)
    n_frames: Mapped[int] = mapped_column(Integer, default=1, server_default="1")
    bits_stored: Mapped[int | None] = mapped_column(Integer)
    photometric: Mapped[str | None] = mapped_column(String(16), index=True)
    spacing_row: Mapped[float | None] = mapped_column(Float, comment="mm between rows")
    spacing_col: Mapped[float | None] = mapped_column(Float, comment="mm between columns")
    file_size: Mapped[int | None] = mapped_column(BigInteger)
    file_mtime: Mapped[float | None] = mapped_column(
        Float, comment="store mtime, for change checks"
    )
    header: Mapped[dict[str, Any]] = mapped_column(
        JSON, default=dict, comment="DICOM header without PHI tags"
    )
    ingested_at: Mapped[created]

    series: Mapped[Series] = relationship(back_populates="images")


class IngestError(Base):
    __tablename__ = "ingest_errors"

    id: Mapped[intpk]
    uri: Mapped[str] = mapped_column(String(1024), unique=True)
    kind: Mapped[str] = mapped_column(String(32), index=True)
    message: Mapped[str] = mapped_column(Text)
    file_size: Mapped[int | None] = mapped_column(BigInteger)
    file_mtime: Mapped[float | None] = mapped_column(Float)
    at: Mapped[created]


# --------------------------------------------------------------------------- datasets


class Dataset(Base):
    __tablename__ = "datasets"

    id: Mapped[intpk]
    name: Mapped[str] = mapped_column(String(128), unique=True)
    owner: Mapped[str | None] = mapped_column(String(128))
    license: Mapped[str | None] = mapped_column(String(64))
    description: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[created]
    updated_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    card_fields: Mapped[dict[str, Any]] = mapped_column(
        JSON,
        default=dict,
        server_default="{}",
        comment="owner-written dataset-card text: field name -> text (quality.card.CARD_FIELDS)",
    )

    versions: Mapped[list[DatasetVersion]] = relationship(back_populates="dataset")


class DatasetVersion(Base):
    __tablename__ = "dataset_versions"
    __table_args__ = (UniqueConstraint("dataset_id", "version"),)

    id: Mapped[intpk]
    dataset_id: Mapped[int] = mapped_column(
        ForeignKey("datasets.id", ondelete="CASCADE"), index=True
    )
    version: Mapped[str] = mapped_column(String(32))
    content_hash: Mapped[str] = mapped_column(String(64), comment="sha256 over sorted items")
    note: Mapped[str | None] = mapped_column(Text)
    labels_frozen: Mapped[bool] = mapped_column(
        Boolean,
        default=False,
        server_default=false(),
        comment="True when version_labels holds this version's labels (made by a snapshot)",
    )
    created_at: Mapped[created]

    dataset: Mapped[Dataset] = relationship(back_populates="versions")


class DatasetItem(Base):
    __tablename__ = "dataset_items"
    __table_args__ = (
        UniqueConstraint("version_id", "image_id"),
        CheckConstraint(_in("split", SPLITS), name="split_valid"),
    )

    id: Mapped[bigpk]
    version_id: Mapped[int] = mapped_column(
        ForeignKey("dataset_versions.id", ondelete="CASCADE"), index=True
    )
    image_id: Mapped[int] = mapped_column(ForeignKey("images.id", ondelete="CASCADE"), index=True)
    split: Mapped[str] = mapped_column(String(8), index=True)


class VersionLabel(Base):
    """The image-level class of each item of a version, frozen when the version was made.

    One row per (version, classification task, image) that had a usable label at snapshot
    time (:func:`quality.snapshot.snapshot`): the newest ``gold`` reference label, else the
    majority of the annotators' newest labels (``label`` NULL when the top count is tied).
    Versions are immutable, so these rows are never updated; they let a version's class
    balance and the label changes between two versions be read back exactly.
    """

    __tablename__ = "version_labels"
    __table_args__ = (
        UniqueConstraint("version_id", "task_id", "image_id"),
        CheckConstraint(_in("basis", LABEL_BASES), name="basis_valid"),
    )

    id: Mapped[bigpk]
    version_id: Mapped[int] = mapped_column(ForeignKey("dataset_versions.id", ondelete="CASCADE"))
    task_id: Mapped[int] = mapped_column(
        ForeignKey("labeling_tasks.id", ondelete="CASCADE"), index=True
    )
    image_id: Mapped[int] = mapped_column(ForeignKey("images.id", ondelete="CASCADE"), index=True)
    label: Mapped[str | None] = mapped_column(String(64), comment="NULL when the vote is tied")
    basis: Mapped[str] = mapped_column(String(8), comment="gold | majority | tie")


# --------------------------------------------------------------------------- labels


class Annotator(Base):
    __tablename__ = "annotators"
    __table_args__ = (CheckConstraint(_in("kind", ANNOTATOR_KINDS), name="kind_valid"),)

    id: Mapped[intpk]
    code: Mapped[str] = mapped_column(String(32), unique=True, comment="pseudonymous code")
    name: Mapped[str | None] = mapped_column(String(128), comment="personnel data: managers only")
    kind: Mapped[str] = mapped_column(String(16), default="doctor")
    specialty: Mapped[str | None] = mapped_column(String(64))
    experience_years: Mapped[int | None] = mapped_column(Integer)


class LabelingTask(Base):
    __tablename__ = "labeling_tasks"
    __table_args__ = (
        UniqueConstraint("dataset_id", "name"),
        CheckConstraint(_in("kind", TASK_KINDS), name="kind_valid"),
    )

    id: Mapped[intpk]
    dataset_id: Mapped[int] = mapped_column(
        ForeignKey("datasets.id", ondelete="CASCADE"), index=True
    )
    name: Mapped[str] = mapped_column(String(128))
    kind: Mapped[str] = mapped_column(String(16))
    classes: Mapped[list[Any]] = mapped_column(JSON, default=list)


class Annotation(Base):
    __tablename__ = "annotations"
    __table_args__ = (
        Index("ix_annotations_task_image", "task_id", "image_id"),
        Index("ix_annotations_annotator_created", "annotator_id", "created_at"),
        CheckConstraint("duration_s IS NULL OR duration_s >= 0", name="duration_nonneg"),
    )

    id: Mapped[bigpk]
    task_id: Mapped[int] = mapped_column(
        ForeignKey("labeling_tasks.id", ondelete="CASCADE"), index=True
    )
    image_id: Mapped[int] = mapped_column(ForeignKey("images.id", ondelete="CASCADE"), index=True)
    annotator_id: Mapped[int] = mapped_column(
        ForeignKey("annotators.id", ondelete="CASCADE"), index=True
    )
    label: Mapped[str | None] = mapped_column(String(64))
    bbox: Mapped[list[Any] | None] = mapped_column(JSON, comment="[x0, y0, x1, y1] in pixels")
    mask: Mapped[bytes | None] = mapped_column(LargeBinary, comment="zlib-compressed uint8 mask")
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True))
    duration_s: Mapped[float | None] = mapped_column(Float)


class ReferenceLabel(Base):
    __tablename__ = "reference_labels"
    __table_args__ = (
        Index("ix_reference_labels_task_image", "task_id", "image_id"),
        CheckConstraint(_in("kind", ("gold", "exam")), name="kind_valid"),
    )

    id: Mapped[bigpk]
    task_id: Mapped[int] = mapped_column(
        ForeignKey("labeling_tasks.id", ondelete="CASCADE"), index=True
    )
    image_id: Mapped[int] = mapped_column(ForeignKey("images.id", ondelete="CASCADE"), index=True)
    kind: Mapped[str] = mapped_column(String(8), comment="gold: expert panel; exam: exam set key")
    label: Mapped[str | None] = mapped_column(String(64))
    bbox: Mapped[list[Any] | None] = mapped_column(JSON)
    mask: Mapped[bytes | None] = mapped_column(LargeBinary)


# --------------------------------------------------------------------------- models


class Model(Base):
    __tablename__ = "models"

    id: Mapped[intpk]
    name: Mapped[str] = mapped_column(String(128), unique=True)
    task_id: Mapped[int | None] = mapped_column(
        ForeignKey("labeling_tasks.id", ondelete="SET NULL"), index=True
    )
    description: Mapped[str | None] = mapped_column(Text)


class ModelVersion(Base):
    __tablename__ = "model_versions"
    __table_args__ = (
        UniqueConstraint("model_id", "version"),
        CheckConstraint(_in("status", MODEL_STATUSES), name="status_valid"),
    )

    id: Mapped[intpk]
    model_id: Mapped[int] = mapped_column(ForeignKey("models.id", ondelete="CASCADE"), index=True)
    version: Mapped[str] = mapped_column(String(32))
    status: Mapped[str] = mapped_column(String(16), index=True)
    created_at: Mapped[created]


class Prediction(Base):
    __tablename__ = "predictions"
    __table_args__ = (
        Index("ix_predictions_version_image", "model_version_id", "image_id"),
        # The newest prediction of a version for an image, from the index alone (migration
        # 0005; EXPLAIN: the per-image probe sorted heap rows by created_at).
        Index(
            "ix_predictions_version_image_newest",
            "model_version_id",
            "image_id",
            "created_at",
            "id",
        ),
        CheckConstraint("score IS NULL OR (score >= 0 AND score <= 1)", name="score_unit"),
    )

    id: Mapped[bigpk]
    model_version_id: Mapped[int] = mapped_column(
        ForeignKey("model_versions.id", ondelete="CASCADE"), index=True
    )
    image_id: Mapped[int] = mapped_column(ForeignKey("images.id", ondelete="CASCADE"), index=True)
    label: Mapped[str | None] = mapped_column(String(64))
    score: Mapped[float | None] = mapped_column(Float)
    bbox: Mapped[list[Any] | None] = mapped_column(JSON)
    mask: Mapped[bytes | None] = mapped_column(LargeBinary)
    latency_ms: Mapped[float | None] = mapped_column(Float)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), index=True)


# --------------------------------------------------------------------------- quality & checks


class ImageQuality(Base):
    __tablename__ = "image_quality"
    __table_args__ = (UniqueConstraint("image_id", "scorer_version"),)

    id: Mapped[bigpk]
    image_id: Mapped[int] = mapped_column(ForeignKey("images.id", ondelete="CASCADE"), index=True)
    scorer_version: Mapped[str] = mapped_column(String(32))
    sharpness: Mapped[float | None] = mapped_column(Float)
    tenengrad: Mapped[float | None] = mapped_column(Float)
    noise_sigma: Mapped[float | None] = mapped_column(Float)
    snr: Mapped[float | None] = mapped_column(Float)
    cnr: Mapped[float | None] = mapped_column(Float)
    cjv: Mapped[float | None] = mapped_column(Float)
    efc: Mapped[float | None] = mapped_column(Float)
    fber: Mapped[float | None] = mapped_column(Float)
    entropy: Mapped[float | None] = mapped_column(Float)
    dynamic_range: Mapped[float | None] = mapped_column(Float)
    clip_low: Mapped[float | None] = mapped_column(Float)
    clip_high: Mapped[float | None] = mapped_column(Float)
    mean: Mapped[float | None] = mapped_column(Float)
    p01: Mapped[float | None] = mapped_column(Float)
    p99: Mapped[float | None] = mapped_column(Float)
    is_blank: Mapped[bool | None] = mapped_column(Boolean)
    border_share: Mapped[float | None] = mapped_column(Float)
    defect_type: Mapped[str | None] = mapped_column(String(32), index=True)
    quality_score: Mapped[float | None] = mapped_column(Float, index=True)
    ood_score: Mapped[float | None] = mapped_column(Float)
    is_ood: Mapped[bool | None] = mapped_column(Boolean)
    embedding_ref: Mapped[str | None] = mapped_column(String(256))
    scored_at: Mapped[created]


class CheckRun(Base):
    __tablename__ = "check_runs"

    id: Mapped[intpk]
    dataset_id: Mapped[int] = mapped_column(
        ForeignKey("datasets.id", ondelete="CASCADE"), index=True
    )
    started_at: Mapped[created]
    finished_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    passed: Mapped[bool | None] = mapped_column(Boolean)
    rules_sha256: Mapped[str | None] = mapped_column(String(64))
    summary: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)


class CheckResult(Base):
    __tablename__ = "check_results"

    id: Mapped[bigpk]
    run_id: Mapped[int] = mapped_column(ForeignKey("check_runs.id", ondelete="CASCADE"), index=True)
    check_name: Mapped[str] = mapped_column(String(128))
    passed: Mapped[bool] = mapped_column(Boolean)
    severity: Mapped[str] = mapped_column(String(16), default="error")
    n_failed: Mapped[int] = mapped_column(Integer, default=0)
    details: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)


# --------------------------------------------------------------------------- reviews & auth


class User(Base):
    """A person who may sign in (``quality.auth``); also the reviewer of spot-check verdicts.

    ``role`` is one of :data:`quality.auth.ROLES` (checked in Python: a CHECK constraint would
    need a rebuild of this table on SQLite). A row without ``password_hash`` cannot sign in
    with a password (reviewers typed in demo mode; OIDC-only accounts).
    """

    __tablename__ = "users"

    id: Mapped[intpk]
    username: Mapped[str] = mapped_column(String(64), unique=True)
    display_name: Mapped[str | None] = mapped_column(String(128))
    # Least privilege when a caller forgets the role.
    role: Mapped[str] = mapped_column(String(32), default="clinician")
    # argon2id hash (PHC string), never shown or logged; NULL: no password sign-in.
    password_hash: Mapped[str | None] = mapped_column(String(256))
    is_active: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[created]
    password_changed_at: Mapped[dt.datetime | None] = mapped_column(
        DateTime(timezone=True), comment="last password set or change"
    )
    disabled_at: Mapped[dt.datetime | None] = mapped_column(
        DateTime(timezone=True), comment="when the account was disabled; NULL while active"
    )


class Review(Base):
    __tablename__ = "reviews"
    __table_args__ = (
        UniqueConstraint("prediction_id", "reviewer_id"),
        CheckConstraint(_in("verdict", VERDICTS), name="verdict_valid"),
    )

    id: Mapped[bigpk]
    prediction_id: Mapped[int] = mapped_column(
        ForeignKey("predictions.id", ondelete="CASCADE"), index=True
    )
    reviewer_id: Mapped[int] = mapped_column(ForeignKey("users.id"), index=True)
    verdict: Mapped[str] = mapped_column(String(16))
    corrected_label: Mapped[str | None] = mapped_column(String(64))
    corrected_bbox: Mapped[list[Any] | None] = mapped_column(JSON)
    comment: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[created]
    updated_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))


class AuditLog(Base):
    """Who did what and when (``quality.audit``). Append-only: triggers made by migration
    0004 refuse UPDATE and DELETE in the DB itself."""

    __tablename__ = "audit_log"

    id: Mapped[bigpk]
    at: Mapped[dt.datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now(), nullable=False, index=True
    )
    username: Mapped[str | None] = mapped_column(String(64), index=True)
    action: Mapped[str] = mapped_column(String(64), index=True)
    target: Mapped[str | None] = mapped_column(String(256))
    details: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)


# --------------------------------------------------------------------------- review sessions

REVIEW_STRATEGIES = ("random", "stratified", "lowest_confidence", "disagreement", "ood")


class ReviewSession(Base):
    """A spot-check sample of one model version's predictions, saved so it can be resumed.

    The sample is drawn by :func:`quality.review.sample_predictions` and is reproducible:
    the same predictions, strategy, parameters and seed give the same items in the same
    order. The items themselves are stored (:class:`ReviewSessionItem`), so a session keeps
    its sample even when predictions are added later.
    """

    __tablename__ = "review_sessions"
    __table_args__ = (
        CheckConstraint(_in("strategy", REVIEW_STRATEGIES), name="strategy_valid"),
        CheckConstraint("sample_size >= 0", name="sample_size_nonneg"),
        CheckConstraint("seed >= 0", name="seed_nonneg"),
        {"comment": "spot-check samples of predictions (quality.review)"},
    )

    id: Mapped[intpk]
    name: Mapped[str] = mapped_column(String(128), comment="shown in the session picker")
    model_version_id: Mapped[int] = mapped_column(
        ForeignKey("model_versions.id", ondelete="CASCADE"), index=True
    )
    dataset_id: Mapped[int | None] = mapped_column(
        ForeignKey("datasets.id", ondelete="SET NULL"),
        index=True,
        comment="predictions on this dataset's newest version only; NULL: all images",
    )
    strategy: Mapped[str] = mapped_column(
        String(32), comment="random | stratified | lowest_confidence | disagreement | ood"
    )
    params: Mapped[dict[str, Any]] = mapped_column(
        JSON, default=dict, comment="strategy parameters (consensus method, scorer version)"
    )
    seed: Mapped[int] = mapped_column(Integer, comment="seed of numpy.random.default_rng")
    sample_size: Mapped[int] = mapped_column(
        Integer, comment="items drawn (at most the size asked for)"
    )
    created_by: Mapped[int | None] = mapped_column(
        ForeignKey("users.id", ondelete="SET NULL"), index=True
    )
    created_at: Mapped[created]


class ReviewSessionItem(Base):
    """One prediction of a review session, at its position in the review order."""

    __tablename__ = "review_session_items"
    __table_args__ = (
        UniqueConstraint("session_id", "position"),
        UniqueConstraint("session_id", "prediction_id"),
        CheckConstraint("position >= 0", name="position_nonneg"),
    )

    id: Mapped[bigpk]
    # Indexed by the two unique constraints, whose first column it is.
    session_id: Mapped[int] = mapped_column(ForeignKey("review_sessions.id", ondelete="CASCADE"))
    position: Mapped[int] = mapped_column(Integer, comment="0-based place in the review order")
    prediction_id: Mapped[int] = mapped_column(
        ForeignKey("predictions.id", ondelete="CASCADE"), index=True
    )


__all__ += ["REVIEW_STRATEGIES", "ReviewSession", "ReviewSessionItem"]


# --------------------------------------------------------------------------- materialised results

TRACKED_TABLES = (
    "sources",
    "studies",
    "series",
    "images",
    "ingest_errors",
    "datasets",
    "dataset_versions",
    "dataset_items",
    "version_labels",
    "annotators",
    "labeling_tasks",
    "annotations",
    "reference_labels",
    "models",
    "model_versions",
    "predictions",
    "image_quality",
    "check_runs",
    "check_results",
)
"""Tables whose every write bumps their row of :class:`DataChange` (triggers of migration
0005): the inputs of the materialised results (:mod:`quality.db.aggregates`)."""


class DataChange(Base):
    """A change counter per tracked table, bumped by a trigger on every write.

    Migration 0005 seeds one row per name of :data:`TRACKED_TABLES` and adds the triggers:
    ``AFTER INSERT OR UPDATE OR DELETE`` (and ``TRUNCATE``) ``FOR EACH STATEMENT`` on
    PostgreSQL, ``FOR EACH ROW`` on SQLite (it has no statement triggers). The counter moves
    inside the writing transaction, so a reader sees a new version exactly when it sees the
    rows that made it.
    """

    __tablename__ = "data_changes"
    __table_args__ = {"comment": "write counters of the tracked tables (quality.db.aggregates)"}  # noqa: RUF012

    name: Mapped[str] = mapped_column(String(64), primary_key=True, comment="table name")
    version: Mapped[int] = mapped_column(
        BigInteger, default=0, server_default="0", comment="bumped by every write"
    )
    changed_at: Mapped[dt.datetime | None] = mapped_column(
        DateTime(timezone=True), comment="time of the last write"
    )


class MaterializedResult(Base):
    """A page's heavy result, computed ahead by a writer (:func:`quality.db.aggregates.refresh`).

    ``stamp`` holds the :class:`DataChange` versions of the tables the result was computed
    from; a reader uses the row only while they are unchanged, and computes live otherwise.
    """

    __tablename__ = "materialized_results"
    __table_args__ = (UniqueConstraint("kind", "key"),)

    id: Mapped[intpk]
    kind: Mapped[str] = mapped_column(String(64), comment="what was computed (a builder)")
    key: Mapped[str] = mapped_column(String(512), comment="its arguments, as JSON")
    stamp: Mapped[str] = mapped_column(String(1024), comment="input table versions, as JSON")
    built_at: Mapped[created]
    build_s: Mapped[float | None] = mapped_column(Float, comment="seconds the build took")
    payload: Mapped[bytes] = mapped_column(
        LargeBinary, comment="the result, pickled and zlib-compressed"
    )
    n_bytes: Mapped[int] = mapped_column(BigInteger, comment="size of the payload")


__all__ += ["TRACKED_TABLES", "DataChange", "MaterializedResult"]
