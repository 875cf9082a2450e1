"""Benchmark: categorical agreement statistics against their reference implementations.

Usage::

    .venv/bin/python bench/agreement_categorical.py [--units 100000] [--items 1000000] [--runs 3]

Each contender gets the very same input in the same run; after one warm-up call each, the median
of ``--runs`` timed calls is reported, with the ratio ``peer time / our time`` (above 1: we are
faster) and the largest absolute difference between the two results.

* ``krippendorff_alpha`` against ``krippendorff.alpha`` on ``5 × --units`` scores 1-5 with 20%
  of the ratings missing, at the nominal and interval levels (goal >= 1.0x, equal to 1e-9);
  ordinal and ratio are shown for information. A unit left with no rating at all by the 20%
  draw (about 0.03% of units) gets one rating back from rater 0, because this module rejects
  all-missing units; the printed missing share is the one actually used.
* ``fleiss_kappa`` against statsmodels' ``fleiss_kappa`` on an ``--items × 5`` count table
  (goal >= 1.0x), and from the raw ``--items × 5`` label matrix against statsmodels'
  ``aggregate_raters`` followed by ``fleiss_kappa``.

Seeds are fixed. Absolute times drift between runs on shared machines; the ratios are what to
read (re-run if they look noisy).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import krippendorff
from statsmodels.stats.inter_rater import aggregate_raters
from statsmodels.stats.inter_rater import fleiss_kappa as sm_fleiss_kappa

from quality.agreement.categorical import fleiss_kappa, krippendorff_alpha


def reliability_data(
    units: int, raters: int = 5, missing: float = 0.2, seed: int = 0
) -> NDArray[np.float64]:
    """``raters × units`` scores 1-5: a true score per unit, raters agree with it 70% of the time."""
    rng = np.random.default_rng(seed)
    truth = rng.integers(1, 6, units)
    noise = rng.integers(1, 6, (raters, units))
    x = np.where(rng.random((raters, units)) < 0.7, truth, noise).astype(np.float64)
    x[rng.random(x.shape) < missing] = np.nan
    empty = np.isnan(x).all(axis=0)
    x[0, empty] = truth[empty]
    return x


def label_matrix(items: int, raters: int = 5, classes: int = 5, seed: int = 1) -> NDArray[np.int64]:
    """``items × raters`` integer labels 0..classes-1 (statsmodels wants integer codes)."""
    rng = np.random.default_rng(seed)
    truth = rng.integers(0, classes, items)
    noise = rng.integers(0, classes, (items, raters))
    return np.where(rng.random((items, raters)) < 0.6, truth[:, None], noise)


def count_table(labels: NDArray[np.int64], classes: int = 5) -> NDArray[np.int64]:
    items = labels.shape[0]
    keys = labels + (np.arange(items) * classes)[:, None]
    return np.bincount(keys.ravel(), minlength=items * classes).reshape(items, classes)


def measure(fn: Callable[[], float], runs: int) -> tuple[float, float]:
    """(median seconds over ``runs`` after one warm-up, the value returned)."""
    value = fn()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), float(value)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--units", type=int, default=100_000, help="Krippendorff units")
    parser.add_argument("--items", type=int, default=1_000_000, help="Fleiss items")
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args(argv)

    rel = reliability_data(args.units)
    labels = label_matrix(args.items)
    table = count_table(labels)
    print(
        f"Krippendorff data: {rel.shape[0]} raters × {rel.shape[1]} units, "
        f"{np.isnan(rel).mean():.2%} missing; Fleiss: {labels.shape[0]} items × "
        f"{labels.shape[1]} raters, 5 classes; median of {args.runs} after a warm-up"
    )

    cases: list[tuple[str, str, Callable[[], float], Callable[[], float]]] = []
    for level, goal in (
        ("nominal", "goal >= 1.0"),
        ("interval", "goal >= 1.0"),
        ("ordinal", "info"),
        ("ratio", "info"),
    ):
        cases.append(
            (
                f"krippendorff_alpha {level}",
                goal,
                lambda level=level: krippendorff_alpha(rel, level=level),
                lambda level=level: krippendorff.alpha(rel, level_of_measurement=level),
            )
        )
    cases.append(
        (
            "fleiss_kappa counts",
            "goal >= 1.0",
            lambda: fleiss_kappa(table),
            lambda: sm_fleiss_kappa(table),
        )
    )
    cases.append(
        (
            "fleiss_kappa labels",
            "vs aggregate_raters+fleiss",
            lambda: fleiss_kappa(labels, kind="labels"),
            lambda: sm_fleiss_kappa(aggregate_raters(labels)[0]),
        )
    )

    header = f"{'case':<28} {'ours s':>9} {'peer s':>9} {'peer/ours':>10} {'max |diff|':>11}  note"
    print()
    print(header)
    print("-" * len(header))
    for name, note, ours, peer in cases:
        t_ours, v_ours = measure(ours, args.runs)
        t_peer, v_peer = measure(peer, args.runs)
        diff = abs(v_ours - v_peer)
        print(
            f"{name:<28} {t_ours:9.4f} {t_peer:9.4f} {t_peer / t_ours:9.2f}x {diff:11.1e}  {note}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
