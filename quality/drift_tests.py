r"""Registry of two-sample drift tests, automatic test choice and multiple-testing control.

One drift test per registry entry, each with its kind and default threshold, in the
manner of Evidently's ``calculations/stattests`` registry. Every test compares a
*reference* sample (the data the model was validated on) with a *current* sample.

====================  ==========  ===========  =====================  ==============================
name                  kind        column type  drift when             reference
====================  ==========  ===========  =====================  ==============================
``"ks"``              p_value     num          p < 0.05               Kolmogorov 1933; Smirnov 1948
``"chisquare"``       p_value     cat, num     p < 0.05               Pearson 1900
``"z"``               p_value     cat, num     p < 0.05               Fleiss et al. 2003
``"psi"``             distance    num, cat     PSI ≥ 0.1              Siddiqi 2006
``"wasserstein"``     distance    num          W₁ / σ_ref ≥ 0.1       Vaserstein 1969
``"jensenshannon"``   distance    num, cat     JS distance ≥ 0.1      Lin 1991
====================  ==========  ===========  =====================  ==============================

Which function for which situation
----------------------------------
* :func:`run_test` -- one column, one test (chosen automatically when ``test=None``).
* :func:`drift_table` -- every common column of two frames, Benjamini-Hochberg across the
  p-value tests, per-column overrides.
* :func:`choose_test` -- the automatic choice alone.
* :func:`benjamini_hochberg` -- the false-discovery-rate step on its own.
* :func:`get_test` -- look up a registry entry; an unknown name raises ``ValueError``
  that lists the valid names.

Every test takes ``flavor="default"`` or ``flavor="evidently"`` (below).

Automatic choice
----------------
Mirrors Evidently's ``get_default_stattest`` (``calculations/stattests/registry.py``).
``n`` is the number of non-missing reference values (the smaller of that and
``n_current`` when it is given); ``k`` is the number of distinct non-missing reference
values. A column is *numeric* when its dtype is numeric and not boolean; booleans,
strings, categoricals and objects are *categorical*.

==============  ==========  ============  =================
column type     n           k             test
==============  ==========  ============  =================
numeric         ≤ 1000      > 5           ``"ks"``
numeric         ≤ 1000      3 – 5         ``"chisquare"``
numeric         ≤ 1000      ≤ 2           ``"z"``
numeric         > 1000      > 5           ``"wasserstein"``
numeric         > 1000      ≤ 5           ``"jensenshannon"``
categorical     ≤ 1000      > 2           ``"chisquare"``
categorical     ≤ 1000      ≤ 2           ``"z"``
categorical     > 1000      any           ``"jensenshannon"``
==============  ==========  ============  =================

The switch at ``n = 1000`` is there because p-value tests on large samples flag
differences too small to matter; a distance with a fixed threshold does not grow with
``n``. Evidently counts distinct values over reference and current together; here only
the reference is known to :func:`choose_test`, so ``k`` comes from the reference.

Binning (PSI and Jensen-Shannon)
--------------------------------
A numeric sample with more than ``10`` distinct reference values is cut into (at most)
ten bins at the reference deciles (duplicate edges dropped; the outer bins are open, so
current values outside the reference range are counted). Otherwise every distinct value
(category) seen in either sample is its own bin. Evidently cuts numeric columns into
equal-width bins over both samples instead; quantile bins from the reference are the
usual choice for PSI (Siddiqi 2006) and keep every reference bin populated.

Evidently flavour
-----------------
``flavor="evidently"`` reproduces Evidently 0.7.23's definitions where they differ from
the defaults here, so that statistics and p-values can be compared one to one:

* ``"chisquare"`` is a goodness-of-fit test of the current counts against the reference
  shares, :math:`\chi^2 = \sum_j (c_j - n_{cur} r_j)^2 / (n_{cur} r_j)` with
  :math:`k - 1` degrees of freedom (:func:`scipy.stats.chisquare`), instead of the test of
  homogeneity. It treats the reference shares as exact: with no drift its statistic is
  about :math:`(1 + n_{cur}/n_{ref})\,\chi^2_{k-1}`, twice a chi-square for equal sizes,
  so its p-values are too small unless the reference is much larger than the current
  sample. That is why the default is the test of homogeneity;
* ``"psi"`` and ``"jensenshannon"`` cut a numeric column with more than ``20`` distinct
  reference values into equal-width bins over both samples, as many as Sturges' rule
  gives for their joint size (:func:`numpy.histogram_bin_edges` with ``bins="sturges"``);
  other columns are counted per value;
* PSI fills an empty bin with ``1e-4``, or with a millionth of the smallest non-zero
  share when that share is at most ``1e-4``;
* the z-test's p-value is :math:`2 (1 - \Phi(|z|))` (0 below about 1e-16).

KS and the normalised Wasserstein distance are the same in both flavours.

Missing values
--------------
``NaN``/``None``/``pd.NA`` are dropped from both samples before testing and their
counts are reported in :class:`DriftTestResult` (``n_missing_reference``,
``n_missing_current``). When a sample is empty after dropping, the statistic and the
p-value are ``NaN`` and ``drifted`` is ``False``: there is nothing to compare. A rise in
missing values is a separate alert, not a distribution drift.

References
----------
.. [1] Evidently AI, ``src/evidently/calculations/stattests/`` (registry and defaults).
.. [2] N. Siddiqi, *Credit Risk Scorecards*, Wiley, 2006 (population stability index).
.. [3] J. Lin, "Divergence measures based on the Shannon entropy", IEEE Trans. Inf.
   Theory 37(1), 1991.
.. [4] J. L. Fleiss, B. Levin, M. C. Paik, *Statistical Methods for Rates and
   Proportions*, 3rd ed., Wiley, 2003, ch. 2.
.. [5] Y. Benjamini, Y. Hochberg, "Controlling the false discovery rate", JRSS B 57(1),
   1995.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple

import numpy as np
import numpy.typing as npt
import pandas as pd
from numpy.typing import NDArray
from scipy import stats
from scipy.spatial import distance

__all__ = [
    "DRIFT_TESTS",
    "FLAVORS",
    "DriftTest",
    "DriftTestResult",
    "Flavor",
    "TestKind",
    "TestName",
    "benjamini_hochberg",
    "choose_test",
    "drift_table",
    "get_test",
    "run_test",
]

TestName = Literal["ks", "chisquare", "psi", "wasserstein", "jensenshannon", "z"]
TestKind = Literal["p_value", "distance"]
ColumnType = Literal["num", "cat"]
Flavor = Literal["default", "evidently"]
FLAVORS: tuple[str, ...] = ("default", "evidently")

#: Sample size above which the automatic choice prefers a distance to a p-value test.
LARGE_SAMPLE = 1000
#: Numeric columns with at most this many distinct values are treated as categorical.
FEW_VALUES = 5
#: Number of reference-quantile bins for PSI and Jensen-Shannon on numeric columns.
N_BINS = 10
#: Evidently bins a numeric column (Sturges) only above this many distinct reference values.
EVIDENTLY_MIN_VALUES = 20
#: Proportion put in an empty PSI bin so that ln(c/r) is finite (Evidently's value).
PSI_EPSILON = 1e-4
#: Floor on the reference standard deviation in the normalised Wasserstein distance.
WASSERSTEIN_MIN_STD = 1e-3


@dataclass(frozen=True)
class DriftTestResult:
    """Outcome of one drift test on one column.

    Attributes
    ----------
    name : str
        Registry name of the test.
    statistic : float
        Test statistic or distance (``NaN`` when a sample was empty).
    p_value : float
        Two-sided p-value; ``NaN`` for distance tests and for empty samples.
    threshold : float
        Significance level (p-value tests) or distance threshold.
    drifted : bool
        ``p_value < threshold`` for p-value tests, ``statistic >= threshold`` for
        distances.
    kind : {"p_value", "distance"}
    n_reference, n_current : int
        Non-missing values used.
    n_missing_reference, n_missing_current : int
        Missing values dropped before testing.
    """

    name: str
    statistic: float
    p_value: float
    threshold: float
    drifted: bool
    kind: TestKind
    n_reference: int = 0
    n_current: int = 0
    n_missing_reference: int = 0
    n_missing_current: int = 0


TestFunction = Callable[[NDArray[Any], NDArray[Any]], tuple[float, float]]


@dataclass(frozen=True)
class DriftTest:
    """A registry entry.

    Attributes
    ----------
    name : str
    fn : callable
        ``fn(reference, current) -> (statistic, p_value)`` on 1-D arrays without missing
        values, both non-empty; ``p_value`` is ``NaN`` for distances. The default flavour.
    kind : {"p_value", "distance"}
    default_threshold : float
    column_types : tuple of {"num", "cat"}
        Column types the test accepts.
    description, reference : str
    """

    name: str
    fn: TestFunction
    kind: TestKind
    default_threshold: float
    column_types: tuple[ColumnType, ...]
    description: str
    reference: str


# --------------------------------------------------------------------------- counting


class _Counts(NamedTuple):
    """Counts of two samples over the categories seen in either, shape ``(k,)`` each."""

    categories: list[Any]
    reference: NDArray[np.float64]
    current: NDArray[np.float64]


def _is_numeric(values: NDArray[Any]) -> bool:
    return values.dtype.kind in "iuf"


def _sorted_categories(values: list[Any]) -> list[Any]:
    """A stable order for categories: sorted, or sorted by ``str`` when types are mixed."""
    try:
        return sorted(values)
    except TypeError:
        return sorted(values, key=str)


def _category_counts(reference: NDArray[Any], current: NDArray[Any]) -> _Counts:
    """Counts per distinct value of two 1-D arrays (numeric: ``np.unique``; else factorize)."""
    if _is_numeric(reference) and _is_numeric(current):
        cats, inverse = np.unique(np.concatenate([reference, current]), return_inverse=True)
        ref = np.bincount(inverse[: reference.size], minlength=cats.size)
        cur = np.bincount(inverse[reference.size :], minlength=cats.size)
        return _Counts(cats.tolist(), ref.astype(np.float64), cur.astype(np.float64))
    joined = pd.Series(np.concatenate([reference.astype(object), current.astype(object)]))
    codes, uniques = pd.factorize(joined, sort=False)
    return _reorder(list(uniques), codes[: reference.size], codes[reference.size :])


def _reorder(uniques: list[Any], ref_codes: NDArray[Any], cur_codes: NDArray[Any]) -> _Counts:
    """Counts in :func:`_sorted_categories` order from codes into ``uniques``."""
    k = len(uniques)
    ref = np.bincount(ref_codes, minlength=k).astype(np.float64)
    cur = np.bincount(cur_codes, minlength=k).astype(np.float64)
    try:
        order = sorted(range(k), key=lambda i: uniques[i])
    except TypeError:
        order = sorted(range(k), key=lambda i: str(uniques[i]))
    return _Counts([uniques[i] for i in order], ref[order], cur[order])


def _series_counts(reference: pd.Series, current: pd.Series) -> _Counts:
    """:class:`_Counts` of two non-missing categorical Series, in their native dtype.

    ``value_counts`` on the native dtype (Arrow strings, categoricals, booleans) avoids the
    object conversion that dominates the cost on 10⁶ rows. Categories of a categorical
    dtype that neither sample holds are dropped (they would add empty cells).
    """
    ref = reference.value_counts(sort=False)
    cur = current.value_counts(sort=False)
    # Plain dicts: a reindex per call costs more than the counting on small windows.
    ref_d = {k: v for k, v in zip(ref.index.tolist(), ref.to_numpy().tolist(), strict=True) if v}
    cur_d = {k: v for k, v in zip(cur.index.tolist(), cur.to_numpy().tolist(), strict=True) if v}
    cats = _sorted_categories(list({**ref_d, **cur_d}))
    ref_counts = np.array([ref_d.get(c, 0) for c in cats], dtype=np.float64)
    cur_counts = np.array([cur_d.get(c, 0) for c in cats], dtype=np.float64)
    return _Counts(cats, ref_counts, cur_counts)


def _quantile_bins(
    reference: NDArray[np.float64], current: NDArray[np.float64], n_bins: int = N_BINS
) -> _Counts:
    """Counts in at most ``n_bins`` bins cut at the reference quantiles (module "Binning")."""
    interior = np.unique(np.quantile(reference, np.linspace(0.0, 1.0, n_bins + 1)[1:-1]))
    size = interior.size + 1
    # Bins are [-inf, e1), [e1, e2), ..., [ek, inf).
    ref = np.bincount(np.searchsorted(interior, reference, side="right"), minlength=size)
    cur = np.bincount(np.searchsorted(interior, current, side="right"), minlength=size)
    return _Counts(list(range(size)), ref.astype(np.float64), cur.astype(np.float64))


def _sturges_bins(reference: NDArray[np.float64], current: NDArray[np.float64]) -> _Counts:
    """Evidently's bins: equal width over both samples, Sturges' number of bins."""
    edges = np.histogram_bin_edges(np.concatenate([reference, current]), bins="sturges")
    ref = np.histogram(reference, edges)[0].astype(np.float64)
    cur = np.histogram(current, edges)[0].astype(np.float64)
    return _Counts(list(range(ref.size)), ref, cur)


def _binned_counts(
    reference: NDArray[Any], current: NDArray[Any], flavor: Flavor = "default"
) -> _Counts:
    """Counts per bin for PSI and Jensen-Shannon (module "Binning")."""
    if _is_numeric(reference):
        n_values = np.unique(reference).size
        if flavor == "evidently" and n_values > EVIDENTLY_MIN_VALUES:
            return _sturges_bins(reference, current)
        if flavor == "default" and n_values > N_BINS:
            return _quantile_bins(reference, current)
    return _category_counts(reference, current)


def _positive_index(categories: list[Any]) -> int:
    """Index of the category whose share the z-test compares: ``True`` for booleans, else 0."""
    if all(isinstance(c, bool | np.bool_) for c in categories) and True in categories:
        return categories.index(True)
    return 0


# ------------------------------------------------------------------ tests on counts


def _chisquare_counts(counts: _Counts) -> tuple[float, float]:
    ref, cur = counts.reference, counts.current
    if ref.size < 2:  # a single category: the samples cannot differ
        return 0.0, 1.0
    res = stats.chi2_contingency(np.vstack([ref, cur]), correction=False)
    return float(res.statistic), float(res.pvalue)


def _chisquare_gof_counts(counts: _Counts) -> tuple[float, float]:
    """Evidently's chi-square: current counts against reference shares (goodness of fit)."""
    ref, cur = counts.reference, counts.current
    if ref.size < 2:
        return 0.0, 1.0
    expected = ref * (cur.sum() / ref.sum())
    with np.errstate(divide="ignore", invalid="ignore"):
        res = stats.chisquare(cur, expected)
    return float(res.statistic), float(res.pvalue)


