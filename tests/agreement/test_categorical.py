"""Categorical agreement statistics against sklearn, statsmodels and `krippendorff`, on random
data with missing values (hypothesis), plus invariants and the item bootstrap."""

from __future__ import annotations

import math

import krippendorff
import numpy as np
import pandas as pd
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from sklearn.metrics import cohen_kappa_score
from statsmodels.stats.inter_rater import aggregate_raters
from statsmodels.stats.inter_rater import fleiss_kappa as sm_fleiss_kappa

from quality.agreement.categorical import (
    CI,
    bootstrap_ci,
    cohen_kappa,
    fleiss_kappa,
    gwet_ac1,
    krippendorff_alpha,
    krippendorff_alpha_nominal_ci,
    percent_agreement,
    scott_pi,
)
from quality.errors import LabelDataError

FAST = settings(max_examples=60, deadline=None)
# sklearn warns about single-label inputs; we compare its NaN with ours.
pytestmark = pytest.mark.filterwarnings(
    "ignore:A single label:UserWarning", "ignore::sklearn.exceptions.UndefinedMetricWarning"
)
LEVELS = ("nominal", "ordinal", "interval", "ratio")


def same(a: float, b: float, tol: float = 1e-9) -> bool:
    """Equal within ``tol``, or both NaN (undefined on both sides)."""
    if math.isnan(a) or math.isnan(b):
        return math.isnan(a) and math.isnan(b)
    return abs(a - b) <= tol


# ---------------------------------------------------------------- strategies


@st.composite
def two_raters(draw: st.DrawFn) -> tuple[np.ndarray, np.ndarray]:
    """Two raters' labels over 1-5 with some NaN; at least one item rated by both."""
    n = draw(st.integers(2, 40))
    q = draw(st.integers(2, 5))
    a = draw(hnp.arrays(np.float64, n, elements=st.integers(0, q - 1).map(float)))
    b = draw(hnp.arrays(np.float64, n, elements=st.integers(0, q - 1).map(float)))
    miss_a = draw(hnp.arrays(np.bool_, n, elements=st.booleans()))
    miss_b = draw(hnp.arrays(np.bool_, n, elements=st.booleans()))
    a[miss_a & (np.arange(n) > 0)] = np.nan  # item 0 is always rated by both
    b[miss_b & (np.arange(n) > 0)] = np.nan
    return a, b


@st.composite
def reliability(draw: st.DrawFn, *, floats: bool = False) -> np.ndarray:
    """``raters × units`` with NaN: every unit and rater rated once, some unit twice."""
    raters = draw(st.integers(2, 5))
    units = draw(st.integers(1, 30))
    if floats:
        elements = st.floats(0.5, 100.0, allow_nan=False).map(lambda v: round(v, 2))
    else:
        elements = st.integers(1, draw(st.integers(2, 6))).map(float)
    x = draw(hnp.arrays(np.float64, (raters, units), elements=elements))
    missing = draw(hnp.arrays(np.bool_, (raters, units), elements=st.booleans()))
    missing[draw(st.integers(0, raters - 1)), :] = False  # one full rater: no empty unit
    missing[:2, 0] = False  # unit 0 is pairable
    x[missing] = np.nan
    assume(not np.isnan(x).all(axis=1).any())
    assume(np.unique(x[~np.isnan(x)]).size >= 2)  # `krippendorff` refuses a 1-value domain
    return x


@st.composite
def label_matrix(draw: st.DrawFn, *, ratings_per_item: int | None = None) -> np.ndarray:
    """``items × raters`` integer labels with NaN; each item rated at least once."""
    items = draw(st.integers(1, 30))
    raters = draw(st.integers(2, 6))
    q = draw(st.integers(2, 5))
    x = draw(hnp.arrays(np.float64, (items, raters), elements=st.integers(0, q - 1).map(float)))
    if ratings_per_item is None:
        keep = draw(hnp.arrays(np.bool_, (items, raters), elements=st.booleans()))
        keep[:, 0] = True
        keep[0, :2] = True
        keep[-1, :] = True  # every rater has a rating
    else:
        r = min(ratings_per_item, raters)
        order = np.argsort(draw(hnp.arrays(np.float64, (items, raters), elements=st.floats(0, 1))))
        keep = np.zeros((items, raters), dtype=bool)
        np.put_along_axis(keep, order[:, :r], True, axis=1)
        assume(keep.any(axis=0).all())
    x[~keep] = np.nan
    return x


