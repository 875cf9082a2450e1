"""AppTest for every page: a populated DB, an empty DB, and an unreachable DB.

The populated DB is the example DB of ``test_queries`` on a temporary SQLite file, with small
DICOM files written by pydicom at its image URIs: S1 holds a 12-bit MONOCHROME2 CR with a
header window and a MONOCHROME1 CR with a VOI LUT sequence, S2 a DX without a window (auto),
S3 three CT slices in HU, and S4's file is not DICOM at all (the viewer must say so).

A Streamlit quirk shapes these tests: with a ``pages/`` folder next to ``app.py``, runs after
the first one (``switch_page``, widget changes) execute the page file alone, as legacy
multipage mode does (a fresh server does the same for a deep link). Every page's
``router.page_guard`` then runs the router itself, so menu, sidebar and role checks are there
on every run; ``test_reruns_keep_router_and_sidebar`` pins that down.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from sqlalchemy.orm import Session
from streamlit.testing.v1 import AppTest
from test_queries import add_example_rows, example_uri

from quality.db.session import make_engine, upgrade
from quality.ui import data

ROOT = Path(__file__).resolve().parent.parent
APP = str(ROOT / "app.py")
TIMEOUT = 30
UNREACHABLE = "postgresql+psycopg://nobody@127.0.0.1:1/x"


def write_dicom(
    path: Path,
    pixels: np.ndarray,
    *,
    modality: str,
    photometric: str = "MONOCHROME2",
    window: tuple[float, float] | None = None,
    rescale: tuple[float, float] | None = None,
    voi_lut: bool = False,
    instance: int = 1,
) -> None:
    """A small valid DICOM file (uint16 pixels) with a fake patient name to be masked."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.PatientName, ds.PatientID = "Doe^Jane", "SECRET-ID-42"
    ds.Modality, ds.InstanceNumber = modality, instance
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    if window:
        ds.WindowCenter, ds.WindowWidth = window
    if rescale:
        ds.RescaleSlope, ds.RescaleIntercept = rescale
    if voi_lut:
        item = Dataset()
        item.LUTDescriptor = [256, 0, 8]
        item.add_new("LUTData", "US", [int(255 * (v / 255) ** 0.5) for v in range(256)])
        ds.VOILUTSequence = Sequence([item])
    ds.PixelData = pixels.astype(np.uint16).tobytes()
    ds.save_as(path, enforce_file_format=True)


def _ramp(n: int = 32, top: int = 4000) -> np.ndarray:
    return np.linspace(0, top, n * n).reshape(n, n)


@pytest.fixture
def populated_url(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path / 'app.db'}"
    engine = make_engine(url)
    upgrade(engine)
    with Session(engine) as s:
        add_example_rows(s, tmp_path)
    engine.dispose()
    write_dicom(Path(example_uri(tmp_path, "S1", 0)), _ramp(), modality="CR", window=(2000, 4000))
    write_dicom(
        Path(example_uri(tmp_path, "S1", 1)), _ramp(top=255), modality="CR",
        photometric="MONOCHROME1", voi_lut=True,
    )  # fmt: skip
    write_dicom(Path(example_uri(tmp_path, "S2", 0)), _ramp(48), modality="DX")
    for i in range(3):
        write_dicom(
            Path(example_uri(tmp_path, "S3", i)), _ramp(top=2000) + 100 * i, modality="CT",
            rescale=(1.0, -1024.0), window=(40, 400), instance=i + 1,
        )  # fmt: skip
    Path(example_uri(tmp_path, "S4", 0)).write_bytes(b"this is not a DICOM file")
    return url


