"""The storage contract of segmentation masks in the annotation DB.

``annotations.mask`` and ``reference_labels.mask`` hold one binary mask per row, as a
**zlib-compressed uint8 array in C order** (row-major) of the image's ``rows × cols``
(``images.rows``, ``images.cols``). The shape is not stored with the blob: it is the image's.
0 is background, any other value foreground (:func:`encode_mask` writes 0/1; tools that write
0/255 decode the same).

* :func:`encode_mask`: a boolean mask → the blob to store.
* :func:`decode_mask`: a blob and the image's shape → the boolean mask; raises
  :class:`~quality.errors.LabelDataError` for a blob that does not decompress or has the
  wrong size, so that a report can drop that one annotation and say so.
"""

from __future__ import annotations

import zlib

import numpy as np
import numpy.typing as npt
from numpy.typing import NDArray

from quality.errors import LabelDataError

__all__ = ["decode_mask", "encode_mask"]


def encode_mask(mask: npt.ArrayLike, *, level: int = 6) -> bytes:
    """A binary mask as the stored blob: zlib-compressed uint8 (0/1), C order.

    Parameters
    ----------
    mask : array-like of bool or 0/1, shape (rows, cols)
        The image's mask; the shape must be the image's ``rows × cols``.
    level : zlib compression level (0-9).

    Returns
    -------
    bytes

    Raises
    ------
    LabelDataError
        A mask that is not 2-D or has values other than 0/1.

    Examples
    --------
    >>> blob = encode_mask([[True, False], [False, True]])
    >>> decode_mask(blob, (2, 2)).astype(int).tolist()
    [[1, 0], [0, 1]]
    """
    arr = np.asarray(mask)
    if arr.ndim != 2:
        raise LabelDataError("mask", "shape", f"expected a 2-D (rows, cols) mask, got {arr.shape}")
    if arr.dtype != np.bool_:
        if not np.issubdtype(arr.dtype, np.number) or not ((arr == 0) | (arr == 1)).all():
            raise LabelDataError("mask", "values", "expected a boolean or 0/1 mask")
    return zlib.compress(np.ascontiguousarray(arr, dtype=np.uint8).tobytes(), level)


def decode_mask(blob: bytes, shape: tuple[int, int]) -> NDArray[np.bool_]:
    """A stored blob back to the boolean mask of an image of ``shape``.

    Parameters
    ----------
    blob : the stored bytes (zlib-compressed uint8, C order).
    shape : ``(rows, cols)`` of the image.

    Returns
    -------
    ndarray of bool, shape ``shape``
        Nonzero bytes are foreground.

    Raises
    ------
    LabelDataError
        The blob does not decompress, or decompresses to a size other than
        ``rows * cols`` bytes, or the shape is unknown or negative.
    """
    rows, cols = shape
    if rows is None or cols is None or int(rows) < 0 or int(cols) < 0:
        raise LabelDataError("mask", "shape", f"image shape {shape} is unknown or negative")
    try:
        raw = zlib.decompress(bytes(blob))
    except (zlib.error, TypeError) as exc:
        raise LabelDataError("mask", "blob", f"does not decompress ({exc})") from None
    expected = int(rows) * int(cols)
    if len(raw) != expected:
        raise LabelDataError(
            "mask",
            "blob",
            f"{len(raw)} bytes after decompression, expected rows × cols = "
            f"{int(rows)} × {int(cols)} = {expected}",
        )
    return np.frombuffer(raw, dtype=np.uint8).reshape(int(rows), int(cols)) != 0