def _z_counts(counts: _Counts, *, flavor: Flavor = "default") -> tuple[float, float]:
    i = _positive_index(counts.categories)
    n_ref, n_cur = float(counts.reference.sum()), float(counts.current.sum())
    x_ref, x_cur = float(counts.reference[i]), float(counts.current[i])
    pooled = (x_ref + x_cur) / (n_ref + n_cur)
    if pooled in (0.0, 1.0):
        return 0.0, 1.0
    se = math.sqrt(pooled * (1.0 - pooled) * (1.0 / n_ref + 1.0 / n_cur))
    z = (x_cur / n_cur - x_ref / n_ref) / se
    if flavor == "evidently":  # Evidently's 2 (1 - Φ(|z|)): 0 below ~1e-16, where sf is not
        return z, float(2.0 * (1.0 - stats.norm.cdf(abs(z))))
    return z, float(2.0 * stats.norm.sf(abs(z)))


def _fill_zeros(shares: NDArray[np.float64], flavor: Flavor) -> NDArray[np.float64]:
    out = shares.copy()
    fill = PSI_EPSILON
    if flavor == "evidently":
        # Evidently: 1e-4, or a millionth of the smallest non-zero share when that is smaller.
        smallest = float(out[out != 0].min())
        fill = smallest / 1e6 if smallest <= PSI_EPSILON else PSI_EPSILON
    out[out == 0] = fill
    return out