# ---------------------------------------------------------------- two raters


@FAST
@given(two_raters(), st.sampled_from([None, "linear", "quadratic"]))
def test_cohen_kappa_equals_sklearn(
    pair: tuple[np.ndarray, np.ndarray], weights: str | None
) -> None:
    a, b = pair
    both = ~(np.isnan(a) | np.isnan(b))
    expected = cohen_kappa_score(a[both], b[both], weights=weights)
    assert same(cohen_kappa(a, b, weights=weights), expected)


@FAST
@given(two_raters(), st.sampled_from([None, "linear", "quadratic"]))
def test_cohen_kappa_with_labels_equals_sklearn(
    pair: tuple[np.ndarray, np.ndarray], weights: str | None
) -> None:
    a, b = pair
    both = ~(np.isnan(a) | np.isnan(b))
    labels = [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]  # includes unused categories: they move the weights
    expected = cohen_kappa_score(a[both], b[both], weights=weights, labels=labels)
    assert same(cohen_kappa(a, b, weights=weights, labels=labels), expected)


@FAST
@given(two_raters(), st.sampled_from([None, "linear", "quadratic"]))
def test_cohen_kappa_is_symmetric(pair: tuple[np.ndarray, np.ndarray], weights: str | None) -> None:
    a, b = pair
    assert same(cohen_kappa(a, b, weights=weights), cohen_kappa(b, a, weights=weights), 1e-12)


@FAST
@given(two_raters())
def test_kappa_of_identical_raters_is_one(pair: tuple[np.ndarray, np.ndarray]) -> None:
    a, _ = pair
    n_categories = np.unique(a[~np.isnan(a)]).size
    for weights in (None, "linear", "quadratic"):
        k = cohen_kappa(a, a, weights=weights)
        assert math.isnan(k) if n_categories == 1 else k == pytest.approx(1.0)
    assert math.isnan(scott_pi(a, a)) if n_categories == 1 else scott_pi(a, a) == pytest.approx(1)


@FAST
@given(two_raters())
def test_scott_pi_is_fleiss_kappa_for_two_raters(pair: tuple[np.ndarray, np.ndarray]) -> None:
    a, b = pair
    both = ~(np.isnan(a) | np.isnan(b))
    wide = np.column_stack([a[both], b[both]])
    assert same(scott_pi(a, b), fleiss_kappa(wide, kind="labels"), 1e-12)


@FAST
@given(two_raters())
def test_gwet_ac1_two_raters_matches_gwet_2008_formula(pair: tuple[np.ndarray, np.ndarray]) -> None:
    a, b = pair
    both = ~(np.isnan(a) | np.isnan(b))
    a, b = a[both], b[both]
    cats = np.unique(np.concatenate([a, b]))
    q = cats.size
    # Gwet (2008), two raters: p_a = sum_k p_kk, pi_k = (p_k+ + p_+k) / 2,
    # p_e = sum_k pi_k (1 - pi_k) / (q - 1).
    p_a = float(np.mean(a == b))
    pi = np.array([(np.mean(a == c) + np.mean(b == c)) / 2 for c in cats])
    if q < 2:
        assert math.isnan(gwet_ac1(np.column_stack([a, b])))
        return
    p_e = float(np.sum(pi * (1 - pi)) / (q - 1))
    expected = (p_a - p_e) / (1 - p_e)
    assert gwet_ac1(np.column_stack([a, b])) == pytest.approx(expected, abs=1e-12)


# ---------------------------------------------------------------- many raters


@FAST
@given(
    st.integers(1, 40),
    st.integers(2, 8),
    st.integers(1, 5),
    st.integers(0, 2**32 - 1),
)
def test_fleiss_kappa_equals_statsmodels_on_count_tables(
    items: int, raters: int, q: int, seed: int
) -> None:
    rng = np.random.default_rng(seed)
    codes = rng.integers(0, q, size=(items, raters))
    table, _ = aggregate_raters(codes, n_cat=q)
    with np.errstate(divide="ignore", invalid="ignore"):
        expected = float(sm_fleiss_kappa(table))
    assert same(fleiss_kappa(table), expected)
    assert same(fleiss_kappa(table, kind="counts"), expected)
    assert same(fleiss_kappa(pd.DataFrame(table), kind="counts"), expected)


