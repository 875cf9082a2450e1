"""Store → ``sources`` / ``studies`` / ``series`` / ``images`` rows: idempotent, parallel, resumable.

:func:`ingest` lists an image store, skips the files the DB already knows unchanged, parses the
rest in worker processes (header only, plus a hash of the stored PixelData bytes, see
:func:`quality.dicom.index_record`) and writes rows in batches, one commit per batch.

Contract
--------
* **Nothing is lost.** Every listed file ends as an ``images`` row or an ``ingest_errors``
  row, and ``indexed + unchanged + errors == files_seen``.
* **Idempotent.** A file whose ``uri``, ``file_size`` and ``file_mtime`` match a stored row is
  not read again. For an ``images`` row it counts as *unchanged*; for an ``ingest_errors``
  row it counts as an *error* again (it is still broken), unless ``retry_errors=True``.
* **Resumable.** Each batch commits on its own, so after a kill a new run only reads the
  files of the unfinished batches.
* **Changed files** (size or mtime differ) are parsed again: the image row is updated in
  place (same id, so annotations stay attached). A file that ingests fine removes its error
  row; a file that was indexed and is now unreadable keeps its image row (deleting it would
  cascade to annotations and predictions) and gets an error row that says what is wrong.
* **Sources** are named after the first folder below the store root
  (``<root>/<source>/<study>/<series>/<file>``, as ``quality demo`` writes them); files directly
  in the root belong to the source ``"unknown"``. InstitutionName and StationName are PHI
  (PS3.15 Annex E) and are never used.
* **Studies and series** are created by UID the first time they are seen; later files of the
  same study do not change their attributes.
* A SOPInstanceUID already indexed from another URI gives a ``duplicate_sop_uid`` error row.
* Error kinds: ``not_dicom``, ``truncated``, ``missing_uid``, ``invalid_uid``, ``read_error``,
  ``duplicate_sop_uid``, ``db_error``. Messages name what is wrong, never patient data.

One ingest at a time per DB: two concurrent runs over the same files may race on UIDs.
Files that vanished from the store keep their rows.
"""

from __future__ import annotations

import datetime as dt
import functools
import logging
import math
import multiprocessing
import os
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import delete, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from quality import dicom
from quality.db.aggregates import refresh_after_write
from quality.db.schema import Image, IngestError, Series, Source, Study
from quality.errors import DicomReadError, StoreUnavailableError
from quality.store import StoreEntry, is_remote, open_store

__all__ = ["IngestSummary", "ingest", "source_name"]

log = logging.getLogger(__name__)

ProgressFn = Callable[[int, int, str], None]
_IN_CHUNK = 500  # URIs / UIDs per IN (...) query: well under every backend's parameter limit
_UNKNOWN_SOURCE = "unknown"


@dataclass
class IngestSummary:
    """What one :func:`ingest` run did.

    Attributes
    ----------
    store : the store root that was listed.
    files_seen : files listed in the store.
    indexed : files parsed and written as image rows (new or changed) in this run.
    unchanged : files already indexed with the same size and mtime.
    errors : files that are error rows after this run (new, or unchanged and still broken).
    seconds : wall time of the run.
    error_kinds : count of ``errors`` per kind.
    """

    store: str = ""
    files_seen: int = 0
    indexed: int = 0
    unchanged: int = 0
    errors: int = 0
    seconds: float = 0.0
    error_kinds: dict[str, int] = field(default_factory=dict)

    @property
    def files_per_s(self) -> float:
        """Files seen per second of wall time."""
        return self.files_seen / self.seconds if self.seconds > 0 else 0.0

    def as_dict(self) -> dict[str, Any]:
        """The JSON summary of ``quality ingest``."""
        return {
            "store": self.store,
            "files_seen": self.files_seen,
            "indexed": self.indexed,
            "unchanged": self.unchanged,
            "errors": self.errors,
            "error_kinds": dict(sorted(self.error_kinds.items())),
            "seconds": round(self.seconds, 3),
            "files_per_s": round(self.files_per_s, 1),
        }