def _psi_counts(counts: _Counts, *, flavor: Flavor = "default") -> tuple[float, float]:
    r = _fill_zeros(counts.reference / counts.reference.sum(), flavor)
    c = _fill_zeros(counts.current / counts.current.sum(), flavor)
    return float(np.sum((c - r) * np.log(c / r))), math.nan


def _js_counts(counts: _Counts) -> tuple[float, float]:
    p = counts.reference / counts.reference.sum()
    q = counts.current / counts.current.sum()
    return float(distance.jensenshannon(p, q)), math.nan


# ------------------------------------------------------------------------ the tests


def _ks(reference: NDArray[Any], current: NDArray[Any]) -> tuple[float, float]:
    r"""Two-sample Kolmogorov-Smirnov test.

    :math:`D = \sup_x |F_{ref}(x) - F_{cur}(x)|`, p-value from
    :func:`scipy.stats.ks_2samp` (``method="auto"``: exact for small samples).
    """
    res = stats.ks_2samp(reference, current)
    return float(res.statistic), float(res.pvalue)


def _chisquare(reference: NDArray[Any], current: NDArray[Any]) -> tuple[float, float]:
    r"""Pearson chi-square test of homogeneity on the ``2 x k`` table of counts.

    :math:`\chi^2 = \sum_{s \in \{ref, cur\}} \sum_j (O_{sj} - E_{sj})^2 / E_{sj}`,
    :math:`E_{sj} = n_s\, m_j / N`, with :math:`k - 1` degrees of freedom and no Yates
    correction. Evidently uses a goodness-of-fit test of the current counts against the
    reference shares instead (``flavor="evidently"``,
    :math:`\chi^2 = \sum_j (c_j - n_{cur} r_j)^2 / (n_{cur} r_j)`, Pearson 1900);
    homogeneity treats both samples as random.
    """
    return _chisquare_counts(_category_counts(reference, current))


