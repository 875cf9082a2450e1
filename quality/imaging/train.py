"""Training of the IQA CNN on clean images with synthetic degradations applied on the fly.

Which function fits which need:

* :func:`run_training` - what ``quality train-iqa`` does: read the clean demo images, train,
  save the weights and write the model card;
* :func:`load_clean_images` - the clean demo images (truth file: no defects, chest or CT),
  decoded and display-windowed, as a tensor;
* :func:`train_iqa` - train on any tensor of clean images (tests use a few phantoms);
* :func:`degrade_batch` / :func:`quality_target` - the synthetic degradations and the quality
  score they imply, vectorised over a batch and seeded by a :class:`torch.Generator`;
* :func:`evaluate` - per-class accuracy and confusion on freshly degraded images;
* :func:`save_weights` / :func:`write_model_card` - the artefacts that ship.

Degradations
------------
They are applied to display-windowed images in [0, 1] at ``WORK_SIZE`` = 2 x
:data:`~quality.imaging.model.INPUT_SIZE` pixels (so a 512-pixel radiograph is seen at a
quarter of its resolution), and the result is then reduced to the network input with the
same anti-aliased resize as :func:`~quality.imaging.model.preprocess`. Each sample draws a
strength ``t ~ U(0, 1)``; pixel ranges are at ``WORK_SIZE`` (double them for 512 pixels):

========== ===================================================================================
class      transform
========== ===================================================================================
clean      identity
blur       Gaussian, sigma = 1.2 + 2.3 t px
noise      additive Gaussian sigma = 0.03 + 0.12 t, or (half of the samples) signal-dependent
           ``sigma (0.4 + x)`` (Poisson-like)
under_exp. ``a x^g`` with a = 0.5 - 0.35 t, g = 1 + 0.6 t, plus read-out noise sigma 0.004
over_exp.  ``clip(a x + b)`` with a = 1.6 + t, b ~ U(-0.05, 0.3): large saturated areas
inverted   ``1 - x``
cropped    a band of 30 + 25 t % of the image on a random side set to black (or white, 1 in 4),
           or (half of the samples) the content shifted out of the frame by as much
artifact   one of: stripes (period 3-12 px, amplitude 0.08 + 0.22 t), a grid, 1-4 dead
           detector lines (black or white, 1-3 px), a bright disc or ring (metal;
           radius 4 + 10 t % of the side)
========== ===================================================================================

Before that, every sample (clean ones too) gets nuisance variation that is *not* a defect:
a horizontal flip (p = 0.5) and a gamma of U(0.85, 1.15).

Quality target: 1 for clean; ``0.6 - 0.5 t`` for a degradation of strength ``t`` (so 0.6
for the mildest, 0.1 for the strongest); 0.3 for inverted (the image is intact but unusable
as presented).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812
from numpy.typing import NDArray
from torch import Tensor

from quality.errors import QualityError, TrainingDataError
from quality.imaging.model import (
    DEFECT_CLASSES,
    EMBED_DIM,
    INPUT_SIZE,
    SCORER_VERSION,
    WEIGHTS_PATH,
    IQANet,
    n_parameters,
    preprocess,
    resolve_device,
)

__all__ = [
    "CLEAN_KINDS",
    "WORK_SIZE",
    "TrainResult",
    "TrainingDataError",
    "degrade_batch",
    "evaluate",
    "load_clean_images",
    "quality_target",
    "run_training",
    "save_weights",
    "train_iqa",
    "write_model_card",
]

WORK_SIZE = 2 * INPUT_SIZE
"""Side at which clean images are cached and degraded, before the resize to INPUT_SIZE."""

CLEAN_KINDS: tuple[str, ...] = ("chest", "ct")
"""Truth-file ``kind`` values used as clean training images (when ``defects == []``)."""

Progress = Callable[[int, int, str], None]

_N_CLASSES = len(DEFECT_CLASSES)
_CLS = {name: i for i, name in enumerate(DEFECT_CLASSES)}


# --------------------------------------------------------------------------- data


def load_clean_images(
    data: Path | str, *, size: int = WORK_SIZE, progress: Progress | None = None
) -> tuple[Tensor, list[str]]:
    """The clean images of a demo data folder, display-windowed and resized.

    Parameters
    ----------
    data : folder written by ``quality demo`` (``demo_truth.json`` and the DICOMs).
    size : side of the cached square images (default :data:`WORK_SIZE`).
    progress : optional ``update(done, total, label)`` callback.

    Returns
    -------
    images : Tensor, shape (N, 1, size, size), float32 in [0, 1]
        :func:`quality.dicom.load_pixels` + :func:`quality.dicom.to_display` (frame 0), then
        :func:`~quality.imaging.model.preprocess` at ``size``; sorted by truth-file key.
    kinds : list of str, the truth-file ``kind`` of each image.

    Raises
    ------
    TrainingDataError
        No truth file, an unreadable clean image, or fewer than 10 clean images.
    """
    from quality.dicom import load_pixels, to_display

    root = Path(data)
    truth_path = root / "demo_truth.json"
    try:
        truth = json.loads(truth_path.read_text(encoding="utf-8"))
        records = truth["images"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise TrainingDataError(
            truth_path,
            f"cannot read the demo truth file ({type(exc).__name__}); "
            "run `quality demo --out <folder>` first",
        ) from exc
    dicom_root = root / str(truth.get("dicom_root", "dicom"))
    chosen = [
        (key, rec)
        for key, rec in sorted(records.items())
        if rec.get("defects") == [] and rec.get("kind") in CLEAN_KINDS
    ]
    if len(chosen) < 10:
        raise TrainingDataError(truth_path, f"only {len(chosen)} clean images; need >= 10")
    frames: list[NDArray[np.uint8]] = []
    kinds: list[str] = []
    for i, (_, rec) in enumerate(chosen):
        path = dicom_root / rec["path"]
        try:
            frames.append(to_display(load_pixels(path)))
        except (QualityError, ValueError) as exc:
            raise TrainingDataError(path, f"clean image cannot be decoded: {exc}") from exc
        kinds.append(str(rec["kind"]))
        if progress is not None and (i % 16 == 0 or i == len(chosen) - 1):
            progress(i + 1, len(chosen), "decode clean images")
    return preprocess(frames, size=size), kinds


# --------------------------------------------------------------------------- degradations


def _uniform(n: int, lo: float, hi: float, gen: torch.Generator) -> Tensor:
    return lo + (hi - lo) * torch.rand(n, generator=gen)


def _blur(x: Tensor, t: Tensor, gen: torch.Generator) -> Tensor:
    n, _, h, w = x.shape
    sigma = 1.2 + 2.3 * t
    radius = math.ceil(3 * float(sigma.max()))
    k = torch.arange(-radius, radius + 1, dtype=torch.float32)
    kern = torch.exp(-(k[None] ** 2) / (2 * sigma[:, None] ** 2))
    kern = kern / kern.sum(dim=1, keepdim=True)  # (n, 2r+1)
    # One grouped convolution per axis: sample i is channel i with its own kernel.
    y = F.pad(x.reshape(1, n, h, w), (radius, radius, radius, radius), mode="replicate")
    y = F.conv2d(y, kern.view(n, 1, -1, 1), groups=n)
    y = F.conv2d(y, kern.view(n, 1, 1, -1), groups=n)
    return y.reshape(n, 1, h, w)


def _noise(x: Tensor, t: Tensor, gen: torch.Generator) -> Tensor:
    n = x.shape[0]
    sigma = (0.03 + 0.12 * t).view(n, 1, 1, 1)
    poisson_like = (torch.rand(n, generator=gen) < 0.5).view(n, 1, 1, 1)
    scale = torch.where(poisson_like, sigma * (0.4 + x), sigma.expand_as(x))
    return x + scale * torch.randn(x.shape, generator=gen)


def _under(x: Tensor, t: Tensor, gen: torch.Generator) -> Tensor:
    n = x.shape[0]
    a = (0.5 - 0.35 * t).view(n, 1, 1, 1)
    g = (1.0 + 0.6 * t).view(n, 1, 1, 1)
    return a * x.clamp_min(0).pow(g) + 0.004 * torch.randn(x.shape, generator=gen)


def _over(x: Tensor, t: Tensor, gen: torch.Generator) -> Tensor:
    n = x.shape[0]
    a = (1.6 + t).view(n, 1, 1, 1)
    b = _uniform(n, -0.05, 0.3, gen).view(n, 1, 1, 1)
    return a * x + b


def _invert(x: Tensor, t: Tensor, gen: torch.Generator) -> Tensor:
    return 1.0 - x


def _crop(x: Tensor, t: Tensor, gen: torch.Generator) -> Tensor:
    n, _, h, w = x.shape
    frac = 0.30 + 0.25 * t
    side = torch.randint(0, 4, (n,), generator=gen)
    shift = torch.rand(n, generator=gen) < 0.5
    white = torch.rand(n, generator=gen) < 0.25
    out = x.clone()
    # A per-sample loop: the sub-batch is small and slicing is far cheaper than resampling.
    for i in range(n):
        s = int(side[i])
        length = h if s < 2 else w
        k = max(1, min(length - 1, round(float(frac[i]) * length)))
        img, o = x[i, 0], out[i, 0]
        if bool(shift[i]):
            # Content moved out of the field by k pixels towards side s; black comes in.
            o.zero_()
            if s == 0:
                o[: h - k] = img[k:]
            elif s == 1:
                o[k:] = img[: h - k]
            elif s == 2:
                o[:, : w - k] = img[:, k:]
            else:
                o[:, k:] = img[:, : w - k]
        else:
            # A side of the field left unexposed (black) or collimated (white).
            band = (slice(0, k), slice(None)) if s == 0 else (slice(h - k, h), slice(None))
            if s >= 2:
                band = (slice(None), slice(0, k)) if s == 2 else (slice(None), slice(w - k, w))
            o[band] = 1.0 if bool(white[i]) else 0.0
    return out


def _artifact(x: Tensor, t: Tensor, gen: torch.Generator) -> Tensor:
    n, _, h, w = x.shape
    mode = torch.randint(0, 4, (n,), generator=gen)
    amp = 0.08 + 0.22 * t
    period = _uniform(n, 3.0, 12.0, gen)
    phase = _uniform(n, 0.0, 2 * math.pi, gen)
    vertical = torch.rand(n, generator=gen) < 0.5
    n_lines = torch.randint(1, 5, (n,), generator=gen)
    pos = torch.rand(n, 4, generator=gen)
    width = torch.randint(1, 4, (n, 4), generator=gen)
    line_val = (torch.rand(n, generator=gen) < 0.5).float()
    cy, cx = _uniform(n, 0.2, 0.8, gen), _uniform(n, 0.2, 0.8, gen)
    r = 0.04 + 0.10 * t
    ring = torch.rand(n, generator=gen) < 0.5
    ys = torch.arange(h, dtype=torch.float32)
    xs = torch.arange(w, dtype=torch.float32)
    out = x.clone()
    # Per-sample loop over a small sub-batch; the patterns are separable (1-D) where possible.
    for i in range(n):
        m, img = int(mode[i]), x[i, 0]
        wave_x = torch.sin(2 * math.pi * xs / period[i] + phase[i])
        wave_y = torch.sin(2 * math.pi * ys / period[i] + phase[i])
        if m == 0:  # stripes (e.g. a failing grid or readout banding)
            pattern = wave_x[None, :] if bool(vertical[i]) else wave_y[:, None]
            out[i, 0] = img + amp[i] * pattern
        elif m == 1:  # grid
            out[i, 0] = img + 0.7 * amp[i] * (wave_x[None, :] + wave_y[:, None])
        elif m == 2:  # dead detector lines
            length = w if bool(vertical[i]) else h
            hit = torch.zeros(length, dtype=torch.bool)
            for j in range(int(n_lines[i])):
                start = int(pos[i, j] * (length - 3))
                hit[start : start + int(width[i, j])] = True
            o = img.clone()
            if bool(vertical[i]):
                o[:, hit] = line_val[i]
            else:
                o[hit, :] = line_val[i]
            out[i, 0] = o
        else:  # metal: a bright disc or ring
            d = torch.sqrt(
                ((ys[:, None] + 0.5) / h - cy[i]) ** 2 + ((xs[None] + 0.5) / w - cx[i]) ** 2
            )
            mask = (
                (d - r[i]).abs() < max(0.15 * float(r[i]), 1.5 / w) if bool(ring[i]) else d < r[i]
            )
            out[i, 0] = torch.where(mask, torch.ones_like(img), img)
    return out


_DEGRADE: dict[str, Callable[[Tensor, Tensor, torch.Generator], Tensor]] = {
    "blur": _blur,
    "noise": _noise,
    "under_exposed": _under,
    "over_exposed": _over,
    "inverted": _invert,
    "cropped": _crop,
    "artifact": _artifact,
}


def degrade_batch(
    x: Tensor,
    labels: Tensor,
    strength: Tensor,
    gen: torch.Generator,
    *,
    nuisance: bool = True,
    out_size: int | None = INPUT_SIZE,
) -> Tensor:
    """Apply the synthetic degradation of each sample's class (see the module docstring).

    Parameters
    ----------
    x : Tensor, shape (N, 1, H, W), float in [0, 1], on the CPU (clean images, ideally at
        :data:`WORK_SIZE`).
    labels : Tensor, shape (N,), int64 indices into :data:`DEFECT_CLASSES` (0 = clean).
    strength : Tensor, shape (N,), in [0, 1]: ``t`` of the module docstring.
    gen : CPU generator; every random draw comes from it, so a seed fixes the output.
    nuisance : apply the flip and gamma jitter first.
    out_size : resize the result to this side (anti-aliased); ``None`` keeps ``H, W``.

    Returns
    -------
    Tensor, shape (N, 1, out_size, out_size), float32 in [0, 1].

    Raises
    ------
    ValueError
        Shapes that do not match, or a label outside ``0..7``.
    """
    if x.ndim != 4 or x.shape[1] != 1:
        raise ValueError(f"x must have shape (N, 1, H, W), not {tuple(x.shape)}")
    n = x.shape[0]
    if labels.shape != (n,) or strength.shape != (n,):
        raise ValueError(
            f"labels and strength must have shape ({n},), not "
            f"{tuple(labels.shape)} and {tuple(strength.shape)}"
        )
    if n and (int(labels.min()) < 0 or int(labels.max()) >= _N_CLASSES):
        raise ValueError(f"labels must lie in 0..{_N_CLASSES - 1}")
    x = x.float()
    out = x.clone()
    # Fixed class order, so the generator's draws do not depend on the batch's label order
    # beyond the labels themselves.
    for name, fn in _DEGRADE.items():
        idx = (labels == _CLS[name]).nonzero(as_tuple=True)[0]
        if len(idx):
            out[idx] = fn(x[idx], strength[idx].float(), gen)
    out = out.clamp_(0.0, 1.0)
    if out_size is not None and out.shape[-2:] != (out_size, out_size):
        out = F.interpolate(
            out, size=(out_size, out_size), mode="bilinear", antialias=True, align_corners=False
        ).clamp_(0.0, 1.0)
    if nuisance and n:
        # After the resize, at a quarter of the pixels: the jitter is cheap there and
        # commutes with the degradations closely enough for a nuisance.
        flip = (torch.rand(n, generator=gen) < 0.5).view(n, 1, 1, 1)
        out = torch.where(flip, out.flip(-1), out)
        gamma = _uniform(n, 0.85, 1.15, gen).view(n, 1, 1, 1)
        out = out.pow(gamma)
    return out


def quality_target(labels: Tensor, strength: Tensor) -> Tensor:
    """Quality score implied by a degradation: 1 clean, ``0.6 - 0.5 t`` degraded, 0.3 inverted.

    Parameters
    ----------
    labels : Tensor, shape (N,), indices into :data:`DEFECT_CLASSES`.
    strength : Tensor, shape (N,), in [0, 1].

    Returns
    -------
    Tensor, shape (N,), float32 in [0.1, 1].
    """
    q = 0.6 - 0.5 * strength.float()
    q = torch.where(labels == _CLS["inverted"], torch.full_like(q, 0.3), q)
    return torch.where(labels == _CLS["clean"], torch.ones_like(q), q)


# --------------------------------------------------------------------------- training


@contextlib.contextmanager
def _torch_determinism(threads: int) -> Iterator[None]:
    """Deterministic kernels and a fixed thread count, restored on exit."""
    old_threads = torch.get_num_threads()
    old_det = torch.are_deterministic_algorithms_enabled()
    old_warn = torch.is_deterministic_algorithms_warn_only_enabled()
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(old_det, warn_only=old_warn)
        torch.set_num_threads(old_threads)


@dataclass
class TrainResult:
    """Outcome of :func:`train_iqa`.

    Attributes
    ----------
    model : the trained network, in eval mode, on the CPU.
    seed, epochs, steps, batch_size, threads : run settings.
    n_train, n_holdout : clean images used for training and held out.
    seconds : wall time of training (without data loading).
    history : mean loss per epoch.
    holdout : :func:`evaluate` on the held-out images (empty without hold-out).
    """

    model: IQANet
    seed: int
    epochs: int
    steps: int
    batch_size: int
    threads: int
    n_train: int
    n_holdout: int
    seconds: float
    history: list[float] = field(default_factory=list)
    holdout: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready summary (no tensors)."""
        return {
            "scorer_version": SCORER_VERSION,
            "n_parameters": n_parameters(self.model),
            "seed": self.seed,
            "epochs": self.epochs,
            "steps": self.steps,
            "batch_size": self.batch_size,
            "threads": self.threads,
            "n_train": self.n_train,
            "n_holdout": self.n_holdout,
            "seconds": round(self.seconds, 1),
            "loss_per_epoch": [round(v, 4) for v in self.history],
            "holdout": self.holdout,
        }


