"""Benchmark of the DICOM viewer with overlays on a 2048 × 2048 16-bit image, against a naive
Streamlit viewer.

Usage::

    .venv/bin/python bench/viewer.py [--runs 7] [--side 2048]

In a temp dir it writes one ``side × side`` DICOM (a chest phantom from
:mod:`quality.demo.phantoms` scaled to the full 16 bits, MONOCHROME2, uncompressed) and the
overlays a spot-check shows on it: two model versions (a box, a full-size mask), three
doctors' boxes, a gold box and two image-level labels. Then, in the same process, each
through :class:`streamlit.testing.v1.AppTest` (a real script run: widgets, caches, the
plotly figure serialised into the page's protobuf), it times

* **ours, cold**: a rerun of a script calling :func:`quality.ui.viewer.render_image_viewer`
  with the overlays and a verdict button, every Streamlit cache cleared first (decode,
  downsample to 1024², window, PNG, contours, figure);
* **ours, rerun after a verdict**: the button clicked on the warm page (what the Spot-check
  page does after each verdict, without the DB write): every cache hits;
* **ours, rerun after an overlay toggle**: a doctor switched on or off;
* **ours, rerun after a window change**: a new manual window (the PNG cache is cleared
  before each run, so it re-windows and re-encodes; it never decodes again);
* **peer (naive)**: the same script written the obvious way: ``pydicom.dcmread`` +
  ``pixel_array`` + Modality LUT, full-resolution ``px.imshow(binary_string=True)`` with the
  same boxes as shapes and no cache, so every rerun (a verdict click) pays all of it.

Each contender is warmed up once, then run ``--runs`` times; the median is printed, with the
ratio peer / ours and the size of the figure sent to the browser. A breakdown of our cold
path (decode, downsample, window + PNG) is printed as well, and the AppTest floor (a rerun
of a script holding only the button): AppTest polls the script thread, which adds tens of
milliseconds to every rerun on both sides.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import streamlit as st
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from streamlit.testing.v1 import AppTest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from quality.demo import phantoms  # noqa: E402
from quality.dicom import load_pixels, to_display  # noqa: E402
from quality.overlays import Overlay  # noqa: E402
from quality.ui import viewer  # noqa: E402

OURS = """
import pickle, sys
import streamlit as st
from quality.ui import viewer

spec = st.session_state["spec"]
viewer.render_image_viewer(
    spec["uri"], key="v", overlays=spec["overlays"], hidden_groups=("annotation",)
)
if st.button("Agree", key="agree"):
    st.session_state["n_verdicts"] = st.session_state.get("n_verdicts", 0) + 1
"""

PEER = """
import numpy as np
import plotly.express as px
import pydicom
import streamlit as st
from pydicom.pixels import apply_modality_lut

spec = st.session_state["spec"]
ds = pydicom.dcmread(spec["uri"])
x = apply_modality_lut(ds.pixel_array, ds).astype(np.float32)
lo, hi = np.percentile(x, [0.5, 99.5])
img = (np.clip((x - lo) / (hi - lo), 0, 1) * 255).astype(np.uint8)
if ds.PhotometricInterpretation == "MONOCHROME1":
    img = 255 - img
fig = px.imshow(img, binary_string=True)
for ov in spec["overlays"]:
    if ov.bbox is not None:
        x0, y0, x1, y1 = ov.bbox
        fig.add_shape(type="rect", x0=x0, y0=y0, x1=x1, y1=y1, name=ov.owner)
st.plotly_chart(fig, key="peer_figure")
if st.button("Agree", key="agree"):
    st.session_state["n_verdicts"] = st.session_state.get("n_verdicts", 0) + 1
