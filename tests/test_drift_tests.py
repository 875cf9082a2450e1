"""Tests for quality/drift_tests.py: agreement with scipy, hand-checked values, error rates."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from scipy import stats
from scipy.spatial import distance

from quality.drift_tests import (
    DRIFT_TESTS,
    DriftTestResult,
    benjamini_hochberg,
    choose_test,
    drift_table,
    get_test,
    run_test,
)

finite = st.floats(-1e6, 1e6, allow_nan=False, allow_infinity=False)
samples = arrays(np.float64, st.integers(1, 60), elements=finite)


# ------------------------------------------------------------------------- registry


def test_registry_names_kinds_and_thresholds() -> None:
    assert set(DRIFT_TESTS) == {"ks", "chisquare", "psi", "wasserstein", "jensenshannon", "z"}
    expected = {
        "ks": ("p_value", 0.05),
        "chisquare": ("p_value", 0.05),
        "z": ("p_value", 0.05),
        "psi": ("distance", 0.1),
        "wasserstein": ("distance", 0.1),
        "jensenshannon": ("distance", 0.1),
    }
    for name, (kind, threshold) in expected.items():
        spec = get_test(name)
        assert spec.name == name
        assert (spec.kind, spec.default_threshold) == (kind, threshold)
        assert spec.description and spec.reference


@pytest.mark.parametrize("bad", ["kolmogorov", "", "KS"])
def test_unknown_test_name_lists_valid_names(bad: str) -> None:
    with pytest.raises(ValueError, match="unknown drift test") as info:
        get_test(bad)
    for name in DRIFT_TESTS:
        assert name in str(info.value)
    with pytest.raises(ValueError, match="valid names"):
        run_test([1.0, 2.0], [1.0, 2.0], test=bad)


def test_numeric_only_test_rejects_categorical_column() -> None:
    with pytest.raises(ValueError, match="accepts num"):
        run_test(pd.Series(["a", "b"]), pd.Series(["a", "a"]), test="ks")


@pytest.mark.parametrize(("test", "threshold"), [("ks", 1.5), ("ks", 0.0), ("psi", -0.1)])
def test_bad_threshold(test: str, threshold: float) -> None:
    with pytest.raises(ValueError, match="threshold"):
        run_test([1.0, 2.0, 3.0], [1.0, 2.0, 3.0], test=test, threshold=threshold)


# ----------------------------------------------------------- agreement with scipy


@pytest.mark.filterwarnings("ignore:ks_2samp. Exact calculation unsuccessful")
@settings(max_examples=60, deadline=None)
@given(samples, samples)
def test_ks_equals_scipy(ref: np.ndarray, cur: np.ndarray) -> None:
    result = run_test(ref, cur, test="ks")
    expected = stats.ks_2samp(ref, cur)
    assert result.statistic == float(expected.statistic)
    assert result.p_value == float(expected.pvalue)
    assert result.drifted == (expected.pvalue < 0.05)


def test_chisquare_equals_scipy_contingency() -> None:
    ref = pd.Series(["a"] * 30 + ["b"] * 50 + ["c"] * 20)
    cur = pd.Series(["a"] * 10 + ["b"] * 40 + ["c"] * 45 + ["d"] * 5)
    table = np.array([[30, 50, 20, 0], [10, 40, 45, 5]])
    expected = stats.chi2_contingency(table, correction=False)
    result = run_test(ref, cur, test="chisquare")
    assert result.statistic == float(expected.statistic)
    assert result.p_value == float(expected.pvalue)
    assert result.drifted


@settings(max_examples=40, deadline=None)
@given(
    st.lists(st.sampled_from("abc"), min_size=1, max_size=40),
    st.lists(st.sampled_from("abc"), min_size=1, max_size=40),
)
def test_chisquare_property_matches_scipy(ref: list[str], cur: list[str]) -> None:
    cats = sorted(set(ref) | set(cur))
    result = run_test(pd.Series(ref), pd.Series(cur), test="chisquare")
    if len(cats) < 2:
        assert (result.statistic, result.p_value) == (0.0, 1.0)
        return
    table = np.array([[ref.count(c) for c in cats], [cur.count(c) for c in cats]])
    expected = stats.chi2_contingency(table, correction=False)
    assert result.statistic == pytest.approx(float(expected.statistic), rel=1e-12, abs=1e-12)
    assert result.p_value == pytest.approx(float(expected.pvalue), rel=1e-12, abs=1e-12)


@settings(max_examples=60, deadline=None)
@given(samples, samples)
def test_wasserstein_is_scipy_over_reference_std(ref: np.ndarray, cur: np.ndarray) -> None:
    result = run_test(ref, cur, test="wasserstein")
    norm = max(float(np.std(ref)), 1e-3)
    assert result.statistic == float(stats.wasserstein_distance(ref, cur)) / norm
    assert math.isnan(result.p_value)
    assert result.kind == "distance"


def test_jensenshannon_equals_scipy_on_categories() -> None:
    ref = pd.Series(["x"] * 6 + ["y"] * 3 + ["z"] * 1)
    cur = pd.Series(["x"] * 2 + ["y"] * 2 + ["w"] * 4)
    # Sorted categories w, x, y, z.
    p = np.array([0, 6, 3, 1]) / 10
    q = np.array([4, 2, 2, 0]) / 8
    result = run_test(ref, cur, test="jensenshannon")
    assert result.statistic == float(distance.jensenshannon(p, q))
    assert result.drifted


def test_jensenshannon_numeric_uses_reference_decile_bins() -> None:
    rng = np.random.default_rng(0)
    ref = rng.normal(size=500)
    cur = rng.normal(0.5, 1.0, size=400)
    edges = np.unique(np.quantile(ref, np.linspace(0, 1, 11)[1:-1]))
    p = np.bincount(np.searchsorted(edges, ref, side="right"), minlength=10) / ref.size
    q = np.bincount(np.searchsorted(edges, cur, side="right"), minlength=10) / cur.size
    assert p == pytest.approx(np.full(10, 0.1))
    result = run_test(ref, cur, test="jensenshannon")
    assert result.statistic == pytest.approx(float(distance.jensenshannon(p, q)), rel=1e-12)


# -------------------------------------------------------------------- hand-computed


def test_psi_hand_computed_categories() -> None:
    ref = pd.Series(["a"] * 50 + ["b"] * 30 + ["c"] * 20)
    cur = pd.Series(["a"] * 30 + ["b"] * 30 + ["c"] * 40)
    expected = (0.3 - 0.5) * math.log(0.3 / 0.5) + 0.0 + (0.4 - 0.2) * math.log(0.4 / 0.2)
    result = run_test(ref, cur, test="psi")
    assert result.statistic == pytest.approx(expected, rel=1e-12)  # 0.2408
    assert result.drifted and math.isnan(result.p_value)


def test_psi_empty_bin_uses_epsilon() -> None:
    ref = pd.Series(["a"] * 5 + ["b"] * 5)
    cur = pd.Series(["a"] * 10)
    expected = (1.0 - 0.5) * math.log(1.0 / 0.5) + (1e-4 - 0.5) * math.log(1e-4 / 0.5)
    assert run_test(ref, cur, test="psi").statistic == pytest.approx(expected, rel=1e-12)


def test_psi_numeric_identical_is_zero() -> None:
    x = np.arange(100.0)
    result = run_test(x, x, test="psi")
    assert result.statistic == 0.0 and not result.drifted


@settings(max_examples=40, deadline=None)
@given(samples, samples)
def test_psi_and_js_nonnegative(ref: np.ndarray, cur: np.ndarray) -> None:
    assert run_test(ref, cur, test="psi").statistic >= 0.0
    js = run_test(ref, cur, test="jensenshannon").statistic
    assert 0.0 <= js <= math.sqrt(math.log(2)) + 1e-12


def test_z_test_hand_computed() -> None:
    ref = pd.Series([True] * 30 + [False] * 70)
    cur = pd.Series([True] * 45 + [False] * 55)
    pooled = 75 / 200
    z = (0.45 - 0.30) / math.sqrt(pooled * (1 - pooled) * (1 / 100 + 1 / 100))
    p = 2 * (1 - stats.norm.cdf(abs(z)))
    result = run_test(ref, cur, test="z")
    assert result.statistic == pytest.approx(z, rel=1e-12)  # 2.191
    assert result.p_value == pytest.approx(p, rel=1e-9)  # 0.0284
    assert result.drifted


def test_z_test_matches_statsmodels() -> None:
    proportion = pytest.importorskip("statsmodels.stats.proportion")
    ref = pd.Series(["pos"] * 12 + ["neg"] * 88)
    cur = pd.Series(["pos"] * 25 + ["neg"] * 95)
    # The z-test compares the share of the first sorted category, "neg".
    z, p = proportion.proportions_ztest(count=[95, 88], nobs=[120, 100])
    result = run_test(ref, cur, test="z")
    assert result.statistic == pytest.approx(z, rel=1e-12)
    assert result.p_value == pytest.approx(p, rel=1e-12)


def test_z_test_constant_columns() -> None:
    result = run_test(pd.Series([True] * 5), pd.Series([True] * 7), test="z")
    assert (result.statistic, result.p_value, result.drifted) == (0.0, 1.0, False)


# -------------------------------------------------------------------- Benjamini-Hochberg


@settings(max_examples=80, deadline=None)
@given(arrays(np.float64, st.integers(1, 50), elements=st.floats(0.0, 1.0)))
def test_bh_equals_scipy(p: np.ndarray) -> None:
    rejected, adjusted = benjamini_hochberg(p, alpha=0.1)
    np.testing.assert_allclose(
        adjusted, stats.false_discovery_control(p, method="bh"), rtol=1e-12, atol=0
    )
    np.testing.assert_array_equal(rejected, adjusted <= 0.1)


def test_bh_hand_example_and_validation() -> None:
    rejected, adjusted = benjamini_hochberg([0.01, 0.04, 0.03, 0.20])
    # Sorted 0.01, 0.03, 0.04, 0.20 -> m p / i = 0.04, 0.06, 0.0533, 0.20 -> running min from the top.
    np.testing.assert_allclose(adjusted, [0.04, 0.16 / 3, 0.16 / 3, 0.20])
    np.testing.assert_array_equal(rejected, [True, False, False, False])
    for bad in ([0.1, math.nan], [1.5], [[0.1]]):
        with pytest.raises(ValueError):
            benjamini_hochberg(bad)
    with pytest.raises(ValueError, match="alpha"):
        benjamini_hochberg([0.1], alpha=1.0)
    assert benjamini_hochberg([])[1].size == 0


# ----------------------------------------------------------------- error rates


def test_ks_false_alarm_rate_same_distribution() -> None:
    rng = np.random.default_rng(20240601)
    alarms = [
        run_test(rng.normal(size=200), rng.normal(size=200), test="ks").drifted for _ in range(200)
    ]
    assert np.mean(alarms) <= 0.08


@pytest.mark.parametrize("test", ["wasserstein", "psi", "jensenshannon"])
def test_distances_rarely_alarm_on_same_distribution(test: str) -> None:
    rng = np.random.default_rng(7)
    alarms = [
        run_test(rng.normal(size=2000), rng.normal(size=2000), test=test).drifted
        for _ in range(200)
    ]
    assert np.mean(alarms) <= 0.05


@pytest.mark.parametrize("test", ["ks", "wasserstein", "psi", "jensenshannon"])
def test_shifted_distribution_drifts(test: str) -> None:
    rng = np.random.default_rng(3)
    result = run_test(rng.normal(size=800), rng.normal(1.0, 1.0, size=800), test=test)
    assert result.drifted


def test_shifted_categories_drift() -> None:
    rng = np.random.default_rng(5)
    ref = pd.Series(rng.choice(["a", "b", "c"], size=500, p=[0.6, 0.3, 0.1]))
    cur = pd.Series(rng.choice(["a", "b", "c"], size=500, p=[0.3, 0.3, 0.4]))
    assert run_test(ref, cur).name == "chisquare"
    assert run_test(ref, cur).drifted


# ----------------------------------------------------------------- automatic choice


@pytest.mark.parametrize(
    ("reference", "n_current", "expected"),
    [
        (pd.Series(np.arange(1000.0)), None, "ks"),
        (pd.Series(np.arange(1001.0)), None, "wasserstein"),
        (pd.Series(np.arange(5000.0)), 200, "ks"),
        (pd.Series([1, 2, 3, 4] * 10), None, "chisquare"),
        (pd.Series([0, 1] * 10), None, "z"),
        (pd.Series([0, 1, 2] * 1000), None, "jensenshannon"),
        (pd.Series([True, False] * 10), None, "z"),
        (pd.Series(["a", "b", "c"] * 10), None, "chisquare"),
        (pd.Series(["a", "b"] * 10), None, "z"),
        (pd.Series(["a", "b"] * 1000), None, "jensenshannon"),
        (pd.Series(list("abcdefgh") * 200), None, "jensenshannon"),
        (pd.Series(pd.Categorical(["x", "y", "z"] * 5)), None, "chisquare"),
    ],
)
def test_choose_test_table(reference: pd.Series, n_current: int | None, expected: str) -> None:
    assert choose_test(reference, n_current=n_current) == expected


def test_choose_test_ignores_missing() -> None:
    ref = pd.Series([1.0, 2.0, 3.0, 4.0, 5.0, 6.0] * 150 + [np.nan] * 500)
    assert choose_test(ref) == "ks"  # 900 non-missing values


def test_choose_test_rejects_negative_n_current() -> None:
    with pytest.raises(ValueError, match="n_current"):
        choose_test(pd.Series([1.0]), n_current=-1)


# ----------------------------------------------------------------- missing values


def test_nan_dropped_and_counted() -> None:
    ref = pd.Series([1.0, 2.0, np.nan, 4.0, 5.0, 6.0, 7.0])
    cur = pd.Series([np.nan, np.nan, 2.0, 3.0, 9.0])
    result = run_test(ref, cur, test="ks")
    expected = stats.ks_2samp([1.0, 2.0, 4.0, 5.0, 6.0, 7.0], [2.0, 3.0, 9.0])
    assert result.statistic == float(expected.statistic)
    assert (result.n_reference, result.n_current) == (6, 3)
    assert (result.n_missing_reference, result.n_missing_current) == (1, 2)


def test_nullable_and_object_columns() -> None:
    ref = pd.Series([1, 2, None, 3, 4, 5, 6, 7], dtype="Int64")
    cur = pd.Series([1, 2, 3, pd.NA, 4, 5, 6, 7], dtype="Int64")
    result = run_test(ref, cur)
    assert result.name == "ks" and result.n_missing_current == 1
    flags = run_test(pd.Series([True, None, False, True]), pd.Series([False, False, None]))
    assert flags.name == "z" and flags.n_missing_reference == 1


def test_all_missing_gives_nan_not_error() -> None:
    result = run_test(pd.Series([np.nan, np.nan]), pd.Series([1.0, 2.0]), test="ks")
    assert isinstance(result, DriftTestResult)
    assert math.isnan(result.statistic) and math.isnan(result.p_value)
    assert not result.drifted and result.n_missing_reference == 2


# ----------------------------------------------------------------- drift table


def _frames() -> tuple[pd.DataFrame, pd.DataFrame]:
    rng = np.random.default_rng(11)
    n = 400
    reference = pd.DataFrame(
        {
            "age": rng.normal(50, 10, n),
            "score": rng.uniform(size=n),
            "site": rng.choice(["A", "B", "C"], size=n),
            "flag": rng.random(n) < 0.3,
            "only_ref": np.ones(n),
        }
    )
    current = pd.DataFrame(
        {
            "age": rng.normal(60, 10, n),
            "score": rng.uniform(size=n),
            "site": rng.choice(["A", "B", "C"], size=n),
            "flag": rng.random(n) < 0.3,
            "only_cur": np.ones(n),
        }
    )
    return reference, current


def test_drift_table_rows_and_bh() -> None:
    reference, current = _frames()
    table = drift_table(reference, current, tests={"score": "psi"})
    assert list(table["column"]) == ["age", "score", "site", "flag"]
    assert list(table["test"]) == ["ks", "psi", "chisquare", "z"]
    p_rows = table["kind"] == "p_value"
    rejected, adjusted = benjamini_hochberg(table.loc[p_rows, "p_value"], alpha=0.05)
    np.testing.assert_allclose(table.loc[p_rows, "p_adjusted"], adjusted)
    assert list(table.loc[p_rows, "drifted"]) == list(rejected)
    assert table.loc[~p_rows, "p_adjusted"].isna().all()
    assert table.set_index("column").loc["age", "drifted"]
    assert not table.set_index("column").loc["score", "drifted"]
    assert table["drifted"].dtype == bool


def test_drift_table_overrides_validated() -> None:
    reference, current = _frames()
    with pytest.raises(ValueError, match="only_ref"):
        drift_table(reference, current, tests={"only_ref": "ks"})
    with pytest.raises(ValueError, match="valid names"):
        drift_table(reference, current, tests={"age": "t-test"})


def test_drift_table_all_missing_column() -> None:
    reference = pd.DataFrame({"x": [np.nan] * 5, "y": [1.0, 2.0, 3.0, 4.0, 5.0]})
    current = pd.DataFrame({"x": [1.0] * 5, "y": [1.0, 2.0, 3.0, 4.0, 6.0]})
    table = drift_table(reference, current).set_index("column")
    assert math.isnan(table.loc["x", "p_value"]) and not table.loc["x", "drifted"]
    assert table.loc["y", "p_adjusted"] == pytest.approx(table.loc["y", "p_value"])


# ----------------------------------------------------------------- Evidently flavour


def test_unknown_flavor_lists_valid_ones() -> None:
    with pytest.raises(ValueError, match="default, evidently"):
        run_test([1.0, 2.0], [1.0, 2.0], test="ks", flavor="scipy")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="flavor"):
        drift_table(pd.DataFrame({"x": [1.0]}), pd.DataFrame({"x": [1.0]}), flavor="x")  # type: ignore[arg-type]


def test_evidently_chisquare_is_goodness_of_fit() -> None:
    ref = pd.Series(["a"] * 30 + ["b"] * 50 + ["c"] * 20)
    cur = pd.Series(["a"] * 10 + ["b"] * 40 + ["c"] * 50)
    expected = stats.chisquare([10, 40, 50], [30, 50, 20])  # n_cur / n_ref = 1
    result = run_test(ref, cur, test="chisquare", flavor="evidently")
    assert result.statistic == pytest.approx(float(expected.statistic), rel=1e-12)
    assert result.p_value == pytest.approx(float(expected.pvalue), rel=1e-12)


def test_goodness_of_fit_is_anticonservative_for_equal_sizes() -> None:
    """The documented reason for the default: same distribution, equal sizes."""
    rng = np.random.default_rng(12)
    labels = np.array(list("abcde"))
    alarms = {"default": 0, "evidently": 0}
    for _ in range(300):
        ref = pd.Series(labels[rng.integers(0, 5, 400)])
        cur = pd.Series(labels[rng.integers(0, 5, 400)])
        for flavor in alarms:
            alarms[flavor] += run_test(ref, cur, test="chisquare", flavor=flavor).drifted  # type: ignore[arg-type]
    assert alarms["default"] / 300 <= 0.08
    assert alarms["evidently"] / 300 >= 0.15  # about 2 x chi2(4) under no drift


def test_evidently_binning_sturges_and_per_value() -> None:
    rng = np.random.default_rng(1)
    ref, cur = rng.normal(size=300), rng.normal(0.3, 1.0, size=200)
    edges = np.histogram_bin_edges(np.r_[ref, cur], bins="sturges")
    p = np.histogram(ref, edges)[0] / ref.size
    q = np.histogram(cur, edges)[0] / cur.size
    js = run_test(ref, cur, test="jensenshannon", flavor="evidently")
    assert js.statistic == pytest.approx(float(distance.jensenshannon(p, q)), rel=1e-12)
    # 20 distinct values or fewer: counted per value (the default bins above 10).
    few_ref = np.arange(300.0) % 15
    few_cur = np.arange(200.0) % 12
    shares_ref = np.bincount(few_ref.astype(int), minlength=15) / 300
    shares_cur = np.bincount(few_cur.astype(int), minlength=15) / 200
    js_few = run_test(few_ref, few_cur, test="jensenshannon", flavor="evidently")
    assert js_few.statistic == pytest.approx(
        float(distance.jensenshannon(shares_ref, shares_cur)), rel=1e-12
    )
    assert run_test(few_ref, few_cur, test="jensenshannon").statistic != pytest.approx(
        js_few.statistic
    )


def test_evidently_psi_zero_fill() -> None:
    # Reference: one "r" in 20 000 (share 5e-5 <= 1e-4): its empty bin "s" gets 5e-11.
    ref = pd.Series(["r"] + ["a"] * 9999 + ["b"] * 10000)
    cur = pd.Series(["a"] * 50 + ["b"] * 40 + ["s"] * 10)
    r = np.array([9999, 10000, 1, 0]) / 20000  # categories a, b, r, s
    c = np.array([50, 40, 0, 10]) / 100
    r_ev, c_ev = r.copy(), c.copy()
    r_ev[3] = (1 / 20000) / 1e6
    c_ev[2] = 1e-4
    expected = float(np.sum((c_ev - r_ev) * np.log(c_ev / r_ev)))
    assert run_test(ref, cur, test="psi", flavor="evidently").statistic == pytest.approx(
        expected, rel=1e-12
    )
    r[3], c[2] = 1e-4, 1e-4
    default = float(np.sum((c - r) * np.log(c / r)))
    assert run_test(ref, cur, test="psi").statistic == pytest.approx(default, rel=1e-12)


def test_wasserstein_with_ties_equals_scipy() -> None:
    rng = np.random.default_rng(2)
    ref = rng.integers(0, 7, 5000).astype(float)
    cur = rng.integers(1, 9, 3000).astype(float)
    result = run_test(ref, cur, test="wasserstein")
    assert result.statistic == float(stats.wasserstein_distance(ref, cur)) / float(np.std(ref))


def test_categorical_counts_in_native_dtypes() -> None:
    """Arrow strings, categoricals (unused categories dropped) and objects agree."""
    values_ref = ["x"] * 30 + ["y"] * 20 + ["z"] * 10
    values_cur = ["x"] * 10 + ["y"] * 30 + ["z"] * 20
    expected = run_test(
        pd.Series(values_ref, dtype=object), pd.Series(values_cur, dtype=object), test="chisquare"
    )
    cat = pd.CategoricalDtype(["w", "x", "y", "z"])
    for dtype in ("str", cat):
        result = run_test(
            pd.Series(values_ref, dtype=dtype), pd.Series(values_cur, dtype=dtype), test="chisquare"
        )
        assert (result.statistic, result.p_value) == (expected.statistic, expected.p_value)