@pytest.fixture(autouse=True)
def _fresh_caches(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.chdir(ROOT)
    data.clear_caches()
    yield
    data.clear_caches()


def _run_app(
    monkeypatch: pytest.MonkeyPatch, url: str, role: str = "admin", dataset: int | None = None
) -> AppTest:
    """Run the router once; ``dataset`` presets the sidebar picker (-1: all images)."""
    monkeypatch.setenv("QUALITY_DB_URL", url)
    at = AppTest.from_file(APP, default_timeout=TIMEOUT)
    at.session_state["role"] = role
    if dataset is not None:
        at.session_state["_dataset_id_picker"] = dataset
    return at.run()


def _texts(at: AppTest) -> str:
    parts = [e.value for kind in (at.error, at.info, at.warning, at.success) for e in kind]
    return "\n".join(str(p) for p in parts)


def _no_exception(at: AppTest) -> None:
    assert not at.exception, [e.value for e in at.exception]


# ---------------------------------------------------------------------- populated DB


def test_overview_on_populated_db(monkeypatch: pytest.MonkeyPatch, populated_url: str) -> None:
    at = _run_app(monkeypatch, populated_url)
    _no_exception(at)
    assert at.title[0].value.endswith("Overview")
    assert not at.error
    metrics = {m.label: m.value for m in at.metric[:6]}  # whole-DB totals come first
    assert metrics["Images"] == "7" and metrics["Ingest errors"] == "3"
    assert "chest" in " ".join(s.value for s in at.subheader)
    # The sidebar: role picker, then the dataset picker on the first dataset.
    role, picker = at.sidebar.selectbox
    assert role.label.startswith("Demo mode") and role.value == "admin"
    assert picker.label == "Dataset" and picker.value == 1
    assert picker.options == ["chest", "empty-ds", "All images"]
    assert at.session_state["dataset_id"] == 1


def test_reruns_keep_router_and_sidebar(
    monkeypatch: pytest.MonkeyPatch, populated_url: str
) -> None:
    at = _run_app(monkeypatch, populated_url)
    at.sidebar.selectbox[1].set_value(-1).run()
    _no_exception(at)
    assert at.session_state["dataset_id"] is None
    assert len(at.sidebar.selectbox) == 2
    at.switch_page("pages/browser.py").run()
    _no_exception(at)
    assert at.title[0].value.endswith("Browser")
    assert at.sidebar.selectbox[1].value == -1
    # A clinician picked on a rerun: the Browser stays; the menu has only that page.
    at.sidebar.selectbox[0].set_value("clinician").run()
    _no_exception(at)
    assert at.title[0].value.endswith("Browser")
    assert at.session_state["role"] == "clinician"


def test_overview_all_images(monkeypatch: pytest.MonkeyPatch, populated_url: str) -> None:
    at = _run_app(monkeypatch, populated_url, dataset=-1)
    _no_exception(at)
    assert at.session_state["dataset_id"] is None
    assert "all images" in " ".join(s.value for s in at.subheader)


def test_browser_journey(monkeypatch: pytest.MonkeyPatch, populated_url: str) -> None:
    at = _run_app(monkeypatch, populated_url)
    at.switch_page("pages/browser.py").run()
    _no_exception(at)
    assert at.title[0].value.endswith("Browser")
    # Dataset "chest" (picked by default) holds S1-S3; the newest study (CT) comes first.
    assert "of <b>3</b> studies" in _markdown(at)
    study = at.selectbox(key="browser_study")
    assert study.value == "1.2.826.0.1.3"
    # CT series: three slices, header window by default; then the lung preset, then manual.
    assert at.slider(key="browser_slice_1.2.826.0.2.3").value == 1
    assert "Header window" in _captions(at)
    assert not at.main.warning  # the sidebar warns that demo mode has no sign-in
    at.selectbox(key="browser_viewer_preset").set_value("Lung").run()
    _no_exception(at)
    assert "Lung preset" in _captions(at)
    at.selectbox(key="browser_viewer_preset").set_value("Manual").run()
    _no_exception(at)
    assert "Manual window" in _captions(at)
    at.slider(key="browser_slice_1.2.826.0.2.3").set_value(3).run()
    _no_exception(at)
    # The header table masks the patient's name and ID.
    header = at.dataframe[-1].value
    masked = header.set_index("keyword").loc[["PatientName", "PatientID"], "value"]
    assert set(masked) == {"«masked»"}
    assert "SECRET-ID-42" not in header.to_string()


def test_browser_filters_voi_lut_and_monochrome1(
    monkeypatch: pytest.MonkeyPatch, populated_url: str
) -> None:
    at = _run_app(monkeypatch, populated_url)
    at.switch_page("pages/browser.py").run()
    at.multiselect(key="browser_modalities").set_value(["CR"]).run()
    _no_exception(at)
    assert at.selectbox(key="browser_study").value == "1.2.826.0.1.1"
    assert len(at.selectbox(key="browser_study").options) == 1
    at.selectbox(key="browser_viewer_preset").set_value("Header / Auto").run()
    assert "Header window" in _captions(at)
    at.slider(key="browser_slice_1.2.826.0.2.1").set_value(2).run()
    _no_exception(at)
    captions = _captions(at)
    assert "VOI LUT applied" in captions and "MONOCHROME1 inverted" in captions


def test_browser_unreadable_file_and_pagination(
    monkeypatch: pytest.MonkeyPatch, populated_url: str
) -> None:
    at = _run_app(monkeypatch, populated_url, dataset=-1)  # all images: S4 is in no dataset
    at.switch_page("pages/browser.py").run()
    assert "of <b>4</b> studies" in _markdown(at)
    at.selectbox(key="browser_page_size").set_value(50).run()
    at.selectbox(key="browser_study").set_value("1.2.826.0.1.4").run()
    _no_exception(at)
    assert "Cannot display" in _texts(at)
    assert "Cannot read the header" in _texts(at)


def test_role_matrix_in_menu_and_page(monkeypatch: pytest.MonkeyPatch, populated_url: str) -> None:
    at = _run_app(monkeypatch, populated_url, role="clinician")
    _no_exception(at)
    # A clinician lands on the Overview (every role's landing page, counts only) ...
    assert at.title[0].value.endswith("Overview")
    # ... and the Doctors page itself refuses them when opened directly.
    monkeypatch.setenv("QUALITY_DB_URL", populated_url)
    page = AppTest.from_file(str(ROOT / "pages" / "doctors.py"), default_timeout=TIMEOUT)
    page.session_state["role"] = "clinician"
    page.session_state["_routed_by_app"] = True  # as if the router had switched to it
    page.run()
    _no_exception(page)
    assert "cannot open this page" in _texts(page)
    assert not page.metric and not page.dataframe

    lm = _run_app(monkeypatch, populated_url, role="labeling manager")
    assert lm.title[0].value.endswith("Overview")


# ---------------------------------------------------------------------- empty / unreachable


@pytest.mark.parametrize("page", ["pages/overview.py", "pages/browser.py"])
@pytest.mark.parametrize("schema", [False, True], ids=["no-schema", "no-rows"])
def test_empty_db_shows_message(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, page: str, schema: bool
) -> None:
    url = f"sqlite:///{tmp_path / 'empty.db'}"
    if schema:
        engine = make_engine(url)
        upgrade(engine)
        engine.dispose()
    at = _run_app(monkeypatch, url)
    at.switch_page(page).run()
    _no_exception(at)
    assert at.info, "expected an info message"
    assert "has no data yet" in at.info[0].value
    assert "quality demo" in at.info[0].value


@pytest.mark.parametrize("page", ["pages/overview.py", "pages/browser.py"])
def test_unreachable_db_shows_error(monkeypatch: pytest.MonkeyPatch, page: str) -> None:
    at = _run_app(monkeypatch, UNREACHABLE)
    at.switch_page(page).run()
    _no_exception(at)
    assert at.error, "expected an error message"
    assert "Cannot reach the database" in at.error[0].value
    assert "127.0.0.1:1" in at.error[0].value


def test_malformed_db_url_shows_error(monkeypatch: pytest.MonkeyPatch) -> None:
    at = _run_app(monkeypatch, "nosuchdialect://x")
    _no_exception(at)
    assert "Cannot reach the database" in _texts(at)


def _captions(at: AppTest) -> str:
    return "\n".join(c.value for c in at.caption)


def _markdown(at: AppTest) -> str:
    return "\n".join(m.value for m in at.markdown)
