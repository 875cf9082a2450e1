"""Tests of quality.store.dicomweb against a real Orthanc PACS (Debian ``orthanc`` +
``orthanc-dicomweb``), started on loopback by :mod:`orthanc_server`.

Without Orthanc the tests are skipped, or fail under ``QUALITY_REQUIRE_SERVICES=1`` (CI).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
import requests
from conftest import service_missing
from netutil import free_port
from orthanc_server import OrthancServer, orthanc_available
from PIL import Image as PILImage
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from quality import dicom
from quality.db.schema import Image, IngestError, Series, Source, Study
from quality.db.session import make_engine, upgrade
from quality.errors import StoreError, StoreUnavailableError
from quality.ingest import ingest
from quality.store import _remote_store, open_store, store_for_uri
from quality.store.dicomweb import DicomWebStore

SALT = "test-salt"
SYNTH_UID = "1.2.826.0.1.3680043.8.498.7770.{}"  # pydicom's example root, fixed numbers
RLE_FILES = ("MR_small_RLE.dcm", "SC_rgb_rle_2frame.dcm")  # lossless, bundled with pydicom


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(autouse=True)
def _fast_store(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Small retries for the stores that ``store_for_uri`` builds from the settings, and no
    credentials from the environment of the test run."""
    for key in list(os.environ):
        if key.startswith("QUALITY_DICOMWEB_"):
            monkeypatch.delenv(key)
    monkeypatch.setenv("QUALITY_STORE_RETRIES", "2")
    monkeypatch.setenv("QUALITY_STORE_BACKOFF_S", "0.01")
    monkeypatch.setenv("QUALITY_STORE_TIMEOUT_S", "10")
    _remote_store.cache_clear()
    yield
    _remote_store.cache_clear()


class _Pacs(OrthancServer):
    """An Orthanc that remembers what its upload of the tiny demo gave."""

    accepted = 0
    rejected = 0


def _start(storage: Path, **kwargs: Any) -> _Pacs:
    reason = orthanc_available()
    if reason is not None:
        service_missing(f"Orthanc with the DICOMweb plugin ({reason})")
    server = _Pacs(storage, **kwargs)
    try:
        server.start()
    except RuntimeError as exc:
        server.close()
        service_missing(f"Orthanc with the DICOMweb plugin (it did not start: {exc})")
    return server


def _store(root: str, **kwargs: Any) -> DicomWebStore:
    kwargs = {"retries": 2, "backoff_s": 0.01, "timeout_s": 10, **kwargs}
    return DicomWebStore(root, **kwargs)


def _uids(path: Path) -> tuple[str, str, str]:
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    return str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID), str(ds.SOPInstanceUID)


def _key(uri: str) -> tuple[str, str, str]:
    """(study, series, sop) of an entry URI."""
    parts = uri.split("/")
    return parts[-5], parts[-3], parts[-1]


@pytest.fixture(scope="module")
def local_files(tiny_demo: Path) -> dict[str, Path]:
    """SOP instance UID → file of the tiny demo (every file whose header can be read)."""
    out: dict[str, Path] = {}
    for path in sorted((tiny_demo / "dicom").rglob("*.dcm")):
        out[_uids(path)[2]] = path
    return out


