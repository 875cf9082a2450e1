"""DICOM image viewer on plotly, and the header table with PHI masked.

Decoding and windowing come from :mod:`quality.dicom` (:func:`~quality.dicom.load_pixels`,
:func:`~quality.dicom.to_display`); this module only picks the window, downsamples for
display, caches and draws.

- Decoded pixels are cached with :func:`st.cache_data` keyed by the file path and its mtime
  (``max_entries`` bounds the memory). Large images are block-averaged to at most
  :data:`MAX_DISPLAY_SIDE` pixels a side *before* caching, so a 2048×2048 16-bit image costs
  a 1024×1024 float32 array per rerun, and windowing stays exact per displayed pixel.
- The image is drawn as a PNG inside a plotly figure (``px.imshow(binary_string=True)``), so
  zoom (drag a box, or the scroll wheel), pan and reset (double-click) are plotly's own.
- An unreadable or missing file shows a warning that says why, never a traceback.
"""

from __future__ import annotations

import dataclasses
import math
import os
import urllib.parse
from pathlib import Path

import numpy as np
import pandas as pd
import plotly.express as px
import streamlit as st
from numpy.typing import NDArray

from quality.config import get_settings
from quality.dicom import WINDOW_PRESETS, DecodedImage, load_pixels, masked_header, to_display
from quality.errors import DicomReadError

__all__ = [
    "HEADER_AUTO",
    "MANUAL",
    "MAX_DISPLAY_SIDE",
    "downsample",
    "preset_labels",
    "render_header_table",
    "render_image_viewer",
    "resolve_uri",
]

MAX_DISPLAY_SIDE = 1024
HEADER_AUTO = "Header / Auto"
MANUAL = "Manual"
_CACHE_ENTRIES = 32
_REMOTE_SCHEMES = ("s3://", "http://", "https://", "dicomweb")


def preset_labels() -> list[str]:
    """Window choices in menu order: header/auto, the CT presets, manual."""
    return [HEADER_AUTO, *(name.capitalize() for name in WINDOW_PRESETS), MANUAL]


def _preset_window(label: str) -> tuple[float, float] | None:
    return WINDOW_PRESETS.get(label.lower())


def resolve_uri(uri: str, store: str | None = None) -> Path:
    """The local file behind an ``images.uri``: a path, a ``file://`` URI, or a path relative
    to the store root (``QUALITY_STORE``).

    Raises
    ------
    DicomReadError
        ``remote`` for a remote store (not viewable yet), ``missing`` when no file is there.
    """
    if uri.startswith(_REMOTE_SCHEMES):
        raise DicomReadError(uri, "remote", "images in remote stores cannot be shown here yet")
    path = (
        Path(urllib.parse.unquote(urllib.parse.urlparse(uri).path))
        if uri.startswith("file://")
        else Path(uri)
    )
    if path.is_file():
        return path
    if not path.is_absolute():
        root = store if store is not None else get_settings().store
        candidate = Path(root) / path
        if candidate.is_file():
            return candidate
    raise DicomReadError(uri, "missing", "the file is not in the image store any more")


