"""Degenerate and invalid inputs of the categorical agreement statistics.

Policy under test: invalid input raises ``LabelDataError`` naming the field; a coefficient that
is mathematically ``0 / 0`` (all ratings in one category) is NaN, never a made-up number.
"""

from __future__ import annotations

import math

import krippendorff
import numpy as np
import pandas as pd
import pytest

from quality.agreement.categorical import (
    bootstrap_ci,
    cohen_kappa,
    fleiss_kappa,
    gwet_ac1,
    krippendorff_alpha,
    percent_agreement,
    scott_pi,
)
from quality.errors import LabelDataError

X = np.nan
MULTI = [percent_agreement, fleiss_kappa, gwet_ac1]


def _long(rows: list[tuple[object, object, object]]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=["item_id", "annotator_id", "label"])


# ---------------------------------------------------------------- single annotator


@pytest.mark.parametrize("stat", MULTI)
def test_single_rater_is_an_error(stat) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(LabelDataError, match="at least 2 raters"):
        stat([[1], [2], [1]])
    with pytest.raises(LabelDataError, match="at least 2 annotators"):
        stat(_long([("a", "dr1", 1), ("b", "dr1", 2)]))


def test_single_rater_krippendorff() -> None:
    with pytest.raises(LabelDataError, match="at least 2 raters"):
        krippendorff_alpha([[1, 2, 3, 1]])
    with pytest.raises(LabelDataError, match="at least 2 annotators"):
        krippendorff_alpha(_long([("a", "dr1", 1), ("b", "dr1", 2)]))


# ---------------------------------------------------------------- missing everywhere


@pytest.mark.parametrize("stat", MULTI)
def test_all_missing_is_an_error(stat) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(LabelDataError, match="no ratings"):
        stat([[X, X], [X, X]])


@pytest.mark.parametrize("stat", MULTI)
def test_all_missing_item_row_is_an_error(stat) -> None:  # type: ignore[no-untyped-def]
    frame = pd.DataFrame([[1, 1], [X, X], [2, 1]], index=["ct1", "ct2", "ct3"])
    with pytest.raises(LabelDataError, match=r"item 'ct2' has no ratings"):
        stat(frame)


@pytest.mark.parametrize("stat", MULTI)
def test_all_missing_rater_column_is_an_error(stat) -> None:  # type: ignore[no-untyped-def]
    frame = pd.DataFrame([[1, 1, X], [2, 2, X]], columns=["dr1", "dr2", "dr3"])
    with pytest.raises(LabelDataError, match=r"rater 'dr3' has no ratings"):
        stat(frame)


def test_all_missing_krippendorff_unit_and_rater() -> None:
    with pytest.raises(LabelDataError, match="item 1 has no ratings"):
        krippendorff_alpha([[1, X, 2], [1, X, 2]])
    with pytest.raises(LabelDataError, match="rater 2 has no ratings"):
        krippendorff_alpha([[1, 2, 2], [1, 2, 1], [X, X, X]])
    with pytest.raises(LabelDataError, match="no ratings"):
        krippendorff_alpha([[X, X], [X, X]])


def test_no_item_rated_twice_is_an_error() -> None:
    with pytest.raises(LabelDataError, match="at least 2 raters"):
        krippendorff_alpha([[1, X, 2], [X, 2, X]])
    with pytest.raises(LabelDataError, match="at least 2 raters"):
        percent_agreement([[1, X], [X, 2]])
    with pytest.raises(LabelDataError, match="at least 2 raters"):
        fleiss_kappa([[1, 0], [0, 1]], kind="counts")


# ---------------------------------------------------------------- labels outside the classes


def test_labels_outside_classes_are_errors() -> None:
    wide = [[0, 1], [1, 7]]
    for stat in MULTI:
        with pytest.raises(LabelDataError, match=r"label 7 is not one of the classes"):
            stat(wide, classes=[0, 1])
    long = _long([("a", "dr1", "pneumonia"), ("a", "dr2", "nodule"), ("b", "dr1", "cat")])
    with pytest.raises(LabelDataError, match=r"'cat' is not one of the task's classes"):
        fleiss_kappa(long, classes=["pneumonia", "nodule"])
    with pytest.raises(LabelDataError, match=r"label 'cat' is not one of the classes"):
        cohen_kappa(["a", "b"], ["a", "cat"], labels=["a", "b"])
    with pytest.raises(LabelDataError, match="not one of the classes"):
        krippendorff_alpha([[1, 2, 3], [1, 2, 9]], value_domain=[1, 2, 3])


def test_duplicate_classes_and_mixed_types() -> None:
    with pytest.raises(LabelDataError, match="distinct"):
        gwet_ac1([[0, 1], [1, 1]], classes=[0, 1, 1])
    with pytest.raises(LabelDataError, match="mixed types"):
        percent_agreement(np.array([["a", 1], [2, "b"]], dtype=object))


# ---------------------------------------------------------------- one item


def test_one_item() -> None:
    agree, disagree = [[1, 1, 1]], [[1, 2]]
    assert percent_agreement(agree) == 1.0
    assert percent_agreement(disagree) == 0.0
    assert math.isnan(fleiss_kappa(agree, kind="labels"))  # one category: kappa is 0/0
    assert fleiss_kappa(disagree, kind="labels") == pytest.approx(-1.0)
    assert krippendorff_alpha(np.array(disagree).T) == pytest.approx(
        krippendorff.alpha(np.array(disagree, float).T, level_of_measurement="nominal")
    )
    assert cohen_kappa([1], [2]) == pytest.approx(0.0)


# ---------------------------------------------------------------- one category everywhere


