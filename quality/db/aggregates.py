"""Materialised results: the pages' heavy builders, computed ahead by the writers.

At the large scale (10^5 studies, 10^6 annotations) some page builders take tens of seconds:
the doctor report and the agreement summary (Dawid-Skene and bootstrap intervals over every
annotation of a task), the dataset card (Krippendorff's alpha with a bootstrap interval), the
EDA profile, the drift report, the model comparison, the rules suggestion. Their results are
stored in ``materialized_results`` by :func:`refresh`, which the writers call at their end
(``quality ingest``, ``quality score``, ``quality demo``), and read back by :func:`get`.

Which result (``kind``) for which page: :data:`KINDS` lists them with the builder each wraps.

Staleness
---------
A result stored by another version of this code (:data:`CODE_VERSION`, part of the stamp) is
stale. Beyond that, every write to a tracked table (:data:`quality.db.schema.TRACKED_TABLES`) bumps that table's
counter in ``data_changes``, through a trigger (migration 0005): ``FOR EACH STATEMENT`` on
PostgreSQL, ``FOR EACH ROW`` on SQLite. The counter moves inside the writing transaction, so
a reader sees the new version exactly when it sees the new rows. A stored result keeps the
counters of its input tables (``stamp``) as they were when its build started, in the same
transaction. :func:`get` uses a stored result **only while the counters of its inputs are
unchanged**; otherwise (a writer that does not refresh, a refresh that has not run yet, a DB
behind the schema, a key that was never stored: non-default page settings) it computes the
result live with the same builder. So a read is never stale: at worst it is slow. The pages
say when a result was computed ahead (:func:`built_at`).

Results that depend on the clock (the card's ``age_days`` and freshness) are brought to the
reading time when loaded.

Payloads
--------
Results are pickled (dataclasses of DataFrames round-trip exactly) and zlib-compressed. They
are loaded with a restricted unpickler that builds only the classes of :data:`_ALLOWED` (pandas, numpy and
datetime reconstructors, and the result dataclasses of this package): a payload that names
anything else is refused and the result is computed live, so a row written by someone else
into the table cannot run code in the app.
"""

from __future__ import annotations

import contextvars
import dataclasses
import datetime as dt
import io
import json
import logging
import pickle
import time
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import delete, insert, select
from sqlalchemy.exc import OperationalError, ProgrammingError
from sqlalchemy.orm import Session

from quality import __version__
from quality.db.schema import TRACKED_TABLES, DataChange, MaterializedResult

__all__ = [
    "DEFAULT_IQ_METRIC",
    "DEFAULT_RESAMPLES",
    "KINDS",
    "MODELS_N_BOOT",
    "RefreshResult",
    "Spec",
    "built_at",
    "get",
    "lookup",
    "refresh",
    "refresh_after_write",
    "stamp",
    "stored_keys",
]

log = logging.getLogger(__name__)

DEFAULT_RESAMPLES = 200
"""Bootstrap resamples of the Doctors and Agreement pages (and of their stored results)."""
MODELS_N_BOOT = 1000
"""Bootstrap resamples of the Models page's comparison."""
DEFAULT_IQ_METRIC = "quality_score"
"""The metric the Image quality page's distributions open on."""
_MISSING = object()
RESULTS_VERSION = 2
"""Bump when a builder's output changes (a new flag rule, a new column): stored results of
an older code version are then stale, as after a write."""
CODE_VERSION = f"{__version__}/{RESULTS_VERSION}"
"""Part of every stamp: results stored by another release are recomputed, never shown."""


# --------------------------------------------------------------------------- registry


@dataclass(frozen=True)
class Spec:
    """One kind of materialised result.

    Attributes
    ----------
    kind : its name (``doctor_report``).
    tables : the tracked tables it is computed from.
    build : ``build(session, *key)``: the builder the page calls.
    keys : ``keys(session)``: the keys :func:`refresh` computes ahead (the pages' defaults).
    on_load : applied to a stored result when it is read (clock-dependent fields).
    """

    kind: str
    tables: tuple[str, ...]
    build: Callable[..., Any]
    keys: Callable[[Session], list[tuple[Any, ...]]]
    on_load: Callable[[Any], Any] | None = None