def _z(reference: NDArray[Any], current: NDArray[Any]) -> tuple[float, float]:
    r"""Two-proportion z-test with pooled proportion (Fleiss et al. 2003, §2.5).

    With :math:`\hat p_s = x_s / n_s` the share of the positive category (``True`` for
    booleans, else the first category in sorted order) and
    :math:`\bar p = (x_{ref} + x_{cur}) / (n_{ref} + n_{cur})`:

    .. math:: z = \frac{\hat p_{cur} - \hat p_{ref}}
                       {\sqrt{\bar p (1 - \bar p)(1/n_{ref} + 1/n_{cur})}},
              \qquad p = 2\,(1 - \Phi(|z|)).

    When :math:`\bar p \in \{0, 1\}` both shares are equal and :math:`z = 0, p = 1`.
    """
    return _z_counts(_category_counts(reference, current))


def _psi(reference: NDArray[Any], current: NDArray[Any]) -> tuple[float, float]:
    r"""Population stability index (Siddiqi 2006).

    .. math:: \mathrm{PSI} = \sum_i (c_i - r_i) \ln(c_i / r_i)

    with :math:`r_i, c_i` the reference and current shares in bin *i* (module
    "Binning"); a share of exactly 0 is replaced by ``PSI_EPSILON`` = 1e-4 (Evidently's
    value) without renormalising. Every term is ≥ 0. Conventions: < 0.1 no significant
    change, 0.1 – 0.25 moderate change, ≥ 0.25 significant change.
    """
    return _psi_counts(_binned_counts(reference, current))


