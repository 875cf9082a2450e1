"""Spatial agreement: properties of Dice/IoU, HD95 against brute force, box IoU and matching."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from numpy.typing import NDArray
from scipy.spatial.distance import cdist

from quality.agreement.spatial import (
    box_iou,
    dice,
    dice_batch,
    hausdorff95,
    iou,
    iou_batch,
    match_boxes,
)
from quality.errors import LabelDataError

shapes_2d = st.tuples(st.integers(1, 9), st.integers(1, 9))


@st.composite
def mask_pairs(draw: st.DrawFn, ndim: int = 2) -> tuple[NDArray[np.bool_], NDArray[np.bool_]]:
    shape = draw(st.tuples(*[st.integers(1, 8 if ndim == 2 else 5)] * ndim))
    return draw(arrays(bool, shape)), draw(arrays(bool, shape))


# --- Dice / IoU ------------------------------------------------------------------------------


@given(mask_pairs())
def test_dice_iou_properties(pair: tuple[NDArray[np.bool_], NDArray[np.bool_]]) -> None:
    a, b = pair
    d, j = dice(a, b), iou(a, b)
    assert d == dice(b, a) and j == iou(b, a)
    assert 0.0 <= j <= d <= 1.0
    assert d == pytest.approx(2 * j / (1 + j))
    assert dice(a, a) == 1.0 and iou(a, a) == 1.0


@settings(max_examples=50)
@given(st.integers(1, 6), shapes_2d, st.data())
def test_batched_equals_single(n: int, shape: tuple[int, int], data: st.DataObject) -> None:
    a = data.draw(arrays(bool, (n, *shape)))
    b = data.draw(arrays(bool, (n, *shape)))
    d = dice_batch(a, b)
    j = iou_batch(torch.from_numpy(a), torch.from_numpy(b.astype(np.uint8)))
    assert d.shape == (n,) and d.dtype == torch.float64
    np.testing.assert_allclose(d.numpy(), [dice(x, y) for x, y in zip(a, b, strict=True)])
    np.testing.assert_allclose(j.numpy(), [iou(x, y) for x, y in zip(a, b, strict=True)])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_batched_on_gpu() -> None:
    rng = np.random.default_rng(0)
    a, b = rng.random((2, 4, 32, 32)) > 0.5
    d = dice_batch(torch.from_numpy(a).cuda(), torch.from_numpy(b).cuda())
    assert d.device.type == "cuda"
    np.testing.assert_allclose(d.cpu().numpy(), dice_batch(a, b).numpy())


def test_empty_masks_convention() -> None:
    z = np.zeros((3, 3), bool)
    one = z.copy()
    one[1, 1] = True
    assert dice(z, z) == 1.0 and iou(z, z) == 1.0
    assert dice(z, one) == 0.0 and iou(z, one) == 0.0
    np.testing.assert_array_equal(dice_batch(z[None], z[None]).numpy(), [1.0])
    assert np.isnan(hausdorff95(z, one))
    assert np.isnan(hausdorff95(z, z))


def test_mask_errors() -> None:
    with pytest.raises(LabelDataError, match="differ in shape"):
        dice(np.zeros((2, 2)), np.zeros((2, 3)))
    with pytest.raises(LabelDataError, match="not 0 or 1"):
        iou(np.full((2, 2), 2), np.zeros((2, 2)))
    with pytest.raises(LabelDataError, match="differ in shape"):
        dice_batch(np.zeros((2, 4, 4), bool), np.zeros((3, 4, 4), bool))
    with pytest.raises(LabelDataError, match="spacing"):
        hausdorff95(np.ones((2, 2)), np.ones((2, 2)), spacing=(1.0,))
    with pytest.raises(LabelDataError, match="2-D or 3-D"):
        hausdorff95(np.ones(4), np.ones(4))


# --- HD95 ------------------------------------------------------------------------------------


def _boundary_points(mask: NDArray[np.bool_]) -> NDArray[np.int64]:
    """Mask voxels with a face neighbour outside the mask or outside the image."""
    padded = np.pad(mask, 1, constant_values=False)
    inner = tuple(slice(1, -1) for _ in mask.shape)
    edge = np.zeros_like(mask)
    for axis in range(mask.ndim):
        for shift in (-1, 1):
            edge |= ~np.roll(padded, shift, axis=axis)[inner]
    return np.argwhere(mask & edge)


def _hd95_brute(a: NDArray[np.bool_], b: NDArray[np.bool_], spacing: tuple[float, ...]) -> float:
    pa = _boundary_points(a) * np.asarray(spacing)
    pb = _boundary_points(b) * np.asarray(spacing)
    d = cdist(pa, pb)
    return float(max(np.percentile(d.min(axis=1), 95), np.percentile(d.min(axis=0), 95)))


spacings = st.floats(0.2, 3.0, allow_nan=False, allow_infinity=False)


@settings(max_examples=60, deadline=None)
@given(mask_pairs(), st.tuples(spacings, spacings))
def test_hausdorff95_matches_brute_force_2d(
    pair: tuple[NDArray[np.bool_], NDArray[np.bool_]], spacing: tuple[float, float]
) -> None:
    a, b = pair
    if not a.any() or not b.any():
        assert np.isnan(hausdorff95(a, b, spacing))
        return
    got = hausdorff95(a, b, spacing)
    assert got == pytest.approx(_hd95_brute(a, b, spacing), rel=1e-9, abs=1e-9)
    assert got == pytest.approx(hausdorff95(b, a, spacing))


@settings(max_examples=30, deadline=None)
@given(mask_pairs(ndim=3), st.tuples(spacings, spacings, spacings))
def test_hausdorff95_matches_brute_force_3d(
    pair: tuple[NDArray[np.bool_], NDArray[np.bool_]], spacing: tuple[float, float, float]
) -> None:
    a, b = pair
    if a.any() and b.any():
        assert hausdorff95(a, b, spacing) == pytest.approx(_hd95_brute(a, b, spacing), abs=1e-9)


def test_hausdorff95_hand_case() -> None:
    a = np.zeros((10, 10), bool)
    a[2:5, 2:5] = True
    b = np.roll(a, 3, axis=1)  # the same square, 3 columns to the right
    assert hausdorff95(a, a) == 0.0
    assert hausdorff95(a, b) == pytest.approx(3.0)
    assert hausdorff95(a, b, spacing=(1.0, 0.5)) == pytest.approx(1.5)


# --- boxes -----------------------------------------------------------------------------------


def test_box_iou_hand_case() -> None:
    a = [[0, 0, 2, 2], [10, 10, 11, 11]]
    b = [[1, 1, 3, 3], [0, 0, 2, 2], [0, 0, 1, 4], [5, 5, 5, 5]]
    m = box_iou(a, b)
    assert m.shape == (2, 4)
    # [0,0,2,2] ∩ [1,1,3,3] = 1, union 4 + 4 − 1 = 7; ∩ [0,0,1,4] = 2, union 4 + 4 − 2 = 6.
    np.testing.assert_allclose(m[0], [1 / 7, 1.0, 2 / 6, 0.0])
    np.testing.assert_allclose(m[1], 0.0)
    np.testing.assert_allclose(box_iou(b, a), m.T)
    assert box_iou(np.empty((0, 4)), b).shape == (0, 4)


def test_box_errors() -> None:
    with pytest.raises(LabelDataError, match="box 1"):
        box_iou([[0, 0, 1, 1], [2, 2, 1, 3]], [[0, 0, 1, 1]])
    with pytest.raises(LabelDataError, match=r"shape \(n, 4\)"):
        box_iou([[0, 0, 1]], [[0, 0, 1, 1]])
    with pytest.raises(LabelDataError, match="iou_threshold"):
        match_boxes([[0, 0, 1, 1]], [[0, 0, 1, 1]], iou_threshold=0.0)


def test_match_boxes_hand_case() -> None:
    ref = [[0, 0, 10, 10], [20, 20, 30, 30], [50, 50, 60, 60]]
    cand = [[21, 21, 31, 31], [0, 0, 10, 9], [100, 100, 110, 110], [1, 0, 11, 10]]
    res = match_boxes(ref, cand, iou_threshold=0.5)
    # ref 0 could take cand 1 (IoU 0.9) or cand 3 (IoU 90/110): Hungarian keeps the best.
    assert [(i, j) for i, j, _ in res.pairs] == [(0, 1), (1, 0)]
    assert res.pairs[0][2] == pytest.approx(0.9)
    assert res.pairs[1][2] == pytest.approx(81 / 119)
    np.testing.assert_array_equal(res.unmatched_a, [2])
    np.testing.assert_array_equal(res.unmatched_b, [2, 3])
    assert res.precision == pytest.approx(2 / 4)
    assert res.recall == pytest.approx(2 / 3)
    assert res.f1 == pytest.approx(2 * 2 / 7)
    assert res.mean_iou == pytest.approx((0.9 + 81 / 119) / 2)
    strict = match_boxes(ref, cand, iou_threshold=0.8)
    assert [(i, j) for i, j, _ in strict.pairs] == [(0, 1)]


def test_match_boxes_ignores_sub_threshold_pairs_when_assigning() -> None:
    # Hungarian on raw IoU takes a0-b1 + a1-b0 (0.467 + 0.312 > 0.533), both below 0.5, and
    # would match nothing; with sub-threshold IoUs zeroed first, a1-b1 (0.533) is matched.
    a = [[0, 0, 9, 10], [7, 0, 17, 10]]
    b = [[12, 0, 23, 10], [2, 0, 15, 10]]
    m = box_iou(a, b)
    assert m[0, 1] + m[1, 0] > m[1, 1] >= 0.5 > max(m[0, 1], m[1, 0])
    res = match_boxes(a, b, iou_threshold=0.5)
    assert [(i, j) for i, j, _ in res.pairs] == [(1, 1)]
    assert res.f1 == pytest.approx(0.5)


def test_match_boxes_empty() -> None:
    none = np.empty((0, 4))
    both = match_boxes(none, none)
    assert both.pairs == () and both.f1 == 1.0
    assert np.isnan(both.precision) and np.isnan(both.recall)
    miss = match_boxes([[0, 0, 1, 1]], none)
    assert miss.recall == 0.0 and miss.f1 == 0.0 and np.isnan(miss.precision)
    np.testing.assert_array_equal(miss.unmatched_a, [0])
