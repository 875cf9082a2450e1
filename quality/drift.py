r"""Drift monitoring: features from the DB, windows against a reference, and alerts.

A model validated on last winter's images meets this spring's. This module says when and
where the input (or the model's output) stopped looking like the reference, and, as an
alert of its own, when inputs or predictions went missing.

Which function for which situation
----------------------------------
* :func:`feature_frame` -- one row per image (SQL): metadata, image-quality metrics, label
  rates, model scores per model version, and missing/empty prediction flags.
* :class:`DriftMonitor` -- the estimator: ``fit`` a reference period, ``evaluate`` a
  current period cut into windows, for the whole dataset and per source; returns a
  :class:`DriftResult` (timeline, per-column tests, missing-input checks, alerts).
* :func:`build_drift_report` -- both of the above for a dataset in the DB
  (:class:`DriftReport`); what ``quality drift`` and the Drift page call.
* :func:`monitoring_report` -- the Markdown or HTML report a cron job sends three times a
  day: images per period, errors, prediction histograms per period, alerts.
* :func:`choice_table` -- which test each column gets, and why.
* :func:`parse_date_range` / :func:`parse_period` -- ``START:END`` and ``7D``/``8h``.

Time axis
---------
Windows run on the **study date** (``studies.study_date``): the day the image was taken,
which is what a distribution belongs to. Ingest time says when a file reached the store
(re-sends and back-fills make it jump); a prediction's ``created_at`` does not exist for
the images the model never saw, which are exactly the ones the missing-input alert must
count. Images without a study date are left out of every window (and counted in
``DriftReport.n_undated``). The monitoring report's sub-day periods (``8h``) use the
header's ``StudyTime`` hour as well.

Features
--------
``image_id, sop_uid, study_date, source`` identify an image; every other column is a
feature:

* metadata: ``modality, manufacturer, model, software_version`` (header
  ``SoftwareVersions``), ``kvp, rows, cols, spacing_mm`` (row spacing),
  ``photometric, bits_stored``;
* image quality (``iq_`` prefix; only when the scope is scored), from the newest scorer
  version: ``iq_mean, iq_p01, iq_p99, iq_sharpness, iq_noise_sigma, iq_snr, iq_cnr,
  iq_entropy, iq_dynamic_range, iq_quality_score, iq_ood_score``;
* label rates, one per classification task: ``finding_rate:TASK``, the share of the
  doctors' annotations of the image that are a finding, i.e. not the task's normal class
  (``"normal"`` when the task has it, else its first class), as a SQL ``AVG(CASE ...)``;
* per model version ``MV`` (the version name, or ``MODEL/VERSION`` when the scope has
  predictions of more than one model): ``score:MV`` and ``label:MV`` from the image's
  newest prediction row, and the flags ``missing:MV`` (no row) and ``empty:MV`` (a row with
  neither score nor label). The flags feed only the missing-input alert.

Distribution drift
------------------
Each (window, scope) compares the scope's reference rows with its current rows by
:func:`quality.drift_tests.drift_table`: the test of each column is chosen by type and
size (KS, chi-square, z; normalised Wasserstein and Jensen-Shannon above 1000 rows), or
overridden per column, and the p-value tests are corrected together by
Benjamini-Hochberg at ``alpha``. A window with fewer than ``min_images`` (default 3)
images in a scope is not tested: with two images against a reference of 20, even a complete
separation gives an exact KS p-value of 2/231 ≈ 0.009, which no longer counts after the
correction over some 25 features, while the asymptotic z and chi-square tests would let a
single odd image fire. A **drift alert** is a (window, scope) with at least one drifted
column.

Why these choices hold the false-alarm rate: Benjamini-Hochberg rejects anything only when
Simes' global test does, so with no drift a (window, scope) alerts with probability at most
``alpha`` when the tests are independent or positively dependent (PRDS; Benjamini &
Yekutieli 2001) -- correlated features such as the intensity metrics or the two model
versions' scores do not add false alarms the way separate per-feature tests would. Constant
features (one vendor per source) give p = 1 and make the correction more conservative; the
discrete exact KS test is conservative too. On the small demo, 0 of 27 undrifted
(source, window) pairs alert (1 of 27 when the image-quality metrics are scored).

Missing and empty inputs
------------------------
For every (window, scope), each share below is compared with the reference by a one-sided
test, Benjamini-Hochberg across the checks of that (window, scope), and alerts when the
adjusted p-value is at most ``alpha`` *and* the rise is large enough:

* ``missing:MV`` / ``empty:MV`` and ``missing_meta:FIELD`` (modality, manufacturer, kvp,
  spacing_mm, photometric): shares :math:`x/n`. Fisher's exact test, one-sided
  (``alternative="greater"``) on the table
  :math:`\begin{pmatrix} x_{cur} & n_{cur} - x_{cur} \\ x_{ref} & n_{ref} - x_{ref}\end{pmatrix}`
  (Fisher 1935; Agresti 2002, §3.5), and a rise
  :math:`x_{cur}/n_{cur} - x_{ref}/n_{ref} \ge` ``min_rise`` (default 0.10);
* ``volume``: images per day against the reference rate. Conditional on the total, the
  current count is :math:`\mathrm{Binomial}(n_{ref} + n_{cur},\, d_{cur} / (d_{ref} +
  d_{cur}))` when both periods share one Poisson rate (:math:`d` = days; Przyborowski &
  Wilenski 1940), so the p-value is the binomial lower tail; it alerts when also
  :math:`n_{cur} \le` ``min_volume_ratio`` :math:`\cdot\, n_{ref}\, d_{cur}/d_{ref}`.

This is the alert that catches an input feed that silently switched format: the model
runs, returns nothing (empty) or is never called (missing), and no distribution moves.

References
----------
.. [1] R. A. Fisher, *The Design of Experiments*, 1935; A. Agresti, *Categorical Data
   Analysis*, 2nd ed., Wiley, 2002, §3.5.
.. [2] J. Przyborowski, H. Wilenski, "Homogeneity of results in testing samples from
   Poisson series", Biometrika 31, 1940.
.. [3] Y. Benjamini, Y. Hochberg, "Controlling the false discovery rate", JRSS B 57(1), 1995.
.. [4] S. Rabanser, S. Günnemann, Z. Lipton, "Failing loudly: an empirical study of methods
   for detecting dataset shift", NeurIPS 2019 (univariate tests with a multiple-testing
   correction as a strong baseline).
.. [5] Y. Benjamini, D. Yekutieli, "The control of the false discovery rate in multiple
   testing under dependency", Ann. Stat. 29(4), 2001.
"""

from __future__ import annotations

import datetime as dt
import html
import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import pandas as pd
from scipy import stats
from sqlalchemy import and_, case, func, literal, select
from sqlalchemy.orm import Session

from quality.db.queries import _db_errors, newest_version_id, resolve_dataset
from quality.db.schema import (
    Annotation,
    Annotator,
    Dataset,
    DatasetItem,
    DatasetVersion,
    Image,
    ImageQuality,
    IngestError,
    LabelingTask,
    Model,
    ModelVersion,
    Prediction,
    Series,
    Source,
    Study,
)
from quality.drift_tests import (
    DRIFT_TESTS,
    Flavor,
    benjamini_hochberg,
    choose_test,
    drift_table,
    get_test,
)
from quality.errors import DriftInputError

__all__ = [
    "ALL_SCOPE",
    "DEFAULT_REFERENCE_DAYS",
    "ID_COLUMNS",
    "IQ_COLUMNS",
    "KEY_METADATA",
    "METADATA_COLUMNS",
    "DriftMonitor",
    "DriftReport",
    "DriftResult",
    "build_drift_report",
    "choice_table",
    "default_settings",
    "drift_columns",
    "feature_frame",
    "feature_values",
    "flag_columns",
    "monitoring_report",
    "parse_date_range",
    "parse_period",
    "parse_test_overrides",
]

ALL_SCOPE = "(all)"
"""Name of the whole-dataset scope in every output."""
DEFAULT_REFERENCE_DAYS = 28
"""Default reference period: the first four weeks of data."""
ID_COLUMNS = ["image_id", "sop_uid", "study_date", "source"]
METADATA_COLUMNS = [
    "modality",
    "manufacturer",
    "model",
    "software_version",
    "kvp",
    "rows",
    "cols",
    "spacing_mm",
    "photometric",
    "bits_stored",
]
KEY_METADATA = ["modality", "manufacturer", "kvp", "spacing_mm", "photometric"]
"""Metadata whose missing share has a missing-input check of its own."""
_IQ_METRICS = [
    "mean",
    "p01",
    "p99",
    "sharpness",
    "noise_sigma",
    "snr",
    "cnr",
    "entropy",
    "dynamic_range",
    "quality_score",
    "ood_score",
]
IQ_COLUMNS = [f"iq_{m}" for m in _IQ_METRICS]
_FLAG_PREFIXES = ("missing:", "empty:")
_HIST_BINS = 10

