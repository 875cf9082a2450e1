"""Benchmark: ``quality rank`` (active-learning worklists) with 10⁵ unlabeled images.

Usage::

    .venv/bin/python bench/rank.py [--unlabeled 100000] [--labelled 1000] [--dim 64]
                                   [--budget 500] [--runs 3] [--full-n 10000]

What is timed, on the very same input (medians of ``--runs`` timed calls after one warm-up):

1. **End to end**: :func:`quality.models.build_worklist` on a temporary SQLite DB filled by
   bulk inserts with ``--unlabeled`` unannotated images and ``--labelled`` annotated ones in one
   dataset, three versions of one model scoring every image, and ``--dim``-d embeddings in a
   ``.npz`` file with ``image_quality`` rows pointing at them (as ``quality score`` writes
   them). Each strategy with ``--budget`` images. The **SQL fetch** (pool + scores, committee
   scores, embedding refs + file read) is also timed alone, so the ranking core's share shows.
2. **Ranking core on arrays** against **naive peers**, each on the same arrays:

   * entropy (+ ordering): ours (vectorised) vs a per-image loop of
     ``scipy.stats.entropy([1 - p, p])`` and vs a vectorised ``scipy.stats.entropy(axis=1)``;
   * committee (mean KL to the consensus of 3 versions): ours vs a per-image loop of
     ``scipy.stats.entropy(p_m, p_mean)``;
   * diversity, k-center greedy on ``n × dim`` float embeddings, budget ``--budget``, seeded
     with the ``--labelled`` embeddings: ours (float32, one mat-vec per pick) vs (a) the
     per-pick ``scipy.spatial.distance.cdist(X, X[[i]])`` loop, (b) the per-pick
     ``sklearn.metrics.pairwise_distances`` loop of Google's active-learning
     ``kCenterGreedy``, and (c) the full-matrix version (``cdist(X, X)`` once, then picks) on
     ``--full-n`` points only: at 10⁵ points its float64 matrix would need 80 GB.

``ratio`` is peer time / our time (above 1: we are faster). For k-center the number of picks
equal to the peer's (same algorithm, float32 vs float64 distances) and the covering radius
reached are printed too. Seeds are fixed; absolute times drift on shared machines, read the
ratios.
"""

from __future__ import annotations

import argparse
import datetime as dt
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from scipy.spatial.distance import cdist
from scipy.stats import entropy as sp_entropy
from sklearn.metrics import pairwise_distances
from sqlalchemy import insert
from sqlalchemy.orm import Session

from quality import models
from quality.db.schema import (
    Annotation,
    Annotator,
    Dataset,
    DatasetItem,
    DatasetVersion,
    Image,
    ImageQuality,
    LabelingTask,
    Model,
    ModelVersion,
    Prediction,
    Series,
    Source,
    Study,
)
from quality.db.session import make_engine, upgrade

IMAGES_PER_STUDY = 10
CHUNK = 20_000


def measure(fn: Callable[[], Any], runs: int) -> tuple[float, Any]:
    """(median seconds over ``runs`` after one warm-up, the value returned)."""
    value = fn()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), value


def once(fn: Callable[[], Any]) -> tuple[float, Any]:
    """(seconds of one call, its value): for the slow pure-Python peers, where a warm-up
    and repeats would cost minutes and change nothing measurable."""
    start = time.perf_counter()
    value = fn()
    return time.perf_counter() - start, value


def _bulk(session: Session, table: Any, rows: list[dict[str, Any]]) -> None:
    for start in range(0, len(rows), CHUNK):
        session.execute(insert(table), rows[start : start + CHUNK])


