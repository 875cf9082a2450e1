"""Image thumbnails with each annotator's box drawn on top, for disagreement galleries.

Decoding and windowing come from :mod:`quality.dicom` (:func:`~quality.dicom.load_pixels`,
:func:`~quality.dicom.to_display` with the header window, VOI LUT or automatic window, as in
the viewer); the first frame is block-averaged to at most :data:`THUMB_SIDE` pixels a side
*before* windowing, and only the 8-bit result is kept. Boxes arrive in the image's own
pixel coordinates and are divided by the thumbnail's scale factor.

Images may live in a local folder, an S3 bucket or a PACS over DICOMweb
(:mod:`quality.store`). :func:`load_thumb` looks in two caches before doing any work:

1. memory, a :func:`st.cache_data` keyed by URI, version and size (``max_entries`` bounds
   it), for reruns of the session and other sessions of this process;
2. the local disk, a :class:`~quality.store.thumbcache.ThumbCache` from the settings
   ``thumb_cache_dir`` / ``thumb_cache_mb`` (one per process, a :func:`st.cache_resource`),
   which outlives app restarts and is shared with other processes;

and only then computes: a DICOMweb store renders the thumbnail itself when it can (its
``thumbnail`` capability: no pixel data crosses the network), else the image is decoded
here. The version in the keys is a local file's ``mtime:size``; a remote image is keyed by
its URI alone (a DICOMweb instance never changes under its URI; an S3 object replaced under
the same key keeps its old thumbnail until evicted or the disk cache is cleared, unless the
caller passes a ``version`` such as the image's ``ingested_at``).

When a remote store cannot be reached, the other thumbnails of that store fail at once for
:data:`UNAVAILABLE_HOLD_S` seconds instead of each waiting out the store's retries.

Each annotator gets one colour (:func:`annotator_colors`, stable for a team), and their box
is a rectangle shape with the annotator's code on it and an entry in the legend.
"""

from __future__ import annotations

import base64
import dataclasses
import io
import logging
import os
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np
import plotly.graph_objects as go
import streamlit as st
from numpy.typing import NDArray
from PIL import Image

from quality.dicom import load_pixels, read_header, scrub, to_display
from quality.errors import DicomReadError, StoreError, StoreUnavailableError
from quality.store import is_remote, store_for_uri
from quality.store.thumbcache import ThumbCache, thumb_key
from quality.ui import viewer

__all__ = [
    "THUMB_SIDE",
    "UNAVAILABLE_HOLD_S",
    "Thumb",
    "annotator_colors",
    "clear_caches",
    "disk_cache",
    "load_thumb",
    "render_thumb",
    "thumb_figure",
]

log = logging.getLogger(__name__)

