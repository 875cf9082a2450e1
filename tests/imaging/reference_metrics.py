"""Plain numpy/scipy/skimage reference versions of :mod:`quality.imaging.metrics`.

One image at a time, in float64, written as directly from each formula as possible (and
calling the library function where one exists: ``ndimage.laplace``, ``ndimage.sobel``,
``threshold_otsu``, ``shannon_entropy``, ``np.percentile``). The tests require the batched
torch versions to agree with these; ``bench/imaging.py`` times them as the per-image
baseline (MRQy style), with :func:`compute_all_mrqy` using ``estimate_sigma`` for the noise.
"""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt
from numpy.typing import NDArray
from scipy import ndimage
from skimage.filters import threshold_otsu
from skimage.measure import shannon_entropy
from skimage.restoration import estimate_sigma

__all__ = [
    "COLUMNS",
    "border_share",
    "class_metrics",
    "clipped_share",
    "compute_all",
    "compute_all_mrqy",
    "dynamic_range_used",
    "efc",
    "entropy",
    "intensity_stats",
    "is_blank",
    "laplacian_variance",
    "noise_sigma_immerkaer",
    "otsu_threshold",
    "tenengrad",
]

COLUMNS = (
    "sharpness",
    "tenengrad",
    "noise_sigma",
    "snr",
    "cnr",
    "cjv",
    "efc",
    "fber",
    "entropy",
    "dynamic_range",
    "clip_low",
    "clip_high",
    "mean",
    "p01",
    "p99",
    "is_blank",
    "border_share",
)

_IMMERKAER = np.array([[1, -2, 1], [-2, 4, -2], [1, -2, 1]], dtype=np.float64)


def _f64(img: npt.ArrayLike) -> NDArray[np.float64]:
    return np.asarray(img, dtype=np.float64)


def laplacian_variance(img: npt.ArrayLike) -> float:
    """``Var(ndimage.laplace(img))`` (mode ``reflect``)."""
    return float(np.var(ndimage.laplace(_f64(img))))


def tenengrad(img: npt.ArrayLike) -> float:
    """Mean of ``sobel_x**2 + sobel_y**2`` (``ndimage.sobel``, mode ``reflect``)."""
    a = _f64(img)
    return float(np.mean(ndimage.sobel(a, axis=0) ** 2 + ndimage.sobel(a, axis=1) ** 2))


def noise_sigma_immerkaer(img: npt.ArrayLike) -> float:
    """Immerkær (1996): ``sqrt(pi/2) / (6 (W-2)(H-2)) * sum |I * N|`` over the valid part."""
    a = _f64(img)
    h, w = a.shape
    if h < 3 or w < 3:
        return math.nan
    conv = ndimage.correlate(a, _IMMERKAER)[1:-1, 1:-1]
    return float(math.sqrt(math.pi / 2) * np.abs(conv).sum() / (6 * (w - 2) * (h - 2)))


def otsu_threshold(img: npt.ArrayLike) -> float:
    """``skimage.filters.threshold_otsu(img, nbins=256)``."""
    return float(threshold_otsu(_f64(img), nbins=256))


def class_metrics(img: npt.ArrayLike, mask: npt.ArrayLike | None = None) -> dict[str, float]:
    """SNR, CNR, CJV and FBER over ``mask`` (default ``img > threshold_otsu(img)``)."""
    a = _f64(img)
    m = a > otsu_threshold(a) if mask is None else np.asarray(mask, dtype=bool)
    fg, bg = a[m], a[~m]
    nan = dict.fromkeys(("snr", "cnr", "cjv", "fber"), math.nan)
    if fg.size < 2 or bg.size < 2:
        return nan
    mu_f, mu_b = fg.mean(), bg.mean()
    sd_f, sd_b = fg.std(), bg.std()
    e_f, e_b = np.mean(np.abs(fg) ** 2), np.mean(np.abs(bg) ** 2)
    return {
        "snr": float(mu_f / sd_b) if sd_b > 0 else math.nan,
        "cnr": float((mu_f - mu_b) / sd_b) if sd_b > 0 else math.nan,
        "cjv": float((sd_f + sd_b) / abs(mu_f - mu_b)) if mu_f != mu_b else math.nan,
        "fber": float(e_f / e_b) if e_b > 0 else math.nan,
    }


def efc(img: npt.ArrayLike) -> float:
    """MRIQC's ``efc`` (``mriqc/qc/anatomical.py``) on ``|img|`` with no frame mask."""
    a = np.abs(_f64(img)).ravel()
    n_vox = a.size
    efc_max = 1.0 * n_vox * (1.0 / np.sqrt(n_vox)) * np.log(1.0 / np.sqrt(n_vox))
    b_max = np.sqrt((a**2).sum())
    if b_max == 0 or efc_max == 0:
        return math.nan
    return float((1.0 / efc_max) * np.sum((a / b_max) * np.log((a + 1e-16) / b_max)))