def downsample(frames: NDArray[np.float32], max_side: int) -> tuple[NDArray[np.float32], int]:
    """Block-average frames so that neither side exceeds ``max_side``.

    Parameters
    ----------
    frames : shape (n, H, W).
    max_side : the largest side to keep, >= 1.

    Returns
    -------
    (frames of shape (n, H // k, W // k), k) with the integer factor ``k >= 1``; a ragged
    edge of fewer than ``k`` pixels is dropped.
    """
    n, h, w = frames.shape
    k = max(1, math.ceil(max(h, w) / max_side))
    if k == 1:
        return frames, 1
    hh, ww = (h // k) * k, (w // k) * k
    blocks = frames[:, :hh, :ww].reshape(n, hh // k, k, ww // k, k)
    return blocks.mean(axis=(2, 4), dtype=np.float32), k


@dataclasses.dataclass(frozen=True)
class _Cached:
    image: DecodedImage
    factor: int
    shape: tuple[int, int]
    lo: float
    hi: float


@st.cache_data(max_entries=_CACHE_ENTRIES, show_spinner="Decoding pixels…")
def _load(path: str, mtime: float) -> _Cached:
    """Decode, downsample and keep the value range; ``mtime`` only keys the cache."""
    img = load_pixels(path)
    small, k = downsample(img.frames, MAX_DISPLAY_SIDE)
    ds = getattr(img, "_ds", None)
    if ds is not None and "PixelData" in ds:
        # The VOI LUT needs the header, not the pixels: keep the cached pickle small.
        del ds.PixelData
    return _Cached(
        image=dataclasses.replace(img, frames=np.ascontiguousarray(small)),
        factor=k,
        shape=(int(img.frames.shape[1]), int(img.frames.shape[2])),
        lo=float(np.min(small)),
        hi=float(np.max(small)),
    )


@st.cache_data(max_entries=4 * _CACHE_ENTRIES, show_spinner=False)
def _header(path: str, mtime: float) -> pd.DataFrame:
    rows = masked_header(path)
    return pd.DataFrame(rows, columns=["tag", "keyword", "vr", "value"]).astype(str)


def _open(uri: str) -> tuple[str, float]:
    path = resolve_uri(uri)
    return str(path), os.stat(path).st_mtime


def render_image_viewer(uri: str, *, key: str = "viewer", height: int = 620) -> None:
    """Draw one DICOM image with window/level controls, a frame slider and zoom.

    Parameters
    ----------
    uri : ``images.uri`` of the file.
    key : prefix of the widget keys (two viewers on a page need two keys).
    height : figure height in pixels.
    """
    try:
        path, mtime = _open(uri)
        cached = _load(path, mtime)
    except DicomReadError as exc:
        st.warning(f"Cannot display `{Path(uri).name}` ({exc.kind}): {exc.message}.", icon="⚠️")
        return
    img = cached.image

    c_preset, c_frame = st.columns([2, 3])
    label = c_preset.selectbox("Window / level", preset_labels(), key=f"{key}_preset")
    frame = 0
    if img.n_frames > 1:
        frame = c_frame.slider("Frame", 1, img.n_frames, 1, key=f"{key}_frame_{img.n_frames}") - 1

    center: float | None = None
    width: float | None = None
    captions: list[str] = []
    if label == MANUAL:
        center, width = _manual_sliders(cached, key)
        captions.append(f"Manual window: center {center:g}, width {width:g}")
    elif (preset := _preset_window(label)) is not None:
        center, width = preset
        captions.append(f"{label} preset: center {center:g}, width {width:g}")
        if (img.modality or "").upper() != "CT":
            captions.append("presets are in Hounsfield units, meant for CT")
    elif img.has_voi_lut:
        captions.append("VOI LUT applied (from the header)")
    elif img.window_center is not None and img.window_width is not None:
        captions.append(f"Header window: center {img.window_center:g}, width {img.window_width:g}")
    else:
        captions.append("Auto window (0.5–99.5th percentile)")
    if img.photometric == "MONOCHROME1":
        captions.append("MONOCHROME1 inverted")
    if cached.factor > 1:
        h, w = cached.shape
        captions.append(f"shown at 1/{cached.factor} of {w}×{h} px")

    try:
        pixels = to_display(img, frame, center=center, width=width)
    except (DicomReadError, ValueError) as exc:
        st.warning(f"Cannot window this image: {exc}", icon="⚠️")
        return
    fig = px.imshow(pixels, binary_string=True)
    # Fit the figure to the image's aspect (a column is roughly 520 px wide) to avoid a gap.
    fig_height = int(min(height, max(320, 520 * pixels.shape[0] / max(pixels.shape[1], 1))))
    fig.update_layout(height=fig_height, margin={"l": 0, "r": 0, "t": 0, "b": 0}, dragmode="zoom")
    fig.update_xaxes(visible=False)
    fig.update_yaxes(visible=False)
    st.plotly_chart(
        fig,
        key=f"{key}_figure",
        config={"scrollZoom": True, "displaylogo": False},
    )
    st.caption(" · ".join(captions))


def _manual_sliders(cached: _Cached, key: str) -> tuple[float, float]:
    img = cached.image
    lo, hi = math.floor(cached.lo), math.ceil(cached.hi)
    if hi <= lo:
        hi = lo + 1
    span = hi - lo
    c0 = img.window_center if img.window_center is not None else (lo + hi) / 2
    w0 = img.window_width if img.window_width is not None else span
    c0 = float(min(max(c0, lo), hi))
    w0 = float(min(max(w0, 1), 2 * span))
    # The range is part of the key: a new image with another range gets fresh sliders.
    suffix = f"{lo}_{hi}"
    c1, c2 = st.columns(2)
    center = c1.slider("Center", float(lo), float(hi), c0, key=f"{key}_center_{suffix}")
    width = c2.slider("Width", 1.0, float(2 * span), w0, key=f"{key}_width_{suffix}")
    return float(center), float(width)


def render_header_table(uri: str, *, key: str = "header", height: int = 620) -> None:
    """The DICOM header of ``uri`` as a table, with PHI values masked.

    Parameters
    ----------
    uri : ``images.uri`` of the file.
    key : widget key.
    height : table height in pixels.
    """
    try:
        path, mtime = _open(uri)
        table = _header(path, mtime)
    except DicomReadError as exc:
        st.warning(f"Cannot read the header ({exc.kind}): {exc.message}.", icon="⚠️")
        return
    st.dataframe(
        table,
        key=key,
        height=height,
        hide_index=True,
        column_config={
            "tag": st.column_config.TextColumn("tag", width="small"),
            "keyword": st.column_config.TextColumn("keyword", width="medium"),
            "vr": st.column_config.TextColumn("VR", width=40),
            "value": st.column_config.TextColumn("value", width="large"),
        },
    )
    st.caption("Identifying fields read «masked» (DICOM PS3.15 basic profile).")
