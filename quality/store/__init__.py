"""Image stores: where DICOM files live, behind one small protocol.

:func:`open_store` turns a store URI into an :class:`ImageStore`. Only local folders (plain
paths or ``file://``) exist in this release; ``s3://`` and ``dicomweb+http(s)://`` come with
the S3 and DICOMweb stores (issue 8).

URIs of entries are absolute local file paths for :class:`~quality.store.local.LocalStore`,
so :func:`quality.dicom.load_pixels` opens what ingest stores in ``images.uri`` directly.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Protocol, runtime_checkable
from urllib.parse import unquote, urlparse

from quality.errors import StoreError

__all__ = ["ImageStore", "StoreEntry", "open_store"]


@dataclass(frozen=True, slots=True)
class StoreEntry:
    """One file of a store.

    Attributes
    ----------
    uri : the URI stored in ``images.uri`` (an absolute path for local stores).
    size : size in bytes.
    mtime : modification time, seconds since the epoch (float).
    key : the path relative to the store root, ``/``-separated.
    """

    uri: str
    size: int
    mtime: float
    key: str


@runtime_checkable
class ImageStore(Protocol):
    """What ingest and the viewer need from a store."""

    root: str

    def list(self) -> Iterator[StoreEntry]:
        """Every file of the store, recursively, in a deterministic order."""
        ...

    def open(self, uri: str) -> BinaryIO:
        """Open one entry for binary reading."""
        ...

    def local_path(self, uri: str) -> Path | None:
        """A local path for ``uri`` when the store is on this machine, else None."""
        ...


_LATER = {
    "s3": "S3 stores come with a later release (issue 8)",
    "dicomweb+http": "DICOMweb stores come with a later release (issue 8)",
    "dicomweb+https": "DICOMweb stores come with a later release (issue 8)",
}


def open_store(uri: str) -> ImageStore:
    """The store for ``uri``: a local folder path or a ``file://`` URL.

    Raises
    ------
    StoreError
        Unsupported scheme, or a folder that does not exist.
    """
    from quality.store.local import LocalStore

    text = str(uri).strip()
    if not text:
        raise StoreError(uri, "empty store URI")
    parsed = urlparse(text)
    scheme = parsed.scheme.lower()
    if scheme in _LATER:
        raise StoreError(uri, _LATER[scheme])
    if scheme == "file":
        if parsed.netloc not in ("", "localhost"):
            raise StoreError(uri, "file:// URLs must point to this machine (no host)")
        return LocalStore(unquote(parsed.path))
    if scheme and len(scheme) > 1:  # a one-letter scheme is a Windows drive letter
        raise StoreError(
            uri, f"unsupported store scheme {scheme!r}: use a local folder or file:// URL"
        )
    return LocalStore(text)
