"""A local, size-bounded on-disk cache of decoded thumbnails.

Galleries over remote stores (S3, a PACS over DICOMweb) would otherwise fetch and decode
every image again on each app start. :class:`ThumbCache` keeps the display-ready 8-bit
thumbnails on the local disk, shared by every Streamlit session and process on the machine,
and bounded in size: the least recently used entries go first.

Layout and guarantees
---------------------
* One lossless greyscale PNG per entry, ``<dir>/<key[:2]>/<key>.png``, with the original
  image shape and the scale factor in the PNG's text chunk (no sidecar to keep in step).
  Keys are sha256 hex digests (:func:`thumb_key`), so file names never carry a URI, a path
  or anything identifying.
* Writes go to a temporary file in the same folder, then :func:`os.replace`: a reader sees
  the old entry, the new one or none, never half a file, whatever other threads or
  processes do at the same time.
* A corrupt, truncated or foreign file is a miss: it is removed, never raised.
* Recency is the file's modification time: a hit touches it (:func:`os.utime`), and when a
  :meth:`~ThumbCache.put` takes the total over the bound, the least recently used entries
  are deleted until the total is under 90 % of it.
* The total size is a running estimate (a :meth:`~ThumbCache.put` adds its bytes), so a put
  does not list the folder. The folder is scanned when the cache is opened, when the bound
  is crossed (to find the oldest entries) and every :data:`RESCAN_EVERY` puts, which also
  picks up what other processes wrote. Between scans several processes may together
  overshoot the bound by what they wrote since their last scan.
* The cache is an optimisation: a write that fails (disk full, read-only folder) is
  skipped and counted, never raised.

For S3, a thumbnail is keyed by the object's URI (and the caller's ``version``, if any): an
object replaced under the same key keeps its old thumbnail until it is evicted or the cache
is cleared. DICOMweb instances never change under one URI; local files are keyed by their
mtime and size.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import logging
import os
import re
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray
from PIL import Image, PngImagePlugin

__all__ = ["FORMAT", "RESCAN_EVERY", "CachedThumb", "ThumbCache", "thumb_key"]

log = logging.getLogger(__name__)

FORMAT = "qw-thumb-1"
"""Format tag: part of every key and of every file's text chunk (a format change misses)."""

RESCAN_EVERY = 256
"""Puts between two scans of the folder (to correct the running size estimate)."""

_KEY_RE = re.compile(r"^[0-9a-f]{64}$")
_LOW_WATER = 0.9
_MAX_SIDE = 8192  # larger than any thumbnail: a file claiming more is not ours
_STALE_TMP_S = 3600.0  # a temp file this old belongs to a writer that died


@dataclasses.dataclass(frozen=True)
class CachedThumb:
    """A thumbnail read back from the cache.

    Attributes
    ----------
    pixels : uint8, shape (h, w), display-ready grey.
    shape : (rows, cols) of the original image.
    factor : original pixels per thumbnail pixel.
    """

    pixels: NDArray[np.uint8]
    shape: tuple[int, int]
    factor: float


def thumb_key(uri: str, max_side: int, version: str = "") -> str:
    """The cache key of a thumbnail: sha256 hex of the format tag, URI, size and version.

    Parameters
    ----------
    uri : the image's ``images.uri``.
    max_side : the thumbnail's largest side.
    version : what changes when the image does (a local file's ``mtime:size``); empty for
        immutable remote instances.

    Returns
    -------
    str
        64 lowercase hex digits, safe as a file name and free of the URI's text.
    """
    text = "\x00".join((FORMAT, str(uri), str(int(max_side)), str(version)))
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


