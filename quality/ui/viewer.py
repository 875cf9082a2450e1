"""DICOM image viewer on plotly, with overlays, and the header table with PHI masked.

Decoding and windowing come from :mod:`quality.dicom` (:func:`~quality.dicom.load_pixels`,
:func:`~quality.dicom.to_display`); what to draw on top comes from :mod:`quality.overlays`.
This module picks the window, downsamples for display, caches and draws.

- **Window / level**: the header window or VOI LUT (else the automatic window), a forced
  automatic window (0.5–99.5th percentile, for CR/DX), the CT presets of
  :data:`~quality.dicom.WINDOW_PRESETS` (lung, mediastinum, bone, soft tissue), or manual
  sliders. MONOCHROME1 is inverted.
- **Slices**: a multi-frame image gets a frame slider; a series passed as a sequence of URIs
  (in display order, :func:`quality.overlays.series_slices`) gets a slice slider.
- **Zoom and pan** are plotly's own (drag a box, scroll wheel, double-click to reset); the
  figure keeps its ``uirevision`` per image, so a window change or an overlay toggle keeps
  the zoom.
- **Overlays** (:class:`~quality.overlays.Overlay`): boxes are rectangle shapes, masks are
  contour lines, each labelled (a prediction's label with its score). One colour per owner
  (:func:`owner_colors`, colour-blind-safe palette) and a line style per group; a checkbox
  per owner shows or hides its overlays. Image-level labels (no box, no mask) are listed in
  the image's corner.

Performance (a 2048×2048 16-bit image must not stall the page):

- decoded pixels are block-averaged to at most :data:`MAX_DISPLAY_SIDE` a side *before*
  caching, in a :func:`st.cache_resource` keyed by path and mtime (shared, read-only arrays:
  a rerun copies nothing);
- the windowed 8-bit PNG of a frame is a :func:`st.cache_data` keyed by path, mtime, frame
  and window, so an overlay toggle re-encodes nothing and a window change re-windows only;
- images of remote stores (S3, DICOMweb: :func:`quality.store.is_remote`) are read through
  :mod:`quality.store` and cached the same way, keyed by their URI alone (a DICOMweb
  instance never changes under its URI; a replaced S3 object shows its old pixels until
  the cache entry goes);
- mask contours are computed at display resolution and cached by the mask's digest.

Coordinates: the figure's axes are in pixels of the *stored* image (pixel ``i`` spans
``[i, i + 1)``); the downsampled image is placed with ``dx = dy = k`` (the downsampling
factor), so boxes are drawn where they are stored, and contours found at display resolution
are scaled by ``k``.

An unreadable or missing file, or a store that cannot be reached, shows a warning that
names the image and says why, never a traceback.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import io
import math
import os
import urllib.parse
import zlib
from collections.abc import Collection, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import streamlit as st
from numpy.typing import NDArray
from PIL import Image as PILImage
from skimage.measure import approximate_polygon, find_contours

from quality import overlays as overlays_lib
from quality.config import get_settings
from quality.dicom import (
    WINDOW_PRESETS,
    DecodedImage,
    load_pixels,
    masked_header,
    scrub,
    to_display,
)
from quality.errors import (
    DicomReadError,
    PermissionDeniedError,
    StoreError,
    StoreUnavailableError,
)
from quality.overlays import Overlay, OverlayGroup
from quality.store import is_remote
from quality.ui import data, nav, trail

__all__ = [
    "AUTO",
    "GROUP_DASH",
    "HEADER_AUTO",
    "MANUAL",
    "MAX_DISPLAY_SIDE",
    "OVERLAY_PALETTE",
    "downsample",
    "image_overlays",
    "mask_contours",
    "owner_colors",
    "preset_labels",
    "render_header_table",
    "render_image_viewer",
    "resolve_uri",
    "series_slices",
    "slice_slider",
]

MAX_DISPLAY_SIDE = 1024
HEADER_AUTO = "Header / Auto"
AUTO = "Auto (percentiles)"
MANUAL = "Manual"
_CACHE_ENTRIES = 64
_PNG_ENTRIES = 48

OVERLAY_PALETTE: tuple[str, ...] = (
    "#E69F00",  # orange
    "#56B4E9",  # sky blue
    "#009E73",  # bluish green
    "#F0E442",  # yellow
    "#0072B2",  # blue
    "#D55E00",  # vermillion
    "#CC79A7",  # reddish purple
)
"""Okabe & Ito's colour-blind-safe palette without its black (invisible on dark images).
M. Okabe, K. Ito, *Color Universal Design*, 2008, https://jfly.uni-koeln.de/color/."""

