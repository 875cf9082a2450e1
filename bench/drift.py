"""Benchmark of drift_table against Evidently's DataDriftPreset, same data, same tests.

Usage::

    .venv/bin/python bench/drift.py [--rows 1000000] [--pvalue-rows 100000] [--runs 3] [--quick]

Builds a reference and a current frame of ``--rows`` rows each (10 numeric and 10 string
categorical columns, seed 0; three of each drift), writes them as Parquet under
``bench/.data/`` and runs, on the same files:

* **ours**: :func:`quality.drift_tests.drift_table` in this process (pandas 3);
* **Evidently 0.7.23**: ``Report([DataDriftPreset(...)]).run(current, reference)`` in the
  peers venv (``bench/.peers-venv``, made by ``bench/peers_venv.sh``; pandas < 3), through
  ``bench/evidently_peer.py``.

Two configurations, each with the same test per column on both sides:

* ``auto``: both automatic choices, which at this size are the normalised Wasserstein
  distance (numeric) and the Jensen-Shannon distance (categorical);
* ``pvalue``: forced KS (numeric) and chi-square (categorical; ours with
  ``flavor="evidently"``, Evidently's goodness-of-fit test), on ``--pvalue-rows`` rows
  (default 10⁵: at 10⁶ rows every drifted p-value is 0, and Evidently needs minutes a run).

Each side is timed over ``--runs`` runs after one warm-up run (Evidently's warm-up runs on a
20 000-row slice: it pays imports and registries, not the work); the medians and the ratio
Evidently / ours are printed, with every column's score on both sides and the largest
difference. A full run takes about 6 minutes on 2 cores, nearly all of it Evidently's.
``--quick`` runs 10⁵ and 10⁴ rows, for a smoke run. Exit 1 when a test or a score differs.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from quality.drift_tests import drift_table  # noqa: E402

PEERS_PYTHON = ROOT / "bench" / ".peers-venv" / "bin" / "python"
PEER = ROOT / "bench" / "evidently_peer.py"
DATA = ROOT / "bench" / ".data"
N_NUM = N_CAT = 10
DRIFTED = 3  # the first three numeric and the first three categorical columns drift
METHOD_NAMES = {
    "Wasserstein distance (normed)": "wasserstein",
    "Jensen-Shannon distance": "jensenshannon",
    "K-S p_value": "ks",
    "chi-square p_value": "chisquare",
}
CONFIGS = {
    "auto": {"ours": {}, "peer": []},
    "pvalue": {
        "ours": {"tests": "ks/chisquare", "flavor": "evidently"},
        "peer": ["--num-method", "ks", "--cat-method", "chisquare"],
    },
}


def make_frames(rows: int, seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Reference and current frames; drift in num0-num2 and cat0-cat2."""
    rng = np.random.default_rng(seed)

    def frame(drift: bool) -> pd.DataFrame:
        cols: dict[str, np.ndarray] = {}
        for i in range(N_NUM):
            shift = 0.05 * (i + 1) if drift and i < DRIFTED else 0.0
            scale = 1.1 if drift and i == 0 else 1.0
            cols[f"num{i}"] = rng.normal(shift, scale, rows)
        for i in range(N_CAT):
            labels = np.array([f"c{j:02d}" for j in range(3 + i)])
            p = np.ones(labels.size)
            if drift and i < DRIFTED:
                p[0] += 0.15 * (i + 1)
            cols[f"cat{i}"] = labels[rng.choice(labels.size, rows, p=p / p.sum())]
        return pd.DataFrame(cols)

    return frame(False), frame(True)


def ensure_data(rows: int) -> Path:
    folder = DATA / f"drift-{rows}"
    if not (folder / "current.parquet").exists():
        folder.mkdir(parents=True, exist_ok=True)
        reference, current = make_frames(rows)
        reference.to_parquet(folder / "reference.parquet")
        current.to_parquet(folder / "current.parquet")
    return folder


