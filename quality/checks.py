"""Data tests: built-in checks, analysts' YAML rules, distribution checks, suggestion, history.

A *check* looks at one aspect of a dataset version (its images, their studies, series and
sources, the annotations of the dataset's labeling tasks) and returns a
:class:`CheckOutcome`: passed or not, how many rows it judged and how many failed, a plain
message, and up to ``max_failing`` failing rows (``sop_uid, uri, field, value`` and
check-specific columns; never a patient name or ID, ``patient_key`` at most). As in
cleanlab's issue managers, each built-in check is a small registered unit with a stable name,
a category and a severity, and a separate reporter (:func:`format_text`,
:meth:`CheckReport.as_dict`) only formats.

Which function for which need
-----------------------------
* :func:`run_checks` - everything for one dataset version: the built-ins, the rules of a
  rules file (:mod:`quality.rules`), distribution checks against a reference; stores the run
  (``check_runs``, ``check_results``) unless ``save=False``.
* :func:`check_history` / :func:`check_run_results` - read stored runs back (the page, the
  dataset card).
* :func:`suggest_rules` - derive a rules file from a reference version, as Deequ does.
* :func:`format_text` - a plain-text report; :func:`robust_z` - the anomaly score alone.
* :data:`BUILTIN_CHECKS` - the registry (name → :class:`BuiltinCheck`).

Built-in checks
---------------
=====================================  ============  ========  ==========================================
name                                   category      severity  fails when
=====================================  ============  ========  ==========================================
``duplicates.exact``                   duplicates    error     two images share ``pixel_sha256``
``duplicates.near``                    duplicates    warning   images look alike (pHash + spectrum;
                                                               :mod:`quality.imaging.duplicates`);
                                                               needs the store (pixels are decoded)
``missing.required_fields``            missing       error     modality, body part, study date, rows,
                                                               cols or photometric is missing, or a CR/DX
                                                               header has no (Imager)PixelSpacing
``missing.empty_predictions``          missing       warning   a prediction of the dataset's models has
                                                               neither label nor score
``syntax.ingest_errors``               syntax        error     a file could not be indexed (store-wide:
                                                               such files belong to no dataset)
``syntax.bbox_format``                 syntax        error     an annotation box is not 4 numbers
                                                               ``[x0, y0, x1, y1]`` with ``x1 > x0``,
                                                               ``y1 > y0``
``syntax.header_values``               syntax        warning   header PatientAge is not ``nnnD/W/M/Y``,
                                                               StudyDate not a ``YYYYMMDD`` date,
                                                               PatientSex not M/F/O
``semantic.box_outside_image``         semantic      error     a box reaches outside ``[0, cols] ×
                                                               [0, rows]``
``semantic.label_not_in_schema``       semantic      error     a label is not among its task's classes
``semantic.impossible_age``            semantic      error     header PatientAge (or the stored age) is
                                                               above 120 years
``semantic.zero_spacing``              semantic      error     header (Imager)PixelSpacing has a value
                                                               <= 0 (or the stored spacing does)
``integrity.orphans``                  integrity     error     an annotation or reference label of the
                                                               dataset's tasks is on an image outside
                                                               the version, or an item has no image row
``integrity.store_orphans``            integrity     warning   a study has no series or a series no
                                                               images (store-wide)
``integrity.missing_files``            integrity     error     an image file is not in the store (needs
                                                               the store)
``integrity.patient_in_two_splits``    integrity     error     a patient's images sit in two splits
=====================================  ============  ========  ==========================================

Rules (``rule.<name>``, category ``rule``, the rule's severity and line) and distribution
checks (``distribution.ks.<column>``, ``distribution.chisquare.<column>``,
``distribution.daily.<metric>``, severity warning) come on top.

A check that cannot run (no store given, nothing to compare) is reported as *not run*:
``passed`` is True (it did not fail), ``ran`` is False, severity ``warning``, and its
message says why. A run *passes* when no error-severity check failed.

Scope
-----
The images of one dataset version (the newest, by :func:`quality.db.queries.newest_version_id`,
unless another is named) with their series, studies and sources; annotations and reference
labels of the dataset's labeling tasks on those images; predictions of models whose task is
one of the dataset's tasks. Header values are read in SQL through SQLAlchemy's JSON element
access (``->>`` on PostgreSQL, ``json_extract`` on SQLite). Where a value must be parsed or
matched by a regular expression, the distinct values are grouped and counted in SQL and only
those are judged in Python, so that the semantics are the same (Python's :mod:`re`) on every
backend.

Distribution checks
-------------------
Against a *reference*: another version of the dataset (its images are the reference sample,
the checked version's the current one) or a date range (the checked version's images with a
study date inside the range are the reference, those outside it the current sample).

* per column, the two-sample Kolmogorov-Smirnov test (numeric columns) or Pearson's
  chi-square test (categorical columns) of :func:`quality.drift_tests.run_test`, with the
  Benjamini-Hochberg correction across columns at FDR 0.05
  (:func:`quality.drift_tests.benjamini_hochberg`);
* per-day aggregates (images per day, with days without images counted as 0, and mean kVp
  per day), computed in SQL; a current day is an anomaly when its robust z-score against the
  reference days (:func:`robust_z`) exceeds :data:`ROBUST_Z_LIMIT` in absolute value.

References
----------
.. [1] B. Iglewicz, D. C. Hoaglin, *How to Detect and Handle Outliers*, ASQC Basic
   References in Quality Control 16, 1993 (the modified z-score and the 3.5 limit).
.. [2] S. Schelter et al., "Automating large-scale data quality verification", PVLDB 11(12),
   2018 (Deequ: declarative checks and constraint suggestion).
.. [3] C. G. Northcutt et al., cleanlab ``datalab/internal/issue_manager`` (one small class
   per issue type, a separate reporter).
"""

from __future__ import annotations

import datetime as dt
import json
import math
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
import pandas as pd
from numpy.typing import NDArray
from sqlalchemy import (
    ColumnElement,
    Select,
    and_,
    case,
    distinct,
    false,
    func,
    literal,
    not_,
    or_,
    select,
    true,
)
from sqlalchemy.orm import Session

from quality import drift_tests
from quality.db.queries import _db_errors, newest_version_id, resolve_dataset
from quality.db.schema import (
    Annotation,
    Annotator,
    CheckResult,
    CheckRun,
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
    Series,
    Source,
    Study,
)
from quality.errors import DicomReadError, QualityError, RulesError, StoreError
from quality.rules import COLUMNS, Rule, RuleSet, column_expression, column_spec, load_rules
from quality.store import ImageStore

__all__ = [
    "BUILTIN_CHECKS",
    "CATEGORIES",
    "DAILY_METRICS",
    "DISTRIBUTION_COLUMNS",
    "FAILING_COLUMNS",
    "HISTORY_COLUMNS",
    "MAX_AGE_YEARS",
    "MAX_FAILING",
    "RESULT_COLUMNS",
    "ROBUST_Z_LIMIT",
    "RULES_DIR",
    "BuiltinCheck",
    "Category",
    "CheckOutcome",
    "CheckReport",
    "DateRange",
    "Reference",
    "Scope",
    "check_history",
    "check_run_results",
    "format_text",
    "parse_reference",
    "resolve_scope",
    "robust_z",
    "run_checks",
    "shipped_rules",
    "suggest_rules",
]

Category = Literal[
    "duplicates", "missing", "syntax", "semantic", "integrity", "distribution", "rule"
]
CATEGORIES: tuple[str, ...] = (
    "duplicates",
    "missing",
    "syntax",
    "semantic",
    "integrity",
    "distribution",
    "rule",
)
FAILING_COLUMNS = ["sop_uid", "uri", "field", "value"]
"""The columns every failing-row frame starts with (check-specific ones may follow)."""
MAX_FAILING = 100
"""Default cap on the failing rows kept per check."""
MAX_AGE_YEARS = 120
"""Above this age (years) a PatientAge is impossible."""
ROBUST_Z_LIMIT = 3.5
"""|robust z| above which a day's aggregate is an anomaly (Iglewicz & Hoaglin 1993)."""
RULES_DIR = Path(__file__).resolve().parent.parent / "rules"
"""Folder of the shipped rules files, ``<dataset name>.yaml``."""
HISTORY_COLUMNS = [
    "run_id",
    "started_at",
    "finished_at",
    "passed",
    "version",
    "reference",
    "rules_sha256",
    "n_checks",
    "n_failed",
    "n_failed_errors",
    "n_failed_warnings",
    "n_not_run",
]
RESULT_COLUMNS = [
    "check_name",
    "category",
    "severity",
    "status",
    "passed",
    "n_checked",
    "n_failed",
    "message",
    "line",
    "failing",
]
DISTRIBUTION_COLUMNS: dict[str, Literal["num", "cat"]] = {
    "kvp": "num",
    "patient_age": "num",
    "spacing_row": "num",
    "rows": "num",
    "cols": "num",
    "modality": "cat",
    "body_part": "cat",
    "photometric": "cat",
    "manufacturer": "cat",
    "source": "cat",
    "patient_sex": "cat",
}
"""Columns compared with a reference: KS for ``num``, chi-square for ``cat``."""
DAILY_METRICS: dict[str, str] = {
    "n_images": "images per study day (days without images count as 0)",
    "mean_kvp": "mean kVp of the day's images",
}
"""Per-day aggregates watched for anomalies."""

# Modalities whose images need a pixel spacing (projection radiography).
_SPACING_MODALITIES = ("CR", "DX")
_AGE_RE = re.compile(r"^(\d{3})([DWMY])$")
_AGE_DIV = {"D": 365.25, "W": 52.1775, "M": 12.0, "Y": 1.0}
_SEXES = ("M", "F", "O")
# Robust z: 0.6745 = Φ⁻¹(0.75) makes MAD consistent with σ; 1.253314 = sqrt(π/2) does the
# same for the mean absolute deviation used when MAD is 0.
_MAD_SCALE = 0.6745
_MEANAD_SCALE = 1.253314
_MIN_REFERENCE_DAYS = 3
_FDR = 0.05
_CHUNK = 1000


# --------------------------------------------------------------------------- model


def _empty_failing(*extra: str) -> pd.DataFrame:
    return pd.DataFrame(columns=[*FAILING_COLUMNS, *extra])


@dataclass
class CheckOutcome:
    """What one check found.

    Attributes
    ----------
    name : stable name (``duplicates.exact``, ``rule.<name>``, ...).
    category : one of :data:`CATEGORIES`.
    severity : ``error`` (fails the run) or ``warning``.
    passed : False when the check failed; True when it passed or did not run.
    n_checked : rows (images, annotations, groups, days, columns) judged.
    n_failed : rows that failed (for ``max_missing_share``: the missing ones).
    message : what was found, in plain words.
    failing : up to ``max_failing`` failing rows: :data:`FAILING_COLUMNS` first.
    line : the rules-file line of a rule, else None.
    ran : False when the check could not run (the message says why).
    details : check-specific numbers (p-values, thresholds), JSON-ready.
    """

    name: str
    category: str
    severity: str
    passed: bool
    n_checked: int
    n_failed: int
    message: str
    failing: pd.DataFrame = field(default_factory=_empty_failing)
    line: int | None = None
    ran: bool = True
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def status(self) -> str:
        """``passed``, ``failed`` or ``not_run``."""
        if not self.ran:
            return "not_run"
        return "passed" if self.passed else "failed"

    def as_dict(self, *, with_rows: bool = True) -> dict[str, Any]:
        """JSON-ready: the fields, ``status``, and the failing rows as records."""
        out: dict[str, Any] = {
            "name": self.name,
            "category": self.category,
            "severity": self.severity,
            "status": self.status,
            "passed": self.passed,
            "n_checked": int(self.n_checked),
            "n_failed": int(self.n_failed),
            "message": self.message,
            "line": self.line,
            "details": _json_safe(self.details),
        }
        if with_rows:
            out["failing"] = _records(self.failing)
        return out


def _not_run(name: str, category: str, reason: str) -> CheckOutcome:
    return CheckOutcome(name, category, "warning", True, 0, 0, f"not run: {reason}", ran=False)