GROUP_DASH: dict[str, str] = {
    "prediction": "solid",
    "annotation": "dash",
    "reference": "dot",
    "correction": "dashdot",
}
"""Line style per overlay group: a second cue beside colour (and for more owners than
colours)."""


def preset_labels() -> list[str]:
    """Window choices in menu order: header/auto, forced auto, the CT presets, manual."""
    return [HEADER_AUTO, AUTO, *(name.capitalize() for name in WINDOW_PRESETS), MANUAL]


def _preset_window(label: str) -> tuple[float, float] | None:
    return WINDOW_PRESETS.get(label.lower())


def resolve_uri(uri: str, store: str | None = None) -> str:
    """What to read for an ``images.uri``: a remote entry URI (``s3://``,
    ``dicomweb+http(s)://``) as it is, else the local file behind a path, a ``file://`` URI
    or a path relative to the store root (``QUALITY_STORE``, when that is a folder).

    A remote URI is not checked here (no request is made): reading it raises what is wrong.

    Returns
    -------
    str
        The remote URI, or the local file's path.

    Raises
    ------
    DicomReadError
        ``missing`` when no local file is there.
    """
    if is_remote(uri):
        return uri
    path = (
        Path(urllib.parse.unquote(urllib.parse.urlparse(uri).path))
        if uri.startswith("file://")
        else Path(uri)
    )
    if path.is_file():
        return str(path)
    if not path.is_absolute():
        root = store if store is not None else get_settings().store
        if not is_remote(root):
            candidate = Path(root) / path
            if candidate.is_file():
                return str(candidate)
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
    h, w = frames.shape[1:]
    k = max(1, math.ceil(max(h, w) / max_side))
    if k == 1:
        return frames, 1
    return _block_mean(frames, k), k