_IMAGE_TABLES = ("sources", "studies", "series", "images", "datasets", "dataset_versions")
_LABEL_TABLES = ("annotators", "labeling_tasks", "annotations", "reference_labels")


def _tasks(session: Session) -> list[tuple[Any, ...]]:
    from quality.db import queries

    tasks = queries.list_tasks(session)
    ok = tasks[(tasks["n_annotations"] > 0) & (tasks["n_annotators"] >= 2)]
    return [(int(i), DEFAULT_RESAMPLES) for i in ok["id"]]


def _datasets(session: Session) -> list[int]:
    from quality.db.schema import Dataset

    return [int(i) for i in session.scalars(select(Dataset.id).order_by(Dataset.id))]


def _build_query(name: str) -> Callable[..., Any]:
    """A function of :mod:`quality.db.queries` by name (imported when first called)."""

    def build(session: Session, *key: Any) -> Any:
        from quality.db import queries

        return getattr(queries, name)(session, *key)

    build.__name__ = f"_build_{name}"
    return build


def _overview_now(df: Any) -> Any:
    """The overview as if computed now: ``age_days`` and ``freshness`` from ``last_update``."""
    from quality.db.queries import freshness_status

    now = dt.datetime.now(dt.UTC)
    out = df.copy()
    ages = [
        float("nan") if last is None or last != last else (now - last).total_seconds() / 86400.0
        for last in out["last_update"]
    ]
    out["age_days"] = ages
    out["freshness"] = [freshness_status(a) for a in ages]
    return out


def _nothing(session: Session) -> list[tuple[Any, ...]]:
    return [()]


_PREPARED: contextvars.ContextVar[dict[int, Any] | None] = contextvars.ContextVar(
    "_PREPARED", default=None
)
"""Tasks prepared during one :func:`refresh` (its inputs do not change within it): the doctor
report and the agreement summary of a task share the loading and the Dawid-Skene fit."""


_PREPARED_LABELS = 3_000_000


def _prepared(session: Session, task_id: int) -> Any:
    memo = _PREPARED.get()
    if memo is None:
        return None  # outside a refresh: the builder prepares the task itself
    if task_id not in memo:
        from quality.agreement.summary import prepare_task

        memo[task_id] = prepare_task(session, task_id)
        # Bounded: the oldest prepared tasks go once they hold more than _PREPARED_LABELS.
        while len(memo) > 1 and sum(len(p.labels) for p in memo.values()) > _PREPARED_LABELS:
            memo.pop(next(iter(memo)))
    return memo[task_id]


def _build_doctor_report(session: Session, task_id: int, n_resamples: int) -> Any:
    from quality.doctors import build_doctor_report

    return build_doctor_report(
        session, task_id, n_resamples=n_resamples, prep=_prepared(session, task_id)
    )


def _build_agreement(session: Session, task_id: int, n_resamples: int) -> Any:
    from quality.agreement.summary import build_agreement_summary

    return build_agreement_summary(
        session, task_id, n_resamples=n_resamples, prep=_prepared(session, task_id)
    )


def _build_card(session: Session, dataset_id: int, version: str | None) -> Any:
    from quality.card import build_card

    return build_card(session, dataset_id, version)


def _card_keys(session: Session) -> list[tuple[Any, ...]]:
    """Every dataset at the version the card page opens on: its newest (None without one)."""
    from quality.snapshot import list_versions

    keys: list[tuple[Any, ...]] = []
    for d in _datasets(session):
        versions = list_versions(session, d)
        keys.append((d, str(versions["version"].iloc[0]) if len(versions) else None))
    return keys


def _card_now(card: Any) -> Any:
    """The card as if built now: ``generated_at``, ``age_days`` and ``freshness``."""
    from quality.db.queries import freshness_status

    now = dt.datetime.now(dt.UTC)
    age = None
    if card.last_update is not None:
        age = (now - card.last_update).total_seconds() / 86400.0
    return dataclasses.replace(
        card, generated_at=now, age_days=age, freshness=freshness_status(age)
    )


def _build_eda(session: Session, dataset_id: int | None) -> Any:
    from quality import eda

    return eda.profile(session, dataset_id)


def _scopes(session: Session) -> list[tuple[Any, ...]]:
    """Every dataset, and all images (the sidebar's choices)."""
    return [*((d,) for d in _datasets(session)), (None,)]


