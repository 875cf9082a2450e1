"""Agreement coefficients against values published with their data.

Sources (each test names its own):

* Fleiss, J. L. (1971). Measuring nominal scale agreement among many raters. Psychological
  Bulletin 76(5), 378-382. The 30 patients × 6 psychiatrists data as distributed with R's
  ``irr`` (``diagnoses``) and in statsmodels' ``stats/tests/test_inter_rater.py``;
  kappa = 0.430 (``irr::kappam.fleiss``: 0.4302445).
* Wikipedia, "Fleiss' kappa", worked example: 10 subjects × 5 categories, 14 raters,
  kappa = 0.210 (also asserted in statsmodels' tests).
* Krippendorff, K. (2011). Computing Krippendorff's Alpha-Reliability, p. 8: 4 observers ×
  12 units with missing values; alpha = 0.743 nominal, 0.815 ordinal, 0.849 interval,
  0.797 ratio.
* Gwet, K. L. (2014). Handbook of Inter-Rater Reliability, 4th ed.: the 4 raters × 12 units
  data of p. 120, the 5 observers × 15 units and the Ben/Gerry data, and the
  ``cont3x3abstractors`` / ``cont4x4diagnosis`` contingency tables, with the values printed
  by Gwet's ``irrCAC`` package (reproduced in the tests of its Python port, afergadis/irrCAC).
* A SAS "Simple Kappa Coefficient" printout (statsmodels' tests, ``table10``): kappa 0.4842,
  and R ``irr::kappa2`` on the ``anxiety`` data (statsmodels' tests).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from quality.agreement.categorical import (
    cohen_kappa,
    fleiss_kappa,
    gwet_ac1,
    krippendorff_alpha,
    percent_agreement,
    scott_pi,
)

X = np.nan

# Fleiss (1971), rows patients, columns the 6 raters' diagnoses (1-5).
DIAGNOSES = np.array(
    [
        [4, 4, 4, 4, 4, 4], [2, 2, 2, 5, 5, 5], [2, 3, 3, 3, 3, 5], [5, 5, 5, 5, 5, 5],
        [2, 2, 2, 4, 4, 4], [1, 1, 3, 3, 3, 3], [3, 3, 3, 3, 5, 5], [1, 1, 3, 3, 3, 4],
        [1, 1, 4, 4, 4, 4], [5, 5, 5, 5, 5, 5], [1, 4, 4, 4, 4, 4], [1, 2, 4, 4, 4, 4],
        [2, 2, 2, 3, 3, 3], [1, 4, 4, 4, 4, 4], [2, 2, 4, 4, 4, 5], [3, 3, 3, 3, 3, 5],
        [1, 1, 1, 4, 5, 5], [1, 1, 1, 1, 1, 2], [2, 2, 4, 4, 4, 4], [1, 3, 3, 5, 5, 5],
        [5, 5, 5, 5, 5, 5], [2, 4, 4, 4, 4, 4], [2, 2, 4, 5, 5, 5], [1, 1, 4, 4, 4, 4],
        [1, 4, 4, 4, 4, 5], [2, 2, 2, 2, 2, 4], [1, 1, 1, 1, 5, 5], [2, 2, 4, 4, 4, 4],
        [1, 3, 3, 3, 3, 3], [5, 5, 5, 5, 5, 5],
    ]
)  # fmt: skip

# Wikipedia "Fleiss' kappa": subjects × categories counts, 14 raters per subject.
WIKIPEDIA_TABLE = np.array(
    [
        [0, 0, 0, 0, 14], [0, 2, 6, 4, 2], [0, 0, 3, 5, 6], [0, 3, 9, 2, 0], [2, 2, 8, 1, 1],
        [7, 7, 0, 0, 0], [3, 2, 6, 3, 0], [2, 5, 3, 2, 2], [6, 5, 2, 1, 0], [0, 2, 2, 3, 7],
    ]
)  # fmt: skip

# Krippendorff (2011), observers A-D (rows) × units 1-12; also Gwet (2014, p. 120).
KRIPPENDORFF_2011 = np.array(
    [
        [1, 2, 3, 3, 2, 1, 4, 1, 2, X, X, X],
        [1, 2, 3, 3, 2, 2, 4, 1, 2, 5, X, 3],
        [X, 3, 3, 3, 2, 3, 4, 2, 2, 5, 1, X],
        [1, 2, 3, 3, 2, 4, 4, 1, 2, 5, 1, X],
    ]
)

# Gwet (2014): 5 observers × 15 units on a 0-3 scale, missing ratings (units in rows).
GWET_5_OBSERVERS = np.array(
    [
        [1, 1, 2, X, 0, 0, 1, 1, 2, 2, X, 0, 1, 3, 1],
        [1, 1, 3, 0, 0, 0, 0, X, 2, 1, 1, 0, 2, 3, 1],
        [2, 0, 3, 0, 0, 0, 2, 2, 2, 1, 0, 0, 2, 2, 1],
        [X, 1, 3, X, X, X, X, 0, X, 1, 0, 0, 2, 2, X],
        [2, X, X, 0, 0, 0, 1, X, 2, X, X, X, X, 3, 1],
    ]
).T

# Gwet (2014): two raters, Ben and Gerry, 12 units, one missing rating.
BEN = ["a", "a", "b", "b", "d", "c", "c", "c", "e", "d", "d", "a"]
GERRY = ["b", "a", "b", "b", "b", "c", "c", "c", "e", None, "d", "d"]


def _pairs(table: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Expand a rater-A (rows) × rater-B (columns) contingency table into label pairs."""
    q = table.shape[0]
    rows, cols = np.divmod(np.arange(q * q), q)
    return np.repeat(rows, table.ravel()), np.repeat(cols, table.ravel())