def _json_safe(value: Any) -> Any:
    """Plain JSON types: NaN → None, numpy scalars → Python, dates → ISO text."""
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, dt.datetime | dt.date):
        return value.isoformat()
    try:
        missing = pd.isna(value)
    except (TypeError, ValueError):
        missing = False
    if isinstance(missing, bool | np.bool_) and missing:
        return None
    return str(value)


def _records(frame: pd.DataFrame) -> list[dict[str, Any]]:
    return [_json_safe(r) for r in frame.to_dict("records")]


@dataclass(frozen=True)
class Scope:
    """The dataset version a run checks.

    Attributes
    ----------
    dataset_id, dataset : the dataset's id and name.
    version_id, version : the version's id and label.
    """

    dataset_id: int
    dataset: str
    version_id: int
    version: str


@dataclass(frozen=True)
class DateRange:
    """A reference period, both ends included."""

    start: dt.date
    end: dt.date

    def __str__(self) -> str:
        return f"{self.start.isoformat()}..{self.end.isoformat()}"


@dataclass(frozen=True)
class Reference:
    """A resolved reference: another version, or a date range of the checked version."""

    kind: Literal["version", "dates"]
    label: str
    version_id: int
    dates: DateRange | None = None


@dataclass(frozen=True)
class _Sample:
    """Images of a version, optionally restricted to study dates inside/outside a range."""

    version_id: int
    dates: DateRange | None = None
    inside: bool = True


def parse_reference(text: str) -> str | DateRange:
    """``--reference`` text: ``START..END`` (ISO dates) is a :class:`DateRange`, anything
    else a version label.

    Raises
    ------
    ValueError
        A ``..`` range whose ends are not ISO dates or run backwards.
    """
    text = text.strip()
    if ".." not in text:
        return text
    left, _, right = text.partition("..")
    try:
        start, end = dt.date.fromisoformat(left.strip()), dt.date.fromisoformat(right.strip())
    except ValueError as exc:
        raise ValueError(f"reference {text!r}: write START..END as YYYY-MM-DD..YYYY-MM-DD") from exc
    if end < start:
        raise ValueError(f"reference {text!r}: the end is before the start")
    return DateRange(start, end)


def shipped_rules(dataset: str) -> Path | None:
    """The rules file shipped for ``dataset`` (``rules/<dataset>.yaml``), or None."""
    path = RULES_DIR / f"{dataset}.yaml"
    return path if path.is_file() else None


# --------------------------------------------------------------------------- scope SQL


def _images(sample: _Sample, *columns: Any) -> Select[Any]:
    """``SELECT columns`` over the sample's images ⋈ series ⋈ studies ⟕ sources."""
    stmt = (
        select(*columns)
        .select_from(Image)
        .join(
            DatasetItem,
            and_(DatasetItem.image_id == Image.id, DatasetItem.version_id == sample.version_id),
        )
        .join(Series, Series.id == Image.series_id)
        .join(Study, Study.id == Series.study_id)
        .outerjoin(Source, Source.id == Study.source_id)
    )
    if sample.dates is not None:
        within = Study.study_date.between(sample.dates.start, sample.dates.end)
        stmt = stmt.where(within if sample.inside else not_(within))
    return stmt


def _frame(session: Session, stmt: Select[Any]) -> pd.DataFrame:
    result = session.execute(stmt)
    # Plain tuples: pandas probes each Row's attributes, 2.5x slower at 10^6 rows.
    return pd.DataFrame([tuple(r) for r in result], columns=list(result.keys()))


def _missing(expr: Any, kind: str) -> ColumnElement[bool]:
    """NULL, and for text also the empty string."""
    if kind == "text":
        return or_(expr.is_(None), expr == "")
    return expr.is_(None)


def _present(expr: Any, kind: str) -> ColumnElement[bool]:
    if kind == "text":
        return and_(expr.is_not(None), expr != "")
    return expr.is_not(None)


def _count(session: Session, stmt: Select[Any]) -> int:
    return int(session.scalar(stmt) or 0)


class _Json:
    """Dialect-aware JSON helpers (type of a value and of an array element)."""

    NUMBER = ("integer", "real", "number")

    def __init__(self, dialect: str) -> None:
        self.sqlite = dialect == "sqlite"

    def type_of(self, col: Any, index: int | None = None) -> ColumnElement[Any]:
        if self.sqlite:
            return func.json_type(col, "$" if index is None else f"$[{index}]")
        return func.json_typeof(col if index is None else col[index])

    def box(self, col: Any) -> dict[str, Any]:
        """``present``, ``four`` (an array of 4 numbers), ``x0..y1`` (guarded floats),
        ``valid`` for a JSON box column. Casts sit inside CASE so that PostgreSQL never
        casts a non-number."""
        kind = self.type_of(col)
        present = and_(col.is_not(None), func.coalesce(kind, "null") != "null")
        length = case((kind == "array", func.json_array_length(col)), else_=-1)
        four = and_(length == 4, *(self.type_of(col, i).in_(self.NUMBER) for i in range(4)))
        coords = {
            name: case((four, col[i].as_float()), else_=None)
            for i, name in enumerate(("x0", "y0", "x1", "y1"))
        }
        valid = and_(four, coords["x1"] > coords["x0"], coords["y1"] > coords["y0"])
        return {"present": present, "four": four, "valid": valid, **coords}


class _Context:
    """What the checks of one run share: session, scope, store, options, cached scans."""

    def __init__(
        self,
        session: Session,
        scope: Scope,
        *,
        store: ImageStore | None,
        embeddings_dir: Path | None,
        max_failing: int,
        workers: int,
    ) -> None:
        self.session = session
        self.scope = scope
        self.sample = _Sample(scope.version_id)
        self.store = store
        self.embeddings_dir = embeddings_dir
        self.max_failing = max_failing
        self.workers = workers
        self.json = _Json(session.get_bind().dialect.name)
        self._files: tuple[int, pd.DataFrame, int] | None = None
        self._tasks: pd.DataFrame | None = None

    def n_images(self) -> int:
        return _count(self.session, _images(self.sample, func.count(Image.id)))

    def tasks(self) -> pd.DataFrame:
        """The dataset's labeling tasks: ``id, name, kind, classes``."""
        if self._tasks is None:
            rows = self.session.execute(
                select(LabelingTask.id, LabelingTask.name, LabelingTask.kind, LabelingTask.classes)
                .where(LabelingTask.dataset_id == self.scope.dataset_id)
                .order_by(LabelingTask.id)
            ).all()
            self._tasks = pd.DataFrame(rows, columns=["id", "name", "kind", "classes"])
        return self._tasks

    def file_status(self) -> tuple[int, pd.DataFrame, int]:
        """``(n_checked, missing rows, n_outside)`` of the scope's files in the store.

        A URI the store cannot place under its root counts as missing and as outside.
        """
        if self._files is None:
            store = self.store
            if store is None:  # callers check first; keep the type checker honest
                raise QualityError("no image store given")
            missing: list[dict[str, Any]] = []
            n_missing = n_outside = n = 0
            stmt = _images(self.sample, Image.sop_uid, Image.uri).order_by(Image.id)
            for sop_uid, uri in self.session.execute(stmt.execution_options(yield_per=_CHUNK)):
                n += 1
                reason = _file_problem(store, str(uri))
                if reason is None:
                    continue
                n_missing += 1
                n_outside += reason.startswith("outside")
                if len(missing) < self.max_failing:
                    missing.append(
                        {"sop_uid": sop_uid, "uri": uri, "field": "file", "value": reason}
                    )
            frame = pd.DataFrame(missing, columns=FAILING_COLUMNS)
            frame.attrs["n_missing"] = n_missing
            self._files = (n, frame, n_outside)
        return self._files


def _file_problem(store: ImageStore, uri: str) -> str | None:
    """None when ``uri`` is a file of ``store``; else why not.

    A local store answers from the file system. A remote store (no local path) is asked by
    opening the entry: a URI not under the store's root is ``outside``, one the store cannot
    open is ``not found``.

    Raises
    ------
    StoreUnavailableError
        The remote store cannot be reached: the check fails as a whole instead of calling
        every image missing.
    """
    from quality.errors import StoreUnavailableError
    from quality.store import is_remote

    try:
        path = store.local_path(uri)
    except StoreUnavailableError:
        raise
    except StoreError:
        return f"outside the store root {store.root}"
    if path is not None:
        if is_remote(uri):  # a remote entry cannot be a file of a local folder
            return f"outside the store root {store.root}"
        return None if path.is_file() else "file not found in the store"
    # Compare without a query (a DICOMweb root may carry options) or trailing slash.
    root = str(store.root).split("?", 1)[0].split("#", 1)[0].rstrip("/")
    if not uri.startswith(root + "/"):
        return f"outside the store root {store.root}"
    try:
        with store.open(uri):
            return None
    except StoreUnavailableError:
        raise
    except (StoreError, OSError):
        return "file not found in the store"


# --------------------------------------------------------------------------- registry


CheckFn = Callable[[_Context], CheckOutcome]


@dataclass(frozen=True)
class BuiltinCheck:
    """A registered built-in check.

    Attributes
    ----------
    name, category, severity : as in :class:`CheckOutcome`.
    description : what fails it, in plain words.
    fn : ``fn(context) -> CheckOutcome``.
    """

    name: str
    category: str
    severity: str
    description: str
    fn: CheckFn = field(repr=False)


BUILTIN_CHECKS: dict[str, BuiltinCheck] = {}


def _register(
    name: str, category: str, severity: str, description: str
) -> Callable[[CheckFn], CheckFn]:
    def deco(fn: CheckFn) -> CheckFn:
        BUILTIN_CHECKS[name] = BuiltinCheck(name, category, severity, description, fn)
        return fn

    return deco


def _outcome(
    ctx: _Context,
    name: str,
    *,
    n_checked: int,
    n_failed: int,
    message: str,
    failing: pd.DataFrame | None = None,
    passed: bool | None = None,
    details: dict[str, Any] | None = None,
) -> CheckOutcome:
    spec = BUILTIN_CHECKS[name]
    frame = failing if failing is not None else _empty_failing()
    return CheckOutcome(
        name=name,
        category=spec.category,
        severity=spec.severity,
        passed=(n_failed == 0) if passed is None else passed,
        n_checked=int(n_checked),
        n_failed=int(n_failed),
        message=message,
        failing=frame.head(ctx.max_failing).reset_index(drop=True),
        details=details or {},
    )


def _plural(n: int, word: str, plural: str | None = None) -> str:
    return f"{n:,} {word if n == 1 else (plural or word + 's')}"


# --------------------------------------------------------------------------- duplicates


@_register(
    "duplicates.exact", "duplicates", "error", "two images share the same stored pixel bytes"
)
def _exact_duplicates(ctx: _Context) -> CheckOutcome:
    from quality.imaging.duplicates import exact_duplicates

    frame = exact_duplicates(ctx.session, version_id=ctx.scope.version_id)
    n_checked = _count(
        ctx.session,
        _images(ctx.sample, func.count(Image.id)).where(Image.pixel_sha256.is_not(None)),
    )
    if frame.empty:
        return _outcome(
            ctx,
            "duplicates.exact",
            n_checked=n_checked,
            n_failed=0,
            message=(
                f"no two of {_plural(n_checked, 'image')} share the same pixels"
                if n_checked
                else "no image of the version has a pixel hash"
            ),
        )
    first = frame.groupby("cluster_id")["sop_uid"].transform("first")
    failing = pd.DataFrame(
        {
            "sop_uid": frame["sop_uid"],
            "uri": frame["uri"],
            "field": "pixel_sha256",
            "value": frame["pixel_sha256"].str.slice(0, 16),
            "duplicate_of": first.where(first != frame["sop_uid"]),
            "cluster_id": frame["cluster_id"],
            "split": frame["split"],
        }
    )
    n_groups = int(frame["cluster_id"].nunique())
    return _outcome(
        ctx,
        "duplicates.exact",
        n_checked=n_checked,
        n_failed=len(frame),
        message=(
            f"{_plural(n_groups, 'group')} of identical images ({_plural(len(frame), 'image')}):"
            " the same pixels under different SOP UIDs"
        ),
        failing=failing,
        details={"n_groups": n_groups},
    )