@FAST
@given(label_matrix(ratings_per_item=3))
def test_fleiss_kappa_equals_statsmodels_on_label_matrices_with_nan(x: np.ndarray) -> None:
    # Each item has exactly 3 ratings spread over the raters (NaN elsewhere): statsmodels
    # needs the compact items × 3 matrix, which aggregate_raters turns into counts.
    compact = x[~np.isnan(x)].reshape(x.shape[0], -1)
    table, _ = aggregate_raters(compact)
    with np.errstate(divide="ignore", invalid="ignore"):
        expected = float(sm_fleiss_kappa(table))
    assert same(fleiss_kappa(x, kind="labels"), expected)
    if np.isnan(x).any():  # NaN makes kind="auto" read labels; without it, see test_auto_kind_rule
        assert same(fleiss_kappa(x), expected)


def _gwet_reference(x: np.ndarray) -> tuple[float, float, float]:
    """Loop-per-item reference of Gwet (2014) p_a, generalised Fleiss kappa and AC1."""
    cats = np.unique(x[~np.isnan(x)])
    q = cats.size
    shares, pis = [], np.zeros(q)
    for row in x:
        vals = row[~np.isnan(row)]
        r = vals.size
        counts = np.array([np.sum(vals == c) for c in cats], dtype=float)
        pis += counts / r / x.shape[0]
        if r >= 2:
            shares.append(float(np.sum(counts * (counts - 1)) / (r * (r - 1))))
    p_a = float(np.mean(shares))
    pe_fleiss = float(np.sum(pis**2))
    pe_ac1 = float(np.sum(pis * (1 - pis)) / (q - 1)) if q > 1 else float("nan")
    # one category only: chance agreement is 1 (up to rounding) and kappa is 0/0
    kappa = (p_a - pe_fleiss) / (1 - pe_fleiss) if q > 1 else float("nan")
    ac1 = (p_a - pe_ac1) / (1 - pe_ac1) if q > 1 else float("nan")
    return p_a, kappa, ac1


@FAST
@given(label_matrix())
def test_multi_rater_statistics_match_loop_reference_with_missing(x: np.ndarray) -> None:
    p_a, kappa, ac1 = _gwet_reference(x)
    assert same(percent_agreement(x), p_a, 1e-12)
    assert same(fleiss_kappa(x, kind="labels"), kappa, 1e-12)
    assert same(gwet_ac1(x), ac1, 1e-12)
    assert 0.0 <= percent_agreement(x) <= 1.0


@FAST
@given(label_matrix())
def test_long_and_wide_inputs_agree(x: np.ndarray) -> None:
    rows, cols = np.nonzero(~np.isnan(x))
    long = pd.DataFrame(
        {"item_id": rows, "annotator_id": [f"dr{c}" for c in cols], "label": x[rows, cols]}
    )
    assume(long["annotator_id"].nunique() >= 2)
    assert same(percent_agreement(long), percent_agreement(x), 1e-12)
    assert same(fleiss_kappa(long), fleiss_kappa(x, kind="labels"), 1e-12)
    assert same(gwet_ac1(long), gwet_ac1(x), 1e-12)
    assume(np.unique(x[~np.isnan(x)]).size >= 2)
    for level in LEVELS:
        assert same(krippendorff_alpha(long, level=level), krippendorff_alpha(x.T, level=level))


# ---------------------------------------------------------------- Krippendorff


@FAST
@given(reliability())
def test_krippendorff_alpha_equals_package_on_integer_scores(x: np.ndarray) -> None:
    for level in LEVELS:
        with np.errstate(divide="ignore", invalid="ignore"):
            expected = float(krippendorff.alpha(x, level_of_measurement=level))
        assert same(krippendorff_alpha(x, level=level), expected), level


@FAST
@given(reliability(floats=True))
def test_krippendorff_alpha_equals_package_on_real_scores(x: np.ndarray) -> None:
    for level in LEVELS:
        with np.errstate(divide="ignore", invalid="ignore"):
            expected = float(krippendorff.alpha(x, level_of_measurement=level))
        assert same(krippendorff_alpha(x, level=level), expected), level