def build_db(
    folder: Path, n_unlabeled: int, n_labelled: int, dim: int, seed: int = 0
) -> tuple[str, dict[str, Any]]:
    """Fill a SQLite DB under ``folder``; return its URL and the ids and arrays used."""
    rng = np.random.default_rng(seed)
    url = f"sqlite:///{folder / 'rank.db'}"
    engine = make_engine(url)
    upgrade(engine)
    n = n_unlabeled + n_labelled
    t0 = time.perf_counter()
    with Session(engine) as s:
        _bulk(s, Source, [{"id": k + 1, "name": f"site{k}"} for k in range(4)])
        n_studies = -(-n // IMAGES_PER_STUDY)
        _bulk(s, Study, [
            {"id": k + 1, "study_uid": f"1.2.3.{k}", "patient_key": f"p{k}", "modality": "DX",
             "source_id": k % 4 + 1}
            for k in range(n_studies)
        ])  # fmt: skip
        _bulk(s, Series, [
            {"id": k + 1, "series_uid": f"1.2.4.{k}", "study_id": k + 1} for k in range(n_studies)
        ])  # fmt: skip
        _bulk(s, Image, [
            {"id": i + 1, "sop_uid": f"1.2.5.{i}", "series_id": i // IMAGES_PER_STUDY + 1,
             "uri": f"/bench/{i}.dcm", "header": {}}
            for i in range(n)
        ])  # fmt: skip
        s.execute(insert(Dataset), [{"id": 1, "name": "bench"}])
        s.execute(insert(DatasetVersion), [{"id": 1, "dataset_id": 1, "version": "v1",
                                            "content_hash": "0" * 64}])  # fmt: skip
        _bulk(s, DatasetItem, [
            {"version_id": 1, "image_id": i + 1, "split": "train"} for i in range(n)
        ])  # fmt: skip
        s.execute(insert(LabelingTask), [{"id": 1, "dataset_id": 1, "name": "finding",
                                          "kind": "classification",
                                          "classes": ["normal", "finding"]}])  # fmt: skip
        s.execute(insert(Annotator), [{"id": 1, "code": "D01", "kind": "doctor"}])
        now = dt.datetime(2024, 1, 1, tzinfo=dt.UTC)
        # The labelled images are the last n_labelled ids.
        _bulk(s, Annotation, [
            {"task_id": 1, "image_id": i + 1, "annotator_id": 1, "label": "normal",
             "created_at": now}
            for i in range(n_unlabeled, n)
        ])  # fmt: skip
        s.execute(insert(Model), [{"id": 1, "name": "bench-model", "task_id": 1}])
        s.execute(insert(ModelVersion), [
            {"id": v, "model_id": 1, "version": f"v{v}", "status": st}
            for v, st in ((1, "production"), (2, "shadow"), (3, "candidate"))
        ])  # fmt: skip
        logit = rng.normal(0, 2, n)
        scores = np.stack([1 / (1 + np.exp(-(logit + rng.normal(0, 0.7, n)))) for _ in range(3)])
        scores = np.round(scores, 4)
        for v in range(3):
            _bulk(s, Prediction, [
                {"model_version_id": v + 1, "image_id": i + 1, "score": float(scores[v, i]),
                 "label": "finding" if scores[v, i] >= 0.5 else "normal", "latency_ms": 80.0,
                 "created_at": now}
                for i in range(n)
            ])  # fmt: skip
        emb = rng.normal(size=(n, dim)).astype(np.float32)
        (folder / "embeddings" / "bench").mkdir(parents=True)
        np.savez(folder / "embeddings" / "bench" / "e.npz", image_id=np.arange(1, n + 1),
                 embedding=emb)  # fmt: skip
        _bulk(s, ImageQuality, [
            {"image_id": i + 1, "scorer_version": "bench", "embedding_ref": f"bench/e.npz#{i}"}
            for i in range(n)
        ])  # fmt: skip
        s.commit()
    engine.dispose()
    print(f"filled {url} in {time.perf_counter() - t0:.1f} s: {n:,} images "
          f"({n_unlabeled:,} unlabeled), {3 * n:,} predictions, {dim}-d embeddings")  # fmt: skip
    return url, {"scores": scores, "emb": emb, "n_unlabeled": n_unlabeled}


# --------------------------------------------------------------------------- peers


def peer_entropy_loop(p: NDArray[np.float64]) -> NDArray[np.intp]:
    h = np.array([sp_entropy([1.0 - x, x], base=2) for x in p])
    return np.argsort(-h, kind="stable")


def peer_entropy_scipy(p: NDArray[np.float64]) -> NDArray[np.intp]:
    h = sp_entropy(np.stack([1.0 - p, p], axis=1), base=2, axis=1)
    return np.argsort(-h, kind="stable")


def ours_entropy(p: NDArray[np.float64]) -> NDArray[np.intp]:
    return np.argsort(-models.entropy_scores(p), kind="stable")


def peer_committee_loop(s: NDArray[np.float64]) -> NDArray[np.float64]:
    out = np.empty(s.shape[1])
    for j in range(s.shape[1]):
        members = np.stack([1.0 - s[:, j], s[:, j]])  # (2 classes, m members)
        mean = members.mean(axis=1, keepdims=True)
        out[j] = sp_entropy(members, mean, axis=0).mean()  # one scipy call per image
    return out


def _peer_k_center(
    dist_to: Callable[[int], NDArray[np.float64]],
    init: NDArray[np.float64],
    budget: int,
) -> list[int]:
    """Greedy k-center with a caller-supplied distance column (the peers differ only there)."""
    min_d = init.copy()
    picks: list[int] = []
    for _ in range(budget):
        i = int(np.argmax(min_d))
        picks.append(i)
        min_d = np.minimum(min_d, dist_to(i))
        min_d[i] = -np.inf
    return picks


def peer_k_center_cdist(x: NDArray[np.float64], c: NDArray[np.float64], budget: int) -> list[int]:
    init = cdist(x, c).min(axis=1)
    return _peer_k_center(lambda i: cdist(x, x[[i]])[:, 0], init, budget)


def peer_k_center_sklearn(x: NDArray[np.float64], c: NDArray[np.float64], budget: int) -> list[int]:
    # google-research/active-learning sampling_methods/kcenter_greedy.py: update_distances
    init = pairwise_distances(x, c, metric="euclidean").min(axis=1)
    return _peer_k_center(
        lambda i: pairwise_distances(x, x[[i]], metric="euclidean")[:, 0], init, budget
    )


def peer_k_center_full(x: NDArray[np.float64], c: NDArray[np.float64], budget: int) -> list[int]:
    full = cdist(x, x)  # n × n, the memory wall
    init = cdist(x, c).min(axis=1)
    return _peer_k_center(lambda i: full[:, i], init, budget)


def radius(x: NDArray[np.float64], c: NDArray[np.float64], picks: list[int]) -> float:
    """Covering radius: the largest distance from a point to its nearest centre or pick."""
    centres = np.vstack([c, x[picks]])
    out = np.full(len(x), np.inf)
    for start in range(0, len(centres), 256):
        out = np.minimum(out, cdist(x, centres[start : start + 256]).min(axis=1))
    return float(out.max())


def row(name: str, ours: float, peer: float, extra: str = "") -> None:
    print(f"  {name:<46} ours {ours * 1e3:9.1f} ms   peer {peer * 1e3:10.1f} ms   "
          f"ratio {peer / ours:7.1f}x  {extra}")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--unlabeled", type=int, default=100_000)
    parser.add_argument("--labelled", type=int, default=1_000)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--budget", type=int, default=500)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--full-n", type=int, default=10_000)
    parser.add_argument("--loop-n", type=int, default=10_000)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-rank-") as tmp:
        folder = Path(tmp)
        url, arrays = build_db(folder, args.unlabeled, args.labelled, args.dim)
        engine = make_engine(url)
        emb_dir = folder / "embeddings"
        print(f"\n1. end to end: build_worklist, budget {args.budget}, SQLite "
              f"(median of {args.runs})")  # fmt: skip
        with Session(engine) as s:
            for strategy in models.STRATEGIES:
                t, w = measure(
                    lambda strategy=strategy: models.build_worklist(
                        s, 1, 1, strategy=strategy, budget=args.budget, embeddings_dir=emb_dir
                    ),
                    args.runs,
                )
                print(f"  {strategy:<10} {t:7.2f} s   ranked {w.n_ranked:,} of {w.n_pool:,}")
            t_pool, pool = measure(lambda: models._pool_frame(s, 1, 1, "unannotated", 1), args.runs)
            ids = pool["image_id"].to_numpy()
            version = models._version_refs(s, [1])[1]
            t_comm, _ = measure(
                lambda: models._committee_matrix(s, 1, 1, "unannotated", version, ids), args.runs
            )
            t_emb, _ = measure(
                lambda: models._pool_embeddings(s, 1, 1, 1, "unannotated", emb_dir), args.runs
            )
        engine.dispose()
        print(f"  SQL fetch alone: pool + scores {t_pool:.2f} s ({len(pool):,} rows); "
              f"committee scores {t_comm:.2f} s; embedding refs + .npz {t_emb:.2f} s")  # fmt: skip

    n = arrays["n_unlabeled"]
    p = arrays["scores"][0, :n]
    s3 = arrays["scores"][:, :n]
    print(f"\n2. ranking core on arrays, n = {n:,} (median of {args.runs})")
    t_ours, o = measure(lambda: ours_entropy(p), args.runs)
    t_sp, b = measure(lambda: peer_entropy_scipy(p), args.runs)
    row("entropy + order vs scipy.stats.entropy(axis=1)", t_ours, t_sp,
        f"same order: {np.array_equal(o, b)}")  # fmt: skip
    t_kl, _ = measure(lambda: models.committee_scores(s3), args.runs)
    print(f"  {'committee KL (3 versions)':<46} ours {t_kl * 1e3:9.1f} ms")
    # The per-image Python loops take ~1 ms an image here: timed once on the first --loop-n
    # images, against ours on the same images.
    m = min(args.loop_n, n)
    t_ours, o = measure(lambda: ours_entropy(p[:m]), args.runs)
    t_loop, a = once(lambda: peer_entropy_loop(p[:m]))
    row(f"entropy + order, n={m:,}, vs per-image scipy loop", t_ours, t_loop,
        f"same order: {np.array_equal(o, a)}")  # fmt: skip
    t_ours, kl_m = measure(lambda: models.committee_scores(s3[:, :m]), args.runs)
    t_loop, kl_peer = once(lambda: peer_committee_loop(s3[:, :m]))
    row(f"committee KL, n={m:,}, vs per-image scipy loop", t_ours, t_loop,
        f"max |diff| {np.abs(kl_m - kl_peer).max():.1e}")  # fmt: skip

    x32 = arrays["emb"][:n]
    c32 = arrays["emb"][n:]
    x64, c64 = x32.astype(np.float64), c32.astype(np.float64)
    budget = args.budget
    t_ours, (picks, _) = measure(
        lambda: models.k_center_greedy(x32, budget, centers=c32), args.runs
    )
    ours_r = radius(x64, c64, picks.tolist())
    print(f"  k-center, {n:,} × {args.dim}, {len(c32):,} labelled centres, budget {budget}: "
          f"ours {t_ours:.2f} s, covering radius {ours_r:.3f}")  # fmt: skip
    for name, peer in (("cdist per pick", peer_k_center_cdist),
                       ("sklearn pairwise_distances per pick", peer_k_center_sklearn)):  # fmt: skip
        t_peer, pp = once(lambda peer=peer: peer(x64, c64, budget))
        same = int(np.sum(np.asarray(pp) == picks))
        row(f"k-center vs {name} (1 run)", t_ours, t_peer,
            f"same picks {same}/{budget}, radius {radius(x64, c64, pp):.3f}")  # fmt: skip
    m = min(args.full_n, n)
    xs32, xs64 = x32[:m], x64[:m]  # the first --full-n points
    t_small, (small_picks, _) = measure(
        lambda: models.k_center_greedy(xs32, budget, centers=c32), args.runs
    )
    t_full, fp = once(lambda: peer_k_center_full(xs64, c64, budget))
    same = int(np.sum(np.asarray(fp) == small_picks))
    row(f"k-center n={m:,} vs full-matrix cdist (1 run)", t_small, t_full,
        f"same picks {same}/{budget}; at n={n:,} its matrix needs {n * n * 8 / 1e9:.0f} GB")  # fmt: skip


if __name__ == "__main__":
    main()