class ThumbCache:
    """Thumbnails on disk, bounded by ``max_bytes``, least recently used evicted first.

    Safe to share between threads (one instance per process, e.g. a Streamlit resource) and
    between processes using the same folder.

    Parameters
    ----------
    directory : the cache folder (created if missing).
    max_bytes : the size bound, in bytes of the entries' files.

    Raises
    ------
    ValueError
        ``max_bytes`` is not positive.
    OSError
        The folder cannot be created.
    """

    thumb_key = staticmethod(thumb_key)

    def __init__(self, directory: str | os.PathLike[str], max_bytes: int) -> None:
        if int(max_bytes) <= 0:
            raise ValueError(f"max_bytes must be positive, not {max_bytes}")
        self.directory = Path(directory).expanduser()
        self.max_bytes = int(max_bytes)
        self.directory.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._hits = self._misses = self._evictions = self._write_errors = 0
        self._bytes = self._entries = 0
        self._puts_since_scan = 0
        self._last_ns = 0
        with self._lock:
            self._rescan_locked()

    @classmethod
    def from_settings(cls, **overrides: Any) -> ThumbCache:
        """The cache of the settings ``thumb_cache_dir`` and ``thumb_cache_mb`` (MiB).

        Parameters
        ----------
        **overrides : passed to :func:`quality.config.get_settings`.
        """
        from quality.config import get_settings

        settings = get_settings(**overrides)
        return cls(settings.thumb_cache_dir, max(1, int(settings.thumb_cache_mb * 2**20)))

    def __repr__(self) -> str:
        return f"ThumbCache({str(self.directory)!r}, max_bytes={self.max_bytes})"

    # ----------------------------------------------------------------------- paths

    def _path(self, key: str) -> Path:
        if not isinstance(key, str) or not _KEY_RE.match(key):
            # Keys become file names: only our own hex digests may (no path tricks).
            raise ValueError("a thumbnail cache key is 64 lowercase hex digits (thumb_key)")
        return self.directory / key[:2] / f"{key}.png"

    def _now_ns(self) -> int:
        """Strictly increasing wall-clock nanoseconds: puts and hits never tie in LRU order
        (file systems stamp times from a coarse clock, so the kernel's own would tie)."""
        with self._lock:
            self._last_ns = max(time.time_ns(), self._last_ns + 1)
            return self._last_ns

    # ----------------------------------------------------------------------- API

    def get(self, key: str) -> CachedThumb | None:
        """The entry under ``key``, or None (a miss); a hit makes it the most recent.

        A corrupt or unreadable entry is a miss and is removed.
        """
        path = self._path(key)
        try:
            with path.open("rb") as fh:
                data = fh.read()
        except OSError:
            self._count(misses=1)
            return None
        thumb = _decode(data, key)
        if thumb is None:
            log.debug("thumbnail cache: dropping a corrupt entry %s", path.name)
            self._remove(path, len(data))
            self._count(misses=1)
            return None
        now = self._now_ns()
        try:
            os.utime(path, ns=(now, now))
        except OSError:
            pass  # evicted by another process meanwhile: the pixels read are still good
        self._count(hits=1)
        return thumb

    def put(
        self,
        key: str,
        pixels: NDArray[np.uint8],
        shape: tuple[int, int],
        factor: float,
    ) -> None:
        """Store a thumbnail under ``key`` (replacing any entry there), then keep the bound.

        Parameters
        ----------
        key : from :func:`thumb_key`.
        pixels : uint8, 2-D (grey).
        shape : (rows, cols) of the original image.
        factor : original pixels per thumbnail pixel (> 0).

        Raises
        ------
        ValueError
            ``pixels`` is not a 2-D uint8 array, or ``shape``/``factor`` are not positive.
        """
        path = self._path(key)
        arr = np.asarray(pixels)
        if arr.dtype != np.uint8 or arr.ndim != 2 or 0 in arr.shape:
            raise ValueError(f"pixels must be a non-empty 2-D uint8 array, not {arr.dtype} "
                             f"{arr.shape}")  # fmt: skip
        rows, cols = (int(v) for v in shape)
        factor = float(factor)
        if rows <= 0 or cols <= 0 or not factor > 0 or not np.isfinite(factor):
            raise ValueError(f"shape must be positive and factor > 0, not {shape}, {factor}")
        data = _encode(np.ascontiguousarray(arr), key, (rows, cols), factor)
        if len(data) > _LOW_WATER * self.max_bytes:
            return  # it alone would crowd out everything else: not worth keeping
        tmp = path.parent / f".{key}.{os.getpid()}.{threading.get_ident()}.tmp"
        now = self._now_ns()
        # The write is serialised within the process (encoding is not): the size of what it
        # replaces and the running total then stay exact, whatever other threads do.
        with self._lock:
            try:
                path.parent.mkdir(exist_ok=True)
                old = _size(path)
                with tmp.open("wb") as fh:
                    fh.write(data)
                os.utime(tmp, ns=(now, now))
                os.replace(tmp, path)
            except OSError as exc:
                log.debug("thumbnail cache: write skipped (%s)", exc.strerror)
                _unlink(tmp)
                self._write_errors += 1
                return
            self._bytes += len(data) - (old or 0)
            self._entries += old is None
            self._puts_since_scan += 1
            if self._bytes > self.max_bytes or self._puts_since_scan >= RESCAN_EVERY:
                self._rescan_locked()
                if self._bytes > self.max_bytes:
                    self._evict_locked()

    def clear(self) -> None:
        """Delete every entry (and stray temporary files); counters are kept."""
        with self._lock:
            for _, path, _, _ in self._scan(include_tmp=True):
                _unlink(path)
            self._bytes = self._entries = 0
            self._puts_since_scan = 0

    def stats(self) -> dict[str, int]:
        """Counters since this instance was made, and the size of the cache.

        Returns
        -------
        dict
            ``entries`` and ``bytes`` (the running estimate, exact after a scan), ``hits``,
            ``misses``, ``evictions``, ``write_errors`` and ``max_bytes``.
        """
        with self._lock:
            return {
                "entries": self._entries,
                "bytes": self._bytes,
                "hits": self._hits,
                "misses": self._misses,
                "evictions": self._evictions,
                "write_errors": self._write_errors,
                "max_bytes": self.max_bytes,
            }

    def trim(self) -> None:
        """Scan the folder and evict down to the bound if it is over (what other processes
        wrote counts too)."""
        with self._lock:
            self._rescan_locked()
            if self._bytes > self.max_bytes:
                self._evict_locked()

    # ----------------------------------------------------------------------- internals

    def _count(self, **deltas: int) -> None:
        with self._lock:
            for name, delta in deltas.items():
                setattr(self, f"_{name}", getattr(self, f"_{name}") + delta)

    def _remove(self, path: Path, size: int) -> None:
        if _unlink(path):
            with self._lock:
                self._bytes = max(0, self._bytes - size)
                self._entries = max(0, self._entries - 1)

    def _scan(self, *, include_tmp: bool = False) -> list[tuple[int, Path, int, bool]]:
        """``(mtime_ns, path, size, is_tmp)`` of the files in the cache's sub-folders."""
        out: list[tuple[int, Path, int, bool]] = []
        try:
            subdirs = [e for e in os.scandir(self.directory) if len(e.name) == 2]
        except OSError:
            return out
        for sub in subdirs:
            try:
                if not sub.is_dir(follow_symlinks=False):
                    continue
                with os.scandir(sub.path) as it:
                    files = list(it)
            except OSError:
                continue
            for entry in files:
                is_tmp = entry.name.endswith(".tmp")
                if not (is_tmp or entry.name.endswith(".png")):
                    continue
                try:
                    st = entry.stat(follow_symlinks=False)
                except OSError:
                    continue  # removed meanwhile
                if is_tmp and not include_tmp:
                    if time.time() - st.st_mtime > _STALE_TMP_S:
                        _unlink(Path(entry.path))
                    continue
                out.append((st.st_mtime_ns, Path(entry.path), st.st_size, is_tmp))
        return out

    def _rescan_locked(self) -> None:
        files = self._scan()
        self._bytes = sum(size for _, _, size, _ in files)
        self._entries = len(files)
        self._puts_since_scan = 0

    def _evict_locked(self) -> None:
        """Delete the least recently used entries until under 90 % of the bound."""
        files = sorted(self._scan(), key=lambda f: (f[0], f[1].name))
        total = sum(size for _, _, size, _ in files)
        target = _LOW_WATER * self.max_bytes
        kept = len(files)
        for _, path, size, _ in files:
            if total <= target:
                break
            total -= size
            kept -= 1
            if _unlink(path):
                self._evictions += 1
        self._bytes = max(0, total)
        self._entries = kept