@FAST
@given(reliability())
def test_krippendorff_alpha_with_value_domain_equals_package(x: np.ndarray) -> None:
    domain = list(range(0, 9))
    for level in LEVELS:
        with np.errstate(divide="ignore", invalid="ignore"):
            expected = float(krippendorff.alpha(x, value_domain=domain, level_of_measurement=level))
        assert same(krippendorff_alpha(x, level=level, value_domain=domain), expected), level


@FAST
@given(reliability())
def test_alpha_of_identical_raters_is_one(x: np.ndarray) -> None:
    row = x[np.argmax((~np.isnan(x)).sum(axis=1))]
    keep = ~np.isnan(row)
    assume(np.unique(row[keep]).size >= 2)
    twins = np.vstack([row[keep], row[keep], row[keep]])
    for level in LEVELS:
        assert krippendorff_alpha(twins, level=level) == pytest.approx(1.0)


def test_krippendorff_alpha_on_fractional_values_uses_the_sort_path() -> None:
    rng = np.random.default_rng(3)
    x = rng.normal(1000.0, 5.0, size=(4, 60)).round(1)  # ~150 distinct values: keeps the peer fast
    x[rng.random(x.shape) < 0.3] = np.nan
    x[0, np.isnan(x).all(axis=0)] = 1000.0
    for level in LEVELS:
        assert same(
            krippendorff_alpha(x, level=level),
            float(krippendorff.alpha(x, level_of_measurement=level)),
        ), level


def test_krippendorff_alpha_accepts_string_labels() -> None:
    data = np.array([["a", "b", "a", None], ["a", "b", "b", "c"], [None, "b", "a", "c"]], object)
    as_codes = np.array([[0, 1, 0, np.nan], [0, 1, 1, 2], [np.nan, 1, 0, 2]])
    assert krippendorff_alpha(data) == pytest.approx(krippendorff_alpha(as_codes), abs=1e-12)
    ordinal = krippendorff_alpha(data, level="ordinal", value_domain=["a", "b", "c"])
    assert ordinal == pytest.approx(krippendorff_alpha(as_codes, level="ordinal"), abs=1e-12)


# ---------------------------------------------------------------- bootstrap


def _long_frame_with_uneven_items() -> pd.DataFrame:
    rng = np.random.default_rng(11)
    rows = []
    for item in range(40):
        n_raters = 2 + item % 4  # 2 to 5 annotations per item
        truth = rng.integers(0, 3)
        for r in range(n_raters):
            label = truth if rng.random() < 0.8 else rng.integers(0, 3)
            rows.append((f"img{item:02d}", f"dr{r}", int(label)))
    return pd.DataFrame(rows, columns=["item_id", "annotator_id", "label"])


def test_bootstrap_resamples_items_not_annotations() -> None:
    long = _long_frame_with_uneven_items()
    n_items = long["item_id"].nunique()
    seen_units: list[int] = []
    seen_rows: list[int] = []

    def probe(frame: pd.DataFrame) -> float:
        seen_units.append(frame["item_id"].nunique())
        seen_rows.append(len(frame))
        # every unit keeps all of one source item's annotations: 2..5 rows, distinct annotators
        sizes = frame.groupby("item_id").size()
        assert sizes.between(2, 5).all()
        assert not frame.duplicated(["item_id", "annotator_id"]).any()
        return 0.0

    bootstrap_ci(probe, long, n_resamples=30, random_state=0)
    assert set(seen_units) == {n_items}  # duplicated items stay distinct units
    assert len(set(seen_rows)) > 1  # items differ in size, so row counts vary per resample


def test_bootstrap_brackets_the_estimate_and_is_reproducible() -> None:
    long = _long_frame_with_uneven_items()
    ci = bootstrap_ci(krippendorff_alpha, long, n_resamples=150, random_state=42)
    assert isinstance(ci, CI)
    assert ci.low <= ci.estimate <= ci.high
    assert ci.estimate == pytest.approx(krippendorff_alpha(long))
    assert bootstrap_ci(krippendorff_alpha, long, n_resamples=150, random_state=42) == ci
    assert bootstrap_ci(krippendorff_alpha, long, n_resamples=150, random_state=7) != ci