Status = Literal["tested", "too few images", "no reference images", "no images"]


# --------------------------------------------------------------------------- parsing


def parse_date_range(text: str | None, *, option: str = "--reference") -> tuple[Any, Any]:
    """``"START:END"`` (ISO dates, both inclusive; either side may be empty) as dates.

    Parameters
    ----------
    text : the range, or None / ``""`` for "not given".
    option : the name to blame in the error (a CLI option or a field).

    Returns
    -------
    (start, end) : :class:`datetime.date` or None each.

    Raises
    ------
    DriftInputError
        Not ``START:END``, a date that is not ISO ``YYYY-MM-DD``, or ``START > END``.

    Examples
    --------
    >>> parse_date_range("2024-01-08:2024-02-04")
    (datetime.date(2024, 1, 8), datetime.date(2024, 2, 4))
    >>> parse_date_range("2024-03-01:")
    (datetime.date(2024, 3, 1), None)
    """
    if text is None or not str(text).strip():
        return None, None
    parts = str(text).strip().split(":")
    if len(parts) != 2:
        raise DriftInputError(option, f"expected START:END (ISO dates), got {text!r}")
    dates = []
    for part in parts:
        part = part.strip()
        if not part:
            dates.append(None)
            continue
        try:
            dates.append(dt.date.fromisoformat(part))
        except ValueError:
            raise DriftInputError(
                option, f"{part!r} is not an ISO date (YYYY-MM-DD) in {text!r}"
            ) from None
    start, end = dates
    if start is not None and end is not None and start > end:
        raise DriftInputError(option, f"start {start} is after end {end}")
    return start, end


_PERIOD = re.compile(r"^\s*(\d+)\s*([hHdDwW])\s*$")