THUMB_SIDE = 256
UNAVAILABLE_HOLD_S = 30.0
"""Seconds during which a remote store that could not be reached is not asked again."""
_CACHE_ENTRIES = 256
_FIGURE_ENTRIES = 512
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
    factor : original pixels per thumbnail pixel (>= 1 when decoded here, the integer
        block size; a server-rendered thumbnail's original columns / thumbnail columns).
    shape : (rows, cols) of the original image.
    """

    pixels: NDArray[np.uint8]
    factor: float
    shape: tuple[int, int]


# --------------------------------------------------------------------------- disk cache

_disk_lock = threading.Lock()
_disk_override: list[ThumbCache] = []  # set by clear_caches(disk=...): benchmarks, tests
_unavailable: dict[str, tuple[float, str]] = {}  # store root -> (until, message)


@st.cache_resource(show_spinner=False)
def _settings_disk_cache() -> ThumbCache | None:
    """The on-disk cache of the settings; None when its folder cannot be made (the
    thumbnails then live in memory only)."""
    try:
        return ThumbCache.from_settings()
    except (OSError, ValueError) as exc:
        log.warning("thumbnail disk cache disabled: %s", exc)
        return None


def disk_cache() -> ThumbCache | None:
    """The on-disk thumbnail cache in use (the settings' one unless replaced by
    :func:`clear_caches`), or None when there is none."""
    with _disk_lock:
        if _disk_override:
            return _disk_override[0]
    return _settings_disk_cache()


def clear_caches(disk: ThumbCache | None = None) -> None:
    """Forget the thumbnails held in memory (and the unreachable-store memo).

    Parameters
    ----------
    disk : when given, the on-disk cache to use from now on instead of the settings' one
        (benchmarks and tests). None keeps the disk cache in use, and its entries: the
        next :func:`load_thumb` of an image reads it back from disk.
    """
    _thumb.clear()
    _figure.clear()
    with _disk_lock:
        _unavailable.clear()
        if disk is not None:
            _disk_override[:] = [disk]


# --------------------------------------------------------------------------- computing


def _store_root(uri: str) -> str:
    """What one remote store's URIs share: ``s3://bucket``, or the DICOMweb root."""
    if uri.lower().startswith("s3://"):
        return uri[: uri.find("/", 5)] if uri.find("/", 5) > 0 else uri
    return uri.partition("/studies/")[0]


def _check_available(uri: str) -> None:
    root = _store_root(uri)
    with _disk_lock:
        memo = _unavailable.get(root)
        if memo is not None and memo[0] <= time.monotonic():
            del _unavailable[root]
            memo = None
    if memo is not None:
        raise StoreUnavailableError(uri, memo[1])


def _mark_unavailable(uri: str, exc: StoreUnavailableError) -> None:
    message = str(exc)
    prefix = f"{exc.uri}: "
    if message.startswith(prefix):
        message = message[len(prefix) :]
    with _disk_lock:
        _unavailable[_store_root(uri)] = (time.monotonic() + UNAVAILABLE_HOLD_S, message)


def _as_grey(pixels: object) -> NDArray[np.uint8]:
    arr = np.asarray(pixels)
    if arr.ndim == 3 and arr.shape[2] in (3, 4):
        arr = arr[..., :3].astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
    if arr.ndim != 2 or 0 in arr.shape:
        raise ValueError(f"a rendered thumbnail must be a 2-D image, not shape {arr.shape}")
    if arr.dtype != np.uint8:
        arr = np.clip(np.rint(arr), 0, 255).astype(np.uint8)
    return np.ascontiguousarray(arr)


def _fit(pixels: NDArray[np.uint8], max_side: int) -> NDArray[np.uint8]:
    """Shrink a server rendering that came back larger than asked (area averaging)."""
    h, w = pixels.shape
    if max(h, w) <= max_side:
        return pixels
    scale = max_side / max(h, w)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return np.asarray(Image.fromarray(pixels).resize(size, Image.Resampling.BOX))


def _rendered(uri: str, max_side: int) -> Thumb | None:
    """The store's own rendering (DICOMweb ``/rendered``), or None when it has none.

    The capability returns ``(grey uint8 array, (rows, cols) of the original)``; encoded
    image bytes are accepted too (the original's size then comes from the header).
    """
    render = getattr(store_for_uri(uri), "thumbnail", None)
    if render is None:
        return None
    try:
        got = render(uri, max_side)
    except StoreUnavailableError:
        raise
    except StoreError as exc:
        raise DicomReadError(uri, "read_error", scrub(str(exc))) from exc
    if got is None:
        return None
    if isinstance(got, bytes | bytearray):
        # An encoded rendering (PNG/JPEG) without the original's size: the header has it.
        try:
            with Image.open(io.BytesIO(bytes(got))) as im:
                raw = np.asarray(im.convert("L"))
        except OSError as exc:
            raise DicomReadError(
                uri, "display_error", "the store's rendering is not an image"
            ) from exc
        header = read_header(uri)
        rows, cols = int(header.get("Rows", 0) or 0), int(header.get("Columns", 0) or 0)
    else:
        try:
            raw, (rows, cols) = got
            rows, cols = int(rows), int(cols)
        except (TypeError, ValueError) as exc:
            raise ValueError("the store's rendering is not (pixels, (rows, cols))") from exc
    pixels = _fit(_as_grey(raw), max_side)
    if rows <= 0 or cols <= 0:
        raise ValueError(f"the store reported an image of {rows}×{cols} pixels")
    return Thumb(pixels=pixels, factor=cols / pixels.shape[1], shape=(rows, cols))


def _decoded(source: str, max_side: int) -> Thumb:
    """Decode the first frame here, downsample, window."""
    img = load_pixels(source)
    small, k = viewer.downsample(img.frames[:1], max_side)
    pixels = to_display(dataclasses.replace(img, frames=np.ascontiguousarray(small)), 0)
    return Thumb(
        pixels=pixels, factor=float(k), shape=(int(img.frames.shape[1]), int(img.frames.shape[2]))
    )


@st.cache_data(max_entries=_CACHE_ENTRIES, show_spinner=False)
def _thumb(uri: str, source: str, version: str, max_side: int) -> Thumb:
    """Memory level: the disk cache, else the store's rendering, else a local decode."""
    disk = disk_cache()
    key = thumb_key(uri, max_side, version)
    if disk is not None:
        hit = disk.get(key)
        if hit is not None:
            return Thumb(pixels=hit.pixels, factor=hit.factor, shape=hit.shape)
    if is_remote(uri):
        _check_available(uri)  # after the caches: they still serve while a store is down
    thumb = _rendered(uri, max_side) if is_remote(uri) else None
    if thumb is None:
        thumb = _decoded(source, max_side)
    if disk is not None:
        disk.put(key, thumb.pixels, thumb.shape, thumb.factor)
    return thumb


def load_thumb(uri: str, max_side: int = THUMB_SIDE, *, version: str | None = None) -> Thumb:
    """The cached thumbnail of the image at ``uri`` (``images.uri``), local or remote.

    Parameters
    ----------
    uri : a local path (or one relative to the store root) or a remote entry URI.
    max_side : the thumbnail's largest side.
    version : for remote images, what changes when the image does (e.g. its
        ``ingested_at``); local files use their mtime and size whatever is given.

    Raises
    ------
    DicomReadError
        The file is missing or cannot be decoded or windowed.
    StoreError
        A malformed remote URI.
    StoreUnavailableError
        The remote store cannot be reached (remembered for :data:`UNAVAILABLE_HOLD_S` s).
    """
    source, stamp = _stamped(uri, version)
    return _load(uri, source, stamp, max_side)


def _stamped(uri: str, version: str | None) -> tuple[str, str]:
    """Where the image is read from, and what changes when it does (see :func:`load_thumb`).

    Raises
    ------
    DicomReadError
        A local file that is missing.
    """
    source = viewer.resolve_uri(uri)
    if is_remote(source):
        return source, "" if version is None else str(version)
    try:
        st_ = os.stat(source)
    except OSError as exc:  # gone between the check and now
        raise DicomReadError(uri, "missing", "the file is not in the image store any more") from exc
    return source, f"{st_.st_mtime_ns}:{st_.st_size}"


def _load(uri: str, source: str, stamp: str, max_side: int) -> Thumb:
    """:func:`_thumb`, with store and decoding trouble as the errors of :func:`load_thumb`."""
    try:
        return _thumb(uri, source, stamp, int(max_side))
    except StoreUnavailableError as exc:
        _mark_unavailable(source, exc)
        raise
    except ValueError as exc:
        if isinstance(exc, DicomReadError | StoreError):
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
    # The figure px.imshow(..., binary_string=True) makes (a PNG in a go.Image, y down), built
    # in one go: px and per-shape updates take 5 times longer, for every thumbnail.
    boxes = boxes or {}
    colors = dict(colors or annotator_colors(boxes))
    shapes = []
    for code, raw in boxes.items():
        box = _valid_box(raw)
        if box is None:
            continue
        x0, y0, x1, y1 = (v / thumb.factor for v in box)
        color = colors.get(code) or annotator_colors([code])[code]
        shapes.append(
            {
                "type": "rect",
                "x0": x0,
                "y0": y0,
                "x1": x1,
                "y1": y1,
                "line": {"color": color, "width": 3.5 if code == highlight else 2},
                "name": str(code),
                "showlegend": legend,
                "label": {
                    "text": str(code),
                    "textposition": "top left",
                    "font": {"color": color, "size": 11},
                },
            }
        )
    png = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(thumb.pixels)).save(png, format="PNG")
    source = "data:image/png;base64," + base64.b64encode(png.getvalue()).decode("ascii")
    image = go.Image(
        source=source, hovertemplate="x: %{x}<br>y: %{y}<br>color: %{z[0]}<extra></extra>"
    )
    axis = {"visible": False}
    return go.Figure(
        data=[image],
        layout={
            "xaxis": axis,
            "yaxis": axis,  # an image trace reverses y and fixes the aspect itself
            "shapes": shapes,
            "height": height,
            "margin": {"l": 0, "r": 0, "t": 0, "b": 0},
            "legend": {
                "orientation": "h",
                "y": -0.02,
                "x": 0,
                "yanchor": "top",
                "font": {"size": 10},
            },
            "dragmode": "zoom",
        },
    )