def _wasserstein(reference: NDArray[Any], current: NDArray[Any]) -> tuple[float, float]:
    r"""Normalised Wasserstein-1 distance, as in Evidently.

    .. math:: W = \frac{\int |F_{ref}(x) - F_{cur}(x)|\,dx}{\max(\sigma_{ref}, 10^{-3})}

    with :math:`\sigma_{ref}` the population (``ddof=0``) standard deviation of the
    reference: the distance is in units of reference standard deviations. The integral is
    :func:`scipy.stats.wasserstein_distance`'s sum over the merged sorted sample, computed
    here from two sorted runs (one stable merge instead of a full sort and two binary
    searches per value; bit-identical, ten times faster on 10⁶ values).
    """
    norm = max(float(np.std(reference)), WASSERSTEIN_MIN_STD)
    return _wasserstein1(reference, current) / norm, math.nan


def _wasserstein1(u: NDArray[np.float64], v: NDArray[np.float64]) -> float:
    n, m = u.size, v.size
    merged = np.concatenate((np.sort(u), np.sort(v)))
    # A stable sort of two sorted runs is one merge; ties keep u before v.
    order = np.argsort(merged, kind="stable")
    merged = merged[order]
    # At the last of a run of ties the running counts equal scipy's searchsorted(..., "right");
    # elsewhere in a run the gap to the next value is 0, so the term vanishes either way.
    u_count = np.cumsum(order < n)[:-1]
    v_count = np.arange(1, n + m) - u_count
    return float(np.vecdot(np.abs(u_count / n - v_count / m), np.diff(merged)))


def _jensenshannon(reference: NDArray[Any], current: NDArray[Any]) -> tuple[float, float]:
    r"""Jensen-Shannon *distance* (Lin 1991), natural logarithm (Evidently's default).

    .. math:: JS(r, c) = \sqrt{\tfrac12 KL(r \,\|\, m) + \tfrac12 KL(c \,\|\, m)},
              \quad m = \tfrac12 (r + c),

    on the bin shares of the module's "Binning"; :func:`scipy.spatial.distance.jensenshannon`
    with ``base=None``. It lies in :math:`[0, \sqrt{\ln 2}] \approx [0, 0.833]`.
    """
    return _js_counts(_binned_counts(reference, current))


