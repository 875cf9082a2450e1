"""Evidently's side of the drift comparisons; runs in the peers venv (``bench/.peers-venv``).

Evidently 0.7.x does not import with the project's pandas 3, so the tests and the benchmark
call this script with the peers venv's Python and pass the data as Parquet files
(``reference.parquet``, ``current.parquet``). It prints one JSON document on stdout.

Usage::

    bench/.peers-venv/bin/python bench/evidently_peer.py stattests DIR SPEC.json
    bench/.peers-venv/bin/python bench/evidently_peer.py report DIR [--num-method M]
        [--cat-method M] [--runs N] [--warmup-rows N]

``stattests``: SPEC is a list of ``{"column", "test", "type"}`` (type ``num`` or ``cat``);
each test runs as Evidently's registered stattest on the column without missing values,
and the output lists ``{"column", "test", "score", "drifted"}`` (``score`` is the p-value of
a p-value test, else the distance).

``report``: ``Report([DataDriftPreset(...)]).run(current, reference)`` on the whole frames,
``--runs`` times after one warm-up run on the first ``--warmup-rows`` rows; the output holds
the per-column method and score of the last run, every run's seconds and the peak RSS.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path

import evidently
import pandas as pd
from evidently import Report
from evidently.legacy.calculations.stattests import get_stattest
from evidently.legacy.core import ColumnType
from evidently.presets import DataDriftPreset

TYPES = {"num": ColumnType.Numerical, "cat": ColumnType.Categorical}


def load(folder: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    return pd.read_parquet(folder / "reference.parquet"), pd.read_parquet(
        folder / "current.parquet"
    )


def stattests(folder: Path, spec_path: Path) -> dict:
    reference, current = load(folder)
    out = []
    for item in json.loads(spec_path.read_text()):
        col, kind = item["column"], TYPES[item["type"]]
        ref, cur = reference[col].dropna(), current[col].dropna()
        test = get_stattest(ref, cur, kind, item["test"])
        result = test(ref, cur, kind, None)
        out.append(
            {
                "column": col,
                "test": item["test"],
                "score": float(result.drift_score),
                "drifted": bool(result.drifted),
            }
        )
    return {"evidently": evidently.__version__, "pandas": pd.__version__, "results": out}


def _columns(snapshot) -> list[dict]:  # type: ignore[no-untyped-def]
    cols = []
    for metric in snapshot.dict()["metrics"]:
        config = metric["config"]
        if config.get("type", "").endswith("ValueDrift"):
            cols.append(
                {
                    "column": config["column"],
                    "method": config["method"],
                    "score": float(metric["value"]),
                }
            )
    return cols


def report(
    folder: Path, num_method: str | None, cat_method: str | None, runs: int, warmup_rows: int
) -> dict:
    reference, current = load(folder)
    preset = {"num_method": num_method, "cat_method": cat_method}
    # Warm-up: imports, registries and caches, on a slice (its size does not matter).
    Report([DataDriftPreset(**preset)]).run(current.head(warmup_rows), reference.head(warmup_rows))
    seconds, snapshot = [], None
    for _ in range(runs):
        start = time.perf_counter()
        snapshot = Report([DataDriftPreset(**preset)]).run(current, reference)
        seconds.append(time.perf_counter() - start)
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {
        "evidently": evidently.__version__,
        "pandas": pd.__version__,
        "seconds": seconds,
        "peak_rss_mib": peak_kib / 1024,
        "columns": _columns(snapshot),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="mode", required=True)
    st = sub.add_parser("stattests")
    st.add_argument("folder", type=Path)
    st.add_argument("spec", type=Path)
    rp = sub.add_parser("report")
    rp.add_argument("folder", type=Path)
    rp.add_argument("--num-method", default=None)
    rp.add_argument("--cat-method", default=None)
    rp.add_argument("--runs", type=int, default=3)
    rp.add_argument("--warmup-rows", type=int, default=20_000)
    args = parser.parse_args(argv)
    if args.mode == "stattests":
        payload = stattests(args.folder, args.spec)
    else:
        payload = report(args.folder, args.num_method, args.cat_method, args.runs, args.warmup_rows)
    sys.stdout.write(json.dumps(payload) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
