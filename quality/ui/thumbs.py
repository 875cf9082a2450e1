"""Image thumbnails with each annotator's box drawn on top, for disagreement galleries.

Decoding and windowing come from :mod:`quality.dicom` (:func:`~quality.dicom.load_pixels`,
:func:`~quality.dicom.to_display` with the header window, VOI LUT or automatic window, as in
the viewer); the first frame is block-averaged to at most :data:`THUMB_SIDE` pixels a side
*before* windowing, and only the 8-bit result is cached (:func:`st.cache_data` keyed by the
URI, the file's mtime and the size, ``max_entries`` bounding memory). Boxes arrive in the
image's own pixel coordinates and are scaled by the same factor.

Each annotator gets one colour (:func:`annotator_colors`, stable for a team), and their box
is a rectangle shape with the annotator's code on it and an entry in the legend.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np
import plotly.express as px
import plotly.graph_objects as go
import streamlit as st
from numpy.typing import NDArray

from quality.dicom import load_pixels, to_display
from quality.errors import DicomReadError
from quality.ui import viewer

__all__ = [
    "THUMB_SIDE",
    "Thumb",
    "annotator_colors",
    "load_thumb",
    "render_thumb",
    "thumb_figure",
]

THUMB_SIDE = 256
_CACHE_ENTRIES = 256
# Saturated, mid-dark colours: visible on grey images and as caption text on white.
_PALETTE = (
    "#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4", "#0f9fb5", "#f032e6", "#9a6324",
    "#469990", "#800000", "#808000", "#e6a100", "#6a3d9a", "#1a9850", "#d6604d", "#2166ac",
)  # fmt: skip


@dataclasses.dataclass(frozen=True)
class Thumb:
    """A display-ready thumbnail.

    Attributes
    ----------
    pixels : uint8, shape (h, w), high values white (MONOCHROME1 already inverted).
    factor : original pixels per thumbnail pixel (an integer >= 1).
    shape : (rows, cols) of the original image.
    """

    pixels: NDArray[np.uint8]
    factor: int
    shape: tuple[int, int]


@st.cache_data(max_entries=_CACHE_ENTRIES, show_spinner=False)
def _thumb(uri: str, path: str, mtime: float, max_side: int) -> Thumb:
    """Decode the first frame, downsample, window; ``uri`` and ``mtime`` key the cache."""
    img = load_pixels(path)
    small, k = viewer.downsample(img.frames[:1], max_side)
    pixels = to_display(dataclasses.replace(img, frames=np.ascontiguousarray(small)), 0)
    return Thumb(
        pixels=pixels, factor=k, shape=(int(img.frames.shape[1]), int(img.frames.shape[2]))
    )


def load_thumb(uri: str, max_side: int = THUMB_SIDE) -> Thumb:
    """The cached thumbnail of the image at ``uri`` (``images.uri``).

    Raises
    ------
    DicomReadError
        The file is remote, missing or cannot be decoded or windowed.
    """
    path = viewer.resolve_uri(uri)
    try:
        return _thumb(uri, str(path), os.stat(path).st_mtime, max_side)
    except ValueError as exc:
        if isinstance(exc, DicomReadError):
            raise
        raise DicomReadError(uri, "display_error", str(exc)) from exc


def annotator_colors(codes: Iterable[str]) -> dict[str, str]:
    """One colour per annotator code, by sorted code, so a team keeps its colours."""
    ordered = sorted({str(c) for c in codes})
    return {c: _PALETTE[i % len(_PALETTE)] for i, c in enumerate(ordered)}


def _valid_box(box: object) -> list[float] | None:
    if not isinstance(box, Sequence | np.ndarray) or isinstance(box, str) or len(box) != 4:
        return None
    try:
        x0, y0, x1, y1 = (float(v) for v in box)
    except (TypeError, ValueError):
        return None
    if not all(np.isfinite([x0, y0, x1, y1])):
        return None
    return [min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1)]


def thumb_figure(
    thumb: Thumb,
    boxes: Mapping[str, object] | None = None,
    colors: Mapping[str, str] | None = None,
    *,
    highlight: str | None = None,
    height: int = 260,
    legend: bool = True,
) -> go.Figure:
    """The thumbnail as a plotly figure, each annotator's box a coloured rectangle.

    Parameters
    ----------
    thumb : from :func:`load_thumb`.
    boxes : annotator code → ``[x0, y0, x1, y1]`` in original image pixels, or None (no box).
    colors : annotator code → colour (default: :func:`annotator_colors` of ``boxes``).
    highlight : a code whose box is drawn thicker (the doctor under review).
    height : figure height in pixels.
    legend : show a legend entry per drawn box.
    """
    fig = px.imshow(thumb.pixels, binary_string=True)
    boxes = boxes or {}
    colors = dict(colors or annotator_colors(boxes))
    for code, raw in boxes.items():
        box = _valid_box(raw)
        if box is None:
            continue
        x0, y0, x1, y1 = (v / thumb.factor for v in box)
        color = colors.get(code) or annotator_colors([code])[code]
        fig.add_shape(
            type="rect",
            x0=x0,
            y0=y0,
            x1=x1,
            y1=y1,
            line={"color": color, "width": 3.5 if code == highlight else 2},
            name=str(code),
            showlegend=legend,
            label={
                "text": str(code),
                "textposition": "top left",
                "font": {"color": color, "size": 11},
            },
        )
    fig.update_xaxes(visible=False)
    fig.update_yaxes(visible=False)
    fig.update_layout(
        height=height,
        margin={"l": 0, "r": 0, "t": 0, "b": 0},
        legend={"orientation": "h", "y": -0.02, "x": 0, "yanchor": "top", "font": {"size": 10}},
        dragmode="zoom",
    )
    return fig


def render_thumb(
    uri: str,
    *,
    boxes: Mapping[str, object] | None = None,
    colors: Mapping[str, str] | None = None,
    highlight: str | None = None,
    key: str,
    height: int = 260,
) -> bool:
    """Draw one thumbnail with its boxes; a warning (not a traceback) when it cannot be shown.

    Returns
    -------
    bool
        Whether the image was drawn.
    """
    try:
        thumb = load_thumb(uri)
    except DicomReadError as exc:
        st.warning(f"Cannot display `{Path(uri).name}` ({exc.kind}): {exc.message}.", icon="⚠️")
        return False
    drawn = sum(_valid_box(b) is not None for b in (boxes or {}).values())
    # Room for the legend below the image, ~5 entries a row, so every image keeps its size.
    legend_rows = -(-drawn // 5)
    fig = thumb_figure(thumb, boxes, colors, highlight=highlight, height=height + 22 * legend_rows)
    st.plotly_chart(fig, key=key, config={"displayModeBar": False})
    return True