def _store_loader(store: ImageStore) -> Callable[[str], Any]:
    """``uri -> DecodedImage`` for the images of ``store``, local or remote.

    A remote store (no local path) is read through :mod:`quality.store` by URI. Once the
    store cannot be reached, every later call fails at once with a :class:`QualityError`,
    which the per-image error handling of the duplicate search does not swallow (a
    :class:`~quality.errors.StoreUnavailableError` is a ``ValueError``, which it would
    count as one undecodable image, after waiting out the retries, for every image).
    """
    from quality.dicom import load_pixels
    from quality.errors import StoreUnavailableError

    root = str(store.root).split("?", 1)[0].split("#", 1)[0].rstrip("/")
    down: list[str] = []

    def unreachable(exc: StoreUnavailableError | None = None) -> QualityError:
        if exc is not None and not down:
            down.append(str(exc))
        return QualityError(f"the image store {store.root} is not reachable: {down[0]}")

    def load(uri: str) -> Any:
        if down:
            raise unreachable()
        try:
            path = store.local_path(uri)
        except StoreUnavailableError as exc:
            raise unreachable(exc) from exc
        except StoreError as exc:
            raise DicomReadError(uri, "read_error", str(exc)) from exc
        if path is not None:
            return load_pixels(path)
        if not uri.startswith(root + "/"):
            raise DicomReadError(uri, "read_error", f"outside the store root {store.root}")
        try:
            return load_pixels(uri)
        except StoreUnavailableError as exc:
            raise unreachable(exc) from exc

    return load


@_register(
    "duplicates.near",
    "duplicates",
    "warning",
    "images that look alike (shifted, re-windowed, re-noised copies)",
)
def _near_duplicates(ctx: _Context) -> CheckOutcome:
    from quality.imaging.duplicates import near_duplicates

    name = "duplicates.near"
    if ctx.store is None:
        return _not_run(name, "duplicates", "needs the image store (pixels are compared)")
    n, _, n_outside = ctx.file_status()
    if n == 0:
        return _not_run(name, "duplicates", "the version has no images")
    if n_outside == n:
        return _not_run(
            name, "duplicates", f"no image of the version is in the store {ctx.store.root}"
        )
    embeddings = None
    if ctx.embeddings_dir is not None:
        from quality.imaging.report import dataset_embeddings

        embeddings = dataset_embeddings(
            ctx.session, dataset_id=ctx.scope.dataset_id, embeddings_dir=ctx.embeddings_dir
        )
    clusters = near_duplicates(
        ctx.session,
        version_id=ctx.scope.version_id,
        embeddings=embeddings,
        loader=_store_loader(ctx.store),
        workers=ctx.workers,
    )
    skipped = clusters.attrs.get("skipped", pd.DataFrame())
    n_hashed = n - len(skipped)
    near_ids = set(clusters.loc[clusters["kind"] == "near", "cluster_id"])
    members = clusters.loc[clusters["cluster_id"].isin(near_ids)]
    details = {
        "n_skipped": len(skipped),
        "embeddings": embeddings is not None,
        "n_clusters": len(near_ids),
    }
    if members.empty:
        return _outcome(
            ctx,
            name,
            n_checked=n_hashed,
            n_failed=0,
            message=f"no look-alike images among {_plural(n_hashed, 'readable image')}",
            details=details,
        )
    first = members.groupby("cluster_id")["sop_uid"].transform("first")
    failing = pd.DataFrame(
        {
            "sop_uid": members["sop_uid"],
            "uri": members["uri"],
            "field": "pixels",
            "value": members["kind"],
            "duplicate_of": first.where(first != members["sop_uid"]),
            "cluster_id": members["cluster_id"],
            "hamming_to_first": members["hamming_to_first"],
            "similarity_to_first": members["similarity_to_first"],
        }
    )
    return _outcome(
        ctx,
        name,
        n_checked=n_hashed,
        n_failed=len(members),
        message=(
            f"{_plural(len(near_ids), 'group')} of look-alike images "
            f"({_plural(len(members), 'image')}); {_plural(len(skipped), 'image')} unreadable "
            "or blank, not compared"
        ),
        failing=failing,
        details=details,
    )


# --------------------------------------------------------------------------- missing


def _required_fields(ctx: _Context) -> dict[str, ColumnElement[bool]]:
    header = Image.header
    return {
        "modality": _missing(Study.modality, "text"),
        "body_part": _missing(Study.body_part, "text"),
        "study_date": Study.study_date.is_(None),
        "rows": Image.rows.is_(None),
        "cols": Image.cols.is_(None),
        "photometric": _missing(Image.photometric, "text"),
        "pixel_spacing": and_(
            Study.modality.in_(_SPACING_MODALITIES),
            header["PixelSpacing"].as_string().is_(None),
            header["ImagerPixelSpacing"].as_string().is_(None),
        ),
    }


@_register(
    "missing.required_fields",
    "missing",
    "error",
    "modality, body part, study date, rows, cols, photometric or (CR/DX) pixel spacing missing",
)
def _missing_fields(ctx: _Context) -> CheckOutcome:
    fields = _required_fields(ctx)
    flags = {name: case((cond, 1), else_=0) for name, cond in fields.items()}
    any_missing = or_(*fields.values())
    row = ctx.session.execute(
        _images(
            ctx.sample,
            func.count(Image.id),
            func.sum(case((any_missing, 1), else_=0)),
            *(func.sum(flag) for flag in flags.values()),
        )
    ).one()
    n, n_bad = int(row[0]), int(row[1] or 0)
    per_field = {name: int(v or 0) for name, v in zip(fields, row[2:], strict=True)}
    rows = _frame(
        ctx.session,
        _images(
            ctx.sample,
            Image.sop_uid,
            Image.uri,
            *(flag.label(name) for name, flag in flags.items()),
        )
        .where(any_missing)
        .order_by(Image.id)
        .limit(ctx.max_failing),
    )
    long = rows.melt(id_vars=["sop_uid", "uri"], var_name="field", value_name="flag")
    long = long.loc[long["flag"] == 1].assign(value=None)
    failing = long[FAILING_COLUMNS].sort_values(["sop_uid", "field"], ignore_index=True)
    counted = {k: v for k, v in per_field.items() if v}
    listed = ", ".join(f"{k}: {v:,}" for k, v in counted.items())
    message = (
        f"images missing a required field: {n_bad:,} of {n:,} ({listed})"
        if n_bad
        else f"every one of {_plural(n, 'image')} has the required fields"
    )
    return _outcome(
        ctx,
        "missing.required_fields",
        n_checked=n,
        n_failed=n_bad,
        message=message,
        failing=failing,
        details={"per_field": per_field},
    )


def _dataset_predictions(ctx: _Context, *columns: Any) -> Select[Any]:
    return (
        _images(ctx.sample, *columns)
        .join(Prediction, Prediction.image_id == Image.id)
        .join(ModelVersion, ModelVersion.id == Prediction.model_version_id)
        .join(Model, Model.id == ModelVersion.model_id)
        .join(LabelingTask, LabelingTask.id == Model.task_id)
        .where(LabelingTask.dataset_id == ctx.scope.dataset_id)
    )


@_register(
    "missing.empty_predictions",
    "missing",
    "warning",
    "a prediction of the dataset's models has neither a label nor a score",
)
def _empty_predictions(ctx: _Context) -> CheckOutcome:
    empty = and_(Prediction.label.is_(None), Prediction.score.is_(None))
    row = ctx.session.execute(
        _dataset_predictions(ctx, func.count(Prediction.id), func.sum(case((empty, 1), else_=0)))
    ).one()
    n, n_bad = int(row[0]), int(row[1] or 0)
    failing = _frame(
        ctx.session,
        _dataset_predictions(
            ctx,
            Image.sop_uid,
            Image.uri,
            literal("prediction").label("field"),
            (Model.name + " " + ModelVersion.version).label("value"),
            Prediction.created_at,
        )
        .where(empty)
        .order_by(Prediction.created_at, Prediction.id)
        .limit(ctx.max_failing),
    )
    message = (
        f"predictions with neither label nor score (an empty model output): {n_bad:,} of {n:,}"
        if n_bad
        else f"every one of {_plural(n, 'prediction')} has a label or a score"
    )
    return _outcome(
        ctx,
        "missing.empty_predictions",
        n_checked=n,
        n_failed=n_bad,
        message=message,
        failing=failing,
    )


# --------------------------------------------------------------------------- syntax


@_register(
    "syntax.ingest_errors",
    "syntax",
    "error",
    "a file of the store could not be indexed (truncated, not DICOM, ...)",
)
def _ingest_errors(ctx: _Context) -> CheckOutcome:
    n_errors = _count(ctx.session, select(func.count(IngestError.id)))
    n_images = _count(ctx.session, select(func.count(Image.id)))
    failing = _frame(
        ctx.session,
        select(
            literal(None).label("sop_uid"),
            IngestError.uri,
            IngestError.kind.label("field"),
            IngestError.message.label("value"),
        )
        .order_by(IngestError.id)
        .limit(ctx.max_failing),
    )
    kinds = ctx.session.execute(
        select(IngestError.kind, func.count()).group_by(IngestError.kind).order_by(IngestError.kind)
    ).all()
    listed = ", ".join(f"{k}: {n}" for k, n in kinds)
    message = (
        f"{_plural(n_errors, 'file')} of the store could not be indexed ({listed}); store-wide, "
        "as such files belong to no dataset"
        if n_errors
        else f"every file of the store was indexed ({_plural(n_images, 'image')})"
    )
    return _outcome(
        ctx,
        "syntax.ingest_errors",
        n_checked=n_images + n_errors,
        n_failed=n_errors,
        message=message,
        failing=failing,
        details={"per_kind": {str(k): int(n) for k, n in kinds}},
    )


def _scope_annotations(ctx: _Context, *columns: Any) -> Select[Any]:
    """Annotations of the dataset's tasks on the version's images (with task and annotator)."""
    return (
        _images(ctx.sample, *columns)
        .join(Annotation, Annotation.image_id == Image.id)
        .join(LabelingTask, LabelingTask.id == Annotation.task_id)
        .join(Annotator, Annotator.id == Annotation.annotator_id)
        .where(LabelingTask.dataset_id == ctx.scope.dataset_id)
    )


def _annotation_rows(
    ctx: _Context, condition: ColumnElement[bool], field_name: str, value: Any
) -> pd.DataFrame:
    return _frame(
        ctx.session,
        _scope_annotations(
            ctx,
            Image.sop_uid,
            Image.uri,
            literal(field_name).label("field"),
            value.label("value"),
            LabelingTask.name.label("task"),
            Annotator.code.label("annotator"),
            Image.cols,
            Image.rows,
        )
        .where(condition)
        .order_by(Annotation.id)
        .limit(ctx.max_failing),
    )


@_register(
    "syntax.bbox_format",
    "syntax",
    "error",
    "an annotation box is not four numbers [x0, y0, x1, y1] with x1 > x0 and y1 > y0",
)
def _bbox_format(ctx: _Context) -> CheckOutcome:
    box = ctx.json.box(Annotation.bbox)
    bad = and_(box["present"], not_(func.coalesce(box["valid"], false())))
    row = ctx.session.execute(
        _scope_annotations(ctx, func.count(Annotation.id), func.sum(case((bad, 1), else_=0))).where(
            box["present"]
        )
    ).one()
    n, n_bad = int(row[0]), int(row[1] or 0)
    failing = _annotation_rows(ctx, bad, "bbox", Annotation.bbox)
    if not failing.empty:
        failing["value"] = failing["value"].map(lambda v: json.dumps(v, default=str))
    message = (
        f"boxes that are not [x0, y0, x1, y1] with x1 > x0, y1 > y0: {n_bad:,} of {n:,}"
        if n_bad
        else f"every one of {_plural(n, 'annotation box', 'annotation boxes')} is well formed"
    )
    return _outcome(
        ctx, "syntax.bbox_format", n_checked=n, n_failed=n_bad, message=message, failing=failing
    )


def _age_years(value: str) -> float | None:
    """Years of a DICOM AS value (``045Y``, ``018M``, ``003W``, ``010D``), else None."""
    m = _AGE_RE.match(value)
    return None if m is None else int(m.group(1)) / _AGE_DIV[m.group(2)]