DRIFT_TESTS: dict[str, DriftTest] = {
    t.name: t
    for t in (
        DriftTest(
            "ks",
            _ks,
            "p_value",
            0.05,
            ("num",),
            "Two-sample Kolmogorov-Smirnov test (scipy.stats.ks_2samp).",
            "Kolmogorov 1933; Smirnov 1948",
        ),
        DriftTest(
            "chisquare",
            _chisquare,
            "p_value",
            0.05,
            ("cat", "num"),
            "Chi-square test of homogeneity, 2 x k table, no continuity correction.",
            "Pearson 1900",
        ),
        DriftTest(
            "z",
            _z,
            "p_value",
            0.05,
            ("cat", "num"),
            "Two-proportion z-test with pooled proportion, two-sided.",
            "Fleiss, Levin & Paik 2003, ch. 2",
        ),
        DriftTest(
            "psi",
            _psi,
            "distance",
            0.1,
            ("num", "cat"),
            "Population stability index on reference-decile bins or categories.",
            "Siddiqi 2006",
        ),
        DriftTest(
            "wasserstein",
            _wasserstein,
            "distance",
            0.1,
            ("num",),
            "Wasserstein-1 distance divided by the reference standard deviation.",
            "Vaserstein 1969; Evidently wasserstein_distance_norm",
        ),
        DriftTest(
            "jensenshannon",
            _jensenshannon,
            "distance",
            0.1,
            ("num", "cat"),
            "Jensen-Shannon distance (natural log) on bin or category shares.",
            "Lin 1991",
        ),
    )
}

# Tests that run on counts: categorical columns are counted once, in their native dtype.
_COUNT_TESTS: dict[tuple[str, str], Callable[[_Counts], tuple[float, float]]] = {
    ("chisquare", "default"): _chisquare_counts,
    ("chisquare", "evidently"): _chisquare_gof_counts,
    ("z", "default"): _z_counts,
    ("z", "evidently"): lambda c: _z_counts(c, flavor="evidently"),
    ("psi", "default"): _psi_counts,
    ("psi", "evidently"): lambda c: _psi_counts(c, flavor="evidently"),
    ("jensenshannon", "default"): _js_counts,
    ("jensenshannon", "evidently"): _js_counts,
}


def _run_numeric(
    name: str, reference: NDArray[np.float64], current: NDArray[np.float64], flavor: Flavor
) -> tuple[float, float]:
    if name in ("ks", "wasserstein"):
        return DRIFT_TESTS[name].fn(reference, current)
    if name in ("psi", "jensenshannon"):
        counts = _binned_counts(reference, current, flavor)
    else:
        counts = _category_counts(reference, current)
    return _COUNT_TESTS[(name, flavor)](counts)


# ------------------------------------------------------------------------ public API


def get_test(name: str) -> DriftTest:
    """Return the registry entry ``name``.

    Raises
    ------
    ValueError
        If ``name`` is not registered; the message lists the valid names.
    """
    try:
        return DRIFT_TESTS[name]
    except (KeyError, TypeError):
        valid = ", ".join(sorted(DRIFT_TESTS))
        raise ValueError(f"unknown drift test {name!r}; valid names: {valid}") from None


def _check_flavor(flavor: str) -> None:
    if flavor not in FLAVORS:
        raise ValueError(f"unknown flavor {flavor!r}; valid flavors: {', '.join(FLAVORS)}")


def _column_type(values: pd.Series) -> ColumnType:
    dtype = values.dtype
    if pd.api.types.is_bool_dtype(dtype) or not pd.api.types.is_numeric_dtype(dtype):
        return "cat"
    return "num"


def _clean(values: npt.ArrayLike | pd.Series, label: str) -> tuple[pd.Series, int]:
    series = values if isinstance(values, pd.Series) else pd.Series(values)
    if series.ndim != 1:
        raise ValueError(f"{label} must be one-dimensional")
    missing = int(series.isna().sum())
    return (series.dropna() if missing else series), missing


def _choose(column_type: ColumnType, n: int, k: int) -> TestName:
    """The module's choice table for a column type, sample size and distinct values."""
    few = column_type == "cat" or k <= FEW_VALUES
    if n <= LARGE_SAMPLE:
        if not few:
            return "ks"
        return "z" if k <= 2 else "chisquare"
    return "jensenshannon" if few else "wasserstein"


def _n_distinct(values: pd.Series, cap: int) -> int:
    """Number of distinct values, exact up to ``cap``; ``cap + 1`` stands for "more".

    The choice table only asks whether ``k <= 2`` or ``k <= 5``: a look at the first
    thousand values settles that for most numeric columns without hashing 10⁶ of them.
    """
    if len(values) > 1000 and len(pd.unique(values.iloc[:1000])) > cap:
        return cap + 1
    return int(values.nunique())


