"""Benchmark of the agreement engine against its peers, in one run.

Usage::

    .venv/bin/python bench/agreement.py [--quick]

Runs, on the same inputs and in the same process:

* ``bench/agreement_categorical.py``: ``krippendorff_alpha`` (nominal, interval; 5 raters ×
  100k units, 20% missing) against the ``krippendorff`` package, and ``fleiss_kappa`` on 10⁶
  items against statsmodels (count table, and from raw labels);
* ``bench/agreement_consensus.py``: ``DawidSkene`` on 10⁶ annotations (200k items,
  30 annotators, 5 classes) against crowd-kit's ``DawidSkene(n_iter=100, tol=1e-5)``.

Each prints peer time / our time (above 1 means we are faster) and the agreement of values
or labels. ``--quick`` shrinks the inputs tenfold, for a smoke run.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import agreement_categorical
import agreement_consensus


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="inputs 10x smaller")
    args = parser.parse_args(argv)
    cat_args = ["--units", "10000", "--items", "100000"] if args.quick else []
    ds_args = ["--items", "20000", "--rounds", "1"] if args.quick else []
    print("== categorical statistics ==", flush=True)
    rc = agreement_categorical.main(cat_args)
    print("\n== Dawid-Skene consensus ==", flush=True)
    return rc or agreement_consensus.main(ds_args)


if __name__ == "__main__":
    raise SystemExit(main())