# ---------------------------------------------------------------- Fleiss' kappa


def test_fleiss_1971_psychiatric_diagnoses() -> None:
    # Fleiss (1971): kappa = .430; irr::kappam.fleiss(diagnoses) = 0.4302445.
    assert fleiss_kappa(DIAGNOSES, kind="labels") == pytest.approx(0.4302445, abs=1e-7)
    counts = np.stack([(DIAGNOSES == c).sum(axis=1) for c in range(1, 6)], axis=1)
    assert fleiss_kappa(counts) == pytest.approx(0.4302445, abs=1e-7)
    assert round(fleiss_kappa(pd.DataFrame(DIAGNOSES), kind="labels"), 3) == 0.430


def test_fleiss_wikipedia_worked_example() -> None:
    # Wikipedia, "Fleiss' kappa", worked example: P-bar = 0.378, P-bar_e = 0.213, kappa = 0.210.
    assert round(fleiss_kappa(WIKIPEDIA_TABLE), 3) == 0.210
    assert round(percent_agreement(WIKIPEDIA_TABLE, kind="counts"), 3) == 0.378


# ---------------------------------------------------------------- Krippendorff's alpha


@pytest.mark.parametrize(
    ("level", "published"),
    [("nominal", 0.743), ("ordinal", 0.815), ("interval", 0.849), ("ratio", 0.797)],
)
def test_krippendorff_2011_example_with_missing_values(level: str, published: float) -> None:
    assert round(krippendorff_alpha(KRIPPENDORFF_2011, level=level), 3) == published  # type: ignore[arg-type]


def test_krippendorff_2011_example_as_ordered_words() -> None:
    words = ["very low", "low", "mid", "high", "very high"]
    data = np.array(
        [[words[int(v) - 1] if v == v else None for v in row] for row in KRIPPENDORFF_2011],
        dtype=object,
    )
    assert round(krippendorff_alpha(data), 3) == 0.743
    assert round(krippendorff_alpha(data, level="ordinal", value_domain=words), 3) == 0.815


def test_krippendorff_2011_example_as_long_frame() -> None:
    obs, unit = np.nonzero(~np.isnan(KRIPPENDORFF_2011))
    long = pd.DataFrame(
        {
            "item_id": unit,
            "annotator_id": np.array(list("ABCD"))[obs],
            "label": KRIPPENDORFF_2011[obs, unit],
        }
    )
    assert round(krippendorff_alpha(long), 3) == 0.743
    assert round(krippendorff_alpha(long, level="interval"), 3) == 0.849


# ---------------------------------------------------------------- Gwet (2014)