def _build_features(session: Session, dataset_id: int | None) -> Any:
    from quality.drift import feature_frame

    return feature_frame(session, dataset_id)


def _build_drift(
    session: Session,
    dataset_id: int | None,
    reference: tuple[dt.date, dt.date],
    current: tuple[dt.date, dt.date],
    window: str,
    by: str | None,
    alpha: float,
) -> Any:
    from quality.drift import build_drift_report

    frame = get(session, "drift_features", dataset_id)
    return build_drift_report(
        session,
        dataset_id,
        reference=tuple(reference),
        current=tuple(current),
        window=window,
        by=by,
        alpha=alpha,
        features=frame,
    )


def _drift_keys(session: Session) -> list[tuple[Any, ...]]:
    from quality.drift import default_settings

    keys = []
    for (dataset_id,) in _scopes(session):
        frame = get(session, "drift_features", dataset_id)
        settings = default_settings(frame)
        if settings is not None:
            keys.append((dataset_id, *settings))
    return keys


def _build_comparison(
    session: Session,
    baseline: int,
    candidate: int,
    dataset_id: int | None,
    truth: str,
    n_boot: int,
    seed: int,
) -> Any:
    from quality import models

    return models.compare_versions(
        session, baseline, candidate, dataset_id=dataset_id, truth=truth, n_boot=n_boot, seed=seed
    )


def _comparison_keys(session: Session) -> list[tuple[Any, ...]]:
    from quality import models

    keys = []
    for (dataset_id,) in _scopes(session):
        pair = models.default_pair(models.list_model_versions(session, dataset_id))
        if pair is not None:
            keys.append((int(pair[0]), int(pair[1]), dataset_id, "consensus", MODELS_N_BOOT, 0))
    return keys


def _build_suggestion(session: Session, dataset_id: int, version_id: int) -> Any:
    from quality import checks

    return checks.suggest_rules(session, dataset_id, version_id)


def _suggestion_keys(session: Session) -> list[tuple[Any, ...]]:
    from quality.db.queries import newest_version_id

    keys = []
    for d in _datasets(session):
        vid = newest_version_id(session, d)
        if vid is not None:
            keys.append((d, vid))
    return keys


def _build_iq_report(session: Session, dataset_id: int | None, version: str | None) -> Any:
    from quality.imaging import report

    return report.build_image_quality_report(session, dataset_id=dataset_id, scorer_version=version)


def _build_metric_values(
    session: Session, metric: str, dataset_id: int | None, version: str
) -> Any:
    from quality.imaging import report

    return report.metric_values(session, metric, dataset_id=dataset_id, scorer_version=version)


def _build_projection(
    session: Session, dataset_id: int | None, version: str, emb_dir: str | None
) -> Any:
    from quality.imaging import report

    return report.embedding_projection(
        session, dataset_id=dataset_id, scorer_version=version, embeddings_dir=emb_dir
    )


def _scored_scopes(session: Session) -> list[tuple[int | None, str]]:
    """``(dataset, newest scorer version)`` of every scope with scores."""
    from quality.imaging import report

    out = []
    for (dataset_id,) in _scopes(session):
        version = report.newest_scorer_version(session, dataset_id=dataset_id)
        if version is not None:
            out.append((dataset_id, version))
    return out


def _iq_report_keys(session: Session) -> list[tuple[Any, ...]]:
    return [(d, None) for d, _v in _scored_scopes(session)]


def _metric_keys(session: Session) -> list[tuple[Any, ...]]:
    return [(DEFAULT_IQ_METRIC, d, v) for d, v in _scored_scopes(session)]


def _projection_keys(session: Session) -> list[tuple[Any, ...]]:
    from quality.imaging import report

    url = session.get_bind().engine.url.render_as_string(hide_password=True)
    emb_dir = report.default_embeddings_dir(url)
    return [(d, v, emb_dir) for d, v in _scored_scopes(session)]


