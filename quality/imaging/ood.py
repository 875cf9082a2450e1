"""Out-of-distribution (OOD) detection against a per-dataset reference.

A reference is fitted on the features of a dataset's *train* split (the CNN embedding
concatenated with the image-quality metrics, see :func:`ood_features`); every image then gets
an ``ood_score`` (higher = further from the reference) and a flag ``is_ood`` when the score
exceeds a threshold calibrated at a percentile of *out-of-sample* reference scores.

Which method for which situation
--------------------------------
===============  ==========================================================  ==============
method           assumes                                                     cost per query
===============  ==========================================================  ==============
``mahalanobis``  one roughly elliptical cluster (one modality, one body      O(D²)
                 part); the default, robust for small references (n ≈ 100)
``knn``          nothing about the shape (several modalities or body parts    O(n·D)
                 in one dataset); needs a larger reference (n ≳ 10·k)
===============  ==========================================================  ==============

Calibration without in-sample bias
----------------------------------
Scoring the reference with a model fitted on the same points under-estimates the distances
of new points (each point pulls the mean and covariance toward itself, or is its own nearest
neighbour), so a threshold taken from in-sample scores flags too many new clean images.

* ``mahalanobis``: ``n_splits``-fold cross-fitting. Each reference point is scored by the
  model fitted on the other folds; the threshold is the ``percentile`` of these
  out-of-sample scores. The final model is then fitted on the whole reference (it is
  slightly tighter than the fold models, so the realised false-positive rate on new clean
  data is at most a little above ``100 - percentile`` %).
* ``knn``: leave-one-out. A reference point's score is its distance to its ``k`` nearest
  *other* reference points, exactly what a new point drawn from the same distribution sees.

References
----------
.. [Lee2018] Lee K., Lee K., Lee H., Shin J. "A simple unified framework for detecting
   out-of-distribution samples and adversarial attacks." NeurIPS 2018.
.. [Sun2022] Sun Y., Ming Y., Zhu X., Li Y. "Out-of-distribution detection with deep nearest
   neighbors." ICML 2022.
.. [LedoitWolf2004] Ledoit O., Wolf M. "A well-conditioned estimator for large-dimensional
   covariance matrices." Journal of Multivariate Analysis 88(2): 365-411 (2004).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final, Literal

import numpy as np
import numpy.typing as npt
import pandas as pd
from numpy.typing import NDArray

__all__ = [
    "LOG_METRICS",
    "OOD_METRICS",
    "OODDetector",
    "ledoit_wolf_shrinkage",
    "ood_features",
]

OOD_METRICS: Final = (
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
    "border_share",
)
"""Metric columns that enter the OOD features (``is_blank`` is a flag, not a feature)."""

LOG_METRICS: Final = frozenset({"sharpness", "tenengrad", "noise_sigma", "snr", "cnr", "fber"})
"""Metrics spanning orders of magnitude: they enter as ``sign(v) log1p(|v|)``."""

Method = Literal["mahalanobis", "knn"]
_METHODS: Final = ("mahalanobis", "knn")
_MIN_SCALE: Final = 1e-12


def ood_features(
    embedding: npt.ArrayLike | None, metrics: pd.DataFrame | None
) -> NDArray[np.float64]:
    """Features for :class:`OODDetector`: the embedding ⊕ the (log-compressed) metrics.

    Heavy-tailed metrics (:data:`LOG_METRICS`) are mapped by ``sign(v) log1p(|v|)`` so that
    one noisy image does not dominate the covariance; the others enter as they are. The
    detector standardises every column (mean 0, sd 1 over the reference) in :meth:`fit`,
    so the embedding and the metrics weigh by their spread, not by their units. Missing
    values (a NaN SNR of a constant image, ...) stay NaN: the detector imputes them with the
    reference median.

    Parameters
    ----------
    embedding : array-like, shape (N, D), or None for metrics-only features.
    metrics : DataFrame with (a subset of) the columns :data:`OOD_METRICS`, N rows, or None
        for embedding-only features. Missing columns are skipped.

    Returns
    -------
    NDArray[np.float64], shape (N, D + M).

    Raises
    ------
    ValueError
        Both inputs are None, the embedding is not 2-D, or the row counts differ.
    """
    parts: list[NDArray[np.float64]] = []
    n: int | None = None
    if embedding is not None:
        emb = np.asarray(embedding, dtype=np.float64)
        if emb.ndim != 2:
            raise ValueError(f"embedding must have shape (N, D), got {emb.shape}")
        parts.append(emb)
        n = emb.shape[0]
    if metrics is not None:
        cols = [c for c in OOD_METRICS if c in metrics.columns]
        if not cols:
            raise ValueError(f"metrics has none of the columns {', '.join(OOD_METRICS)}")
        m = metrics[cols].astype("float64").to_numpy(copy=True, na_value=np.nan)
        for j, col in enumerate(cols):
            if col in LOG_METRICS:
                m[:, j] = np.sign(m[:, j]) * np.log1p(np.abs(m[:, j]))
        if n is not None and m.shape[0] != n:
            raise ValueError(f"embedding has {n} rows but metrics has {m.shape[0]}")
        parts.append(m)
    if not parts:
        raise ValueError("give an embedding, metrics, or both")
    out = np.concatenate(parts, axis=1)
    out[~np.isfinite(out)] = np.nan
    return out


def ledoit_wolf_shrinkage(x: npt.ArrayLike) -> float:
    """Ledoit-Wolf optimal shrinkage intensity toward a scaled identity.

    For centred data :math:`X` (n × p) with sample covariance :math:`S = X^T X / n` and
    target :math:`\\mu I`, :math:`\\mu = \\operatorname{tr}(S) / p`, the estimator
    :math:`\\hat\\Sigma = (1 - \\rho) S + \\rho \\mu I` uses

    .. math::

        \\rho = \\min(b^2, d^2) / d^2, \\quad
        d^2 = \\lVert S - \\mu I \\rVert_F^2 / p, \\quad
        b^2 = \\frac{1}{n^2 p} \\sum_{k} \\lVert x_k x_k^T - S \\rVert_F^2

    [LedoitWolf2004]_, written as in ``sklearn.covariance.ledoit_wolf_shrinkage``.

    Parameters
    ----------
    x : array-like, shape (n, p), already centred.

    Returns
    -------
    float in [0, 1].
    """
    xa = np.asarray(x, dtype=np.float64)
    n, p = xa.shape
    x2 = xa**2
    cov_trace = x2.sum(axis=0) / n
    mu = cov_trace.sum() / p
    beta_ = float(np.sum(x2.T @ x2))
    delta_ = float(np.sum((xa.T @ xa) ** 2)) / n**2
    beta = (beta_ / n - delta_) / (p * n)
    delta = (delta_ - 2.0 * mu * cov_trace.sum() + p * mu**2) / p
    beta = min(beta, delta)
    return 0.0 if beta <= 0 or delta <= 0 else float(beta / delta)


class OODDetector:
    """Distance-to-reference OOD detector with a calibrated threshold.

    Features are imputed (reference median) and standardised (reference mean and sd) with
    statistics learned in :meth:`fit`; then

    * ``method="mahalanobis"`` [Lee2018]_: the Mahalanobis distance to the reference mean,
      :math:`s(x) = \\sqrt{(z - \\hat\\mu)^T \\hat\\Sigma^{-1} (z - \\hat\\mu)}`, with the
      Ledoit-Wolf shrunk covariance :math:`\\hat\\Sigma = (1 - \\rho) S + \\rho \\mu I`
      [LedoitWolf2004]_ (``shrinkage=None`` picks :math:`\\rho` by
      :func:`ledoit_wolf_shrinkage`; embeddings of a few hundred images have more dimensions
      than the plain covariance can invert stably). Lee et al. use one Gaussian per class
      with a shared covariance; a quality reference has one class, so this is their score
      with a single mean.
    * ``method="knn"`` [Sun2022]_: the mean Euclidean distance from :math:`z` to its ``k``
      nearest reference points (Sun et al. use the distance to the ``k``-th neighbour of
      L2-normalised penultimate features; the mean of the ``k`` nearest is a smoothed
      variant that is steadier for small references, and standardised features replace the
      normalisation because metrics have no meaningful direction).

    Higher scores are more out-of-distribution. ``threshold_`` is the ``percentile`` of the
    out-of-sample reference scores (cross-fitted for Mahalanobis, leave-one-out for kNN; see
    the module docstring), so about ``100 - percentile`` % of new in-distribution images are
    flagged.

    Parameters
    ----------
    method : ``"mahalanobis"`` or ``"knn"``.
    percentile : in (0, 100], the calibration percentile of the threshold.
    k : neighbours for ``knn``.
    shrinkage : covariance shrinkage in [0, 1] for ``mahalanobis``; None: Ledoit-Wolf.
    n_splits : folds of the cross-fitted Mahalanobis calibration (at least 2).
    random_state : seed of the fold assignment.

    Attributes
    ----------
    n_features_in_ : int, features seen in :meth:`fit`.
    n_reference_ : int, reference rows.
    median_, mean_, scale_ : NDArray (n_features_in_,), imputation and standardisation.
    location_ : NDArray, Mahalanobis mean of the standardised reference (zeros).
    precision_ : NDArray (D, D), inverse of the shrunk covariance (Mahalanobis).
    shrinkage_ : float, the shrinkage used (Mahalanobis).
    reference_ : NDArray (n, D), standardised reference (kNN).
    reference_scores_ : NDArray (n,), out-of-sample scores of the reference points.
    threshold_ : float, the calibrated threshold.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> det = OODDetector(percentile=99).fit(rng.normal(size=(500, 4)))
    >>> bool(det.predict(np.full((1, 4), 6.0))[0]), bool(det.predict(np.zeros((1, 4)))[0])
    (True, False)
    """

    def __init__(
        self,
        method: Method = "mahalanobis",
        percentile: float = 99.0,
        k: int = 5,
        shrinkage: float | None = None,
        n_splits: int = 5,
        random_state: int | None = 0,
    ) -> None:
        self.method = method
        self.percentile = percentile
        self.k = k
        self.shrinkage = shrinkage
        self.n_splits = n_splits
        self.random_state = random_state

    # ------------------------------------------------------------------ public API

    def fit(self, features: npt.ArrayLike) -> OODDetector:
        """Learn the reference and calibrate ``threshold_``.

        Parameters
        ----------
        features : array-like, shape (n, D); NaN allowed (imputed with the column median).

        Returns
        -------
        self

        Raises
        ------
        ValueError
            Unknown ``method``, parameters out of range, a non-2-D input, or too few rows
            (Mahalanobis: at least ``max(n_splits, 3)``; kNN: at least ``k + 1``).
        """
        self._validate_params()
        x = self._as_2d(features)
        n, d = x.shape
        min_rows = self.k + 1 if self.method == "knn" else max(self.n_splits, 3)
        if n < min_rows:
            raise ValueError(
                f"the reference needs at least {min_rows} rows for method={self.method!r}, got {n}"
            )
        med = np.nanmedian(np.where(np.isnan(x).all(axis=0), 0.0, x), axis=0)
        med = np.where(np.isnan(med), 0.0, med)
        xi = np.where(np.isnan(x), med, x)
        mean = xi.mean(axis=0)
        scale = xi.std(axis=0)
        # A constant column carries no information: keep it, but with unit scale.
        scale = np.where(scale > _MIN_SCALE, scale, 1.0)
        self.n_features_in_ = d
        self.n_reference_ = n
        self.median_, self.mean_, self.scale_ = med, mean, scale
        z = (xi - mean) / scale
        fit_score = _FITTERS[self.method]
        self.reference_scores_ = self._out_of_sample_scores(z, fit_score)
        scorer = fit_score(self, z)
        self._scorer = scorer
        self.threshold_ = float(np.percentile(self.reference_scores_, self.percentile))
        return self

    def score(self, features: npt.ArrayLike) -> NDArray[np.float64]:
        """OOD scores, higher = further from the reference.

        Parameters
        ----------
        features : array-like, shape (m, n_features_in_).

        Returns
        -------
        NDArray[np.float64], shape (m,).
        """
        self._check_fitted()
        x = self._as_2d(features)
        if x.shape[1] != self.n_features_in_:
            raise ValueError(
                f"expected {self.n_features_in_} features (as in fit), got {x.shape[1]}"
            )
        return self._scorer(self._standardise(x))

    def predict(self, features: npt.ArrayLike) -> NDArray[np.bool_]:
        """Whether each row is OOD: ``score > threshold_``.

        Parameters
        ----------
        features : array-like, shape (m, n_features_in_).

        Returns
        -------
        NDArray[np.bool_], shape (m,).
        """
        return self.score(features) > self.threshold_

    # ------------------------------------------------------------------ helpers

    def _validate_params(self) -> None:
        if self.method not in _METHODS:
            raise ValueError(f"method must be one of {', '.join(_METHODS)}, not {self.method!r}")
        if not 0 < self.percentile <= 100:
            raise ValueError(f"percentile must be in (0, 100], not {self.percentile}")
        if int(self.k) != self.k or self.k < 1:
            raise ValueError(f"k must be a positive integer, not {self.k}")
        if self.shrinkage is not None and not 0 <= self.shrinkage <= 1:
            raise ValueError(f"shrinkage must be in [0, 1] or None, not {self.shrinkage}")
        if int(self.n_splits) != self.n_splits or self.n_splits < 2:
            raise ValueError(f"n_splits must be an integer >= 2, not {self.n_splits}")

    @staticmethod
    def _as_2d(features: npt.ArrayLike) -> NDArray[np.float64]:
        x = np.array(features, dtype=np.float64)
        if x.ndim != 2:
            raise ValueError(f"features must have shape (n, D), got {x.shape}")
        if x.shape[1] == 0:
            raise ValueError("features must have at least one column")
        x[~np.isfinite(x)] = np.nan
        return x

    def _check_fitted(self) -> None:
        if not hasattr(self, "threshold_"):
            raise ValueError("this OODDetector is not fitted yet: call fit() first")

    def _standardise(self, x: NDArray[np.float64]) -> NDArray[np.float64]:
        return (np.where(np.isnan(x), self.median_, x) - self.mean_) / self.scale_

    def _out_of_sample_scores(
        self, z: NDArray[np.float64], fit_score: _Fitter
    ) -> NDArray[np.float64]:
        n = z.shape[0]
        if self.method == "knn":
            return _knn_scores(z, z, self.k, exclude_self=True)
        rng = np.random.default_rng(self.random_state)
        folds = rng.permutation(n) % min(self.n_splits, n)
        out = np.empty(n)
        for f in np.unique(folds):
            held = folds == f
            out[held] = fit_score(self, z[~held], store=False)(z[held])
        return out

    def _fit_mahalanobis(
        self, z: NDArray[np.float64], *, store: bool = True
    ) -> Callable[[NDArray[np.float64]], NDArray[np.float64]]:
        loc = z.mean(axis=0)
        xc = z - loc
        n, p = xc.shape
        cov = xc.T @ xc / n
        rho = ledoit_wolf_shrinkage(xc) if self.shrinkage is None else float(self.shrinkage)
        mu = float(np.trace(cov)) / p
        if not mu > 0:
            mu = 1.0
        shrunk = (1.0 - rho) * cov + rho * mu * np.eye(p)
        prec = np.linalg.pinv(shrunk, hermitian=True)
        if store:
            self.location_, self.precision_, self.shrinkage_ = loc, prec, rho

        def score(q: NDArray[np.float64]) -> NDArray[np.float64]:
            dq = q - loc
            d2 = np.einsum("ij,jk,ik->i", dq, prec, dq)
            return np.sqrt(np.clip(d2, 0.0, None))

        return score

    def _fit_knn(
        self, z: NDArray[np.float64], *, store: bool = True
    ) -> Callable[[NDArray[np.float64]], NDArray[np.float64]]:
        ref = z.copy()
        if store:
            self.reference_ = ref
        k = self.k
        return lambda q: _knn_scores(q, ref, k, exclude_self=False)


_Fitter = Callable[..., Callable[[NDArray[np.float64]], NDArray[np.float64]]]
_FITTERS: dict[str, _Fitter] = {
    "mahalanobis": OODDetector._fit_mahalanobis,
    "knn": OODDetector._fit_knn,
}


def _knn_scores(
    q: NDArray[np.float64], ref: NDArray[np.float64], k: int, *, exclude_self: bool
) -> NDArray[np.float64]:
    """Mean distance from each row of ``q`` to its ``k`` nearest rows of ``ref``.

    With ``exclude_self`` (``q is ref``) each point's zero distance to itself is skipped:
    the leave-one-out score.
    """
    out = np.empty(q.shape[0])
    ref_sq = np.einsum("ij,ij->i", ref, ref)
    m = min(k, ref.shape[0] - int(exclude_self))
    # Blocks keep the (block, n_ref) distance matrix small for large references.
    for start in range(0, q.shape[0], 1024):
        qb = q[start : start + 1024]
        d2 = np.einsum("ij,ij->i", qb, qb)[:, None] + ref_sq[None, :] - 2.0 * qb @ ref.T
        if exclude_self:
            rows = np.arange(qb.shape[0])
            d2[rows, rows + start] = np.inf
        part = np.partition(d2, m - 1, axis=1)[:, :m]
        out[start : start + qb.shape[0]] = np.sqrt(np.clip(part, 0.0, None)).mean(axis=1)
    return out