def ours(
    reference: pd.DataFrame, current: pd.DataFrame, config: dict, runs: int
) -> tuple[list[float], pd.DataFrame]:
    kwargs: dict = {}
    if config.get("tests"):
        num, cat = config["tests"].split("/")
        kwargs["tests"] = {c: (num if c.startswith("num") else cat) for c in reference.columns}
    if config.get("flavor"):
        kwargs["flavor"] = config["flavor"]
    drift_table(reference, current, **kwargs)  # warm-up
    seconds, table = [], None
    for _ in range(runs):
        start = time.perf_counter()
        table = drift_table(reference, current, **kwargs)
        seconds.append(time.perf_counter() - start)
    return seconds, table


def peer(folder: Path, args: list[str], runs: int) -> dict:
    res = subprocess.run(
        [str(PEERS_PYTHON), str(PEER), "report", str(folder), "--runs", str(runs), *args],
        capture_output=True,
        text=True,
        check=False,
    )
    if res.returncode != 0:
        raise SystemExit(f"Evidently peer failed:\n{res.stderr[-3000:]}")
    return json.loads(res.stdout)


def compare(table: pd.DataFrame, theirs: dict) -> tuple[pd.DataFrame, float]:
    rows = []
    for col in theirs["columns"]:
        ours_row = table.set_index("column").loc[col["column"]]
        value = ours_row["p_value"] if ours_row["kind"] == "p_value" else ours_row["statistic"]
        rows.append(
            {
                "column": col["column"],
                "test (ours)": ours_row["test"],
                "test (Evidently)": METHOD_NAMES.get(col["method"], col["method"]),
                "ours": float(value),
                "Evidently": col["score"],
                "abs diff": abs(float(value) - col["score"]),
            }
        )
    frame = pd.DataFrame(rows)
    return frame, float(frame["abs diff"].max())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000, help="rows per frame (auto)")
    parser.add_argument("--pvalue-rows", type=int, default=100_000, help="rows per frame (pvalue)")
    parser.add_argument("--runs", type=int, default=3, help="timed runs per side")
    parser.add_argument("--quick", action="store_true", help="10^5 and 10^4 rows")
    parser.add_argument("--configs", default="auto,pvalue", help="comma list: auto, pvalue")
    args = parser.parse_args(argv)
    sizes = {"auto": args.rows, "pvalue": args.pvalue_rows}
    if args.quick:
        sizes = {"auto": 100_000, "pvalue": 10_000}
    if not PEERS_PYTHON.exists():
        print("the peers venv is missing: run `bash bench/peers_venv.sh` first", file=sys.stderr)
        return 2
    pd.set_option("display.width", 160)
    status = 0
    for name in args.configs.split(","):
        config, rows = CONFIGS[name], sizes[name]
        folder = ensure_data(rows)
        reference = pd.read_parquet(folder / "reference.parquet")
        current = pd.read_parquet(folder / "current.parquet")
        what = "automatic choice" if name == "auto" else "KS + chi-square"
        print(
            f"\n== {name}: {what}; {rows:,} vs {rows:,} rows × {N_NUM} numeric + {N_CAT} "
            "categorical columns ==",
            flush=True,
        )
        ours_s, table = ours(reference, current, config["ours"], args.runs)
        theirs = peer(folder, config["peer"], args.runs)
        scores, worst = compare(table, theirs)
        print(scores.to_string(index=False, float_format=lambda v: f"{v:.6g}"))
        same_tests = bool((scores["test (ours)"] == scores["test (Evidently)"]).all())
        ours_med, peer_med = statistics.median(ours_s), statistics.median(theirs["seconds"])
        print(f"same test per column: {same_tests}; largest |difference|: {worst:.3g}")
        print(f"ours:      median {ours_med:.2f} s of {[round(s, 2) for s in ours_s]}")
        print(
            f"Evidently: median {peer_med:.2f} s of {[round(s, 2) for s in theirs['seconds']]}, "
            f"peak RSS {theirs['peak_rss_mib']:.0f} MiB (evidently {theirs['evidently']}, "
            f"pandas {theirs['pandas']})"
        )
        print(f"ratio Evidently / ours: {peer_med / ours_med:.1f}x", flush=True)
        if not same_tests or worst > 1e-9:
            status = 1
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"\nour process peak RSS (data of both frames included): {rss:.0f} MiB")
    return status


if __name__ == "__main__":
    raise SystemExit(main())
