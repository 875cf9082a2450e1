"""The S3 store (``quality.store.s3``) against a real S3 server: moto's, on loopback.

The server is a separate process (:mod:`s3_server`). Ingest from ``s3://`` must give the
same rows as from the folder the objects came from (on SQLite and PostgreSQL), stay
resolvable by the viewer and the scorer, read headers with ranged GETs, keep credentials
out of everything it stores or prints, and survive a server killed mid-run.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import service_missing
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian
from s3_server import MotoServer, moto_available
from sqlalchemy import func, select
from sqlalchemy.orm import Session

import quality.dicom as dicom_mod
from quality import dicom
from quality.db.schema import Image, IngestError, Series, Source, Study
from quality.db.session import make_engine, upgrade
from quality.errors import StoreError, StoreUnavailableError
from quality.ingest import IngestSummary, ingest
from quality.store import _remote_store, open_store, store_for_uri
from quality.store.s3 import BLOCK_SIZE, S3Store

SALT = "test-salt"
BUCKET = "demo"
PREFIX = "sets/tiny"
ROOT = f"s3://{BUCKET}/{PREFIX}"
FAST = {  # keep every failure path short: a dead server is reported in well under a second
    "QUALITY_STORE_RETRIES": "2",
    "QUALITY_STORE_BACKOFF_S": "0.05",
    "QUALITY_STORE_TIMEOUT_S": "5",
}


# --------------------------------------------------------------------------- fixtures


def _start_server(**kwargs: Any) -> MotoServer:
    reason = moto_available()
    if reason is not None:
        service_missing(f"moto S3 server ({reason})")
    server = MotoServer(**kwargs)
    try:
        return server.start()
    except (RuntimeError, OSError) as exc:
        server.close()
        service_missing(f"moto S3 server (it did not start: {exc})")
        raise  # service_missing skips or fails; this is never reached


@pytest.fixture(scope="module")
def moto() -> Iterator[MotoServer]:
    server = _start_server()
    yield server
    server.close()


@pytest.fixture(scope="module")
def s3_env(moto: MotoServer) -> Iterator[dict[str, str]]:
    """Settings for ``moto`` in the environment (what the CLI and store_for_uri read)."""
    env = {**moto.env(), **FAST}
    mp = pytest.MonkeyPatch()
    for name, value in env.items():
        mp.setenv(name, value)
    yield env
    mp.undo()


@pytest.fixture(autouse=True)
def _fresh_store_cache() -> Iterator[None]:
    # store_for_uri caches one store per bucket, built from the settings of its first use.
    _remote_store.cache_clear()
    yield
    _remote_store.cache_clear()


@pytest.fixture(scope="module")
def demo_dir(tiny_demo: Path) -> Path:
    return tiny_demo / "dicom"


@pytest.fixture(scope="module")
def demo_bucket(moto: MotoServer, s3_env: dict[str, str], demo_dir: Path) -> str:
    """The tiny demo's DICOM folder uploaded under ``s3://demo/sets/tiny``."""
    assert moto.upload_folder(demo_dir, BUCKET, PREFIX) > 0
    return ROOT