def test_gwet_2014_four_raters() -> None:
    wide = KRIPPENDORFF_2011.T  # Gwet (2014, p. 120) is the same data, units in rows
    # irrCAC: AC1 0.77544 (pa 0.81818, pe 0.19032); Fleiss 0.76117 (pe 0.23872).
    assert gwet_ac1(wide) == pytest.approx(0.77544, abs=5e-6)
    assert percent_agreement(wide) == pytest.approx(0.81818, abs=5e-6)
    assert fleiss_kappa(wide) == pytest.approx(0.76117, abs=5e-6)


def test_gwet_2014_five_observers() -> None:
    # irrCAC (3 digits): AC1 0.497, Fleiss 0.458, pa 0.616.
    assert round(gwet_ac1(GWET_5_OBSERVERS), 3) == 0.497
    assert round(fleiss_kappa(GWET_5_OBSERVERS), 3) == 0.458
    assert round(percent_agreement(GWET_5_OBSERVERS), 3) == 0.616


def test_gwet_2014_ben_and_gerry() -> None:
    wide = pd.DataFrame({"Ben": BEN, "Gerry": GERRY})
    # irrCAC (3 digits): AC1 0.661, Fleiss 0.649, pa 0.727 (unit 10 has one rating).
    assert round(gwet_ac1(wide), 3) == 0.661
    assert round(fleiss_kappa(wide), 3) == 0.649
    assert round(percent_agreement(wide), 3) == 0.727


# ---------------------------------------------------------------- Cohen's kappa, Scott's pi

ABSTRACTORS = np.array([[13, 0, 0], [0, 20, 7], [0, 4, 56]])  # Gwet (2014) cont3x3abstractors
DIAGNOSIS_4X4 = np.array([[40, 4, 4, 17], [6, 25, 2, 13], [4, 1, 21, 12], [15, 5, 9, 45]])


@pytest.mark.parametrize(
    ("table", "weights", "published"),
    [
        (ABSTRACTORS, None, 0.796),
        (ABSTRACTORS, "linear", 0.843),
        (ABSTRACTORS, "quadratic", 0.892),
        (DIAGNOSIS_4X4, None, 0.432),
        (DIAGNOSIS_4X4, "linear", 0.407),
        (DIAGNOSIS_4X4, "quadratic", 0.383),
    ],
)
def test_gwet_2014_cohen_kappa(table: np.ndarray, weights: str | None, published: float) -> None:
    a, b = _pairs(table)
    assert round(cohen_kappa(a, b, weights=weights), 3) == published  # type: ignore[arg-type]


@pytest.mark.parametrize(("table", "published"), [(ABSTRACTORS, 0.796), (DIAGNOSIS_4X4, 0.430)])
def test_gwet_2014_scott_pi(table: np.ndarray, published: float) -> None:
    a, b = _pairs(table)
    assert round(scott_pi(a, b), 3) == published


def test_sas_simple_kappa_printout() -> None:
    # statsmodels' tests: SAS "Simple Kappa Coefficient" on table10, kappa 0.4842.
    a, b = _pairs(np.array([[0, 4, 1], [0, 8, 0], [0, 1, 5]]))
    assert round(cohen_kappa(a, b), 4) == 0.4842


def test_irr_kappa2_on_anxiety_raters_2_and_3() -> None:
    # R irr::kappa2(anxiety[, 2:3]): unweighted -0.006289308, "equal" 0.1459075,
    # "squared" 0.2520325 (statsmodels' tests). irr weights by the position of the observed
    # levels, as sklearn and this module do.
    rater2 = [3, 6, 4, 6, 2, 4, 2, 4, 3, 3, 2, 3, 3, 3, 2, 2, 1, 3, 3, 4]
    rater3 = [2, 1, 4, 4, 3, 2, 1, 6, 1, 1, 1, 2, 3, 3, 1, 1, 3, 3, 2, 2]
    assert cohen_kappa(rater2, rater3) == pytest.approx(-0.006289308, abs=1e-9)
    assert cohen_kappa(rater2, rater3, weights="linear") == pytest.approx(0.1459075, abs=1e-7)
    assert cohen_kappa(rater2, rater3, weights="quadratic") == pytest.approx(0.2520325, abs=1e-7)