def entropy(img: npt.ArrayLike, nbins: int = 256) -> float:
    """``shannon_entropy(q, base=2)`` of ``img`` quantised to ``nbins`` levels of its range."""
    a = _f64(img)
    lo, hi = a.min(), a.max()
    if hi == lo:
        q = np.zeros(a.shape, dtype=np.int64)
    else:
        q = np.minimum(np.floor((a - lo) / (hi - lo) * nbins), nbins - 1).astype(np.int64)
    return float(shannon_entropy(q, base=2))


def dynamic_range_used(img: npt.ArrayLike, bits_stored: int | None = None) -> float:
    """``(P99.5 - P0.5) / (2**bits - 1)``, or over ``max - min`` without ``bits_stored``."""
    a = _f64(img)
    p_lo, p_hi = np.percentile(a, [0.5, 99.5])
    span = float(2**bits_stored - 1) if bits_stored is not None else float(a.max() - a.min())
    return float((p_hi - p_lo) / span) if span > 0 else math.nan


def clipped_share(img: npt.ArrayLike, nbins: int = 4096) -> tuple[float, float]:
    """Share of pixels in the first and in the last of ``nbins`` equal bins over
    ``[min, max]`` (within ``(max - min) / nbins`` of the extreme); 1 and 1 if constant."""
    a = _f64(img)
    lo, hi = a.min(), a.max()
    if hi == lo:
        return 1.0, 1.0
    q = np.minimum(np.floor((a - lo) / (hi - lo) * nbins), nbins - 1)
    return float(np.mean(q == 0)), float(np.mean(q == nbins - 1))


def intensity_stats(img: npt.ArrayLike) -> tuple[float, float, float]:
    """Mean and ``np.percentile`` 1 and 99."""
    a = _f64(img)
    p01, p99 = np.percentile(a, [1, 99])
    return float(a.mean()), float(p01), float(p99)


def is_blank(img: npt.ArrayLike, ratio: float = 1.5) -> bool:
    """A single value, or ``std <= ratio * immerkaer``."""
    a = _f64(img)
    sigma = noise_sigma_immerkaer(a)
    sigma = 0.0 if math.isnan(sigma) else sigma
    return bool(a.max() == a.min() or a.std() <= ratio * sigma)


def _run(flags: NDArray[np.bool_]) -> int:
    k = 0
    for f in flags:
        if not f:
            break
        k += 1
    return k


def border_share(img: npt.ArrayLike, tol: float = 0.1) -> float:
    """Uniform edge bands: rows/columns with ``std <= tol * std(img)``, counted from each
    edge until the first non-uniform one; share of the area outside the inner rectangle."""
    a = _f64(img)
    sd = a.std()
    if sd == 0:
        return math.nan
    h, w = a.shape
    rows = a.std(axis=1) <= tol * sd
    cols = a.std(axis=0) <= tol * sd
    t, b = _run(rows), _run(rows[::-1])
    left, right = _run(cols), _run(cols[::-1])
    return 1.0 - max(h - t - b, 0) * max(w - left - right, 0) / (h * w)


def compute_all(
    img: npt.ArrayLike, bits_stored: int | None = None, *, noise: str = "immerkaer"
) -> dict[str, float]:
    """Every column of ``image_quality`` for one image, by the functions above.

    ``noise="estimate_sigma"`` takes the noise from ``skimage.restoration.estimate_sigma``
    (wavelet MAD, as MRQy-style tools do) instead of Immerkær's estimate.
    """
    a = _f64(img)
    sigma = (
        float(estimate_sigma(a, channel_axis=None))
        if noise == "estimate_sigma"
        else noise_sigma_immerkaer(a)
    )
    mean, p01, p99 = intensity_stats(a)
    low, high = clipped_share(a)
    sigma0 = 0.0 if math.isnan(sigma) else sigma
    return {
        "sharpness": laplacian_variance(a),
        "tenengrad": tenengrad(a),
        "noise_sigma": sigma,
        **class_metrics(a),
        "efc": efc(a),
        "entropy": entropy(a),
        "dynamic_range": dynamic_range_used(a, bits_stored),
        "clip_low": low,
        "clip_high": high,
        "mean": mean,
        "p01": p01,
        "p99": p99,
        "is_blank": bool(a.max() == a.min() or a.std() <= 1.5 * sigma0),
        "border_share": border_share(a),
    }


def compute_all_mrqy(img: npt.ArrayLike, bits_stored: int | None = None) -> dict[str, float]:
    """:func:`compute_all` with ``estimate_sigma`` for the noise (the bench's MRQy peer)."""
    return compute_all(img, bits_stored, noise="estimate_sigma")
