"""AppTest of :func:`quality.ui.viewer.render_image_viewer` with overlays, on generated DICOMs.

A tiny script (written to ``tmp_path``) calls the viewer with what ``st.session_state["spec"]``
holds: a URI or a list of URIs, overlays and hidden groups. The tests read the plotly figure
the viewer sends (its JSON spec): the image trace (a PNG data URI placed with ``x0``/``dx``),
one rectangle shape per visible box, one contour trace per visible mask, the corner labels.
"""

from __future__ import annotations

import base64
import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import streamlit as st
from PIL import Image as PILImage
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from streamlit.testing.v1 import AppTest

from quality.overlays import Overlay
from quality.ui import viewer

TIMEOUT = 30
SCRIPT = """
import streamlit as st

from quality.ui import viewer

spec = st.session_state["spec"]
viewer.render_image_viewer(
    spec["uri"], key="v", overlays=spec.get("overlays", ()), hidden_groups=spec.get("hidden", ())
)
"""


def write_dicom(
    path: Path,
    pixels: np.ndarray,
    *,
    modality: str = "DX",
    photometric: str = "MONOCHROME2",
    bits: int = 16,
    rescale: tuple[float, float] | None = None,
    window: tuple[float, float] | None = None,
    instance: int = 1,
    position: tuple[float, float, float] | None = None,
) -> str:
    """A valid single-frame DICOM file with unsigned 16-bit storage; returns its path."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.Modality, ds.InstanceNumber = modality, instance
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, bits, bits - 1, 0
    if rescale:
        ds.RescaleSlope, ds.RescaleIntercept = rescale
    if window:
        ds.WindowCenter, ds.WindowWidth = window
    if position:
        ds.ImagePositionPatient = list(position)
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.PixelData = np.ascontiguousarray(pixels, dtype=np.uint16).tobytes()
    ds.save_as(path, enforce_file_format=True)
    return str(path)


def _ramp(n: int, top: int = 4000) -> np.ndarray:
    return np.linspace(0, top, n * n).reshape(n, n)


@pytest.fixture(autouse=True)
def _fresh_caches() -> Iterator[None]:
    st.cache_data.clear()
    st.cache_resource.clear()
    yield
    st.cache_data.clear()
    st.cache_resource.clear()


@pytest.fixture
def script(tmp_path: Path) -> str:
    path = tmp_path / "viewer_app.py"
    path.write_text(SCRIPT)
    return str(path)


def _run(script: str, spec: dict[str, Any]) -> AppTest:
    at = AppTest.from_file(script, default_timeout=TIMEOUT)
    at.session_state["spec"] = spec
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def _figure(at: AppTest) -> dict[str, Any]:
    charts = at.get("plotly_chart")
    assert len(charts) == 1
    return json.loads(charts[0].proto.spec)


def _rects(fig: dict[str, Any]) -> list[dict[str, Any]]:
    return [s for s in fig["layout"].get("shapes", []) if s.get("type") == "rect"]


def _contours(fig: dict[str, Any]) -> list[dict[str, Any]]:
    return [t for t in fig["data"] if t.get("type") == "scatter" and t.get("meta")]


def _pixels(fig: dict[str, Any]) -> np.ndarray:
    (image,) = [t for t in fig["data"] if t["type"] == "image"]
    raw = base64.b64decode(image["source"].split(",", 1)[1])
    return np.asarray(PILImage.open(io.BytesIO(raw)))


def _captions(at: AppTest) -> str:
    return "\n".join(c.value for c in at.caption)


SQUARE = np.zeros((64, 64), dtype=bool)
SQUARE[16:32, 8:40] = True


def _overlays() -> list[Overlay]:
    return [
        Overlay("prediction", "m v1", label="nodule", bbox=(4, 6, 20, 30), score=0.87),
        Overlay("prediction", "m v2", label="opacity", mask=SQUARE, score=0.61),
        Overlay("prediction", "m v3", label="normal", score=0.12),  # image-level
        Overlay("annotation", "D01", label="nodule", bbox=(5, 5, 21, 29), task="box"),
        Overlay("annotation", "D02", label="nodule", bbox=(3, 7, 19, 31), task="box"),
        Overlay("annotation", "D02", label="opacity", mask=np.ones((8, 8), bool)),  # wrong size
        Overlay("reference", "gold", label="nodule", bbox=(4, 5, 20, 30), task="box"),
    ]


def test_boxes_masks_labels_and_colours(script: str, tmp_path: Path) -> None:
    uri = write_dicom(tmp_path / "a.dcm", _ramp(64), bits=12)
    at = _run(script, {"uri": uri, "overlays": _overlays()})
    fig = _figure(at)
    rects = _rects(fig)
    assert len(rects) == 4  # m v1, D01, D02, gold
    colors = viewer.owner_colors(["m v1", "m v2", "m v3", "D01", "D02", "gold"])
    assert len(set(colors.values())) == 6  # fewer owners than colours: all distinct
    by_owner = {r["name"]: r for r in rects}
    v1 = by_owner["m v1"]
    assert (v1["x0"], v1["y0"], v1["x1"], v1["y1"]) == (4, 6, 20, 30)  # stored pixels, k = 1
    assert v1["label"]["text"] == "nodule 0.87"
    assert v1["line"]["color"] == colors["m v1"] and v1["line"]["dash"] == "solid"
    assert by_owner["D01"]["line"]["dash"] == "dash"
    assert by_owner["gold"]["line"]["dash"] == "dot"
    assert {r["line"]["color"] for r in rects} == {
        colors[o] for o in ("m v1", "D01", "D02", "gold")
    }
    (mask,) = _contours(fig)
    assert mask["name"] == "m v2" and mask["line"]["color"] == colors["m v2"]
    xs = [x for x in mask["x"] if x is not None]
    ys = [y for y in mask["y"] if y is not None]
    # Pixel i spans [i, i + 1): the square's columns 8..39 and rows 16..31 give edges
    # 8..40 and 16..32; the marching-squares outline runs through the half-pixel points.
    assert min(xs) == pytest.approx(8, abs=0.5) and max(xs) == pytest.approx(40, abs=0.5)
    assert min(ys) == pytest.approx(16, abs=0.5) and max(ys) == pytest.approx(32, abs=0.5)
    corner = " ".join(a["text"] for a in fig["layout"]["annotations"])
    assert "m v3" in corner and "normal 0.12" in corner
    captions = _captions(at)
    assert "1 mask(s) not drawn" in captions and "6 of 7 overlay(s) shown" in captions


def test_toggling_an_owner_off_removes_its_overlays(script: str, tmp_path: Path) -> None:
    uri = write_dicom(tmp_path / "a.dcm", _ramp(64), bits=12)
    at = _run(script, {"uri": uri, "overlays": _overlays()})
    before = {r["name"]: r["line"]["color"] for r in _rects(_figure(at))}
    at.checkbox(key="v_show_D01").uncheck().run()
    fig = _figure(at)
    after = {r["name"]: r["line"]["color"] for r in _rects(fig)}
    assert set(after) == {"m v1", "D02", "gold"}
    assert all(after[o] == before[o] for o in after)  # the others keep their colours
    at.checkbox(key="v_show_m v2").uncheck().run()
    assert not _contours(_figure(at))
    at.checkbox(key="v_show_D01").check().run()
    assert {r["name"] for r in _rects(_figure(at))} == {"m v1", "D01", "D02", "gold"}


def test_hidden_groups_start_off_and_can_be_shown(script: str, tmp_path: Path) -> None:
    uri = write_dicom(tmp_path / "a.dcm", _ramp(64), bits=12)
    at = _run(script, {"uri": uri, "overlays": _overlays(), "hidden": ("annotation",)})
    assert at.checkbox(key="v_show_D01").value is False
    assert at.checkbox(key="v_show_m v1").value is True
    assert {r["name"] for r in _rects(_figure(at))} == {"m v1", "gold"}
    at.checkbox(key="v_show_D02").check().run()
    assert {r["name"] for r in _rects(_figure(at))} == {"m v1", "gold", "D02"}


def test_owner_colours_are_stable_and_colour_blind_safe() -> None:
    small = viewer.owner_colors(["D01", "D02"])
    large = viewer.owner_colors(["D01", "D02", "m v1", "gold"])
    # Each owner's home colour is a hash of its name: more owners do not move D01 or D02
    # unless they collide with them, and with these names none does.
    assert {o: large[o] for o in small} == small
    assert viewer.owner_colors(["D02", "D01", "D01"]) == small
    assert set(large.values()) <= set(viewer.OVERLAY_PALETTE)
    many = viewer.owner_colors([f"D{i:02d}" for i in range(7)])
    assert len(set(many.values())) == 7  # up to the palette size, all distinct
    assert "#000000" not in viewer.OVERLAY_PALETTE


def test_2048_image_is_downsampled_and_overlays_follow(script: str, tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 65535, size=(2048, 2048), dtype=np.uint16)
    uri = write_dicom(tmp_path / "big.dcm", pixels, bits=16)
    mask = np.zeros((2048, 2048), dtype=bool)
    mask[512:1024, 256:768] = True
    ovs = [
        Overlay("prediction", "m v1", label="nodule", bbox=(100, 200, 300, 400), score=0.5),
        Overlay("annotation", "D01", label="opacity", mask=mask),
    ]
    at = _run(script, {"uri": uri, "overlays": ovs})
    fig = _figure(at)
    shown = _pixels(fig)
    assert max(shown.shape) <= viewer.MAX_DISPLAY_SIDE and shown.shape == (1024, 1024)
    (image,) = [t for t in fig["data"] if t["type"] == "image"]
    assert (image["dx"], image["dy"], image["x0"], image["y0"]) == (2, 2, 1, 1)
    assert fig["layout"]["xaxis"]["range"] == [0, 2048]
    (rect,) = _rects(fig)
    assert (rect["x0"], rect["y0"], rect["x1"], rect["y1"]) == (100, 200, 300, 400)
    (contour,) = _contours(fig)
    xs = [x for x in contour["x"] if x is not None]
    ys = [y for y in contour["y"] if y is not None]
    # Found at display resolution (k = 2): edges within one display pixel (2 px).
    assert min(xs) == pytest.approx(256, abs=2) and max(xs) == pytest.approx(768, abs=2)
    assert min(ys) == pytest.approx(512, abs=2) and max(ys) == pytest.approx(1024, abs=2)
    assert len(xs) < 50  # a rectangle's outline, simplified, not thousands of points
    assert "shown at 1/2 of 2048×2048 px" in _captions(at)


def test_ct_series_slider_changes_the_slice_and_its_overlays(script: str, tmp_path: Path) -> None:
    uris = [
        write_dicom(
            tmp_path / f"ct{i}.dcm", _ramp(32, top=2000) + 300 * i, modality="CT",
            rescale=(1.0, -1024.0), window=(40, 400), instance=i + 1, position=(0, 0, 5.0 * i),
        )
        for i in range(3)
    ]  # fmt: skip
    ovs = [Overlay("prediction", "m v1", label="nodule", bbox=(2, 2, 9, 9), score=0.9, frame=1)]
    at = _run(script, {"uri": uris, "overlays": ovs})
    (slider,) = at.slider
    assert slider.value == 1 and slider.max == 3
    first = _pixels(_figure(at))
    assert not _rects(_figure(at))  # the box belongs to slice 2
    slider.set_value(2).run()
    second = _pixels(_figure(at))
    assert not np.array_equal(first, second)
    assert [r["name"] for r in _rects(_figure(at))] == ["m v1"]
    at.selectbox(key="v_preset").set_value("Lung").run()
    assert "Lung preset: center -600, width 1500" in _captions(at)
    assert not np.array_equal(_pixels(_figure(at)), second)


def test_monochrome1_is_inverted(script: str, tmp_path: Path) -> None:
    ramp = _ramp(32)
    m2 = write_dicom(tmp_path / "m2.dcm", ramp, bits=12, window=(2000, 4000))
    m1 = write_dicom(
        tmp_path / "m1.dcm", ramp, bits=12, window=(2000, 4000), photometric="MONOCHROME1"
    )
    plain = _pixels(_figure(_run(script, {"uri": m2})))
    at = _run(script, {"uri": m1})
    inverted = _pixels(_figure(at))
    np.testing.assert_array_equal(inverted.astype(int), 255 - plain.astype(int))
    assert inverted[0, 0] == 255 and inverted[-1, -1] == 0  # low values white
    assert "MONOCHROME1 inverted" in _captions(at)


def test_toggles_and_window_changes_do_not_decode_again(
    script: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    uri = write_dicom(tmp_path / "a.dcm", _ramp(64), bits=12)
    calls = {"decode": 0, "encode": 0}
    load, encode = viewer.load_pixels, viewer._png_uri

    def counting_load(path: str) -> Any:
        calls["decode"] += 1
        return load(path)

    def counting_encode(pixels: np.ndarray) -> str:
        calls["encode"] += 1
        return encode(pixels)

    monkeypatch.setattr(viewer, "load_pixels", counting_load)
    monkeypatch.setattr(viewer, "_png_uri", counting_encode)
    at = _run(script, {"uri": uri, "overlays": _overlays()})
    assert calls == {"decode": 1, "encode": 1}
    at.checkbox(key="v_show_D01").uncheck().run()
    assert calls == {"decode": 1, "encode": 1}  # a toggle reuses the windowed PNG
    at.selectbox(key="v_preset").set_value("Auto (percentiles)").run()
    assert calls == {"decode": 1, "encode": 2}  # a new window re-windows, never re-decodes
    at.selectbox(key="v_preset").set_value("Header / Auto").run()
    assert calls == {"decode": 1, "encode": 2}


def test_unreadable_file_and_empty_series_say_so(script: str, tmp_path: Path) -> None:
    bad = tmp_path / "bad.dcm"
    bad.write_bytes(b"not a DICOM file")
    at = _run(script, {"uri": str(bad), "overlays": _overlays()})
    assert "Cannot display `bad.dcm`" in at.warning[0].value
    at = _run(script, {"uri": []})
    assert "no images" in at.info[0].value
