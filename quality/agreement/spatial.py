"""Spatial agreement: overlap of masks, surface distance, and matching of boxes.

Which to use
------------
* Two masks, overlap: :func:`dice` (F1 of the voxels) or :func:`iou` (Jaccard); they are
  monotone in each other, :math:`D = 2J/(1+J)`.
* Many mask pairs at once, on CPU or GPU: :func:`dice_batch`, :func:`iou_batch` (torch).
* Two masks, boundary error in millimetres: :func:`hausdorff95`.
* Boxes: :func:`box_iou` for the IoU matrix, :func:`match_boxes` for a one-to-one matching
  (Hungarian) with precision, recall and F1 at an IoU threshold.

Conventions
-----------
* Masks are boolean (or 0/1) arrays of the same shape, 2-D or 3-D (any shape for the overlap
  measures).
* Two empty masks agree perfectly: :func:`dice` and :func:`iou` return 1.0 (the convention of,
  e.g., MONAI's ``ignore_empty=False``); :func:`hausdorff95` returns NaN when either mask is
  empty, since a distance to nothing is undefined.
* Boxes are ``[x0, y0, x1, y1]`` in continuous coordinates (``x1 ≥ x0``, ``y1 ≥ y0``; area
  ``(x1 − x0)(y1 − y0)``, no +1 pixel convention).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import torch
from numpy.typing import NDArray
from scipy import ndimage
from scipy.optimize import linear_sum_assignment

from quality.errors import LabelDataError

__all__ = [
    "BoxMatch",
    "box_iou",
    "dice",
    "dice_batch",
    "hausdorff95",
    "iou",
    "iou_batch",
    "match_boxes",
]


# --------------------------------------------------------------------------------------------
# Masks
# --------------------------------------------------------------------------------------------


def _mask_pair(a: npt.ArrayLike, b: npt.ArrayLike) -> tuple[NDArray[np.bool_], NDArray[np.bool_]]:
    """Two masks as bool arrays of one shape."""
    out = []
    for name, m in (("a", a), ("b", b)):
        arr = np.asarray(m)
        if arr.dtype != np.bool_:
            if not np.issubdtype(arr.dtype, np.number):
                raise LabelDataError(
                    "mask", name, f"expected a boolean or 0/1 mask, got {arr.dtype}"
                )
            binary = (arr == 0) | (arr == 1)
            if not binary.all():
                bad = tuple(int(i) for i in np.argwhere(~binary)[0])
                raise LabelDataError("mask", name, f"value {arr[bad]!r} at {bad} is not 0 or 1")
            arr = arr.astype(bool)
        out.append(arr)
    if out[0].shape != out[1].shape:
        raise LabelDataError(
            "mask", "shape", f"masks differ in shape: {out[0].shape} vs {out[1].shape}"
        )
    return out[0], out[1]


def dice(a: npt.ArrayLike, b: npt.ArrayLike) -> float:
    r"""Dice–Sørensen coefficient of two binary masks.

    .. math:: D(A, B) = \frac{2\,|A \cap B|}{|A| + |B|} \in [0, 1]

    Higher is better (1 = identical). Both masks empty → 1.0 (perfect agreement on "nothing").

    Parameters
    ----------
    a, b : array-like of bool or 0/1, same shape (any)

    Returns
    -------
    float

    Raises
    ------
    LabelDataError
        Shapes differ, or values other than 0/1.

    References
    ----------
    L. R. Dice, "Measures of the amount of ecologic association between species",
    *Ecology* 26(3):297–302, 1945.

    Examples
    --------
    >>> dice([[1, 1], [0, 0]], [[1, 0], [0, 0]])
    0.6666666666666666
    """
    x, y = _mask_pair(a, b)
    inter = int(np.count_nonzero(x & y))
    total = int(np.count_nonzero(x)) + int(np.count_nonzero(y))
    return 1.0 if total == 0 else 2.0 * inter / total


def iou(a: npt.ArrayLike, b: npt.ArrayLike) -> float:
    r"""Intersection over union (Jaccard index) of two binary masks.

    .. math:: J(A, B) = \frac{|A \cap B|}{|A \cup B|} \in [0, 1], \qquad D = \frac{2J}{1+J}

    Higher is better. Both masks empty → 1.0 (as :func:`dice`).

    Parameters
    ----------
    a, b : array-like of bool or 0/1, same shape (any)

    Returns
    -------
    float

    Raises
    ------
    LabelDataError
        Shapes differ, or values other than 0/1.

    References
    ----------
    P. Jaccard, "The distribution of the flora in the alpine zone", *New Phytologist*
    11(2):37–50, 1912.

    Examples
    --------
    >>> iou([[1, 1], [0, 0]], [[1, 0], [0, 0]])
    0.5
    """
    x, y = _mask_pair(a, b)
    union = int(np.count_nonzero(x | y))
    return 1.0 if union == 0 else int(np.count_nonzero(x & y)) / union


def _batch_pair(
    a: torch.Tensor | npt.ArrayLike, b: torch.Tensor | npt.ArrayLike
) -> tuple[torch.Tensor, torch.Tensor]:
    ta = a if isinstance(a, torch.Tensor) else torch.as_tensor(np.asarray(a))
    tb = b if isinstance(b, torch.Tensor) else torch.as_tensor(np.asarray(b), device=ta.device)
    if ta.shape != tb.shape:
        raise LabelDataError(
            "masks", "shape", f"batches differ in shape: {tuple(ta.shape)} vs {tuple(tb.shape)}"
        )
    if ta.ndim < 2:
        raise LabelDataError(
            "masks", "shape", f"expected (N, ...) batches, got shape {tuple(ta.shape)}"
        )
    if ta.device != tb.device:
        raise LabelDataError(
            "masks", "device", f"batches on different devices: {ta.device} vs {tb.device}"
        )
    for name, t in (("a", ta), ("b", tb)):
        if t.dtype != torch.bool and not bool(((t == 0) | (t == 1)).all()):
            raise LabelDataError("masks", name, "expected boolean or 0/1 masks")
    return ta.bool().flatten(1), tb.bool().flatten(1)


def _ratio(num: torch.Tensor, den: torch.Tensor) -> torch.Tensor:
    # float64 where the device has it (MPS does not); empty pairs (den = 0) score 1.
    dtype = torch.float32 if num.device.type == "mps" else torch.float64
    num, den = num.to(dtype), den.to(dtype)
    return torch.where(den > 0, num / den.clamp_min(1), torch.ones_like(num))


def dice_batch(a: torch.Tensor | npt.ArrayLike, b: torch.Tensor | npt.ArrayLike) -> torch.Tensor:
    r"""Dice of many mask pairs at once: :math:`2|A_n \cap B_n| / (|A_n| + |B_n|)`.

    Same definition and empty-pair convention (1.0) as :func:`dice`; runs on the device of
    ``a`` (CPU or GPU), counting in int64 so that large volumes stay exact.

    Parameters
    ----------
    a, b : tensor or array-like, shape (N, H, W) or (N, D, H, W) (any (N, ...)), bool or 0/1

    Returns
    -------
    Tensor, shape (N,)
        float64 (float32 on MPS), on ``a``'s device.

    Raises
    ------
    LabelDataError
        Shapes or devices differ, no batch axis, or values other than 0/1.
    """
    x, y = _batch_pair(a, b)
    inter = (x & y).sum(dim=1)
    return _ratio(2 * inter, x.sum(dim=1) + y.sum(dim=1))


def iou_batch(a: torch.Tensor | npt.ArrayLike, b: torch.Tensor | npt.ArrayLike) -> torch.Tensor:
    r"""IoU of many mask pairs at once: :math:`|A_n \cap B_n| / |A_n \cup B_n|`.

    Same definition and empty-pair convention (1.0) as :func:`iou`; see :func:`dice_batch`
    for shapes, dtype and device.
    """
    x, y = _batch_pair(a, b)
    return _ratio((x & y).sum(dim=1), (x | y).sum(dim=1))


def _surface(mask: NDArray[np.bool_]) -> NDArray[np.bool_]:
    """Boundary voxels: the mask minus its erosion (face connectivity; image edge = outside)."""
    return mask & ~ndimage.binary_erosion(mask, border_value=0)


def hausdorff95(
    a: npt.ArrayLike, b: npt.ArrayLike, spacing: Sequence[float] | None = None
) -> float:
    r"""95th-percentile symmetric Hausdorff distance between two masks' surfaces, in mm.

    With :math:`\partial A, \partial B` the boundary voxels (the mask minus its binary erosion)
    and :math:`d(x, S) = \min_{y\in S}\lVert (x - y)\odot s\rVert_2` for voxel spacing *s*:

    .. math:: \mathrm{HD}_{95}(A, B) = \max\Bigl(P_{95}\{d(a, \partial B)\}_{a\in\partial A},\;
              P_{95}\{d(b, \partial A)\}_{b\in\partial B}\Bigr)

    — the percentile of each directed set of surface distances, then the larger of the two
    (MONAI's ``compute_hausdorff_distance(percentile=95)``; medpy's ``hd95`` instead takes the
    percentile of the pooled distances and can be slightly smaller). Percentiles use linear
    interpolation (``numpy.percentile``). Distances come from Euclidean distance transforms of
    the complement of each surface with ``sampling=spacing``. Lower is better; 0 for identical
    masks. Robust to a few outlying voxels, unlike the plain Hausdorff distance.

    Parameters
    ----------
    a, b : array-like of bool or 0/1, same shape, 2-D or 3-D
    spacing : sequence of float, optional
        Voxel size per axis in mm (e.g. DICOM PixelSpacing, slice thickness); default 1.

    Returns
    -------
    float
        Millimetres; NaN when either mask is empty (no surface to measure from).

    Raises
    ------
    LabelDataError
        Shapes differ, not 2-D/3-D, values other than 0/1, or a bad ``spacing``.

    References
    ----------
    D. P. Huttenlocher, G. A. Klanderman and W. J. Rucklidge, "Comparing images using the
    Hausdorff distance", *IEEE TPAMI* 15(9):850–863, 1993.
    A. A. Taha and A. Hanbury, "Metrics for evaluating 3D medical image segmentation: analysis,
    selection, and tool", *BMC Medical Imaging* 15:29, 2015.
    """
    x, y = _mask_pair(a, b)
    if x.ndim not in (2, 3):
        raise LabelDataError("mask", "shape", f"expected a 2-D or 3-D mask, got shape {x.shape}")
    sampling = (1.0,) * x.ndim if spacing is None else tuple(float(s) for s in spacing)
    if len(sampling) != x.ndim or not all(np.isfinite(s) and s > 0 for s in sampling):
        raise LabelDataError(
            "mask",
            "spacing",
            f"need {x.ndim} positive spacings for shape {x.shape}, got {spacing!r}",
        )
    if not x.any() or not y.any():
        return float("nan")
    sx, sy = _surface(x), _surface(y)
    d_to_y = ndimage.distance_transform_edt(~sy, sampling=sampling)
    d_to_x = ndimage.distance_transform_edt(~sx, sampling=sampling)
    return float(max(np.percentile(d_to_y[sx], 95), np.percentile(d_to_x[sy], 95)))


# --------------------------------------------------------------------------------------------
# Boxes
# --------------------------------------------------------------------------------------------


def _boxes(x: npt.ArrayLike, name: str) -> NDArray[np.float64]:
    arr = np.asarray(x, dtype=np.float64)
    if arr.size == 0:
        return arr.reshape(0, 4)
    if arr.ndim != 2 or arr.shape[1] != 4:
        raise LabelDataError(
            "boxes", name, f"expected shape (n, 4) [x0, y0, x1, y1], got {arr.shape}"
        )
    if not np.isfinite(arr).all():
        row = int(np.argmax(~np.isfinite(arr).all(axis=1)))
        raise LabelDataError("boxes", name, f"box {row} has a non-finite coordinate")
    bad = (arr[:, 2] < arr[:, 0]) | (arr[:, 3] < arr[:, 1])
    if bad.any():
        row = int(np.argmax(bad))
        raise LabelDataError("boxes", name, f"box {row} {arr[row].tolist()} has x1 < x0 or y1 < y0")
    return arr


def box_iou(a: npt.ArrayLike, b: npt.ArrayLike) -> NDArray[np.float64]:
    r"""IoU of every box in ``a`` with every box in ``b``.

    .. math:: \mathrm{IoU}(A, B) = \frac{|A\cap B|}{|A| + |B| - |A\cap B|}

    Two zero-area boxes have IoU 0 (nothing overlaps), not NaN.

    Parameters
    ----------
    a : array-like, shape (N, 4), boxes ``[x0, y0, x1, y1]``
    b : array-like, shape (M, 4)

    Returns
    -------
    ndarray of float64, shape (N, M)

    Raises
    ------
    LabelDataError
        Wrong shape, non-finite coordinates, or ``x1 < x0`` / ``y1 < y0`` (naming the box).

    Examples
    --------
    >>> box_iou([[0, 0, 2, 2]], [[1, 1, 3, 3], [0, 0, 2, 2]])
    array([[0.14285714, 1.        ]])
    """
    x, y = _boxes(a, "a"), _boxes(b, "b")
    area_x = (x[:, 2] - x[:, 0]) * (x[:, 3] - x[:, 1])
    area_y = (y[:, 2] - y[:, 0]) * (y[:, 3] - y[:, 1])
    w = np.clip(
        np.minimum(x[:, None, 2], y[None, :, 2]) - np.maximum(x[:, None, 0], y[None, :, 0]), 0, None
    )
    h = np.clip(
        np.minimum(x[:, None, 3], y[None, :, 3]) - np.maximum(x[:, None, 1], y[None, :, 1]), 0, None
    )
    inter = w * h
    union = area_x[:, None] + area_y[None, :] - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


@dataclass(frozen=True)
class BoxMatch:
    """A one-to-one matching of reference boxes ``a`` to candidate boxes ``b``.

    Attributes
    ----------
    pairs : tuple of (i, j, iou)
        Matched box ``a[i]`` ↔ ``b[j]`` with their IoU (≥ the threshold), by increasing ``i``.
    unmatched_a : ndarray of int
        Reference boxes without a match (false negatives).
    unmatched_b : ndarray of int
        Candidate boxes without a match (false positives).
    precision : float
        TP / len(b); NaN when ``b`` is empty.
    recall : float
        TP / len(a); NaN when ``a`` is empty.
    f1 : float
        2·TP / (len(a) + len(b)); 1.0 when both are empty (as :func:`dice`).
    """

    pairs: tuple[tuple[int, int, float], ...]
    unmatched_a: NDArray[np.intp]
    unmatched_b: NDArray[np.intp]
    precision: float
    recall: float
    f1: float

    @property
    def mean_iou(self) -> float:
        """Mean IoU over matched pairs; NaN without any."""
        return float(np.mean([p[2] for p in self.pairs])) if self.pairs else float("nan")


def match_boxes(a: npt.ArrayLike, b: npt.ArrayLike, *, iou_threshold: float = 0.5) -> BoxMatch:
    r"""Match candidate boxes ``b`` to reference boxes ``a`` one to one (Hungarian).

    The assignment maximises the total IoU over pairs whose IoU reaches ``iou_threshold``
    (pairs below it are given weight 0 before solving, so they cannot displace a valid match),
    via :func:`scipy.optimize.linear_sum_assignment` on :math:`-\mathrm{IoU}`. Matched pairs
    are true positives:

    .. math:: P = \frac{TP}{|b|},\quad R = \frac{TP}{|a|},\quad F_1 = \frac{2\,TP}{|a| + |b|}

    Parameters
    ----------
    a : array-like, shape (N, 4)
        Reference boxes (gold or consensus) ``[x0, y0, x1, y1]``.
    b : array-like, shape (M, 4)
        Candidate boxes (an annotator's).
    iou_threshold : float
        Least IoU for a match, in (0, 1].

    Returns
    -------
    BoxMatch

    Raises
    ------
    LabelDataError
        Invalid boxes (see :func:`box_iou`) or a threshold outside (0, 1].

    References
    ----------
    H. W. Kuhn, "The Hungarian method for the assignment problem", *Naval Research Logistics
    Quarterly* 2:83–97, 1955.
    """
    if not 0.0 < float(iou_threshold) <= 1.0:
        raise LabelDataError("boxes", "iou_threshold", f"must lie in (0, 1], got {iou_threshold!r}")
    m = box_iou(a, b)
    n_a, n_b = m.shape
    ia = ib = np.empty(0, dtype=np.intp)
    if n_a and n_b:
        weight = np.where(m >= iou_threshold, m, 0.0)
        rows, cols = linear_sum_assignment(-weight)
        keep = m[rows, cols] >= iou_threshold
        ia, ib = rows[keep].astype(np.intp), cols[keep].astype(np.intp)
    pairs = tuple((int(i), int(j), float(m[i, j])) for i, j in zip(ia, ib, strict=True))
    tp = len(pairs)
    return BoxMatch(
        pairs=pairs,
        unmatched_a=np.setdiff1d(np.arange(n_a, dtype=np.intp), ia),
        unmatched_b=np.setdiff1d(np.arange(n_b, dtype=np.intp), ib),
        precision=tp / n_b if n_b else float("nan"),
        recall=tp / n_a if n_a else float("nan"),
        f1=2.0 * tp / (n_a + n_b) if n_a + n_b else 1.0,
    )