def choose_test(reference: pd.Series, *, n_current: int | None = None) -> TestName:
    """Choose a drift test from the column type and sample size (module table).

    Parameters
    ----------
    reference : pandas.Series
        Reference sample; missing values are ignored.
    n_current : int, optional
        Size of the current sample; when given, ``n = min(n_reference, n_current)``.

    Returns
    -------
    str
        A registry name.

    Examples
    --------
    >>> choose_test(pd.Series(range(100)))
    'ks'
    >>> choose_test(pd.Series(["a", "b"] * 1000))
    'jensenshannon'
    """
    if n_current is not None and (isinstance(n_current, bool) or n_current < 0):
        raise ValueError(f"n_current must be a non-negative integer, got {n_current!r}")
    series = reference if isinstance(reference, pd.Series) else pd.Series(reference)
    values = series.dropna()
    n = len(values) if n_current is None else min(len(values), int(n_current))
    return _choose(_column_type(series), n, int(values.nunique()))


def run_test(
    reference: npt.ArrayLike | pd.Series,
    current: npt.ArrayLike | pd.Series,
    *,
    test: str | None = None,
    threshold: float | None = None,
    flavor: Flavor = "default",
) -> DriftTestResult:
    """Run one drift test on one column.

    Parameters
    ----------
    reference, current : array_like or pandas.Series, shape (n_ref,) and (n_cur,)
        The two samples. Missing values are dropped and counted (module "Missing
        values"). The column type (numeric or categorical) is read from ``reference``.
    test : str, optional
        Registry name; chosen by :func:`choose_test` when ``None``.
    threshold : float, optional
        Significance level (p-value tests, in (0, 1)) or distance threshold (> 0);
        the test's default when ``None``.
    flavor : {"default", "evidently"}
        ``"evidently"`` reproduces Evidently 0.7's definitions where they differ (module
        "Evidently flavour"): chi-square goodness of fit, Sturges bins and its zero fill.

    Returns
    -------
    DriftTestResult

    Raises
    ------
    ValueError
        Unknown test or flavour, a test that does not accept the column type, or a bad
        threshold.
    """
    _check_flavor(flavor)
    raw = reference if isinstance(reference, pd.Series) else pd.Series(reference)
    ref_series, ref_missing = _clean(raw, "reference")
    cur_series, cur_missing = _clean(current, "current")
    ref_type = _column_type(raw)
    counts: _Counts | None = None
    if test is None:
        n = min(len(ref_series), len(cur_series))
        if ref_type == "cat" and n:
            counts = _series_counts(ref_series, cur_series)
            k = int(np.count_nonzero(counts.reference))
        else:
            k = _n_distinct(ref_series, FEW_VALUES)
        name: str = _choose(ref_type, n, k)
    else:
        name = test
    spec = get_test(name)
    if ref_type not in spec.column_types:
        raise ValueError(
            f"drift test {name!r} accepts {', '.join(spec.column_types)} columns, not {ref_type!r}"
        )
    level = spec.default_threshold if threshold is None else float(threshold)
    if not math.isfinite(level) or level <= 0 or (spec.kind == "p_value" and level >= 1):
        bound = "in (0, 1)" if spec.kind == "p_value" else "> 0"
        raise ValueError(f"threshold for {name!r} must be {bound}, got {threshold!r}")

    sizes = {
        "n_reference": len(ref_series),
        "n_current": len(cur_series),
        "n_missing_reference": ref_missing,
        "n_missing_current": cur_missing,
    }
    if len(ref_series) == 0 or len(cur_series) == 0:
        return DriftTestResult(name, math.nan, math.nan, level, False, spec.kind, **sizes)
    if ref_type == "cat":
        counts = counts or _series_counts(ref_series, cur_series)
        statistic, p_value = _COUNT_TESTS[(name, flavor)](counts)
    else:
        ref = ref_series.to_numpy(dtype=np.float64)
        cur = cur_series.to_numpy(dtype=np.float64)
        statistic, p_value = _run_numeric(name, ref, cur, flavor)
    drifted = p_value < level if spec.kind == "p_value" else statistic >= level
    return DriftTestResult(name, statistic, p_value, level, bool(drifted), spec.kind, **sizes)