def source_name(entry: StoreEntry) -> str:
    """The source of a file: the first folder of its key, else ``"unknown"``."""
    head, sep, _ = entry.key.partition("/")
    return head[:128] if sep and head else _UNKNOWN_SOURCE


# --------------------------------------------------------------------------- parsing


class _RunState:
    """Shared by the parse calls of one run (per process with a process pool): once the
    store is unavailable, the rest fail fast instead of retrying a dead server per file."""

    def __init__(self) -> None:
        self.unavailable: str | None = None


def _parse_one(path: str, salt: str, state: _RunState) -> tuple[str, Any, Any]:
    """Parse one file: ``("ok", record, None)``, ``("error", kind, message)`` or, when the
    store cannot be reached, ``("fatal", "store_unavailable", message)``; never raises."""
    if state.unavailable is not None:
        return "fatal", "store_unavailable", state.unavailable
    try:
        return "ok", dicom.index_record(path, salt=salt), None
    except StoreUnavailableError as exc:
        # Not a defect of this file: no error row; ingest stops and a rerun resumes.
        state.unavailable = str(exc)
        return "fatal", "store_unavailable", state.unavailable
    except DicomReadError as exc:
        return "error", exc.kind, exc.message
    except Exception as exc:
        # A file must never stop the run: anything unforeseen becomes an error row.
        return "error", "read_error", f"unexpected {type(exc).__name__}: {dicom.scrub(str(exc))}"


def _mp_context() -> Any:
    # fork starts fastest, but is unsafe once threads exist (e.g. inside Streamlit).
    methods = multiprocessing.get_all_start_methods()
    if "fork" in methods and threading.active_count() == 1:
        return multiprocessing.get_context("fork")
    return multiprocessing.get_context("forkserver" if "forkserver" in methods else "spawn")


def _parse_all(
    paths: Sequence[str], workers: int, salt: str, *, remote: bool
) -> Iterator[tuple[str, Any, Any]]:
    """Parse results in the order of ``paths``.

    Local files go to a process pool when ``workers > 1`` (header parsing and hashing are
    CPU-bound). Remote entries go to a thread pool: the time is spent waiting on the network
    (sockets release the GIL), the store clients and their credentials live in this process,
    and there is no process start-up per run.
    """
    fn = functools.partial(_parse_one, salt=salt, state=_RunState())
    if workers <= 1 or len(paths) < 2:
        yield from map(fn, paths)
        return
    pool: Executor
    if remote:
        pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="ingest")
        chunks: dict[str, int] = {}
    else:
        pool = ProcessPoolExecutor(max_workers=workers, mp_context=_mp_context())
        # Few, large chunks keep IPC small; 4 chunks per worker still balance the load.
        chunks = {"chunksize": max(1, min(512, math.ceil(len(paths) / (workers * 4))))}
    try:
        yield from pool.map(fn, paths, **chunks)
    finally:
        # On an early exit (store unavailable, Ctrl-C) queued work is dropped, not run.
        pool.shutdown(wait=True, cancel_futures=True)


# --------------------------------------------------------------------------- DB side


def _chunks(items: Sequence[Any], n: int = _IN_CHUNK) -> Iterator[Sequence[Any]]:
    for i in range(0, len(items), n):
        yield items[i : i + n]


@dataclass
class _Known:
    kind: str  # "image" or an error kind
    size: int | None
    mtime: float | None


def _known(session: Session, uris: Sequence[str]) -> dict[str, _Known]:
    """Stored state of ``uris``: image rows first, then error rows."""
    out: dict[str, _Known] = {}
    for chunk in _chunks(uris):
        for uri, kind, size, mtime in session.execute(
            select(IngestError.uri, IngestError.kind, IngestError.file_size, IngestError.file_mtime)
            .where(IngestError.uri.in_(chunk))
        ):  # fmt: skip
            out[uri] = _Known(kind, size, mtime)
        for uri, size, mtime in session.execute(
            select(Image.uri, Image.file_size, Image.file_mtime).where(Image.uri.in_(chunk))
        ):
            out[uri] = _Known("image", size, mtime)
    return out