def _size(path: Path) -> int | None:
    try:
        return path.stat().st_size
    except OSError:
        return None


def _unlink(path: Path) -> bool:
    try:
        path.unlink()
    except FileNotFoundError:
        return False  # another thread or process got there first
    except OSError as exc:
        log.debug("thumbnail cache: cannot delete an entry (%s)", exc.strerror)
        return False
    return True


def _encode(pixels: NDArray[np.uint8], key: str, shape: tuple[int, int], factor: float) -> bytes:
    info = PngImagePlugin.PngInfo()
    info.add_text("qw-format", FORMAT)
    info.add_text("qw-key", key)  # a file copied under another name is not a hit
    info.add_text("qw-shape", f"{shape[0]},{shape[1]}")
    info.add_text("qw-factor", repr(factor))
    buf = io.BytesIO()
    # Level 3: close to the default's size at a fraction of its time; lossless either way.
    Image.fromarray(pixels).save(buf, format="PNG", pnginfo=info, compress_level=3)
    return buf.getvalue()


def _decode(data: bytes, key: str) -> CachedThumb | None:
    """The thumbnail in ``data``, or None when it is not a complete entry for ``key``."""
    try:
        with Image.open(io.BytesIO(data), formats=["PNG"]) as img:
            if img.mode != "L" or max(img.size) > _MAX_SIDE:
                return None
            img.load()  # decodes every byte: a truncated file fails here
            text = dict(getattr(img, "text", {}) or {})
            pixels = np.array(img, dtype=np.uint8)
        if text.get("qw-format") != FORMAT or text.get("qw-key") != key:
            return None
        rows, cols = (int(v) for v in text["qw-shape"].split(","))
        factor = float(text["qw-factor"])
    except (OSError, ValueError, KeyError, SyntaxError, EOFError, Image.DecompressionBombError):
        # Everything PIL and the parsing raise for damaged input: a miss, not an error.
        return None
    if rows <= 0 or cols <= 0 or not factor > 0 or not np.isfinite(factor):
        return None
    return CachedThumb(pixels=pixels, shape=(rows, cols), factor=factor)