def _valid_da(value: str) -> bool:
    if not re.fullmatch(r"\d{8}", value):
        return False
    try:
        dt.date(int(value[:4]), int(value[4:6]), int(value[6:]))
    except ValueError:
        return False
    return True


_HEADER_SYNTAX: dict[str, tuple[str, Callable[[str], bool]]] = {
    "PatientAge": ("nnnD, nnnW, nnnM or nnnY", lambda v: _age_years(v) is not None),
    "StudyDate": ("a YYYYMMDD date", _valid_da),
    "PatientSex": ("M, F or O", lambda v: v in _SEXES),
}


def _value_groups(ctx: _Context, expr: Any) -> list[tuple[Any, int]]:
    """``(value, n)`` for the distinct non-NULL values of ``expr`` in scope (SQL GROUP BY)."""
    stmt = _images(ctx.sample, expr, func.count(Image.id)).where(expr.is_not(None)).group_by(expr)
    return [(v, int(n)) for v, n in ctx.session.execute(stmt.execution_options(yield_per=_CHUNK))]


def _rows_with_values(
    ctx: _Context, expr: Any, values: Sequence[Any], field_name: str
) -> pd.DataFrame:
    if not values:
        return _empty_failing()
    return _frame(
        ctx.session,
        _images(
            ctx.sample,
            Image.sop_uid,
            Image.uri,
            literal(field_name).label("field"),
            expr.label("value"),
        )
        .where(expr.in_(list(values)[: ctx.max_failing]))
        .order_by(Image.id)
        .limit(ctx.max_failing),
    )


@_register(
    "syntax.header_values",
    "syntax",
    "warning",
    "a header value does not parse: PatientAge (nnnY), StudyDate (YYYYMMDD), PatientSex (M/F/O)",
)
def _header_values(ctx: _Context) -> CheckOutcome:
    frames, per_field, n_checked = [], {}, 0
    for keyword, (_expected, ok) in _HEADER_SYNTAX.items():
        expr = Image.header[keyword].as_string()
        groups = _value_groups(ctx, expr)
        bad = [v for v, _ in groups if not ok(str(v))]
        n_checked += sum(n for _, n in groups)
        per_field[keyword] = sum(n for v, n in groups if v in bad)
        frames.append(_rows_with_values(ctx, expr, bad, keyword))
    n_bad = sum(per_field.values())
    counted = {k: v for k, v in per_field.items() if v}
    message = (
        "header values that do not parse: "
        + ", ".join(
            f"{k} on {_plural(v, 'image')} ({_HEADER_SYNTAX[k][0]} expected)"
            for k, v in counted.items()
        )
        if n_bad
        else f"every PatientAge, StudyDate and PatientSex parses ({n_checked:,} values)"
    )
    return _outcome(
        ctx,
        "syntax.header_values",
        n_checked=n_checked,
        n_failed=n_bad,
        message=message,
        failing=_concat(frames),
        details={"per_field": per_field},
    )


def _concat(frames: Iterable[pd.DataFrame]) -> pd.DataFrame:
    kept = [f for f in frames if not f.empty]
    if not kept:
        return _empty_failing()
    return pd.concat(kept, ignore_index=True)


# --------------------------------------------------------------------------- semantic


@_register(
    "semantic.box_outside_image",
    "semantic",
    "error",
    "an annotation box reaches outside the image (x < 0, y < 0, x1 > cols or y1 > rows)",
)
def _box_outside(ctx: _Context) -> CheckOutcome:
    box = ctx.json.box(Annotation.bbox)
    judged = and_(box["present"], box["valid"], Image.cols.is_not(None), Image.rows.is_not(None))
    outside = and_(
        judged,
        or_(box["x0"] < 0, box["y0"] < 0, box["x1"] > Image.cols, box["y1"] > Image.rows),
    )
    row = ctx.session.execute(
        _scope_annotations(
            ctx, func.count(Annotation.id), func.sum(case((outside, 1), else_=0))
        ).where(judged)
    ).one()
    n, n_bad = int(row[0]), int(row[1] or 0)
    failing = _annotation_rows(ctx, outside, "bbox", Annotation.bbox)
    if not failing.empty:
        failing["value"] = failing["value"].map(lambda v: json.dumps(v, default=str))
    message = (
        f"boxes reaching outside their image: {n_bad:,} of {n:,}"
        if n_bad
        else f"every one of {_plural(n, 'box', 'boxes')} lies inside its image"
    )
    return _outcome(
        ctx,
        "semantic.box_outside_image",
        n_checked=n,
        n_failed=n_bad,
        message=message,
        failing=failing,
    )


@_register(
    "semantic.label_not_in_schema",
    "semantic",
    "error",
    "a label is not among its task's classes (box and mask tasks: labels of drawn shapes)",
)
def _label_schema(ctx: _Context) -> CheckOutcome:
    tasks = ctx.tasks()
    conditions, skipped = [], []
    for rec in tasks.to_dict("records"):
        classes = [str(c) for c in (rec["classes"] or [])]
        if not classes:
            skipped.append(str(rec["name"]))
            continue
        cond = and_(
            Annotation.task_id == int(rec["id"]),
            Annotation.label.is_not(None),
        )
        # A box-less (mask-less) record of a box (mask) task says "nothing to draw"; its
        # label, often the negative class, is not one of the shape classes.
        if rec["kind"] == "bbox":
            cond = and_(cond, ctx.json.box(Annotation.bbox)["present"])
        elif rec["kind"] == "mask":
            cond = and_(cond, Annotation.mask.is_not(None))
        conditions.append((cond, Annotation.label.not_in(classes)))
    if not conditions:
        return _outcome(
            ctx,
            "semantic.label_not_in_schema",
            n_checked=0,
            n_failed=0,
            message="no task of the dataset has a class schema to check labels against",
        )
    judged = or_(*(c for c, _ in conditions))
    bad = or_(*(and_(c, b) for c, b in conditions))
    row = ctx.session.execute(
        _scope_annotations(ctx, func.count(Annotation.id), func.sum(case((bad, 1), else_=0))).where(
            judged
        )
    ).one()
    n, n_bad = int(row[0]), int(row[1] or 0)
    failing = _annotation_rows(ctx, bad, "label", Annotation.label)
    message = (
        f"labels not among their task's classes: {n_bad:,} of {n:,}"
        + (
            f" (e.g. {failing['value'].iloc[0]!r} in {failing['task'].iloc[0]})"
            if len(failing)
            else ""
        )
        if n_bad
        else f"every one of {_plural(n, 'label')} is one of its task's classes"
    )
    if skipped:
        message += f"; tasks without classes not checked: {', '.join(skipped)}"
    return _outcome(
        ctx,
        "semantic.label_not_in_schema",
        n_checked=n,
        n_failed=n_bad,
        message=message,
        failing=failing,
    )


@_register(
    "semantic.impossible_age",
    "semantic",
    "error",
    f"a patient age above {MAX_AGE_YEARS} years (header PatientAge, or the stored age)",
)
def _impossible_age(ctx: _Context) -> CheckOutcome:
    expr = Image.header["PatientAge"].as_string()
    groups = _value_groups(ctx, expr)
    bad = [v for v, _ in groups if (y := _age_years(str(v))) is not None and y > MAX_AGE_YEARS]
    n_header = sum(n for v, n in groups if v in bad)
    stored_bad = or_(Study.patient_age_years > MAX_AGE_YEARS, Study.patient_age_years < 0)
    # The stored age is only counted where the header one is not already judged bad.
    stored_only = and_(stored_bad, or_(expr.is_(None), expr.not_in(bad or [""])))
    n_stored = _count(ctx.session, _images(ctx.sample, func.count(Image.id)).where(stored_only))
    failing = _concat(
        [
            _rows_with_values(ctx, expr, bad, "PatientAge"),
            _frame(
                ctx.session,
                _images(
                    ctx.sample,
                    Image.sop_uid,
                    Image.uri,
                    literal("patient_age").label("field"),
                    Study.patient_age_years.label("value"),
                )
                .where(stored_only)
                .order_by(Image.id)
                .limit(ctx.max_failing),
            ),
        ]
    )
    n_checked = _count(
        ctx.session,
        _images(ctx.sample, func.count(Image.id)).where(
            or_(expr.is_not(None), Study.patient_age_years.is_not(None))
        ),
    )
    n_bad = n_header + n_stored
    message = (
        f"images with an age above {MAX_AGE_YEARS} years: {n_bad:,} of {n_checked:,}"
        + (f" ({', '.join(map(str, bad[:5]))})" if bad else "")
        if n_bad
        else f"every one of {_plural(n_checked, 'age')} is possible (at most {MAX_AGE_YEARS} years)"
    )
    return _outcome(
        ctx,
        "semantic.impossible_age",
        n_checked=n_checked,
        n_failed=n_bad,
        message=message,
        failing=failing,
    )