def _build_exact_scans(session: Session, dataset_id: int | None) -> Any:
    """Exact duplicates (SQL, no image decoded) and the leakage they and the patients show:
    the Image quality page's duplicates section for scopes too large to scan on a visit."""
    import pandas as pd

    from quality.imaging import duplicates as dup
    from quality.imaging import leakage as leak

    vid = dup.resolve_version(session, dataset_id=dataset_id)
    exact = dup.exact_duplicates(session, version_id=vid)
    report = dup.DuplicateReport(
        vid,
        exact,
        pd.DataFrame(columns=dup.NEAR_COLUMNS),
        pd.DataFrame(columns=dup.SKIPPED_COLUMNS),
        pd.DataFrame(columns=dup.ISSUE_COLUMNS),
    )
    if vid is None:
        return report, None
    clusters = exact[["cluster_id", "image_id", "sop_uid"]].assign(kind="exact")
    return report, leak.leakage_report(session, vid, duplicates=clusters)


def _build_worklist(
    session: Session,
    dataset_id: int,
    version_id: int,
    strategy: str,
    budget: int,
    task_id: int,
    pool: str,
    seed: int,
    emb_dir: str | None,
) -> Any:
    from quality import models

    return models.build_worklist(
        session,
        dataset_id,
        version_id,
        strategy=strategy,  # type: ignore[arg-type]
        budget=budget,
        task_id=task_id,
        pool=pool,  # type: ignore[arg-type]
        embeddings_dir=emb_dir,
        seed=seed,
    )


def _worklist_keys(session: Session) -> list[tuple[Any, ...]]:
    from quality import models
    from quality.imaging import report

    url = session.get_bind().engine.url.render_as_string(hide_password=True)
    emb_dir = report.default_embeddings_dir(url)
    keys = []
    for dataset_id in _datasets(session):
        defaults = models.worklist_defaults(session, dataset_id)
        if defaults is not None:
            keys.append((dataset_id, *defaults, emb_dir))
    return keys


_EVERYTHING = TRACKED_TABLES
_IQ_TABLES = (*_IMAGE_TABLES, "dataset_items", "image_quality")

_STORE_TABLES = ("datasets", "sources", "studies", "series", "images", "ingest_errors")
_SCOPE_TABLES = ("sources", "studies", "series", "images", "dataset_versions", "dataset_items")

KINDS: dict[str, Spec] = {
    spec.kind: spec
    for spec in (
        # Counts of the sidebar, the Overview and the Browser's filters.
        Spec("store_totals", _STORE_TABLES, _build_query("store_totals"), _nothing),
        Spec(
            "dataset_overview",
            (
                *_IMAGE_TABLES,
                "dataset_items",
                "labeling_tasks",
                "annotations",
                "predictions",
            ),
            _build_query("dataset_overview"),
            _nothing,
            on_load=_overview_now,
        ),
        Spec("images_by_source", _SCOPE_TABLES, _build_query("images_by_source"), _scopes),
        Spec("filter_options", _SCOPE_TABLES, _build_query("filter_options"), _scopes),
        Spec(
            "list_tasks",
            ("datasets", "labeling_tasks", "annotations"),
            _build_query("list_tasks"),
            _scopes,
        ),
        Spec(
            "doctor_report",
            (*_LABEL_TABLES, "images"),
            _build_doctor_report,
            _tasks,
        ),
        Spec(
            "agreement_summary",
            (*_LABEL_TABLES, "images"),
            _build_agreement,
            _tasks,
        ),
        Spec("card", _EVERYTHING, _build_card, _card_keys, on_load=_card_now),
        Spec(
            "eda_profile",
            (
                *_IMAGE_TABLES,
                "dataset_items",
                "version_labels",
                *_LABEL_TABLES,
                "models",
                "model_versions",
                "predictions",
            ),
            _build_eda,
            _scopes,
        ),
        Spec(
            "drift_features",
            (
                *_IMAGE_TABLES,
                "dataset_items",
                *_LABEL_TABLES,
                "models",
                "model_versions",
                "predictions",
                "image_quality",
            ),
            _build_features,
            _scopes,
        ),
        Spec(
            "drift_report",
            (
                *_IMAGE_TABLES,
                "dataset_items",
                *_LABEL_TABLES,
                "models",
                "model_versions",
                "predictions",
                "image_quality",
            ),
            _build_drift,
            _drift_keys,
        ),
        Spec(
            "model_comparison",
            (
                *_IMAGE_TABLES,
                "dataset_items",
                *_LABEL_TABLES,
                "models",
                "model_versions",
                "predictions",
                "image_quality",
            ),
            _build_comparison,
            _comparison_keys,
        ),
        Spec("rules_suggestion", _EVERYTHING, _build_suggestion, _suggestion_keys),
        Spec("iq_report", _IQ_TABLES, _build_iq_report, _iq_report_keys),
        Spec("iq_metric_values", _IQ_TABLES, _build_metric_values, _metric_keys),
        Spec("iq_projection", _IQ_TABLES, _build_projection, _projection_keys),
        Spec(
            "worklist",
            (
                *_IQ_TABLES,
                *_LABEL_TABLES,
                "models",
                "model_versions",
                "predictions",
            ),
            _build_worklist,
            _worklist_keys,
        ),
        Spec(
            "duplicate_scan_exact",
            (*_SCOPE_TABLES, "datasets"),
            _build_exact_scans,
            _scopes,
        ),
    )
}
"""Every kind of materialised result, by name (the order is the order of :func:`refresh`)."""


