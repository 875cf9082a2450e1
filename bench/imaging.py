"""Benchmark of the batched image-quality metrics against a per-image numpy/skimage loop.

Usage::

    .venv/bin/python bench/imaging.py [--n 200] [--batch-size 32] [--threads 2] [--quick]
                                      [--with-cnn]

On the same ``N`` synthetic 512 x 512 chest phantoms (``quality.demo.phantoms``, fixed seed,
float32, detector noise, a fifth of them degraded: blur, noise, under/over-exposure,
inversion), in the same process, it times

* **ours**: :func:`quality.imaging.metrics.compute_all` on CPU, in batches of
  ``--batch-size``, all 17 ``image_quality`` columns;
* **baseline (same metrics)**: ``tests/imaging/reference_metrics.compute_all`` image by image
  (numpy/scipy/skimage in float64: ``ndimage.laplace``/``sobel``, Immerkær by
  ``ndimage.correlate``, ``threshold_otsu``, class statistics, MRIQC's EFC,
  ``shannon_entropy`` on the 8-bit quantised image, ``np.percentile``, ...);
* **baseline MRQy style**: the same loop with ``skimage.restoration.estimate_sigma`` (wavelet
  MAD) for the noise, as MRQy-like tools do;
* **ours on CUDA**, when ``torch.cuda.is_available()``.

Each is warmed up; then the contenders run interleaved, one call each per round for
``--runs`` (3) rounds, and the median is reported as images/s, with the
ratio ours / baseline (goal: >= 5x on CPU; >= 2000 images/s on a GPU at 512 x 512). It also
prints the largest relative difference per column between ours and the same-metrics
baseline, so a speed-up never hides a wrong value.

``--threads 1,2`` times ours with each ``torch.set_num_threads`` value and takes the best for
the ratio. The reference machine has 2 cores shared with other processes: the numpy loop is
single-threaded (scipy/skimage filters are), and with 2 torch threads every parallel region
waits whenever the scheduler has parked one of them, so 1 thread is often faster there.

``--with-cnn`` also times the learned model (``quality.imaging.model``: preprocessing to its
input size plus ``predict``) on CPU, with the best thread count, and prints metrics + CNN
together; it errors out "not available yet" where that module does not exist.
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from numpy.typing import NDArray

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from quality.demo import phantoms  # noqa: E402
from quality.imaging import metrics  # noqa: E402
from tests.imaging import reference_metrics as reference  # noqa: E402

SIZE = 512
DEGRADATIONS = ("blur", "noise", "under_exposure", "over_exposure", "inverted")


def make_phantoms(n: int, seed: int = 0, size: int = SIZE) -> NDArray[np.float32]:
    """``n`` chest phantoms (n, size, size) float32; every fifth one is degraded."""
    rng = np.random.default_rng(seed)
    out = np.empty((n, size, size), np.float32)
    for i in range(n):
        img = phantoms.chest_radiograph(rng, phantoms.chest_anatomy(rng), None, size, size)
        if i % 5 == 4:
            kind = DEGRADATIONS[(i // 5) % len(DEGRADATIONS)]
            img, _ = phantoms.degrade(img, kind, rng, scale=size / 512)
        out[i] = img
    return out


def timed(fn: Callable[[], object], runs: int) -> float:
    """Median wall time of ``runs`` calls (after the caller's warm-up)."""
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def ours_cpu(x: torch.Tensor, batch_size: int) -> dict[str, torch.Tensor]:
    parts = [
        metrics.compute_all(x[i : i + batch_size], bits_stored=12)
        for i in range(0, x.shape[0], batch_size)
    ]
    return {k: torch.cat([p[k] for p in parts]) for k in metrics.METRIC_COLUMNS}


def baseline(
    images: NDArray[np.float32], fn: Callable[..., dict[str, float]]
) -> dict[str, NDArray[np.float64]]:
    rows = [fn(img, 12) for img in images]
    return {k: np.array([r[k] for r in rows], dtype=np.float64) for k in reference.COLUMNS}


def bench_cuda(x: torch.Tensor, batch_size: int, runs: int) -> float:
    """Images/s of ``compute_all`` on CUDA, data already on the device."""
    xd = x.cuda()

    def run() -> None:
        for i in range(0, xd.shape[0], batch_size):
            metrics.compute_all(xd[i : i + batch_size], bits_stored=12)
        torch.cuda.synchronize()

    run()
    return xd.shape[0] / timed(run, runs)


def _with_threads(t: int, fn: Callable[[], object]) -> Callable[[], object]:
    def run() -> object:
        torch.set_num_threads(t)
        return fn()

    return run


# --------------------------------------------------------------------------- CNN


def bench_cnn(images: NDArray[np.float32], batch_size: int, runs: int) -> float:
    """Images/s of the learned quality model on CPU (shipped weights, eval mode).

    Includes its preprocessing (resize to ``INPUT_SIZE`` on a square canvas) from the 12-bit
    phantoms scaled to [0, 1], as the scorer feeds it display images.
    """
    if importlib.util.find_spec("quality.imaging.model") is None:
        raise SystemExit("--with-cnn: not available yet (quality.imaging.model does not exist)")
    from quality.imaging import model as iqa

    net = iqa.load_model(device="cpu")
    scaled = [img / np.float32(phantoms.MAX_12BIT) for img in images]

    def run() -> None:
        for i in range(0, len(scaled), batch_size):
            iqa.predict(net, iqa.preprocess(scaled[i : i + batch_size]), batch_size=batch_size)

    iqa.predict(net, iqa.preprocess(scaled[:batch_size]), batch_size=batch_size)
    return len(scaled) / timed(run, runs)


# --------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=200, help="number of 512x512 images")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--cuda-batch-size", type=int, default=200)
    parser.add_argument(
        "--threads", default="1,2", help="comma-separated torch.set_num_threads values to time"
    )
    parser.add_argument("--runs", type=int, default=3, help="timed runs (median)")
    parser.add_argument("--quick", action="store_true", help="40 images, one baseline")
    parser.add_argument("--with-cnn", action="store_true", help="also time the CNN")
    args = parser.parse_args(argv)
    n = 40 if args.quick else args.n
    threads = [int(t) for t in args.threads.split(",")]
    if args.with_cnn and importlib.util.find_spec("quality.imaging.model") is None:
        parser.error("--with-cnn: not available yet (quality.imaging.model does not exist)")

    t0 = time.perf_counter()
    images = make_phantoms(n)
    x = torch.from_numpy(images)[:, None]
    print(
        f"{n} phantoms {SIZE}x{SIZE} float32 in {time.perf_counter() - t0:.1f} s; "
        f"torch {torch.__version__}",
        flush=True,
    )

    # Contenders run interleaved, one call each per round, so that a change of load on a
    # shared machine hits all of them alike; each figure is the median over the rounds.
    contenders: dict[str, Callable[[], object]] = {}
    for t in threads:
        contenders[f"ours, CPU, batch {args.batch_size}, {t} thread(s)"] = _with_threads(
            t, lambda: ours_cpu(x, args.batch_size)
        )
    contenders["baseline, same metrics (numpy)"] = lambda: baseline(images, reference.compute_all)
    if not args.quick:
        contenders["baseline, MRQy (estimate_sigma)"] = lambda: baseline(
            images, reference.compute_all_mrqy
        )
    warm = images[: min(8, n)]
    for t in threads:
        _with_threads(t, lambda: ours_cpu(x[: len(warm)], args.batch_size))()
    baseline(warm, reference.compute_all)
    baseline(warm, reference.compute_all_mrqy)
    times: dict[str, list[float]] = {k: [] for k in contenders}
    for _ in range(args.runs):
        for name, fn in contenders.items():
            times[name].append(timed(fn, 1))
    ips = {name: n / statistics.median(ts) for name, ts in times.items()}
    for name, v in ips.items():
        print(f"{name:40s} {v:8.1f} images/s")
    ours_ips = {t: ips[f"ours, CPU, batch {args.batch_size}, {t} thread(s)"] for t in threads}
    best_threads = max(ours_ips, key=ours_ips.__getitem__)
    ips_ours = ours_ips[best_threads]
    ips_ref = ips["baseline, same metrics (numpy)"]
    ips_mrqy = ips.get("baseline, MRQy (estimate_sigma)")
    torch.set_num_threads(best_threads)
    ours = ours_cpu(x, args.batch_size)
    ref = baseline(images, reference.compute_all)

    print(
        f"ratio ours ({best_threads} thread(s)) / same-metrics baseline: "
        f"{ips_ours / ips_ref:.1f}x (goal >= 5x)"
    )
    if ips_mrqy is not None:
        print(f"ratio ours / MRQy-style baseline:   {ips_ours / ips_mrqy:.1f}x")

    print("agreement, ours vs same-metrics baseline (largest over the images):")
    fine = (images.max(axis=(1, 2)) - images.min(axis=(1, 2))).astype(np.float64) / 4096
    for k in metrics.METRIC_COLUMNS:
        a = ours[k].double().numpy()
        b = ref[k]
        ok = np.isfinite(a) & np.isfinite(b)
        nan_mismatch = int((np.isnan(a) != np.isnan(b)).sum())
        if k in ("p01", "p99"):
            err = float(np.max(np.abs(a[ok] - b[ok]) / fine[ok])) if ok.any() else 0.0
            unit = "fine histogram bins"
        else:
            rel = np.abs(a[ok] - b[ok]) / np.maximum(np.abs(b[ok]), 1e-12)
            err, unit = (float(np.max(rel)) if ok.any() else 0.0), "relative"
        print(f"  {k:14s} {err:.1e} {unit}  (NaN mismatches: {nan_mismatch})")

    if torch.cuda.is_available():
        ips_cuda = bench_cuda(x, args.cuda_batch_size, args.runs)
        name = torch.cuda.get_device_name()
        print(
            f"ours, CUDA ({name}), batch {args.cuda_batch_size}: {ips_cuda:.0f} images/s "
            "(goal >= 2000)"
        )
    else:
        print("CUDA: not available, GPU figure skipped")

    if args.with_cnn:
        torch.set_num_threads(best_threads)
        ips_cnn = bench_cnn(images, args.batch_size, args.runs)
        both = 1 / (1 / ips_ours + 1 / ips_cnn)
        print(
            f"CNN, CPU, {best_threads} thread(s): {ips_cnn:.1f} images/s; "
            f"metrics + CNN: {both:.1f} images/s "
            f"({both / ips_ref:.1f}x the same-metrics baseline)"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
