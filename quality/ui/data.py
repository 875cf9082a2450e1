"""Cached data access for the pages, and the guard that keeps tracebacks off the screen.

The engine is a :func:`st.cache_resource` keyed by the DB URL; query results are
:func:`st.cache_data` with a 60 s time-to-live, keyed by the URL and the (hashable) query
arguments, so a change of ``QUALITY_DB_URL`` never serves another DB's rows.

Two URLs. Pages **read** through :func:`read_url` (also :func:`db_url`, and the default of
:func:`get_engine`): the optional read-only URL ``QUALITY_DB_URL_READONLY`` (a DB user with
SELECT only, or on SQLite ``sqlite:///file:PATH?mode=ro&uri=true``), else the main URL. The
few paths that **write** (review verdicts and reviewers, dataset-card fields and snapshots,
saved data-test runs, audit rows) use :func:`write_url` / :func:`write_engine`, the main
``QUALITY_DB_URL``, explicitly. So an analysis page cannot write even through a bug.

Big results (reports, profiles, feature frames) are cached with :func:`result_cache`, a
:func:`st.cache_resource` with the same time-to-live: a cached re-render then costs no
unpickling of a report of 10^5 rows, but every session shares the one object, so **callers
treat these results as read-only** (copy before changing a frame). Their builders read
through :func:`quality.db.aggregates.get`: the result computed ahead by the last writer while
its inputs are unchanged, else built live.

Pages wrap their data access in :func:`db_guard` (or call :func:`require_data` first): an
unreachable DB shows ``st.error``, an empty one ``st.info``, and the page stops there.
"""

from __future__ import annotations

import contextlib
import datetime as dt
from collections.abc import Callable, Iterable, Iterator
from typing import Any, NoReturn, TypeVar

import pandas as pd
import streamlit as st
from sqlalchemy import Engine
from sqlalchemy.exc import ArgumentError, NoSuchModuleError

from quality.config import get_settings
from quality.db import aggregates, queries
from quality.db.session import make_engine, safe_url, session_scope
from quality.errors import DatabaseUnavailableError, EmptyDatabaseError

__all__ = [
    "QUERY_TTL_S",
    "clear_caches",
    "clear_results",
    "db_guard",
    "db_url",
    "filter_options",
    "get_engine",
    "image_refs",
    "images_by_source",
    "ingest_errors",
    "list_datasets",
    "list_tasks",
    "overview",
    "read_url",
    "require_data",
    "result_cache",
    "run_query",
    "run_write",
    "show_empty",
    "show_unavailable",
    "store_totals",
    "studies_page",
    "study_images",
    "write_engine",
    "write_url",
]

QUERY_TTL_S = 60
T = TypeVar("T")
_RESULT_CACHES: list[Any] = []


def write_url() -> str:
    """The read-write DB URL (``QUALITY_DB_URL``, secrets, else the demo DB): writers only."""
    return get_settings().db_url


def read_url() -> str:
    """The URL pages read from: ``QUALITY_DB_URL_READONLY`` when set, else :func:`write_url`."""
    settings = get_settings()
    return getattr(settings, "db_url_readonly", None) or settings.db_url


def db_url() -> str:
    """The URL pages read from (:func:`read_url`); writers use :func:`write_url`."""
    return read_url()


def _display_url(url: str) -> str:
    try:
        return safe_url(url)
    except ArgumentError:
        return "(the configured QUALITY_DB_URL)"


@st.cache_resource(show_spinner=False)
def _engine(url: str) -> Engine:
    return make_engine(url)


def get_engine(url: str | None = None) -> Engine:
    """The shared engine for ``url`` (default: :func:`read_url`).

    Raises
    ------
    DatabaseUnavailableError
        The URL is malformed, names a driver that is not installed, or a SQLite path that
        cannot be created.
    """
    url = url or db_url()
    try:
        return _engine(url)
    except (ArgumentError, NoSuchModuleError, OSError) as exc:
        raise DatabaseUnavailableError(_display_url(url), str(exc)) from exc


