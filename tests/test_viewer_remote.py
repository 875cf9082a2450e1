"""Images in remote stores stay viewable and scorable: the Browser page and the scorer on the
tiny demo with its ``images.uri`` pointing into moto's S3 server and into an Orthanc PACS.

The tiny demo DB (annotations, predictions, datasets) is copied and its image URIs are moved
to the remote store holding the same files, as a team does when its images move to a bucket
or a PACS. Each test then opens the Browser as an admin and checks that the viewer draws the
image and the (PHI-masked) header, without a warning; and that the scorer reads remote URIs
into exactly the metrics it computes from the local files.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from conftest import service_missing
from orthanc_server import OrthancServer, orthanc_available
from s3_server import MotoServer, moto_available
from sqlalchemy import create_engine, select, update
from sqlalchemy.orm import Session
from streamlit.testing.v1 import AppTest
from test_app_pages import APP, ROOT, TIMEOUT

from quality.db.schema import Image, Series, Study
from quality.dicom import MASK
from quality.store import _remote_store
from quality.ui import data, thumbs

BUCKET, PREFIX = "remote-view", "demo"
FAST = {
    "QUALITY_STORE_RETRIES": "2",
    "QUALITY_STORE_BACKOFF_S": "0.05",
    "QUALITY_STORE_TIMEOUT_S": "10",
}


@pytest.fixture(scope="module")
def moto(tiny_demo: Path) -> Iterator[MotoServer]:
    reason = moto_available()
    if reason is not None:
        service_missing(f"moto S3 server ({reason})")
    server = MotoServer()
    try:
        server.start()
    except (RuntimeError, OSError) as exc:
        server.close()
        service_missing(f"moto S3 server (it did not start: {exc})")
    server.upload_folder(tiny_demo / "dicom", BUCKET, PREFIX)
    yield server
    server.close()


@pytest.fixture(scope="module")
def pacs(tiny_demo: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[OrthancServer]:
    reason = orthanc_available()
    if reason is not None:
        service_missing(f"Orthanc with the DICOMweb plugin ({reason})")
    server = OrthancServer(tmp_path_factory.mktemp("orthanc-view"))
    try:
        server.start()
    except (RuntimeError, OSError) as exc:
        server.close()
        service_missing(f"Orthanc with the DICOMweb plugin (it did not start: {exc})")
    server.upload_folder(tiny_demo / "dicom")
    yield server
    server.close()


@pytest.fixture(autouse=True)
def _clean(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    for name, value in FAST.items():
        monkeypatch.setenv(name, value)
    for key in ("QUALITY_DICOMWEB_USER", "QUALITY_DICOMWEB_PASSWORD", "QUALITY_DICOMWEB_TOKEN"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("QUALITY_THUMB_CACHE_DIR", str(tmp_path / "thumbs"))
    monkeypatch.chdir(ROOT)
    _remote_store.cache_clear()
    data.clear_caches()
    thumbs.clear_caches()
    yield
    _remote_store.cache_clear()
    data.clear_caches()


def _moved_db(tiny_demo: Path, tmp_path: Path, to_remote) -> tuple[str, dict[str, str]]:
    """A copy of the tiny demo DB whose image URIs ``to_remote(row)`` moved; local → remote."""
    shutil.copyfile(tiny_demo / "demo.db", tmp_path / "demo.db")
    url = f"sqlite:///{tmp_path / 'demo.db'}"
    engine = create_engine(url)
    moved: dict[str, str] = {}
    with Session(engine) as session:
        rows = session.execute(
            select(Image.id, Image.uri, Image.sop_uid, Series.series_uid, Study.study_uid)
            .join(Series, Image.series_id == Series.id)
            .join(Study, Series.study_id == Study.id)
        ).all()
        for image_id, uri, sop, series_uid, study_uid in rows:
            if not Path(uri).is_file():
                continue  # the demo's deliberately missing file stays missing
            remote = to_remote(uri, study_uid, series_uid, sop)
            moved[uri] = remote
            session.execute(update(Image).where(Image.id == image_id).values(uri=remote))
        session.commit()
    engine.dispose()
    return url, moved


def _s3_uri(tiny_demo: Path):
    root = (tiny_demo / "dicom").resolve()

    def to_remote(uri: str, *_: str) -> str:
        key = Path(uri).resolve().relative_to(root).as_posix()
        return f"s3://{BUCKET}/{PREFIX}/{key}"

    return to_remote


def _dicomweb_uri(pacs: OrthancServer):
    def to_remote(uri: str, study: str, series: str, sop: str) -> str:
        return f"{pacs.dicomweb_root}/studies/{study}/series/{series}/instances/{sop}"

    return to_remote


def _browse(url: str, monkeypatch: pytest.MonkeyPatch) -> AppTest:
    monkeypatch.setenv("QUALITY_DB_URL", url)
    at = AppTest.from_file(APP, default_timeout=TIMEOUT)
    at.session_state["role"] = "admin"
    at.run()
    at.switch_page("pages/browser.py").run()
    return at


def _check_viewer(at: AppTest, remote_prefix: str) -> None:
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]
    problems = [w.value for w in at.warning if "display" in w.value or "store" in w.value]
    assert not problems, problems
    assert len(at.get("plotly_chart")) >= 1  # the image itself
    headers = [df.value for df in at.dataframe if "keyword" in getattr(df.value, "columns", [])]
    assert headers, "the header table is missing"
    header = headers[0].set_index("keyword")
    assert header.loc["PatientName", "value"] == MASK  # PHI stays masked over every store
    assert header.loc["Modality", "value"] not in ("", MASK)


def test_browser_views_images_in_s3(
    moto: MotoServer, tiny_demo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in moto.env().items():
        monkeypatch.setenv(name, value)
    url, moved = _moved_db(tiny_demo, tmp_path, _s3_uri(tiny_demo))
    assert moved and all(v.startswith("s3://") for v in moved.values())
    _check_viewer(_browse(url, monkeypatch), "s3://")


def test_browser_views_images_in_a_pacs(
    pacs: OrthancServer, tiny_demo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url, moved = _moved_db(tiny_demo, tmp_path, _dicomweb_uri(pacs))
    assert moved and all(v.startswith("dicomweb+http://") for v in moved.values())
    _check_viewer(_browse(url, monkeypatch), "dicomweb+http://")


def test_scorer_reads_remote_uris_like_local_files(
    moto: MotoServer,
    pacs: OrthancServer,
    tiny_demo: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from quality.imaging.score import score_uris

    for name, value in moto.env().items():
        monkeypatch.setenv(name, value)
    _, to_s3 = _moved_db(tiny_demo, tmp_path, _s3_uri(tiny_demo))
    (tmp_path / "dw").mkdir()
    _, to_dw = _moved_db(tiny_demo, tmp_path / "dw", _dicomweb_uri(pacs))
    local = sorted(to_s3)[:4]
    ref = score_uris(local, device="cpu")
    assert all("error_kind" not in r for r in ref), ref
    for moved in (to_s3, to_dw):
        got = score_uris([moved[u] for u in local], device="cpu")
        for r, g in zip(ref, got, strict=True):
            assert "error_kind" not in g, g
            assert g["defect_type"] == r["defect_type"]
            assert g["quality_score"] == pytest.approx(r["quality_score"], abs=1e-6)
            np.testing.assert_allclose(g["embedding"], r["embedding"], atol=1e-6)