# --------------------------------------------------------------------------- keys & stamps


def _json_default(value: Any) -> Any:
    if isinstance(value, dt.date):
        return value.isoformat()
    if hasattr(value, "item"):  # numpy scalars
        return value.item()
    raise TypeError(f"cannot key a result by {type(value).__name__}")


def _key(key: Iterable[Any]) -> str:
    return json.dumps(list(key), default=_json_default, separators=(",", ":"))


def _guarded(session: Session, fn: Callable[[], Any]) -> Any:
    """``fn()``, or :data:`_MISSING` when the tables of this module are not there (a DB
    behind the schema). On PostgreSQL inside a savepoint: a failed statement must not abort
    the caller's transaction."""
    try:
        if session.get_bind().dialect.name == "postgresql":
            with session.begin_nested():
                return fn()
        return fn()
    except (OperationalError, ProgrammingError) as exc:
        log.info("materialised results unavailable: %s", str(exc.orig).strip().splitlines()[0])
        return _MISSING


def stamp(session: Session, tables: Iterable[str]) -> str | None:
    """The change counters of ``tables`` and :data:`CODE_VERSION` as a JSON text, or None
    when one of the tables is not tracked."""
    names = sorted(set(tables))

    def read() -> dict[str, int]:
        rows = session.execute(
            select(DataChange.name, DataChange.version).where(DataChange.name.in_(names))
        ).all()
        return {str(n): int(v) for n, v in rows}

    versions = _guarded(session, read)
    if versions is _MISSING or set(versions) != set(names):
        return None
    return json.dumps({**versions, "~code": CODE_VERSION}, sort_keys=True, separators=(",", ":"))


# --------------------------------------------------------------------------- payloads