def write_engine() -> Engine:
    """The shared engine on :func:`write_url` (review, card, checks and audit writes).

    Raises
    ------
    DatabaseUnavailableError
        As :func:`get_engine`.
    """
    return get_engine(write_url())


def run_write(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Call ``fn(session, *args, **kwargs)`` in a committed session on :func:`write_url`."""
    return _run(write_url(), fn, *args, **kwargs)


def run_query(url: str, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Call ``fn(session, *args, **kwargs)`` in a session on ``url``'s shared engine.

    For cached wrappers outside this module (the report builders of :mod:`quality.ui.doctors`).
    """
    return _run(url, fn, *args, **kwargs)


def _run(url: str, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    with session_scope(get_engine(url)) as session:
        return fn(session, *args, **kwargs)


@st.cache_data(ttl=QUERY_TTL_S, show_spinner=False)
def _store_totals(url: str) -> queries.StoreTotals:
    return _run(url, aggregates.get, "store_totals")


@st.cache_data(ttl=QUERY_TTL_S, show_spinner=False)
def _overview(url: str) -> pd.DataFrame:
    return _run(url, aggregates.get, "dataset_overview")


@st.cache_data(ttl=QUERY_TTL_S, show_spinner=False)
def _list_datasets(url: str) -> pd.DataFrame:
    return _run(url, queries.list_datasets)


@st.cache_data(ttl=QUERY_TTL_S, show_spinner=False)
def _images_by_source(url: str, dataset_id: int | None) -> pd.DataFrame:
    return _run(url, aggregates.get, "images_by_source", dataset_id)


@st.cache_data(ttl=QUERY_TTL_S, show_spinner=False)
def _ingest_errors(url: str) -> pd.DataFrame:
    return _run(url, queries.ingest_error_summary)


@st.cache_data(ttl=QUERY_TTL_S, show_spinner=False)
def _filter_options(url: str, dataset_id: int | None) -> dict[str, Any]:
    return _run(url, aggregates.get, "filter_options", dataset_id)


@st.cache_data(ttl=QUERY_TTL_S, show_spinner=False)
def _studies_page(
    url: str,
    dataset_id: int | None,
    sources: tuple[str, ...],
    modalities: tuple[str, ...],
    date_from: dt.date | None,
    date_to: dt.date | None,
    page: int,
    page_size: int,
) -> tuple[pd.DataFrame, int]:
    return _run(
        url,
        queries.studies_page,
        dataset_id=dataset_id,
        sources=sources,
        modalities=modalities,
        date_from=date_from,
        date_to=date_to,
        page=page,
        page_size=page_size,
    )


@st.cache_data(ttl=QUERY_TTL_S, show_spinner=False)
def _list_tasks(url: str, dataset_id: int | None) -> pd.DataFrame:
    return _run(url, aggregates.get, "list_tasks", dataset_id)


@st.cache_data(ttl=QUERY_TTL_S, show_spinner=False)
def _image_refs(url: str, image_ids: tuple[int, ...]) -> pd.DataFrame:
    return _run(url, queries.image_refs, list(image_ids))


@st.cache_data(ttl=QUERY_TTL_S, show_spinner=False)
def _study_images(url: str, study_uid: str) -> pd.DataFrame:
    return _run(url, queries.study_images, study_uid)


def store_totals() -> queries.StoreTotals:
    """Whole-DB counts (cached)."""
    return _store_totals(db_url())


def overview() -> pd.DataFrame:
    """:func:`quality.db.queries.dataset_overview` (cached)."""
    return _overview(db_url())


def list_datasets() -> pd.DataFrame:
    """:func:`quality.db.queries.list_datasets` (cached)."""
    return _list_datasets(db_url())


def images_by_source(dataset_id: int | None) -> pd.DataFrame:
    """:func:`quality.db.queries.images_by_source` (cached)."""
    return _images_by_source(db_url(), dataset_id)


def ingest_errors() -> pd.DataFrame:
    """:func:`quality.db.queries.ingest_error_summary` (cached)."""
    return _ingest_errors(db_url())


def filter_options(dataset_id: int | None) -> dict[str, Any]:
    """:func:`quality.db.queries.filter_options` (cached)."""
    return _filter_options(db_url(), dataset_id)


def studies_page(
    *,
    dataset_id: int | None = None,
    sources: tuple[str, ...] = (),
    modalities: tuple[str, ...] = (),
    date_from: dt.date | None = None,
    date_to: dt.date | None = None,
    page: int = 0,
    page_size: int = 25,
) -> tuple[pd.DataFrame, int]:
    """:func:`quality.db.queries.studies_page` (cached); filters as tuples so they hash."""
    return _studies_page(
        db_url(),
        dataset_id,
        tuple(sources),
        tuple(modalities),
        date_from,
        date_to,
        page,
        page_size,
    )


def study_images(study_uid: str) -> pd.DataFrame:
    """:func:`quality.db.queries.study_images` (cached)."""
    return _study_images(db_url(), study_uid)


def list_tasks(dataset_id: int | None) -> pd.DataFrame:
    """:func:`quality.db.queries.list_tasks` (cached); None lists the tasks of every dataset."""
    return _list_tasks(db_url(), dataset_id)


def image_refs(image_ids: Iterable[int]) -> pd.DataFrame:
    """:func:`quality.db.queries.image_refs` (cached; the ids are sorted so they hash once)."""
    return _image_refs(db_url(), tuple(sorted({int(i) for i in image_ids})))


def result_cache(
    *, ttl: float = QUERY_TTL_S, show_spinner: bool | str = False, max_entries: int = 32
) -> Callable[[Callable[..., T]], Callable[..., T]]:
    """``st.cache_resource`` for big read-only results, keyed by the (hashable) arguments.

    Unlike ``st.cache_data`` the result is not pickled on every hit: the callers share it
    and must not change it. :func:`clear_results` drops these too.
    """

    def decorate(fn: Callable[..., T]) -> Callable[..., T]:
        cached = st.cache_resource(ttl=ttl, show_spinner=show_spinner, max_entries=max_entries)(fn)
        _RESULT_CACHES.append(cached)
        return cached  # type: ignore[return-value]

    return decorate


def clear_results() -> None:
    """Drop cached query results and big results, keeping the engines (after a write)."""
    st.cache_data.clear()
    for cached in _RESULT_CACHES:
        cached.clear()


def clear_caches() -> None:
    """Drop cached query results and engines (tests; after a write)."""
    st.cache_data.clear()
    st.cache_resource.clear()


# --------------------------------------------------------------------------- guard


def show_empty(exc: EmptyDatabaseError) -> NoReturn:
    """Say plainly that the DB has no data and how to get some, then stop the page."""
    st.info(
        f"The database `{exc.url}` has no data yet — run `make run` or `quality demo` to "
        "generate the demo data, or `quality ingest FOLDER` to index your own DICOM files.",
        icon="ℹ️",
    )
    st.stop()


def show_unavailable(exc: DatabaseUnavailableError) -> NoReturn:
    """Say plainly which DB cannot be reached and why, then stop the page."""
    reason = exc.reason.strip().splitlines()[0] if exc.reason.strip() else "no reason given"
    st.error(
        f"Cannot reach the database `{exc.url}`: {reason}\n\n"
        "Check `QUALITY_DB_URL` (or `db_url` under `[quality]` in `.streamlit/secrets.toml`) "
        "and that the database server is running.",
        icon="🚫",
    )
    st.stop()


@contextlib.contextmanager
def db_guard() -> Iterator[None]:
    """Run a block of data access; DB trouble becomes a message and stops the page.

    Examples
    --------
    >>> with db_guard():  # doctest: +SKIP
    ...     df = overview()
    """
    try:
        yield
    except EmptyDatabaseError as exc:
        show_empty(exc)
    except DatabaseUnavailableError as exc:
        show_unavailable(exc)


def require_data() -> queries.StoreTotals:
    """Whole-DB counts, or a message and a stop when the DB is unreachable, blank or empty."""
    with db_guard():
        totals = store_totals()
        if totals.is_empty:
            raise EmptyDatabaseError(_display_url(db_url()))
    return totals