def _dead_endpoint() -> str:
    """A loopback URL where nothing listens (a port just freed)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def _new_sqlite(path: Path) -> Session:
    engine = make_engine(f"sqlite:///{path}")
    upgrade(engine)
    return Session(engine, expire_on_commit=False)


@pytest.fixture(scope="module")
def folder_ref(
    demo_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[dict[str, Any], IngestSummary]:
    """Rows and summary of the folder ingest (fresh SQLite): the reference."""
    with _new_sqlite(tmp_path_factory.mktemp("folder_ref") / "ref.db") as session:
        summary = ingest(session, str(demo_dir), salt=SALT, workers=1)
        snap = _snapshot(session, str(demo_dir.resolve()))
    return snap, summary


@pytest.fixture(scope="module")
def s3_db(
    demo_bucket: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Session, IngestSummary]]:
    """One S3 ingest into SQLite, shared by the read-only tests."""
    _remote_store.cache_clear()
    session = _new_sqlite(tmp_path_factory.mktemp("s3_db") / "s3.db")
    summary = ingest(session, demo_bucket, salt=SALT, workers=4)
    yield session, summary
    session.close()


# --------------------------------------------------------------------------- helpers


def _rel(uri: str, root: str) -> str:
    """The key of ``uri`` below a store root (folder path or s3:// root)."""
    if uri.startswith("s3://"):
        assert uri.startswith(root + "/"), (uri, root)
        return uri[len(root) + 1 :]
    return Path(uri).relative_to(root).as_posix()


def _rows(session: Session, model: Any) -> list[dict[str, Any]]:
    return [dict(m) for m in session.execute(select(model.__table__)).mappings()]


def _snapshot(session: Session, root: str) -> dict[str, Any]:
    """Every ingest-written row keyed by UID (errors by key), without ids, URIs, mtimes and
    timestamps; parents referenced by their UIDs/names."""
    sources = {r["id"]: r for r in _rows(session, Source)}
    studies = {r["id"]: r for r in _rows(session, Study)}
    series = {r["id"]: r for r in _rows(session, Series)}
    images = _rows(session, Image)
    out: dict[str, Any] = {
        "sources": {r["name"]: r["manufacturer"] for r in sources.values()},
        "studies": {
            r["study_uid"]: {
                **{k: v for k, v in r.items() if k not in ("id", "source_id")},
                "source": sources[r["source_id"]]["name"] if r["source_id"] else None,
            }
            for r in studies.values()
        },
        "series": {
            r["series_uid"]: {
                **{k: v for k, v in r.items() if k not in ("id", "study_id")},
                "study": studies[r["study_id"]]["study_uid"],
            }
            for r in series.values()
        },
        "images": {
            r["sop_uid"]: {
                **{
                    k: v
                    for k, v in r.items()
                    if k not in ("id", "uri", "file_mtime", "ingested_at", "series_id")
                },
                "series": series[r["series_id"]]["series_uid"],
                "key": _rel(r["uri"], root),
            }
            for r in images
        },
        "errors": {_rel(r["uri"], root): r["kind"] for r in _rows(session, IngestError)},
    }
    return out


def _counts(summary: IngestSummary) -> tuple[Any, ...]:
    return (
        summary.files_seen,
        summary.indexed,
        summary.unchanged,
        summary.errors,
        dict(sorted(summary.error_kinds.items())),
    )


def _store(env: dict[str, str], root: str = ROOT, **kwargs: Any) -> S3Store:
    return S3Store(
        root,
        endpoint_url=env["QUALITY_S3_ENDPOINT_URL"],
        key=env["QUALITY_S3_KEY"],
        secret=env["QUALITY_S3_SECRET"],
        region=env["QUALITY_S3_REGION"],
        retries=2,
        backoff_s=0.05,
        timeout_s=5,
        **kwargs,
    )


def _count_calls(store: S3Store, operation: str) -> dict[str, int]:
    """Count ``operation`` requests (and their body bytes) made by ``store`` from now on,
    with a botocore event hook on its client."""
    stats = {"calls": 0, "bytes": 0}
    lock = threading.Lock()

    def hook(parsed: dict[str, Any] | None = None, **_: Any) -> None:
        with lock:
            stats["calls"] += 1
            stats["bytes"] += int((parsed or {}).get("ContentLength") or 0)

    store._fs.s3.meta.events.register(f"after-call.s3.{operation}", hook)
    # Whole-object reads (read_bytes) go through this thread's botocore client.
    store._client().meta.events.register(f"after-call.s3.{operation}", hook)
    return stats


def _big_dicom(path: Path, side: int = 1536) -> Path:
    """An uncompressed 16-bit image of ``side``² pixels (4.5 MiB at 1536)."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1"
    ds.file_meta.MediaStorageSOPInstanceUID = "1.2.826.0.1.3680043.8.498.77.3"
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.1"
    ds.SOPInstanceUID = "1.2.826.0.1.3680043.8.498.77.3"
    ds.StudyInstanceUID = "1.2.826.0.1.3680043.8.498.77.1"
    ds.SeriesInstanceUID = "1.2.826.0.1.3680043.8.498.77.2"
    ds.PatientID = "BIG-1"
    ds.Modality = "CR"
    ds.Rows = ds.Columns = side
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelData = (np.arange(side * side, dtype=np.uint16) % 4096).tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


# --------------------------------------------------------------------------- 1. equality


def test_s3_ingest_equals_folder_ingest(
    session: Session,
    demo_bucket: str,
    folder_ref: tuple[dict[str, Any], IngestSummary],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    ref, ref_summary = folder_ref
    assert ref["images"] and ref["errors"], "the tiny demo has images and broken files"

    summary = ingest(session, demo_bucket, salt=SALT, workers=4, batch_size=7)
    assert summary.store == ROOT
    assert _counts(summary) == _counts(ref_summary)
    got = _snapshot(session, ROOT)
    for table in ("sources", "studies", "series", "images", "errors"):
        assert got[table] == ref[table], table  # sizes and pixel hashes included
    assert summary.files_per_s > 0  # throughput is measured, not asserted

    # Second run: nothing changed, and no object is read again.
    calls: list[str] = []
    real = dicom_mod.index_record

    def counting(path: str, *, salt: str) -> dict[str, Any]:
        calls.append(path)
        return real(path, salt=salt)

    monkeypatch.setattr(dicom_mod, "index_record", counting)
    again = ingest(session, demo_bucket, salt=SALT, workers=4)
    assert calls == []
    assert (again.files_seen, again.indexed, again.unchanged, again.errors) == (
        summary.files_seen,
        0,
        summary.indexed,
        summary.errors,
    )
    assert _snapshot(session, ROOT) == got


# --------------------------------------------------------------------------- 2. viewer


def test_s3_uris_resolve_for_viewer_and_scorer(
    s3_db: tuple[Session, IngestSummary], demo_dir: Path
) -> None:
    session, _ = s3_db
    uris = list(session.execute(select(Image.uri).order_by(Image.uri)).scalars())
    assert uris and all(u.startswith(ROOT + "/") for u in uris)
    for uri in uris:
        local = demo_dir / _rel(uri, ROOT)
        try:
            want = dicom.load_pixels(local)
        except dicom.DicomReadError as exc:  # undecodable locally: same kind from S3
            with pytest.raises(dicom.DicomReadError) as info:
                dicom.load_pixels(uri)
            assert info.value.kind == exc.kind
            continue
        got = dicom.load_pixels(uri)
        assert np.array_equal(got.frames, want.frames), uri
        assert got.photometric == want.photometric
    assert dicom.masked_header(uris[0]) == dicom.masked_header(demo_dir / _rel(uris[0], ROOT))
    assert str(dicom.read_header(uris[0]).SOPInstanceUID)


# --------------------------------------------------------------------------- 3. store


def test_header_read_uses_ranged_gets(
    moto: MotoServer, s3_env: dict[str, str], tmp_path: Path
) -> None:
    path = _big_dicom(tmp_path / "big.dcm")
    size = path.stat().st_size
    assert size > 16 * BLOCK_SIZE
    moto.ensure_bucket("ranged")
    moto.client().upload_file(str(path), "ranged", "src/big.dcm")  # type: ignore[attr-defined]
    uri = "s3://ranged/src/big.dcm"

    store = store_for_uri(uri)  # the cached store read_header itself uses
    assert isinstance(store, S3Store)
    gets = _count_calls(store, "GetObject")
    header = dicom.read_header(uri)
    assert str(header.SOPInstanceUID) == "1.2.826.0.1.3680043.8.498.77.3"
    assert "PixelData" not in header
    # The header lies inside the first block: one ranged GET of one block, not the object.
    assert gets["calls"] == 1
    # readahead fetches a block beyond the read that triggered it (pydicom's first small read)
    extra = gets["bytes"] - BLOCK_SIZE
    assert 0 <= extra <= 4096 and gets["bytes"] < size // 8

    # The counter sees whole reads too: decoding the pixels needs every byte, fetched in one
    # plain GET of the whole object (read_bytes), with no HEAD before it.
    gets.update(calls=0, bytes=0)
    heads = _count_calls(store, "HeadObject")
    image = dicom.load_pixels(uri)
    assert image.frames.shape == (1, 1536, 1536)
    assert gets == {"calls": 1, "bytes": size}
    assert heads["calls"] == 0


def test_listing_pages_and_order(demo_bucket: str, s3_env: dict[str, str], demo_dir: Path) -> None:
    one_page = list(_store(s3_env).list())
    small = _store(s3_env, page_size=4)
    lists = _count_calls(small, "ListObjectsV2")
    paged = list(small.list())
    assert paged == one_page
    assert lists["calls"] == -(-len(paged) // 4) >= 3  # ceil: every page was requested
    assert [e.key for e in paged] == sorted(e.key for e in paged)
    entry = paged[0]
    assert entry.uri == f"{ROOT}/{entry.key}" and entry.size and entry.mtime
    # The first key segment names the source, as the first folder does for folders.
    sources = {p.name for p in demo_dir.iterdir() if p.is_dir() and not p.name.startswith(".")}
    assert {e.key.split("/")[0] for e in paged} == sources
    # Trailing slash and repeated slashes in the root name the same store.
    assert _store(s3_env, root=f"s3://{BUCKET}//{PREFIX}/").root == ROOT


def test_hidden_keys_and_folder_markers_skipped(moto: MotoServer, s3_env: dict[str, str]) -> None:
    moto.ensure_bucket("hidden")
    client = moto.client()
    for key in (
        "p/src/a.dcm",
        "p/src/.DS_Store",
        "p/.cache/x.dcm",
        "p/src/sub/",  # a folder marker
        "p/",  # the prefix's own marker
        "p/src/b.dcm",
        "other/c.dcm",  # outside the prefix
        "pp/d.dcm",  # shares the prefix's first letters, not the prefix
    ):
        client.put_object(Bucket="hidden", Key=key, Body=b"data")  # type: ignore[attr-defined]
    keys = [e.key for e in _store(s3_env, root="s3://hidden/p").list()]
    assert keys == ["src/a.dcm", "src/b.dcm"]
    assert len(list(_store(s3_env, root="s3://hidden").list())) == 4  # a, b, c, d


@pytest.mark.parametrize(
    "uri",
    [
        "s3://other/sets/tiny/src/a.dcm",  # another bucket
        "s3://demo/sets/other/a.dcm",  # another prefix
        "s3://demo/sets/tinyx/a.dcm",  # a sibling sharing the prefix's letters
        "s3://demo/sets/tiny/../other/a.dcm",
        "s3://demo/sets/tiny/src/../../../a.dcm",
        "s3://demo/sets/tiny/./a.dcm",
        "s3://demo//sets/tiny/a.dcm",  # absolute-path trick
        "s3://demo/sets/tiny//etc/passwd",
        "s3:///demo/sets/tiny/a.dcm",
        "s3://demo/sets/tiny",  # the root itself, not an object
        "s3://demo/sets/tiny/",
        "/etc/passwd",
        "file:///etc/passwd",
        "http://127.0.0.1/demo/sets/tiny/a.dcm",
        "dicomweb+http://h/studies/1",
        "s3://demo/sets/tiny/a.dcm?versionId=1",
    ],
)
def test_path_safety(uri: str, s3_env: dict[str, str]) -> None:
    store = _store(s3_env)
    with pytest.raises(StoreError):
        store.open(uri)
    with pytest.raises(StoreError):
        store.local_path(uri)


def test_valid_uris_and_missing_objects(demo_bucket: str, s3_env: dict[str, str]) -> None:
    store = _store(s3_env)
    entry = next(iter(store.list()))
    assert store.local_path(entry.uri) is None
    with store.open(entry.uri) as fh:
        assert fh.seekable()
        assert fh.seek(0, os.SEEK_END) == entry.size
        fh.seek(128)
        assert fh.read(4) == b"DICM"
        assert fh.tell() == 132
    with pytest.raises(StoreError, match="object not found") as info:
        store.open(f"{ROOT}/no/such/object.dcm")
    assert not isinstance(info.value, StoreUnavailableError)  # a per-file defect
    # A bucket-wide store (as store_for_uri builds) opens every key of its bucket.
    assert _store(s3_env, root=f"s3://{BUCKET}").open(entry.uri).read(4)
    with pytest.raises(StoreError, match="bucket 'nobucket' not found"):
        list(_store(s3_env, root="s3://nobucket").list())


def test_credentials_in_uri_rejected(s3_env: dict[str, str]) -> None:
    secret = "wJalrXUtnFEMIK7MDENGbPxRfiCYEXAMPLEKEY"
    for uri in (f"s3://AKIAEXAMPLE:{secret}@demo/sets", "s3://AKIAEXAMPLE@demo"):
        for make in (lambda u: S3Store(u), open_store):
            with pytest.raises(StoreError, match="QUALITY_S3_KEY") as info:
                make(uri)
            assert secret not in str(info.value) and "AKIAEXAMPLE" not in str(info.value)
    with pytest.raises(StoreError, match="QUALITY_S3_KEY") as info:
        _store(s3_env).open(f"s3://AKIAEXAMPLE:{secret}@demo/sets/tiny/a.dcm")
    assert secret not in str(info.value)
    with pytest.raises(StoreError, match="not allowed"):
        S3Store("s3://demo", endpoint_url=f"http://AKIAEXAMPLE:{secret}@127.0.0.1:9000")


def test_credentials_never_stored_or_shown(
    s3_db: tuple[Session, IngestSummary], s3_env: dict[str, str]
) -> None:
    session, summary = s3_db
    secrets = (s3_env["QUALITY_S3_KEY"], s3_env["QUALITY_S3_SECRET"])
    texts = [json.dumps(summary.as_dict())]
    for model in (Source, Study, Series, Image, IngestError):
        texts += [json.dumps(row, default=str) for row in _rows(session, model)]
    texts.append(repr(_store(s3_env)))
    dead = _dead_endpoint()
    # Error texts: a missing object, an unreachable endpoint, a server that denies access.
    for exc_fn in (
        lambda: _store(s3_env).open(f"{ROOT}/missing.dcm"),
        lambda: list(
            S3Store(
                ROOT,
                endpoint_url=dead,
                key=secrets[0],
                secret=secrets[1],
                retries=1,
            ).list()
        ),
    ):
        with pytest.raises(StoreError) as info:
            exc_fn()
        texts.append(str(info.value))
    blob = "\n".join(texts)
    assert ROOT in blob and dead in blob  # the texts are the real ones
    for secret in secrets:
        assert secret not in blob


def test_wrong_credentials_are_a_clear_store_error(tmp_path: Path) -> None:
    # moto checks credentials only with INITIAL_NO_AUTH_ACTION_COUNT set: then any key that
    # its IAM does not know is refused (403 InvalidAccessKeyId), as a real server would.
    server = _start_server(server_env={"INITIAL_NO_AUTH_ACTION_COUNT": "0"})
    try:
        env = server.env()
        store = _store(env, root="s3://locked/p")
        with pytest.raises(StoreError, match="access denied") as info:
            list(store.list())
        assert not isinstance(info.value, StoreUnavailableError)
        assert env["QUALITY_S3_SECRET"] not in str(info.value)
        with pytest.raises(StoreError, match="access denied"):
            store.open("s3://locked/p/a.dcm")
    finally:
        server.close()


def test_unreachable_endpoint_is_unavailable() -> None:
    dead = _dead_endpoint()
    store = S3Store(
        "s3://demo/p", endpoint_url=dead, key="k", secret="s", retries=2, backoff_s=0.01
    )
    for call in (lambda: list(store.list()), lambda: store.open("s3://demo/p/a.dcm")):
        with pytest.raises(StoreUnavailableError, match=re.escape(dead) + ".*2 attempt"):
            call()


def test_concurrent_reads_from_threads(demo_bucket: str, demo_dir: Path) -> None:
    entries = list(open_store(demo_bucket).list())

    def read(uri: str) -> bytes:
        with store_for_uri(uri).open(uri) as fh:
            return fh.read()

    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=16) as pool:
        blobs = list(pool.map(read, [e.uri for e in entries] * 2))
    want = [(demo_dir / e.key).read_bytes() for e in entries] * 2
    assert blobs == want


# --------------------------------------------------------------------------- 4. faults


def _fault_server(
    demo_dir: Path, bucket: str, monkeypatch: pytest.MonkeyPatch, **env: str
) -> tuple[MotoServer, str]:
    """A server of its own (the test kills it), its settings in the environment."""
    server = _start_server()
    server.upload_folder(demo_dir, bucket, "run")
    for name, value in {**server.env(), **FAST, **env}.items():
        monkeypatch.setenv(name, value)
    _remote_store.cache_clear()
    return server, f"s3://{bucket}/run"


def _fail_from_entry(
    monkeypatch: pytest.MonkeyPatch, keys: list[str], first_bad: int, action: Callable[[], None]
) -> None:
    """Make ``action`` (kill/pause the server) happen once the parse of ``keys[first_bad]``
    or a later key starts, after every earlier key is parsed: the run fails exactly there."""
    real = dicom_mod.index_record
    cond = threading.Condition()
    state = {"done": 0, "fired": False}
    early = set(keys[:first_bad])

    def wrapped(path: str, *, salt: str) -> dict[str, Any]:
        key = path.split("/run/", 1)[1]
        if key not in early:
            with cond:
                cond.wait_for(lambda: state["done"] >= first_bad, timeout=60)
                if not state["fired"]:
                    state["fired"] = True
                    action()
            return real(path, salt=salt)
        try:
            return real(path, salt=salt)
        finally:
            with cond:
                state["done"] += 1
                cond.notify_all()

    monkeypatch.setattr(dicom_mod, "index_record", wrapped)


def test_server_killed_mid_ingest_then_rerun_completes(
    session: Session,
    demo_dir: Path,
    folder_ref: tuple[dict[str, Any], IngestSummary],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    ref, ref_summary = folder_ref
    real = dicom_mod.index_record
    server, root = _fault_server(demo_dir, "fault", monkeypatch)
    try:
        keys = [e.key for e in open_store(root).list()]
        first_bad = 8
        _fail_from_entry(monkeypatch, keys, first_bad, server.kill)
        with pytest.raises(StoreUnavailableError) as info:
            ingest(session, root, salt=SALT, workers=4, batch_size=3)
        message = str(info.value)
        assert root in message and server.endpoint_url in message
        assert "again to resume" in message and "\n" not in message

        # Exactly the files before the failure are committed, each row as a clean ingest's.
        part = _snapshot(session, root)
        assert {i["key"] for i in part["images"].values()} | set(part["errors"]) == set(
            keys[:first_bad]
        )
        for sop, row in part["images"].items():
            assert row == ref["images"][sop]
        for key, kind in part["errors"].items():
            assert ref["errors"][key] == kind  # no error rows for the outage itself
        for uid, row in part["series"].items():
            assert row == ref["series"][uid]
        ids_before = dict(session.execute(select(Image.sop_uid, Image.id)).tuples().all())

        # Restart on the same port (moto starts empty: upload again) and run again.
        monkeypatch.setattr(dicom_mod, "index_record", real)
        server.restart()
        server.upload_folder(demo_dir, "fault", "run")
        summary = ingest(session, root, salt=SALT, workers=4, batch_size=3)
    finally:
        server.close()
    assert summary.files_seen == summary.indexed + summary.unchanged + summary.errors
    assert summary.files_seen == ref_summary.files_seen
    assert summary.error_kinds == ref_summary.error_kinds
    assert _snapshot(session, root) == ref
    n_images, n_sops = session.execute(
        select(func.count(Image.id), func.count(func.distinct(Image.sop_uid)))
    ).one()
    assert n_images == n_sops == len(ref["images"])
    ids_after = dict(session.execute(select(Image.sop_uid, Image.id)).tuples().all())
    assert all(ids_after[sop] == i for sop, i in ids_before.items())  # updated in place


def test_hung_server_times_out_and_rerun_resumes(
    tmp_path: Path,
    demo_dir: Path,
    folder_ref: tuple[dict[str, Any], IngestSummary],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A server that accepts connections but never answers (SIGSTOP) is reported after the
    timeout and retries; its objects survive, so the rerun reads only what is missing."""
    ref, _ = folder_ref
    real = dicom_mod.index_record
    server, root = _fault_server(demo_dir, "hung", monkeypatch, QUALITY_STORE_TIMEOUT_S="1")
    try:
        keys = [e.key for e in open_store(root).list()]
        first_bad = 5
        _fail_from_entry(monkeypatch, keys, first_bad, server.pause)
        with _new_sqlite(tmp_path / "hung.db") as session:
            with pytest.raises(StoreUnavailableError, match="again to resume"):
                ingest(session, root, salt=SALT, workers=4, batch_size=2)
            part = _snapshot(session, root)
            assert len(part["images"]) + len(part["errors"]) == first_bad

            server.resume()
            monkeypatch.setattr(dicom_mod, "index_record", real)
            summary = ingest(session, root, salt=SALT, workers=4, batch_size=2)
            assert summary.unchanged == len(part["images"])
            assert summary.indexed == len(ref["images"]) - len(part["images"])
            assert summary.files_seen == summary.indexed + summary.unchanged + summary.errors
            assert _snapshot(session, root) == ref
    finally:
        server.close()


# --------------------------------------------------------------------------- 5. CLI


def _cli(*args: str, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    full = {k: v for k, v in os.environ.items() if not k.startswith(("QUALITY_", "AWS_"))}
    full.update(env)
    return subprocess.run(
        [sys.executable, "-m", "quality.cli", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=full,
        timeout=120,
        check=False,
    )


def test_cli_ingest_s3(
    demo_dir: Path, folder_ref: tuple[dict[str, Any], IngestSummary], tmp_path: Path
) -> None:
    _, ref_summary = folder_ref
    server = _start_server()
    try:
        server.upload_folder(demo_dir, "cli", "p")
        env = {**server.env(), **FAST}
        db = f"sqlite:///{tmp_path / 'cli.db'}"
        ok = _cli("ingest", "s3://cli/p", "--db", db, "--json", env=env, cwd=tmp_path)
        assert ok.returncode == 0, ok.stderr
        payload = json.loads(ok.stdout)
        assert payload["store"] == "s3://cli/p"
        assert payload["files_seen"] == ref_summary.files_seen
        assert payload["indexed"] == ref_summary.indexed
        assert payload["error_kinds"] == dict(sorted(ref_summary.error_kinds.items()))
        assert env["QUALITY_S3_SECRET"] not in ok.stdout + ok.stderr

        server.stop()
        down = _cli("ingest", "s3://cli/p", "--db", db, "--json", env=env, cwd=tmp_path)
    finally:
        server.close()
    assert down.returncode == 2
    assert down.stdout == ""
    err = down.stderr.strip()
    assert err.count("\n") == 0, err
    assert "s3://cli/p" in err and server.endpoint_url in err
    assert "Traceback" not in err and env["QUALITY_S3_SECRET"] not in err