@st.cache_resource(max_entries=_FIGURE_ENTRIES, show_spinner=False)
def _figure(
    uri: str,
    source: str,
    stamp: str,
    boxes: tuple[tuple[str, tuple[float, ...] | None], ...],
    colors: tuple[tuple[str, str], ...],
    highlight: str | None,
    height: int,
) -> go.Figure:
    """The figure of :func:`render_thumb`, kept per image version and overlay: plotly takes
    some 0.1 s to build one, on every rerun of a gallery otherwise. Shared: never changed."""
    thumb = _load(uri, source, stamp, THUMB_SIDE)
    return thumb_figure(thumb, dict(boxes), dict(colors), highlight=highlight, height=height)


def render_thumb(
    uri: str,
    *,
    boxes: Mapping[str, object] | None = None,
    colors: Mapping[str, str] | None = None,
    highlight: str | None = None,
    key: str,
    height: int = 260,
    version: str | None = None,
) -> bool:
    """Draw one thumbnail with its boxes; a warning (not a traceback) when it cannot be shown.

    ``version`` is passed to :func:`load_thumb` (remote images only).

    Returns
    -------
    bool
        Whether the image was drawn.
    """
    shown = {str(c): _valid_box(b) for c, b in (boxes or {}).items()}
    drawn = sum(b is not None for b in shown.values())
    # Room for the legend below the image, ~5 entries a row, so every image keeps its size.
    legend_rows = -(-drawn // 5)
    palette = dict(colors or annotator_colors(boxes or {}))
    try:
        source, stamp = _stamped(uri, version)
        fig = _figure(
            uri,
            source,
            stamp,
            tuple((c, None if b is None else tuple(b)) for c, b in shown.items()),
            tuple(sorted((str(c), str(v)) for c, v in palette.items())),
            highlight,
            int(height + 22 * legend_rows),
        )
    except DicomReadError as exc:
        st.warning(f"Cannot display `{Path(uri).name}` ({exc.kind}): {exc.message}.", icon="⚠️")
        return False
    except StoreUnavailableError as exc:
        st.warning(f"Cannot display `{Path(uri).name}`: the image store is not reachable "
                   f"({scrub(str(exc))}).", icon="⚠️")  # fmt: skip
        return False
    except StoreError as exc:
        st.warning(f"Cannot display `{Path(uri).name}`: {scrub(str(exc))}.", icon="⚠️")
        return False
    st.plotly_chart(fig, key=key, config={"displayModeBar": False})
    return True
