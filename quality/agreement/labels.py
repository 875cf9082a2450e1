"""The long label contract and its one wide helper.

Labels travel as a long DataFrame, one row per annotation::

    item_id  annotator_id  label   [bbox] [mask_ref] [created_at] [duration_s]

:func:`to_wide` turns it into the ``items × annotators`` matrix (NaN where an annotator did not
label an item). :func:`encode` maps labels to integer codes for the numeric kernels.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from numpy.typing import NDArray

from quality.errors import LabelDataError

__all__ = ["REQUIRED", "EncodedLabels", "encode", "to_wide", "validate_long"]

REQUIRED = ("item_id", "annotator_id", "label")


def validate_long(
    data: pd.DataFrame,
    *,
    classes: Sequence[object] | None = None,
    min_annotators: int = 1,
    name: str = "labels",
) -> pd.DataFrame:
    """Check a long label frame and return it without rows whose label is missing.

    Parameters
    ----------
    data : DataFrame with at least ``item_id, annotator_id, label``.
    classes : the task's classes; a label outside them is an error naming the row.
    min_annotators : the least number of distinct annotators required.
    name : what the frame is, for error messages.

    Raises
    ------
    LabelDataError
        Missing columns, no labelled rows, labels outside ``classes`` (naming the first row),
        duplicate (item, annotator) pairs, or too few annotators.
    """
    if not isinstance(data, pd.DataFrame):
        raise LabelDataError(name, "", f"expected a DataFrame, got {type(data).__name__}")
    missing = [c for c in REQUIRED if c not in data.columns]
    if missing:
        raise LabelDataError(name, ", ".join(missing), "required column(s) missing")
    df = data.loc[data["label"].notna()]
    if df.empty:
        raise LabelDataError(name, "label", "every row is missing its label")
    if classes is not None:
        bad = ~df["label"].isin(list(classes))
        if bad.any():
            row = df.index[bad.to_numpy().argmax()]
            raise LabelDataError(
                name,
                "label",
                f"row {row}: label {df.at[row, 'label']!r} is not one of the task's classes "
                f"{list(classes)}",
            )
    dup = df.duplicated(["item_id", "annotator_id"])
    if dup.any():
        row = df.index[dup.to_numpy().argmax()]
        raise LabelDataError(
            name,
            "item_id, annotator_id",
            f"row {row}: annotator {df.at[row, 'annotator_id']!r} labelled item "
            f"{df.at[row, 'item_id']!r} more than once",
        )
    n_ann = df["annotator_id"].nunique()
    if n_ann < min_annotators:
        raise LabelDataError(
            name,
            "annotator_id",
            f"needs at least {min_annotators} annotators, found {n_ann}",
        )
    return df


def to_wide(data: pd.DataFrame) -> pd.DataFrame:
    """The ``items × annotators`` label matrix, with NaN where a label is missing.

    Parameters
    ----------
    data : long label frame (``item_id, annotator_id, label``).

    Returns
    -------
    DataFrame
        Index ``item_id`` (sorted), columns ``annotator_id`` (sorted), values the labels.

    Raises
    ------
    LabelDataError
        As :func:`validate_long`.
    """
    df = validate_long(data)
    return (
        df.pivot(index="item_id", columns="annotator_id", values="label")
        .sort_index(axis=0)
        .sort_index(axis=1)
    )


@dataclass(frozen=True)
class EncodedLabels:
    """Integer-coded long labels.

    Attributes
    ----------
    items, annotators, classes : the distinct values, in code order.
    item : NDArray[int64], shape (n_rows,), index into ``items``.
    annotator : NDArray[int64], shape (n_rows,), index into ``annotators``.
    label : NDArray[int64], shape (n_rows,), index into ``classes``.
    """

    items: NDArray[np.object_]
    annotators: NDArray[np.object_]
    classes: NDArray[np.object_]
    item: NDArray[np.int64]
    annotator: NDArray[np.int64]
    label: NDArray[np.int64]


def encode(
    data: pd.DataFrame,
    *,
    classes: Sequence[object] | None = None,
    min_annotators: int = 1,
) -> EncodedLabels:
    """Validate and integer-code a long label frame (sorted codes: deterministic).

    ``classes``, when given, fixes the class order (and validates labels against it).
    """
    df = validate_long(data, classes=classes, min_annotators=min_annotators)
    item_codes, items = pd.factorize(df["item_id"], sort=True)
    ann_codes, annotators = pd.factorize(df["annotator_id"], sort=True)
    if classes is not None:
        cls = pd.Index(list(classes))
        label_codes = cls.get_indexer(df["label"])
        class_values = cls.to_numpy(dtype=object)
    else:
        label_codes, uniq = pd.factorize(df["label"], sort=True)
        class_values = np.asarray(uniq, dtype=object)
    return EncodedLabels(
        items=np.asarray(items, dtype=object),
        annotators=np.asarray(annotators, dtype=object),
        classes=class_values,
        item=np.asarray(item_codes, dtype=np.int64),
        annotator=np.asarray(ann_codes, dtype=np.int64),
        label=np.asarray(label_codes, dtype=np.int64),
    )