@pytest.fixture(scope="module")
def pacs(tiny_demo: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[_Pacs]:
    """An Orthanc holding the tiny demo (its corrupt file rejected)."""
    server = _start(tmp_path_factory.mktemp("orthanc"))
    try:
        server.accepted, server.rejected = server.upload_folder(tiny_demo / "dicom")
        yield server
    finally:
        server.close()


def _write_synthetic(folder: Path) -> list[tuple[str, str, str]]:
    """One study with three series (3, 1 and 1 instances): more series than the capped
    server answers for one query."""
    folder.mkdir(parents=True, exist_ok=True)
    study = SYNTH_UID.format(1)
    out = []
    n = 0
    for series_no, count in ((1, 3), (2, 1), (3, 1)):
        series = SYNTH_UID.format(f"2.{series_no}")
        for _ in range(count):
            n += 1
            sop = SYNTH_UID.format(f"3.{n}")
            ds = Dataset()
            ds.file_meta = FileMetaDataset()
            ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
            ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
            ds.file_meta.MediaStorageSOPInstanceUID = sop
            ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
            ds.SOPInstanceUID, ds.StudyInstanceUID, ds.SeriesInstanceUID = sop, study, series
            ds.PatientID, ds.PatientName = "SYNTH1", "Synthetic^Patient"
            ds.StudyDate, ds.StudyTime, ds.Modality = "20230105", "101500", "OT"
            ds.SeriesNumber, ds.InstanceNumber = series_no, n
            ds.Rows = ds.Columns = 8
            ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
            ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
            ds.PixelData = bytes(range(n, n + 64))
            ds.save_as(folder / f"{n}.dcm", enforce_file_format=True)
            out.append((study, series, sop))
    return out


@pytest.fixture(scope="module")
def capped_pacs(
    tiny_demo: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[OrthancServer, list[tuple[str, str, str]], dict[str, Path]]]:
    """An Orthanc answering at most 2 resources per find (``LimitFindResults`` 1), holding
    the tiny demo, a study with three series and two RLE files from pydicom's test data.

    Yields the server, the (study, series, sop) of the extra files, and SOP → extra file.
    """
    extra = tmp_path_factory.mktemp("extra")
    synthetic = _write_synthetic(extra / "synthetic")
    rle: dict[str, Path] = {}
    for name in RLE_FILES:
        path = Path(pydicom.data.get_testdata_file(name))  # bundled: nothing is downloaded
        rle[_uids(path)[2]] = path
        (extra / "rle").mkdir(exist_ok=True)
        (extra / "rle" / name).write_bytes(path.read_bytes())
    server = _start(tmp_path_factory.mktemp("orthanc-capped"), limit_find_results=1)
    try:
        server.upload_folder(tiny_demo / "dicom")
        accepted, rejected = server.upload_folder(extra)
        assert (accepted, rejected) == (len(synthetic) + len(rle), 0)
        extras = synthetic + [_uids(p) for p in rle.values()]
        yield server, extras, rle
    finally:
        server.close()


# --------------------------------------------------------------------------- 1. ingest


def _snapshot(session: Session) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """Image, series and study rows keyed by UID, parent ids replaced by parent UIDs."""
    series_uid = dict(session.execute(select(Series.id, Series.series_uid)).all())
    study_uid = dict(session.execute(select(Study.id, Study.study_uid)).all())
    source = dict(session.execute(select(Source.id, Source.name)).all())
    images, series, studies = {}, {}, {}
    for row in session.execute(select(Image.__table__)).mappings():
        d = dict(row)
        d["series_uid"] = series_uid[d.pop("series_id")]
        images[d["sop_uid"]] = d
    for row in session.execute(select(Series.__table__)).mappings():
        d = dict(row)
        d["study_uid"] = study_uid[d.pop("study_id")]
        series[d["series_uid"]] = d
    for row in session.execute(select(Study.__table__)).mappings():
        d = dict(row)
        d["source"] = source.get(d.pop("source_id"))
        studies[d["study_uid"]] = d
    return images, series, studies


def _drop(rows: dict[str, Any], *keys: str) -> dict[str, Any]:
    return {uid: {k: v for k, v in row.items() if k not in keys} for uid, row in rows.items()}


@pytest.fixture(scope="module")
def folder_ref(
    tiny_demo: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[tuple[dict[str, Any], ...], dict[str, str], float]:
    """The folder ingest of the tiny demo: its snapshot, its error rows (uri → kind) and
    its files/s."""
    engine = make_engine(f"sqlite:///{tmp_path_factory.mktemp('folder') / 'folder.db'}")
    upgrade(engine)
    with Session(engine, expire_on_commit=False) as s:
        summary = ingest(s, str(tiny_demo / "dicom"), salt=SALT, workers=1)
        snap = _snapshot(s)
        errors = dict(s.execute(select(IngestError.uri, IngestError.kind)).all())
    engine.dispose()
    return snap, errors, summary.files_per_s


def test_ingest_matches_folder_ingest(
    session: Session,
    pacs: _Pacs,
    folder_ref: tuple[tuple[dict[str, Any], ...], dict[str, str], float],
    local_files: dict[str, Path],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    (f_images, f_series, f_studies), f_errors, folder_fps = folder_ref
    root = pacs.dicomweb_root + "?source=pacs"

    summary = ingest(session, root, salt=SALT)
    assert summary.store == pacs.dicomweb_root
    assert (summary.files_seen, summary.indexed, summary.errors) == (pacs.accepted,) * 2 + (0,)
    images, series, studies = _snapshot(session)

    # Every image the folder ingest indexed is indexed, with identical rows apart from
    # ids, uri, mtime and ingestion time.
    ignored = ("id", "uri", "file_mtime", "ingested_at")
    assert _drop(images, *ignored) == _drop(f_images, *ignored)
    assert _drop(series, "id") == _drop(f_series, "id")
    assert _drop(studies, "id", "source") == _drop(f_studies, "id", "source")
    assert {row["source"] for row in studies.values()} == {"pacs"}
    assert session.execute(select(Source.name)).scalars().all() == ["pacs"]
    assert all(row["file_mtime"] is None for row in images.values())
    for sop, row in images.items():
        study = series[row["series_uid"]]["study_uid"]
        path = f"/studies/{study}/series/{row['series_uid']}/instances/{sop}"
        assert row["uri"] == pacs.dicomweb_root + path
        assert row["file_size"] == local_files[sop].stat().st_size

    # The files Orthanc rejected are exactly the folder ingest's error rows; DICOMweb never
    # saw them, so it has no error rows at all.
    assert pacs.rejected == len(f_errors) == 1
    rejected = {str(p) for sop, p in local_files.items() if sop not in images}
    assert rejected == set(f_errors) and set(f_errors.values()) == {"truncated"}
    assert session.execute(select(func.count()).select_from(IngestError)).scalar_one() == 0

    # Second run: nothing is read again.
    opened: list[str] = []
    real_open = DicomWebStore.open

    def counting_open(self: DicomWebStore, uri: str) -> Any:
        opened.append(uri)
        return real_open(self, uri)

    monkeypatch.setattr(DicomWebStore, "open", counting_open)
    again = ingest(session, root, salt=SALT)
    assert (again.indexed, again.unchanged, again.errors) == (0, pacs.accepted, 0)
    assert opened == []
    assert session.execute(select(func.count()).select_from(Image)).scalar_one() == len(images)
    print(
        f"\ningest of tiny_demo: DICOMweb {summary.files_per_s:.0f} files/s, "
        f"folder {folder_fps:.0f} files/s"
    )


# --------------------------------------------------------------------------- 2. store


def test_listing_pages_at_every_level(
    pacs: _Pacs,
    capped_pacs: tuple[OrthancServer, list[tuple[str, str, str]], dict[str, Path]],
    local_files: dict[str, Path],
    caplog: pytest.LogCaptureFixture,
) -> None:
    entries = list(_store(pacs.dicomweb_root).list())
    keys = [_key(e.uri) for e in entries]
    assert keys == sorted(keys)
    # Every file Orthanc accepted (all but the truncated one), and nothing else.
    expected = sorted(_uids(p) for p in local_files.values())
    assert len(keys) == pacs.accepted == len(expected) - 1
    assert set(keys) < set(expected)
    source = f"pacs-127.0.0.1-{pacs.http_port}"
    for e in entries:
        assert (e.size, e.mtime) == (None, None)
        assert e.key == f"{source}/" + "/".join(_key(e.uri))
        assert e.uri.startswith(pacs.dicomweb_root + "/studies/")

    assert [_key(e.uri) for e in _store(pacs.dicomweb_root, page_size=2).list()] == keys

    capped, extras, _ = capped_pacs
    studies = requests.get(f"{capped.http_url}/dicom-web/studies", params={"limit": 1000})
    assert len(studies.json()) == 2  # the cap is real: paging alone cannot list 30 studies
    want = sorted(keys + extras)
    with caplog.at_level(logging.INFO, logger="quality.store.dicomweb"):
        for page_size in (2, 1000):
            got = [_key(e.uri) for e in _store(capped.dicomweb_root, page_size=page_size).list()]
            assert got == want
    messages = " ".join(r.getMessage() for r in caplog.records)
    assert "from the series metadata" in messages  # the 6-instance series
    assert "from the study metadata" in messages  # the 3-series study


def test_header_matches_local_header(pacs: _Pacs, local_files: dict[str, Path]) -> None:
    store = _store(pacs.dicomweb_root)
    for e in store.list():
        local = dicom.read_header(local_files[_key(e.uri)[2]])
        remote = dicom.read_header(e.uri)  # through store_for_uri → the header capability
        assert "PixelData" not in remote
        want = dicom.header_json(local)
        # Orthanc's metadata does not carry the file meta, so no transfer syntax.
        want.pop("TransferSyntaxUID")
        assert dicom.header_json(remote) == want
        assert store.header(e.uri).SOPInstanceUID == local.SOPInstanceUID


def test_open_returns_stored_bytes_and_pixels_match(
    pacs: _Pacs, local_files: dict[str, Path]
) -> None:
    store = _store(pacs.dicomweb_root)
    for e in store.list():
        path = local_files[_key(e.uri)[2]]
        with store.open(e.uri) as fp:
            assert fp.read() == path.read_bytes()
        remote, local = dicom.load_pixels(e.uri), dicom.load_pixels(path)
        np.testing.assert_array_equal(remote.frames, local.frames)
        assert (remote.photometric, remote.window_center) == (
            local.photometric,
            local.window_center,
        )
        assert store.local_path(e.uri) is None


def test_native_pixels_decoded_by_the_server(
    capped_pacs: tuple[OrthancServer, list[tuple[str, str, str]], dict[str, Path]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    server, _, rle = capped_pacs
    store = _store(server.dicomweb_root)
    uris = {}
    for sop, path in rle.items():
        study, series, _ = _uids(path)
        uri = f"{server.dicomweb_root}/studies/{study}/series/{series}/instances/{sop}"
        ds = pydicom.dcmread(path)
        assert ds.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.5"  # RLE: encapsulated
        assert store.native_pixels(uri) == ds.pixel_array.tobytes()
        uris[uri] = path

    # Every syntax Orthanc holds here decodes locally too (pydicom's RLE decoder), so a
    # missing decoder is simulated: load_pixels must then fall back to the server's frames.
    local = {uri: dicom.load_pixels(path) for uri, path in uris.items()}
    real_decode = dicom._decode
    refused: list[str] = []

    def no_compressed(ds: Dataset, photometric: str) -> Any:
        if ds.file_meta.TransferSyntaxUID != ExplicitVRLittleEndian:
            refused.append(str(ds.file_meta.TransferSyntaxUID))
            raise NotImplementedError("no decoder for this syntax in this test")
        return real_decode(ds, photometric)

    monkeypatch.setattr(dicom, "_decode", no_compressed)
    for uri, want in local.items():
        got = dicom.load_pixels(uri)
        np.testing.assert_array_equal(got.frames, want.frames)
        assert got.n_frames == want.n_frames
    assert len(refused) == len(uris)


def _local_thumb(path: Path, shape: tuple[int, int]) -> np.ndarray:
    disp = dicom.to_display(dicom.load_pixels(path))
    return np.asarray(PILImage.fromarray(disp).resize(shape[::-1], PILImage.BILINEAR), float)


def test_thumbnail_rendered_by_the_server(
    pacs: _Pacs,
    capped_pacs: tuple[OrthancServer, list[tuple[str, str, str]], dict[str, Path]],
    local_files: dict[str, Path],
) -> None:
    store = _store(pacs.dicomweb_root)
    correlated = 0
    for e in store.list():
        got = store.thumbnail(e.uri, 64)
        assert got is not None
        pixels, (rows, cols) = got
        local = dicom.read_header(local_files[_key(e.uri)[2]])
        assert (rows, cols) == (local.Rows, local.Columns)
        assert pixels.dtype == np.uint8 and pixels.ndim == 2 and max(pixels.shape) == 64
        ref = _local_thumb(local_files[_key(e.uri)[2]], pixels.shape)
        if ref.std() == 0:  # a blank image: the server's rendering is blank too
            assert pixels.std() == 0
            continue
        assert np.corrcoef(ref.ravel(), pixels.ravel().astype(float))[0, 1] > 0.8
        correlated += 1
    assert correlated >= pacs.accepted - 2

    # Never enlarged; a multi-frame colour image gives its first frame in grey.
    e = next(iter(store.list()))
    pixels, (rows, cols) = store.thumbnail(e.uri, 10_000) or (None, (0, 0))
    assert pixels is not None and pixels.shape == (rows, cols)
    server, _, rle = capped_pacs
    sop, path = next((s, p) for s, p in rle.items() if "2frame" in p.name)
    study, series, _ = _uids(path)
    uri = f"{server.dicomweb_root}/studies/{study}/series/{series}/instances/{sop}"
    pixels, shape = _store(server.dicomweb_root).thumbnail(uri, 32) or (None, (0, 0))
    assert pixels is not None and pixels.shape == (32, 32) and shape == (100, 100)


@pytest.fixture(scope="module")
def auth_pacs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OrthancServer]:
    """An Orthanc with basic auth (one user), holding one RLE file."""
    server = _start(tmp_path_factory.mktemp("orthanc-auth"), users={"reader": "s3cret-pw"})
    try:
        folder = tmp_path_factory.mktemp("auth-files")
        src = Path(pydicom.data.get_testdata_file(RLE_FILES[0]))
        (folder / src.name).write_bytes(src.read_bytes())
        assert server.upload_folder(folder) == (1, 0)
        yield server
    finally:
        server.close()


def test_basic_auth(auth_pacs: OrthancServer, monkeypatch: pytest.MonkeyPatch) -> None:
    root = auth_pacs.dicomweb_root
    with pytest.raises(StoreError, match=r"asks for credentials.*dicomweb_user") as info:
        list(_store(root).list())
    assert not isinstance(info.value, StoreUnavailableError)
    with pytest.raises(StoreError, match=r"refused the credentials.*dicomweb_password") as info:
        list(_store(root, user="reader", password="wrong-pw").list())
    assert "wrong-pw" not in str(info.value)

    entries = list(_store(root, user="reader", password="s3cret-pw").list())
    assert len(entries) == 1
    # The settings route, as ingest and the viewer use it: env → store_for_uri.
    monkeypatch.setenv("QUALITY_DICOMWEB_USER", "reader")
    monkeypatch.setenv("QUALITY_DICOMWEB_PASSWORD", "s3cret-pw")
    _remote_store.cache_clear()
    assert dicom.read_header(entries[0].uri).Rows == 64
    with store_for_uri(entries[0].uri).open(entries[0].uri) as fp:
        assert fp.read(132)[128:] == b"DICM"


def test_bearer_token_is_sent(auth_pacs: OrthancServer) -> None:
    store = _store(auth_pacs.dicomweb_root, token="tok-123")
    sent: list[str | None] = []
    store._session().hooks["response"].append(
        lambda r, *args, **kwargs: sent.append(r.request.headers.get("Authorization"))
    )
    with pytest.raises(StoreError, match=r"refused the credentials.*dicomweb_token") as info:
        list(store.list())
    assert "tok-123" not in str(info.value)
    assert sent and set(sent) == {"Bearer tok-123"}


# --------------------------------------------------------------------------- 3. URIs


def test_root_uri_and_source() -> None:
    store = DicomWebStore("dicomweb+http://127.0.0.1:8042/dicom-web/?source=east_imaging")
    assert store.root == "dicomweb+http://127.0.0.1:8042/dicom-web"
    assert store.source == "east_imaging"
    assert DicomWebStore("dicomweb+http://127.0.0.1:8042/dicom-web").source == (
        "pacs-127.0.0.1-8042"
    )
    assert DicomWebStore("dicomweb+https://PACS.example/wado").source == "pacs-pacs.example-443"
    assert isinstance(open_store("dicomweb+http://127.0.0.1:8042/dicom-web"), DicomWebStore)
    bad = {
        "dicomweb+http://admin:hunter2@pacs:8042/dicom-web": "QUALITY_DICOMWEB_USER",
        "dicomweb+http:///dicom-web": "no host",
        "dicomweb+http://pacs/dicom-web?source=a/b": "source name",
        "dicomweb+http://pacs/dicom-web?user=x": "query parameter",
        "dicomweb+http://pacs/dicom-web/studies/1.2": "DICOMweb root",
        "dicomweb+http://pacs/a/../b": "'..'",
        "dicomweb+http://pacs:99999/dicom-web": "malformed",
    }
    for uri, message in bad.items():
        with pytest.raises(StoreError, match=message) as info:
            DicomWebStore(uri)
        assert "hunter2" not in str(info.value)


def test_entry_uris_cannot_escape_the_root() -> None:
    # Nothing listens here: a request would be StoreUnavailableError, not plain StoreError.
    root = f"dicomweb+http://127.0.0.1:{free_port()}/dicom-web"
    store = _store(root, retries=1)
    good = f"{root}/studies/1.2.3/series/1.2.4/instances/1.2.5"
    assert store._parse_entry(good) == ("1.2.3", "1.2.4", "1.2.5")
    bad = [
        good.replace("127.0.0.1", "10.0.0.1"),  # another host
        good.replace("/dicom-web/", "/other/"),  # another root
        good.replace("/dicom-web/", "/dicom-web2/"),
        "s3://bucket/studies/1.2.3/series/1.2.4/instances/1.2.5",
        f"{root}/studies/1.2.3/series/1.2.4/instances/../../../../system",
        f"{root}/studies/../series/1.2.4/instances/1.2.5",
        f"{root}/studies/1.2.3/series/1.2.4/instances/1.2.5/frames/1",  # extra segments
        f"{root}/studies/1.2.3/series/1.2.4/instances/1.2.5/rendered",
        f"{root}/studies/1.2.3/series/1.2.4",
        f"{root}/studies/1.2.3/series/1.2.4/instances/1.2.5?x=1",
        f"{root}/studies/1.2.3/series/1.2.4/instances/1.2.5#f",
        f"{root}/studies/1.2.3/series/1.2.4/instances/%2e%2e",
        f"{root}/studies/1.2.x/series/1.2.4/instances/1.2.5",  # not digits and dots
        f"{root}/studies/1..2/series/1.2.4/instances/1.2.5",
        f"{root}/studies/1.2./series/1.2.4/instances/1.2.5",
        f"{root}/studies//series/1.2.4/instances/1.2.5",
        f"{root}/studies/1.2.3/series/1.2.4/instances/" + "1." * 40 + "1",  # > 64 chars
    ]
    calls = [store.open, store.header, store.native_pixels, lambda u: store.thumbnail(u, 64)]
    for uri in bad:
        for call in calls:
            with pytest.raises(StoreError) as info:
                call(uri)
            assert not isinstance(info.value, StoreUnavailableError), uri
    with pytest.raises(StoreUnavailableError, match=r"127\.0\.0\.1:\d+ refused the connection"):
        store.open(good)


# --------------------------------------------------------------------------- 4. faults


def test_server_killed_mid_ingest(
    session: Session, tiny_demo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = _start(tmp_path / "orthanc")
    try:
        accepted, _ = server.upload_folder(tiny_demo / "dicom")
        root = server.dicomweb_root + "?source=pacs"
        # Loopback reads of the tiny demo are so fast that every file could be read before
        # the kill: reads after the 8th wait until the server is dead, then go to it.
        killed = threading.Event()
        started: list[str] = []
        lock = threading.Lock()
        real_open = DicomWebStore.open

        def gated_open(self: DicomWebStore, uri: str) -> Any:
            with lock:
                started.append(uri)
                late = len(started) > 8
            if late:
                killed.wait(30)
            return real_open(self, uri)

        def progress(done: int, total: int, _stage: str) -> None:
            if done >= 4 and not killed.is_set():
                server.kill()
                killed.set()

        monkeypatch.setattr(DicomWebStore, "open", gated_open)
        t0 = time.monotonic()
        with pytest.raises(StoreUnavailableError) as info:
            ingest(session, root, salt=SALT, batch_size=4, workers=4, progress=progress)
        assert time.monotonic() - t0 < 120  # it fails, it does not hang (generous bound)
        message = str(info.value)
        assert f"127.0.0.1:{server.http_port}" in message
        assert "run the same ingest again" in message
        kept = session.execute(select(func.count()).select_from(Image)).scalar_one()
        assert 4 <= kept <= 8
        assert session.execute(select(func.count()).select_from(IngestError)).scalar_one() == 0

        server.restart()  # same port and storage; the killed process has exited
        _remote_store.cache_clear()
        monkeypatch.setattr(DicomWebStore, "open", real_open)
        summary = ingest(session, root, salt=SALT, batch_size=4, workers=4)
        assert (summary.indexed + summary.unchanged, summary.errors) == (accepted, 0)
        assert summary.unchanged == kept
        sops = session.execute(select(Image.sop_uid)).scalars().all()
        assert len(sops) == len(set(sops)) == accepted
        assert session.execute(select(func.count()).select_from(IngestError)).scalar_one() == 0
    finally:
        server.close()


# --------------------------------------------------------------------------- 5. CLI


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("QUALITY_")}
    env.update(QUALITY_STORE_RETRIES="2", QUALITY_STORE_BACKOFF_S="0.01")
    return subprocess.run(
        [sys.executable, "-m", "quality.cli", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
        timeout=120,
        check=False,
    )


def test_cli_ingest(tiny_demo: Path, tmp_path: Path) -> None:
    server = _start(tmp_path / "orthanc")
    try:
        accepted, _ = server.upload_folder(tiny_demo / "dicom")
        uri = server.dicomweb_root + "?source=pacs"
        db = f"sqlite:///{tmp_path / 'cli.db'}"
        res = _cli("ingest", uri, "--db", db, "--json", cwd=tmp_path)
        assert res.returncode == 0, res.stderr
        summary = json.loads(res.stdout)
        assert summary["store"] == server.dicomweb_root
        assert (summary["files_seen"], summary["indexed"], summary["errors"]) == (
            accepted,
            accepted,
            0,
        )

        server.stop()
        res = _cli("ingest", uri, "--db", db, "--json", cwd=tmp_path)
        assert res.returncode == 2
        assert "Traceback" not in res.stderr
        lines = [line for line in res.stderr.splitlines() if line.strip()]
        assert len(lines) == 1, res.stderr
        assert f"127.0.0.1:{server.http_port}" in lines[0]
        assert "refused the connection" in lines[0]
    finally:
        server.close()


def test_dates_of_the_capped_split_are_sane() -> None:
    """The StudyDate/StudyTime parts cover what they split, without overlap."""
    from quality.store.dicomweb import _Part

    def item(date: str, time: str) -> dict[str, Any]:
        return {"00080020": {"Value": [date]}, "00080030": {"Value": [time]}}

    whole = _Part()
    parts = whole.split([item("20240101", "1000"), item("20240105", "120000")])
    assert [p.filters() for p in parts] == [
        {"StudyDate": "-20240101"},
        {"StudyDate": "20240102-"},
    ]
    day = dt.date(2024, 3, 22)
    parts = _Part(day, day).split([item("20240322", "094009"), item("20240322", "120714")])
    assert [p.filters() for p in parts] == [
        {"StudyDate": "20240322", "StudyTime": "-094009.999999"},
        {"StudyDate": "20240322", "StudyTime": "094010-"},
    ]
    one = _Part(day, day, 3600, 3600)
    assert one.split([item("20240322", "010000")]) == []