def _split(n: int, holdout: float, seed: int) -> tuple[Tensor, Tensor]:
    gen = torch.Generator().manual_seed(seed)
    perm = torch.randperm(n, generator=gen)
    n_hold = round(n * holdout)
    return perm[n_hold:].sort().values, perm[:n_hold].sort().values


def train_iqa(
    images: Tensor,
    *,
    epochs: int = 10,
    seed: int = 0,
    batch_size: int = 64,
    lr: float = 2e-3,
    holdout: float = 0.2,
    device: str | torch.device = "cpu",
    threads: int | None = None,
    progress: Progress | None = None,
) -> TrainResult:
    """Train :class:`~quality.imaging.model.IQANet` on clean images, degraded on the fly.

    An epoch shows every training image once in every class (``8 n_train`` samples), in an
    order shuffled by the seed; AdamW with a one-cycle learning rate; loss = cross-entropy of
    the defect type + 4 x mean squared error of the quality score.

    Parameters
    ----------
    images : Tensor, shape (N, 1, H, W), float in [0, 1]: clean images (ideally at
        :data:`WORK_SIZE`, e.g. from :func:`load_clean_images`).
    epochs : passes over the training images (>= 1).
    seed : seeds the split, the initial weights, the order and every degradation.
    batch_size : samples per step (>= 2, for BatchNorm).
    lr : peak learning rate.
    holdout : share of the images held out (by image) for :func:`evaluate`, in [0, 0.9].
    device : where the network runs (degradations are drawn on the CPU).
    threads : torch CPU threads during training (default 1: on a shared 2-core machine one
        thread was 4x faster per step than two); with the same thread count, the same seed
        gives bit-identical weights on the CPU.
    progress : optional ``update(done, total, label)`` callback.

    Returns
    -------
    TrainResult
    """
    if images.ndim != 4 or images.shape[1] != 1 or images.shape[0] < 2:
        raise ValueError(f"images must have shape (N >= 2, 1, H, W), not {tuple(images.shape)}")
    if epochs < 1:
        raise ValueError(f"epochs must be >= 1, not {epochs}")
    if batch_size < 2:
        raise ValueError(f"batch_size must be >= 2, not {batch_size}")
    if not 0.0 <= holdout <= 0.9:
        raise ValueError(f"holdout must lie in [0, 0.9], not {holdout}")
    dev = resolve_device(device)
    threads = threads or 1
    train_idx, hold_idx = _split(images.shape[0], holdout, seed)
    train_x = images[train_idx].float().contiguous()
    n_samples = len(train_idx) * _N_CLASSES
    steps_per_epoch = max(1, n_samples // batch_size)
    total = steps_per_epoch * epochs
    if dev.type == "cuda":
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False
    t0 = time.perf_counter()
    with _torch_determinism(threads):
        torch.manual_seed(seed)  # only for any op that ignores explicit generators
        init = torch.Generator().manual_seed(seed)
        model = IQANet()
        _init_weights(model, init)
        model.to(dev).train()
        opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
        sched = torch.optim.lr_scheduler.OneCycleLR(
            opt, max_lr=lr, total_steps=total, pct_start=0.15
        )
        gen = torch.Generator().manual_seed(seed + 1)
        history: list[float] = []
        step = 0
        for _ in range(epochs):
            order = torch.randperm(n_samples, generator=gen)[: steps_per_epoch * batch_size]
            running = 0.0
            for b in range(steps_per_epoch):
                pick = order[b * batch_size : (b + 1) * batch_size]
                img_i, labels = pick // _N_CLASSES, pick % _N_CLASSES
                strength = torch.rand(len(pick), generator=gen)
                xb = degrade_batch(train_x[img_i], labels, strength, gen)
                qt = quality_target(labels, strength)
                out = model(xb.to(dev))
                loss = F.cross_entropy(out.defect_logits, labels.to(dev)) + 4.0 * F.mse_loss(
                    out.quality, qt.to(dev)
                )
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                running += float(loss.detach())
                step += 1
                if progress is not None:
                    progress(step, total, "train IQA")
            history.append(running / steps_per_epoch)
        model.eval().cpu()
        seconds = time.perf_counter() - t0
        report: dict[str, Any] = {}
        if len(hold_idx):
            report = evaluate(model, images[hold_idx], seed=seed + 2)
    return TrainResult(
        model=model,
        seed=seed,
        epochs=epochs,
        steps=total,
        batch_size=batch_size,
        threads=threads,
        n_train=len(train_idx),
        n_holdout=len(hold_idx),
        seconds=seconds,
        history=history,
        holdout=report,
    )


def _init_weights(model: IQANet, gen: torch.Generator) -> None:
    """Kaiming-normal convolutions and small linear layers, drawn from ``gen``."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.Conv2d):
                fan_in = m.in_channels * m.kernel_size[0] * m.kernel_size[1] // m.groups
                m.weight.normal_(0.0, math.sqrt(2.0 / fan_in), generator=gen)
            elif isinstance(m, torch.nn.Linear):
                bound = 1.0 / math.sqrt(m.in_features)
                m.weight.uniform_(-bound, bound, generator=gen)
                m.bias.zero_()


def evaluate(
    model: IQANet, images: Tensor, *, seed: int = 0, batch_size: int = 128
) -> dict[str, Any]:
    """Accuracy of the defect head on freshly degraded images: every image in every class.

    Parameters
    ----------
    model : the network (its device is used).
    images : Tensor, shape (N, 1, H, W), float in [0, 1], clean images not seen in training.
    seed : seeds the strengths and the degradations.
    batch_size : samples per forward pass.

    Returns
    -------
    dict with ``n_images``, ``accuracy`` (overall), ``per_class`` (recall per true class),
    ``confusion`` (rows = true, columns = predicted, in :data:`DEFECT_CLASSES` order) and
    ``quality_mean`` (mean predicted quality per true class).
    """
    from quality.imaging.model import predict

    gen = torch.Generator().manual_seed(seed)
    n = images.shape[0]
    labels = torch.arange(_N_CLASSES).repeat(n)
    img_i = torch.arange(n).repeat_interleave(_N_CLASSES)
    strength = torch.rand(len(labels), generator=gen)
    preds, quals = [], []
    for s in range(0, len(labels), batch_size):
        sl = slice(s, s + batch_size)
        xb = degrade_batch(images[img_i[sl]].float(), labels[sl], strength[sl], gen)
        r = predict(model, xb, batch_size=batch_size)
        preds.append(r["defect_probs"].argmax(axis=1))
        quals.append(r["quality"])
    pred = np.concatenate(preds) if preds else np.zeros(0, np.int64)
    qual = np.concatenate(quals) if quals else np.zeros(0, np.float32)
    true = labels.numpy()
    conf = np.zeros((_N_CLASSES, _N_CLASSES), np.int64)
    np.add.at(conf, (true, pred), 1)
    per_class = {
        c: float(conf[i, i] / conf[i].sum()) if conf[i].sum() else float("nan")
        for i, c in enumerate(DEFECT_CLASSES)
    }
    return {
        "n_images": int(n),
        "accuracy": float(np.trace(conf) / max(conf.sum(), 1)),
        "per_class": per_class,
        "confusion": conf.tolist(),
        "quality_mean": {
            c: float(qual[true == i].mean()) if (true == i).any() else float("nan")
            for i, c in enumerate(DEFECT_CLASSES)
        },
    }


# --------------------------------------------------------------------------- artefacts


def save_weights(model: IQANet, path: Path | str, *, meta: dict[str, Any] | None = None) -> Path:
    """Write the weights as float32 with their metadata (``torch.save`` of a plain dict).

    Parameters
    ----------
    model : trained network.
    path : destination file; parent folders are created.
    meta : extra JSON-like metadata stored beside ``state_dict``.

    Returns
    -------
    Path of the file written.
    """
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    blob = {
        "scorer_version": SCORER_VERSION,
        "input_size": INPUT_SIZE,
        "embed_dim": EMBED_DIM,
        "defect_classes": list(DEFECT_CLASSES),
        "meta": dict(meta or {}),
        "state_dict": state,
    }
    torch.save(blob, p)
    return p


def _fmt(v: float) -> str:
    return "n/a" if not math.isfinite(v) else f"{v:.3f}"


def write_model_card(result: TrainResult, path: Path | str, *, weights: Path | str) -> Path:
    """Write ``MODEL_CARD.md`` for a training run (figures from ``result``).

    Parameters
    ----------
    result : from :func:`train_iqa`.
    path : destination Markdown file.
    weights : the weights file the card describes.

    Returns
    -------
    Path of the card.
    """
    h = result.holdout
    w = Path(weights)
    size_kb = w.stat().st_size / 1024 if w.is_file() else float("nan")
    lines = [
        f"# Model card: IQA CNN `{SCORER_VERSION}`",
        "",
        f"Weights: `{w.name}` ({size_kb:.0f} KiB, float32 `state_dict` + metadata). "
        f"Written {dt.date.today().isoformat()} by `quality train-iqa`.",
        "",
        "## Purpose",
        "Flags display-windowed 2-D medical images (radiographs, CT slices) that are unfit "
        "for labelling or model input, with one of eight defect types "
        f"({', '.join(DEFECT_CLASSES)}), a quality score in [0, 1] (1 = good) and an "
        f"{EMBED_DIM}-d L2-normalised embedding for OOD and near-duplicate search.",
        "",
        "## Architecture",
        f"`quality.imaging.model.IQANet`: residual CNN, input 1 x {INPUT_SIZE} x {INPUT_SIZE} "
        "in [0, 1] (aspect-preserving, anti-aliased resize, zero padding); stride-2 stem "
        "(16 ch) and four stride-2 residual stages (32, 64, 128, 192 ch; BatchNorm + ReLU); "
        f"global mean + max pooling (384) -> linear embedding ({EMBED_DIM}) -> ReLU -> "
        "defect head (8 logits) and quality head (sigmoid). The embedding is the L2-normalised "
        f"pre-activation. **{n_parameters(result.model):,} parameters.**",
        "",
        "## Training data",
        f"Only synthetic phantoms: the clean images of the `quality demo` data "
        f"(`demo_truth.json` entries with no defects, kinds {', '.join(CLEAN_KINDS)}; procedural "
        "chest radiographs from four simulated vendors and chest CT slices in the mediastinal "
        "window). No patient data. Decoded with `load_pixels` + `to_display`, cached at "
        f"{WORK_SIZE} x {WORK_SIZE}. Split by image: {result.n_train} for training, "
        f"{result.n_holdout} held out.",
        "",
        "## Degradations (applied on the fly, seeded)",
        "Strength `t ~ U(0, 1)` per sample; pixel figures at the "
        f"{WORK_SIZE}-pixel working size; result resized to {INPUT_SIZE}.",
        "",
        "| class | transform |",
        "|---|---|",
        "| clean | identity |",
        "| blur | Gaussian, sigma = 1.2 + 2.3 t px |",
        "| noise | additive Gaussian sigma = 0.03 + 0.12 t, or signal-dependent sigma (0.4 + x) |",
        "| under_exposed | a x^g, a = 0.5 - 0.35 t, g = 1 + 0.6 t, read-out noise 0.004 |",
        "| over_exposed | clip(a x + b), a = 1.6 + t, b ~ U(-0.05, 0.3) |",
        "| inverted | 1 - x |",
        "| cropped | band of 30-55 % on one side black (white 1 in 4), or content shifted out "
        "by as much |",
        "| artifact | stripes (period 3-12 px, amplitude 0.08-0.30), grid, 1-4 dead lines, or a "
        "bright disc / ring (radius 4-14 %) |",
        "",
        "Nuisance variation on every sample (not a defect): horizontal flip, gamma U(0.85, 1.15).",
        "Quality target: 1 clean; 0.6 - 0.5 t degraded; 0.3 inverted.",
        "",
        "## Training run",
        f"Seed {result.seed}, {result.epochs} epochs ({result.steps} steps of "
        f"{result.batch_size}; an epoch = every training image once per class), AdamW "
        f"(one-cycle, peak lr 2e-3), loss = CE + 4 MSE(quality). Wall time "
        f"{result.seconds:.0f} s on {result.threads} CPU thread(s). "
        f"Loss per epoch: {', '.join(f'{v:.3f}' for v in result.history)}.",
        "",
        "## Held-out accuracy",
    ]
    if h:
        lines += [
            f"{h['n_images']} held-out clean images, each degraded into all 8 classes "
            f"(fresh seed). Overall accuracy **{_fmt(h['accuracy'])}**.",
            "",
            "| class | recall | mean predicted quality |",
            "|---|---|---|",
            *(
                f"| {c} | {_fmt(h['per_class'][c])} | {_fmt(h['quality_mean'][c])} |"
                for c in DEFECT_CLASSES
            ),
            "",
            "Confusion (rows: true, columns: predicted):",
            "",
            "| true \\ pred | " + " | ".join(DEFECT_CLASSES) + " |",
            "|---|" + "---|" * _N_CLASSES,
            *(
                f"| {c} | " + " | ".join(str(v) for v in row) + " |"
                for c, row in zip(DEFECT_CLASSES, h["confusion"], strict=True)
            ),
        ]
    else:
        lines.append("No hold-out in this run.")
    lines += [
        "",
        "## Limits",
        "- Trained on synthetic degradations of synthetic phantoms only; **not validated on "
        "real clinical images**. Treat its outputs as triage hints beside the IQMs of "
        "`quality.imaging.metrics`.",
        "- Sees display-windowed 8-bit images: an exposure error that the VOI window hides "
        "(an auto-windowed, under-exposed radiograph looks normal apart from noise) is for the "
        "raw-value metrics to catch, not for this model.",
        "- 2-D only; CT is scored per slice, in its header window.",
        "- Eight closed classes: it has no 'not a medical image' or 'blank' output. "
        "Out-of-distribution inputs (photographs, test objects) get arbitrary classes and "
        "must be handled by `quality.imaging.ood` on the embedding and metrics.",
        "- Degradation ranges are fixed by hand; milder defects than these may pass as clean.",
        "",
        "## Retrain",
        "```",
        "quality demo --out data_samples        # if the demo data is missing",
        f"quality train-iqa --data data_samples --epochs {result.epochs} --seed {result.seed}",
        "```",
        "Same seed, same thread count, CPU: bit-identical weights. Bump `SCORER_VERSION` in "
        "`quality/imaging/model.py` when the shipped weights change.",
        "",
    ]
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text("\n".join(lines), encoding="utf-8")
    return p


def run_training(
    data: Path | str,
    *,
    epochs: int = 10,
    seed: int = 0,
    out: Path | str | None = None,
    device: str | torch.device = "auto",
    progress: Progress | None = None,
) -> TrainResult:
    """Train on a demo data folder, save the weights and write the model card beside them.

    Parameters
    ----------
    data : folder written by ``quality demo``.
    epochs, seed : see :func:`train_iqa`.
    out : weights file (default :data:`~quality.imaging.model.WEIGHTS_PATH`); the card is
        ``MODEL_CARD.md`` in the same folder.
    device : see :func:`~quality.imaging.model.resolve_device`.
    progress : optional ``update(done, total, label)`` callback.

    Returns
    -------
    TrainResult, with ``holdout`` filled.
    """
    images, kinds = load_clean_images(data, progress=progress)
    result = train_iqa(images, epochs=epochs, seed=seed, device=device, progress=progress)
    weights = Path(out) if out is not None else WEIGHTS_PATH
    meta = {
        "seed": seed,
        "epochs": epochs,
        "n_train": result.n_train,
        "n_holdout": result.n_holdout,
        "kinds": {k: kinds.count(k) for k in sorted(set(kinds))},
        "holdout_accuracy": result.holdout.get("accuracy"),
    }
    save_weights(result.model, weights, meta=meta)
    write_model_card(result, weights.with_name("MODEL_CARD.md"), weights=weights)
    return result