def test_perfect_agreement_on_a_single_category_is_nan() -> None:
    wide = [[1, 1], [1, 1], [1, 1]]
    assert percent_agreement(wide) == 1.0
    assert math.isnan(cohen_kappa([1, 1, 1], [1, 1, 1]))
    assert math.isnan(scott_pi([1, 1, 1], [1, 1, 1]))
    assert math.isnan(fleiss_kappa(wide, kind="labels"))
    assert math.isnan(fleiss_kappa([[2, 0], [2, 0]], kind="counts"))
    assert math.isnan(gwet_ac1(wide))  # q = 1 observed category
    for level in ("nominal", "ordinal", "interval", "ratio"):
        assert math.isnan(krippendorff_alpha(wide, level=level))  # type: ignore[arg-type]


def test_gwet_ac1_with_declared_classes_is_defined_on_one_used_category() -> None:
    # Declaring the task's two classes makes q = 2: p_e = 0 and AC1 = p_a = 1.
    assert gwet_ac1([[1, 1], [1, 1]], classes=[0, 1]) == 1.0


# ---------------------------------------------------------------- two raters


def test_two_raters_without_overlap_is_an_error() -> None:
    with pytest.raises(LabelDataError, match="labelled by both"):
        cohen_kappa([1, X, 2, X], [X, 1, X, 2])
    with pytest.raises(LabelDataError, match="labelled by both"):
        scott_pi([1, None], [None, 1])
    with pytest.raises(LabelDataError, match="at least 2 raters"):
        krippendorff_alpha([[1, X, 2, X], [X, 1, X, 2]])


def test_mismatched_lengths_and_empty_inputs() -> None:
    with pytest.raises(LabelDataError, match="same items"):
        cohen_kappa([1, 2, 3], [1, 2])
    with pytest.raises(LabelDataError, match="no labels"):
        cohen_kappa([], [])
    with pytest.raises(LabelDataError, match="every label is missing"):
        cohen_kappa([X, X], [1, 2])


def test_missing_pairs_are_dropped() -> None:
    assert cohen_kappa([0, 1, X, 1, 0], [0, 1, 1, None, 1]) == cohen_kappa([0, 1, 0], [0, 1, 1])


# ---------------------------------------------------------------- unknown names


def test_unknown_names_list_the_valid_ones() -> None:
    with pytest.raises(LabelDataError, match="nominal, ordinal, interval, ratio"):
        krippendorff_alpha([[1, 2], [1, 2]], level="cardinal")  # type: ignore[arg-type]
    with pytest.raises(LabelDataError, match="None, linear, quadratic"):
        cohen_kappa([1, 2], [1, 2], weights="cubic")  # type: ignore[arg-type]
    with pytest.raises(LabelDataError, match="auto, counts, labels"):
        fleiss_kappa([[1, 2], [1, 2]], kind="table")  # type: ignore[arg-type]


# ---------------------------------------------------------------- input kinds


def test_count_table_checks() -> None:
    with pytest.raises(LabelDataError, match="negative"):
        fleiss_kappa([[3, -1], [1, 1]], kind="counts")
    with pytest.raises(LabelDataError, match="whole numbers"):
        fleiss_kappa([[1.5, 0.5], [1, 1]], kind="counts")
    with pytest.raises(LabelDataError, match="row sum 0"):
        fleiss_kappa([[2, 0], [0, 0]], kind="counts")
    with pytest.raises(LabelDataError, match="not a count table"):
        fleiss_kappa(_long([("a", "x", 1), ("a", "y", 1)]), kind="counts")
    with pytest.raises(LabelDataError, match="2-D"):
        fleiss_kappa([1, 2, 3])


def test_auto_kind_rule() -> None:
    counts = np.array([[3, 0], [1, 2], [0, 3]])  # equal row sums: a count table
    assert fleiss_kappa(counts) == fleiss_kappa(counts, kind="counts")
    labels = np.array([[0, 1, 1], [1, 1, 1], [0, 0, 1]])  # unequal row sums: labels
    assert fleiss_kappa(labels) == fleiss_kappa(labels, kind="labels")
    with_nan = np.array([[0, 1, X], [1, 1, 1]])  # NaN: labels
    assert fleiss_kappa(with_nan) == fleiss_kappa(with_nan, kind="labels")


def test_level_needs_numbers_or_an_ordered_domain() -> None:
    words = np.array([["low", "high"], ["low", "mid"]], dtype=object)
    with pytest.raises(LabelDataError, match="needs numeric values"):
        krippendorff_alpha(words, level="interval")
    with pytest.raises(LabelDataError, match="ordered value_domain"):
        krippendorff_alpha(words, level="ordinal")
    assert not math.isnan(
        krippendorff_alpha(words, level="ordinal", value_domain=["low", "mid", "high"])
    )


def test_duplicate_long_annotations_are_errors() -> None:
    long = _long([("a", "dr1", 1), ("a", "dr1", 2), ("a", "dr2", 1)])
    with pytest.raises(LabelDataError, match="more than once"):
        krippendorff_alpha(long)


# ---------------------------------------------------------------- bootstrap arguments


def test_bootstrap_argument_checks() -> None:
    data = np.array([[0, 0], [1, 1], [0, 1]])
    with pytest.raises(LabelDataError, match="n_resamples"):
        bootstrap_ci(percent_agreement, data, n_resamples=0)
    with pytest.raises(LabelDataError, match="confidence"):
        bootstrap_ci(percent_agreement, data, confidence=1.5)
    with pytest.raises(LabelDataError, match="axis"):
        bootstrap_ci(percent_agreement, data, axis=2)
    with pytest.raises(LabelDataError, match="different lengths"):
        bootstrap_ci(cohen_kappa, ([0, 1], [0, 1, 1]))
    with pytest.raises(LabelDataError, match="callable"):
        bootstrap_ci("kappa", data)  # type: ignore[arg-type]