def benjamini_hochberg(
    p_values: npt.ArrayLike, *, alpha: float = 0.05
) -> tuple[NDArray[np.bool_], NDArray[np.float64]]:
    r"""Benjamini-Hochberg step-up procedure (false discovery rate at ``alpha``).

    With :math:`p_{(1)} \le \dots \le p_{(m)}`, the adjusted p-values are

    .. math:: \tilde p_{(i)} = \min\Big(1, \min_{j \ge i} \frac{m\, p_{(j)}}{j}\Big),

    and hypothesis *i* is rejected when :math:`\tilde p_i \le \alpha` (Benjamini &
    Hochberg 1995). Equals ``scipy.stats.false_discovery_control(p, method="bh")``.

    Parameters
    ----------
    p_values : array_like, shape (m,)
        p-values in [0, 1], no NaN.
    alpha : float
        FDR level in (0, 1).

    Returns
    -------
    rejected : ndarray of bool, shape (m,)
    adjusted : ndarray of float, shape (m,)
    """
    p = np.asarray(p_values, dtype=np.float64)
    if p.ndim != 1:
        raise ValueError(f"p_values must be one-dimensional, got shape {p.shape}")
    if np.any(~np.isfinite(p)) or np.any((p < 0) | (p > 1)):
        raise ValueError("p_values must lie in [0, 1] and contain no NaN")
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), got {alpha!r}")
    m = p.size
    if m == 0:
        return np.zeros(0, dtype=bool), np.zeros(0)
    order = np.argsort(p)
    scaled = p[order] * m / np.arange(1, m + 1)
    adjusted_sorted = np.minimum(np.minimum.accumulate(scaled[::-1])[::-1], 1.0)
    adjusted = np.empty(m)
    adjusted[order] = adjusted_sorted
    return adjusted <= alpha, adjusted


def drift_table(
    reference: pd.DataFrame,
    current: pd.DataFrame,
    *,
    tests: Mapping[str, str] | None = None,
    alpha: float = 0.05,
    flavor: Flavor = "default",
) -> pd.DataFrame:
    """Drift of every column the two frames share, with FDR control across columns.

    Parameters
    ----------
    reference, current : pandas.DataFrame
    tests : mapping of column name to test name, optional
        Per-column overrides; other columns get :func:`choose_test`.
    alpha : float
        Benjamini-Hochberg FDR level over the p-value tests.
    flavor : {"default", "evidently"}
        Passed to :func:`run_test`.

    Returns
    -------
    pandas.DataFrame
        One row per common column (in ``reference`` order) with ``column, test, kind,
        statistic, p_value, p_adjusted, threshold, drifted, n_reference, n_current,
        n_missing_reference, n_missing_current``. For p-value tests ``p_adjusted`` is the
        BH-adjusted p-value over all p-value tests with a finite p-value, ``threshold``
        is ``alpha`` and ``drifted`` is ``p_adjusted <= alpha``; for distances
        ``p_value`` and ``p_adjusted`` are NaN and ``drifted`` is
        ``statistic >= threshold`` (the test's default threshold).

    Raises
    ------
    ValueError
        An override for a column that is not in both frames, an unknown test name or
        flavour.
    """
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), got {alpha!r}")
    _check_flavor(flavor)
    overrides = dict(tests or {})
    common = [c for c in reference.columns if c in current.columns]
    unknown = sorted(set(overrides) - set(common), key=str)
    if unknown:
        raise ValueError(f"test overrides name columns not in both frames: {unknown}")
    for name in overrides.values():
        get_test(name)

    rows = []
    for column in common:
        result = run_test(
            reference[column], current[column], test=overrides.get(column), flavor=flavor
        )
        rows.append(
            {
                "column": column,
                "test": result.name,
                "kind": result.kind,
                "statistic": result.statistic,
                "p_value": result.p_value,
                "p_adjusted": math.nan,
                "threshold": result.threshold,
                "drifted": result.drifted,
                "n_reference": result.n_reference,
                "n_current": result.n_current,
                "n_missing_reference": result.n_missing_reference,
                "n_missing_current": result.n_missing_current,
            }
        )
    table = pd.DataFrame(rows, columns=_TABLE_COLUMNS)
    is_p = (table["kind"] == "p_value").to_numpy()
    has_p = is_p & np.isfinite(table["p_value"].to_numpy(dtype=np.float64))
    if has_p.any():
        rejected, adjusted = benjamini_hochberg(table.loc[has_p, "p_value"], alpha=alpha)
        table.loc[has_p, "p_adjusted"] = adjusted
        table.loc[has_p, "drifted"] = rejected
    table.loc[is_p, "threshold"] = alpha
    table.loc[is_p & ~has_p, "drifted"] = False
    return table.astype({"drifted": bool})


_TABLE_COLUMNS = [
    "column",
    "test",
    "kind",
    "statistic",
    "p_value",
    "p_adjusted",
    "threshold",
    "drifted",
    "n_reference",
    "n_current",
    "n_missing_reference",
    "n_missing_current",
]
