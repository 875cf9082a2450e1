"""Edge cases of :func:`quality.dicom.slice_order` (the display order of a CT series)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from quality.dicom import slice_order

AXIAL = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]  # rows along +x, columns along +y: normal +z
CORONAL = [1.0, 0.0, 0.0, 0.0, 0.0, -1.0]  # normal (1,0,0) × (0,0,-1) = (0, 1, 0)


def test_axial_positions_beat_wrong_instance_numbers() -> None:
    # Instance numbers 1, 2, 3 but z = 5, 1, 3: sorted along +z is 2, 3, 1; the first along
    # the normal (instance 2) has a higher number than the last (1), so the order turns.
    order, dist = slice_order([[0, 0, 5], [0, 0, 1], [0, 0, 3]], [AXIAL] * 3, [1, 2, 3])
    assert order.tolist() == [0, 2, 1]
    assert dist is not None and dist.tolist() == [5.0, 1.0, 3.0]


def test_direction_follows_instance_numbers() -> None:
    feet_first = slice_order([[0, 0, -10], [0, 0, -5], [0, 0, 0]], [AXIAL] * 3, [1, 2, 3])[0]
    head_first = slice_order([[0, 0, 0], [0, 0, -5], [0, 0, -10]], [AXIAL] * 3, [1, 2, 3])[0]
    assert feet_first.tolist() == [0, 1, 2] and head_first.tolist() == [0, 1, 2]


def test_oblique_geometry_uses_the_normal_not_z() -> None:
    # Coronal slices: the position that matters is y; x and z vary as noise.
    pos = [[7, 20, 1], [-3, 0, 9], [0, 10, -4]]
    order, dist = slice_order(pos, [CORONAL] * 3, [None, None, None])
    assert order.tolist() == [1, 2, 0]
    assert dist is not None and dist.tolist() == pytest.approx([20.0, 0.0, 10.0])


@pytest.mark.parametrize(
    ("positions", "orientations"),
    [
        ([[0, 0, 2], None, [0, 0, 1]], [AXIAL] * 3),  # one position missing
        ([[0, 0, 2], [0, 0, 3], [0, 0, 1]], [None] * 3),  # no orientation at all
        ([[0, 0, 2], [0, 0, 3], [0, 0, 1]], [[1, 0, 0, 1, 0, 0]] * 3),  # degenerate normal
        ([[0, 0, 2], "0\\0\\3", [0, 0, 1]], [AXIAL] * 3),  # a string, not a vector
        ([[0, 0, 2], [0, 0, float("nan")], [0, 0, 1]], [AXIAL] * 3),  # NaN
    ],
)
def test_unusable_geometry_falls_back_to_instance_numbers(
    positions: list[object], orientations: list[object]
) -> None:
    order, dist = slice_order(positions, orientations, [3, None, 1])
    assert dist is None
    assert order.tolist() == [2, 0, 1]  # 1, 3, then the missing number last


def test_ties_keep_instance_then_input_order() -> None:
    order, _ = slice_order([[0, 0, 1]] * 4, [AXIAL] * 4, [2, 1, None, 1])
    assert order.tolist() == [1, 3, 0, 2]


def test_empty_single_and_length_mismatch() -> None:
    order, dist = slice_order([], [], [])
    assert order.tolist() == [] and dist is None
    assert slice_order([[0, 0, 0]], [AXIAL], [7])[0].tolist() == [0]
    with pytest.raises(ValueError, match="one entry per slice"):
        slice_order([[0, 0, 0]], [AXIAL, AXIAL], [1])


@given(st.permutations(list(range(12))), st.floats(0.5, 5.0), st.booleans())
def test_property_recovers_a_shuffled_volume(
    perm: list[int], spacing: float, head_first: bool
) -> None:
    z = np.arange(12) * spacing * (-1 if head_first else 1)
    positions = [[0.0, 0.0, float(z[i])] for i in perm]
    numbers = [i + 1 for i in perm]
    order, _ = slice_order(positions, [AXIAL] * 12, numbers)
    assert sorted(order.tolist()) == list(range(12))
    assert [numbers[i] for i in order] == list(range(1, 13))