def test_bootstrap_wider_confidence_gives_wider_interval() -> None:
    long = _long_frame_with_uneven_items()
    narrow = bootstrap_ci(fleiss_kappa, long, n_resamples=150, confidence=0.5, random_state=1)
    wide = bootstrap_ci(fleiss_kappa, long, n_resamples=150, confidence=0.99, random_state=1)
    assert wide.low <= narrow.low <= narrow.high <= wide.high


def test_bootstrap_on_tuples_arrays_and_units_axis() -> None:
    rng = np.random.default_rng(5)
    truth = rng.integers(0, 3, 200)
    a = np.where(rng.random(200) < 0.8, truth, rng.integers(0, 3, 200))
    b = np.where(rng.random(200) < 0.8, truth, rng.integers(0, 3, 200))
    pair = bootstrap_ci(cohen_kappa, (a, b), n_resamples=200, random_state=0)
    assert pair.low <= pair.estimate <= pair.high
    wide = np.column_stack([a, b]).astype(float)
    rows = bootstrap_ci(
        lambda w: fleiss_kappa(w, kind="labels"), wide, n_resamples=200, random_state=0
    )
    assert rows.low <= rows.estimate <= rows.high
    units = bootstrap_ci(krippendorff_alpha, wide.T, n_resamples=200, random_state=0, axis=1)
    assert units.low <= units.estimate <= units.high
    # resampling the raters axis by mistake would give a degenerate interval; axis=1 does not
    assert units.high - units.low > 0.01
    frame = pd.DataFrame(wide.T)
    framed = bootstrap_ci(krippendorff_alpha, frame, n_resamples=200, random_state=0, axis=1)
    assert framed == units


def test_bootstrap_leaves_out_undefined_resamples() -> None:
    # One pairable item out of six: some resamples have no item rated twice (LabelDataError).
    x = np.array([[0, 0], [1, np.nan], [0, np.nan], [1, np.nan], [0, np.nan], [1, np.nan]])
    ci = bootstrap_ci(percent_agreement, x, n_resamples=50, random_state=0)
    assert ci.estimate == 1.0
    assert ci.low == ci.high == 1.0


@pytest.mark.parametrize(
    ("raters", "units", "values", "missing"),
    [(2, 30, 2, 0.0), (3, 50, 3, 0.3), (6, 400, 4, 0.6), (12, 3000, 5, 0.85)],
)
def test_fast_nominal_alpha_interval_equals_the_plain_bootstrap(
    raters: int, units: int, values: int, missing: float
) -> None:
    rng = np.random.default_rng(raters)
    x = rng.integers(0, values, size=(raters, units)).astype(float)
    x[rng.random(x.shape) < missing] = np.nan
    x = x[:, (~np.isnan(x)).sum(axis=0) > 0]
    plain = bootstrap_ci(
        lambda d: krippendorff_alpha(d, level="nominal"), x, n_resamples=60, random_state=7, axis=1
    )
    fast = krippendorff_alpha_nominal_ci(x, n_resamples=60, random_state=7)
    assert np.allclose(fast, plain, rtol=0.0, atol=1e-12)
    assert fast.estimate == pytest.approx(krippendorff.alpha(x, level_of_measurement="nominal"))


def test_fast_nominal_alpha_interval_leaves_out_resamples_without_a_rater() -> None:
    # The third rater rated one unit of 40: most resamples miss it and are left out, as the
    # plain bootstrap leaves them out (krippendorff_alpha refuses a rater without ratings).
    rng = np.random.default_rng(3)
    x = rng.integers(0, 3, size=(3, 40)).astype(float)
    x[2, 1:] = np.nan
    plain = bootstrap_ci(
        lambda d: krippendorff_alpha(d, level="nominal"), x, n_resamples=80, random_state=1, axis=1
    )
    fast = krippendorff_alpha_nominal_ci(x, n_resamples=80, random_state=1)
    assert np.allclose(fast, plain, rtol=0.0, atol=1e-12)
    with pytest.raises(LabelDataError, match="n_resamples"):
        krippendorff_alpha_nominal_ci(x, n_resamples=0)
