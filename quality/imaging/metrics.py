"""Batched image-quality metrics in torch, on CPU or CUDA.

Every public metric takes a float tensor ``x`` of shape ``(N, 1, H, W)`` (values after the
Modality LUT, and VOI rescaling if the caller applied one) and returns one value per image,
shape ``(N,)``, on the input's device and in its dtype. Nothing moves to the host, except at
the end of :func:`compute_all`. A plain numpy/scipy/skimage version of each metric lives in
``tests/imaging/reference_metrics.py`` and the tests require both to agree.

Which function for which question
---------------------------------
=====================================  ======================================  ==============
question                               function                                better
=====================================  ======================================  ==============
is it sharp?                           :func:`laplacian_variance`,             higher
                                       :func:`tenengrad`
how noisy?                             :func:`noise_sigma_immerkaer`           lower
signal / contrast over noise           :func:`snr`, :func:`cnr`                higher
overlap of tissue classes              :func:`cjv`                             lower
ghosting / blur energy spread          :func:`efc`                             lower
signal energy in the object            :func:`fber`                            higher
information in the grey levels         :func:`entropy`                         higher
exposure                               :func:`dynamic_range_used`,             see docstring
                                       :func:`clipped_share`,
                                       :func:`intensity_stats`
empty exposure                         :func:`is_blank`                        False
collimation / cut-off margins          :func:`border_share`                    lower
all of the above in one pass           :func:`compute_all`                     -
=====================================  ======================================  ==============

Conventions
-----------
* **Foreground.** SNR, CNR, CJV and FBER split the image in two classes with Otsu's
  threshold :math:`t` (:func:`otsu_threshold`): foreground :math:`F = \\{x > t\\}`,
  background :math:`B = \\{x \\le t\\}` (the convention of ``skimage``: the bright class is
  the object, as for a MONOCHROME2 radiograph or an MR head in air). Standard deviations are
  population ones (``ddof = 0``).
* **Histograms.** One histogram of :data:`HIST_BINS` = 4096 equal bins over ``[min, max]`` of
  each image serves Otsu (grouped to 256 bins, as ``threshold_otsu``), the clipping shares
  (its first and last bin), the entropy (256 levels) and the percentiles (interpolated
  inside a bin: the error is at most one fine bin, ``(max - min) / 4096``, i.e. below one
  grey level for 12-bit data).
* **Degenerate input.** A constant image, or a class with fewer than 2 pixels, makes some
  ratios undefined; they are NaN (never ``-1``) and each docstring says when. Shapes and
  dtypes that are not a float ``(N, 1, H, W)`` tensor raise :class:`ValueError`.
* **Precision.** Sums run in the input dtype. On float32 input the values agree with the
  float64 references to about 1e-4 relative on 512 x 512 radiographs; stencil metrics
  (sharpness, Tenengrad, noise σ) of a very smooth image are differences of nearly equal
  numbers and lose more (a noise σ of 0.002 on values near 1000 is only good to ~1e-3).
  Pass float64 where that matters.
* **Padding.** Stencils (Laplacian, Sobel) repeat the edge pixel (``scipy.ndimage`` mode
  ``"reflect"``, which for a one-pixel pad is the same); Immerkær's estimate uses only the
  ``(H-2) x (W-2)`` interior.

On CPU, :func:`compute_all` works through the batch in chunks of about
:data:`CPU_CHUNK_PIXELS` pixels per torch thread: the temporaries of a chunk stay in cache
and in the allocator's heap instead of being mapped and page-faulted afresh for every
operation, which is several times faster than one big batch. On a machine whose cores are
shared with other processes, ``torch.set_num_threads(1)`` is often the fastest setting: every
parallel region otherwise waits for a thread the scheduler has parked.

References
----------
.. [Esteban2017] Esteban O. et al. "MRIQC: Advancing the automatic prediction of image quality
   in MRI from unseen sites." PLoS ONE 12(9): e0184661 (2017). Formulas as in
   ``mriqc/qc/anatomical.py``.
.. [Sadri2020] Sadri A. R. et al. "MRQy - an open-source tool for quality control of MR
   imaging data." Medical Physics 47(12): 6029-6038 (2020).
.. [Immerkaer1996] Immerkær J. "Fast noise variance estimation." Computer Vision and Image
   Understanding 64(2): 300-302 (1996).
.. [PechPacheco2000] Pech-Pacheco J. L. et al. "Diatom autofocusing in brightfield
   microscopy: a comparative study." ICPR 2000, vol. 3, pp. 314-317.
.. [Krotkov1987] Krotkov E. "Focusing." International Journal of Computer Vision 1(3):
   223-237 (1987) (the Tenengrad criterion, after Tenenbaum 1970).
.. [Otsu1979] Otsu N. "A threshold selection method from gray-level histograms." IEEE
   Transactions on Systems, Man, and Cybernetics 9(1): 62-66 (1979).
.. [Ganzetti2016] Ganzetti M. et al. "Intensity inhomogeneity correction of structural MR
   images: a data-driven approach to define input algorithm parameters." Frontiers in
   Neuroinformatics 10: 10 (2016).
.. [Atkinson1997] Atkinson D. et al. "Automatic correction of motion artifacts in magnetic
   resonance images using an entropy focus criterion." IEEE TMI 16(6): 903-910 (1997).
.. [Shehzad2015] Shehzad Z. et al. "The Preprocessed Connectomes Project Quality Assessment
   Protocol." Front. Neuroinform. Conference Abstract: Neuroinformatics 2015.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

import numpy as np
import numpy.typing as npt
import pandas as pd
import torch
from torch import Tensor
from torch.nn import functional as F  # noqa: N812 (the usual torch alias)

__all__ = [
    "BLANK_NOISE_RATIO",
    "BORDER_TOL",
    "CPU_CHUNK_PIXELS",
    "ENTROPY_BINS",
    "HIST_BINS",
    "METRIC_COLUMNS",
    "OTSU_BINS",
    "border_share",
    "cjv",
    "clipped_share",
    "cnr",
    "compute_all",
    "compute_all_numpy",
    "dynamic_range_used",
    "efc",
    "entropy",
    "fber",
    "foreground_mask",
    "intensity_stats",
    "is_blank",
    "laplacian_variance",
    "noise_sigma_immerkaer",
    "otsu_threshold",
    "snr",
    "tenengrad",
    "to_batch",
]

HIST_BINS: Final = 4096
"""Fine histogram bins over ``[min, max]`` per image (percentiles are exact to one bin)."""
OTSU_BINS: Final = 256
"""Bins of Otsu's histogram (``skimage.filters.threshold_otsu`` default)."""
ENTROPY_BINS: Final = 256
"""Grey levels the image is quantised to before its Shannon entropy (8 bits)."""
BLANK_NOISE_RATIO: Final = 1.5
"""An image is blank when its standard deviation is at most this many noise sigmas."""
BORDER_TOL: Final = 0.1
"""A border row/column is uniform when its std is at most this share of the image std."""
CPU_CHUNK_PIXELS: Final = 2**18
"""Pixels per torch thread in one chunk of :func:`compute_all` on CPU (one 512 x 512 image;
see the module docstring)."""