def parse_period(text: str, *, option: str = "--window", whole_days: bool = True) -> pd.Timedelta:
    """A period such as ``"7D"``, ``"2W"`` or (``whole_days=False``) ``"8h"``.

    Hours must divide a day (1, 2, 3, 4, 6, 8, 12 or 24), so periods tile each day.

    Raises
    ------
    DriftInputError
        Any other text, a zero period, or hours where whole days are needed.

    Examples
    --------
    >>> parse_period("7D")
    Timedelta('7 days 00:00:00')
    >>> parse_period("8h", whole_days=False)
    Timedelta('0 days 08:00:00')
    """
    match = _PERIOD.match(str(text))
    if not match or int(match.group(1)) == 0:
        units = "D (days) or W (weeks)" if whole_days else "h (hours), D (days) or W (weeks)"
        raise DriftInputError(option, f"{text!r} is not a period: a positive number and {units}")
    n, unit = int(match.group(1)), match.group(2).lower()
    if unit == "h":
        if whole_days and n % 24:
            raise DriftInputError(option, f"{text!r}: windows are whole days (study dates)")
        if n < 24 and 24 % n:
            raise DriftInputError(option, f"{text!r}: hours must divide 24 (1, 2, 3, 4, 6, 8, 12)")
        if n % 24 == 0:
            return pd.Timedelta(days=n // 24)
        return pd.Timedelta(hours=n)
    return pd.Timedelta(days=n * (7 if unit == "w" else 1))


def parse_test_overrides(items: Sequence[str] | None) -> dict[str, str]:
    """``["COLUMN=TEST", ...]`` as a dict; the test name is checked against the registry.

    The split is at the last ``=``, so column names may hold ``=``.

    Raises
    ------
    DriftInputError
        An item without ``=``, or an unknown test (the message lists the valid names).
    """
    out: dict[str, str] = {}
    for item in items or ():
        column, sep, name = str(item).rpartition("=")
        if not sep or not column.strip() or not name.strip():
            raise DriftInputError("--test", f"expected COLUMN=TEST, got {item!r}")
        try:
            get_test(name.strip())
        except ValueError as exc:
            raise DriftInputError("--test", str(exc)) from None
        out[column.strip()] = name.strip()
    return out


# --------------------------------------------------------------------------- features


def _scope_images(version_id: int | None) -> Any:
    """Base select of one row per image in scope, with its identity and metadata."""
    software = Image.header["SoftwareVersions"].as_string()
    stmt = (
        select(
            Image.id.label("image_id"),
            Image.sop_uid,
            Study.study_date,
            func.coalesce(Source.name, "(unknown)").label("source"),
            func.coalesce(Series.modality, Study.modality).label("modality"),
            Series.manufacturer,
            Series.model,
            software.label("software_version"),
            Series.kvp,
            Image.rows,
            Image.cols,
            Image.spacing_row.label("spacing_mm"),
            Image.photometric,
            Image.bits_stored,
        )
        .join(Series, Series.id == Image.series_id)
        .join(Study, Study.id == Series.study_id)
        .outerjoin(Source, Source.id == Study.source_id)
    )
    if version_id is not None:
        stmt = stmt.join(DatasetItem, DatasetItem.image_id == Image.id).where(
            DatasetItem.version_id == version_id
        )
    return stmt


def _scope_image_ids(version_id: int | None) -> Any:
    if version_id is None:
        return select(Image.id)
    return select(DatasetItem.image_id).where(DatasetItem.version_id == version_id)


def _software(value: Any) -> Any:
    """Multi-valued ``SoftwareVersions`` come back as JSON text (dialects differ): join them."""
    if isinstance(value, str) and value.startswith("["):
        try:
            return "\\".join(str(v) for v in json.loads(value))
        except ValueError:
            return value
    return value


def _newest_scorer(session: Session, version_id: int | None) -> str | None:
    stmt = select(ImageQuality.scorer_version)
    if version_id is not None:
        stmt = stmt.join(DatasetItem, DatasetItem.image_id == ImageQuality.image_id).where(
            DatasetItem.version_id == version_id
        )
    stmt = (
        stmt.group_by(ImageQuality.scorer_version)
        .order_by(func.max(ImageQuality.scored_at).desc(), ImageQuality.scorer_version.desc())
        .limit(1)
    )
    return session.scalar(stmt)


def _iq_frame(session: Session, version_id: int | None) -> pd.DataFrame:
    scorer = _newest_scorer(session, version_id)
    if scorer is None:
        return pd.DataFrame(columns=["image_id"])
    cols = [getattr(ImageQuality, m).label(f"iq_{m}") for m in _IQ_METRICS]
    stmt = select(ImageQuality.image_id, *cols).where(
        ImageQuality.scorer_version == scorer,
        ImageQuality.image_id.in_(_scope_image_ids(version_id)),
    )
    return pd.DataFrame(session.execute(stmt).all(), columns=["image_id", *IQ_COLUMNS])


def _normal_class(classes: Sequence[Any]) -> str | None:
    if not classes:
        return None
    return "normal" if "normal" in classes else str(classes[0])


def _label_rate_frame(
    session: Session, dataset_id: int | None, version_id: int | None
) -> pd.DataFrame:
    """Per image and classification task: the share of doctors' labels that are a finding."""
    stmt = select(LabelingTask.id, LabelingTask.name, LabelingTask.classes).where(
        LabelingTask.kind == "classification"
    )
    if dataset_id is not None:
        stmt = stmt.where(LabelingTask.dataset_id == dataset_id)
    tasks = [(int(i), str(n), _normal_class(c or [])) for i, n, c in session.execute(stmt)]
    tasks = [t for t in tasks if t[2] is not None]
    if not tasks:
        return pd.DataFrame(columns=["image_id"])
    finding = case(
        *[
            (and_(Annotation.task_id == tid, Annotation.label != normal), 1.0)
            for tid, _, normal in tasks
        ],
        else_=0.0,
    )
    rates = session.execute(
        select(Annotation.image_id, Annotation.task_id, func.avg(finding))
        .join(Annotator, Annotator.id == Annotation.annotator_id)
        .where(
            Annotator.kind == "doctor",
            Annotation.label.is_not(None),
            Annotation.task_id.in_([t[0] for t in tasks]),
            Annotation.image_id.in_(_scope_image_ids(version_id)),
        )
        .group_by(Annotation.image_id, Annotation.task_id)
    ).all()
    long = pd.DataFrame(rates, columns=["image_id", "task_id", "rate"])
    names = {tid: f"finding_rate:{name}" for tid, name, _ in tasks}
    if long.empty:
        return pd.DataFrame(columns=["image_id", *names.values()])
    wide = long.pivot(index="image_id", columns="task_id", values="rate")
    wide = wide.rename(columns=names).astype("float64")
    wide.columns.name = None
    return wide.reset_index()


def _prediction_frame(session: Session, version_id: int | None) -> pd.DataFrame:
    """Newest prediction row per (image, model version), pivoted to per-version columns."""
    ranked = (
        select(
            Prediction.image_id,
            Prediction.model_version_id,
            Prediction.score,
            Prediction.label,
            func.row_number()
            .over(
                partition_by=(Prediction.image_id, Prediction.model_version_id),
                order_by=(Prediction.created_at.desc(), Prediction.id.desc()),
            )
            .label("rn"),
        )
        .where(Prediction.image_id.in_(_scope_image_ids(version_id)))
        .subquery("ranked_predictions")
    )
    rows = session.execute(
        select(
            ranked.c.image_id,
            Model.name,
            ModelVersion.version,
            ranked.c.score,
            ranked.c.label,
        )
        .join(ModelVersion, ModelVersion.id == ranked.c.model_version_id)
        .join(Model, Model.id == ModelVersion.model_id)
        .where(ranked.c.rn == 1)
    ).all()
    frame = pd.DataFrame(rows, columns=["image_id", "model", "version", "score", "label"])
    if frame.empty:
        return pd.DataFrame(columns=["image_id"])
    several = frame["model"].nunique() > 1
    frame["mv"] = (frame["model"] + "/" + frame["version"]) if several else frame["version"]
    frame["score"] = pd.to_numeric(frame["score"]).astype("float64")
    frame["empty"] = frame["score"].isna() & frame["label"].isna()
    parts = []
    for mv, group in frame.groupby("mv", sort=True):
        g = group.set_index("image_id")
        parts.append(
            pd.DataFrame(
                {
                    f"score:{mv}": g["score"],
                    f"label:{mv}": g["label"].astype(object),
                    f"empty:{mv}": g["empty"].astype(bool),
                    f"missing:{mv}": False,
                }
            )
        )
    return pd.concat(parts, axis=1).rename_axis("image_id").reset_index()


@_db_errors
def feature_frame(session: Session, dataset: str | int | None = None) -> pd.DataFrame:
    """One row per image of a dataset's newest version (or of every image): the features.

    Parameters
    ----------
    session : an open session.
    dataset : a dataset name or id; None for every image in the DB.

    Returns
    -------
    DataFrame
        :data:`ID_COLUMNS` then the features of the module's "Features" section, ordered
        by ``study_date`` then ``image_id``. ``study_date`` is ``datetime64`` (NaT when
        unknown); flags are bool; image-quality, label-rate and model columns are present
        only when the scope has such rows. Empty (with the id and metadata columns) for a
        dataset without a version.

    Raises
    ------
    DatasetNotFoundError
        Unknown dataset (the message lists the known ones).
    """
    dataset_id = None if dataset is None else resolve_dataset(session, dataset)
    version_id = None
    if dataset_id is not None:
        version_id = newest_version_id(session, dataset_id)
        if version_id is None:
            return _typed(pd.DataFrame(columns=[*ID_COLUMNS, *METADATA_COLUMNS]))
    base = pd.DataFrame(
        session.execute(_scope_images(version_id)).all(),
        columns=[*ID_COLUMNS, *METADATA_COLUMNS],
    )
    base["software_version"] = base["software_version"].map(_software)
    frame = base
    for part in (
        _iq_frame(session, version_id),
        _label_rate_frame(session, dataset_id, version_id),
        _prediction_frame(session, version_id),
    ):
        if len(part.columns) > 1:
            frame = frame.merge(part, on="image_id", how="left")
    # Images without a row of a model version: missing; empty stays False for them.
    for col in [c for c in frame.columns if c.startswith("missing:")]:
        mv = col.removeprefix("missing:")
        absent = frame[f"empty:{mv}"].isna()
        frame[col] = absent
        frame[f"empty:{mv}"] = frame[f"empty:{mv}"].fillna(False).astype(bool)
    frame = _typed(frame)
    return frame.sort_values(["study_date", "image_id"], ignore_index=True, na_position="last")


def _typed(frame: pd.DataFrame) -> pd.DataFrame:
    out = frame.copy()
    out["image_id"] = pd.to_numeric(out["image_id"]).astype("int64")
    out["study_date"] = pd.to_datetime(out["study_date"])
    for col in ("kvp", "rows", "cols", "spacing_mm", "bits_stored", *IQ_COLUMNS):
        if col in out:
            out[col] = pd.to_numeric(out[col]).astype("float64")
    for col in ("sop_uid", "source", "modality", "manufacturer", "model", "software_version"):
        if col in out:
            out[col] = out[col].astype(object)
    if "photometric" in out:
        out["photometric"] = out["photometric"].astype(object)
    for col in [c for c in out.columns if c.startswith(("score:", "finding_rate:"))]:
        out[col] = pd.to_numeric(out[col]).astype("float64")
    for col in [c for c in out.columns if c.startswith("label:")]:
        out[col] = out[col].astype(object).where(out[col].notna(), None)
    return out


def flag_columns(features: pd.DataFrame) -> list[str]:
    """The missing/empty prediction flags of a feature frame (missing-input alert only)."""
    return [c for c in features.columns if str(c).startswith(_FLAG_PREFIXES)]


def drift_columns(features: pd.DataFrame) -> list[str]:
    """The columns a distribution test runs on: all but the ids and the flags."""
    skip = set(ID_COLUMNS) | set(flag_columns(features))
    return [c for c in features.columns if c not in skip]


# --------------------------------------------------------------------------- the monitor


@dataclass
class DriftResult:
    """What :meth:`DriftMonitor.evaluate` found.

    Attributes
    ----------
    reference, current : (date, date)
        The periods (inclusive).
    window_days : int
    scopes : list of str
        ``"(all)"`` then the values of the ``by`` column.
    timeline : DataFrame
        One row per (scope, window): ``scope, window_start, window_end, n_reference,
        n_current, status`` (``tested``, ``too few images``, ``no reference images``,
        ``no images``), ``n_tested, n_drifted, min_p_adjusted, drifted_columns`` (comma
        separated), ``drift_alert, missing_alert, alert``.
    tests : DataFrame
        Every column test: ``scope, window_start, window_end`` then the columns of
        :func:`quality.drift_tests.drift_table`.
    missing : DataFrame
        Every missing-input check: ``scope, window_start, window_end, check, kind``
        (``missing``, ``empty``, ``metadata``, ``volume``), ``n_reference, x_reference,
        reference_share, n_current, x_current, current_share, rise, expected, p_value,
        p_adjusted, alert``. For ``volume``, ``x_*`` are image counts, shares are images
        per day, ``expected`` the count the reference rate predicts and ``rise`` the
        ratio ``n_current / expected``.
    pooled : DataFrame
        Per scope, the whole current period against the reference (``scope`` then the
        drift-table columns); for the histograms, not for alerts.
    alerts : DataFrame
        ``kind`` (``drift`` or ``missing_input``), ``scope, window_start, window_end,
        what, detail``: one row per drifted column or alerting check.
    """

    reference: tuple[dt.date, dt.date]
    current: tuple[dt.date, dt.date]
    window_days: int
    scopes: list[str]
    timeline: pd.DataFrame
    tests: pd.DataFrame
    missing: pd.DataFrame
    pooled: pd.DataFrame
    alerts: pd.DataFrame

    @property
    def alerted(self) -> bool:
        """True when any alert fired (drift or missing input)."""
        return not self.alerts.empty

    @property
    def n_windows(self) -> int:
        """Number of windows in the current period."""
        return int(self.timeline[["window_start"]].drop_duplicates().shape[0])


_TIMELINE_COLUMNS = [
    "scope",
    "window_start",
    "window_end",
    "n_reference",
    "n_current",
    "status",
    "n_tested",
    "n_drifted",
    "min_p_adjusted",
    "drifted_columns",
    "drift_alert",
    "missing_alert",
    "alert",
]
_MISSING_COLUMNS = [
    "scope",
    "window_start",
    "window_end",
    "check",
    "kind",
    "n_reference",
    "x_reference",
    "reference_share",
    "n_current",
    "x_current",
    "current_share",
    "rise",
    "expected",
    "p_value",
    "p_adjusted",
    "alert",
]
_ALERT_COLUMNS = ["kind", "scope", "window_start", "window_end", "what", "detail"]


class DriftMonitor:
    """Reference-vs-window drift and missing-input monitoring, sklearn style.

    ``fit`` takes the reference rows out of a feature frame (:func:`feature_frame`);
    ``evaluate`` cuts the current period into windows and tests every (window, scope)
    against the scope's reference rows (module docstring for the tests and the alerts).

    Parameters
    ----------
    reference : (date or None, date or None), optional
        Reference period, inclusive; a None end (or no period) means ``reference_days``
        days from the start, a None start the first study date.
    reference_days : int
        Length of the default reference period (28: the first four weeks of data).
    window : str
        Window length, whole days: ``"7D"``, ``"1W"``, ...
    by : str or None
        Column whose values are the subgroup scopes (``"source"``); None: the whole
        dataset only.
    tests : mapping of column to test name, optional
        Per-column overrides of the automatic test choice.
    alpha : float
        False-discovery rate of Benjamini-Hochberg, for drift and missing-input checks.
    min_images : int
        Windows with fewer images in a scope skip the distribution tests.
    min_rise : float
        Smallest rise of a missing or empty share (absolute, 0-1) that alerts.
    min_volume_ratio : float
        A volume alert needs ``n_current <= min_volume_ratio * expected``.
    flavor : {"default", "evidently"}
        Passed to :func:`quality.drift_tests.drift_table`.

    Attributes
    ----------
    reference_ : (date, date)
        The reference period used.
    reference_frame_ : DataFrame
        The reference rows.
    columns_ : list of str
        The columns tested for drift.
    flags_ : list of str
        The missing/empty prediction flags.
    scopes_ : list of str
        ``"(all)"`` then the ``by`` values of the dated images, sorted.
    window_days_ : int

    Examples
    --------
    >>> days = pd.to_datetime(["2024-01-01"] * 10 + ["2024-01-08"] * 10)
    >>> frame = pd.DataFrame({"image_id": range(20), "sop_uid": "x", "study_date": days,
    ...                       "source": "A", "kvp": [120.0] * 10 + [100.0] * 10})
    >>> result = DriftMonitor(reference_days=7, window="7D").fit(frame).evaluate(frame)
    >>> result.timeline[["scope", "status", "drift_alert"]].to_dict("records")[0]
    {'scope': '(all)', 'status': 'tested', 'drift_alert': True}
    """

    def __init__(
        self,
        *,
        reference: tuple[Any, Any] | None = None,
        reference_days: int = DEFAULT_REFERENCE_DAYS,
        window: str = "7D",
        by: str | None = "source",
        tests: Mapping[str, str] | None = None,
        alpha: float = 0.05,
        min_images: int = 3,
        min_rise: float = 0.10,
        min_volume_ratio: float = 0.5,
        flavor: Flavor = "default",
    ) -> None:
        self.reference = reference
        self.reference_days = reference_days
        self.window = window
        self.by = by
        self.tests = tests
        self.alpha = alpha
        self.min_images = min_images
        self.min_rise = min_rise
        self.min_volume_ratio = min_volume_ratio
        self.flavor = flavor

    # ------------------------------------------------------------------ validation

    def _check_params(self, features: pd.DataFrame) -> None:
        if not 0 < float(self.alpha) < 1:
            raise DriftInputError("--alpha", f"must be in (0, 1), got {self.alpha!r}")
        if int(self.reference_days) < 1:
            raise DriftInputError("reference_days", f"must be ≥ 1, got {self.reference_days!r}")
        if int(self.min_images) < 1:
            raise DriftInputError("min_images", f"must be ≥ 1, got {self.min_images!r}")
        if not 0 <= float(self.min_rise) < 1:
            raise DriftInputError("min_rise", f"must be in [0, 1), got {self.min_rise!r}")
        if not 0 < float(self.min_volume_ratio) <= 1:
            raise DriftInputError(
                "min_volume_ratio", f"must be in (0, 1], got {self.min_volume_ratio!r}"
            )
        missing = [c for c in ("image_id", "study_date") if c not in features.columns]
        if missing:
            raise DriftInputError("features", f"missing columns {missing}")
        if self.by is not None and self.by not in features.columns:
            valid = ", ".join(
                c
                for c in features.columns
                if c not in ("sop_uid", "study_date")
                and not pd.api.types.is_numeric_dtype(features[c])
            )
            raise DriftInputError("--by", f"no column {self.by!r}; valid: {valid}")

    def fit(self, features: pd.DataFrame) -> DriftMonitor:
        """Take the reference rows (module docstring) out of ``features``.

        Raises
        ------
        DriftInputError
            A bad parameter, no dated image, an empty reference period, or a test override
            naming a column that is not a feature (the message lists the features).
        """
        self._check_params(features)
        self.window_days_ = _whole_days(self.window, "--window")
        dates = features["study_date"].dropna()
        if dates.empty:
            raise DriftInputError("study_date", "no image in scope has a study date")
        first = dates.min().date()
        start, end = self.reference if self.reference is not None else (None, None)
        start = start or first
        end = end or start + dt.timedelta(days=int(self.reference_days) - 1)
        if start > end:
            raise DriftInputError("--reference", f"start {start} is after end {end}")
        mask = _between(features, start, end)
        if not mask.any():
            raise DriftInputError(
                "--reference",
                f"no image between {start} and {end}; study dates run from {first} to "
                f"{dates.max().date()}",
            )
        self.columns_ = drift_columns(features)
        self.flags_ = flag_columns(features)
        overrides = dict(self.tests or {})
        unknown = sorted(set(overrides) - set(self.columns_))
        if unknown:
            raise DriftInputError(
                "--test", f"no feature {unknown}; features: {', '.join(self.columns_)}"
            )
        for name in overrides.values():
            try:
                get_test(name)
            except ValueError as exc:
                raise DriftInputError("--test", str(exc)) from None
        self.reference_ = (start, end)
        self.reference_frame_ = features.loc[mask].reset_index(drop=True)
        scopes = [ALL_SCOPE]
        if self.by is not None:
            # Every value with a dated image: a source that appears only later still shows
            # (as "no reference images") instead of vanishing from the timeline.
            values = features.loc[features["study_date"].notna(), self.by].dropna()
            values = values.astype(str).unique()
            scopes += sorted(values)
        self.scopes_ = scopes
        return self

    # ------------------------------------------------------------------ evaluation

    def evaluate(
        self, features: pd.DataFrame, current: tuple[Any, Any] | None = None
    ) -> DriftResult:
        """Test every window of the current period, per scope, against the reference.

        Parameters
        ----------
        features : the feature frame (the one given to :meth:`fit`, or newer rows).
        current : (start, end), inclusive; default (or None ends): from the day after
            the reference to the last study date.

        Raises
        ------
        DriftInputError
            An empty or inverted current period.
        """
        if not hasattr(self, "reference_"):
            raise DriftInputError("DriftMonitor", "call fit() before evaluate()")
        dates = features["study_date"].dropna()
        last = dates.max().date() if not dates.empty else self.reference_[1]
        start, end = current if current is not None else (None, None)
        start = start or self.reference_[1] + dt.timedelta(days=1)
        end = end or last
        if start > end:
            raise DriftInputError(
                "--current",
                f"current period {start} to {end} is empty (the data end on {last})",
            )
        windows = _windows(start, end, self.window_days_)
        timeline, tests, missing, alerts = [], [], [], []
        for w_start, w_end in windows:
            in_window = features.loc[_between(features, w_start, w_end)]
            for scope in self.scopes_:
                ref = self._scope(self.reference_frame_, scope)
                cur = self._scope(in_window, scope)
                row, table, checks, found = self._one(ref, cur, scope, w_start, w_end)
                timeline.append(row)
                if table is not None:
                    tests.append(table)
                if checks is not None:
                    missing.append(checks)
                alerts.extend(found)
        pooled = []
        whole = features.loc[_between(features, start, end)]
        for scope in self.scopes_:
            ref, cur = self._scope(self.reference_frame_, scope), self._scope(whole, scope)
            if len(ref) and len(cur):
                table = self._drift(ref, cur)
                table.insert(0, "scope", scope)
                pooled.append(table)
        return DriftResult(
            reference=self.reference_,
            current=(start, end),
            window_days=self.window_days_,
            scopes=list(self.scopes_),
            timeline=pd.DataFrame(timeline, columns=_TIMELINE_COLUMNS),
            tests=_concat(tests, ["scope", "window_start", "window_end"]),
            missing=_concat(missing, _MISSING_COLUMNS),
            pooled=_concat(pooled, ["scope"]),
            alerts=pd.DataFrame(alerts, columns=_ALERT_COLUMNS),
        )

    def _scope(self, frame: pd.DataFrame, scope: str) -> pd.DataFrame:
        if scope == ALL_SCOPE or self.by is None:
            return frame
        return frame.loc[frame[self.by].astype(str) == scope]

    def _drift(self, ref: pd.DataFrame, cur: pd.DataFrame) -> pd.DataFrame:
        return drift_table(
            ref[self.columns_],
            cur[self.columns_],
            tests=self.tests,
            alpha=float(self.alpha),
            flavor=self.flavor,
        )

    def _one(
        self,
        ref: pd.DataFrame,
        cur: pd.DataFrame,
        scope: str,
        w_start: dt.date,
        w_end: dt.date,
    ) -> tuple[dict[str, Any], pd.DataFrame | None, pd.DataFrame | None, list[dict[str, Any]]]:
        where = {"scope": scope, "window_start": w_start, "window_end": w_end}
        status: Status = "tested"
        if len(ref) == 0:
            status = "no reference images"
        elif len(cur) == 0:
            status = "no images"
        elif len(cur) < int(self.min_images):
            status = "too few images"
        table = None
        alerts: list[dict[str, Any]] = []
        n_tested = n_drifted = 0
        min_p = math.nan
        drifted: list[str] = []
        if status == "tested":
            table = self._drift(ref, cur)
            n_tested = int((table["n_reference"].gt(0) & table["n_current"].gt(0)).sum())
            hits = table.loc[table["drifted"]]
            drifted = [str(c) for c in hits["column"]]
            n_drifted = len(drifted)
            if table["p_adjusted"].notna().any():
                min_p = float(table["p_adjusted"].min())
            for rec in hits.to_dict("records"):
                alerts.append(
                    {"kind": "drift", **where, "what": rec["column"], "detail": _why(rec)}
                )
            table.insert(0, "window_end", w_end)
            table.insert(0, "window_start", w_start)
            table.insert(0, "scope", scope)
        checks = None
        if len(ref):
            checks = self._missing_checks(ref, cur, w_start, w_end)
            for rec in checks.loc[checks["alert"]].to_dict("records"):
                alerts.append(
                    {
                        "kind": "missing_input",
                        **where,
                        "what": rec["check"],
                        "detail": _why_missing(rec),
                    }
                )
            checks.insert(0, "window_end", w_end)
            checks.insert(0, "window_start", w_start)
            checks.insert(0, "scope", scope)
        missing_alert = bool(checks is not None and checks["alert"].any())
        row = {
            **where,
            "n_reference": len(ref),
            "n_current": len(cur),
            "status": status,
            "n_tested": n_tested,
            "n_drifted": n_drifted,
            "min_p_adjusted": min_p,
            "drifted_columns": ", ".join(drifted),
            "drift_alert": n_drifted > 0,
            "missing_alert": missing_alert,
            "alert": n_drifted > 0 or missing_alert,
        }
        return row, table, checks, alerts

    def _missing_checks(
        self, ref: pd.DataFrame, cur: pd.DataFrame, w_start: dt.date, w_end: dt.date
    ) -> pd.DataFrame:
        rows: list[dict[str, Any]] = []
        n_ref, n_cur = len(ref), len(cur)
        if n_cur:
            for col in self.flags_:
                kind = col.split(":", 1)[0]
                rows.append(_share_check(col, kind, ref[col], cur[col]))
            for col in (c for c in KEY_METADATA if c in ref.columns):
                rows.append(
                    _share_check(
                        f"missing_meta:{col}", "metadata", ref[col].isna(), cur[col].isna()
                    )
                )
        d_ref = (self.reference_[1] - self.reference_[0]).days + 1
        d_cur = (w_end - w_start).days + 1
        rows.append(_volume_check(n_ref, d_ref, n_cur, d_cur))
        checks = pd.DataFrame(rows, columns=_MISSING_COLUMNS[3:])
        p = checks["p_value"].to_numpy(dtype=np.float64)
        finite = np.isfinite(p)
        if finite.any():
            _, adjusted = benjamini_hochberg(p[finite], alpha=float(self.alpha))
            checks.loc[finite, "p_adjusted"] = adjusted
        significant = checks["p_adjusted"].le(float(self.alpha))
        big = np.where(
            checks["kind"].eq("volume"),
            checks["rise"].le(float(self.min_volume_ratio)),
            checks["rise"].ge(float(self.min_rise)),
        )
        checks["alert"] = (significant & big).astype(bool)
        return checks


def _whole_days(window: str, option: str) -> int:
    period = parse_period(window, option=option)
    return int(period / pd.Timedelta(days=1))


def _between(frame: pd.DataFrame, start: dt.date, end: dt.date) -> pd.Series:
    dates = frame["study_date"]
    return dates.ge(pd.Timestamp(start)) & dates.le(pd.Timestamp(end))


def _windows(start: dt.date, end: dt.date, days: int) -> list[tuple[dt.date, dt.date]]:
    """Consecutive windows of ``days`` from ``start``; the last is cut at ``end``."""
    out = []
    w_start = start
    while w_start <= end:
        w_end = min(w_start + dt.timedelta(days=days - 1), end)
        out.append((w_start, w_end))
        w_start = w_end + dt.timedelta(days=1)
    return out


def _concat(frames: list[pd.DataFrame], columns: list[str]) -> pd.DataFrame:
    if not frames:
        return pd.DataFrame(columns=columns)
    return pd.concat(frames, ignore_index=True)


def _share_check(check: str, kind: str, ref: pd.Series, cur: pd.Series) -> dict[str, Any]:
    """One-sided Fisher exact test of a rise in a flag's share (module docstring)."""
    x_ref, n_ref = int(ref.fillna(False).astype(bool).sum()), len(ref)
    x_cur, n_cur = int(cur.fillna(False).astype(bool).sum()), len(cur)
    r_share, c_share = x_ref / n_ref, x_cur / n_cur
    if x_cur == 0:
        p = 1.0  # nothing missing now: no rise, and no need to call scipy
    else:
        table = [[x_cur, n_cur - x_cur], [x_ref, n_ref - x_ref]]
        p = float(stats.fisher_exact(table, alternative="greater").pvalue)
    return {
        "check": check,
        "kind": kind,
        "n_reference": n_ref,
        "x_reference": x_ref,
        "reference_share": r_share,
        "n_current": n_cur,
        "x_current": x_cur,
        "current_share": c_share,
        "rise": c_share - r_share,
        "expected": r_share * n_cur,
        "p_value": p,
        "p_adjusted": math.nan,
        "alert": False,
    }


def _volume_check(n_ref: int, d_ref: int, n_cur: int, d_cur: int) -> dict[str, Any]:
    """Conditional binomial test of a drop in images per day (module docstring)."""
    expected = n_ref * d_cur / d_ref
    p = math.nan
    if n_ref + n_cur > 0:
        p = float(
            stats.binomtest(
                n_cur, n_ref + n_cur, d_cur / (d_ref + d_cur), alternative="less"
            ).pvalue
        )
    return {
        "check": "volume",
        "kind": "volume",
        "n_reference": n_ref,
        "x_reference": n_ref,
        "reference_share": n_ref / d_ref,
        "n_current": n_cur,
        "x_current": n_cur,
        "current_share": n_cur / d_cur,
        "rise": n_cur / expected if expected > 0 else math.nan,
        "expected": expected,
        "p_value": p,
        "p_adjusted": math.nan,
        "alert": False,
    }


def _fmt_p(p: float) -> str:
    return "n/a" if p is None or not math.isfinite(p) else f"{p:.2g}"


def _why(rec: Mapping[str, Any]) -> str:
    if rec["kind"] == "p_value":
        return (
            f"{rec['test']}: statistic {rec['statistic']:.3g}, adjusted p {_fmt_p(rec['p_adjusted'])} "
            f"(n = {rec['n_reference']} vs {rec['n_current']})"
        )
    return f"{rec['test']}: {rec['statistic']:.3g} ≥ {rec['threshold']:g}"


def _why_missing(rec: Mapping[str, Any]) -> str:
    if rec["kind"] == "volume":
        return (
            f"{rec['x_current']} images, {rec['expected']:.1f} expected at the reference rate "
            f"({rec['reference_share']:.2f}/day); adjusted p {_fmt_p(rec['p_adjusted'])}"
        )
    return (
        f"{rec['x_current']}/{rec['n_current']} ({rec['current_share']:.0%}) vs "
        f"{rec['reference_share']:.0%} in the reference; adjusted p {_fmt_p(rec['p_adjusted'])}"
    )


# --------------------------------------------------------------------------- choice table


def choice_table(
    reference: pd.DataFrame,
    current: pd.DataFrame,
    *,
    tests: Mapping[str, str] | None = None,
    columns: Sequence[str] | None = None,
) -> pd.DataFrame:
    """Which test each column gets and why (:func:`quality.drift_tests.choose_test`).

    Parameters
    ----------
    reference, current : the two samples.
    tests : per-column overrides.
    columns : the columns (default: those the frames share).

    Returns
    -------
    DataFrame
        ``column, type`` (``num``/``cat``), ``n_reference, n_current, k_reference``
        (distinct non-missing reference values), ``test, chosen_by`` (``auto`` or
        ``override``), ``why``.
    """
    overrides = dict(tests or {})
    cols = list(columns) if columns is not None else [c for c in reference if c in current]
    rows = []
    for col in cols:
        ref, cur = reference[col].dropna(), current[col].dropna()
        dtype = reference[col].dtype
        is_cat = pd.api.types.is_bool_dtype(dtype) or not pd.api.types.is_numeric_dtype(dtype)
        kind = "cat" if is_cat else "num"
        n = min(len(ref), len(cur))
        k = int(ref.nunique())
        if col in overrides:
            name, by = overrides[col], "override"
            why = f"override --test {col}={name}"
        else:
            name, by = choose_test(reference[col], n_current=len(cur)), "auto"
            size = f"n = min({len(ref)}, {len(cur)}) = {n} {'≤' if n <= 1000 else '>'} 1000"
            values = "categorical" if is_cat else ("numeric" if k > 5 else f"numeric, k = {k} ≤ 5")
            if not is_cat and k > 5:
                values += f", k = {k} > 5"
            elif is_cat:
                values += f", k = {k}"
            why = f"{values}; {size}"
        rows.append(
            {
                "column": col,
                "type": kind,
                "n_reference": len(ref),
                "n_current": len(cur),
                "k_reference": k,
                "test": name,
                "chosen_by": by,
                "why": why,
                "kind": DRIFT_TESTS[name].kind,
            }
        )
    columns_out = ["column", "type", "n_reference", "n_current", "k_reference", "test",
                   "kind", "chosen_by", "why"]  # fmt: skip
    return pd.DataFrame(rows, columns=columns_out)


# --------------------------------------------------------------------------- report


@dataclass
class DriftReport:
    """The drift report of a dataset: features, settings and the monitor's result.

    Attributes
    ----------
    dataset : the dataset's name (None: every image).
    version : the dataset version's name (None: every image).
    features : the feature frame (:func:`feature_frame`).
    result : :class:`DriftResult`.
    choice : :func:`choice_table` of the whole scope, reference vs current period.
    window, by, alpha, tests : the settings used.
    n_undated : images without a study date (in no window).
    """

    dataset: str | None
    version: str | None
    features: pd.DataFrame
    result: DriftResult
    choice: pd.DataFrame
    window: str
    by: str | None
    alpha: float
    tests: dict[str, str] = field(default_factory=dict)
    n_undated: int = 0

    @property
    def alerted(self) -> bool:
        return self.result.alerted

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready summary (``quality drift --json``)."""
        r = self.result
        timeline = r.timeline.copy()
        for col in ("window_start", "window_end"):
            timeline[col] = timeline[col].astype(str)
        alerts = r.alerts.copy()
        for col in ("window_start", "window_end"):
            alerts[col] = alerts[col].astype(str)
        kinds = alerts["kind"].value_counts().to_dict() if not alerts.empty else {}
        return {
            "dataset": self.dataset,
            "version": self.version,
            "n_images": len(self.features),
            "n_undated": self.n_undated,
            "reference": [str(d) for d in r.reference],
            "current": [str(d) for d in r.current],
            "window": self.window,
            "window_days": r.window_days,
            "by": self.by,
            "alpha": self.alpha,
            "test_overrides": self.tests,
            "scopes": r.scopes,
            "n_windows": r.n_windows,
            "alerted": self.alerted,
            "n_alerts": {
                "drift": int(kinds.get("drift", 0)),
                "missing_input": int(kinds.get("missing_input", 0)),
            },
            "alerts": _records(alerts),
            "timeline": _records(timeline),
            "tests": _records(self.choice),
        }


def _records(frame: pd.DataFrame) -> list[dict[str, Any]]:
    out = []
    for rec in frame.to_dict("records"):
        clean = {}
        for k, v in rec.items():
            if isinstance(v, float) and not math.isfinite(v):
                v = None
            elif isinstance(v, np.generic):
                v = v.item()
            clean[str(k)] = v
        out.append(clean)
    return out


def _dataset_names(session: Session, dataset: str | int | None) -> tuple[str | None, str | None]:
    if dataset is None:
        return None, None
    dataset_id = resolve_dataset(session, dataset)
    name = session.scalar(select(Dataset.name).where(Dataset.id == dataset_id))
    version_id = newest_version_id(session, dataset_id)
    version = None
    if version_id is not None:
        version = session.scalar(
            select(DatasetVersion.version).where(DatasetVersion.id == version_id)
        )
    return name, version


@_db_errors
def build_drift_report(
    session: Session,
    dataset: str | int | None,
    *,
    reference: tuple[Any, Any] | None = None,
    current: tuple[Any, Any] | None = None,
    window: str = "7D",
    by: str | None = "source",
    tests: Mapping[str, str] | None = None,
    alpha: float = 0.05,
    features: pd.DataFrame | None = None,
) -> DriftReport:
    """Drift of a dataset (newest version) or of every image, from the DB.

    Parameters
    ----------
    session : an open session.
    dataset : name or id; None for every image.
    reference, current : (start, end) dates, inclusive (None parts: the defaults of
        :class:`DriftMonitor`).
    window, by, tests, alpha : as in :class:`DriftMonitor`.
    features : a feature frame already read (skips the query).

    Raises
    ------
    DatasetNotFoundError
        Unknown dataset.
    DriftInputError
        No dated image in scope, an empty reference or current period, bad settings.
    """
    name, version = _dataset_names(session, dataset)
    if features is None:
        features = feature_frame(session, dataset)
    if features.empty:
        raise DriftInputError("dataset", f"{name or 'the DB'} has no images to monitor")
    monitor = DriftMonitor(reference=reference, window=window, by=by, tests=tests, alpha=alpha)
    monitor.fit(features)
    result = monitor.evaluate(features, current)
    whole = features.loc[_between(features, *result.current)]
    choice = choice_table(monitor.reference_frame_, whole, tests=tests, columns=monitor.columns_)
    return DriftReport(
        dataset=name,
        version=version,
        features=features,
        result=result,
        choice=choice,
        window=window,
        by=by,
        alpha=float(alpha),
        tests=dict(tests or {}),
        n_undated=int(features["study_date"].isna().sum()),
    )


DEFAULT_WINDOW = "7D"
DEFAULT_BY = "source"
DEFAULT_ALPHA = 0.05


def default_settings(
    features: pd.DataFrame,
) -> tuple[tuple[dt.date, dt.date], tuple[dt.date, dt.date], str, str | None, float] | None:
    """The Drift page's default settings for a feature frame, or None without dated images.

    ``(reference, current, window, by, alpha)``: the reference is the first
    :data:`DEFAULT_REFERENCE_DAYS` days of study dates (at most up to the last date), the
    current period the rest (the last day alone when the data is shorter), weekly windows,
    per source, Benjamini-Hochberg at 0.05. The page's controls start there, and
    :mod:`quality.db.aggregates` computes this report ahead.
    """
    if features.empty:
        return None
    dates = features["study_date"].dropna()
    if dates.empty:
        return None
    first, last = dates.min().date(), dates.max().date()
    ref_end = min(first + dt.timedelta(days=DEFAULT_REFERENCE_DAYS - 1), last)
    cur_start = min(ref_end + dt.timedelta(days=1), last)
    return (first, ref_end), (cur_start, last), DEFAULT_WINDOW, DEFAULT_BY, DEFAULT_ALPHA


def feature_values(report: DriftReport, feature: str, scope: str = ALL_SCOPE) -> pd.DataFrame:
    """A feature's values in the reference and the current period, for histograms.

    Returns
    -------
    DataFrame ``period`` (``reference`` / ``current``), ``value`` (missing values dropped).

    Raises
    ------
    DriftInputError
        A feature that is not in the report, or an unknown scope.
    """
    if feature not in report.features.columns or feature in ID_COLUMNS:
        raise DriftInputError("feature", f"no feature {feature!r}")
    if scope not in report.result.scopes:
        raise DriftInputError("scope", f"no scope {scope!r}; scopes: {report.result.scopes}")
    frame = report.features
    if scope != ALL_SCOPE and report.by is not None:
        frame = frame.loc[frame[report.by].astype(str) == scope]
    parts = []
    for period, (start, end) in (
        ("reference", report.result.reference),
        ("current", report.result.current),
    ):
        values = frame.loc[_between(frame, start, end), feature].dropna()
        parts.append(pd.DataFrame({"period": period, "value": values.to_numpy()}))
    return pd.concat(parts, ignore_index=True)


# --------------------------------------------------------------------------- monitoring report


def _hour_key() -> Any:
    """SQL: the two-digit hour of the header's StudyTime (``HHMMSS``), as text."""
    return func.substr(Image.header["StudyTime"].as_string(), 1, 2)


def _error_hour(session: Session) -> Any:
    """SQL: ``YYYY-MM-DD HH`` (UTC) of an ingest error's time, per dialect."""
    if session.get_bind().dialect.name == "postgresql":
        return func.to_char(func.timezone("UTC", IngestError.at), "YYYY-MM-DD HH24")
    return func.strftime("%Y-%m-%d %H", IngestError.at)


def _bucket(day: Any, hour: Any, since: dt.date, period: pd.Timedelta) -> pd.Timestamp:
    """Start of the report period that holds (day, hour)."""
    day = pd.Timestamp(day)
    if period < pd.Timedelta(days=1):
        h = int(hour) if isinstance(hour, str) and hour.isdigit() and int(hour) < 24 else 0
        step = int(period / pd.Timedelta(hours=1))
        return day + pd.Timedelta(hours=(h // step) * step)
    n = int(period / pd.Timedelta(days=1))
    offset = (day - pd.Timestamp(since)).days // n * n
    return pd.Timestamp(since) + pd.Timedelta(days=offset)


def _report_tables(
    session: Session,
    version_id: int | None,
    since: dt.date,
    until: dt.date,
    period: pd.Timedelta,
    mv_names: dict[int, str],
) -> dict[str, pd.DataFrame]:
    """The SQL aggregates of a monitoring report, bucketed into periods."""
    in_span = and_(Study.study_date >= since, Study.study_date <= until)
    hour = _hour_key().label("hour")
    source = func.coalesce(Source.name, "(unknown)").label("source")
    base = (
        select(Study.study_date.label("day"), hour, source, func.count(Image.id))
        .join(Series, Series.id == Image.series_id)
        .join(Study, Study.id == Series.study_id)
        .outerjoin(Source, Source.id == Study.source_id)
        .where(in_span)
    )
    if version_id is not None:
        base = base.join(DatasetItem, DatasetItem.image_id == Image.id).where(
            DatasetItem.version_id == version_id
        )
    counts = pd.DataFrame(
        session.execute(base.group_by(Study.study_date, hour, source)).all(),
        columns=["day", "hour", "source", "n"],
    )
    # Newest prediction per (image, version), then aggregated per day, hour and version.
    ranked = (
        select(
            Prediction.image_id,
            Prediction.model_version_id,
            Prediction.score,
            Prediction.label,
            func.row_number()
            .over(
                partition_by=(Prediction.image_id, Prediction.model_version_id),
                order_by=(Prediction.created_at.desc(), Prediction.id.desc()),
            )
            .label("rn"),
        )
        .where(Prediction.image_id.in_(_scope_image_ids(version_id)))
        .subquery("ranked")
    )
    joined = (
        select(
            Study.study_date.label("day"),
            _hour_key().label("hour"),
            ranked.c.model_version_id.label("mv"),
            ranked.c.score.label("score"),
            ranked.c.label.label("label"),
        )
        .select_from(ranked)
        .join(Image, Image.id == ranked.c.image_id)
        .join(Series, Series.id == Image.series_id)
        .join(Study, Study.id == Series.study_id)
        .where(ranked.c.rn == 1, in_span)
        .subquery("joined")
    )
    empty = case((and_(joined.c.score.is_(None), joined.c.label.is_(None)), 1), else_=0)
    preds = pd.DataFrame(
        session.execute(
            select(
                joined.c.day,
                joined.c.hour,
                joined.c.mv,
                func.count(literal(1)),
                func.sum(empty),
                func.avg(joined.c.score),
            ).group_by(joined.c.day, joined.c.hour, joined.c.mv)
        ).all(),
        columns=["day", "hour", "mv", "rows", "empty", "mean_score"],
    )
    whens = [(joined.c.score < (i + 1) / _HIST_BINS, i) for i in range(_HIST_BINS - 1)]
    score_bin = case(*whens, else_=_HIST_BINS - 1).label("bin")
    hist = pd.DataFrame(
        session.execute(
            select(joined.c.day, joined.c.hour, joined.c.mv, score_bin, func.count(literal(1)))
            .where(joined.c.score.is_not(None))
            .group_by(joined.c.day, joined.c.hour, joined.c.mv, score_bin)
        ).all(),
        columns=["day", "hour", "mv", "bin", "n"],
    )
    err_hour = _error_hour(session).label("hour")
    errors = pd.DataFrame(
        session.execute(
            select(IngestError.kind, err_hour, func.count(IngestError.id))
            .where(
                IngestError.at >= dt.datetime.combine(since, dt.time()),
                IngestError.at < dt.datetime.combine(until + dt.timedelta(days=1), dt.time()),
            )
            .group_by(IngestError.kind, err_hour)
        ).all(),
        columns=["kind", "hour", "n"],
    )
    for frame in (counts, preds, hist):
        frame["period"] = [
            _bucket(d, h, since, period) for d, h in zip(frame["day"], frame["hour"], strict=True)
        ]
    if not errors.empty:
        errors["period"] = [
            _bucket(pd.Timestamp(h[:10]), h[11:13], since, period) for h in errors["hour"]
        ]
    else:
        errors["period"] = pd.Series(dtype="datetime64[ns]")
    preds["mv"] = preds["mv"].map(mv_names)
    hist["mv"] = hist["mv"].map(mv_names)
    return {"counts": counts, "preds": preds, "hist": hist, "errors": errors}


def _mv_names(session: Session) -> dict[int, str]:
    rows = session.execute(
        select(ModelVersion.id, Model.name, ModelVersion.version).join(
            Model, Model.id == ModelVersion.model_id
        )
    ).all()
    several = len({r[1] for r in rows}) > 1
    return {int(i): (f"{m}/{v}" if several else str(v)) for i, m, v in rows}


@_db_errors
def monitoring_report(
    session: Session,
    dataset: str | int | None,
    *,
    period: str = "1D",
    since: dt.date | None = None,
    until: dt.date | None = None,
    format: Literal["md", "html"] = "md",
    reference: tuple[Any, Any] | None = None,
    by: str | None = "source",
    tests: Mapping[str, str] | None = None,
    alpha: float = 0.05,
) -> tuple[str, DriftResult]:
    """The monitoring report a cron job sends (three times a day: ``period="8h"``).

    Parameters
    ----------
    session : an open session.
    dataset : name or id; None for every image.
    period : report period, ``"8h"``, ``"1D"``, ``"7D"``, ... (hours must divide 24).
    since, until : the span (study dates, inclusive). Default: ``until`` is the last
        study date; ``since`` is ``until`` for sub-day periods, else six days before.
    format : ``"md"`` (Markdown) or ``"html"`` (one standalone file: inline CSS, no
        script, nothing fetched).
    reference, by, tests, alpha : for the alerts, which come from a
        :class:`DriftMonitor` with the whole span as its single window.

    Returns
    -------
    (text, result) : the report, and the :class:`DriftResult` of its alerts.

    Notes
    -----
    Images and predictions are placed by study date (and the header's StudyTime hour for
    sub-day periods), like the drift windows; ingest errors, which have no study, by the
    time of the ingest. Counts, prediction rows and histograms are SQL aggregates.
    """
    if format not in ("md", "html"):
        raise DriftInputError("--report", f"format must be md or html, not {format!r}")
    step = parse_period(period, option="--period", whole_days=False)
    name, version = _dataset_names(session, dataset)
    features = feature_frame(session, dataset)
    if features.empty or features["study_date"].dropna().empty:
        raise DriftInputError("dataset", f"{name or 'the DB'} has no dated images to report on")
    last = features["study_date"].max().date()
    until = until or last
    if since is None:
        since = until if step < pd.Timedelta(days=1) else until - dt.timedelta(days=6)
    if since > until:
        raise DriftInputError("--current", f"start {since} is after end {until}")
    dataset_id = None if dataset is None else resolve_dataset(session, dataset)
    version_id = None if dataset_id is None else newest_version_id(session, dataset_id)
    tables = _report_tables(session, version_id, since, until, step, _mv_names(session))
    span_days = (until - since).days + 1
    monitor = DriftMonitor(
        reference=reference, window=f"{span_days}D", by=by, tests=tests, alpha=alpha
    )
    result = monitor.fit(features).evaluate(features, (since, until))
    periods = _period_starts(since, until, step)
    context = {
        "title": f"Monitoring report: {name or 'all images'}"
        + (f" ({version})" if version else ""),
        "span": f"{since} – {until} (study dates), period {period}",
        "reference": f"{result.reference[0]} – {result.reference[1]}",
        "generated": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "images": _images_table(tables["counts"], periods, step),
        "predictions": _predictions_table(tables["counts"], tables["preds"], periods, step),
        "histogram": _histogram_table(tables["hist"], periods, step),
        "errors": _errors_table(tables["errors"], step),
        "alerts": _alerts_table(result.alerts),
        "status": _status(result.alerts),
    }
    text = _to_markdown(context) if format == "md" else _to_html(context)
    return text, result


def _period_starts(since: dt.date, until: dt.date, step: pd.Timedelta) -> list[pd.Timestamp]:
    out, t = [], pd.Timestamp(since)
    end = pd.Timestamp(until) + pd.Timedelta(days=1)
    while t < end:
        out.append(t)
        t = t + step
    return out


def _label(t: pd.Timestamp, step: pd.Timedelta) -> str:
    if step < pd.Timedelta(days=1):
        return f"{t:%Y-%m-%d %H:%M}"
    if step == pd.Timedelta(days=1):
        return f"{t:%Y-%m-%d}"
    return f"{t:%Y-%m-%d} +{int(step / pd.Timedelta(days=1))}d"


def _images_table(
    counts: pd.DataFrame, periods: list[pd.Timestamp], step: pd.Timedelta
) -> pd.DataFrame:
    if counts.empty:
        wide = pd.DataFrame(index=periods)
    else:
        wide = counts.pivot_table(
            index="period", columns="source", values="n", aggfunc="sum", fill_value=0
        )
        wide = wide.reindex(periods, fill_value=0)
    wide.insert(0, "images", wide.sum(axis=1).astype(int) if len(wide.columns) else 0)
    wide.index = [_label(t, step) for t in wide.index]
    wide.index.name = "period"
    wide.columns.name = None
    return wide.astype(int).reset_index()


def _predictions_table(
    counts: pd.DataFrame, preds: pd.DataFrame, periods: list[pd.Timestamp], step: pd.Timedelta
) -> pd.DataFrame:
    columns = ["period", "model_version", "images", "rows", "missing", "empty", "mean_score"]
    if preds.empty:
        return pd.DataFrame(columns=columns)
    images = counts.groupby("period")["n"].sum()
    rows = []
    for mv in sorted(preds["mv"].dropna().unique()):
        sub = preds.loc[preds["mv"] == mv]
        agg = (
            sub.assign(weighted=sub["mean_score"].astype(float) * (sub["rows"] - sub["empty"]))
            .groupby("period")
            .agg(rows=("rows", "sum"), empty=("empty", "sum"), weighted=("weighted", "sum"))
        )
        for t in periods:
            n_img = int(images.get(t, 0))
            r = agg.loc[t] if t in agg.index else None
            n_rows = int(r["rows"]) if r is not None else 0
            n_empty = int(r["empty"]) if r is not None else 0
            scored = n_rows - n_empty
            mean = float(r["weighted"]) / scored if r is not None and scored else math.nan
            rows.append([_label(t, step), mv, n_img, n_rows, max(n_img - n_rows, 0), n_empty, mean])
    return pd.DataFrame(rows, columns=columns)


def _histogram_table(
    hist: pd.DataFrame, periods: list[pd.Timestamp], step: pd.Timedelta
) -> pd.DataFrame:
    bins = [f"{i / _HIST_BINS:.1f}–{(i + 1) / _HIST_BINS:.1f}" for i in range(_HIST_BINS)]
    if hist.empty:
        return pd.DataFrame(columns=["period", "model_version", *bins])
    wide = hist.pivot_table(
        index=["period", "mv"], columns="bin", values="n", aggfunc="sum", fill_value=0
    )
    wide = wide.reindex(columns=range(_HIST_BINS), fill_value=0)
    wide.columns = bins
    wide = wide.reset_index()
    wide = wide.loc[wide["period"].isin(periods)].sort_values(["period", "mv"])
    wide["period"] = [_label(t, step) for t in wide["period"]]
    return wide.rename(columns={"mv": "model_version"}).reset_index(drop=True)


def _errors_table(errors: pd.DataFrame, step: pd.Timedelta) -> pd.DataFrame:
    if errors.empty:
        return pd.DataFrame(columns=["period", "kind", "errors"])
    out = (
        errors.groupby(["period", "kind"], as_index=False)["n"]
        .sum()
        .rename(columns={"n": "errors"})
    )
    out["period"] = [_label(t, step) for t in out["period"]]
    return out


def _alerts_table(alerts: pd.DataFrame) -> pd.DataFrame:
    out = alerts[["kind", "scope", "what", "detail"]].copy()
    return out.sort_values(["kind", "scope", "what"], ignore_index=True)


def _status(alerts: pd.DataFrame) -> str:
    if alerts.empty:
        return "OK: no alert"
    n_drift = int((alerts["kind"] == "drift").sum())
    n_missing = int((alerts["kind"] == "missing_input").sum())
    scopes = ", ".join(sorted(set(alerts["scope"])))
    return f"ALERT: {n_drift} drifted column(s), {n_missing} missing-input alert(s) in {scopes}"


def _md_table(frame: pd.DataFrame) -> str:
    if frame.empty:
        return "_none_\n"
    cols = [str(c) for c in frame.columns]
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    for rec in frame.itertuples(index=False):
        lines.append("| " + " | ".join(_cell(v).replace("|", "\\|") for v in rec) + " |")
    return "\n".join(lines) + "\n"


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return "" if not math.isfinite(value) else f"{value:.3g}"
    return str(value)


def _to_markdown(c: dict[str, Any]) -> str:
    parts = [
        f"# {c['title']}\n",
        f"Span {c['span']}; reference {c['reference']}. Generated {c['generated']}.\n",
        f"**Status: {c['status']}**\n",
        "## Images processed\n",
        _md_table(c["images"]),
        "## Predictions per model version\n",
        "`missing`: images without a prediction row; `empty`: a row with neither score nor label.\n",
        _md_table(c["predictions"]),
        "## Prediction histogram (score bins of 0.1)\n",
        _md_table(c["histogram"]),
        "## Ingest errors (by ingest time)\n",
        _md_table(c["errors"]),
        "## Alerts\n",
        _md_table(c["alerts"]),
    ]
    return "\n".join(parts)


_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2rem;color:#222}
table{border-collapse:collapse;margin:0.5rem 0 1.5rem;font-size:0.9rem}
th,td{border:1px solid #ccc;padding:0.25rem 0.5rem;text-align:right}
th{background:#f3f3f3} td.text{text-align:left}
.ok{color:#176f2c}.alert{color:#b00020}
.bar{display:inline-block;height:0.8rem;background:#4c78a8;vertical-align:middle}
"""


def _html_table(frame: pd.DataFrame, *, bars: Sequence[str] = ()) -> str:
    if frame.empty:
        return "<p><em>none</em></p>"
    peak = max([float(frame[b].max()) for b in bars] + [1.0]) if bars else 1.0
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in frame.columns)
    body = []
    for rec in frame.to_dict("records"):
        cells = []
        for col, value in rec.items():
            text = html.escape(_cell(value))
            if col in bars:
                width = 3.0 * float(value) / peak
                text = f'<span class="bar" style="width:{width:.2f}rem"></span> {text}'
            cls = ' class="text"' if isinstance(value, str) and col not in bars else ""
            cells.append(f"<td{cls}>{text}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _to_html(c: dict[str, Any]) -> str:
    status_cls = "ok" if c["status"].startswith("OK") else "alert"
    bins = [col for col in c["histogram"].columns if col not in ("period", "model_version")]
    return "\n".join(
        [
            "<!DOCTYPE html>",
            '<html lang="en"><head><meta charset="utf-8">',
            f"<title>{html.escape(c['title'])}</title><style>{_CSS}</style></head><body>",
            f"<h1>{html.escape(c['title'])}</h1>",
            f"<p>Span {html.escape(c['span'])}; reference {html.escape(c['reference'])}. "
            f"Generated {html.escape(c['generated'])}.</p>",
            f'<p class="{status_cls}"><strong>Status: {html.escape(c["status"])}</strong></p>',
            "<h2>Images processed</h2>",
            _html_table(c["images"]),
            "<h2>Predictions per model version</h2>",
            "<p><code>missing</code>: images without a prediction row; <code>empty</code>: a row "
            "with neither score nor label.</p>",
            _html_table(c["predictions"]),
            "<h2>Prediction histogram (score bins of 0.1)</h2>",
            _html_table(c["histogram"], bars=bins),
            "<h2>Ingest errors (by ingest time)</h2>",
            _html_table(c["errors"]),
            "<h2>Alerts</h2>",
            _html_table(c["alerts"]),
            "</body></html>",
        ]
    )