def _block_mean(frames: NDArray[np.float32], k: int) -> NDArray[np.float32]:
    """Means of ``k × k`` blocks of frames (n, H, W); a ragged edge is dropped."""
    n, h, w = frames.shape
    hh, ww = (h // k) * k, (w // k) * k
    # k² strided adds: about 8x faster than a mean over a 5-D reshaped view (which numpy
    # reduces with poor memory locality), and the same up to float32 rounding.
    out = np.zeros((n, hh // k, ww // k), dtype=np.float32)
    for i in range(k):
        for j in range(k):
            out += frames[:, i:hh:k, j:ww:k]
    out *= np.float32(1.0 / (k * k))
    return out


# --------------------------------------------------------------------------- colours


def owner_colors(owners: Iterable[str]) -> dict[str, str]:
    """One colour of :data:`OVERLAY_PALETTE` per owner, keyed by the owner's name.

    Each owner has a home colour, ``crc32(owner) mod 7``, so it keeps its colour from image
    to image whoever else is there. Owners are placed in sorted order; one whose home is
    taken takes the next free colour, and only when there are more owners than colours do
    two share one (their line styles may still differ, :data:`GROUP_DASH`).

    Parameters
    ----------
    owners : owner names (duplicates are ignored).

    Returns
    -------
    dict[str, str]
        owner → ``#RRGGBB``.
    """
    n = len(OVERLAY_PALETTE)
    taken: set[int] = set()
    out: dict[str, str] = {}
    for owner in sorted({str(o) for o in owners}):
        home = zlib.crc32(owner.encode("utf-8")) % n
        slot = home
        if len(taken) < n:
            while slot in taken:
                slot = (slot + 1) % n
        taken.add(slot)
        out[owner] = OVERLAY_PALETTE[slot]
    return out


def _rgba(color: str, alpha: float) -> str:
    r, g, b = (int(color[i : i + 2], 16) for i in (1, 3, 5))
    return f"rgba({r}, {g}, {b}, {alpha})"


# --------------------------------------------------------------------------- contours


def mask_contours(mask: NDArray[np.bool_], factor: int = 1) -> list[NDArray[np.float64]]:
    """Outlines of a binary mask at display resolution, in stored-image pixel coordinates.

    The mask is block-averaged by ``factor`` (as :func:`downsample` does the image, ragged
    edge dropped), padded by one empty pixel so that regions touching the border close, and
    traced at level 0.5 by marching squares (:func:`skimage.measure.find_contours`;
    W. E. Lorensen, H. E. Cline, *Marching cubes*, SIGGRAPH 1987). Each path is simplified
    to within half a display pixel (Douglas–Peucker, :func:`~skimage.measure.approximate_polygon`).
    Display pixel ``j`` spans stored pixels ``[j k, (j + 1) k)``, so a display coordinate
    ``u`` maps to ``(u + 0.5) k``.

    Parameters
    ----------
    mask : shape (rows, cols), bool.
    factor : the display downsampling factor ``k >= 1``.

    Returns
    -------
    list of arrays of shape (m, 2)
        Closed paths as ``(x, y)`` columns (x along columns, y along rows); empty for an
        empty mask.
    """
    k = max(1, int(factor))
    m = np.asarray(mask, dtype=np.float32)
    if m.ndim != 2 or not m.any():
        return []
    if k > 1:
        m = _block_mean(m[None], k)[0]
    padded = np.pad(m, 1)
    paths = []
    for contour in find_contours(padded, 0.5):
        simple = approximate_polygon(contour - 1.0, tolerance=0.5)
        if len(simple) < 3:
            continue
        xy = (simple[:, ::-1] + 0.5) * k
        paths.append(xy.astype(np.float64))
    return paths


@st.cache_data(max_entries=256, show_spinner=False)
def _contours(digest: str, factor: int, _mask: NDArray[np.bool_]) -> list[NDArray[np.float64]]:
    """:func:`mask_contours`, cached by the mask's digest (``_mask`` is not hashed)."""
    return mask_contours(_mask, factor)


def _mask_digest(mask: NDArray[np.bool_]) -> str:
    packed = np.packbits(np.ascontiguousarray(mask, dtype=bool))
    return f"{mask.shape}:" + hashlib.blake2b(packed.tobytes(), digest_size=16).hexdigest()


# --------------------------------------------------------------------------- pixels


@dataclasses.dataclass(frozen=True)
class _Cached:
    image: DecodedImage
    factor: int
    shape: tuple[int, int]
    lo: float
    hi: float


@st.cache_resource(max_entries=_CACHE_ENTRIES, show_spinner="Decoding pixels…")
def _load(path: str, mtime: float) -> _Cached:
    """Decode, downsample and keep the value range; ``mtime`` only keys the cache.

    ``path`` is a local path or a remote URI (``mtime`` 0: remote images are keyed by URI).

    A resource cache, not a data cache: every rerun gets the same object without unpickling
    megabytes of pixels. The arrays are made read-only, as they are shared.
    """
    img = load_pixels(path)
    small, k = downsample(img.frames, MAX_DISPLAY_SIDE)
    small = np.ascontiguousarray(small)
    small.flags.writeable = False
    ds = getattr(img, "_ds", None)
    if ds is not None and "PixelData" in ds:
        # The VOI LUT needs the header, not the pixels: keep the cached object small.
        del ds.PixelData
    return _Cached(
        image=dataclasses.replace(img, frames=small),
        factor=k,
        shape=(int(img.frames.shape[1]), int(img.frames.shape[2])),
        lo=float(np.min(small)),
        hi=float(np.max(small)),
    )


def _png_uri(pixels: NDArray[np.uint8]) -> str:
    buf = io.BytesIO()
    # Level 1: a 1024² frame encodes in about a third of the default level's time for ~10 %
    # more bytes; lossless, as a diagnostic image must be.
    PILImage.fromarray(pixels).save(buf, format="PNG", compress_level=1)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


@st.cache_data(max_entries=_PNG_ENTRIES, show_spinner=False)
def _frame_png(
    path: str, mtime: float, frame: int, auto: bool, center: float | None, width: float | None
) -> tuple[str, tuple[int, int]]:
    """One windowed frame as a PNG data URI and its display shape (rows, cols).

    ``auto`` forces the percentile window (0.5–99.5th) even when the header has a window.
    """
    img = _load(path, mtime).image
    if auto:
        lo, hi = (float(v) for v in np.percentile(img.frames[frame], [0.5, 99.5]))
        center, width = (lo + hi) / 2.0, max(hi - lo, 1.0)
    pixels = to_display(img, frame, center=center, width=width)
    return _png_uri(pixels), (int(pixels.shape[0]), int(pixels.shape[1]))


@st.cache_data(max_entries=4 * _CACHE_ENTRIES, show_spinner=False)
def _header(path: str, mtime: float) -> pd.DataFrame:
    rows = masked_header(path)
    return pd.DataFrame(rows, columns=["tag", "keyword", "vr", "value"]).astype(str)


def _open(uri: str) -> tuple[str, float]:
    """``(what to read, cache stamp)``: a local file and its mtime, or a remote URI and 0."""
    source = resolve_uri(uri)
    if is_remote(source):
        return source, 0.0
    try:
        return source, os.stat(source).st_mtime
    except OSError as exc:  # removed since resolve_uri looked
        raise DicomReadError(uri, "missing", "the file is not in the image store any more") from exc


def _problem(uri: str, exc: Exception, what: str) -> None:
    """Say, naming the image, why it cannot be shown: a warning, an error for a store that
    cannot be reached."""
    name = Path(uri).name or uri
    if isinstance(exc, DicomReadError):
        st.warning(f"Cannot {what} `{name}` ({exc.kind}): {exc.message}.", icon="⚠️")
    elif isinstance(exc, StoreUnavailableError):
        st.error(
            f"Cannot {what} `{name}`: the image store is not reachable ({scrub(str(exc))}). "
            "Try again later.",
            icon="🔌",
        )
    else:
        st.warning(f"Cannot {what} `{name}`: {scrub(str(exc))}.", icon="⚠️")


# --------------------------------------------------------------------------- DB (cached)


@st.cache_data(ttl=data.QUERY_TTL_S, show_spinner=False)
def _image_overlays(
    url: str,
    image_id: int,
    model_version_ids: tuple[int, ...],
    task_ids: tuple[int, ...],
    reference: bool,
) -> list[Overlay]:
    return data.run_query(
        url,
        overlays_lib.overlays_for_image,
        image_id,
        model_version_ids=model_version_ids,
        task_ids=task_ids,
        reference=reference,
    )


def image_overlays(
    image_id: int,
    *,
    model_version_ids: Iterable[int] = (),
    task_ids: Iterable[int] = (),
    reference: bool = True,
) -> list[Overlay]:
    """:func:`quality.overlays.overlays_for_image` on the configured DB, cached for
    :data:`~quality.ui.data.QUERY_TTL_S` seconds (call it inside :func:`data.db_guard`)."""
    return _image_overlays(
        data.db_url(),
        int(image_id),
        tuple(sorted({int(i) for i in model_version_ids})),
        tuple(sorted({int(i) for i in task_ids})),
        bool(reference),
    )


@st.cache_data(ttl=data.QUERY_TTL_S, show_spinner=False)
def _series_slices(url: str, series_uid: str) -> pd.DataFrame:
    return data.run_query(url, overlays_lib.series_slices, series_uid)


def series_slices(series_uid: str) -> pd.DataFrame:
    """:func:`quality.overlays.series_slices` on the configured DB, cached (call it inside
    :func:`data.db_guard`)."""
    return _series_slices(data.db_url(), str(series_uid))


# --------------------------------------------------------------------------- widgets


def slice_slider(n: int, *, key: str, label: str = "Slice", container: Any | None = None) -> int:
    """A 1-based slider over ``n`` slices; returns the 0-based index (0 when ``n <= 1``,
    with no slider drawn).

    Parameters
    ----------
    n : number of slices.
    key : widget key (its state is the slice shown).
    label : slider label.
    container : where to draw it (a column); default the current one.
    """
    if n <= 1:
        return 0
    where = container if container is not None else st
    return int(where.slider(label, 1, n, 1, key=key)) - 1


def _owner_key(key: str, owner: str) -> str:
    return f"{key}_show_{owner}"


def _owner_toggles(
    overlays: Sequence[Overlay],
    *,
    key: str,
    hidden_groups: Collection[str],
) -> set[str]:
    """A checkbox per owner (its state kept per key); returns the owners to show.

    An owner starts hidden when all its overlays belong to ``hidden_groups``.
    """
    groups: dict[str, set[str]] = {}
    counts: dict[str, int] = {}
    for ov in overlays:
        groups.setdefault(ov.owner, set()).add(ov.group)
        counts[ov.owner] = counts.get(ov.owner, 0) + 1
    order = sorted(
        groups, key=lambda o: (min(overlays_lib.OVERLAY_GROUPS.index(g) for g in groups[o]), o)
    )
    shown: set[str] = set()
    per_row = 4
    for start in range(0, len(order), per_row):
        cols = st.columns(per_row)
        for col, owner in zip(cols, order[start : start + per_row], strict=False):
            default = not groups[owner] <= set(hidden_groups)
            # The colour is in the figure's legend: checkbox labels only know named colours.
            if col.checkbox(
                f"{owner} ({counts[owner]})", value=default, key=_owner_key(key, owner)
            ):
                shown.add(owner)
    return shown


def _escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


# --------------------------------------------------------------------------- drawing


def _overlay_text(ov: Overlay) -> str:
    label = ov.label if ov.label is not None else "—"
    if ov.group == "prediction":
        return f"{label} {ov.score:.2f}" if ov.score is not None else label
    if ov.group == "correction":
        return f"✎ {label}"
    return f"{ov.owner} {label}"


@dataclasses.dataclass
class _Layers:
    """Plotly pieces for the overlays, added to the figure in one go (adding shapes one by
    one re-validates every earlier shape: quadratic)."""

    traces: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    shapes: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    corner: list[str] = dataclasses.field(default_factory=list)
    skipped: int = 0


def _overlay_layers(
    overlays: Sequence[Overlay],
    colors: dict[str, str],
    *,
    factor: int,
    shape: tuple[int, int],
) -> _Layers:
    """Rectangles for boxes, contour traces for masks, corner lines for image-level labels."""
    out = _Layers()
    legend_done: set[str] = set()
    for ov in sorted(overlays, key=lambda o: overlays_lib.OVERLAY_GROUPS.index(o.group)):
        color = colors[ov.owner]
        line = {"color": color, "width": 2, "dash": GROUP_DASH.get(ov.group, "solid")}
        drawn = False
        if ov.mask is not None:
            if tuple(ov.mask.shape) != shape:
                out.skipped += 1
            else:
                xs: list[float | None] = []
                ys: list[float | None] = []
                for p in _contours(_mask_digest(ov.mask), factor, ov.mask):
                    # Close each path; a gap (None) separates paths within one trace.
                    xs += [*p[:, 0].tolist(), float(p[0, 0]), None]
                    ys += [*p[:, 1].tolist(), float(p[0, 1]), None]
                out.traces.append(
                    {
                        "type": "scatter", "x": xs, "y": ys, "mode": "lines", "line": line,
                        "fill": "toself", "fillcolor": _rgba(color, 0.15),
                        "name": ov.owner, "legendgroup": ov.owner,
                        "showlegend": ov.owner not in legend_done,
                        "hoverinfo": "text", "text": _overlay_text(ov),
                        "meta": {"overlay": ov.group, "owner": ov.owner},
                    }
                )  # fmt: skip
                legend_done.add(ov.owner)
                drawn = True
        if ov.bbox is not None:
            x0, y0, x1, y1 = ov.bbox
            out.shapes.append(
                {
                    "type": "rect", "x0": x0, "y0": y0, "x1": x1, "y1": y1,
                    "xref": "x", "yref": "y", "line": line,
                    "name": ov.owner, "legendgroup": ov.owner,
                    "showlegend": ov.owner not in legend_done,
                    "label": {
                        "text": _overlay_text(ov), "textposition": "top left",
                        "font": {"color": color, "size": 12},
                    },
                }
            )  # fmt: skip
            legend_done.add(ov.owner)
            drawn = True
        if not drawn and ov.mask is None:
            task = f" ({ov.task})" if ov.task else ""
            text = _overlay_text(ov) if ov.group != "annotation" else str(ov.label)
            out.corner.append(
                f"<span style='color:{color}'>{_escape(ov.owner)}{_escape(task)}: "
                f"{_escape(text)}</span>"
            )
    return out


def _figure(
    png: str,
    display_shape: tuple[int, int],
    cached: _Cached,
    layers: _Layers,
    *,
    height: int,
    revision: str,
) -> go.Figure:
    """The image placed in stored-pixel coordinates (``dx = dy = k``), with the overlays."""
    rows, cols = cached.shape
    k = cached.factor
    dh, dw = display_shape
    # Fit the figure to the image's aspect (a column is roughly 520 px wide) to avoid a gap.
    fig_height = int(min(height, max(320, 520 * dh / max(dw, 1))))
    annotations = []
    if layers.corner:
        annotations.append(
            {
                "xref": "paper", "yref": "paper", "x": 0.01, "y": 0.99, "xanchor": "left",
                "yanchor": "top", "align": "left", "showarrow": False,
                "text": "<br>".join(layers.corner), "bgcolor": "rgba(0, 0, 0, 0.55)",
                "font": {"size": 12},
            }
        )  # fmt: skip
    image = {
        "type": "image", "source": png, "x0": k / 2, "y0": k / 2, "dx": k, "dy": k,
        "hoverinfo": "x+y", "name": "image",
    }  # fmt: skip
    layout = {
        "height": fig_height,
        "margin": {"l": 0, "r": 0, "t": 0, "b": 0},
        "dragmode": "zoom",
        # Same revision → plotly keeps the user's zoom and pan across reruns.
        "uirevision": revision,
        "showlegend": True,
        "legend": {"orientation": "h", "y": -0.02, "x": 0, "yanchor": "top"},
        "xaxis": {"visible": False, "range": [0, cols], "constrain": "domain"},
        "yaxis": {
            "visible": False, "range": [rows, 0], "scaleanchor": "x", "constrain": "domain",
        },
        "shapes": layers.shapes,
        "annotations": annotations,
    }  # fmt: skip
    return go.Figure(data=[image, *layers.traces], layout=layout)


def render_image_viewer(
    uri: str | Sequence[str],
    *,
    key: str = "viewer",
    height: int = 620,
    overlays: Sequence[Overlay] = (),
    hidden_groups: Collection[OverlayGroup] = (),
    slice_key: str | None = None,
) -> None:
    """Draw one DICOM image (or one slice of a series) with window/level controls, frame or
    slice slider, zoom, and overlays with a toggle per owner.

    Parameters
    ----------
    uri : ``images.uri`` of the file, or the URIs of a series' slices in display order
        (:func:`series_slices`), which adds a slice slider.
    key : prefix of the widget keys (two viewers on a page need two keys).
    height : largest figure height in pixels.
    overlays : what to draw (:func:`quality.overlays.overlays_for_image`). ``frame`` picks
        the frame of a multi-frame image, or the slice when ``uri`` is a series.
    hidden_groups : overlay groups whose owners start hidden (e.g. ``("annotation",)``);
        the user can still switch them on.
    slice_key : widget key of the slice slider for a series (default: derived from ``key``
        and the URIs).
    """
    series = not isinstance(uri, str)
    if series:
        uris = [str(u) for u in uri]
        if not uris:
            st.info("This series has no images to show.", icon="🖼️")
            return
        skey = slice_key or f"{key}_slice_{zlib.crc32(chr(0).join(uris).encode())}"
        index = slice_slider(len(uris), key=skey, label=f"Slice (of {len(uris)})")
        current = uris[index]
    else:
        index = 0
        current = str(uri)
    try:
        path, mtime = _open(current)
        cached = _load(path, mtime)
    except (DicomReadError, StoreError) as exc:
        _problem(current, exc, "display")
        return
    img = cached.image

    c_preset, c_frame = st.columns([2, 3])
    label = c_preset.selectbox("Window / level", preset_labels(), key=f"{key}_preset")
    frame = 0
    if img.n_frames > 1:
        frame = c_frame.slider("Frame", 1, img.n_frames, 1, key=f"{key}_frame_{img.n_frames}") - 1

    center: float | None = None
    width: float | None = None
    auto = False
    captions: list[str] = []
    if label == MANUAL:
        center, width = _manual_sliders(cached, key)
        captions.append(f"Manual window: center {center:g}, width {width:g}")
    elif label == AUTO:
        auto = True
        captions.append("Auto window (0.5–99.5th percentile)")
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

    colors = owner_colors(ov.owner for ov in overlays)
    shown = _owner_toggles(overlays, key=key, hidden_groups=hidden_groups) if overlays else set()
    here = index if series else frame
    visible = [ov for ov in overlays if ov.owner in shown and ov.frame == here]

    try:
        png, display_shape = _frame_png(path, mtime, frame, auto, center, width)
    except (DicomReadError, ValueError) as exc:
        st.warning(f"Cannot window this image: {exc}", icon="⚠️")
        return
    layers = _overlay_layers(visible, colors, factor=cached.factor, shape=cached.shape)
    fig = _figure(png, display_shape, cached, layers, height=height, revision=current)
    st.plotly_chart(
        fig,
        key=f"{key}_figure",
        config={"scrollZoom": True, "displaylogo": False},
    )
    if layers.skipped:
        captions.append(f"{layers.skipped} mask(s) not drawn: their size differs from the image's")
    if overlays:
        captions.append(f"{len(visible) - layers.skipped} of {len(overlays)} overlay(s) shown")
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


def render_header_table(
    uri: str, *, key: str = "header", height: int = 620, target: str | None = None
) -> None:
    """The DICOM header of ``uri`` as a table, with PHI values masked.

    Admins (:data:`quality.ui.trail.REVEAL_ROLES`) also get a *Reveal PHI fields* toggle:
    on, the table shows the real values, and the reveal is written to the audit log once per
    image and session (:func:`quality.ui.trail.reveal_header`, which checks the role again).
    Other roles never see the toggle.

    Parameters
    ----------
    uri : ``images.uri`` of the file.
    key : widget key.
    height : table height in pixels.
    target : what the audit row names (the image's SOP Instance UID); default ``uri``.
    """
    reveal = False
    if nav.current_role() in trail.REVEAL_ROLES:
        reveal = st.toggle(
            "🔓 Reveal PHI fields",
            key=f"{key}_reveal",
            help="Admins only. Shows patient identifiers; every reveal is in the audit log.",
        )
    try:
        path, mtime = _open(uri)
        if reveal:
            rows = trail.reveal_header(path, target or uri)
            table = pd.DataFrame(rows, columns=["tag", "keyword", "vr", "value"]).astype(str)
        else:
            table = _header(path, mtime)
    except PermissionDeniedError as exc:
        st.error(f"Not revealed: {exc}.", icon="⛔")
        return
    except (DicomReadError, StoreError) as exc:
        _problem(uri, exc, "read the header of")
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
    if reveal:
        st.caption("⚠️ Identifying fields are shown: this reveal is recorded in the audit log.")
    else:
        st.caption("Identifying fields read «masked» (DICOM PS3.15 basic profile).")
