"""Image stores: where DICOM files live, behind one small protocol.

Three kinds of store, chosen by the URI's scheme:

* a local folder (a plain path or ``file://``): :class:`~quality.store.local.LocalStore`;
* an S3-compatible bucket (``s3://bucket/prefix``): :class:`~quality.store.s3.S3Store`;
* a PACS over DICOMweb (``dicomweb+http(s)://host/dicom-web``):
  :class:`~quality.store.dicomweb.DicomWebStore`.

:func:`open_store` turns a *store* URI into an :class:`ImageStore` (ingest lists it).
:func:`store_for_uri` finds the store of one *entry* URI, the value ingest writes to
``images.uri``, so the viewer, the scorer and the checks read any image with
:func:`open_uri` wherever it lives. Entry URIs are absolute local paths for folders,
``s3://bucket/key`` for S3 and
``dicomweb+http://host/root/studies/<uid>/series/<uid>/instances/<uid>`` for DICOMweb.

Credentials never appear in URIs (they would end up in the DB): endpoints, keys and tokens
come from the settings (``QUALITY_S3_*``, ``QUALITY_DICOMWEB_*`` or the ``[quality]`` table of
``.streamlit/secrets.toml``), see :class:`quality.config.Settings`.

Stores may offer optional capabilities beyond the protocol, found with ``getattr``:

``thumbnail(uri, max_side) -> tuple[numpy.ndarray, tuple[int, int]] | None``
    a grey uint8 image rendered by the server (DICOMweb ``/rendered``) and the original
    ``(rows, cols)``; None when the server cannot render it.
``native_pixels(uri) -> bytes``
    the frames decoded by the server to explicit VR little endian, for transfer syntaxes this
    client cannot decode (see :func:`quality.dicom.load_pixels`).
``header(uri) -> pydicom.Dataset``
    the header without pixel data (DICOMweb WADO-RS metadata).
``read_bytes(uri) -> bytes``
    the whole entry in one request, for readers that need every byte anyway (ingest's pixel
    hash); :func:`open_uri` with ``whole=True`` uses it.
"""

from __future__ import annotations

import functools
import io
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Protocol, runtime_checkable
from urllib.parse import unquote, urlparse

from quality.errors import StoreError, StoreUnavailableError

__all__ = [
    "REMOTE_SCHEMES",
    "ImageStore",
    "StoreEntry",
    "StoreError",
    "StoreUnavailableError",
    "is_remote",
    "open_store",
    "open_uri",
    "store_for_uri",
]

REMOTE_SCHEMES = ("s3://", "dicomweb+http://", "dicomweb+https://")


@dataclass(frozen=True, slots=True)
class StoreEntry:
    """One file (or DICOMweb instance) of a store.

    Attributes
    ----------
    uri : the URI stored in ``images.uri`` (an absolute path for local stores).
    size : size in bytes, or None when the listing cannot tell (DICOMweb: the size is learnt
        when the instance is read, and an instance under one URI never changes).
    mtime : modification time, seconds since the epoch, or None when the store has none.
    key : the path relative to the store root, ``/``-separated; its first segment names
        the source (see :func:`quality.ingest.source_name`).
    """

    uri: str
    size: int | None
    mtime: float | None
    key: str


@runtime_checkable
class ImageStore(Protocol):
    """What ingest, the viewer and the scorer need from a store."""

    root: str
    """The canonical store URI, without credentials (a resolved folder path for local)."""

    def list(self) -> Iterator[StoreEntry]:
        """Every file of the store, recursively, in a deterministic order."""
        ...

    def open(self, uri: str) -> BinaryIO:
        """Open one entry for binary reading (seekable).

        Raises
        ------
        StoreError
            The URI is not inside this store (path safety) or the entry does not exist.
        StoreUnavailableError
            The store cannot be reached (after retries).
        """
        ...

    def local_path(self, uri: str) -> Path | None:
        """A local path for ``uri`` when the store is on this machine, else None."""
        ...


def is_remote(uri: str | os.PathLike[str]) -> bool:
    """Whether ``uri`` names an entry of a remote store (S3 or DICOMweb)."""
    return isinstance(uri, str) and uri.lower().startswith(REMOTE_SCHEMES)


def _scheme(text: str) -> str:
    return urlparse(text).scheme.lower()


def open_store(uri: str) -> ImageStore:
    """The store whose root is ``uri``: a folder, ``file://``, ``s3://`` or ``dicomweb+http(s)://``.

    Raises
    ------
    StoreError
        Unsupported scheme, a folder that does not exist, or a malformed remote URI.
    StoreUnavailableError
        A remote store that cannot be reached.
    """
    text = str(uri).strip()
    if not text:
        raise StoreError(str(uri), "empty store URI")
    scheme = _scheme(text)
    if scheme == "s3":
        from quality.store.s3 import S3Store

        return S3Store(text)
    if scheme in ("dicomweb+http", "dicomweb+https"):
        from quality.store.dicomweb import DicomWebStore

        return DicomWebStore(text)
    from quality.store.local import LocalStore

    if scheme == "file":
        parsed = urlparse(text)
        if parsed.netloc not in ("", "localhost"):
            raise StoreError(text, "file:// URLs must point to this machine (no host)")
        return LocalStore(unquote(parsed.path))
    if scheme and len(scheme) > 1:  # a one-letter scheme is a Windows drive letter
        raise StoreError(
            text,
            f"unsupported store scheme {scheme!r}: use a folder, file://, s3:// "
            "or dicomweb+http(s)://",
        )
    return LocalStore(text)


@functools.lru_cache(maxsize=32)
def _remote_store(root: str) -> ImageStore:
    return open_store(root)


def store_for_uri(uri: str) -> ImageStore:
    """The (cached) remote store an entry URI belongs to.

    ``s3://bucket/key`` belongs to ``s3://bucket``; a DICOMweb instance URI to the root before
    its ``/studies/`` segment.

    Raises
    ------
    StoreError
        ``uri`` is not a remote entry URI.
    """
    text = str(uri)
    scheme = _scheme(text)
    if scheme == "s3":
        bucket = urlparse(text).netloc
        if not bucket:
            raise StoreError(text, "an s3:// URI needs a bucket")
        return _remote_store(f"s3://{bucket}")
    if scheme in ("dicomweb+http", "dicomweb+https"):
        head, sep, _ = text.partition("/studies/")
        if not sep:
            raise StoreError(text, "a DICOMweb image URI has /studies/<uid>/series/... in it")
        return _remote_store(head)
    raise StoreError(text, "not a remote store URI (s3:// or dicomweb+http(s)://)")


def open_uri(uri: str | os.PathLike[str], *, whole: bool = False) -> BinaryIO:
    """Open an ``images.uri`` for binary reading, local or remote.

    ``whole=True`` says the caller will read every byte: a remote store that can fetch the
    entry in one request (``read_bytes``) does so, instead of ranged reads.

    Raises
    ------
    StoreError
        A remote entry that is outside its store or missing.
    StoreUnavailableError
        A remote store that cannot be reached.
    OSError
        A local file that cannot be opened.
    """
    if is_remote(uri):
        store = store_for_uri(str(uri))
        read_bytes = getattr(store, "read_bytes", None) if whole else None
        if read_bytes is not None:
            return io.BytesIO(read_bytes(str(uri)))
        return store.open(str(uri))
    return open(uri, "rb")  # the caller closes it