"""


def write_dicom(path: Path, side: int, seed: int = 0) -> str:
    """A ``side``² 16-bit MONOCHROME2 chest phantom (uncompressed); returns its path."""
    rng = np.random.default_rng(seed)
    img = phantoms.chest_radiograph(rng, phantoms.chest_anatomy(rng), None, side, side)
    pixels = np.clip(img / 4095.0 * 65535.0, 0, 65535).astype(np.uint16)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.Modality = "DX"
    ds.Rows = ds.Columns = side
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.PixelData = pixels.tobytes()
    ds.save_as(path, enforce_file_format=True)
    return str(path)


def make_overlays(side: int) -> list[Overlay]:
    """What a spot-check shows: 2 model versions, 3 doctors, gold, 2 image-level labels."""
    s = side / 2048
    mask = np.zeros((side, side), dtype=bool)
    yy, xx = np.ogrid[:side, :side]
    mask[(yy - 900 * s) ** 2 + (xx - 700 * s) ** 2 <= (160 * s) ** 2] = True

    def box(x0: float, y0: float, x1: float, y1: float) -> tuple[float, float, float, float]:
        return (x0 * s, y0 * s, x1 * s, y1 * s)

    return [
        Overlay("prediction", "model v1", label="nodule", bbox=box(520, 720, 880, 1080), score=0.81),
        Overlay("prediction", "model v2", label="nodule", mask=mask, score=0.74),
        Overlay("prediction", "model v3", label="normal", score=0.22),
        Overlay("annotation", "D01", label="nodule", bbox=box(530, 730, 870, 1070), task="box"),
        Overlay("annotation", "D02", label="nodule", bbox=box(510, 700, 900, 1090), task="box"),
        Overlay("annotation", "D03", label="opacity", bbox=box(1200, 900, 1500, 1300), task="box"),
        Overlay("annotation", "D03", label="opacity", task="finding"),
        Overlay("reference", "gold", label="nodule", bbox=box(525, 725, 875, 1075), task="box"),
    ]  # fmt: skip


def clear_caches() -> None:
    st.cache_data.clear()
    st.cache_resource.clear()


def timed(fn: Callable[[], object], runs: int, before: Callable[[], object] | None = None) -> float:
    """Median wall time of ``runs`` calls; ``before`` runs untimed before each call."""
    times = []
    for _ in range(runs):
        if before is not None:
            before()
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _app(script: Path, spec: dict[str, object]) -> AppTest:
    at = AppTest.from_file(str(script), default_timeout=120)
    at.session_state["spec"] = spec
    return at


def _checked(at: AppTest) -> AppTest:
    if at.exception:
        raise SystemExit(f"the script failed: {[e.value for e in at.exception]}")
    return at


def _figure_bytes(at: AppTest) -> int:
    return sum(len(c.proto.spec) for c in at.get("plotly_chart"))


def breakdown(uri: str, runs: int) -> dict[str, float]:
    """Our cold path split: decode (pydicom + Modality LUT), downsample, window + PNG."""
    img = load_pixels(uri)
    small, _ = viewer.downsample(img.frames, viewer.MAX_DISPLAY_SIDE)
    import dataclasses

    shown = dataclasses.replace(img, frames=small)
    return {
        "decode": timed(lambda: load_pixels(uri), runs),
        "downsample": timed(lambda: viewer.downsample(img.frames, viewer.MAX_DISPLAY_SIDE), runs),
        "window+png": timed(lambda: viewer._png_uri(to_display(shown, 0)), runs),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7, help="timed runs per contender (median)")
    parser.add_argument("--side", type=int, default=2048, help="image side in pixels")
    args = parser.parse_args(argv)
    runs = max(5, args.runs)

    with tempfile.TemporaryDirectory(prefix="bench-viewer-") as tmp:
        tmpdir = Path(tmp)
        uri = write_dicom(tmpdir / "big.dcm", args.side)
        spec = {"uri": uri, "overlays": make_overlays(args.side)}
        ours, peer = tmpdir / "ours.py", tmpdir / "peer.py"
        ours.write_text(OURS)
        peer.write_text(PEER)

        # Warm-up: imports, plotly templates, the AppTest machinery, for both scripts.
        _checked(_app(ours, spec).run())
        _checked(_app(peer, spec).run())

        at = _checked(_app(ours, spec).run())
        payload_ours = _figure_bytes(at)

        def verdict() -> None:
            _checked(at.button(key="agree").click().run())

        verdict()
        # Cold: the same rerun with every cache cleared first (a new AppTest would add
        # ~0.6 s of its own start-up, a component scan, to both sides).
        t_cold = timed(verdict, runs, before=clear_caches)
        verdict()
        t_verdict = timed(verdict, runs)

        state = {"on": False}

        def toggle() -> None:
            state["on"] = not state["on"]
            _checked(at.checkbox(key="v_show_D01").set_value(state["on"]).run())

        toggle()
        t_toggle = timed(toggle, runs)

        _checked(at.selectbox(key="v_preset").set_value(viewer.MANUAL).run())
        (center,) = [s for s in at.slider if s.key and s.key.startswith("v_center_")]
        lo, hi = float(center.min), float(center.max)
        values = iter(np.linspace(lo + 0.3 * (hi - lo), lo + 0.7 * (hi - lo), runs + 1))

        def window() -> None:
            _checked(at.slider(key=center.key).set_value(float(next(values))).run())

        window()
        t_window = timed(window, runs, before=viewer._frame_png.clear)

        clear_caches()
        pt = _checked(_app(peer, spec).run())
        payload_peer = _figure_bytes(pt)

        def peer_verdict() -> None:
            _checked(pt.button(key="agree").click().run())

        peer_verdict()
        t_peer = timed(peer_verdict, runs)

        bare = tmpdir / "bare.py"
        bare.write_text('import streamlit as st\nst.button("Agree", key="agree")\n')
        bt = _checked(_app(bare, spec).run())
        t_floor = timed(lambda: _checked(bt.button(key="agree").click().run()), runs)
        parts = breakdown(uri, runs)

    side = args.side
    print(f"viewer, {side}×{side} 16-bit DICOM, 8 overlays (incl. a {side}² mask); "
          f"median of {runs} runs after warm-up")  # fmt: skip
    rows = [
        ("ours, cold (decode + downsample + PNG)", t_cold),
        ("ours, rerun after a verdict", t_verdict),
        ("ours, rerun after an overlay toggle", t_toggle),
        ("ours, rerun after a window change", t_window),
        ("peer (naive), rerun after a verdict", t_peer),
        ("AppTest floor: a script with only a button", t_floor),
    ]
    for name, t in rows:
        print(f"  {name:<42} {t * 1000:8.1f} ms")
    print(f"  figure sent: ours {payload_ours / 1e6:.2f} MB, peer {payload_peer / 1e6:.2f} MB")
    print("  our cold path: " + ", ".join(f"{k} {v * 1000:.0f} ms" for k, v in parts.items()))
    print(f"ratio peer / ours (verdict rerun): {t_peer / t_verdict:.1f}x")
    print(f"ratio peer / ours (cold, first view): {t_peer / t_cold:.2f}x")
    print(f"ratio peer / ours (window change): {t_peer / t_window:.2f}x")
    print(json.dumps({
        "side": side, "runs": runs, "ours_cold_s": t_cold, "ours_verdict_s": t_verdict,
        "ours_toggle_s": t_toggle, "ours_window_s": t_window, "peer_verdict_s": t_peer,
        "apptest_floor_s": t_floor, "payload_ours_bytes": payload_ours,
        "payload_peer_bytes": payload_peer,
    }))  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