@dataclass
class _Outcome:
    indexed: int = 0
    errors: Counter[str] = field(default_factory=Counter)


class _Writer:
    """Buffers parse results and writes them in batches, one commit per batch."""

    def __init__(self, session: Session, batch_size: int) -> None:
        self.session = session
        self.batch_size = batch_size
        self.pending: list[tuple[StoreEntry, tuple[str, Any, Any]]] = []
        self.outcome = _Outcome()
        self._sources: dict[str, int] = {}
        self._studies: dict[str, int] = {}
        self._series: dict[str, int] = {}

    def add(self, entry: StoreEntry, result: tuple[str, Any, Any]) -> None:
        self.pending.append((entry, result))
        if len(self.pending) >= self.batch_size:
            self.flush()

    def flush(self) -> None:
        if not self.pending:
            return
        items, self.pending = self.pending, []
        try:
            outcome = self._write(items)
            self.session.commit()
        except IntegrityError:
            # A UID race the batch checks could not foresee: redo the batch one file at a time.
            self.session.rollback()
            self._reset_caches()
            outcome = _Outcome()
            for item in items:
                outcome = self._merge(outcome, self._write_single(item))
        self.outcome = self._merge(self.outcome, outcome)

    def _write_single(self, item: tuple[StoreEntry, tuple[str, Any, Any]]) -> _Outcome:
        try:
            outcome = self._write([item])
            self.session.commit()
            return outcome
        except IntegrityError as exc:
            self.session.rollback()
            self._reset_caches()
            entry = item[0]
            text = str(exc.orig).lower()
            kind = "duplicate_sop_uid" if "sop_uid" in text else "db_error"
            message = (
                "SOPInstanceUID is already indexed from another file"
                if kind == "duplicate_sop_uid"
                else f"the database refused the row: {dicom.scrub(str(exc.orig), 200)}"
            )
            outcome = self._write([(entry, ("error", kind, message))])
            self.session.commit()
            return outcome

    @staticmethod
    def _merge(a: _Outcome, b: _Outcome) -> _Outcome:
        return _Outcome(a.indexed + b.indexed, a.errors + b.errors)

    def _reset_caches(self) -> None:
        self._sources.clear()
        self._studies.clear()
        self._series.clear()

    # ------------------------------------------------------------------ one batch

    def _write(self, items: list[tuple[StoreEntry, tuple[str, Any, Any]]]) -> _Outcome:
        s = self.session
        uris = [e.uri for e, _ in items]
        by_uri: dict[str, tuple[int, str]] = {}
        for chunk in _chunks(uris):
            for image_id, uri, sop in s.execute(
                select(Image.id, Image.uri, Image.sop_uid).where(Image.uri.in_(chunk))
            ):
                by_uri[uri] = (image_id, sop)
        oks = [(e, r[1]) for e, r in items if r[0] == "ok"]
        sops = list({rec["image"]["sop_uid"] for _, rec in oks})
        sop_owner: dict[str, str] = {}
        for chunk in _chunks(sops):
            for sop, uri in s.execute(
                select(Image.sop_uid, Image.uri).where(Image.sop_uid.in_(chunk))
            ):
                sop_owner[sop] = uri

        errors: list[dict[str, Any]] = []
        to_write: list[tuple[StoreEntry, dict[str, Any]]] = []
        for entry, result in items:
            if result[0] != "ok":
                errors.append(_error_row(entry, result[1], result[2]))
                continue
            rec = result[1]
            sop = rec["image"]["sop_uid"]
            owner = sop_owner.get(sop)
            if owner is not None and owner != entry.uri:
                errors.append(
                    _error_row(
                        entry,
                        "duplicate_sop_uid",
                        f"SOPInstanceUID is already indexed from another file ({owner})",
                    )
                )
                continue
            sop_owner[sop] = entry.uri
            to_write.append((entry, rec))

        for chunk in _chunks(uris):
            s.execute(delete(IngestError).where(IngestError.uri.in_(chunk)))
        # A file that was indexed before and is broken now keeps its image row: deleting it
        # would cascade to the doctors' annotations and predictions. The error row says what
        # is wrong; its stale size/mtime makes the next run look at the file again.

        if to_write:
            self._resolve_parents(to_write)
            inserts: list[dict[str, Any]] = []
            updates: list[dict[str, Any]] = []
            now = dt.datetime.now(dt.UTC)
            for entry, rec in to_write:
                row = dict(rec["image"])
                row.update(
                    uri=entry.uri,
                    series_id=self._series[rec["series"]["series_uid"]],
                    file_size=entry.size if entry.size is not None else rec.get("size"),
                    file_mtime=entry.mtime,
                )
                if entry.uri in by_uri:
                    row.update(id=by_uri[entry.uri][0], ingested_at=now)
                    updates.append(row)
                else:
                    inserts.append(row)
            if updates:
                s.execute(update(Image), updates)
            if inserts:
                s.execute(insert(Image), inserts)
        if errors:
            s.execute(insert(IngestError), errors)
        return _Outcome(len(to_write), Counter(row["kind"] for row in errors))

    def _resolve_parents(self, to_write: list[tuple[StoreEntry, dict[str, Any]]]) -> None:
        """Fill the uid → id caches for the sources, studies and series of ``to_write``."""
        sources: dict[str, dict[str, Any]] = {}
        studies: dict[str, dict[str, Any]] = {}
        series: dict[str, dict[str, Any]] = {}
        study_source: dict[str, str] = {}
        for entry, rec in to_write:
            name = source_name(entry)
            sources.setdefault(name, {"name": name, "manufacturer": rec["series"]["manufacturer"]})
            uid = rec["study"]["study_uid"]
            if uid not in studies:
                studies[uid] = dict(rec["study"])
                study_source[uid] = name
            series.setdefault(rec["series"]["series_uid"], dict(rec["series"], study_uid=uid))

        self._get_or_create(Source, Source.name, self._sources, sources)
        for uid, row in studies.items():
            row["source_id"] = self._sources[study_source[uid]]
        self._get_or_create(Study, Study.study_uid, self._studies, studies)
        for row in series.values():
            row["study_id"] = self._studies[row.pop("study_uid")]
        self._get_or_create(Series, Series.series_uid, self._series, series)

    def _get_or_create(
        self, model: Any, key_col: Any, cache: dict[str, int], rows: dict[str, dict[str, Any]]
    ) -> None:
        missing = [k for k in rows if k not in cache]
        if not missing:
            return
        self._load_ids(model, key_col, cache, missing)
        new = [rows[k] for k in missing if k not in cache]
        if new:
            self.session.execute(insert(model), new)
            self._load_ids(model, key_col, cache, [k for k in missing if k not in cache])

    def _load_ids(self, model: Any, key_col: Any, cache: dict[str, int], keys: list[str]) -> None:
        for chunk in _chunks(keys):
            for row_id, key in self.session.execute(
                select(model.id, key_col).where(key_col.in_(chunk))
            ):
                cache[key] = row_id