_ALLOWED_PREFIXES = ("quality.",)
_ALLOWED: frozenset[tuple[str, str]] = frozenset(
    {
        ("builtins", "bool"),
        ("builtins", "bytearray"),
        ("builtins", "complex"),
        ("builtins", "dict"),
        ("builtins", "float"),
        ("builtins", "frozenset"),
        ("builtins", "int"),
        ("builtins", "list"),
        ("builtins", "object"),
        ("builtins", "range"),
        ("builtins", "set"),
        ("builtins", "slice"),
        ("builtins", "str"),
        ("builtins", "tuple"),
        ("copyreg", "_reconstructor"),
        ("collections", "OrderedDict"),
        ("collections", "defaultdict"),
        ("datetime", "date"),
        ("datetime", "datetime"),
        ("datetime", "time"),
        ("datetime", "timedelta"),
        ("datetime", "timezone"),
        ("zoneinfo", "ZoneInfo"),
        ("decimal", "Decimal"),
        ("numpy", "dtype"),
        ("numpy", "ndarray"),
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "scalar"),
        ("numpy.core.numeric", "_frombuffer"),
        ("numpy._core.numeric", "_frombuffer"),
        ("numpy.dtypes", "BoolDType"),
        ("numpy.dtypes", "BytesDType"),
        ("numpy.dtypes", "DateTime64DType"),
        ("numpy.dtypes", "Float16DType"),
        ("numpy.dtypes", "Float32DType"),
        ("numpy.dtypes", "Float64DType"),
        ("numpy.dtypes", "Int8DType"),
        ("numpy.dtypes", "Int16DType"),
        ("numpy.dtypes", "Int32DType"),
        ("numpy.dtypes", "Int64DType"),
        ("numpy.dtypes", "ObjectDType"),
        ("numpy.dtypes", "StrDType"),
        ("numpy.dtypes", "TimeDelta64DType"),
        ("numpy.dtypes", "UInt8DType"),
        ("numpy.dtypes", "UInt16DType"),
        ("numpy.dtypes", "UInt32DType"),
        ("numpy.dtypes", "UInt64DType"),
        ("numpy.random._pickle", "__bit_generator_ctor"),
        ("numpy.random._pickle", "__generator_ctor"),
        ("pandas._libs.arrays", "__pyx_unpickle_NDArrayBacked"),
        ("pandas._libs.internals", "_unpickle_block"),
        ("pandas._libs.tslibs.nattype", "__nat_unpickle"),
        ("pandas._libs.tslibs.timestamps", "_unpickle_timestamp"),
        ("pandas._libs.tslibs.timedeltas", "_timedelta_unpickle"),
        ("pandas._libs.tslibs.offsets", "Day"),
        ("pandas._libs.tslibs.offsets", "Week"),
        ("pandas._libs.missing", "NA"),
        ("pandas._libs.missing", "NAType"),
        ("pandas.core.arrays.arrow.array", "ArrowExtensionArray"),
        ("pandas.core.arrays.boolean", "BooleanArray"),
        ("pandas.core.arrays.categorical", "Categorical"),
        ("pandas.core.arrays.datetimes", "DatetimeArray"),
        ("pandas.core.arrays.floating", "FloatingArray"),
        ("pandas.core.arrays.integer", "IntegerArray"),
        ("pandas.core.arrays.string_", "StringArray"),
        ("pandas.core.arrays.string_arrow", "ArrowStringArray"),
        ("pandas.core.arrays.timedeltas", "TimedeltaArray"),
        ("pandas.core.dtypes.dtypes", "CategoricalDtype"),
        ("pandas.core.dtypes.dtypes", "DatetimeTZDtype"),
        ("pandas.core.arrays.string_", "StringDtype"),
        ("pandas.core.arrays.floating", "Float64Dtype"),
        ("pandas.core.arrays.integer", "Int64Dtype"),
        ("pandas.core.arrays.integer", "Int32Dtype"),
        ("pandas.core.arrays.boolean", "BooleanDtype"),
        ("pandas.core.frame", "DataFrame"),
        ("pandas.core.series", "Series"),
        ("pandas.core.indexes.base", "Index"),
        ("pandas.core.indexes.base", "_new_Index"),
        ("pandas.core.indexes.range", "RangeIndex"),
        ("pandas.core.indexes.datetimes", "DatetimeIndex"),
        ("pandas.core.indexes.datetimes", "_new_DatetimeIndex"),
        ("pandas.core.indexes.multi", "MultiIndex"),
        ("pandas.core.indexes.category", "CategoricalIndex"),
        ("pandas.core.indexes.interval", "IntervalIndex"),
        ("pandas.core.internals.managers", "BlockManager"),
        ("pandas.core.internals.managers", "SingleBlockManager"),
        ("pandas.core.internals.blocks", "new_block"),
        ("pandas._libs.tslibs.timezones", "tz_standardize"),
        ("pytz", "_UTC"),
        ("pytz", "_p"),
        # pandas 3 pickles under its public names, and strings as pyarrow arrays.
        *(
            ("pandas", name)
            for name in (
                "BooleanDtype",
                "Categorical",
                "CategoricalDtype",
                "CategoricalIndex",
                "DataFrame",
                "DatetimeIndex",
                "DatetimeTZDtype",
                "Float64Dtype",
                "Index",
                "Int64Dtype",
                "MultiIndex",
                "NA",
                "NaT",
                "RangeIndex",
                "Series",
                "StringDtype",
                "Timedelta",
                "Timestamp",
            )
        ),
        *(
            ("pandas.arrays", name)
            for name in (
                "ArrowExtensionArray",
                "ArrowStringArray",
                "BooleanArray",
                "DatetimeArray",
                "FloatingArray",
                "IntegerArray",
                "StringArray",
                "TimedeltaArray",
            )
        ),
        ("pyarrow.lib", "_restore_array"),
        ("pyarrow.lib", "chunked_array"),
        ("pyarrow.lib", "py_buffer"),
        ("pyarrow.lib", "type_for_alias"),
    }
)


