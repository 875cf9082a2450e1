"""Edge cases of the consensus models: bad input raises LabelDataError, tiny input works."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pandas as pd
import pytest

from quality.agreement.consensus import STAPLE, DawidSkene, majority_vote
from quality.errors import LabelDataError


def frame(rows: list[tuple[object, object, object]]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=["item_id", "annotator_id", "label"])


THREE = frame(
    [(1, "a", 0), (1, "b", 0), (1, "c", 1), (2, "a", 1), (2, "b", 1), (2, "c", 1), (3, "a", 0)]
)


@pytest.mark.parametrize("fit", [lambda d: DawidSkene().fit(d), majority_vote])
def test_single_annotator(fit: Callable[[pd.DataFrame], object]) -> None:
    with pytest.raises(LabelDataError, match="at least 2 annotators"):
        fit(frame([(1, "a", 0), (2, "a", 1)]))


@pytest.mark.parametrize("fit", [lambda d: DawidSkene().fit(d), majority_vote])
def test_all_labels_missing(fit: Callable[[pd.DataFrame], object]) -> None:
    with pytest.raises(LabelDataError, match="missing its label"):
        fit(frame([(1, "a", None), (1, "b", np.nan)]))


def test_missing_column_and_not_a_frame() -> None:
    with pytest.raises(LabelDataError, match="annotator_id"):
        DawidSkene().fit(THREE.drop(columns="annotator_id"))
    with pytest.raises(LabelDataError, match="expected a DataFrame"):
        majority_vote(THREE.to_numpy())  # type: ignore[arg-type]


def test_label_outside_classes_names_the_row() -> None:
    with pytest.raises(LabelDataError, match=r"row 2: label .*1.* is not one of"):
        DawidSkene().fit(THREE, classes=[0, 2])


def test_bad_classes_and_gold() -> None:
    with pytest.raises(LabelDataError, match="distinct"):
        DawidSkene().fit(THREE, classes=[0, 1, 1])
    with pytest.raises(LabelDataError, match="gold label 7"):
        DawidSkene().fit(THREE, gold=pd.Series([7], index=[1]), classes=[0, 1])
    with pytest.raises(LabelDataError, match="more than one gold"):
        DawidSkene().fit(THREE, gold=pd.DataFrame({"item_id": [1, 1], "label": [0, 1]}))
    with pytest.raises(LabelDataError, match="item_id and label"):
        DawidSkene().fit(THREE, gold=pd.DataFrame({"item": [1], "label": [0]}))


def test_gold_class_nobody_chose_widens_classes() -> None:
    ds = DawidSkene().fit(THREE, gold=pd.Series([2], index=[3]))
    assert list(ds.classes_) == [0, 1, 2]
    assert ds.labels_.loc[3] == 2
    # Gold on an item without annotations is ignored.
    ds = DawidSkene().fit(THREE, gold=pd.Series([0], index=[99]))
    assert 99 not in ds.labels_.index


def test_duplicate_annotation() -> None:
    with pytest.raises(LabelDataError, match="more than once"):
        DawidSkene().fit(frame([(1, "a", 0), (1, "a", 1), (1, "b", 0)]))


def test_bad_settings() -> None:
    with pytest.raises(LabelDataError, match="n_iter"):
        DawidSkene(n_iter=-1).fit(THREE)
    with pytest.raises(LabelDataError, match="tol"):
        DawidSkene(tol=float("nan")).fit(THREE)
    with pytest.raises(LabelDataError, match="tie_break"):
        majority_vote(THREE, tie_break="last")  # type: ignore[arg-type]


def test_one_item() -> None:
    ds = DawidSkene().fit(frame([(1, "a", "x"), (1, "b", "x"), (1, "c", "y")]))
    assert ds.labels_.tolist() == ["x"]
    assert ds.probas_.shape == (1, 2)
    assert majority_vote(frame([(1, "a", "x"), (1, "b", "x")]))["label"].tolist() == ["x"]


def test_annotator_with_one_item() -> None:
    df = pd.concat([THREE, frame([(2, "d", 0)])], ignore_index=True)
    ds = DawidSkene().fit(df)
    d = list(ds.annotators_).index("d")
    np.testing.assert_allclose(ds.confusions_[d].sum(axis=1), 1.0)
    assert ds.errors_.loc["d"].shape == (2, 2)
    assert np.isfinite(ds.probas_.to_numpy()).all()


def test_zero_iterations_is_the_majority_vote_start() -> None:
    ds = DawidSkene(n_iter=0).fit(THREE)
    assert ds.n_iter_ == 0 and np.isnan(ds.loglik_)
    assert ds.labels_.tolist() == majority_vote(THREE)["label"].tolist()


def test_string_and_mixed_ids() -> None:
    df = THREE.assign(item_id=THREE["item_id"].map({1: "x1", 2: "x2", 3: "x3"}))
    assert DawidSkene().fit(df).labels_.index.tolist() == ["x1", "x2", "x3"]
    mixed = THREE.assign(label=["a", 1, "a", 1, 1, 1, "a"])
    assert set(DawidSkene().fit(mixed).classes_) == {"a", 1}
    assert DawidSkene().fit(mixed, classes=["a", 1]).labels_.tolist() == ["a", 1, "a"]


# --- STAPLE ----------------------------------------------------------------------------------


def test_staple_mismatched_shapes_names_the_rater() -> None:
    masks = [np.zeros((4, 4), bool), np.zeros((4, 4), bool), np.zeros((4, 5), bool)]
    with pytest.raises(LabelDataError, match=r"rater 2.*\(4, 5\)"):
        STAPLE().fit(masks)


def test_staple_single_rater_and_bad_values() -> None:
    with pytest.raises(LabelDataError, match="at least two raters"):
        STAPLE().fit(np.zeros((1, 4, 4), bool))
    bad = np.zeros((2, 3, 3))
    bad[1, 2, 0] = 0.5
    with pytest.raises(LabelDataError, match=r"rater 1.*0\.5"):
        STAPLE().fit(bad)
    with pytest.raises(LabelDataError, match=r"expected \(n_raters, H, W\)"):
        STAPLE().fit(np.zeros((2, 4), bool))
    with pytest.raises(LabelDataError, match="prior"):
        STAPLE(prior=1.0).fit(np.ones((2, 3, 3), bool))


def test_staple_empty_and_full_masks() -> None:
    empty = STAPLE().fit(np.zeros((3, 5, 5), bool))
    np.testing.assert_array_equal(empty.estimate_, 0.0)
    assert np.isnan(empty.sensitivity_).all() and (empty.specificity_ == 1.0).all()
    full = STAPLE().fit(np.ones((3, 5, 5), np.uint8))
    np.testing.assert_array_equal(full.estimate_, 1.0)
    assert (full.sensitivity_ == 1.0).all() and np.isnan(full.specificity_).all()


def test_staple_one_pixel() -> None:
    st = STAPLE().fit(np.array([[[1]], [[1]], [[0]]], bool))
    assert st.estimate_.shape == (1, 1)
    assert 0.0 <= st.estimate_[0, 0] <= 1.0


def test_many_annotations_per_item_do_not_underflow() -> None:
    # 400 labels per item: each class's log-likelihood is far below log(1e-308).
    rng = np.random.default_rng(0)
    n, m = 40, 400
    truth = rng.integers(0, 3, n)
    item = np.repeat(np.arange(n), m)
    noisy = rng.integers(0, 3, n * m)
    label = np.where(rng.random(n * m) < 0.4, truth[item], noisy)
    df = pd.DataFrame({"item_id": item, "annotator_id": np.tile(np.arange(m), n), "label": label})
    ds = DawidSkene().fit(df)
    assert np.isfinite(ds.probas_.to_numpy()).all() and np.isfinite(ds.loglik_)
    np.testing.assert_allclose(ds.probas_.sum(axis=1), 1.0)
    assert (ds.labels_.to_numpy() == truth).all()