def _error_row(entry: StoreEntry, kind: str, message: str) -> dict[str, Any]:
    return {
        "uri": entry.uri,
        "kind": str(kind)[:32],
        "message": str(message) or kind,
        "file_size": entry.size,
        "file_mtime": entry.mtime,
    }


# --------------------------------------------------------------------------- entry point


def _changed(state: _Known, entry: StoreEntry) -> bool:
    """Whether a known file must be read again: its size or mtime differ from the stored
    ones. A store that cannot tell (None, DICOMweb) serves immutable instances: unchanged."""
    return (entry.size is not None and state.size != entry.size) or (
        entry.mtime is not None and state.mtime != entry.mtime
    )


def _default_workers(remote: bool) -> int:
    """Cores for local files; for remote stores more requests in flight than cores, since
    each mostly waits on the network (bounded so a PACS is not flooded)."""
    cores = os.cpu_count() or 1
    return min(16, 4 * cores) if remote else cores


def _progress_every(total: int) -> int:
    return max(1, total // 500)


def ingest(
    session: Session,
    uri: str,
    *,
    workers: int | None = None,
    salt: str,
    progress: ProgressFn | None = None,
    batch_size: int = 256,
    retry_errors: bool = False,
) -> IngestSummary:
    """Index the DICOM files of a store into the DB.

    Parameters
    ----------
    session : an open session; :func:`ingest` commits on it once per batch.
    uri : the store: a folder, ``file://``, ``s3://bucket/prefix`` or
        ``dicomweb+http(s)://host/root`` (see :func:`quality.store.open_store`).
    workers : parallel parsers: processes for local folders (default ``os.cpu_count()``),
        threads for remote stores (default ``min(16, 4 × cores)``). ``1`` parses in this
        thread.
    salt : secret salt of :func:`quality.dicom.patient_key`.
    progress : called as ``progress(done, total, "ingest")`` while files complete.
    batch_size : files per DB batch (and per commit).
    retry_errors : parse unchanged files that are error rows again (e.g. after an upgrade).

    Returns
    -------
    IngestSummary
        Counts with ``indexed + unchanged + errors == files_seen``.

    Raises
    ------
    StoreError
        The store cannot be opened or listed.
    StoreUnavailableError
        A remote store stopped answering during the run (after retries). Every batch
        finished before that is committed; running the same ingest again resumes.
    ValueError
        ``workers`` or ``batch_size`` below 1, or an empty ``salt``.
    """
    if workers is not None and workers < 1:
        raise ValueError(f"workers must be >= 1, not {workers}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, not {batch_size}")
    if not salt:
        raise ValueError("salt must be a non-empty string")
    t0 = time.perf_counter()
    store = open_store(uri)
    entries = list(store.list())
    summary = IngestSummary(store=store.root, files_seen=len(entries))
    known = _known(session, [e.uri for e in entries])
    session.commit()  # end the read transaction; each batch below is its own

    todo: list[StoreEntry] = []
    error_kinds: Counter[str] = Counter()
    for entry in entries:
        state = known.get(entry.uri)
        if state is None or _changed(state, entry):
            todo.append(entry)
        elif state.kind == "image":
            summary.unchanged += 1
        elif retry_errors:
            todo.append(entry)
        else:
            error_kinds[state.kind] += 1

    total = summary.files_seen
    done = total - len(todo)
    every = _progress_every(total)
    if progress is not None:
        progress(done, total, "ingest")
    remote = is_remote(store.root)
    n_workers = workers if workers is not None else _default_workers(remote)
    log.info(
        "ingest %s: %d files, %d to parse, %d workers", store.root, total, len(todo), n_workers
    )

    writer = _Writer(session, batch_size)
    results = _parse_all([e.uri for e in todo], n_workers, salt, remote=remote)
    try:
        for entry, result in zip(todo, results, strict=True):
            if result[0] == "fatal":
                writer.flush()  # keep everything read before the store went away
                raise StoreUnavailableError(
                    store.root,
                    f"ingest stopped after {done} of {total} files ({writer.outcome.indexed} "
                    f"indexed in this run): {result[2]}. Everything read so far is saved; "
                    "run the same ingest again to resume.",
                )
            writer.add(entry, result)
            done += 1
            if progress is not None and (done % every == 0 or done == total):
                progress(done, total, "ingest")
        writer.flush()
    finally:
        results.close()

    error_kinds.update(writer.outcome.errors)
    summary.indexed = writer.outcome.indexed
    summary.errors = sum(error_kinds.values())
    summary.error_kinds = dict(error_kinds)
    summary.seconds = time.perf_counter() - t0
    log.info("ingest %s done: %s", store.root, summary.as_dict())
    refresh_after_write(session)  # the pages' heavy results, computed ahead
    return summary