def _as_number(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


@_register(
    "semantic.zero_spacing",
    "semantic",
    "error",
    "a pixel spacing of 0 (or below): header PixelSpacing / ImagerPixelSpacing, or the stored one",
)
def _zero_spacing(ctx: _Context) -> CheckOutcome:
    exprs = {
        f"{kw}[{i}]": Image.header[(kw, i)].as_string()
        for kw in ("PixelSpacing", "ImagerPixelSpacing")
        for i in (0, 1)
    }
    bad_values: dict[str, list[Any]] = {}
    for label, expr in exprs.items():
        groups = _value_groups(ctx, expr)
        bad_values[label] = [v for v, _ in groups if (x := _as_number(v)) is not None and x <= 0]
    conditions = [expr.in_(bad_values[label]) for label, expr in exprs.items() if bad_values[label]]
    conditions.append(or_(Image.spacing_row <= 0, Image.spacing_col <= 0))
    bad = or_(*conditions)
    has_spacing = or_(*(e.is_not(None) for e in exprs.values()), Image.spacing_row.is_not(None))
    row = ctx.session.execute(
        _images(ctx.sample, func.count(Image.id), func.sum(case((bad, 1), else_=0))).where(
            has_spacing
        )
    ).one()
    n, n_bad = int(row[0]), int(row[1] or 0)
    frames = [
        _rows_with_values(ctx, expr, bad_values[label], label.split("[")[0])
        for label, expr in exprs.items()
        if bad_values[label]
    ]
    frames.append(
        _frame(
            ctx.session,
            _images(
                ctx.sample,
                Image.sop_uid,
                Image.uri,
                literal("spacing_row").label("field"),
                Image.spacing_row.label("value"),
            )
            .where(or_(Image.spacing_row <= 0, Image.spacing_col <= 0))
            .order_by(Image.id)
            .limit(ctx.max_failing),
        )
    )
    failing = _concat(frames)
    if not failing.empty:
        failing = failing.drop_duplicates(subset=["sop_uid", "field"], ignore_index=True)
    message = (
        f"images with a pixel spacing of 0 or below: {n_bad:,} of {n:,}"
        if n_bad
        else f"every one of {_plural(n, 'pixel spacing')} is positive"
    )
    return _outcome(
        ctx, "semantic.zero_spacing", n_checked=n, n_failed=n_bad, message=message, failing=failing
    )


# --------------------------------------------------------------------------- integrity


@_register(
    "integrity.orphans",
    "integrity",
    "error",
    "an annotation or reference label of the dataset's tasks on an image outside the version, "
    "or a dataset item without its image row",
)
def _orphans(ctx: _Context) -> CheckOutcome:
    vid = ctx.scope.version_id
    in_version = select(DatasetItem.image_id).where(DatasetItem.version_id == vid)
    frames, counts = [], {}
    for label, model in (("annotation", Annotation), ("reference_label", ReferenceLabel)):
        base = (
            select(func.count(model.id))
            .join(LabelingTask, LabelingTask.id == model.task_id)
            .where(LabelingTask.dataset_id == ctx.scope.dataset_id)
        )
        outside = model.image_id.not_in(in_version)
        counts[f"n_{label}s"] = _count(ctx.session, base)
        counts[f"{label}s_outside"] = _count(ctx.session, base.where(outside))
        frames.append(
            _frame(
                ctx.session,
                select(
                    Image.sop_uid,
                    Image.uri,
                    literal(label).label("field"),
                    LabelingTask.name.label("value"),
                )
                .select_from(model)
                .join(LabelingTask, LabelingTask.id == model.task_id)
                .outerjoin(Image, Image.id == model.image_id)
                .where(LabelingTask.dataset_id == ctx.scope.dataset_id, outside)
                .order_by(model.id)
                .limit(ctx.max_failing),
            )
        )
    no_image = and_(DatasetItem.version_id == vid, Image.id.is_(None))
    items = select(DatasetItem.id).outerjoin(Image, Image.id == DatasetItem.image_id)
    counts["n_items"] = _count(
        ctx.session, select(func.count(DatasetItem.id)).where(DatasetItem.version_id == vid)
    )
    counts["items_without_image"] = _count(
        ctx.session, select(func.count()).select_from(items.where(no_image).subquery())
    )
    frames.append(
        _frame(
            ctx.session,
            select(
                literal(None).label("sop_uid"),
                literal(None).label("uri"),
                literal("dataset_item").label("field"),
                DatasetItem.image_id.label("value"),
            )
            .select_from(DatasetItem)
            .outerjoin(Image, Image.id == DatasetItem.image_id)
            .where(no_image)
            .limit(ctx.max_failing),
        )
    )
    n_bad = (
        counts["annotations_outside"]
        + counts["reference_labels_outside"]
        + counts["items_without_image"]
    )
    n = counts["n_annotations"] + counts["n_reference_labels"] + counts["n_items"]
    parts = [
        (counts["annotations_outside"], "annotation", "on images outside the version"),
        (counts["reference_labels_outside"], "reference label", "on images outside the version"),
        (counts["items_without_image"], "dataset item", "without its image"),
    ]
    listed = "; ".join(f"{_plural(k, w)} {why}" for k, w, why in parts if k)
    message = (
        listed
        if n_bad
        else (
            f"every annotation, reference label and item ({n:,}) points at an image of the version"
        )
    )
    return _outcome(
        ctx,
        "integrity.orphans",
        n_checked=n,
        n_failed=n_bad,
        message=message,
        failing=_concat(frames),
        details=counts,
    )


@_register(
    "integrity.store_orphans",
    "integrity",
    "warning",
    "a study without series or a series without images (store-wide)",
)
def _store_orphans(ctx: _Context) -> CheckOutcome:
    no_series = ~select(Series.id).where(Series.study_id == Study.id).exists()
    no_images = ~select(Image.id).where(Image.series_id == Series.id).exists()
    n_studies = _count(ctx.session, select(func.count(Study.id)))
    n_series = _count(ctx.session, select(func.count(Series.id)))
    bad_studies = _count(ctx.session, select(func.count(Study.id)).where(no_series))
    bad_series = _count(ctx.session, select(func.count(Series.id)).where(no_images))
    failing = _concat(
        [
            _frame(
                ctx.session,
                select(
                    literal(None).label("sop_uid"),
                    literal(None).label("uri"),
                    literal("study without series").label("field"),
                    Study.study_uid.label("value"),
                )
                .where(no_series)
                .order_by(Study.id)
                .limit(ctx.max_failing),
            ),
            _frame(
                ctx.session,
                select(
                    literal(None).label("sop_uid"),
                    literal(None).label("uri"),
                    literal("series without images").label("field"),
                    Series.series_uid.label("value"),
                )
                .where(no_images)
                .order_by(Series.id)
                .limit(ctx.max_failing),
            ),
        ]
    )
    n_bad = bad_studies + bad_series
    message = (
        f"{_plural(bad_studies, 'study', 'studies')} without series, "
        f"{_plural(bad_series, 'series', 'series')} without images (store-wide)"
        if n_bad
        else "every study has series and every series has images"
    )
    return _outcome(
        ctx,
        "integrity.store_orphans",
        n_checked=n_studies + n_series,
        n_failed=n_bad,
        message=message,
        failing=failing,
    )


@_register(
    "integrity.missing_files",
    "integrity",
    "error",
    "an image of the version has no file in the image store",
)
def _missing_files(ctx: _Context) -> CheckOutcome:
    name = "integrity.missing_files"
    if ctx.store is None:
        return _not_run(name, "integrity", "no image store given")
    n, failing, n_outside = ctx.file_status()
    n_missing = int(failing.attrs.get("n_missing", len(failing)))
    if n and n_outside == n:
        return _not_run(
            name,
            "integrity",
            f"no image of the version is under the store root {ctx.store.root}: give the store "
            "that holds them",
        )
    message = (
        f"images without a file in the store {ctx.store.root}: {n_missing:,} of {n:,}"
        if n_missing
        else f"every one of {_plural(n, 'image')} has its file in the store"
    )
    return _outcome(ctx, name, n_checked=n, n_failed=n_missing, message=message, failing=failing)


@_register(
    "integrity.patient_in_two_splits",
    "integrity",
    "error",
    "a patient's images sit in more than one split (train/val/test leakage)",
)
def _patient_splits(ctx: _Context) -> CheckOutcome:
    from quality.imaging.leakage import patient_leakage

    leaks = patient_leakage(ctx.session, ctx.scope.version_id)
    n_patients = _count(ctx.session, _images(ctx.sample, func.count(distinct(Study.patient_key))))
    if leaks.empty:
        return _outcome(
            ctx,
            "integrity.patient_in_two_splits",
            n_checked=n_patients,
            n_failed=0,
            message=f"each of {_plural(n_patients, 'patient')} sits in one split",
        )
    uris = dict(
        ctx.session.execute(
            select(Image.sop_uid, Image.uri).where(
                Image.sop_uid.in_(leaks["sop_uid"].head(ctx.max_failing).tolist())
            )
        ).all()
    )
    failing = pd.DataFrame(
        {
            "sop_uid": leaks["sop_uid"],
            "uri": leaks["sop_uid"].map(uris),
            "field": "split",
            "value": leaks["split"],
            "patient_key": leaks["patient_key"],
            "splits": leaks["splits"],
        }
    )
    n_bad = int(leaks["patient_key"].nunique())
    return _outcome(
        ctx,
        "integrity.patient_in_two_splits",
        n_checked=n_patients,
        n_failed=n_bad,
        message=(
            f"patients in more than one split: {n_bad:,} of {n_patients:,} "
            f"({_plural(len(leaks), 'image')})"
        ),
        failing=failing,
    )


# --------------------------------------------------------------------------- rules


def _rule_filter(rule: Rule) -> ColumnElement[bool]:
    if not rule.where:
        return true()
    return and_(*(column_expression(c).in_(list(vals)) for c, vals in rule.where))


def _rule_outcome(
    rule: Rule,
    *,
    passed: bool,
    n_checked: int,
    n_failed: int,
    message: str,
    failing: pd.DataFrame,
    max_failing: int,
    details: dict[str, Any] | None = None,
) -> CheckOutcome:
    return CheckOutcome(
        name=f"rule.{rule.name}",
        category="rule",
        severity=rule.severity,
        passed=passed,
        n_checked=int(n_checked),
        n_failed=int(n_failed),
        message=message,
        failing=failing.head(max_failing).reset_index(drop=True),
        line=rule.line,
        details={"rule": rule.name, "kind": rule.kind, **(details or {})},
    )


def _violation(rule: Rule, expr: Any) -> ColumnElement[bool] | None:
    """The SQL condition under which a present value breaks a value rule."""
    p = rule.params
    if rule.kind == "between":
        return or_(expr < p["low"], expr > p["high"])
    if rule.kind == "in":
        return expr.not_in(list(p["values"]))
    if rule.kind == "compare":
        conds = []
        for key, value in p.items():
            conds.append(
                {
                    "greater_than": expr <= value,
                    "at_least": expr < value,
                    "less_than": expr >= value,
                    "at_most": expr > value,
                }[key]
            )
        return or_(*conds)
    return None


def _evaluate_rule(ctx: _Context, rule: Rule, path: str) -> CheckOutcome:
    if rule.kind == "share":
        return _share_rule(ctx, rule)
    if rule.kind == "annotations_per_image":
        return _annotations_rule(ctx, rule, path)
    spec = column_spec(rule.column or "")
    if spec is None:  # parse_rules rejects unknown columns; a hand-made Rule may not
        raise RulesError(path, rule.line, "column", f"unknown column {rule.column!r}")
    expr = column_expression(spec.name)
    where = _rule_filter(rule)
    scoped = _images(ctx.sample, func.count(Image.id)).where(where)
    wanted = [Image.sop_uid, Image.uri, literal(spec.name).label("field"), expr.label("value")]

    def rows(condition: ColumnElement[bool]) -> pd.DataFrame:
        return _frame(
            ctx.session,
            _images(ctx.sample, *wanted)
            .where(where, condition)
            .order_by(Image.id)
            .limit(ctx.max_failing),
        )

    n_all = _count(ctx.session, scoped)
    if rule.kind in ("not_null", "max_missing_share"):
        missing = _missing(expr, spec.kind)
        n_missing = _count(ctx.session, scoped.where(missing))
        share = n_missing / n_all if n_all else 0.0
        if rule.kind == "not_null":
            passed = n_missing == 0
            message = (
                f"images without {spec.name}: {n_missing:,} of {n_all:,}"
                if n_missing
                else f"{spec.name} is present on every one of {_plural(n_all, 'image')}"
            )
        else:
            passed = share <= rule.params["share"]
            message = (
                f"{spec.name} is missing on {share:.1%} of {_plural(n_all, 'image')} "
                f"(at most {rule.params['share']:.1%} allowed)"
            )
        return _rule_outcome(
            rule,
            passed=passed,
            n_checked=n_all,
            n_failed=n_missing,
            message=message,
            failing=rows(missing),
            max_failing=ctx.max_failing,
            details={"missing_share": share},
        )
    present = _present(expr, spec.kind)
    n_present = _count(ctx.session, scoped.where(present))
    if rule.kind == "unique":
        dup_values = (
            _images(ctx.sample, expr).where(where, present).group_by(expr).having(func.count() > 1)
        )
        shared = and_(present, expr.in_(dup_values))
        n_bad = _count(ctx.session, scoped.where(shared))
        failing = _frame(
            ctx.session,
            _images(ctx.sample, *wanted)
            .where(where, shared)
            .order_by(expr, Image.id)
            .limit(ctx.max_failing),
        )
        message = (
            f"images sharing their {spec.name} with another image: {n_bad:,} of {n_present:,}"
            if n_bad
            else f"{spec.name} is unique over {_plural(n_present, 'image')}"
        )
    elif rule.kind == "matches":
        pattern = re.compile(rule.params["pattern"])
        groups = (
            _value_groups(ctx, expr)
            if not rule.where
            else [
                (v, int(n))
                for v, n in ctx.session.execute(
                    _images(ctx.sample, expr, func.count(Image.id))
                    .where(where, expr.is_not(None))
                    .group_by(expr)
                )
            ]
        )
        bad = [v for v, _ in groups if v != "" and not pattern.fullmatch(str(v))]
        n_bad = sum(n for v, n in groups if v in set(bad))
        failing = rows(expr.in_(bad[: ctx.max_failing])) if bad else _empty_failing()
        message = (
            f"images whose {spec.name} does not match {rule.params['pattern']!r}: "
            f"{n_bad:,} of {n_present:,}" + (f" (e.g. {bad[0]!r})" if bad else "")
            if n_bad
            else f"every {spec.name} of {_plural(n_present, 'image')} matches"
        )
    else:
        broken = _violation(rule, expr)
        if broken is None:  # pragma: no cover - every value kind is handled above
            raise RulesError(path, rule.line, rule.kind, f"unknown check {rule.kind!r}")
        bad_cond = and_(present, broken)
        n_bad = _count(ctx.session, scoped.where(bad_cond))
        failing = rows(bad_cond)
        example = f" (e.g. {failing['value'].iloc[0]})" if len(failing) else ""
        message = (
            f"images breaking the rule: {n_bad:,} of {n_present:,}{example}"
            if n_bad
            else f"every one of {_plural(n_present, 'value')} keeps it"
        )
    return _rule_outcome(
        rule,
        passed=n_bad == 0,
        n_checked=n_present,
        n_failed=n_bad,
        message=message,
        failing=failing,
        max_failing=ctx.max_failing,
        details={"n_missing_not_judged": n_all - n_present},
    )


def _share_rule(ctx: _Context, rule: Rule) -> CheckOutcome:
    p = rule.params
    expr = column_expression(p["column"])
    match = func.sum(case((expr == p["value"], 1), else_=0))
    where = _rule_filter(rule)
    if p["per"]:
        group = column_expression(p["per"])
        stmt = _images(ctx.sample, group, func.count(Image.id), match).where(where).group_by(group)
    else:
        stmt = _images(ctx.sample, literal("(all)"), func.count(Image.id), match).where(where)
    rows = []
    for grp, n, k in ctx.session.execute(stmt):
        if not n:
            continue
        share = int(k or 0) / int(n)
        low_ok = p["at_least"] is None or share >= p["at_least"]
        high_ok = p["at_most"] is None or share <= p["at_most"]
        rows.append(
            {
                "sop_uid": None,
                "uri": None,
                "field": p["column"],
                "value": share,
                "group": "(missing)" if grp is None else grp,
                "n": int(n),
                "n_match": int(k or 0),
                "ok": low_ok and high_ok,
            }
        )
    frame = pd.DataFrame(rows, columns=[*FAILING_COLUMNS, "group", "n", "n_match", "ok"])
    bad = frame.loc[~frame["ok"].astype(bool)].drop(columns="ok").reset_index(drop=True)
    per = f" per {p['per']}" if p["per"] else ""
    bounds = " and ".join(
        f"{word} {p[key]:.1%}"
        for key, word in (("at_most", "at most"), ("at_least", "at least"))
        if p[key] is not None
    )
    if len(bad):
        worst = bad.iloc[0]
        message = (
            f"share of {p['column']} = {p['value']} is outside {bounds} in "
            f"{_plural(len(bad), 'group')}{per} (e.g. {worst['group']}: {worst['value']:.1%} of "
            f"{worst['n']:,})"
        )
    else:
        message = f"share of {p['column']} = {p['value']} is {bounds} in all {_plural(len(frame), 'group')}{per}"
    return _rule_outcome(
        rule,
        passed=bad.empty,
        n_checked=len(frame),
        n_failed=len(bad),
        message=message,
        failing=bad,
        max_failing=ctx.max_failing,
        details={"shares": _records(frame.drop(columns=["sop_uid", "uri"]))[: ctx.max_failing]},
    )


def _annotations_rule(ctx: _Context, rule: Rule, path: str) -> CheckOutcome:
    p = rule.params
    tasks = ctx.tasks()
    hit = tasks.loc[tasks["name"] == p["task"]]
    if hit.empty:
        valid = ", ".join(tasks["name"].astype(str)) or "none"
        raise RulesError(
            path,
            rule.lines.get("task", rule.line),
            "annotations_per_image.task",
            f"unknown task {p['task']!r}; tasks of dataset {ctx.scope.dataset!r}: {valid}",
        )
    task_id = int(hit["id"].iloc[0])
    per_image = (
        _images(
            ctx.sample,
            Image.id.label("image_id"),
            Image.sop_uid,
            Image.uri,
            func.count(distinct(Annotation.annotator_id)).label("n"),
        )
        .outerjoin(Annotation, and_(Annotation.image_id == Image.id, Annotation.task_id == task_id))
        .where(_rule_filter(rule))
        .group_by(Image.id, Image.sop_uid, Image.uri)
        .subquery("per_image")
    )
    conds = []
    if p["at_least"] is not None:
        conds.append(per_image.c.n < p["at_least"])
    if p["at_most"] is not None:
        conds.append(per_image.c.n > p["at_most"])
    bad = or_(*conds)
    row = ctx.session.execute(
        select(func.count(), func.sum(case((bad, 1), else_=0))).select_from(per_image)
    ).one()
    n, n_bad = int(row[0]), int(row[1] or 0)
    failing = _frame(
        ctx.session,
        select(
            per_image.c.sop_uid,
            per_image.c.uri,
            literal("annotators").label("field"),
            per_image.c.n.label("value"),
        )
        .where(bad)
        .order_by(per_image.c.image_id)
        .limit(ctx.max_failing),
    )
    bounds = " and ".join(
        f"{w} {p[k]}"
        for k, w in (("at_least", "at least"), ("at_most", "at most"))
        if p[k] is not None
    )
    message = (
        f"images without {bounds} annotators in {p['task']!r}: {n_bad:,} of {n:,}"
        if n_bad
        else f"every one of {_plural(n, 'image')} has {bounds} annotators in {p['task']!r}"
    )
    return _rule_outcome(
        rule,
        passed=n_bad == 0,
        n_checked=n,
        n_failed=n_bad,
        message=message,
        failing=failing,
        max_failing=ctx.max_failing,
    )


# --------------------------------------------------------------------------- distribution


def robust_z(values: npt.ArrayLike, reference: npt.ArrayLike) -> NDArray[np.float64]:
    """Modified z-scores of ``values`` against a reference sample (Iglewicz & Hoaglin 1993).

    ``z = 0.6745 (x - m) / MAD`` with ``m`` the reference median and
    ``MAD = median(|r - m|)``; 0.6745 = Φ⁻¹(0.75) makes it comparable to a standard
    z-score under normality. When MAD is 0 (over half the reference equal),
    ``z = (x - m) / (1.253314 · MeanAD)`` with ``MeanAD = mean(|r - m|)`` (1.253314 =
    √(π/2)), as IBM SPSS does; when that is 0 too, ``z`` is 0 at ``m`` and ±inf elsewhere.
    |z| > 3.5 marks an outlier (:data:`ROBUST_Z_LIMIT`).

    Parameters
    ----------
    values : array_like, shape (n,)
    reference : array_like, shape (m,), m >= 1, no NaN.

    Returns
    -------
    NDArray[np.float64]
        Shape (n,); NaN where a value is NaN.

    Examples
    --------
    >>> robust_z([10.0, 30.0], [9.0, 10.0, 11.0, 10.0, 12.0]).round(3).tolist()
    [0.0, 13.49]

    References
    ----------
    .. [1] B. Iglewicz, D. C. Hoaglin, *How to Detect and Handle Outliers*, ASQC, 1993.
    """
    x = np.asarray(values, dtype=np.float64)
    ref = np.asarray(reference, dtype=np.float64)
    if ref.ndim != 1 or ref.size == 0 or np.isnan(ref).any():
        raise ValueError("reference must be a non-empty 1-D sample without NaN")
    med = float(np.median(ref))
    dev = np.abs(ref - med)
    mad = float(np.median(dev))
    if mad > 0:
        return _MAD_SCALE * (x - med) / mad
    mean_ad = float(dev.mean())
    if mean_ad > 0:
        return (x - med) / (_MEANAD_SCALE * mean_ad)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(x == med, 0.0, np.sign(x - med) * np.inf).astype(np.float64)


def _distribution_sample(session: Session, sample: _Sample) -> pd.DataFrame:
    columns = [column_expression(c).label(c) for c in DISTRIBUTION_COLUMNS]
    return _frame(session, _images(sample, *columns))


def _daily(session: Session, sample: _Sample) -> pd.DataFrame:
    """Per study day: ``n_images`` (0 on days without images, between the first and the
    last day) and ``mean_kvp``, from a SQL GROUP BY."""
    stmt = (
        _images(
            sample,
            Study.study_date.label("day"),
            func.count(Image.id).label("n_images"),
            func.avg(Series.kvp).label("mean_kvp"),
        )
        .where(Study.study_date.is_not(None))
        .group_by(Study.study_date)
        .order_by(Study.study_date)
    )
    frame = _frame(session, stmt)
    if frame.empty:
        return pd.DataFrame(columns=["day", *DAILY_METRICS])
    frame["day"] = pd.to_datetime(frame["day"])
    days = pd.date_range(frame["day"].min(), frame["day"].max(), freq="D")
    out = frame.set_index("day").reindex(days)
    out["n_images"] = out["n_images"].fillna(0)
    out["mean_kvp"] = pd.to_numeric(out["mean_kvp"], errors="coerce")
    out.index.name = "day"
    return out.reset_index()


def _distribution_checks(
    session: Session, scope: Scope, ref: Reference, max_failing: int
) -> list[CheckOutcome]:
    current = _Sample(scope.version_id)
    reference = _Sample(ref.version_id)
    if ref.kind == "dates":
        reference = _Sample(scope.version_id, ref.dates, inside=True)
        current = _Sample(scope.version_id, ref.dates, inside=False)
    cur = _distribution_sample(session, current)
    base = _distribution_sample(session, reference)
    outcomes: list[CheckOutcome] = []
    if cur.empty or base.empty:
        which = "current" if cur.empty else "reference"
        return [
            _not_run(
                "distribution", "distribution", f"the {which} sample ({ref.label}) has no images"
            )
        ]
    tested: list[tuple[str, str, drift_tests.DriftTestResult]] = []
    for column, kind in DISTRIBUTION_COLUMNS.items():
        test = "ks" if kind == "num" else "chisquare"
        if kind == "num":
            r, c = (
                pd.to_numeric(base[column], errors="coerce"),
                pd.to_numeric(cur[column], errors="coerce"),
            )
        else:
            r, c = base[column].astype(object), cur[column].astype(object)
        try:
            result = drift_tests.run_test(r, c, test=test)
        except ValueError as exc:
            outcomes.append(_not_run(f"distribution.{test}.{column}", "distribution", str(exc)))
            continue
        tested.append((column, test, result))
    finite = [i for i, (_, _, res) in enumerate(tested) if math.isfinite(res.p_value)]
    rejected = np.zeros(len(tested), dtype=bool)
    adjusted = np.full(len(tested), np.nan)
    if finite:
        rej, adj = drift_tests.benjamini_hochberg(
            [tested[i][2].p_value for i in finite], alpha=_FDR
        )
        rejected[finite], adjusted[finite] = rej, adj
    for i, (column, test, res) in enumerate(tested):
        name = f"distribution.{test}.{column}"
        if not math.isfinite(res.p_value):
            outcomes.append(
                _not_run(name, "distribution", f"no {column} values in one of the samples")
            )
            continue
        drifted = bool(rejected[i])
        details = {
            "test": test,
            "statistic": res.statistic,
            "p_value": res.p_value,
            "p_adjusted": float(adjusted[i]),
            "n_reference": res.n_reference,
            "n_current": res.n_current,
            "reference": ref.label,
        }
        failing = _empty_failing("statistic", "p_value", "p_adjusted")
        if drifted:
            failing = pd.DataFrame(
                [
                    {
                        "sop_uid": None,
                        "uri": None,
                        "field": column,
                        "value": f"p = {res.p_value:.3g}",
                        "statistic": res.statistic,
                        "p_value": res.p_value,
                        "p_adjusted": float(adjusted[i]),
                    }
                ]
            )
        label = "KS" if test == "ks" else "chi-square"
        outcomes.append(
            CheckOutcome(
                name=name,
                category="distribution",
                severity="warning",
                passed=not drifted,
                n_checked=res.n_current,
                n_failed=int(drifted),
                message=(
                    f"{column} differs from the reference {ref.label} ({label} p = "
                    f"{res.p_value:.3g}, BH-adjusted {adjusted[i]:.3g})"
                    if drifted
                    else f"{column} is like the reference {ref.label} ({label} p = {res.p_value:.3g})"
                ),
                failing=failing,
                details=details,
            )
        )
    outcomes.extend(_daily_checks(session, reference, current, ref, max_failing))
    return outcomes


def _daily_checks(
    session: Session, reference: _Sample, current: _Sample, ref: Reference, max_failing: int
) -> list[CheckOutcome]:
    base = _daily(session, reference)
    cur = _daily(session, current)
    outcomes = []
    for metric, what in DAILY_METRICS.items():
        name = f"distribution.daily.{metric}"
        ref_values = pd.to_numeric(base[metric], errors="coerce").dropna().to_numpy(dtype=float)
        cur_frame = cur.loc[pd.to_numeric(cur[metric], errors="coerce").notna()]
        if len(ref_values) < _MIN_REFERENCE_DAYS or cur_frame.empty:
            outcomes.append(
                _not_run(
                    name,
                    "distribution",
                    f"{metric} needs {_MIN_REFERENCE_DAYS}+ reference days and 1+ current day",
                )
            )
            continue
        values = cur_frame[metric].to_numpy(dtype=float)
        z = robust_z(values, ref_values)
        flagged = np.abs(z) > ROBUST_Z_LIMIT
        bad = cur_frame.loc[flagged]
        failing = pd.DataFrame(
            {
                "sop_uid": None,
                "uri": None,
                "field": metric,
                "value": bad[metric].to_numpy(dtype=float),
                "day": bad["day"].dt.date.to_numpy(),
                "robust_z": z[flagged],
            },
            columns=[*FAILING_COLUMNS, "day", "robust_z"],
        )
        med = float(np.median(ref_values))
        n_bad = int(flagged.sum())
        message = (
            f"{_plural(n_bad, 'day')} of {len(values):,} with unusual {what} (|robust z| > "
            f"{ROBUST_Z_LIMIT}; reference median {med:.4g})"
            if n_bad
            else f"no day of {len(values):,} has unusual {what} (reference median {med:.4g})"
        )
        outcomes.append(
            CheckOutcome(
                name=name,
                category="distribution",
                severity="warning",
                passed=n_bad == 0,
                n_checked=len(values),
                n_failed=n_bad,
                message=message,
                failing=failing.head(max_failing),
                details={"reference_median": med, "limit": ROBUST_Z_LIMIT, "reference": ref.label},
            )
        )
    return outcomes


# --------------------------------------------------------------------------- run


@dataclass
class CheckReport:
    """One run of the data tests.

    Attributes
    ----------
    scope : the dataset version checked.
    outcomes : one :class:`CheckOutcome` per check, in run order.
    passed : no error-severity check failed.
    run_id : the ``check_runs`` id, or None when not saved.
    rules_path, rules_sha256 : the rules file used (None without one).
    reference : the reference's label (a version, or ``START..END``), or None.
    started_at, finished_at : aware UTC datetimes.
    """

    scope: Scope
    outcomes: list[CheckOutcome]
    passed: bool
    run_id: int | None = None
    rules_path: str | None = None
    rules_sha256: str | None = None
    reference: str | None = None
    started_at: dt.datetime | None = None
    finished_at: dt.datetime | None = None

    @property
    def failed(self) -> list[CheckOutcome]:
        """The failed checks (both severities)."""
        return [o for o in self.outcomes if o.status == "failed"]

    def summary(self) -> dict[str, Any]:
        """Counts per category and overall (the ``check_runs.summary`` JSON)."""
        per: dict[str, dict[str, int]] = {}
        for o in self.outcomes:
            c = per.setdefault(
                o.category, {"n_checks": 0, "n_failed": 0, "n_not_run": 0, "n_failed_rows": 0}
            )
            c["n_checks"] += 1
            c["n_failed"] += o.status == "failed"
            c["n_not_run"] += o.status == "not_run"
            c["n_failed_rows"] += int(o.n_failed) if o.status == "failed" else 0
        return {
            "dataset": self.scope.dataset,
            "version": self.scope.version,
            "version_id": self.scope.version_id,
            "reference": self.reference,
            "rules_path": self.rules_path,
            "n_checks": len(self.outcomes),
            "n_failed_errors": sum(
                o.status == "failed" and o.severity == "error" for o in self.outcomes
            ),
            "n_failed_warnings": sum(
                o.status == "failed" and o.severity == "warning" for o in self.outcomes
            ),
            "n_not_run": sum(o.status == "not_run" for o in self.outcomes),
            "categories": per,
        }

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready: run id, pass/fail, scope, summary and every check's result."""
        return {
            "run_id": self.run_id,
            "passed": self.passed,
            "dataset": self.scope.dataset,
            "dataset_id": self.scope.dataset_id,
            "version": self.scope.version,
            "rules_sha256": self.rules_sha256,
            "started_at": _json_safe(self.started_at),
            "finished_at": _json_safe(self.finished_at),
            "summary": _json_safe(self.summary()),
            "checks": [o.as_dict() for o in self.outcomes],
        }

    def results_frame(self) -> pd.DataFrame:
        """One row per check: :data:`RESULT_COLUMNS` (``failing`` as a list of records)."""
        return pd.DataFrame(
            [
                {
                    "check_name": o.name,
                    "category": o.category,
                    "severity": o.severity,
                    "status": o.status,
                    "passed": o.passed,
                    "n_checked": o.n_checked,
                    "n_failed": o.n_failed,
                    "message": o.message,
                    "line": o.line,
                    "failing": _records(o.failing),
                }
                for o in self.outcomes
            ],
            columns=RESULT_COLUMNS,
        ).astype({"line": "Int64"})


@_db_errors
def resolve_scope(session: Session, dataset: str | int, version: str | int | None = None) -> Scope:
    """The dataset and version a run checks.

    Parameters
    ----------
    dataset : name or id.
    version : a version label (``v1``) or id of that dataset; default the newest.

    Raises
    ------
    DatasetNotFoundError
        Unknown dataset (lists the known ones).
    QualityError
        Unknown version (lists the dataset's versions), or a dataset without versions.
    """
    dataset_id = resolve_dataset(session, dataset)
    name = str(session.scalar(select(Dataset.name).where(Dataset.id == dataset_id)))
    versions = session.execute(
        select(DatasetVersion.id, DatasetVersion.version)
        .where(DatasetVersion.dataset_id == dataset_id)
        .order_by(DatasetVersion.created_at, DatasetVersion.id)
    ).all()
    if version is None:
        vid = newest_version_id(session, dataset_id)
        if vid is None:
            raise QualityError(f"dataset {name!r} has no versions: snapshot one first")
    else:
        by_id = [int(i) for i, _ in versions if str(i) == str(version)]
        # An int is an id; text is a label first (labels are what people type), then an id.
        by_label = [] if isinstance(version, int) else [int(i) for i, v in versions if v == version]
        found = by_label or by_id
        if not found:
            listed = ", ".join(str(v) for _, v in versions) or "none"
            raise QualityError(f"dataset {name!r} has no version {version!r}; versions: {listed}")
        vid = found[0]
    label = next(str(v) for i, v in versions if int(i) == vid)
    return Scope(dataset_id, name, int(vid), label)


def _resolve_reference(
    session: Session, scope: Scope, reference: str | int | DateRange | tuple[Any, Any]
) -> Reference:
    if isinstance(reference, tuple):
        reference = DateRange(*(dt.date.fromisoformat(str(d)) for d in reference))
    if isinstance(reference, str):
        parsed = parse_reference(reference)
        if isinstance(parsed, DateRange):
            reference = parsed
    if isinstance(reference, DateRange):
        return Reference("dates", str(reference), scope.version_id, reference)
    ref_scope = resolve_scope(session, scope.dataset_id, reference)
    return Reference("version", ref_scope.version, ref_scope.version_id)


@_db_errors
def run_checks(
    session: Session,
    dataset: str | int,
    *,
    version: str | int | None = None,
    rules: RuleSet | str | Path | None = None,
    reference: str | int | DateRange | tuple[Any, Any] | None = None,
    store: ImageStore | None = None,
    embeddings_dir: str | Path | None = None,
    checks: Sequence[str] | None = None,
    save: bool = True,
    max_failing: int = MAX_FAILING,
    workers: int = 1,
) -> CheckReport:
    """Run the data tests on a dataset version and (by default) store the run.

    Parameters
    ----------
    session : an open session.
    dataset : name or id.
    version : a version label or id (default: the newest).
    rules : a :class:`~quality.rules.RuleSet`, or a rules file path (parsed here).
    reference : for the distribution checks: a version label or id of the same dataset, a
        :class:`DateRange`, ``"START..END"`` or a ``(start, end)`` pair; None skips them
        (one *not run* outcome says so).
    store : the image store, for ``integrity.missing_files`` and ``duplicates.near``;
        None: both are *not run*.
    embeddings_dir : where ``quality score`` wrote CNN embeddings; they confirm
        near-duplicate pairs when present.
    checks : names of the built-in checks to run (default all, in registry order).
    save : write one ``check_runs`` row and one ``check_results`` row per check, in one
        transaction (committed).
    max_failing : failing rows kept per check.
    workers : decoding threads for the near-duplicate scan.

    Returns
    -------
    CheckReport

    Raises
    ------
    RulesError
        A bad rules file, or a rule naming a task the dataset does not have.
    DatasetNotFoundError, QualityError
        Unknown dataset or version; bad reference.
    ValueError
        An unknown check name (the message lists the valid ones), or ``max_failing < 1``.
    """
    if max_failing < 1:
        raise ValueError(f"max_failing must be at least 1, not {max_failing}")
    names = list(BUILTIN_CHECKS) if checks is None else list(checks)
    unknown = [n for n in names if n not in BUILTIN_CHECKS]
    if unknown:
        raise ValueError(
            f"unknown checks {', '.join(unknown)}; valid checks: {', '.join(BUILTIN_CHECKS)}"
        )
    ruleset = load_rules(rules) if isinstance(rules, str | Path) else rules
    started = dt.datetime.now(dt.UTC)
    scope = resolve_scope(session, dataset, version)
    ref = None
    if reference is not None:
        try:
            ref = _resolve_reference(session, scope, reference)
        except ValueError as exc:
            raise QualityError(str(exc)) from exc
    ctx = _Context(
        session,
        scope,
        store=store,
        embeddings_dir=None if embeddings_dir is None else Path(embeddings_dir),
        max_failing=max_failing,
        workers=workers,
    )
    outcomes = [BUILTIN_CHECKS[n].fn(ctx) for n in names]
    if ref is None:
        outcomes.append(
            _not_run(
                "distribution",
                "distribution",
                "no reference given (a version, or a date range START..END)",
            )
        )
    else:
        outcomes.extend(_distribution_checks(session, scope, ref, max_failing))
    if ruleset is not None:
        outcomes.extend(_evaluate_rule(ctx, r, ruleset.path) for r in ruleset.rules)
    report = CheckReport(
        scope=scope,
        outcomes=outcomes,
        passed=not any(o.status == "failed" and o.severity == "error" for o in outcomes),
        rules_path=None if ruleset is None else ruleset.path,
        rules_sha256=None if ruleset is None else ruleset.sha256,
        reference=None if ref is None else ref.label,
        started_at=started,
        finished_at=dt.datetime.now(dt.UTC),
    )
    if save:
        report.run_id = _save(session, report)
    return report


def _save(session: Session, report: CheckReport) -> int:
    """One transaction: the run row, then one result row per check."""
    try:
        run = CheckRun(
            dataset_id=report.scope.dataset_id,
            started_at=report.started_at,
            finished_at=report.finished_at,
            passed=report.passed,
            rules_sha256=report.rules_sha256,
            summary=_json_safe(report.summary()),
        )
        session.add(run)
        session.flush()
        session.add_all(
            CheckResult(
                run_id=run.id,
                check_name=o.name[:128],
                passed=o.passed,
                severity=o.severity,
                n_failed=int(o.n_failed),
                details=_json_safe(
                    {
                        "name": o.name,
                        "category": o.category,
                        "status": o.status,
                        "n_checked": o.n_checked,
                        "message": o.message,
                        "line": o.line,
                        "failing": _records(o.failing),
                        "failing_columns": list(o.failing.columns),
                        **({"extra": o.details} if o.details else {}),
                    }
                ),
            )
            for o in report.outcomes
        )
        session.commit()
    except Exception:
        session.rollback()
        raise
    return int(run.id)


# --------------------------------------------------------------------------- history


@_db_errors
def check_history(session: Session, dataset_id: int) -> pd.DataFrame:
    """The stored runs of a dataset, oldest first: :data:`HISTORY_COLUMNS`.

    Counts come from a SQL GROUP BY over ``check_results`` (failed = ``passed`` false;
    not run = ``details.status`` ``not_run``); ``version`` and ``reference`` from the run's
    summary.
    """
    failed = CheckResult.passed.is_(False)
    status = CheckResult.details["status"].as_string()
    counts = (
        select(
            CheckResult.run_id.label("run_id"),
            func.count(CheckResult.id).label("n_checks"),
            func.sum(case((failed, 1), else_=0)).label("n_failed"),
            func.sum(case((and_(failed, CheckResult.severity == "error"), 1), else_=0)).label(
                "n_failed_errors"
            ),
            func.sum(case((and_(failed, CheckResult.severity == "warning"), 1), else_=0)).label(
                "n_failed_warnings"
            ),
            func.sum(case((status == "not_run", 1), else_=0)).label("n_not_run"),
        )
        .group_by(CheckResult.run_id)
        .subquery("run_counts")
    )
    stmt = (
        select(
            CheckRun.id.label("run_id"),
            CheckRun.started_at,
            CheckRun.finished_at,
            CheckRun.passed,
            CheckRun.summary["version"].as_string().label("version"),
            CheckRun.summary["reference"].as_string().label("reference"),
            CheckRun.rules_sha256,
            func.coalesce(counts.c.n_checks, 0).label("n_checks"),
            func.coalesce(counts.c.n_failed, 0).label("n_failed"),
            func.coalesce(counts.c.n_failed_errors, 0).label("n_failed_errors"),
            func.coalesce(counts.c.n_failed_warnings, 0).label("n_failed_warnings"),
            func.coalesce(counts.c.n_not_run, 0).label("n_not_run"),
        )
        .outerjoin(counts, counts.c.run_id == CheckRun.id)
        .where(CheckRun.dataset_id == dataset_id)
        .order_by(CheckRun.started_at, CheckRun.id)
    )
    frame = _frame(session, stmt)
    if frame.empty:
        return pd.DataFrame(columns=HISTORY_COLUMNS)
    for col in ("started_at", "finished_at"):
        frame[col] = pd.to_datetime(frame[col], utc=True)
    for col in HISTORY_COLUMNS[7:]:
        frame[col] = frame[col].astype(int)
    frame["passed"] = frame["passed"].astype(bool)
    return frame[HISTORY_COLUMNS]


@_db_errors
def check_run_results(session: Session, run_id: int) -> pd.DataFrame:
    """The results of one stored run, in stored order: :data:`RESULT_COLUMNS`.

    ``failing`` holds the stored failing rows (a list of records; ``pd.DataFrame(value)``
    gives the table back).
    """
    rows = session.execute(
        select(
            CheckResult.check_name,
            CheckResult.severity,
            CheckResult.passed,
            CheckResult.n_failed,
            CheckResult.details,
        )
        .where(CheckResult.run_id == run_id)
        .order_by(CheckResult.id)
    ).all()
    out = []
    for name, severity, passed, n_failed, details in rows:
        d = details or {}
        out.append(
            {
                "check_name": d.get("name", name),
                "category": d.get("category"),
                "severity": severity,
                "status": d.get("status", "passed" if passed else "failed"),
                "passed": bool(passed),
                "n_checked": int(d.get("n_checked") or 0),
                "n_failed": int(n_failed or 0),
                "message": d.get("message", ""),
                "line": d.get("line"),
                "failing": list(d.get("failing") or []),
            }
        )
    frame = pd.DataFrame(out, columns=RESULT_COLUMNS)
    frame["line"] = frame["line"].astype("Int64")  # rules-file lines; <NA> for built-ins
    return frame


# --------------------------------------------------------------------------- suggestion


_SUGGEST_SKIP = {
    "sop_uid",
    "uri",
    "series_uid",
    "study_uid",
    "patient_key",
    "file_size",
    "instance_number",
    "series_number",
    "pixel_sha256",
}
_SHARE_COLUMNS = ("photometric", "modality")


def _floor(x: float, digits: int = 2) -> float:
    f = 10**digits
    return math.floor(x * f) / f


def _ceil(x: float, digits: int = 2) -> float:
    f = 10**digits
    return math.ceil(x * f) / f


def _yaml_scalar(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() else repr(value)
    # JSON strings are valid YAML double-quoted scalars.
    return json.dumps(str(value), ensure_ascii=False)


@_db_errors
def suggest_rules(
    session: Session,
    dataset: str | int,
    version: str | int | None = None,
    *,
    widen: float = 0.0,
    max_categories: int = 10,
) -> str:
    """Derive a rules file from a reference version, as Deequ's constraint suggestion does.

    One SQL profile (``COUNT``, ``COUNT(DISTINCT)``, ``MIN``, ``MAX`` and the missing count
    per column of :data:`quality.rules.COLUMNS`, identifiers and sizes left out) gives:

    * ``not_null`` for a column without missing values, else ``max_missing_share`` at the
      observed share rounded up to 0.01;
    * ``in`` the observed values for a text column with at most ``max_categories`` values;
    * ``between [min, max]`` for a numeric column, widened by ``widen × (max - min)`` on
      each side and rounded outwards to 0.01;
    * ``unique`` for ``pixel_sha256`` when no two images share it;
    * per source, ``share ... at_most`` the largest observed share (rounded up to 0.01) of
      each photometric and modality value, when it is below 1 somewhere;
    * ``annotations_per_image at_least`` the smallest number of annotators per image, per
      labeling task.

    Every suggested rule holds on the version it was derived from (bounds are rounded
    outwards), and each carries a comment saying what it was derived from.

    Parameters
    ----------
    session : an open session.
    dataset : name or id; ``version`` label or id (default the newest).
    widen : share of the observed range added on each side of a ``between``.
    max_categories : most distinct values for an ``in`` rule.

    Returns
    -------
    str
        The rules file (YAML, UTF-8 text) for :func:`quality.rules.parse_rules`.
    """
    if widen < 0:
        raise ValueError(f"widen must be >= 0, not {widen}")
    scope = resolve_scope(session, dataset, version)
    sample = _Sample(scope.version_id)
    names = [n for n in COLUMNS if n not in _SUGGEST_SKIP]
    aggregates: list[Any] = [func.count(Image.id)]
    for n in names:
        spec = COLUMNS[n]
        expr = column_expression(n)
        aggregates += [
            func.sum(case((_missing(expr, spec.kind), 1), else_=0)),
            func.count(distinct(expr)),
            func.min(expr) if spec.kind != "text" else literal(None),
            func.max(expr) if spec.kind != "text" else literal(None),
        ]
    sha = Image.pixel_sha256
    aggregates += [func.count(sha), func.count(distinct(sha))]
    row = session.execute(_images(sample, *aggregates)).one()
    n_images = int(row[0])
    today = dt.date.today().isoformat()
    lines = [
        f"# Rules suggested from dataset {scope.dataset!r}, version {scope.version!r}",
        f"# ({n_images:,} images), on {today} by `quality check --suggest-rules`.",
        "# Review before use: a suggestion only says what the reference looked like.",
        f"dataset: {_yaml_scalar(scope.dataset)}",
        "rules:",
    ]

    def add(comment: str, body: list[str]) -> None:
        lines.append(f"  # {comment}")
        lines.append(f"  - {body[0]}")
        lines.extend(f"    {b}" for b in body[1:])

    for k, n in enumerate(names):
        spec = COLUMNS[n]
        n_missing, n_distinct, lo, hi = row[1 + 4 * k : 5 + 4 * k]
        n_missing, n_distinct = int(n_missing or 0), int(n_distinct or 0)
        if n_images == 0:
            break
        if n_missing == 0:
            add(f"{n}: present on all {n_images:,} images", [f"column: {n}", "not_null: true"])
        elif n_missing < n_images:
            share = _ceil(n_missing / n_images)
            add(
                f"{n}: missing on {n_missing:,} of {n_images:,} images",
                [f"column: {n}", f"max_missing_share: {_yaml_scalar(share)}"],
            )
        if spec.kind == "text" and 0 < n_distinct <= max_categories:
            expr = column_expression(n)
            values = [
                v
                for (v,) in session.execute(
                    _images(sample, expr)
                    .where(_present(expr, "text"))
                    .group_by(expr)
                    .order_by(expr)
                )
            ]
            add(
                f"{n}: values seen: {len(values)}",
                [f"column: {n}", f"in: [{', '.join(_yaml_scalar(v) for v in values)}]"],
            )
        elif spec.kind == "num" and lo is not None and hi is not None:
            lo_f, hi_f = float(lo), float(hi)
            pad = widen * (hi_f - lo_f)
            low, high = _floor(lo_f - pad), _ceil(hi_f + pad)
            add(
                f"{n}: observed {lo_f:g} to {hi_f:g}"
                + (f", widened by {widen:g} of the range" if widen else ""),
                [f"column: {n}", f"between: [{_yaml_scalar(low)}, {_yaml_scalar(high)}]"],
            )
    n_sha, n_sha_distinct = int(row[-2] or 0), int(row[-1] or 0)
    if n_sha > 1 and n_sha == n_sha_distinct:
        add(
            f"pixel_sha256: all {n_sha:,} pixel hashes differ",
            ["column: pixel_sha256", "unique: true"],
        )
    _suggest_shares(session, sample, add)
    _suggest_annotations(session, scope, sample, add)
    if lines[-1] == "rules:":  # nothing to suggest (an empty version)
        lines[-1] = "rules: []"
    return "\n".join(lines) + "\n"


def _suggest_shares(
    session: Session, sample: _Sample, add: Callable[[str, list[str]], None]
) -> None:
    source = column_expression("source")
    for column in _SHARE_COLUMNS:
        expr = column_expression(column)
        frame = _frame(
            session,
            _images(
                sample, source.label("grp"), expr.label("value"), func.count(Image.id).label("n")
            )
            .where(source.is_not(None))
            .group_by(source, expr),
        )
        if frame.empty or frame["grp"].nunique() < 2:
            continue
        frame["share"] = frame["n"] / frame.groupby("grp")["n"].transform("sum")
        for value, part in frame.dropna(subset=["value"]).groupby("value", sort=True):
            top = float(part["share"].max())
            if _ceil(top) >= 1:
                continue
            add(
                f"share of {column} = {value} per source: at most {top:.3f} observed",
                [
                    "share: {"
                    f"column: {column}, value: {_yaml_scalar(value)}, "
                    f"at_most: {_yaml_scalar(_ceil(top))}, per: source"
                    "}"
                ],
            )


def _suggest_annotations(
    session: Session, scope: Scope, sample: _Sample, add: Callable[[str, list[str]], None]
) -> None:
    tasks = session.execute(
        select(LabelingTask.id, LabelingTask.name)
        .where(LabelingTask.dataset_id == scope.dataset_id)
        .order_by(LabelingTask.id)
    ).all()
    for task_id, name in tasks:
        per_image = (
            _images(sample, Image.id, func.count(distinct(Annotation.annotator_id)).label("n"))
            .outerjoin(
                Annotation, and_(Annotation.image_id == Image.id, Annotation.task_id == task_id)
            )
            .group_by(Image.id)
            .subquery()
        )
        low = session.scalar(select(func.min(per_image.c.n)))
        if low is None or int(low) < 1:
            continue
        add(
            f"task {name}: every image has at least {int(low)} annotators",
            [f"annotations_per_image: {{task: {_yaml_scalar(name)}, at_least: {int(low)}}}"],
        )


# --------------------------------------------------------------------------- reporter


_STATUS_MARK = {"passed": "PASS", "failed": "FAIL", "not_run": "SKIP"}


def format_text(report: CheckReport, *, rows: int = 5) -> str:
    """A plain-text report: the verdict, one line per check, a few failing rows of each
    failed check."""
    head = (
        f"data tests of {report.scope.dataset} {report.scope.version}: "
        f"{'PASSED' if report.passed else 'FAILED'}"
        + (f" (run {report.run_id})" if report.run_id is not None else "")
    )
    out = [head]
    for o in report.outcomes:
        line = f" line {o.line}" if o.line is not None else ""
        out.append(f"  {_STATUS_MARK[o.status]:<4} {o.severity:<7} {o.name}{line}: {o.message}")
        if o.status == "failed" and rows > 0 and not o.failing.empty:
            shown = (
                o.failing.head(rows)[FAILING_COLUMNS]
                .astype(object)
                .where(o.failing.head(rows)[FAILING_COLUMNS].notna(), "")
            )
            for rec in shown.to_dict("records"):
                out.append("         " + " | ".join(str(v) for v in rec.values()))
    return "\n".join(out) + "\n"