class _SafeUnpickler(pickle.Unpickler):
    """Builds only the classes of :data:`_ALLOWED` (and this package's dataclasses)."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) == ("builtins", "getattr"):
            return _restricted_getattr  # how ZoneInfo pickles: getattr(ZoneInfo, "_unpickle")
        if (module, name) in _ALLOWED:
            return super().find_class(module, name)
        if module.startswith(_ALLOWED_PREFIXES):
            found = super().find_class(module, name)
            if isinstance(found, type) and (
                dataclasses.is_dataclass(found) or _is_plain_enum_or_tuple(found)
            ):
                return found
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}")


def _restricted_getattr(obj: Any, name: str) -> Any:
    import zoneinfo

    if obj is zoneinfo.ZoneInfo and name == "_unpickle":
        return zoneinfo.ZoneInfo._unpickle  # type: ignore[attr-defined]
    raise pickle.UnpicklingError(f"refusing to load getattr({obj!r}, {name!r})")


def _is_plain_enum_or_tuple(cls: type) -> bool:
    import enum

    return issubclass(cls, enum.Enum) or (issubclass(cls, tuple) and hasattr(cls, "_fields"))


def _dumps(obj: Any) -> bytes:
    # zlib level 1: a 48 MB doctor report becomes 12.6 MB in 0.5 s and inflates in 0.2 s;
    # the page reads 4x fewer bytes (PostgreSQL stores the column uncompressed, migration 0005).
    return zlib.compress(pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL), 1)


def _loads(payload: bytes) -> Any:
    return _SafeUnpickler(io.BytesIO(zlib.decompress(payload))).load()


# --------------------------------------------------------------------------- reading


def lookup(session: Session, kind: str, *key: Any) -> tuple[bool, Any]:
    """``(True, result)`` when a current stored result of ``kind`` for ``key`` exists (and
    loads), else ``(False, None)``."""
    spec = KINDS[kind]
    current = stamp(session, spec.tables)
    if current is None:
        return False, None
    k = _key(key)
    row = _guarded(
        session,
        lambda: session.execute(
            select(MaterializedResult.id, MaterializedResult.stamp).where(
                MaterializedResult.kind == kind, MaterializedResult.key == k
            )
        ).first(),
    )
    if row is _MISSING or row is None or row[1] != current:
        return False, None
    payload = session.scalar(
        select(MaterializedResult.payload).where(MaterializedResult.id == row[0])
    )
    if payload is None:
        return False, None
    try:
        value = _loads(bytes(payload))
    except Exception as exc:  # a payload this code cannot load: compute live instead
        log.warning("materialised %s %s not loaded: %s", kind, k, exc)
        return False, None
    return True, (spec.on_load(value) if spec.on_load else value)


def get(session: Session, kind: str, *key: Any, build: Callable[[], Any] | None = None) -> Any:
    """The result of ``kind`` for ``key``: the stored one while its inputs are unchanged,
    else built live (see the module docs).

    Parameters
    ----------
    session : an open session.
    kind : a name of :data:`KINDS`.
    *key : the builder's arguments after the session.
    build : how to build it live instead of ``KINDS[kind].build(session, *key)`` (a caller
        that already holds an input, such as the drift feature frame); it must give the
        same result.
    """
    found, value = lookup(session, kind, *key)
    if found:
        return value
    return build() if build is not None else KINDS[kind].build(session, *key)


def built_at(session: Session, kind: str, *key: Any) -> dt.datetime | None:
    """When the stored result of ``kind`` for ``key`` was built, if it is current."""
    spec = KINDS[kind]
    current = stamp(session, spec.tables)
    if current is None:
        return None
    k = _key(key)
    row = _guarded(
        session,
        lambda: session.execute(
            select(MaterializedResult.built_at, MaterializedResult.stamp).where(
                MaterializedResult.kind == kind, MaterializedResult.key == k
            )
        ).first(),
    )
    if row is _MISSING or row is None or row[1] != current:
        return None
    return row[0]


def stored_keys(session: Session, kind: str) -> dict[str, str]:
    """``key → stamp`` of the stored results of ``kind`` (current or not)."""
    rows = _guarded(
        session,
        lambda: session.execute(
            select(MaterializedResult.key, MaterializedResult.stamp).where(
                MaterializedResult.kind == kind
            )
        ).all(),
    )
    return {} if rows is _MISSING else {str(k): str(s) for k, s in rows}


# --------------------------------------------------------------------------- refreshing


@dataclass(frozen=True)
class RefreshResult:
    """What :func:`refresh` did for one result."""

    kind: str
    key: str
    status: str  # "built", "current", "skipped" (the builder refused the input)
    seconds: float
    n_bytes: int = 0
    message: str = ""


def refresh(
    session: Session,
    kinds: Iterable[str] | None = None,
    *,
    progress: Callable[[RefreshResult], None] | None = None,
) -> list[RefreshResult]:
    """Compute ahead, and store, every result of :data:`KINDS` whose inputs changed.

    For each kind, the keys are the pages' defaults (every task, every dataset and all
    images, the default drift periods and model pair). A result whose stored stamp equals
    its inputs' current counters is left alone; results of keys that no longer exist are
    deleted. A builder that refuses its input (a :class:`~quality.errors.QualityError` or
    ``ValueError``: a task with one annotator, a dataset without dates) is skipped: the page
    says the same thing live. The session is flushed, not committed: the caller commits.

    Does nothing (returns ``[]``) on a DB without the tables of migration 0005.
    """
    token = _PREPARED.set({})
    try:
        return _refresh(session, kinds, progress)
    finally:
        _PREPARED.reset(token)


def _refresh(
    session: Session,
    kinds: Iterable[str] | None,
    progress: Callable[[RefreshResult], None] | None,
) -> list[RefreshResult]:
    from quality.errors import QualityError

    done: list[RefreshResult] = []
    wanted = list(KINDS) if kinds is None else [k for k in KINDS if k in set(kinds)]
    for kind in wanted:
        spec = KINDS[kind]
        current = stamp(session, spec.tables)
        if current is None:
            return done
        existing = stored_keys(session, kind)
        try:
            keys = list(spec.keys(session))
        except (QualityError, ValueError) as exc:
            log.info("materialised %s: no keys (%s)", kind, exc)
            keys = []
        seen: set[str] = set()
        for key in keys:
            k = _key(key)
            seen.add(k)
            if existing.get(k) == current:
                result = RefreshResult(kind, k, "current", 0.0)
            else:
                result = _store(session, spec, k, key, current)
            done.append(result)
            if progress is not None:
                progress(result)
        obsolete = set(existing) - seen
        if obsolete:
            session.execute(
                delete(MaterializedResult).where(
                    MaterializedResult.kind == kind, MaterializedResult.key.in_(sorted(obsolete))
                )
            )
    session.flush()
    return done


def _store(
    session: Session, spec: Spec, k: str, key: tuple[Any, ...], current: str
) -> RefreshResult:
    from quality.errors import QualityError

    t0 = time.perf_counter()
    try:
        value = spec.build(session, *key)
    except (QualityError, ValueError) as exc:
        session.execute(
            delete(MaterializedResult).where(
                MaterializedResult.kind == spec.kind, MaterializedResult.key == k
            )
        )
        return RefreshResult(spec.kind, k, "skipped", time.perf_counter() - t0, 0, str(exc))
    payload = _dumps(value)
    seconds = time.perf_counter() - t0
    session.execute(
        delete(MaterializedResult).where(
            MaterializedResult.kind == spec.kind, MaterializedResult.key == k
        )
    )
    session.execute(
        insert(MaterializedResult).values(
            kind=spec.kind,
            key=k,
            stamp=current,
            build_s=seconds,
            payload=payload,
            n_bytes=len(payload),
        )
    )
    return RefreshResult(spec.kind, k, "built", seconds, len(payload))


def refresh_after_write(session: Session) -> list[RefreshResult]:
    """:func:`refresh` and commit, at the end of a writer (``ingest``, ``score``).

    The writer's own rows are committed already; a refresh that fails is rolled back and
    logged, and the write stands: the pages then compute those results live until the next
    refresh.
    """
    try:
        done = refresh(session)
        session.commit()
    except Exception:  # any builder's failure: never undo or fail the write before it
        session.rollback()
        log.warning("materialised results not refreshed", exc_info=True)
        return []
    return done