METRIC_COLUMNS: Final = (
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
"""Keys of :func:`compute_all`: the metric columns of ``image_quality``
(:class:`quality.db.schema.ImageQuality`)."""

_MIN_CLASS_PIXELS = 2


# --------------------------------------------------------------------------- validation


def _check(x: Tensor) -> Tensor:
    """Validate a batch once at the public entry; half precision is promoted to float32."""
    if not isinstance(x, Tensor):
        raise ValueError(f"expected a torch.Tensor of shape (N, 1, H, W), got {type(x).__name__}")
    if x.ndim != 4 or x.shape[1] != 1:
        raise ValueError(f"expected a tensor of shape (N, 1, H, W), got {tuple(x.shape)}")
    if not x.is_floating_point():
        raise ValueError(f"expected a floating-point tensor, got {x.dtype}")
    if x.shape[2] < 1 or x.shape[3] < 1:
        raise ValueError(f"image size must be at least 1 x 1, got {tuple(x.shape[2:])}")
    if x.dtype in (torch.float16, torch.bfloat16):
        x = x.float()
    return x


def _flat(t: Tensor) -> Tensor:
    """(N, ...) -> (N, L); reductions over one flat axis are much faster than over (1, 2, 3)."""
    return t.reshape(t.shape[0], -1)


def _dot(a: Tensor, b: Tensor) -> Tensor:
    """Per-image dot product of two (N, ...) tensors."""
    # A product then a flat sum: measured faster on CPU than bmm or einsum for (N, 1, L).
    return _flat(a * b).sum(1)


def _sumsq(a: Tensor) -> Tensor:
    """Per-image sum of squares in one read (no temporary)."""
    return torch.linalg.vector_norm(_flat(a), 2, dim=1).square()


def _nan_where(cond: Tensor, value: Tensor) -> Tensor:
    return torch.where(cond, torch.full_like(value, math.nan), value)


def _bits_span(bits_stored: Tensor | int, n: int, like: Tensor) -> Tensor:
    bits = torch.as_tensor(bits_stored, device=like.device).to(like.dtype)
    if bits.ndim == 0:
        bits = bits.expand(n)
    if bits.shape != (n,):
        raise ValueError(f"bits_stored must be an int or a tensor of shape ({n},)")
    return torch.exp2(bits) - 1


# --------------------------------------------------------------------------- sharpness


def _pad_edge(x: Tensor) -> Tensor:
    return F.pad(x, (1, 1, 1, 1), mode="replicate")


def laplacian_variance(x: Tensor) -> Tensor:
    """Variance of the Laplacian (sharpness). Higher is sharper.

    .. math::
        \\mathrm{LAPV} = \\operatorname{Var}(\\nabla^2 I), \\quad
        \\nabla^2 = \\begin{pmatrix}0 & 1 & 0\\\\ 1 & -4 & 1\\\\ 0 & 1 & 0\\end{pmatrix}

    with the edge pixel repeated at the border (``scipy.ndimage.laplace``) and the population
    variance over all ``H x W`` pixels. Noise raises it too: compare images of similar
    :func:`noise_sigma_immerkaer`. A constant image gives 0.

    Parameters
    ----------
    x : Tensor, shape (N, 1, H, W), float.

    Returns
    -------
    Tensor, shape (N,).

    References
    ----------
    Pech-Pacheco et al. (2000) [PechPacheco2000]_; MRQy uses the same focus measure.
    """
    x = _check(x)
    return _laplacian_variance(_pad_edge(x))


def _laplacian_variance(xp: Tensor) -> Tensor:
    # In-place accumulation keeps this at four passes over a chunk (conv2d with one channel
    # is several times slower on CPU).
    lap = xp[..., :-2, 1:-1] + xp[..., 2:, 1:-1]
    lap.add_(xp[..., 1:-1, :-2]).add_(xp[..., 1:-1, 2:]).add_(xp[..., 1:-1, 1:-1], alpha=-4)
    n = lap.shape[-1] * lap.shape[-2]
    mean = _flat(lap).sum(1) / n
    # The Laplacian has mean ~0, so the one-pass formula loses nothing here.
    return (_sumsq(lap) / n - mean * mean).clamp(min=0)


def tenengrad(x: Tensor) -> Tensor:
    """Tenengrad: mean squared Sobel gradient magnitude (sharpness). Higher is sharper.

    .. math::
        \\mathrm{TEN} = \\frac{1}{HW}\\sum_{i,j} G_x(i,j)^2 + G_y(i,j)^2,

    :math:`G_x, G_y` the 3x3 Sobel responses (``scipy.ndimage.sobel`` along each axis, edge
    pixel repeated). Unlike Krotkov's original, no gradient threshold is applied, so the
    value is a plain mean and does not depend on a tuning constant. A constant image gives 0.

    Parameters
    ----------
    x : Tensor, shape (N, 1, H, W), float.

    Returns
    -------
    Tensor, shape (N,).

    References
    ----------
    Krotkov (1987) [Krotkov1987]_; Pech-Pacheco et al. (2000) [PechPacheco2000]_.
    """
    x = _check(x)
    return _tenengrad(_pad_edge(x))


def _tenengrad(xp: Tensor) -> Tensor:
    # Separable Sobel: smooth [1, 2, 1] across, difference [-1, 0, 1] along.
    s = xp[..., :-2, :] + xp[..., 2:, :]
    s.add_(xp[..., 1:-1, :], alpha=2)
    g = s[..., 2:] - s[..., :-2]
    acc = _sumsq(g)
    d = xp[..., 2:, :] - xp[..., :-2, :]
    g = d[..., :-2] + d[..., 2:]
    g.add_(d[..., 1:-1], alpha=2)
    acc = acc + _sumsq(g)
    return acc / ((xp.shape[-1] - 2) * (xp.shape[-2] - 2))


# --------------------------------------------------------------------------- noise


def noise_sigma_immerkaer(x: Tensor) -> Tensor:
    """Immerkær's fast estimate of the standard deviation of additive white noise. Lower is
    better.

    .. math::
        \\hat\\sigma = \\sqrt{\\frac{\\pi}{2}}\\,\\frac{1}{6(W-2)(H-2)}
        \\sum_{i,j}\\left|(I * N)(i,j)\\right|, \\quad
        N = \\begin{pmatrix}1 & -2 & 1\\\\ -2 & 4 & -2\\\\ 1 & -2 & 1\\end{pmatrix}

    over the ``(H-2) x (W-2)`` interior (no padding). :math:`N` is the difference of two
    Laplacians, which cancels smooth structure; edges still add a little, so the estimate is
    biased upwards on very detailed images. It is invariant to inversion (``c - I``) and to an
    offset, and scales with a gain. A constant image gives 0; an image smaller than 3 x 3 gives
    NaN (no interior).

    Parameters
    ----------
    x : Tensor, shape (N, 1, H, W), float.

    Returns
    -------
    Tensor, shape (N,).

    References
    ----------
    Immerkær (1996) [Immerkaer1996]_.
    """
    x = _check(x)
    return _immerkaer(x)


def _immerkaer(x: Tensor) -> Tensor:
    h, w = x.shape[-2:]
    if h < 3 or w < 3:
        return x.new_full((x.shape[0],), math.nan)
    # N = [1, -2, 1]^T [1, -2, 1]: second difference along rows, then along columns.
    a = x[..., :-2, :] + x[..., 2:, :]
    a.add_(x[..., 1:-1, :], alpha=-2)
    b = a[..., :-2] + a[..., 2:]
    b.add_(a[..., 1:-1], alpha=-2)
    return _flat(b.abs_()).sum(1) * (math.sqrt(math.pi / 2) / (6 * (w - 2) * (h - 2)))


# --------------------------------------------------------------------------- histogram


@dataclass(frozen=True)
class _Hist:
    """Per-image fine histogram over ``[lo, hi]``: ``counts`` (N, HIST_BINS) float64."""

    counts: Tensor
    lo: Tensor
    hi: Tensor

    @property
    def width(self) -> Tensor:
        return (self.hi - self.lo) / HIST_BINS

    def grouped(self, nbins: int) -> Tensor:
        return self.counts.view(self.counts.shape[0], nbins, HIST_BINS // nbins).sum(-1)


def _histogram(x: Tensor, lo: Tensor, hi: Tensor) -> _Hist:
    n = x.shape[0]
    rng = hi - lo
    scale = torch.where(rng > 0, HIST_BINS / rng, torch.zeros_like(rng))
    idx = ((x - lo.view(n, 1, 1, 1)) * scale.view(n, 1, 1, 1)).to(torch.int64)
    idx = idx.clamp_(0, HIST_BINS - 1).view(n, -1)
    counts = torch.zeros(n, HIST_BINS, dtype=x.dtype, device=x.device)
    counts.scatter_add_(1, idx, torch.ones((), dtype=x.dtype, device=x.device).expand_as(idx))
    return _Hist(counts.double(), lo.double(), hi.double())


def _minmax(x: Tensor) -> tuple[Tensor, Tensor]:
    xf = _flat(x)
    return xf.amin(1), xf.amax(1)


def _hist_of(x: Tensor) -> _Hist:
    return _histogram(x, *_minmax(x))


def _otsu_from_hist(h: _Hist) -> Tensor:
    counts = h.grouped(OTSU_BINS)
    width = (h.hi - h.lo) / OTSU_BINS
    k = torch.arange(OTSU_BINS, device=counts.device, dtype=counts.dtype)
    centers = h.lo[:, None] + (k + 0.5) * width[:, None]
    w1 = counts.cumsum(1)
    w2 = counts.flip(1).cumsum(1).flip(1)
    m1 = (counts * centers).cumsum(1) / w1
    m2 = (counts * centers).flip(1).cumsum(1).flip(1) / w2
    var12 = w1[:, :-1] * w2[:, 1:] * (m1[:, :-1] - m2[:, 1:]) ** 2
    idx = torch.nan_to_num(var12, nan=-1.0).argmax(dim=1, keepdim=True)
    t = centers.gather(1, idx).squeeze(1)
    return torch.where(h.hi > h.lo, t, h.lo)


def _entropy_from_hist(h: _Hist) -> Tensor:
    counts = h.grouped(ENTROPY_BINS)
    p = counts / counts.sum(1, keepdim=True)
    return -torch.special.xlogy(p, p).sum(1) / math.log(2)


def _quantiles_from_hist(h: _Hist, qs: Sequence[float]) -> Tensor:
    """Percentiles with numpy's ``linear`` method, from the fine histogram: (N, len(qs)).

    numpy interpolates between the order statistics of ranks ``floor(q (n-1))`` and
    ``ceil(q (n-1))``. Each of the two is located in its bin and placed there as if the bin's
    pixels were spread evenly, so each is off by less than one bin width, and so is the
    interpolated value.
    """
    counts = h.counts
    cdf = counts.cumsum(1)
    n = cdf[:, -1:]
    q = torch.tensor(list(qs), dtype=counts.dtype, device=counts.device)
    rank = q[None, :] * (n - 1)
    r_lo = rank.floor()
    r_hi = torch.minimum(r_lo + 1, n - 1)
    k = torch.searchsorted(cdf, torch.cat([r_lo, r_hi], 1), right=True)
    k = k.clamp_(max=HIST_BINS - 1)
    below = torch.where(
        k > 0, cdf.gather(1, (k - 1).clamp(min=0)), torch.zeros_like(k, dtype=cdf.dtype)
    )
    inside = counts.gather(1, k).clamp(min=1)
    ranks = torch.cat([r_lo, r_hi], 1)
    pos = (k + ((ranks - below + 0.5) / inside).clamp(0.0, 1.0)) * h.width[:, None]
    v_lo, v_hi = pos.split(len(qs), dim=1)
    val = h.lo[:, None] + v_lo + (rank - r_lo) * (v_hi - v_lo)
    return torch.minimum(torch.maximum(val, h.lo[:, None]), h.hi[:, None])


def otsu_threshold(x: Tensor) -> Tensor:
    """Otsu's threshold per image, as ``skimage.filters.threshold_otsu(img, nbins=256)``.

    The histogram has 256 equal bins over ``[min, max]`` and the threshold is the centre of
    the bin that maximises the between-class variance

    .. math::
        \\sigma_B^2(k) = w_1(k)\\,w_2(k+1)\\,\\bigl(\\mu_1(k) - \\mu_2(k+1)\\bigr)^2,

    :math:`w_1, \\mu_1` the count and mean of bins ``<= k``, :math:`w_2, \\mu_2` those of bins
    ``>= k+1``. The bins are built by grouping :data:`HIST_BINS` fine bins, so the result can
    differ from skimage's by at most one bin width, ``(max - min) / 256``, when a pixel falls
    on a bin edge. A constant image returns its value (as skimage does).

    Parameters
    ----------
    x : Tensor, shape (N, 1, H, W), float.

    Returns
    -------
    Tensor, shape (N,).

    References
    ----------
    Otsu (1979) [Otsu1979]_.
    """
    x = _check(x)
    return _otsu_from_hist(_hist_of(x)).to(x.dtype)


def foreground_mask(x: Tensor, threshold: Tensor | None = None) -> Tensor:
    """Foreground ``x > t``, with ``t`` from :func:`otsu_threshold` unless given.

    Parameters
    ----------
    x : Tensor, shape (N, 1, H, W), float.
    threshold : Tensor, shape (N,), optional.

    Returns
    -------
    Tensor of bool, shape (N, 1, H, W). Empty for a constant image.
    """
    x = _check(x)
    t = otsu_threshold(x) if threshold is None else threshold.to(x.dtype)
    return x > t.view(-1, 1, 1, 1)


# --------------------------------------------------------------------------- two classes


@dataclass(frozen=True)
class _Classes:
    """Count, mean, population variance and mean energy of foreground and background."""

    n_f: Tensor
    mu_f: Tensor
    var_f: Tensor
    e2_f: Tensor
    n_b: Tensor
    mu_b: Tensor
    var_b: Tensor
    e2_b: Tensor

    @property
    def degenerate(self) -> Tensor:
        return (self.n_f < _MIN_CLASS_PIXELS) | (self.n_b < _MIN_CLASS_PIXELS)


@dataclass(frozen=True)
class _Moments:
    """The centred image ``c = x - mean`` and its square, shared by several metrics."""

    mean: Tensor
    c: Tensor
    c2: Tensor

    @property
    def var(self) -> Tensor:
        n = self.c[0].numel()
        m1 = _flat(self.c).sum(1) / n
        return (_flat(self.c2).sum(1) / n - m1 * m1).clamp(min=0)


def _moments(x: Tensor) -> _Moments:
    # Centre first: E[x^2] - E[x]^2 on raw 12-bit values loses digits in float32.
    mean = _flat(x).sum(1) / x[0].numel()
    c = x - mean.view(-1, 1, 1, 1)
    return _Moments(mean, c, c * c)


def _class_stats(x: Tensor, mf: Tensor, mom: _Moments | None = None) -> _Classes:
    """Class statistics from a 0/1 float foreground mask ``mf`` (N, 1, H, W)."""
    mom = _moments(x) if mom is None else mom
    total = x[0].numel()
    # Foreground sums directly, background ones as total minus foreground: both are sums of
    # globally centred values, so the subtraction loses no more than the direct sum would.
    n_f = _flat(mf).sum(1)
    cm = mom.c * mf
    s1_f, s2_f = _flat(cm).sum(1), _sumsq(cm)  # mf is 0/1, so (c mf)^2 = c^2 mf
    n_b = total - n_f
    s1_b = _flat(mom.c).sum(1) - s1_f
    s2_b = _flat(mom.c2).sum(1) - s2_f
    out = []
    for n, s1, s2 in ((n_f, s1_f, s2_f), (n_b, s1_b, s2_b)):
        nn = n.clamp(min=1)
        mu_c = s1 / nn
        var = (s2 / nn - mu_c * mu_c).clamp(min=0)
        mu = mom.mean + mu_c
        out.append((n, mu, var, var + mu * mu))
    (n_f, mu_f, var_f, e2_f), (n_b, mu_b, var_b, e2_b) = out
    return _Classes(n_f, mu_f, var_f, e2_f, n_b, mu_b, var_b, e2_b)


def _above(x: Tensor, t: Tensor) -> Tensor:
    """``(x > t)`` as 0/1 in x's dtype, written directly (a bool mask, then a cast, costs
    three times as much on CPU)."""
    out = torch.empty_like(x)
    return torch.gt(x, t.view(-1, 1, 1, 1), out=out)


def _classes(x: Tensor, mask: Tensor | None) -> _Classes:
    if mask is None:
        return _class_stats(x, _above(x, otsu_threshold(x)))
    if mask.shape != x.shape or mask.dtype != torch.bool:
        raise ValueError(f"mask must be a bool tensor of shape {tuple(x.shape)}")
    return _class_stats(x, mask.to(x.dtype))


def _snr(s: _Classes) -> Tensor:
    sd_b = s.var_b.sqrt()
    return _nan_where(s.degenerate | (sd_b == 0), s.mu_f / sd_b)


def _cnr(s: _Classes) -> Tensor:
    sd_b = s.var_b.sqrt()
    return _nan_where(s.degenerate | (sd_b == 0), (s.mu_f - s.mu_b) / sd_b)


def _cjv(s: _Classes) -> Tensor:
    diff = s.mu_f - s.mu_b
    val = (s.var_f.sqrt() + s.var_b.sqrt()) / diff
    return _nan_where(s.degenerate | (diff == 0), val)


def _fber(s: _Classes) -> Tensor:
    return _nan_where(s.degenerate | (s.e2_b == 0), s.e2_f / s.e2_b)


def snr(x: Tensor, mask: Tensor | None = None) -> Tensor:
    """Signal-to-noise ratio: foreground mean over background standard deviation. Higher is
    better.

    .. math::
        \\mathrm{SNR} = \\frac{\\mu_F}{\\sigma_B}

    on the raw values (not offset-invariant: for signed data such as Hounsfield units compare
    it only within a modality). This is MRQy's ``SNR`` with whole-class masks instead of
    patches, and MRIQC's ``snr_dietrich`` without its Rayleigh factor
    :math:`\\sqrt{2/(4-\\pi)}`, which only holds for MR magnitude air. The background holds
    both noise and dark anatomy, so this is a contrast-and-noise figure, not a noise-only one.

    NaN when a class has fewer than 2 pixels (a constant image has an empty foreground) or
    :math:`\\sigma_B = 0` (a perfectly flat background).

    Parameters
    ----------
    x : Tensor, shape (N, 1, H, W), float.
    mask : bool Tensor, shape (N, 1, H, W), optional; default :func:`foreground_mask`.

    Returns
    -------
    Tensor, shape (N,).

    References
    ----------
    Sadri et al. (2020) [Sadri2020]_; Esteban et al. (2017) [Esteban2017]_.
    """
    x = _check(x)
    return _snr(_classes(x, mask))


def cnr(x: Tensor, mask: Tensor | None = None) -> Tensor:
    """Contrast-to-noise ratio between foreground and background. Higher is better.

    .. math::
        \\mathrm{CNR} = \\frac{\\mu_F - \\mu_B}{\\sigma_B}

    (MRQy's ``CNR``, with Otsu classes). Invariant to an offset and a positive gain; always
    positive, since the foreground is the bright class. NaN when a class has fewer than 2
    pixels or :math:`\\sigma_B = 0`.

    Parameters
    ----------
    x : Tensor, shape (N, 1, H, W), float.
    mask : bool Tensor, shape (N, 1, H, W), optional; default :func:`foreground_mask`.

    Returns
    -------
    Tensor, shape (N,).

    References
    ----------
    Sadri et al. (2020) [Sadri2020]_.
    """
    x = _check(x)
    return _cnr(_classes(x, mask))


def cjv(x: Tensor, mask: Tensor | None = None) -> Tensor:
    """Coefficient of joint variation of foreground and background. Lower is better.

    .. math::
        \\mathrm{CJV} = \\frac{\\sigma_F + \\sigma_B}{\\lvert\\mu_F - \\mu_B\\rvert}

    MRIQC's CJV with the white and grey matter replaced by the Otsu classes. It grows with
    noise, blur and inhomogeneity (the classes overlap). Invariant to an offset and a gain.
    NaN when a class has fewer than 2 pixels or the class means are equal.

    Parameters
    ----------
    x : Tensor, shape (N, 1, H, W), float.
    mask : bool Tensor, shape (N, 1, H, W), optional; default :func:`foreground_mask`.

    Returns
    -------
    Tensor, shape (N,).

    References
    ----------
    Ganzetti et al. (2016) [Ganzetti2016]_; Esteban et al. (2017) [Esteban2017]_.
    """
    x = _check(x)
    return _cjv(_classes(x, mask))


def fber(x: Tensor, mask: Tensor | None = None) -> Tensor:
    """Foreground-background energy ratio. Higher is better.

    .. math::
        \\mathrm{FBER} = \\frac{E\\left[|F|^2\\right]}{E\\left[|B|^2\\right]}

    with means over the Otsu classes: the formula of MRIQC's docstring (MRIQC's code takes
    medians, which would need a per-image sort here). Energies count the distance from 0, so
    for signed data (Hounsfield units) compare FBER only within a modality. NaN when a class
    has fewer than 2 pixels or the background energy is 0 (MRIQC returns a sentinel there).

    Parameters
    ----------
    x : Tensor, shape (N, 1, H, W), float.
    mask : bool Tensor, shape (N, 1, H, W), optional; default :func:`foreground_mask`.

    Returns
    -------
    Tensor, shape (N,).

    References
    ----------
    Shehzad et al. (2015) [Shehzad2015]_; Esteban et al. (2017) [Esteban2017]_.
    """
    x = _check(x)
    return _fber(_classes(x, mask))


# --------------------------------------------------------------------------- global


def efc(x: Tensor) -> Tensor:
    """Entropy focus criterion (ghosting and blurring spread the energy). Lower is better.

    MRIQC's definition, on magnitudes :math:`|x_j|` over all :math:`n = HW` pixels:

    .. math::
        E = \\sum_j \\frac{|x_j|}{x_{\\max}}\\ln\\frac{|x_j|}{x_{\\max}}, \\quad
        x_{\\max} = \\sqrt{\\sum_j x_j^2}, \\quad
        \\mathrm{EFC} = \\frac{E}{\\sqrt{n}\\,\\ln(1/\\sqrt{n})}

    The normaliser is :math:`E` of a constant image, so EFC is 1 for a constant image and
    falls towards 0 as the energy concentrates in few pixels. :math:`0 \\ln 0 = 0` (MRIQC adds
    ``1e-16`` inside the log; MRQy's ``1e16`` is a typo we do not copy). NaN for an all-zero
    image (no energy).

    Parameters
    ----------
    x : Tensor, shape (N, 1, H, W), float.

    Returns
    -------
    Tensor, shape (N,).

    References
    ----------
    Atkinson et al. (1997) [Atkinson1997]_; Esteban et al. (2017) [Esteban2017]_.
    """
    x = _check(x)
    return _efc(x)


def _efc(x: Tensor, mom: _Moments | None = None) -> Tensor:
    n = x.shape[-1] * x.shape[-2]
    mom = _moments(x) if mom is None else mom
    # sum x^2 from the centred moments: sum c^2 + 2 m sum c + n m^2 (one pass fewer).
    energy = _flat(mom.c2).sum(1) + mom.mean * (2 * _flat(mom.c).sum(1) + n * mom.mean)
    b = energy.clamp(min=0).sqrt()
    a = x.abs()
    # sum (a/b) ln((a + 1e-16)/b) = (sum a ln(a + 1e-16) - ln b * sum a) / b; the 1e-16
    # (MRIQC's) only makes 0 ln 0 = 0.
    s = (_dot(a, (a + 1e-16).log_()) - torch.log(b) * _flat(a).sum(1)) / b
    efc_max = math.sqrt(n) * math.log(1 / math.sqrt(n)) if n > 1 else math.nan
    return _nan_where(b == 0, s / efc_max)


def entropy(x: Tensor) -> Tensor:
    """Shannon entropy, in bits, of the image quantised to 256 grey levels. Higher means more
    grey-level information; 0 for a constant image, at most 8.

    .. math::
        q = \\min\\left(\\left\\lfloor 256\\,\\frac{x - \\min x}{\\max x - \\min x}
        \\right\\rfloor, 255\\right), \\quad
        H = -\\sum_{k=0}^{255} p_k \\log_2 p_k

    Quantising first matters: ``skimage.measure.shannon_entropy`` on raw floats counts every
    distinct value, which makes noise look like information. The levels span the image's own
    ``[min, max]``, so the value does not depend on gain or offset; exposure problems show in
    :func:`dynamic_range_used` and :func:`clipped_share` instead. Equal to
    ``shannon_entropy(q, base=2)`` up to pixels on a bin edge.

    Parameters
    ----------
    x : Tensor, shape (N, 1, H, W), float.

    Returns
    -------
    Tensor, shape (N,).

    References
    ----------
    Sadri et al. (2020) [Sadri2020]_ (MRQy reports the histogram entropy).
    """
    x = _check(x)
    return _entropy_from_hist(_hist_of(x)).to(x.dtype)


def dynamic_range_used(x: Tensor, bits_stored: Tensor | int | None = None) -> Tensor:
    """Share of the available value range that the central 99% of pixels span. Higher means
    a better used detector range.

    .. math::
        \\mathrm{DR} = \\frac{P_{99.5} - P_{0.5}}{S}, \\quad
        S = \\begin{cases} 2^{\\text{bits}} - 1 & \\text{bits\\_stored given}\\\\
        \\max x - \\min x & \\text{otherwise}\\end{cases}

    With ``bits_stored`` (DICOM BitsStored) it is the share of the stored bit depth in use
    (an under-exposed 12-bit radiograph scores low). Without it the denominator is the
    image's own range, so the value only says how much of that range is outliers. The
    percentiles come from the fine histogram (error at most ``(max - min) / 4096``). NaN
    without ``bits_stored`` for a constant image.

    Parameters
    ----------
    x : Tensor, shape (N, 1, H, W), float.
    bits_stored : int, or Tensor of shape (N,), optional.

    Returns
    -------
    Tensor, shape (N,).

    References
    ----------
    Sadri et al. (2020) [Sadri2020]_ (MRQy's ``RNG``, intensity range).
    """
    x = _check(x)
    h = _hist_of(x)
    return _dynamic_range(h, bits_stored, x)


def _dynamic_range(h: _Hist, bits_stored: Tensor | int | None, x: Tensor) -> Tensor:
    q = _quantiles_from_hist(h, (0.005, 0.995))
    spread = (q[:, 1] - q[:, 0]).to(x.dtype)
    if bits_stored is None:
        span = (h.hi - h.lo).to(x.dtype)
        return _nan_where(span == 0, spread / span)
    return spread / _bits_span(bits_stored, x.shape[0], x)


def clipped_share(x: Tensor) -> tuple[Tensor, Tensor]:
    """Share of pixels at the image's minimum and at its maximum (clipping). Lower is
    better.

    .. math::
        c_{low} = \\frac{1}{HW}\\#\\{x < \\min x + w\\}, \\quad
        c_{high} = \\frac{1}{HW}\\#\\{x \\ge \\max x - w\\}, \\quad
        w = \\frac{\\max x - \\min x}{4096}

    i.e. the first and last of the :data:`HIST_BINS` fine histogram bins: "at the extreme"
    means within one 4096th of the range, about one grey level of 12-bit data, which also
    absorbs rounding after resampling. An unclipped image has a few pixels there;
    under-exposure clipped at the bottom raises ``c_low``, saturation raises ``c_high``.
    A constant image gives 1 for both.

    Parameters
    ----------
    x : Tensor, shape (N, 1, H, W), float.

    Returns
    -------
    (low, high) : Tensors, shape (N,).

    References
    ----------
    Sadri et al. (2020) [Sadri2020]_.
    """
    x = _check(x)
    return _clipped(_hist_of(x), x.dtype)


def _clipped(h: _Hist, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    n = h.counts.sum(1)
    low = h.counts[:, 0] / n
    high = torch.where(h.hi > h.lo, h.counts[:, -1] / n, torch.ones_like(n))
    return low.to(dtype), high.to(dtype)


def intensity_stats(x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Mean, 1st and 99th percentile of the intensities (exposure descriptors).

    .. math::
        \\bar x = \\frac{1}{HW}\\sum_j x_j, \\quad P_{1}, \\quad P_{99}

    Percentiles use numpy's default (linear) rank :math:`q(n-1)` and are read from the fine
    histogram: exact to ``(max - min) / 4096``. Neither higher nor lower is better: compare
    with the dataset's distribution.

    Parameters
    ----------
    x : Tensor, shape (N, 1, H, W), float.

    Returns
    -------
    (mean, p01, p99) : Tensors, shape (N,).

    References
    ----------
    Sadri et al. (2020) [Sadri2020]_ (MRQy's ``MEAN`` and percentile-based measures).
    """
    x = _check(x)
    q = _quantiles_from_hist(_hist_of(x), (0.01, 0.99)).to(x.dtype)
    return _flat(x).mean(1), q[:, 0], q[:, 1]


def is_blank(
    x: Tensor, noise_sigma: Tensor | None = None, ratio: float = BLANK_NOISE_RATIO
) -> Tensor:
    """Blank or flat image: a single value, or no more variation than its own noise.

    .. math::
        \\mathrm{blank} = (\\max x = \\min x) \\lor
        (\\operatorname{sd}(x) \\le r\\,\\hat\\sigma_{noise})

    with :math:`\\hat\\sigma_{noise}` from :func:`noise_sigma_immerkaer` and :math:`r` =
    ``ratio`` (1.5). The tolerance is relative to the image's own noise, so it needs no bit
    depth: an empty exposure with read-out noise has :math:`\\operatorname{sd} \\approx
    \\hat\\sigma`, an image with anatomy many times more. ``False`` is good.

    Parameters
    ----------
    x : Tensor, shape (N, 1, H, W), float.
    noise_sigma : Tensor, shape (N,), optional; computed when not given.
    ratio : float

    Returns
    -------
    Tensor of bool, shape (N,).
    """
    x = _check(x)
    sigma = _immerkaer(x) if noise_sigma is None else noise_sigma
    lo, hi = _minmax(x)
    return _is_blank(_moments(x).var.sqrt(), sigma, lo, hi, ratio)


def _is_blank(sd: Tensor, sigma: Tensor, lo: Tensor, hi: Tensor, ratio: float) -> Tensor:
    return (hi == lo) | (sd <= ratio * torch.nan_to_num(sigma, nan=0.0))


def border_share(x: Tensor, tol: float = BORDER_TOL) -> Tensor:
    """Share of the image area in uniform bands along its four edges (collimation, shutters,
    cut-off, padding). Lower is better.

    A row (column) is *uniform* when its standard deviation is at most ``tol`` (0.1) times the
    standard deviation of the whole image: noise or nothing, no structure. The band on each
    side is the run of uniform rows (columns) starting at that edge, of depths
    :math:`t, b, l, r`, and

    .. math::
        \\mathrm{border} = 1 - \\frac{\\max(H - t - b, 0)\\,\\max(W - l - r, 0)}{HW}

    Air margins beside a patient count too (0.1-0.15 on the demo chest phantoms): compare with
    the dataset's typical value. Heavy noise in a band (sd above ``tol`` times the image's)
    hides it. NaN for a constant image (no structure to compare with).

    Parameters
    ----------
    x : Tensor, shape (N, 1, H, W), float.
    tol : float

    Returns
    -------
    Tensor, shape (N,).
    """
    x = _check(x)
    return _border_share(_moments(x), tol)


def _leading_run(flags: Tensor) -> Tensor:
    """Length of the run of True at the start of each row of ``flags`` (N, L)."""
    return flags.to(torch.int32).cumprod(dim=1).sum(dim=1)


def _line_var(c: Tensor, c2: Tensor, dim: int) -> Tensor:
    n = c.shape[dim]
    m1 = c.sum(dim=dim) / n
    return _flat(c2.sum(dim=dim) / n - m1 * m1)


def _border_share(mom: _Moments, tol: float) -> Tensor:
    n, _, h, w = mom.c.shape
    var = mom.var
    limit = (tol * tol * var).view(n, 1)
    rows = _line_var(mom.c, mom.c2, -1) <= limit
    cols = _line_var(mom.c, mom.c2, -2) <= limit
    top, bottom = _leading_run(rows), _leading_run(rows.flip(1))
    left, right = _leading_run(cols), _leading_run(cols.flip(1))
    inner_h = (h - top - bottom).clamp(min=0).to(mom.c.dtype)
    inner_w = (w - left - right).clamp(min=0).to(mom.c.dtype)
    return _nan_where(var == 0, 1 - inner_h * inner_w / (h * w))


# --------------------------------------------------------------------------- all at once


def _compute_chunk(x: Tensor, bits: Tensor | int | None) -> dict[str, Tensor]:
    n = x.shape[0]
    lo, hi = _minmax(x)
    xp = _pad_edge(x)
    out: dict[str, Tensor] = {
        "sharpness": _laplacian_variance(xp),
        "tenengrad": _tenengrad(xp),
    }
    del xp
    out["noise_sigma"] = _immerkaer(x)
    hist = _histogram(x, lo, hi)
    t = _otsu_from_hist(hist).to(x.dtype)
    mom = _moments(x)
    cls = _class_stats(x, _above(x, t), mom)
    out["snr"] = _snr(cls)
    out["cnr"] = _cnr(cls)
    out["cjv"] = _cjv(cls)
    out["efc"] = _efc(x, mom)
    out["fber"] = _fber(cls)
    out["entropy"] = _entropy_from_hist(hist).to(x.dtype)
    q = _quantiles_from_hist(hist, (0.005, 0.01, 0.99, 0.995)).to(x.dtype)
    spread = q[:, 3] - q[:, 0]
    if bits is None:
        span = hi - lo
        out["dynamic_range"] = _nan_where(span == 0, spread / span)
    else:
        out["dynamic_range"] = spread / _bits_span(bits, n, x)
    out["clip_low"], out["clip_high"] = _clipped(hist, x.dtype)
    out["mean"] = mom.mean
    out["p01"], out["p99"] = q[:, 1], q[:, 2]
    sd = mom.var.sqrt()
    out["is_blank"] = _is_blank(sd, out["noise_sigma"], lo, hi, BLANK_NOISE_RATIO)
    out["border_share"] = _border_share(mom, BORDER_TOL)
    return out


def compute_all(x: Tensor, *, bits_stored: Tensor | int | None = None) -> dict[str, Tensor]:
    """All metrics of a batch in one pass, on the batch's device.

    The Otsu split, the fine histogram, the padded image and the class statistics are
    computed once and shared. On CPU the batch is processed in chunks of
    :data:`CPU_CHUNK_PIXELS` pixels per thread (see the module docstring); on CUDA in one go.

    Parameters
    ----------
    x : Tensor, shape (N, 1, H, W), float (half precision is promoted to float32).
    bits_stored : int or Tensor of shape (N,), optional
        DICOM BitsStored, for :func:`dynamic_range_used`.

    Returns
    -------
    dict[str, Tensor]
        Keys :data:`METRIC_COLUMNS` (the ``image_quality`` columns), each of shape (N,) on
        the CPU: floats in the input dtype, ``is_blank`` bool. Column to function:
        ``sharpness`` :func:`laplacian_variance`, ``tenengrad``, ``noise_sigma``
        :func:`noise_sigma_immerkaer`, ``snr``, ``cnr``, ``cjv``, ``efc``, ``fber``,
        ``entropy``, ``dynamic_range`` :func:`dynamic_range_used`, ``clip_low`` /
        ``clip_high`` :func:`clipped_share`, ``mean`` / ``p01`` / ``p99``
        :func:`intensity_stats`, ``is_blank``, ``border_share``.
    """
    x = _check(x)
    n = x.shape[0]
    if isinstance(bits_stored, Tensor) and bits_stored.ndim == 1 and bits_stored.shape[0] != n:
        raise ValueError(f"bits_stored must be an int or a tensor of shape ({n},)")
    if n == 0:
        empty = {k: x.new_empty(0) for k in METRIC_COLUMNS}
        empty["is_blank"] = torch.empty(0, dtype=torch.bool)
        return {k: v.cpu() for k, v in empty.items()}
    if x.device.type == "cpu":
        per_image = x.shape[-1] * x.shape[-2]
        chunk = max(1, CPU_CHUNK_PIXELS * torch.get_num_threads() // per_image)
    else:
        chunk = n
    parts: list[dict[str, Tensor]] = []
    for start in range(0, n, chunk):
        bits = bits_stored
        if isinstance(bits, Tensor) and bits.ndim == 1:
            bits = bits[start : start + chunk]
        parts.append(_compute_chunk(x[start : start + chunk], bits))
    return {k: torch.cat([p[k] for p in parts]).cpu() for k in METRIC_COLUMNS}


def compute_all_numpy(
    batch: npt.ArrayLike, *, bits_stored: int | npt.ArrayLike | None = None
) -> pd.DataFrame:
    """:func:`compute_all` on a numpy batch, as a DataFrame (one row per image).

    Parameters
    ----------
    batch : array-like, shape (N, H, W) or (N, 1, H, W); computed in float32 unless it is
        float64.
    bits_stored : int or array-like of shape (N,), optional.

    Returns
    -------
    pandas.DataFrame with the columns :data:`METRIC_COLUMNS`.
    """
    arr = np.asarray(batch)
    if arr.ndim == 3:
        arr = arr[:, None]
    if arr.ndim != 4:
        raise ValueError(f"expected an array of shape (N, H, W) or (N, 1, H, W), got {arr.shape}")
    dtype = np.float64 if arr.dtype == np.float64 else np.float32
    x = torch.from_numpy(np.ascontiguousarray(arr, dtype=dtype))
    bits = bits_stored if bits_stored is None or isinstance(bits_stored, int) else None
    if bits_stored is not None and bits is None:
        bits = torch.as_tensor(np.asarray(bits_stored))
    res = compute_all(x, bits_stored=bits)
    return pd.DataFrame({k: v.numpy() for k, v in res.items()}, columns=list(METRIC_COLUMNS))


def to_batch(
    images: Sequence[npt.ArrayLike | Tensor],
    size: int | tuple[int, int] = 512,
    *,
    keep_aspect: bool = False,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """Resample 2-D images of any sizes to one ``(N, 1, h, w)`` batch.

    Each image is resized with ``torch.nn.functional.interpolate`` (bilinear, antialiased
    when shrinking, values not rescaled).

    * ``keep_aspect=False`` (default): stretched to ``size`` regardless of its aspect ratio.
      No pixel is invented, so no metric sees a fake border; shapes are slightly distorted.
    * ``keep_aspect=True``: scaled so that it fits inside ``size``, then padded to it by
      *reflecting* the image (edge replication where the pad exceeds the image). A constant
      pad would add a uniform band that :func:`border_share`, the Otsu classes and the
      clipping shares would all count.

    Resampling changes scale-dependent metrics (sharpness, noise σ falls when shrinking):
    compare images resampled to the same ``size``.

    Parameters
    ----------
    images : sequence of 2-D arrays or tensors (H_i, W_i).
    size : int or (h, w)
    keep_aspect : bool
    device, dtype : of the returned batch.

    Returns
    -------
    Tensor, shape (N, 1, h, w).
    """
    th, tw = (size, size) if isinstance(size, int) else size
    if th < 1 or tw < 1:
        raise ValueError(f"size must be positive, got {size}")
    out = torch.empty((len(images), 1, th, tw), dtype=dtype, device=device)
    for i, img in enumerate(images):
        t = img if isinstance(img, Tensor) else torch.from_numpy(np.asarray(img))
        if t.ndim != 2:
            raise ValueError(f"image {i} must be 2-D, got shape {tuple(t.shape)}")
        t = t.to(device=out.device, dtype=dtype)[None, None]
        h, w = t.shape[-2:]
        if keep_aspect:
            scale = min(th / h, tw / w)
            nh, nw = max(1, min(th, round(h * scale))), max(1, min(tw, round(w * scale)))
        else:
            nh, nw = th, tw
        if (nh, nw) != (h, w):
            t = F.interpolate(
                t, size=(nh, nw), mode="bilinear", align_corners=False, antialias=nh < h or nw < w
            )
        if (nh, nw) != (th, tw):
            t = _pad_to(t, th, tw)
        out[i] = t[0]
    return out


def _pad_to(t: Tensor, th: int, tw: int) -> Tensor:
    h, w = t.shape[-2:]
    top, left = (th - h) // 2, (tw - w) // 2
    pad = (left, tw - w - left, top, th - h - top)
    mode = "reflect" if max(pad[:2]) < w and max(pad[2:]) < h else "replicate"
    return F.pad(t, pad, mode=mode)
