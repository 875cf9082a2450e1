"""Benchmark: our DawidSkene against crowd-kit's, on 10⁶ simulated annotations.

Run: ``.venv/bin/python bench/agreement_consensus.py [--items 200000] [--rounds 3]``

Data: 200,000 items, 30 annotators, 5 classes, 5 distinct annotators per item (10⁶ rows),
skewed class priors and a random confusion matrix per annotator (fixed seed). Both models get
the same long frame, once with integer ids and once with string ids (``"item123"``, ``"ann7"``;
labels stay integers), in the same run. After one warm-up of ours, ``--rounds`` rounds (default 3) each time ours
once and crowd-kit once, alternating so that both see the same machine load; medians are
reported. Goal: ≥ 10× faster with ≥ 99.5 % identical labels.

crowd-kit is a test/bench dependency only, installed without its heavy extras::

    .venv/bin/pip install attrs scikit-learn tqdm nltk
    .venv/bin/pip install --no-deps crowd-kit==1.4.2
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from quality.agreement.consensus import DawidSkene

CROWDKIT_SPEC = "crowd-kit==1.4.2"


def simulate(
    n_items: int, n_annotators: int, n_classes: int, per_item: int, seed: int
) -> tuple[pd.DataFrame, np.ndarray]:
    """Long labels from known confusion matrices; returns (frame, true class per item)."""
    rng = np.random.default_rng(seed)
    prior = rng.dirichlet(np.full(n_classes, 2.0))
    truth = rng.choice(n_classes, size=n_items, p=prior)
    # Accuracy 0.45..0.95 on the diagonal, the rest spread by a Dirichlet.
    acc = rng.uniform(0.45, 0.95, size=(n_annotators, n_classes))
    off = rng.dirichlet(np.ones(n_classes - 1), size=(n_annotators, n_classes))
    conf = np.empty((n_annotators, n_classes, n_classes))
    for c in range(n_classes):  # loop over classes (5), not over data
        others = [k for k in range(n_classes) if k != c]
        conf[:, c, c] = acc[:, c]
        conf[:, c, others] = (1.0 - acc[:, c])[:, None] * off[:, c, :]
    who = np.argsort(rng.random((n_items, n_annotators)), axis=1)[:, :per_item]
    item = np.repeat(np.arange(n_items), per_item)
    ann = who.ravel()
    cum = np.cumsum(conf[ann, truth[item]], axis=1)
    label = (rng.random(item.size)[:, None] > cum[:, :-1]).sum(axis=1)
    df = pd.DataFrame({"item_id": item, "annotator_id": ann, "label": label})
    return df, truth


def run_case(name: str, df: pd.DataFrame, rounds: int) -> dict[str, float]:
    """Time ours and crowd-kit in alternating rounds (one warm-up of ours first).

    Alternating keeps both exposed to the same machine load, which drifts on shared hosts.
    """
    from crowdkit.aggregation import DawidSkene as PeerDS

    peer_df = df.rename(columns={"item_id": "task", "annotator_id": "worker"})
    ours, peer = DawidSkene(n_iter=100, tol=1e-5), PeerDS(n_iter=100, tol=1e-5)
    ours.fit(df)  # warm-up
    t_ours: list[float] = []
    t_peer: list[float] = []
    peer_labels = pd.Series(dtype=object)
    for _ in range(rounds):
        t0 = time.perf_counter()
        ours.fit(df)
        t_ours.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        peer_labels = peer.fit_predict(peer_df)
        t_peer.append(time.perf_counter() - t0)

    med_ours, med_peer = statistics.median(t_ours), statistics.median(t_peer)
    peer_labels = peer_labels.reindex(ours.labels_.index)
    same = float((peer_labels.to_numpy() == ours.labels_.to_numpy()).mean())
    ratio = med_peer / med_ours
    print(
        f"{name:>8} ids | ours {med_ours:6.3f} s (min {min(t_ours):.3f}; {ours.n_iter_} it) | "
        f"crowd-kit {med_peer:6.3f} s (min {min(t_peer):.3f}; {len(peer.loss_history_)} it) | "
        f"ratio {ratio:5.1f}x (goal ≥ 10) | identical labels {same:.4%} (goal ≥ 99.5 %)"
    )
    return {"ours_s": med_ours, "peer_s": med_peer, "ratio": ratio, "identical": same}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--items", type=int, default=200_000)
    ap.add_argument("--annotators", type=int, default=30)
    ap.add_argument("--classes", type=int, default=5)
    ap.add_argument("--per-item", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--rounds", type=int, default=3, help="timed rounds (ours, then crowd-kit)")
    ap.add_argument("--no-strings", action="store_true", help="skip the string-id case")
    args = ap.parse_args(argv)
    try:
        import crowdkit.aggregation  # noqa: F401
    except ImportError:
        print(
            "crowd-kit is missing: .venv/bin/pip install attrs scikit-learn tqdm nltk && "
            f".venv/bin/pip install --no-deps {CROWDKIT_SPEC}",
            file=sys.stderr,
        )
        return 2

    df, truth = simulate(args.items, args.annotators, args.classes, args.per_item, args.seed)
    print(
        f"Dawid-Skene: {len(df):,} annotations, {args.items:,} items, {args.annotators} "
        f"annotators, {args.classes} classes; n_iter=100, tol=1e-5; pandas {pd.__version__}"
    )
    results = {"integer": run_case("integer", df, args.rounds)}
    ours = DawidSkene().fit(df)
    acc = float((ours.labels_.to_numpy() == truth).mean())
    print(f"         accuracy against the simulated truth: ours {acc:.4%}")
    if not args.no_strings:
        sdf = pd.DataFrame(
            {
                "item_id": "item" + df["item_id"].astype(str),
                "annotator_id": "ann" + df["annotator_id"].astype(str),
                "label": df["label"],
            }
        )
        results["string"] = run_case("string", sdf, args.rounds)
    ok = all(r["ratio"] >= 10 and r["identical"] >= 0.995 for r in results.values())
    print("goals met" if ok else "GOALS NOT MET")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
